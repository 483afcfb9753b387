"""Headless training inside the full 3D Slicer application, with the same network code:

    Slicer --no-main-window --python-script scripted_modules/UniversalSegmentationLib/train_headless.py -- \
           --catalog catalog.yaml --config small --out runs/mine [--resume]

(``PythonSlicer -m UniversalSeg train ...`` does the same without starting the application.)
Runs in this process: the module file is named ``UniversalSegmentation``, so the core package
``UniversalSeg`` imports as it is.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from UniversalSegmentationLib.paths import ensure_core_importable  # noqa: E402

ensure_core_importable()
from UniversalSeg.cli import main  # noqa: E402

args = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
code = main(["train", *args])
try:
    import slicer
    slicer.util.exit(code)
except (ImportError, AttributeError):
    sys.exit(code)
