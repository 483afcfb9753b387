"""``python -m UniversalSeg ...`` (also ``PythonSlicer -m UniversalSeg`` and ``torchrun -m UniversalSeg``)."""
import sys

from .cli import main

sys.exit(main())
