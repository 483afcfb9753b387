"""Headless training inside the full 3D Slicer application, with the same network code:

    Slicer --no-main-window --python-script scripted_modules/UniversalSegLib/train_headless.py -- \
           --catalog catalog.yaml --config small --out runs/mine [--resume]

(``PythonSlicer -m UniversalSeg train ...`` does the same without starting the application.)
"""
import sys
from pathlib import Path

for folder in (Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[2]):
    if (folder / "UniversalSeg" / "__init__.py").exists() and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from UniversalSeg.cli import main  # noqa: E402

args = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
code = main(["train", *args])
try:
    import slicer
    slicer.util.exit(code)
except (ImportError, AttributeError):
    sys.exit(code)
