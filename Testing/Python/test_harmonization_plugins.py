"""Each harmonization plug-in: its own contract, and it trains on a toy multi-domain problem."""
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from UniversalSeg.networks import SegContext, UniversalSegNet
from UniversalSeg.networks.harmonization import (
    DomainBatchNorm,
    DomainGate,
    DomainSeparableConv3d,
    PolynomialHarmonizationNorm,
    standardize,
)
from UniversalSeg.networks.harmonization.polynomial_harmonization import hermite_basis

PLUGINS = {
    "instance": {},
    "domain_batch": {"norm": "domain_batch"},
    "polynomial": {"norm": "polynomial", "polynomial_degree": 3},
    "class_aware": {"norm": "class_aware", "class_aware_stages": ["enc4", "dec3"]},
    "domain_separable": {"conv": "domain_separable"},
}


def toy_batch(generator):
    """Two 'hospitals' image the same kind of sphere with different contrast, offset and noise."""
    size = 32
    z, y, x = torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij")
    images, masks = [], []
    for domain in (0, 1):
        c = 10 + torch.rand(3, generator=generator) * 12
        r = 5 + torch.rand(1, generator=generator) * 4
        mask = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r ** 2).float()
        scale, offset = (1.0, 0.0) if domain == 0 else (-2.0, 3.0)  # inverted contrast
        img = scale * mask + offset + 0.3 * torch.randn(mask.shape, generator=generator)
        images.append(img)
        masks.append(mask)
    return torch.stack(images)[:, None], torch.stack(masks)[:, None]


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_each_plugin_trains_on_a_toy_problem(plugin):
    torch.manual_seed(0)
    net = UniversalSegNet(tiny_config(harmonization=PLUGINS[plugin])).train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    ctx = net.context(["liver"], ["CT", "MR-T1"], ["hospital-a", "hospital-b"])
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(14):
        image, mask = toy_batch(gen)
        out = net(image, ctx)
        loss = F.binary_cross_entropy_with_logits(out["logits"], mask)
        if "domain_logits" in out:
            loss = loss + 0.1 * F.cross_entropy(out["domain_logits"], ctx.domain_ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, f"{plugin}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("plugin", ["domain_batch", "polynomial", "domain_separable"])
def test_domain_plugins_run_without_a_domain_id(plugin, volume):
    torch.manual_seed(0)
    net = UniversalSegNet(tiny_config(harmonization=PLUGINS[plugin])).eval()
    known = net.context(["liver"], "CT", "hospital-b", batch=2)
    unknown = net.context(["liver"], "CT", None, batch=2)
    with torch.no_grad():
        out_unknown = net(volume, unknown)
        out_known = net(volume, known)
        weights = DomainGate.weights(out_unknown["domain_logits"], unknown.domain_ids)
    assert torch.isfinite(out_unknown["logits"]).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(2))
    assert (weights > 0).all()  # a soft mixture, not a hard pick
    assert out_known["logits"].shape == out_unknown["logits"].shape


def _ctx_for_domains(domain_ids, num_domains):
    ids = torch.tensor(domain_ids)
    return SegContext(torch.zeros(len(ids), 1, dtype=torch.long), torch.zeros(len(ids), dtype=torch.long),
                      ids, domain_weights=F.one_hot(ids, num_domains).float())


def test_domain_separable_conv_is_the_reference_separable_adapter():
    """3D U2-Net's separable adapter, per sample of a mixed batch: the domain's depthwise
    convolution, the domain's instance norm (scale, shift) and LeakyReLU(0.01), then the SHARED
    pointwise convolution (u2net_torch: dwise = conv + norm_act, then pwise)."""
    torch.manual_seed(0)
    conv = DomainSeparableConv3d(6, 5, num_domains=3)
    with torch.no_grad():
        conv.scale.uniform_(0.5, 2.0)
        conv.shift.uniform_(-1.0, 1.0)
    x = torch.randn(3, 6, 8, 8, 8)
    mixed = conv(x, _ctx_for_domains([2, 0, 2], 3))
    for i, d in enumerate([2, 0, 2]):
        depthwise = F.conv3d(x[i:i + 1], conv.depthwise[d], padding=1, groups=6)
        normed = F.instance_norm(depthwise, weight=conv.scale[d], bias=conv.shift[d], eps=1e-5)
        expected = conv.pointwise(F.leaky_relu(normed, 0.01))
        torch.testing.assert_close(mixed[i:i + 1], expected, rtol=1e-4, atol=1e-5)
    per_domain = 3 * 6 * 27 + 2 * 3 * 6
    assert sum(p.numel() for p in conv.parameters()) == per_domain + 6 * 5 < 6 * 5 * 27


def test_u2net_plugin_gives_every_domain_its_own_input_and_output_layer():
    from UniversalSeg.networks.harmonization import DomainOutputProjection, DomainStemConv3d
    torch.manual_seed(0)
    net = UniversalSegNet(tiny_config(harmonization=PLUGINS["domain_separable"])).eval()
    assert isinstance(net.backbone.stem, DomainStemConv3d) and net.backbone.stem.weight.shape[0] == 3
    assert isinstance(net.backbone.output_layer, DomainOutputProjection)
    x = torch.randn(2, 1, 8, 8, 8)
    stem = net.backbone.stem
    out = stem(x, _ctx_for_domains([1, 2], 3))
    for i, d in enumerate([1, 2]):
        torch.testing.assert_close(out[i:i + 1], F.conv3d(x[i:i + 1], stem.weight[d], padding=1),
                                   rtol=1e-4, atol=1e-5)
    features = torch.randn(2, 4, 8, 8, 8)
    projection = net.backbone.output_layer
    torch.testing.assert_close(projection(features, _ctx_for_domains([0, 2], 3)), features)  # identity at start
    with torch.no_grad():
        projection.weight[2].mul_(2.0)
    moved = projection(features, _ctx_for_domains([0, 2], 3))
    torch.testing.assert_close(moved[0], features[0])
    torch.testing.assert_close(moved[1], 2 * features[1])
    # and the whole network: the same image gives different logits for different domains
    image = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        a = net(image, net.context(["liver"], "CT", "hospital-a"))["logits"]
        b = net(image, net.context(["liver"], "CT", "hospital-b"))["logits"]
    assert not torch.allclose(a, b)


def test_domain_batch_norm_keeps_statistics_per_domain():
    torch.manual_seed(0)
    norm = DomainBatchNorm(4, num_domains=2)
    x = torch.cat([torch.randn(2, 4, 6, 6, 6), 5 + 3 * torch.randn(2, 4, 6, 6, 6)])
    out = norm(x, _ctx_for_domains([0, 0, 1, 1], 2))
    # each domain is normalized with its own batch statistics
    torch.testing.assert_close(out[2:].mean(dim=(0, 2, 3, 4)), torch.zeros(4), atol=1e-5, rtol=0)
    assert norm.norms[1].running_mean.mean() > 0.3 and norm.norms[0].running_mean.abs().mean() < 0.1
    norm.eval()
    ctx = _ctx_for_domains([1, 1, 1, 1], 2)
    torch.testing.assert_close(norm(x, ctx), norm.norms[1](x))  # closed-form mixture == BN eval


def test_polynomial_norm_starts_as_instance_norm_and_uses_hermite_polynomials():
    x = torch.linspace(-3, 3, 13)
    he = hermite_basis(x, 3)
    torch.testing.assert_close(he[1], x ** 2 - 1)
    torch.testing.assert_close(he[2], x ** 3 - 3 * x)
    norm = PolynomialHarmonizationNorm(4, num_domains=2, degree=3)
    v = torch.randn(2, 4, 5, 5, 5) * 7 + 2
    torch.testing.assert_close(norm(v, _ctx_for_domains([0, 1], 2)), standardize(v))
    with torch.no_grad():
        norm.coeffs[1, 2] = 0.5  # domain 1 gets a quadratic term
    out = norm(v, _ctx_for_domains([0, 1], 2))
    torch.testing.assert_close(out[0], standardize(v)[0])
    assert not torch.allclose(out[1], standardize(v)[1])


def test_class_aware_norm_uses_the_soft_mask(volume):
    torch.manual_seed(0)
    net = UniversalSegNet(tiny_config(harmonization=PLUGINS["class_aware"])).eval()
    for module in net.modules():  # leave the zero init so the mask has an effect
        if hasattr(module, "to_gamma_beta"):
            torch.nn.init.normal_(module.to_gamma_beta.weight, std=0.1)
    ctx = net.context(["liver", "tumor"], "CT", batch=2)
    with torch.no_grad():
        two_pass = net(volume, ctx)["logits"]
        net.mask_embedding = None  # a single plain pass, no soft mask
        one_pass = net(volume, ctx)["logits"]
    assert not torch.allclose(two_pass, one_pass)


def test_class_aware_maps_do_not_depend_on_task_order_or_padding():
    torch.manual_seed(0)
    net = UniversalSegNet(tiny_config(harmonization=PLUGINS["class_aware"]))
    probs = torch.rand(1, 3, 8, 8, 8)
    ids = torch.tensor([[0, 3, 1]])
    maps = net.mask_embedding(probs, ids, [1, 2])
    perm = [2, 0, 1]
    maps_perm = net.mask_embedding(probs[:, perm], ids[:, perm], [1, 2])
    padded = net.mask_embedding(torch.cat([probs, torch.rand(1, 1, 8, 8, 8)], 1),
                                torch.tensor([[0, 3, 1, -1]]), [1, 2])
    for level in (1, 2):
        assert maps[level].shape == (1, 16, 8 // 2 ** level, 8 // 2 ** level, 8 // 2 ** level)
        torch.testing.assert_close(maps_perm[level], maps[level])
        torch.testing.assert_close(padded[level], maps[level])


def test_catenorm_first_pass_is_supervised_and_its_mask_detached():
    """CateNorm as its reference trains it: the plain first pass gets its own loss; the soft mask it
    hands to the second pass carries no gradient; modulation in the high-resolution encoder."""
    from UniversalSeg.networks.config import HarmonizationConfig
    from UniversalSeg.training.losses import PartialLabelLoss
    assert HarmonizationConfig().class_aware_stages == ("enc0", "enc1", "enc2", "enc3")
    torch.manual_seed(0)
    net = UniversalSegNet(tiny_config(harmonization={"norm": "class_aware"})).train()
    image = torch.randn(1, 1, 32, 32, 32)
    ctx = net.context(["liver", "tumor"], "CT")
    out = net(image, ctx)
    assert out["first_logits"].shape == out["logits"].shape and out["first_logits"].requires_grad
    target = (torch.rand_like(out["logits"]) > 0.8).float()
    loss, parts = PartialLabelLoss()(out, target, ctx.task_mask, ctx.modality_ids, ctx.domain_ids)
    assert set(parts) >= {"segmentation", "first_pass"}
    first_grad = torch.autograd.grad(parts["first_pass"] * 0 + loss, out["first_logits"], retain_graph=True)[0]
    assert first_grad.abs().sum() > 0  # the first pass is trained by its own term
    second_only = PartialLabelLoss()({"logits": out["logits"]}, target, ctx.task_mask, None, None)[0]
    assert torch.autograd.grad(second_only, out["first_logits"], allow_unused=True)[0] is None  # mask detached
    with torch.no_grad():
        assert "first_logits" not in net.eval()(image, ctx)


@pytest.mark.parametrize("norm, layer", [("polynomial", PolynomialHarmonizationNorm),
                                         ("domain_batch", DomainBatchNorm)])
def test_which_stages_harmonize_is_a_knob(norm, layer):
    from UniversalSeg.networks.harmonization import InstanceNorm
    net = UniversalSegNet(tiny_config(harmonization={"norm": norm, "harmonized_stages": ["enc3", "enc4"]}))
    kinds = {stage.name: {type(m) for m in stage.modules() if isinstance(m, (layer, InstanceNorm))}
             for stage in list(net.backbone.encoder) + list(net.backbone.decoder)}
    assert kinds["enc3"] == kinds["enc4"] == {layer}
    assert all(kinds[s] == {InstanceNorm} for s in ("enc0", "enc1", "enc2", "dec3", "dec2", "dec1", "dec0"))
    everywhere = UniversalSegNet(tiny_config(harmonization={"norm": norm}))
    assert sum(isinstance(m, layer) for m in everywhere.modules()) > sum(isinstance(m, layer) for m in net.modules())
