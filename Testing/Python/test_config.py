import json

import pytest
import torch

from conftest import tiny_config
from UniversalSeg.networks import PRESETS, ConfigError, ModelConfig, ResUNetBackbone, UniversalSegNet
from UniversalSeg.networks.config import FORMAT_VERSION

REFERENCE_BACKBONE_PARAMS = {"small": 10.14e6, "base": 40.56e6, "large": 162.2e6}


@pytest.mark.parametrize("preset", ["small", "base", "large"])
def test_preset_backbone_parameter_counts_match_reference(preset):
    cfg = ModelConfig.preset(preset, tasks=["a"], modalities=["CT"])
    with torch.device("meta"):  # count without allocating 650 MB for the large preset
        backbone = ResUNetBackbone(cfg)
    n = sum(p.numel() for p in backbone.parameters())
    assert abs(n - REFERENCE_BACKBONE_PARAMS[preset]) / REFERENCE_BACKBONE_PARAMS[preset] < 0.03
    assert cfg.channels == tuple(PRESETS[preset] * m for m in (1, 2, 4, 8, 10))


def test_priors_add_about_half_the_backbone_parameters():
    cfg = ModelConfig.preset("small", tasks=[f"t{i}" for i in range(15)], modalities=["CT", "MR"])
    with torch.device("meta"):
        net = UniversalSegNet(cfg)
    ratio = net.num_parameters() / net.num_parameters("backbone")
    assert 1.3 < ratio < 1.7  # reference: 15.28M / 10.14M = 1.51


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_round_trips_through_files(tmp_path, suffix):
    cfg = tiny_config(harmonization={"norm": "polynomial", "conv": "domain_separable",
                                     "polynomial_degree": 2})
    path = tmp_path / f"model{suffix}"
    cfg.save(path)
    assert ModelConfig.load(path) == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_network_rebuilds_from_metadata_alone(tiny_net, volume):
    ctx = tiny_net.context(["liver", "tumor"], "CT", batch=2)
    clone = UniversalSegNet(ModelConfig.from_dict(tiny_net.config.to_dict())).eval()
    clone.load_state_dict(tiny_net.state_dict())
    with torch.no_grad():
        assert torch.equal(clone(volume, ctx)["logits"], tiny_net(volume, ctx)["logits"])


@pytest.mark.parametrize("change, message", [
    ({"taskz": ["a"]}, "did you mean 'tasks'"),
    ({"tasks": []}, "tasks: must list at least one name"),
    ({"tasks": ["a", "a"]}, "listed twice"),
    ({"base_width": 0}, "base_width: must be a positive integer"),
    ({"harmonization": {"norm": "batchnorm"}}, "harmonization.norm: 'batchnorm' is not one of"),
    ({"harmonization": {"norm": "polynomial"}, "domains": []}, "must list the domains"),
    ({"fusion": {"sites": {"enc9": 2}}}, "unknown stage 'enc9'"),
    ({"fusion": {"head_dim": 7}}, "does not divide"),
    ({"fusion": {"sites": {}}}, "use head: static"),
    ({"format_version": FORMAT_VERSION + 1}, "upgrade UniversalSeg"),
    ({"preset": "huge"}, "unknown preset 'huge'"),
    ({"encoder_blocks": [2, 2]}, "need 4 entries"),
])
def test_invalid_configs_name_the_key_and_the_fix(change, message):
    data = tiny_config().to_dict()
    data.update(change)
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(data)


def test_load_reports_file_and_parse_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ModelConfig.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        ModelConfig.load(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("tasks: [a]\nmodalities: [CT]\nheead: dynamic\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: heead: unknown key; did you mean 'head'"):
        ModelConfig.load(wrong)


def test_shipped_configs_are_valid():
    from pathlib import Path
    configs = sorted((Path(__file__).parents[2] / "Resources" / "Configs").glob("network-*.yaml"))
    assert configs, "Resources/Configs should ship network presets"
    for path in configs:
        ModelConfig.load(path)
