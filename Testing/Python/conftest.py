"""Shared fixtures: tiny networks and small volumes so the suite stays fast on 2 CPU cores."""
import contextlib
import os
import subprocess

import pytest
import torch

from UniversalSeg.networks import ModelConfig, UniversalSegNet

TASKS = ["liver", "spleen", "kidney", "tumor", "brain"]
MODALITIES = ["CT", "MR-T1", "MR-T2"]
DOMAINS = ["hospital-a", "hospital-b", "hospital-c"]


def tiny_config(**overrides) -> ModelConfig:
    data = {"tasks": TASKS, "modalities": MODALITIES, "domains": DOMAINS, "base_width": 4,
            "fusion": {"head_dim": 4, "modality_tokens": 3,
                       "sites": {"enc2": 1, "enc3": 1, "enc4": 2, "dec3": 1, "dec2": 1}}}
    data.update(overrides)
    return ModelConfig.from_dict(data)


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return UniversalSegNet(tiny_config()).eval()


@pytest.fixture
def volume():
    torch.manual_seed(1)
    return torch.randn(2, 1, 32, 32, 32)


TINY_TRAIN_NET = {"tasks": ["placeholder"], "modalities": ["CT"], "base_width": 8,
                  "fusion": {"head_dim": 8, "modality_tokens": 4,
                             "sites": {"enc2": 1, "enc3": 1, "enc4": 1, "dec3": 1, "dec2": 1}}}


@pytest.fixture(scope="session")
def synth_collection(tmp_path_factory):
    """The synthetic multi-institution collection, small: 4 cases per institution, 32^3."""
    from UniversalSeg.data.phantom import generate_collection
    return generate_collection(tmp_path_factory.mktemp("synth"), cases=4, shape=32, seed=0)


@pytest.fixture
def tiny_train_config():
    from UniversalSeg.training.config import TrainConfig
    return TrainConfig(spacing=(5.625,) * 3, patch_size=(32, 32, 32), batch_size=2, epochs=2,
                       iterations_per_epoch=3, num_workers=0, lr=3e-3, checkpoint_every=1,
                       warmup_epochs=0.5)


@pytest.fixture(scope="session")
def trained_run(synth_collection, tmp_path_factory):
    """One short real training run on the synthetic collection (about a minute on 2 cores),
    shared by the training, evaluation and inference tests."""
    from UniversalSeg.networks import ModelConfig
    from UniversalSeg.training.config import TrainConfig
    from UniversalSeg.training.trainer import run_training
    cfg = TrainConfig(spacing=(5.625,) * 3, patch_size=(32, 32, 32), batch_size=2, epochs=3,
                      iterations_per_epoch=20, validate_every=3, num_workers=0, lr=3e-3,
                      checkpoint_every=20, warmup_epochs=0.5)
    out = tmp_path_factory.mktemp("trained") / "run"
    result = run_training(synth_collection, ModelConfig.from_dict(TINY_TRAIN_NET), cfg, out,
                          device="cpu", progress=False)
    return {"out": out, **result}


@pytest.fixture
def app_scene():
    """A real MRML scene (slicer-core) as the Slicer application has it (``mrml_app_scene``)."""
    pytest.importorskip("slicer")
    from mrml_app_scene import app_scene as make
    scene = make()
    yield scene
    scene.Clear(True)


@pytest.fixture(scope="session")
def slicer_lib():
    """The Slicer module's library on sys.path (after the core package)."""
    import sys
    from pathlib import Path
    path = str(Path(__file__).parents[2] / "scripted_modules")
    if path not in sys.path:
        sys.path.append(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, slicer_lib):
    """A tiny random model package (liver, spleen, liver-tumor; CT), made as the self-test makes it."""
    import sys

    from UniversalSegmentationLib.self_test import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"), sys.executable)


@contextlib.contextmanager
def tmpfs(path, options: str):
    """A small tmpfs at ``path`` (full disks, read-only folders: root ignores file permissions);
    skips the test where it cannot be mounted (not root), unmounts afterwards."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture(scope="session")
def click_model(synth_collection, tmp_path_factory):
    """A tiny model trained briefly WITH the click-refinement stage (``--clicks 3``)."""
    from UniversalSeg.networks import ModelConfig
    from UniversalSeg.training.config import TrainConfig
    from UniversalSeg.training.trainer import run_training
    cfg = TrainConfig(spacing=(5.625,) * 3, patch_size=(32, 32, 32), batch_size=2, epochs=1,
                      iterations_per_epoch=6, validate_every=10, num_workers=0, lr=3e-3,
                      checkpoint_every=100, warmup_epochs=0.5, clicks=3)
    out = tmp_path_factory.mktemp("clicks") / "run"
    result = run_training(synth_collection, ModelConfig.from_dict(TINY_TRAIN_NET), cfg, out,
                          device="cpu", progress=False)
    return result["package"]


@pytest.fixture(scope="session")
def painting_click_model(click_model, tmp_path_factory):
    """``click_model`` with its stage's output bias set to +20: any click turns the whole region
    around it on. A model whose answer to a click is known, for geometry and MRML tests."""
    from UniversalSeg.model_package import load_package, save_package
    package = load_package(click_model)
    net = package.build("cpu")
    with torch.no_grad():
        net.prompt.out.bias.fill_(20.0)
    path = tmp_path_factory.mktemp("painting") / "painting"
    save_package(path, net, package.tasks, package.modalities, package.spacing, package.patch_size,
                 package.meta.get("provenance"))
    return str(path)
