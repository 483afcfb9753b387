"""The forward contract of the universal network: context, masking, equivariance, errors."""
import pytest
import torch

from conftest import tiny_config
from UniversalSeg.networks import UniversalSegNet, UnknownNameError, autocast


def run(net, x, ctx):
    with torch.no_grad():
        return net(x, ctx)


def test_output_shapes(tiny_net, volume):
    ctx = tiny_net.context(["liver", "spleen", "tumor"], "CT", batch=2)
    out = run(tiny_net, volume, ctx)
    assert out["logits"].shape == (2, 3, 32, 32, 32)
    assert out["modality_logits"].shape == (2, 3)
    assert out["task_mask"].all()


def test_permuting_tasks_permutes_outputs(tiny_net, volume):
    names = ["liver", "spleen", "kidney", "tumor"]
    perm = [2, 0, 3, 1]
    a = run(tiny_net, volume, tiny_net.context(names, "MR-T1", batch=2))["logits"]
    b = run(tiny_net, volume, tiny_net.context([names[i] for i in perm], "MR-T1", batch=2))["logits"]
    torch.testing.assert_close(b, a[:, perm], rtol=1e-4, atol=1e-4)


def test_padding_tasks_do_not_change_real_outputs(tiny_net, volume):
    ctx = tiny_net.context(["liver", "kidney"], "CT", batch=2)
    padded = ctx.replace(task_ids=torch.cat([ctx.task_ids, torch.full((2, 3), -1)], dim=1))
    a = run(tiny_net, volume, ctx)["logits"]
    out = run(tiny_net, volume, padded)
    assert out["task_mask"].tolist() == [[True, True, False, False, False]] * 2
    torch.testing.assert_close(out["logits"][:, :2], a, rtol=1e-4, atol=1e-4)


def test_mixed_batch_of_two_datasets_with_different_task_counts(tiny_net, volume):
    ctx = tiny_net.context([["liver", "spleen", "kidney"], ["brain"]], ["CT", "MR-T2"],
                           ["hospital-a", "hospital-b"])
    out = run(tiny_net, volume, ctx)
    assert out["logits"].shape == (2, 3, 32, 32, 32)
    assert out["task_mask"].tolist() == [[True, True, True], [True, False, False]]
    alone0 = run(tiny_net, volume[:1], tiny_net.context(["liver", "spleen", "kidney"], "CT"))
    alone1 = run(tiny_net, volume[1:], tiny_net.context(["brain"], "MR-T2"))
    torch.testing.assert_close(out["logits"][:1], alone0["logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["logits"][1:, :1], alone1["logits"], rtol=1e-4, atol=1e-4)


def test_modality_changes_the_output(tiny_net, volume):
    a = run(tiny_net, volume, tiny_net.context(["liver"], "CT", batch=2))["logits"]
    b = run(tiny_net, volume, tiny_net.context(["liver"], "MR-T1", batch=2))["logits"]
    assert not torch.allclose(a, b)


def test_unknown_names_list_what_the_model_knows(tiny_net):
    with pytest.raises(UnknownNameError, match=r"unknown task 'livr'.*knows the tasks \['liver'.*Did you mean 'liver'"):
        tiny_net.context(["livr"], "CT")
    with pytest.raises(UnknownNameError, match=r"unknown modality 'MRI'.*\['CT', 'MR-T1', 'MR-T2'\]"):
        tiny_net.context(["liver"], "MRI")
    with pytest.raises(UnknownNameError, match="unknown domain"):
        tiny_net.context(["liver"], "CT", "hospital-z")
    with pytest.raises(ValueError, match="requests a task twice"):
        tiny_net.context(["liver", "liver"], "CT")


@pytest.mark.parametrize("shape, message", [
    ((16, 16), "3D images"),
    ((1, 16, 16, 16), "3D images"),
    ((1, 1, 2, 16, 16, 16), "3D images"),
    ((1, 2, 16, 16, 16), "input channel"),
    ((1, 1, 16, 16, 20), "multiple of 16"),
])
def test_bad_input_shapes_are_refused(tiny_net, shape, message):
    ctx = tiny_net.context(["liver"], "CT")
    with pytest.raises(ValueError, match=message):
        tiny_net(torch.zeros(shape), ctx)


def test_bad_context_is_refused(tiny_net, volume):
    ctx = tiny_net.context(["liver"], "CT", batch=2)
    with pytest.raises(ValueError, match="task_ids out of range"):
        tiny_net(volume, ctx.replace(task_ids=torch.tensor([[0], [99]])))
    with pytest.raises(ValueError, match="only padding"):
        tiny_net(volume, ctx.replace(task_ids=torch.tensor([[0], [-1]])))
    with pytest.raises(ValueError, match=r"must be \[B=2\]"):
        tiny_net(volume, ctx.replace(modality_ids=torch.tensor([0])))


def test_gradients_reach_task_and_modality_priors(tiny_net, volume):
    net = tiny_net.train()
    ctx = net.context([["liver", "tumor"], ["spleen"]], ["CT", "MR-T1"])
    out = net(volume, ctx)
    target = (volume > 0).float().expand_as(out["logits"])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], target)
    loss = loss + torch.nn.functional.cross_entropy(out["modality_logits"], ctx.modality_ids)
    loss.backward()
    for name, site in net.sites.items():
        g = site.priors.tasks.weight.grad
        assert g is not None and g.abs().sum() > 0, name
        used = {0, 3, 1}
        unused = [i for i in range(g.shape[0]) if i not in used]
        assert g[list(used)].abs().sum(1).gt(0).all(), name  # every requested task row learns
        assert g[unused].abs().sum() == 0, name  # tasks nobody asked for get nothing
        mg = site.priors.modalities.weight.grad
        assert mg[[0, 1]].abs().sum() > 0 and mg[2].abs().sum() == 0, name
        assert site.priors.null.grad is not None and site.priors.null.grad.abs().sum() > 0


def test_bf16_autocast_runs_on_cpu(tiny_net, volume):
    ctx = tiny_net.context(["liver", "kidney"], "CT", batch=2)
    ref = run(tiny_net, volume, ctx)["logits"]
    with torch.no_grad(), autocast(torch.device("cpu"), "bf16"):
        out = tiny_net(volume, ctx)["logits"]
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    # same network, lower precision: the probabilities agree closely
    assert (torch.sigmoid(out.float()) - torch.sigmoid(ref)).abs().mean() < 0.02


def test_channels_last_gives_the_same_output(tiny_net, volume):
    ctx = tiny_net.context(["liver", "kidney"], "CT", batch=2)
    ref = run(tiny_net, volume, ctx)["logits"]
    net_cl = tiny_net.to(memory_format=torch.channels_last_3d)
    x_cl = volume.contiguous(memory_format=torch.channels_last_3d)
    out = run(net_cl, x_cl, ctx)["logits"]
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    # different kernels, different summation order: fp32 rounding only (logits span about +-2)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def test_static_head_without_priors_is_the_naive_joint_baseline(volume):
    net = UniversalSegNet(tiny_config(head="static", fusion={"sites": {}})).eval()
    ctx = net.context(["spleen", "brain"], "CT", batch=2)
    out = run(net, volume, ctx)
    assert out["logits"].shape == (2, 2, 32, 32, 32) and "modality_logits" not in out
    # without priors the modality cannot influence the result
    other = run(net, volume, net.context(["spleen", "brain"], "MR-T2", batch=2))
    assert torch.equal(out["logits"], other["logits"])
