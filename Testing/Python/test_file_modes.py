"""Results, checkpoints and model folders get the mode the user's umask gives ordinary files
(they are written as private temporaries first, then renamed into place)."""
import os
import stat

import pytest
import torch

from conftest import tiny_config


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_checkpoints_and_packages_follow_the_umask(tmp_path, umask_027):
    import numpy as np
    import SimpleITK as sitk

    from UniversalSeg.data.modalities import KNOWN_MODALITIES
    from UniversalSeg.data.terminology import task_info
    from UniversalSeg.inference.writers import atomic_write
    from UniversalSeg.model_package import save_package
    from UniversalSeg.networks import UniversalSegNet
    from UniversalSeg.training.checkpoint import save_atomic
    image = sitk.GetImageFromArray(np.ones((4, 4, 4), np.uint8))
    out = atomic_write(tmp_path / "result.nii.gz", lambda tmp: sitk.WriteImage(image, str(tmp)))
    assert mode(out) == 0o640
    save_atomic({"step": 1}, tmp_path / "last.pt")
    assert mode(tmp_path / "last.pt") == 0o640
    cfg = tiny_config()
    net = UniversalSegNet(cfg)
    folder = save_package(tmp_path / "model", net, [task_info(t) for t in cfg.tasks],
                          {m: KNOWN_MODALITIES[m] for m in cfg.modalities}, (2.0,) * 3, (32,) * 3)
    assert mode(folder) == 0o750
    assert mode(folder / "model.json") == 0o640 and mode(folder / "model.safetensors") == 0o640
    zipped = save_package(tmp_path / "model.zip", net, [task_info(t) for t in cfg.tasks],
                          {m: KNOWN_MODALITIES[m] for m in cfg.modalities}, (2.0,) * 3, (32,) * 3)
    assert mode(zipped) == 0o640
    assert torch.load(tmp_path / "last.pt", weights_only=True) == {"step": 1}
