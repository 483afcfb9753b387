"""Broken, foreign and hostile model packages given to ``predict`` and ``info``: exit 3, one line
that names the problem, no traceback, nothing written, nothing executed."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import save_file

from bad_input_checks import assert_refused, tree_state
from UniversalSeg import model_metadata
from UniversalSeg.cli import main


class Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def _meta(edit):
    def prepare(model):
        meta = json.loads((model / "model.json").read_text())
        edit(meta)
        (model / "model.json").write_text(json.dumps(meta))
    return prepare


def _set(path, value):
    def edit(meta):
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _rename_task(meta):
    meta["tasks"][0]["name"] = meta["network"]["tasks"][0] = "../../etc/passwd"


def _write(name, data):
    return lambda model: (model / name).write_bytes(data() if callable(data) else data)


def _other_weights(model):
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(model / "model.safetensors"))


def _pickled_weights(model):
    torch.save({"x": Exploit()}, model / "model.safetensors")


def _edit_weights(edit):
    """Load the package's weights, change the first floating-point tensor, save them back."""
    def prepare(model):
        from safetensors.torch import load_file
        state = load_file(str(model / "model.safetensors"))
        name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
        state[name] = edit(state[name])
        save_file(state, str(model / "model.safetensors"))
    return prepare


def _with_nan(tensor):
    tensor = tensor.clone()
    tensor.view(-1)[0] = float("nan")
    return tensor


def _sparse(name, size):
    """A file that claims ``size`` bytes (sparse: no disk used, but reading it would take the memory)."""
    def prepare(model):
        with open(model / name, "wb") as f:
            f.truncate(size)
    return prepare


def _zip_then(edit):
    """Zip the package, then damage the zip: the package given is the .zip."""
    def prepare(model):
        archive = shutil.make_archive(str(model), "zip", model)
        shutil.rmtree(model)
        edit(model.with_suffix(".zip"), archive)
    return prepare


def _truncate(path, archive):
    data = open(archive, "rb").read()
    path.write_bytes(data[: len(data) // 3])


def _encrypt(path, archive):
    """Set the 'encrypted' flag of every member (local and central headers), as a
    password-protected zip has it; zipfile then refuses to read without a password."""
    data = bytearray(open(archive, "rb").read())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            data[start + flag_at] |= 1
            start += 4
    path.write_bytes(bytes(data))


def _as_is(path, archive):
    """The intact zip: the zip-bomb case lowers the unpacked-size limit below its weights' size
    (a real bomb is test_info_reads_only_the_description_never_the_weights)."""


CASES = {  # name: (prepare(model folder), message)
    "missing": (lambda m: shutil.rmtree(m), "neither a package folder"),
    "no-weights": (lambda m: (m / "model.safetensors").unlink(), "model.safetensors is missing"),
    "no-description": (lambda m: (m / "model.json").unlink(), "model.json is missing"),
    "not-utf8": (_write("model.json", b"\xff\xfe{}"), "model.json is not a text file (not UTF-8)"),
    "json-syntax": (_write("model.json", b'{"format": "universalseg-model",'), "is not valid JSON"),
    "json-nested": (_write("model.json", b"[" * 100000 + b"]" * 100000), "nested too deeply"),
    "foreign": (_write("model.json", b'{"format": "nnunet"}'), "is not a UniversalSeg model description"),
    "newer": (_meta(_set(["format_version"], 99)), "newer than this UniversalSeg understands"),
    "spacing-inf": (_meta(_set(["preprocessing", "spacing"], [1.0, float("inf"), 1.0])),
                    "spacing [1.0, inf, 1.0] must be three numbers between"),
    "patch-huge": (_meta(_set(["inference", "patch_size"], [100000, 64, 64])), "patch size [100000, 64, 64]"),
    "width-huge": (_meta(_set(["network", "base_width"], 1 << 20)), "base_width"),
    "no-tasks": (_meta(lambda m: (m.update(tasks=[]), m["network"].update(tasks=[]))), "tasks"),
    "task-mismatch": (_meta(_set(["network", "tasks"], ["liver", "brain", "x", "y"])),
                      "task metadata does not match the network's tasks"),
    "task-path": (_meta(_rename_task), "task name '../../etc/passwd' is not allowed"),
    "display-newline": (_meta(lambda m: m["tasks"][0].update(display_name="Liver\ndata file: /etc/passwd")),
                        "no line breaks"),
    "other-weights": (_other_weights, "the weights do not fit the network"),
    "pickle-weights": (_pickled_weights, "is not a safetensors file (refused without unpickling"),
    "version-true": (_meta(_set(["format_version"], True)), "format_version True is not a format number"),
    "version-negative": (_meta(_set(["format_version"], -1)), "format_version -1 is not a format number"),
    "version-string": (_meta(_set(["format_version"], "1")), "format_version '1' is not a format number"),
    "patch-not-stride": (_meta(_set(["inference", "patch_size"], [33, 48, 48])),
                         "multiples of the network's stride 16"),
    "patch-float": (_meta(_set(["inference", "patch_size"], [48.0, 48, 48])),
                    "patch size [48.0, 48, 48] must be three numbers between 16 and 512 voxels: whole numbers"),
    "patch-1024": (_meta(_set(["inference", "patch_size"], [1024, 1024, 1024])), "patch size [1024, 1024, 1024]"),
    "spacing-string": (_meta(_set(["preprocessing", "spacing"], ["2", 2, 2])),
                       "spacing ['2', 2, 2] must be three numbers"),
    "color-over-255": (_meta(lambda m: m["tasks"][0].update(color=[300, 0, 0])),
                       "color must be three whole numbers 0-255 (red, green, blue), got [300, 0, 0]"),
    "color-float": (_meta(lambda m: m["tasks"][0].update(color=[12.5, 0, 0])), "color must be three whole"),
    "color-negative": (_meta(lambda m: m["tasks"][0].update(color=[-1, 0, 0])), "color must be three whole"),
    "threshold-2": (_meta(_set(["inference", "threshold"], 2)), "inference.threshold 2 must be a probability"),
    "threshold-null": (_meta(_set(["inference", "threshold"], None)), "inference.threshold None must be a"),
    "threshold-abc": (_meta(_set(["inference", "threshold"], "abc")), "inference.threshold 'abc' must be a"),
    "provenance-list": (_meta(_set(["provenance"], ["trained"])), "provenance must be a mapping, got list"),
    "provenance-datasets": (_meta(_set(["provenance", "datasets"], [1, 2])),
                            "provenance.datasets must be a list of names"),
    "provenance-card": (_meta(_set(["provenance", "card"], "a card")), "provenance.card must be a mapping of texts"),
    "network-huge": (_meta(lambda m: m["network"].update(base_width=512, width_multipliers=[1, 2, 4, 8, 8],
                                                          fusion={"sites": {}}, head="static")),
                     "M parameters, more than any UniversalSeg model"),
    "polynomial-degree-huge": (_meta(_set(["network", "harmonization", "polynomial_degree"], 10 ** 6)),
                               "harmonization.polynomial_degree: 1000000 is larger than any sensible network"),
    "embedding-huge": (_meta(_set(["network", "harmonization", "class_aware_embedding"], 10 ** 6)),
                       "harmonization.class_aware_embedding: 1000000 is larger"),
    "domains-huge": (_meta(_set(["network", "domains"], [f"site{i}" for i in range(5000)])), "domains: 5000 names"),
    "description-sparse": (_sparse("model.json", 40 << 20), "model.json holds 42 MB, more than this package can need"),
    "weights-sparse": (_sparse("model.safetensors", 1 << 30), "refused without reading it"),
    "weights-nan": (_edit_weights(_with_nan), "holds NaN or infinite values"),
    "weights-int32": (_edit_weights(lambda t: t.to(torch.int32)), "is stored as torch.int32, the network needs"),
    "zip-truncated": (_zip_then(_truncate), "neither a model package folder nor a valid zip"),
    "zip-encrypted": (_zip_then(_encrypt), "model packages are not encrypted"),
    "zip-bomb": (_zip_then(_as_is), "refused without unpacking it"),
    "display-lone-surrogate": (_meta(lambda m: m["tasks"][0].update(display_name="R\ud800ckenmark")),
                               "of task 'liver' is not allowed: 1-128 printable characters, no line breaks"),
    "code-meaning-newline": (_meta(lambda m: m["tasks"][0]["type"].update(meaning="Liver\nSegment9_Name:=x")),
                             "type must be a code {scheme, value, meaning} of texts"),
    "code-meaning-not-text": (_meta(lambda m: m["tasks"][0]["type"].update(meaning=7)),
                              "type must be a code {scheme, value, meaning} of texts"),
    "code-extra-key": (_meta(lambda m: m["tasks"][0]["type"].update(extra="x")),
                       "type must be a code {scheme, value, meaning} of texts"),
    "context-newline": (_meta(lambda m: m["tasks"][0].update(context="list\nSegment9_Name:=x")),
                        "context must be a terminology context's name"),
}


@pytest.fixture
def image(tmp_path):
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32))
    img.SetSpacing((2.0, 2.0, 2.0))
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.parametrize("case", CASES)
def test_a_bad_model_package_exits_3_and_writes_nothing(trained_run, image, tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)  # an exploit would write PWNED here
    model = tmp_path / "model"
    shutil.copytree(trained_run["package"], model)
    prepare, message = CASES[case]
    prepare(model)
    given = model.with_suffix(".zip") if model.with_suffix(".zip").exists() else model
    if case == "zip-bomb":
        monkeypatch.setitem(model_metadata.MAX_MEMBER_BYTES, "model.safetensors", 1000)
    before = tree_state(tmp_path)
    code = main(["predict", "--model", str(given), "--input", str(image), "--modality", "CT",
                 "--output", str(tmp_path / "out.seg.nrrd"), "--progress", "none"])
    assert_refused(code, capsys.readouterr().err, 3, message, before, tree_state(tmp_path))
    if case not in ("no-weights", "other-weights", "pickle-weights", "zip-bomb", "network-huge", "weights-sparse",
                    "weights-nan", "weights-int32"):  # info reads model.json only
        code = main(["info", str(given)])
        assert_refused(code, capsys.readouterr().err, 3, message, before, tree_state(tmp_path))


def test_package_and_catalog_text_reaches_the_terminal_escaped(trained_run, tmp_path, capsys, monkeypatch):
    """A model card or catalog entry with terminal escape sequences (set the title, clear the screen)
    or a bidi override is printed escaped by ``info`` and ``models list``, never raw."""
    hostile = "\x1b]0;pwned\x07\x1b[2J\u202eevil"
    model = tmp_path / "model"
    shutil.copytree(trained_run["package"], model)
    _meta(lambda m: (m["provenance"].update(card={"summary": hostile}, created=hostile),
                     m["tasks"][0]["type"].update(meaning=hostile)))(model)
    catalog = json.loads((Path(__file__).parents[2] / "Resources" / "Models.json").read_text())
    catalog["models"][0]["license"] = hostile
    (tmp_path / "Models.json").write_text(json.dumps(catalog))
    monkeypatch.setenv("UNIVERSALSEG_MODEL_CATALOG", str(tmp_path / "Models.json"))
    monkeypatch.setenv("UNIVERSALSEG_CACHE", str(tmp_path / "cache"))
    for args in (["info", str(model)], ["models", "list"]):
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out, out
        assert "\\x1b]0;pwned\\x07\\x1b[2J\\u202eevil" in out, out


def test_international_display_names_are_written_as_slicer_writes_them(trained_run, image, tmp_path):
    """"Rückenmark" and "脊髓" (and a code meaning in Greek) end up in the .seg.nrrd header as UTF-8,
    as Slicer writes and reads segment names there; pynrrd alone raised UnicodeEncodeError after
    the whole inference."""
    import slicerio
    model = tmp_path / "model"
    shutil.copytree(trained_run["package"], model)
    _meta(lambda m: (m["tasks"][0].update(display_name="Rückenmark"), m["tasks"][1].update(display_name="脊髓"),
                     m["tasks"][0]["type"].update(meaning="Νωτιαίος μυελός")))(model)
    out = tmp_path / "out.seg.nrrd"
    assert main(["predict", "--model", str(model), "--input", str(image), "--modality", "CT",
                 "--output", str(out), "--progress", "none"]) == 0
    header = out.read_bytes().split(b"\n\n", 1)[0].decode("utf-8")
    assert "Segment0_Name:=Rückenmark\n" in header and "Segment1_Name:=脊髓\n" in header, header
    assert "^Νωτιαίος μυελός~" in header and "UniversalSegText" not in header
    segmentation = slicerio.read_segmentation(str(out))  # the voxels are intact
    assert len(segmentation["segments"]) == 4 and segmentation["voxels"].size
