"""The predictor: any 3D image in, one mask per requested task out, on the EXACT input grid.

    predictor = Predictor(load_package("model.zip"), device="auto", precision="auto")
    result = predictor.predict("ct.nii.gz", modality="CT", tasks=["liver", "spleen"])
    result.masks["liver"]        # SimpleITK uint8 image with the input's origin/spacing/direction/size

Steps (one direction only):
1. read with SimpleITK (NIfTI, NRRD, MHA, a DICOM series folder) and refuse what cannot be
   segmented (not 3D, several components, sheared grid, NaN, constant image);
2. the training preprocessing itself (``data.transforms.preprocessing``): RAS orientation,
   resampling to the model spacing, the modality's intensity policy;
3. optional crops: a user ROI (RAS millimetres) and the foreground (body) bounding box;
4. sliding windows with Gaussian weighting, the chosen overlap and window batch, ONE pass for all
   requested tasks (only those are computed), sigmoid probabilities aggregated in half precision
   on the device when running in bf16/fp16; CUDA out-of-memory retries with smaller window
   batches, then aggregates on the CPU, then runs on the CPU. The windows, weights and float
   operations are MONAI ``sliding_window_inference``'s (bit-identical probabilities), streamed:
   only a band one window wide is held, and each slab of the model grid's first axis goes on to
   step 5 as soon as it is final (``streaming.WindowStream``);
5. SimpleITK linear resampling of the probabilities back onto the input grid (origin, spacing,
   direction, size copied from the input), chunk by chunk as their slabs arrive, one task at a
   time (``streaming.ChunkedResampler``; the masks of whole-map resampling: a chunk's own origin
   can change the last bit of an interpolated value, about 1 in 1,000 voxels, so a mask could
   differ only where a probability lies within 6e-8 of its threshold), threshold, optional
   clean-up keeping each task's largest connected components (as many as the structure has
   parts: both kidneys; lesions are never cleaned up this way). Peak memory: the band, one float
   map of the model grid, the masks as bits; not one float map per task.
   Tasks of a model's exclusive group (``exclusive_groups``) are resolved there, at the one place
   where probabilities become masks (``to_input_masks``): a voxel goes to the group's member with
   the highest probability that reaches its threshold, else to none; the requested tasks' group
   mates are computed for that (not returned); probability maps stay raw.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference

from ..data.image_io import ImageError, check_image, read_sitk, to_metatensor
from ..data.transforms import preprocessing
from ..model_package import ModelPackage
from ..networks import SegContext, autocast, prepare_input, resolve_device, resolve_precision
from .progress import Reporter, scaled, silent
from .streaming import ChunkedResampler, WindowPlan, WindowStream, lps_geometry
from ..cpu_threads import ThreadGovernor
from ..errors import InputError
from ..exclusive_groups import ExclusiveResolver, with_members

log = logging.getLogger("UniversalSeg.predict")

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


# Windows per network pass when the user gives none: as many as fit a voxel budget. A pass over
# several small windows keeps the CPU's threads busy where one 48^3 window cannot (4 windows of
# 48^3 per pass: 2.1x faster on a 2-core AVX2 Xeon, identical masks); one 128^3 window already
# fills them. On a GPU the budget is four 128^3 windows (CUDA out-of-memory halves it).
WINDOW_VOXELS = {"cpu": 4 * 48 ** 3, "cuda": 4 * 128 ** 3}
MAX_WINDOW_BATCH = 16


def window_batch(patch: Sequence[int], device: torch.device) -> int:
    """Windows per pass for ``patch`` on ``device``: the voxel budget over the window's voxels,
    at least 1, at most ``MAX_WINDOW_BATCH``."""
    budget = WINDOW_VOXELS.get(device.type, WINDOW_VOXELS["cpu"])
    return int(min(MAX_WINDOW_BATCH, max(1, budget // int(np.prod(patch)))))


class InferenceMemoryError(MemoryError):
    """The job does not fit in memory; the message says what to change."""


@dataclass
class PredictOptions:
    overlap: float = 0.5
    sw_batch_size: Optional[int] = None  # windows per pass; None: by a voxel budget (``window_batch``)
    thresholds: dict = field(default_factory=dict)  # task -> threshold (default from the package)
    largest_component: bool = False  # keep each task's largest components (TaskInfo.parts of them)
    roi: Optional[Sequence[float]] = None  # RAS mm: (x0, x1, y0, y1, z0, z1)
    crop_foreground: bool = True
    keep_probabilities: bool = False

    def validate(self):
        if not 0 <= self.overlap < 1:
            raise InputError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size is not None and self.sw_batch_size < 1:
            raise InputError("the window batch must be at least 1")
        if self.roi is not None and (len(self.roi) != 6 or any(self.roi[2 * i] >= self.roi[2 * i + 1]
                                                              for i in range(3))):
            raise InputError("roi must be six numbers x0 x1 y0 y1 z0 z1 (RAS mm) with x0 < x1 etc.")


@dataclass
class ModelGrid:
    """The input image and its preprocessed, cropped volume on the model grid (``affine``: RAS of
    voxel (i, j, k) of ``volume`` [1, X, Y, Z])."""
    reference: sitk.Image
    volume: torch.Tensor
    affine: np.ndarray

    def sitk_image(self, values: torch.Tensor) -> sitk.Image:
        """[X, Y, Z] values on this grid as a SimpleITK image with the grid's geometry."""
        image = sitk.GetImageFromArray(values.permute(2, 1, 0).to(torch.float32).contiguous().numpy())
        origin, spacing, direction = metatensor_affine_to_lps(self.affine)
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)
        return image


@dataclass
class Prediction:
    reference: sitk.Image  # the input image (geometry reference)
    tasks: list[str]
    masks: dict[str, sitk.Image]  # uint8 0/1 on the input grid
    probabilities: dict[str, sitk.Image]  # float32 on the input grid (only when asked)
    timings: dict[str, float]
    device: str
    precision: str
    warnings: list[str] = field(default_factory=list)


metatensor_affine_to_lps = lps_geometry  # RAS affine of (i, j, k) -> SimpleITK's (origin, spacing, direction)


def _window_count(shape, roi, overlap) -> int:
    n = 1
    for size, r in zip(shape, roi):
        if size <= r:
            continue
        interval = max(int(r * (1 - overlap)), 1)
        n *= math.ceil((size - r) / interval) + 1
    return n


def _available_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Predictor:
    def __init__(self, package: ModelPackage, device: str = "auto", precision: str = "auto"):
        self.package = package
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.backend = None  # who runs the CPU windows: None is torch, else cpu_backend.use_backend's runtime
        self.net = package.build(self.device)
        self.vocab = self.net.vocab
        self.threads = ThreadGovernor(enabled=None if self.device.type == "cpu" else False)
        self.warnings: list[str] = []
        # validated when the package was read (model_metadata.summarize)
        self.exclusive_groups: list[list[str]] = package.meta.get("exclusive_groups") or []

    # ------------------------------------------------------------------ public
    def predict(self, image, modality: str, tasks: Optional[Sequence[str]] = None,
                options: Optional[PredictOptions] = None, report: Reporter = silent,
                domain: Optional[str] = None) -> Prediction:
        options = options or PredictOptions()
        options.validate()
        tasks = list(tasks) if tasks else list(self.package.config.tasks)
        task_ids = [self.vocab.task_id(t) for t in tasks]  # unknown names: clear error first
        modality_id = self.vocab.modality_id(modality)
        domain_id = self.vocab.domain_id(domain)
        if len(set(tasks)) != len(tasks):
            raise InputError(f"a task is requested twice: {tasks}")
        self.warnings = []
        computed = self.with_group_members(tasks)  # == tasks for a model without exclusive groups
        task_ids += [self.vocab.task_id(t) for t in computed[len(tasks):]]
        timings, t0 = {}, time.perf_counter()
        grid = self.prepare(image, modality, len(computed), options, report, timings, streamed=True)
        masks, kept = self._stream_masks(grid, task_ids, modality_id, domain_id, computed, tasks, options,
                                         scaled(report, 0.15, 0.9, "infer"), scaled(report, 0.9, 1.0, "resample"),
                                         timings)
        timings["total"] = time.perf_counter() - t0
        report("done", 1.0, f"{len(tasks)} task(s) in {timings['total']:.1f} s")
        return Prediction(grid.reference, tasks, masks, kept, timings, str(self.device), self.precision,
                          list(self.warnings))

    def prepare(self, image, modality: str, n_tasks: int, options: PredictOptions,
                report: Reporter = silent, timings: Optional[dict] = None, streamed: bool = False) -> "ModelGrid":
        """Steps 1-3: read and check the image, preprocess it, crop it. ``n_tasks`` maps will be
        blended: whole (``_infer``) or ``streamed`` (``_stream_masks``), for the memory check."""
        timings = {} if timings is None else timings
        t0 = time.perf_counter()
        report("read", 0.0, "reading the image")
        reference = image if isinstance(image, sitk.Image) else read_sitk(image)
        name = "image" if isinstance(image, sitk.Image) else str(image)
        check_image(reference, name)
        self._check_not_constant(reference, name)
        timings["read"] = time.perf_counter() - t0

        report("preprocess", 0.05, f"resampling to {self.package.spacing} mm, {modality} intensities")
        t = time.perf_counter()
        pre = preprocessing(self.package.spacing, self.package.modalities, with_label=False)(
            {"image": to_metatensor(reference, filename=name), "modality": modality})["image"]
        affine = np.asarray(pre.affine, dtype=np.float64)
        volume = pre.as_tensor()  # [1, X, Y, Z] float32
        box = self._crop_box(volume, affine, options)
        # a copy of the crop (none when nothing is cropped): the whole preprocessed volume goes,
        # where a view would keep it for the whole prediction (and the windows copy the view anyway)
        cropped = volume[(slice(None),) + tuple(slice(a, b) for a, b in box)].contiguous()
        del pre, volume
        timings["preprocess"] = time.perf_counter() - t
        self._check_memory(cropped.shape[1:], n_tasks, streamed)
        crop_affine = affine.copy()
        crop_affine[:3, 3] = affine[:3, :3] @ np.array([a for a, _ in box], float) + affine[:3, 3]
        return ModelGrid(reference, cropped, crop_affine)

    def _stream_masks(self, grid: "ModelGrid", task_ids, modality_id, domain_id, computed: Sequence[str],
                      wanted: Sequence[str], options: PredictOptions, report, step, timings: dict):
        """Steps 4 and 5 interleaved: the masks (and probabilities, if kept) of ``wanted`` on the
        input grid, equal to ``to_input_masks(_infer(...))`` without one float map per task."""
        thresholds = {t: self.threshold(t, options) for t in computed}
        t0 = time.perf_counter()

        def attempt(device, batch, out_device):
            sink = ChunkedResampler(grid.volume.shape[1:], grid.affine, grid.reference, computed, wanted,
                                    thresholds, self.exclusive_groups, options.keep_probabilities)
            spent = [0.0]

            def emit(x0, x1, slab):
                t = time.perf_counter()
                sink.add(x0, x1, slab)
                spent[0] += time.perf_counter() - t
            self._sliding_window(grid.volume, task_ids, modality_id, domain_id, options, device, batch,
                                 out_device, report, emit=emit)
            return sink, spent[0]

        sink, resampling = self._with_fallbacks(options, attempt)
        timings["infer"] = time.perf_counter() - t0 - resampling
        t = time.perf_counter()
        step(0.0, "masks on the input grid")
        arrays, kept_arrays = sink.finish()
        del sink
        masks, kept = {}, {}
        for task in wanted:  # one array at a time becomes an image (a copy), then goes
            mask = sitk.GetImageFromArray(arrays.pop(task))
            mask.CopyInformation(grid.reference)
            masks[task] = self.binarize(mask, task, options, threshold=False)
            if task in kept_arrays:
                kept[task] = sitk.GetImageFromArray(kept_arrays.pop(task))
                kept[task].CopyInformation(grid.reference)
        timings["resample"] = resampling + time.perf_counter() - t
        return masks, kept

    def with_group_members(self, tasks: Sequence[str]) -> list[str]:
        """``tasks`` and, after them, the other members of their exclusive groups: what must be
        computed for ``to_input_masks`` to resolve the groups."""
        return with_members(tasks, self.exclusive_groups)

    def to_input_masks(self, probs, tasks: Sequence[str], wanted: Sequence[str], grid: "ModelGrid",
                       options: PredictOptions, step=None, keep: bool = False,
                       reference: Optional[sitk.Image] = None, cleanup: bool = True):
        """Step 5, THE place where probabilities become masks: ``probs[i]`` [X, Y, Z] of ``tasks[i]``
        on the model grid -> ({task: uint8 mask}, {task: float32 probabilities, raw, if ``keep``})
        of the ``wanted`` tasks on ``reference`` (default: the whole input grid). A task in no
        exclusive group is thresholded alone; a grouped one goes through ``ExclusiveResolver``
        (``tasks`` must then hold its whole group: ``with_group_members``)."""
        resolver = ExclusiveResolver(self.exclusive_groups, wanted)
        missing = [t for t in with_members(wanted, self.exclusive_groups) if t not in tasks]
        if missing:
            raise ValueError(f"exclusive groups need the probabilities of {missing} too")
        masks, kept, target = {}, {}, reference or grid.reference
        for i, task in enumerate(tasks):
            if task not in wanted and task not in resolver:
                continue
            if step is not None:  # step(fraction, message): progress.scaled's
                step(i / len(tasks), f"{task}: back to the input grid")
            on_input = self.resample(probs[i], grid, target)
            if task in resolver:
                resolver.add(task, sitk.GetArrayViewFromImage(on_input), self.threshold(task, options))
            elif task in wanted:
                masks[task] = self.binarize(on_input, task, options, cleanup)
            if keep and task in wanted:
                kept[task] = on_input
            del on_input
        for task in wanted:
            if task in resolver:
                mask = sitk.GetImageFromArray(resolver.mask(task))
                mask.CopyInformation(target)
                masks[task] = self.binarize(mask, task, options, cleanup, threshold=False)
        return {t: masks[t] for t in wanted}, kept

    @staticmethod
    def resample(prob: torch.Tensor, grid: "ModelGrid", reference: sitk.Image) -> sitk.Image:
        """Probabilities [X, Y, Z] on the model grid -> float32 on ``reference`` (linear)."""
        # torch reorders to SimpleITK's (k, j, i) order in float32, one task at a time
        # (multi-threaded; SimpleITK would otherwise copy a strided array element by element)
        return sitk.Resample(grid.sitk_image(prob), reference, sitk.Transform(),
                             sitk.sitkLinear, 0.0, sitk.sitkFloat32)

    def binarize(self, image: sitk.Image, task: str, options: PredictOptions, cleanup: bool = True,
                 threshold: bool = True) -> sitk.Image:
        """Probabilities -> uint8 mask (prob >= the task's threshold; ``threshold`` False: already
        a mask), then the optional largest-component clean-up."""
        mask = sitk.BinaryThreshold(image, self.threshold(task, options), 2.0, 1, 0) if threshold else image
        if cleanup and options.largest_component:
            parts = {t.name: t.parts for t in self.package.tasks}
            mask = largest_components(mask, parts.get(task, 1))
        return mask

    def threshold(self, task: str, options: PredictOptions) -> float:
        return float(options.thresholds.get(task, self.package.meta["inference"].get("threshold", 0.5)))

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _check_not_constant(image: sitk.Image, name: str) -> None:
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(image)
        if stats.GetMinimum() == stats.GetMaximum():
            raise ImageError(f"{name}: every voxel has the value {stats.GetMinimum()} (empty or "
                             "constant image); there is nothing to segment")

    def _crop_box(self, volume: torch.Tensor, affine: np.ndarray, options: PredictOptions):
        shape = np.array(volume.shape[1:])
        lo, hi = np.zeros(3, int), shape.copy()
        if options.roi is not None:
            corners = np.array([[options.roi[0 + a], options.roi[2 + b], options.roi[4 + c], 1.0]
                                for a in (0, 1) for b in (0, 1) for c in (0, 1)])
            ijk = (np.linalg.inv(affine) @ corners.T)[:3].T
            lo = np.maximum(lo, np.floor(ijk.min(0)).astype(int))
            hi = np.minimum(hi, np.ceil(ijk.max(0)).astype(int) + 1)
            if np.any(hi <= lo):
                raise InputError(f"the ROI {list(options.roi)} (RAS mm) does not overlap the image")
        if options.crop_foreground:
            sub = volume[0, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            fg = sub > sub.min() + 0.1 * (sub.max() - sub.min())
            if bool(fg.any()):
                idx = [torch.nonzero(fg.any(dim=tuple(d for d in range(3) if d != a))).flatten()
                       for a in range(3)]
                margin = 4
                new_lo = np.array([int(i[0]) for i in idx]) + lo - margin
                new_hi = np.array([int(i[-1]) + 1 for i in idx]) + lo + margin
                lo, hi = np.maximum(lo, new_lo), np.minimum(hi, new_hi)
        return [(int(a), int(b)) for a, b in zip(lo, hi)]

    def _check_memory(self, spatial, n_tasks: int, streamed: bool = False) -> None:
        voxels = int(np.prod(spatial))
        if streamed:  # a band of windows in fp32 (and as much waiting), a float map, a mask per task
            band = min(1.0, 2 * self.package.patch_size[0] / max(int(spatial[0]), 1))
            need = int(voxels * (n_tasks * 4 * band + n_tasks + 12))
        else:  # aggregation (output + weights) in fp32, worst case
            need = voxels * (n_tasks * 2 * 4 + 8)
        available = _available_memory()
        if available is not None and self.device.type == "cpu" and need > 0.8 * available:
            raise InferenceMemoryError(
                f"the resampled volume ({'x'.join(map(str, spatial))} voxels at "
                f"{self.package.spacing} mm) with {n_tasks} task(s) needs about {need / 2**30:.1f} GiB "
                f"but {available / 2**30:.1f} GiB are available; crop it with --roi or request "
                "fewer tasks")

    def _infer(self, volume, task_ids, modality_id, domain_id, options, report, with_features=False):
        """Sigmoid probabilities [T, X, Y, Z] (MONAI ``sliding_window_inference``, whole maps);
        ``with_features``: [C features, T logits, T probabilities] blended alike (the probabilities
        are exactly those without features). ``predict`` streams instead (``_stream_masks``)."""
        return self._with_fallbacks(options, lambda device, batch, out_device: self._sliding_window(
            volume, task_ids, modality_id, domain_id, options, device, batch, out_device, report, with_features))

    def _with_fallbacks(self, options, run):
        """``run(device, window batch, aggregation device)``, retried after a CUDA out-of-memory
        error with fewer windows per batch, then aggregating on the CPU, then on the CPU alone."""
        batch = options.sw_batch_size or window_batch(self.package.patch_size, self.device)
        attempts = [(self.device, batch, self.device)]
        if self.device.type == "cuda":
            b = batch
            while b > 1:
                b //= 2
                attempts.append((self.device, b, self.device))
            attempts.append((self.device, 1, torch.device("cpu")))  # aggregate on the CPU
            attempts.append((torch.device("cpu"), 1, torch.device("cpu")))  # give up the GPU
        for i, (device, batch, out_device) in enumerate(attempts):
            try:
                return run(device, batch, out_device)
            except torch.cuda.OutOfMemoryError:
                if i + 1 == len(attempts):
                    raise
                torch.cuda.empty_cache()
                nxt = attempts[i + 1]
                msg = (f"GPU out of memory with a window batch of {batch}; retrying with "
                       f"{nxt[1]} window(s), {'aggregating on the CPU' if nxt[2].type == 'cpu' else 'on the GPU'}"
                       f"{' and running on the CPU' if nxt[0].type == 'cpu' else ''}")
                log.warning(msg)
                self.warnings.append(msg)
                if nxt[0].type == "cpu":
                    self.net = self.net.to("cpu")
                    self.device, self.precision = torch.device("cpu"), resolve_precision("auto", torch.device("cpu"))

    @torch.inference_mode()
    def _sliding_window(self, volume, task_ids, modality_id, domain_id, options, device, batch,
                        out_device, report, with_features=False, emit=None):
        """MONAI's sliding window over ``volume`` [1, X, Y, Z]: the whole maps on the CPU, or,
        with ``emit``, the same values streamed slab by slab (``streaming.WindowStream``)."""
        patch = self.package.patch_size
        ids = torch.tensor(task_ids, device=device)[None]
        total = max(1, math.ceil(_window_count(volume.shape[1:], patch, options.overlap) / batch))
        done = [0]
        precision = self.precision if device.type == self.device.type else "fp32"
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        out_dtype = half if half is not None and out_device.type == device.type else torch.float32
        # MONAI aggregates in the input's dtype: a half-precision input means half-precision
        # aggregation buffers (the network casts to the same precision under autocast anyway)
        x = prepare_input(volume[None].to(out_dtype), device)

        runtime = (self.backend.window_function(task_ids, modality_id, domain_id)
                   if self.backend is not None and device.type == "cpu" and not with_features else None)

        def predictor(window):
            n = window.shape[0]
            if runtime is not None:
                logits = runtime(window)
            else:
                ctx = SegContext(ids.expand(n, -1), torch.full((n,), modality_id, device=device),
                                 torch.full((n,), domain_id, device=device))
                with autocast(device, precision):
                    outputs = self.net(window, ctx)
                logits = outputs["logits"]
            done[0] += 1
            self.threads.update()  # between window batches: follow the cores left free
            report(done[0] / total, f"window batch {done[0]}/{total}")
            if with_features:
                probs = torch.sigmoid(logits.float()).to(out_dtype)
                return torch.cat([outputs["features"].to(out_dtype), logits.to(out_dtype), probs], dim=1)
            # in place: the logits are not needed again (20 tasks of a 128^3 window: 168 MB saved)
            return torch.sigmoid_(logits.float()).to(out_dtype)

        if emit is not None:
            plan = WindowPlan.make(x.shape[2:], tuple(patch), options.overlap)
            WindowStream(plan, len(task_ids), device, out_device, out_dtype).run(x, batch, predictor, emit)
            return None
        probs = sliding_window_inference(x, tuple(patch), batch, predictor, overlap=options.overlap,
                                         mode="gaussian", sw_device=device, device=out_device)
        return probs[0].to("cpu")


def largest_components(mask: sitk.Image, keep: int = 1) -> sitk.Image:
    """Keep the ``keep`` largest 26-connected components of a binary mask (``keep`` 0: all)."""
    if keep == 0:
        return mask
    components = sitk.ConnectedComponent(mask, True)
    relabeled = sitk.RelabelComponent(components, sortByObjectSize=True)
    return sitk.Cast(sitk.BinaryThreshold(relabeled, 1, keep, 1, 0), sitk.sitkUInt8)
