"""The repository passes ``ruff check`` with the settings in pyproject.toml ([tool.ruff]), so that
the test command CI runs also keeps the code lint-free. ruff comes with the test extra
(``pip install -e ".[test]"``); without it the test is skipped, saying so."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def ruff_command() -> list[str]:
    """ruff as a module of this Python (the test extra installs it here), else on the PATH."""
    try:
        import ruff  # noqa: F401
    except ImportError:
        found = shutil.which("ruff")
        if found is None:
            pytest.skip("ruff is not installed: pip install -e \".[test]\" (or pip install ruff) to lint")
        return [found]
    return [sys.executable, "-m", "ruff"]


def ruff_check(*args: str, source: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*ruff_command(), "check", "--no-cache", "--output-format", "concise", *args],
                          cwd=ROOT, input=source, capture_output=True, text=True)


def test_the_repository_passes_ruff():
    out = ruff_check(".")
    assert out.returncode == 0, ("ruff check found problems (fix them; the rules are in [tool.ruff] of "
                                 f"pyproject.toml):\n{out.stdout}{out.stderr}")


def test_the_settings_apply_to_the_package():
    """Not a vacuous pass: the project's rules and line length hold for a module of the package."""
    line = "x = " + "1 + " * 28 + "1\n"  # 117 characters: within the 120 allowed
    clean = f'"""A module."""\nimport os\n\nprint(os.sep)\n{line}'
    assert ruff_check("--stdin-filename", "UniversalSeg/lint_probe.py", "-", source=clean).returncode == 0
    bad = f'"""A module."""\nimport os\nimport sys\n\nprint(os.sep)\nx = {"1 + " * 30}1\n'
    out = ruff_check("--stdin-filename", "UniversalSeg/lint_probe.py", "-", source=bad)
    assert out.returncode == 1
    assert "F401" in out.stdout and "`sys` imported but unused" in out.stdout  # pyflakes
    assert "E501" in out.stdout and "(125 > 120)" in out.stdout  # the line length
