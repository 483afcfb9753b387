"""The library's visible strings, translatable as Slicer's own Python packages make theirs.

Slicer's scripted packages (e.g. SegmentEditorEffects) write ``from slicer.i18n import tr as _`` in
every file: ``tr`` translates in the context "<package>.<file>" (Base/Python/slicer/i18n.py,
getContext) through ``slicer.app.translate``. This library also runs where no Slicer application
is (slicer-core in the tests, the module's self-test on PythonSlicer), where ``slicer.app`` is
missing: there the text is returned as it is. Each file writes ``from .i18n import tr as _`` and
formats after translating: ``_("Saved '{case}'").format(case=...)``.
"""
from __future__ import annotations

import sys


def tr(text: str) -> str:
    """``text`` in the application's language, context "UniversalSegmentationLib.<file>" (the
    caller's module name, as slicer.i18n.getContext names a package's file)."""
    context = sys._getframe(1).f_globals.get("__name__", "UniversalSegmentationLib")
    try:
        from slicer import app  # noqa: F401 - only the application has it
        from slicer.i18n import translate
    except ImportError:
        return text
    return translate(context, text)
