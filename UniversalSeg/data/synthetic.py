"""Deprecated: the old name of ``UniversalSeg.data.phantom`` (the ellipsoid phantom); import that.

Importing this module gives the phantom module itself (its private helpers included), so that
scripts written against the old name keep working unchanged; it warns once (DeprecationWarning).
"""
import sys
import warnings

from . import phantom

warnings.warn("UniversalSeg.data.synthetic is deprecated: import UniversalSeg.data.phantom instead",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = phantom
