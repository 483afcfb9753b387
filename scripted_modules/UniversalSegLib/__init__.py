"""Helpers of the UniversalSeg Slicer module.

- ``command``: pure functions (command lines, progress parsing, task filtering, modality guess);
- ``process_runner``: runs the core CLI in a background process and kills its whole tree on cancel;
- ``segmentation_import`` and ``logic``: MRML work (needs ``slicer``, never ``qt``), so they are
  tested against the real Slicer core from PyPI (``slicer-core``);
- ``dependencies``: installs what the core needs inside Slicer (needs ``slicer.app``).
"""
