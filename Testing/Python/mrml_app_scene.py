"""A real MRML scene (slicer-core) as the Slicer application has it: scene undo off (the
application's default), the Data, Segmentations and Volumes module logics attached and reachable
as ``slicer.modules.<name>.logic()``. Used by the tests' ``app_scene`` fixture and the benchmarks."""
from types import SimpleNamespace


def app_scene():
    import slicer
    scene = slicer.vtkMRMLScene()
    logics = {}
    for name, cls in (("data", slicer.vtkSlicerDataModuleLogic),
                      ("segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("volumes", slicer.vtkSlicerVolumesLogic)):
        logics[name] = cls()
        logics[name].SetMRMLScene(scene)
    slicer.mrmlScene = scene
    slicer.modules = SimpleNamespace(**{k: SimpleNamespace(logic=lambda v=v: v) for k, v in logics.items()})
    return scene
