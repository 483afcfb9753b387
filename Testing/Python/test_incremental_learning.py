"""Incremental learning: new tasks / modalities grow the tables; old outputs stay bit-identical."""
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from UniversalSeg.networks import ModelConfig, UniversalSegNet

OLD_REQUEST = (["liver", "kidney", "tumor"], "CT")


def outputs(net, x, tasks, modality):
    with torch.no_grad():
        return net(x, net.context(tasks, modality, batch=x.shape[0]))["logits"]


@pytest.mark.parametrize("harmonization", [{}, {"norm": "class_aware"}, {"norm": "domain_batch"}])
@pytest.mark.parametrize("head", ["dynamic", "static"])
def test_adding_tasks_keeps_old_outputs_bit_identical_through_training(harmonization, head, volume):
    torch.manual_seed(0)
    cfg = tiny_config(harmonization=harmonization, head=head)
    if head == "static":
        cfg = cfg.replace(fusion={"sites": {}})
    net = UniversalSegNet(cfg).eval()
    before = outputs(net, volume, *OLD_REQUEST)

    net.add_tasks(["pancreas", "gallbladder"])
    assert net.config.tasks[-2:] == ("pancreas", "gallbladder")
    assert torch.equal(outputs(net, volume, *OLD_REQUEST), before)

    trainable = [p for p in net.parameters() if p.requires_grad]
    assert trainable and all(p.shape[0] == 2 for p in trainable)  # only the new rows train
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    net.train()
    target = (volume > 0.5).float()
    losses = []
    for _ in range(6):
        out = net(volume, net.context(["pancreas"], "CT", batch=2))["logits"]
        loss = F.binary_cross_entropy_with_logits(out, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    net.eval()
    assert torch.equal(outputs(net, volume, *OLD_REQUEST), before)


def test_grown_model_saves_and_rebuilds_from_its_config(volume, tmp_path):
    torch.manual_seed(0)
    net = UniversalSegNet(tiny_config()).eval()
    net.add_tasks(["pancreas"])
    net.add_modalities(["PET"])
    new = outputs(net, volume, ["pancreas", "liver"], "PET")
    path = tmp_path / "model.json"
    net.config.save(path)
    rebuilt = UniversalSegNet(ModelConfig.load(path)).eval()
    rebuilt.load_state_dict(net.state_dict())
    assert torch.equal(outputs(rebuilt, volume, ["pancreas", "liver"], "PET"), new)
    net.consolidate()  # folding the new rows into one table changes nothing either
    assert torch.equal(outputs(net, volume, ["pancreas", "liver"], "PET"), new)
    assert all(p.requires_grad for p in net.parameters())


def test_adding_a_modality_keeps_old_modalities_identical(volume):
    torch.manual_seed(0)
    net = UniversalSegNet(tiny_config()).eval()
    before = outputs(net, volume, ["liver"], "MR-T2")
    net.add_modalities(["PET"])
    assert torch.equal(outputs(net, volume, ["liver"], "MR-T2"), before)
    with torch.no_grad():
        out = net(volume, net.context(["liver"], "PET", batch=2))
    assert out["modality_logits"].shape == (2, 4)


def test_adding_known_or_repeated_names_is_refused():
    net = UniversalSegNet(tiny_config())
    with pytest.raises(ValueError, match="already known"):
        net.add_tasks(["liver"])
    with pytest.raises(ValueError, match="already known or repeated"):
        net.add_modalities(["PET", "PET"])
