"""Without gradients, the CPU runs every eligible 3D convolution of a prepared model on oneDNN
(PyTorch's own heuristic sends small batch-1 convolutions to ``slow_conv3d``); with gradients and
under autocast, PyTorch's choice runs unchanged, bit for bit."""
import copy

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from UniversalSeg.networks import ModelConfig, SegContext, UniversalSegNet, prepare_input, prepare_model
from UniversalSeg.networks.onednn_convolution import use_onednn_convolutions

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")
CPU = torch.device("cpu")


def kernels(run) -> dict:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    names = [e.name for e in prof.events()]
    return {"slow": names.count("aten::slow_conv3d_forward"), "onednn": names.count("aten::mkldnn_convolution")}


def test_a_small_batch_one_convolution_runs_on_onednn_without_gradients():
    torch.manual_seed(0)
    plain = torch.nn.Conv3d(32, 32, 3, padding=1).to(memory_format=torch.channels_last_3d)
    routed = copy.deepcopy(plain)
    assert use_onednn_convolutions(routed) == 1
    x = torch.randn(1, 32, 24, 24, 24).contiguous(memory_format=torch.channels_last_3d)  # 1*32*24*24 < 20480
    with torch.inference_mode():
        assert kernels(lambda: plain(x)) == {"slow": 1, "onednn": 0}  # PyTorch's heuristic
        assert kernels(lambda: routed(x)) == {"slow": 0, "onednn": 1}
        expected, got = plain(x), routed(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_training_and_autocast_keep_pytorchs_choice():
    torch.manual_seed(0)
    plain = torch.nn.Conv3d(16, 16, 3, padding=1)
    routed = copy.deepcopy(plain)
    use_onednn_convolutions(routed)
    x = torch.randn(1, 16, 20, 20, 20, requires_grad=True)
    assert kernels(lambda: routed(x)) == {"slow": 1, "onednn": 0}
    a, b = plain(x), routed(x)
    assert torch.equal(a, b)
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    assert torch.equal(ga, gb)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = plain(x), routed(x)
    assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b)


def test_a_prepared_network_predicts_as_before():
    """prepare_model routes a CPU network's convolutions; its logits stay within float32 rounding
    of PyTorch's own kernels."""
    torch.manual_seed(0)
    tasks = ["liver", "spleen", "kidney"]
    net = UniversalSegNet(ModelConfig.preset("small", tasks, ["CT"])).eval()
    reference = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)
    prepared = prepare_model(net, CPU)
    x = prepare_input(torch.randn(1, 1, 32, 32, 32), CPU)
    ctx = SegContext(torch.arange(3)[None], torch.zeros(1, dtype=torch.long), torch.full((1,), -1))
    with torch.inference_mode():
        counts = kernels(lambda: prepared(x, ctx))
        expected, got = reference(x, ctx)["logits"], prepared(x, ctx)["logits"]
    assert counts["onednn"] > 10 * max(counts["slow"], 1)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
