"""Library of the UniversalSeg Slicer module (``UniversalSegmentation.py``): everything with
behaviour, so that the module file stays a thin binding of the panel.

- ``paths``: where the core package and the resources are (build/install tree, source checkout);
- ``command``: pure functions (command lines, progress lines, task filter, modality guess, settings);
- ``process_runner``: a child process with line readers, killed with its whole tree on cancel;
- ``logic``, ``segmentation_import``, ``job_slots``: jobs, MRML import and undo (``slicer``, never
  ``qt``: tested against ``slicer-core``);
- ``models``, ``panel_state``: the model list and what the panel shows, via the core's torch-free
  modules;
- ``refine_worker``, ``refinement``: Refine mode: the warm worker's client (a persistent child)
  and the clicks (markups points) applied to one segment, box by box, with undo;
- ``dependencies``: installing what the core needs inside Slicer (the plan is pure and tested);
- ``self_test``: the module's self-test, run by Slicer's ScriptedLoadableModuleTest and by pytest.

Nothing here imports torch: the core's heavy parts run in child ``PythonSlicer`` processes.
"""
