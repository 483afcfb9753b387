"""Shared fixtures: tiny networks and small volumes so the suite stays fast on 2 CPU cores."""
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
