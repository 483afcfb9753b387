"""Headless training inside the full 3D Slicer application, with the same network code:

    Slicer --no-main-window --python-script scripted_modules/UniversalSegLib/train_headless.py -- \
           --catalog catalog.yaml --config small --out runs/mine [--resume]

(``PythonSlicer -m UniversalSeg train ...`` does the same without starting the application.)
Training runs in a child interpreter: inside Slicer the name ``UniversalSeg`` belongs to the
module file, not to the core package (see ``models.py``).
"""
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from UniversalSegLib.command import child_environment, python_executable  # noqa: E402

args = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
code = subprocess.call([python_executable(), "-m", "UniversalSeg", "train", *args], env=child_environment())
try:
    import slicer
    slicer.util.exit(code)
except (ImportError, AttributeError):
    sys.exit(code)
