"""Bad input ends in one line and exit 2; a programming error keeps its traceback (it is never
disguised as bad input, as a blanket ``except ValueError`` did)."""
import pytest

from UniversalSeg import cli
from UniversalSeg.commands import info
from UniversalSeg.data.catalog import CatalogError
from UniversalSeg.data.image_io import ImageError
from UniversalSeg.errors import InputError
from UniversalSeg.networks import ConfigError, UnknownNameError
from UniversalSeg.training.checkpoint import CheckpointError
from UniversalSeg.training.config import TrainConfigError


def test_every_bad_input_error_shares_one_base():
    for error in (CatalogError, ImageError, ConfigError, UnknownNameError, CheckpointError, TrainConfigError):
        assert issubclass(error, InputError), error
    assert issubclass(UnknownNameError, KeyError)  # still a lookup failure for library callers
    assert issubclass(InputError, ValueError)


@pytest.mark.parametrize("raised, code", [(InputError("--thing 3: must be 4"), 2),
                                          (UnknownNameError("unknown task 'x'"), 2)])
def test_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, raised, code):
    def run(args):
        raise raised
    monkeypatch.setattr(info, "run", run)
    assert cli.main(["info", "model"]) == code
    assert capsys.readouterr().err.strip() == f"universalseg info: error: {raised}"


def test_a_programming_error_is_not_disguised_as_bad_input(monkeypatch):
    def run(args):
        return int("not a number")  # a bug: ValueError from our own code
    monkeypatch.setattr(info, "run", run)
    with pytest.raises(ValueError, match="invalid literal"):
        cli.main(["info", "model"])  # propagates: the interpreter prints the traceback, exit 1
