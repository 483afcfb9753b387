"""Prediction never holds one float map per task: the streamed sliding window gives MONAI's
probabilities bit for bit, the chunked resampling gives the whole-map masks, and the memory held
for probabilities is counted (allocations, not timings or resident memory)."""
import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from torch.profiler import ProfilerActivity, profile

from conftest import tiny_config
from UniversalSeg.cpu_threads import ThreadGovernor
from UniversalSeg.data.modalities import KNOWN_MODALITIES
from UniversalSeg.data.terminology import task_info
from UniversalSeg.inference import PredictOptions, Predictor
from UniversalSeg.inference.streaming import ChunkedResampler, WindowPlan, WindowStream
from UniversalSeg.inference.writers import LayeredVoxels, assign_layers
from UniversalSeg.model_package import load_package, save_package
from UniversalSeg.networks import UniversalSegNet

ULP_BELOW_ONE = 2.0 ** -24  # one float32 step for probabilities in [0.5, 1)


@pytest.mark.parametrize("shape, roi, overlap, batch", [
    ((50, 40, 30), (32, 32, 32), 0.5, 1),
    ((20, 70, 45), (32, 32, 16), 0.25, 3),   # smaller than the window along x: padded, as MONAI pads
    ((100, 33, 64), (32, 32, 32), 0.5, 4),   # a batch of windows reaches past the next start
    ((41, 17, 16), (16, 16, 16), 0.0, 2),
])
def test_streamed_windows_are_monai_bit_for_bit(shape, roi, overlap, batch):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 3, 3, padding=1)

    def predictor(window):
        with torch.no_grad():
            return torch.sigmoid(conv(window))
    x = torch.randn(1, 1, *shape).contiguous(memory_format=torch.channels_last_3d)
    expected = sliding_window_inference(x, roi, batch, predictor, overlap=overlap, mode="gaussian")[0]
    got = torch.full_like(expected, float("nan"))
    slabs = []

    def emit(x0, x1, values):
        slabs.append((x0, x1))
        got[:, x0:x1] = values
    WindowStream(WindowPlan.make(shape, roi, overlap), 3, torch.device("cpu"), torch.device("cpu"),
                 torch.float32).run(x, batch, predictor, emit)
    assert torch.equal(got, expected)
    assert [a for a, _ in slabs] == [0] + [b for _, b in slabs[:-1]] and slabs[-1][1] == shape[0]
    assert len(slabs) > 1 or shape[0] <= roi[0]  # handed on slab by slab, not at the end


def package(folder, tasks, patch=(32, 32, 32), spacing=(2.0, 2.0, 2.0), groups=None):
    torch.manual_seed(0)
    cfg = tiny_config(tasks=tasks, domains=[])
    return load_package(save_package(folder, UniversalSegNet(cfg), [task_info(t, index=i) for i, t in enumerate(tasks)],
                                     dict(KNOWN_MODALITIES), spacing, patch, exclusive_groups=groups))


class ConvOracle(torch.nn.Module):
    """A fixed random convolution per task: probabilities that vary from voxel to voxel around 0.5,
    so that every mask is partial and many interpolated values lie near a threshold."""

    def __init__(self, tasks: int, kernel: int = 3):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv3d(1, tasks, kernel, padding=kernel // 2)

    def forward(self, x, ctx):
        return {"logits": 4.0 * self.conv(x)[:, ctx.task_ids[0]]}


def fixed_threads(predictor: Predictor) -> Predictor:
    """The same thread count for every window, so that two runs compute the same network outputs."""
    predictor.threads = ThreadGovernor(enabled=False)
    return predictor


def whole_map_path(predictor: Predictor, image, tasks, options):
    """The predictor as it was: MONAI's whole maps on the model grid, then every task resampled whole."""
    computed = predictor.with_group_members(tasks)
    grid = predictor.prepare(image, "CT", len(computed), options)
    ids = [predictor.vocab.task_id(t) for t in computed]
    probs = predictor._infer(grid.volume, ids, predictor.vocab.modality_id("CT"), predictor.vocab.domain_id(None),
                             options, lambda *a: None)
    return predictor.to_input_masks(probs, computed, tasks, grid, options, keep=options.keep_probabilities)


def image(size, spacing, origin, direction, seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in size[::-1]], indexing="ij")
    body = (xx / 0.8) ** 2 + (yy / 0.7) ** 2 + (zz / 0.9) ** 2 < 1
    out = sitk.GetImageFromArray((np.where(body, 60.0, -900.0) + rng.normal(0, 40, body.shape)).astype(np.float32))
    out.SetSpacing(spacing)
    out.SetOrigin(origin)
    out.SetDirection(direction)
    return out


def oblique(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return tuple(q.ravel())


@pytest.mark.parametrize("geometry", [
    ((70, 52, 30), (0.9, 1.1, 2.7), (-101.3, 87.7, -40.05), (-1, 0, 0, 0, -1, 0, 0, 0, 1)),  # LPS, as DICOM
    ((40, 44, 36), (1.3, 1.7, 2.9), (12.3, -40.1, 7.7), oblique(3)),
    ((36, 60, 40), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (0, 1, 0, 0, 0, -1, -1, 0, 0)),  # axes swapped
])
def test_predict_gives_the_whole_map_masks(tmp_path, geometry):
    tasks = ["liver", "spleen", "kidney", "tumor", "brain"]
    pkg = package(tmp_path / "m", tasks, groups=[["liver", "spleen", "kidney"]])
    predictor = fixed_threads(Predictor(pkg, device="cpu", precision="fp32"))
    predictor.net = ConvOracle(len(tasks))
    img = image(*geometry)
    for options in (PredictOptions(keep_probabilities=True),
                    PredictOptions(crop_foreground=False, largest_component=True, keep_probabilities=True,
                                   thresholds={"tumor": 0.3, "brain": 0.61})):
        got = predictor.predict(img, "CT", ["spleen", "tumor", "brain"], options)
        masks, probabilities = whole_map_path(predictor, img, ["spleen", "tumor", "brain"], options)
        assert list(got.masks) == list(masks) == ["spleen", "tumor", "brain"]
        for task in masks:
            a, b = sitk.GetArrayViewFromImage(got.masks[task]), sitk.GetArrayViewFromImage(masks[task])
            assert a.dtype == b.dtype == np.uint8
            assert np.array_equal(a, b), task
            assert 0 < a.sum() < a.size  # a real case: neither empty nor full
            p, q = sitk.GetArrayViewFromImage(got.probabilities[task]), sitk.GetArrayViewFromImage(probabilities[task])
            # SimpleITK computes a chunk's voxel positions from the chunk's own origin: the last bit
            # of a handful of interpolated values may differ, never more
            assert np.abs(p.astype(np.float64) - q).max() <= ULP_BELOW_ONE
            assert np.count_nonzero(p != q) <= 0.01 * p.size  # measured: 0 to 0.13 %
        for mine, whole in ((got.masks["spleen"], masks["spleen"]),):
            assert mine.GetOrigin() == whole.GetOrigin() and mine.GetDirection() == whole.GetDirection()


def torch_peak_bytes(run) -> int:
    """Peak bytes of torch CPU tensors alive at once while ``run()`` runs (the profiler records every
    allocation and release: a count, not a measurement of resident memory)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
                    for e in prof.events())
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def numpy_peak_bytes(run) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_probabilities_are_never_held_for_the_whole_volume(tmp_path):
    """24 tasks on a model grid 160 voxels long with 16^3 windows: the whole-map path holds 24 float
    maps of the grid (plus MONAI's weight map); the streamed one a band 16 voxels wide of them and
    the few slabs a waiting chunk of the input grid reads (the windows' own outputs: both alike)."""
    tasks = [f"structure-{i:02d}" for i in range(24)]
    predictor = fixed_threads(Predictor(package(tmp_path / "m", tasks, patch=(16, 16, 16)), device="cpu",
                                        precision="fp32"))
    predictor.net = ConvOracle(len(tasks), kernel=1)  # the tiny network's 4 poolings need windows over 16^3
    img = image((160, 32, 32), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    options = PredictOptions(crop_foreground=False, sw_batch_size=1)  # the band: one window wide
    voxels = 160 * 32 * 32
    float_maps = len(tasks) * voxels * 4  # one float32 map per task on the model grid (= the input grid)
    grid = predictor.prepare(img, "CT", len(tasks), options)  # steps 1-3 are the same for both
    ids = [predictor.vocab.task_id(t) for t in tasks]
    modality, domain = predictor.vocab.modality_id("CT"), predictor.vocab.domain_id(None)
    result = {}

    def whole_maps():
        probs = predictor._infer(grid.volume, ids, modality, domain, options, lambda *a: None)
        result["whole"] = predictor.to_input_masks(probs, tasks, tasks, grid, options)[0]

    def streamed_maps():
        result["streamed"] = predictor._stream_masks(grid, ids, modality, domain, tasks, tasks, options,
                                                     lambda *a: None, lambda *a: None, {})[0]
    whole = torch_peak_bytes(whole_maps)
    streamed = torch_peak_bytes(streamed_maps)
    print(f"torch peak: whole maps {whole / float_maps:.3f}, streamed {streamed / float_maps:.3f} "
          f"of one float map per task ({float_maps} bytes)")
    assert whole >= float_maps  # the old path: every task's map at once
    assert streamed <= 0.35 * float_maps  # measured 0.32: band 0.10, waiting slabs, the windows
    assert streamed <= 0.3 * whole
    for task in tasks:  # the same masks all the same
        assert np.array_equal(sitk.GetArrayViewFromImage(result["streamed"][task]),
                              sitk.GetArrayViewFromImage(result["whole"][task]))
    # what numpy holds meanwhile: while windows run, the masks as bits (1/8 byte per voxel and
    # task) and chunk-sized floats; at the end the masks, a byte per voxel and task
    at_finish = {}
    finish = ChunkedResampler.finish

    def spy(self):
        at_finish["current"], at_finish["peak"] = tracemalloc.get_traced_memory()
        return finish(self)
    ChunkedResampler.finish = spy
    try:
        held = numpy_peak_bytes(streamed_maps)
    finally:
        ChunkedResampler.finish = finish
    print(f"numpy peak: {held / voxels:.1f} bytes per voxel with {len(tasks)} tasks; while the windows ran "
          f"{at_finish['peak'] / voxels:.2f}, held at their end {at_finish['current'] / voxels:.2f}")
    assert held <= len(tasks) * voxels + 2 * 4 * voxels
    assert at_finish["current"] <= len(tasks) * voxels / 8 * 1.05 + 0.25 * voxels
    assert at_finish["peak"] <= len(tasks) * voxels / 8 * 1.05 + 2 * 4 * voxels


def test_a_one_channel_volume_goes_to_the_network_without_a_copy():
    """``prepare_input`` gives a contiguous one-channel volume the channels-last strides on the same
    memory (``Tensor.to(memory_format=...)`` copies it although the bytes are the same); several
    channels are converted."""
    from UniversalSeg.networks import prepare_input
    cpu = torch.device("cpu")
    x = torch.randn(1, 1, 30, 20, 10)
    y = prepare_input(x, cpu)
    expected = x.to(memory_format=torch.channels_last_3d)
    assert y.data_ptr() == x.data_ptr() and y.stride() == expected.stride() and torch.equal(y, expected)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    many = torch.randn(2, 3, 8, 8, 8)
    z = prepare_input(many, cpu)
    assert z.data_ptr() != many.data_ptr() and z.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(z, many)


def test_seg_nrrd_layers_pack_overlapping_and_disjoint_masks():
    """Each mask is exactly where its (layer, label) is; masks that never overlap share one layer;
    a mask goes to the first layer it does not overlap (Slicer's packing)."""
    shape = (20, 25, 30)
    rng = np.random.default_rng(0)
    overlapping = [rng.random(shape) < 0.3 for _ in range(12)]
    disjoint = [np.zeros(shape, bool) for _ in range(12)]
    for i, m in enumerate(disjoint):
        m[:, :, i * 2:(i + 1) * 2] = True
    nested = [np.zeros(shape, bool) for _ in range(4)]  # an organ, a lesion inside, a disjoint one, empty
    nested[0][2:18, 2:20, 2:25] = True
    nested[1][5:8, 5:8, 5:8] = True
    nested[2][19, 24, 29] = True
    for case in (overlapping, disjoint, nested):
        places = assign_layers(case)
        layers = LayeredVoxels(case, places).array()
        if layers.ndim == 3:
            layers = layers[None]
        layers = layers.transpose(0, 3, 2, 1)  # (layer, k, j, i) as the masks
        assert layers.dtype == np.uint8 and layers.shape[1:] == shape
        for m, (layer, label) in zip(case, places):
            assert np.array_equal(layers[layer] == label, m)
        for layer in range(layers.shape[0]):  # labels 1..n in each layer, none skipped
            assert sorted(label for ly, label in places if ly == layer) == list(range(1, 1 + sum(
                ly == layer for ly, _ in places)))
    assert {layer for layer, _ in assign_layers(disjoint)} == {0}
    assert len({layer for layer, _ in assign_layers(overlapping)}) > 1
    assert assign_layers(nested) == [(0, 1), (1, 1), (0, 2), (0, 3)]


def test_seg_nrrd_is_written_slice_by_slice(tmp_path):
    """The written file holds the masks exactly (read back with slicerio), and writing never holds
    the layers or a copy of the voxels: 12 overlapping masks take 12 layers (9.4 MB, and pynrrd's
    ``tobytes`` copy as much again); Python's peak while writing is pynrrd's 1 MiB chunk and its
    pieces, a k-slice and a block of slices of two masks, well below a third of the layers."""
    import slicerio

    from UniversalSeg.inference.writers import write_seg_nrrd
    shape = (64, 96, 128)  # (k, j, i)
    rng = np.random.default_rng(1)
    tasks = [f"structure-{i:02d}" for i in range(12)]
    arrays = {t: (rng.random(shape) < 0.2).astype(np.uint8) for t in tasks}
    reference = sitk.Image([128, 96, 64], sitk.sitkInt16)
    reference.SetSpacing((0.7, 0.8, 2.5))
    reference.SetOrigin((-10.0, 20.0, 5.0))
    reference.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    masks = {}
    for t, a in arrays.items():
        masks[t] = sitk.GetImageFromArray(a)
        masks[t].CopyInformation(reference)
    out = tmp_path / "r.seg.nrrd"
    held = numpy_peak_bytes(lambda: write_seg_nrrd(out, reference, masks, {t: task_info(t) for t in tasks}))
    layered = len(tasks) * arrays[tasks[0]].nbytes
    print(f"Python's peak while writing: {held / layered:.3f} of the layered voxels")
    assert held < layered / 3
    seg = slicerio.read_segmentation(str(out))
    assert seg["voxels"].shape == (len(tasks), 128, 96, 64)
    assert np.allclose(np.asarray(seg["ijkToLPS"])[:3, 3], reference.GetOrigin())
    for t in tasks:
        segment = slicerio.segment_from_name(seg, task_info(t).display_name)
        voxels = seg["voxels"][segment["layer"]] == segment["labelValue"]  # (i, j, k)
        assert np.array_equal(voxels.transpose(2, 1, 0), arrays[t].astype(bool))
        hits = [np.flatnonzero(voxels.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        assert list(segment["extent"]) == [n for h in hits for n in (h[0], h[-1])]  # Slicer's inclusive extent
    # an empty mask and a one-voxel mask: Slicer's empty extent, and a box of one voxel
    one = np.zeros(shape, np.uint8)
    one[5, 7, 9] = 1  # (k, j, i)
    small = {"empty": np.zeros(shape, np.uint8), "one": one}
    images = {}
    for t, a in small.items():
        images[t] = sitk.GetImageFromArray(a)
        images[t].CopyInformation(reference)
    write_seg_nrrd(tmp_path / "s.seg.nrrd", reference, images, {t: task_info(t) for t in small})
    written = slicerio.read_segmentation(str(tmp_path / "s.seg.nrrd"))["segments"]
    extents = {segment["name"]: list(segment["extent"]) for segment in written}
    assert extents[task_info("empty").display_name] == [0, -1, 0, -1, 0, -1]
    assert extents[task_info("one").display_name] == [9, 9, 7, 7, 5, 5]


def test_windows_per_pass_follow_the_voxel_budget(tmp_path, monkeypatch):
    """Without --sw-batch, a pass holds as many windows as the device's voxel budget (4 of 48^3 on
    CPU, 4 of 128^3 on GPU, 1 to 16); the probabilities are those of one window per pass."""
    from UniversalSeg.inference import predictor as predictor_module
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert predictor_module.window_batch((48, 48, 48), cpu) == 4
    assert predictor_module.window_batch((128, 128, 128), cpu) == 1
    assert predictor_module.window_batch((96, 96, 96), cpu) == 1
    assert predictor_module.window_batch((32, 32, 32), cpu) == 13
    assert predictor_module.window_batch((16, 16, 16), cpu) == 16  # capped
    assert predictor_module.window_batch((128, 128, 128), cuda) == 4
    assert predictor_module.window_batch((64, 64, 64), cuda) == 16
    tasks = ["liver", "spleen", "kidney"]
    predictor = fixed_threads(Predictor(package(tmp_path / "m", tasks), device="cpu", precision="fp32"))
    predictor.net = ConvOracle(len(tasks))
    seen = []
    original = Predictor._sliding_window

    def spy(self, *args, **kwargs):
        seen.append(args[6])  # the window batch
        return original(self, *args, **kwargs)
    monkeypatch.setattr(Predictor, "_sliding_window", spy)
    img = image((70, 52, 30), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    budget = predictor.predict(img, "CT", tasks, PredictOptions(keep_probabilities=True, crop_foreground=False))
    one = predictor.predict(img, "CT", tasks, PredictOptions(keep_probabilities=True, crop_foreground=False,
                                                             sw_batch_size=1))
    assert seen == [13, 1]  # 32^3 windows: 4 * 48^3 // 32^3
    for task in tasks:
        p = sitk.GetArrayViewFromImage(budget.probabilities[task])
        q = sitk.GetArrayViewFromImage(one.probabilities[task])
        assert np.abs(p.astype(np.float64) - q).max() <= 1e-5  # a batched convolution may round differently
