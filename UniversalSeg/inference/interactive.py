"""Click refinement on one image: the automatic pass once, then each click in well under a second.

    session = InteractiveSession(predictor, "t1.nii.gz", "MR-T1", ["brain"])   # automatic pass
    change = session.refine("brain", [((x, y, z), True)])   # RAS mm; True: positive click
    change.box, change.mask     # the changed box of the input grid and its new uint8 content
    session.undo("brain")       # the mask (and the clicks) as before the last click
    session.set_mask("brain", edited)   # start from a mask edited elsewhere (Segment Editor)

The automatic pass keeps, on the model grid, the network's final features and each task's
logits (the same sliding window as ``Predictor.predict``: its masks are exactly predict's). A
click converts RAS mm to a model-grid voxel, runs the model's refinement stage
(``networks.click_stage``, told which task the click is for) on a region of ``REGION`` voxels
around it with ``MARGIN`` voxels of context (so the region's values are those the whole volume
would give), replaces the task's
logits there (a positive click only adds to the mask, a negative one only removes: without that
rule 31 of 56 case x task curves of Testing/Benchmarks/interactive.py ended below their start,
clicks on thin boundary errors rewriting correct voxels around them; with it 10, by at most 0.07)
and resamples only the matching box of the input grid. All clicks of a task so far
steer every refinement, as in training (``training.click_simulation``).

A task in one of the model's exclusive groups never overlaps its open group mates: the masks come
from ``Predictor.to_input_masks`` (argmax within the group) on the automatic pass and in each
changed box, from every member's current logits (the group mates of the open tasks are computed
too). A click on such a task can therefore change a mate's mask in the box (a positive click takes
voxels from it, a negative one can give voxels back): those changes come with the task's
``MaskChange`` as ``also``. ``set_mask`` keeps the edited mask as given.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import InputError
from ..networks.click_stage import LOGIT_CLAMP, MARGIN, click_maps
from .predictor import RAS_TO_LPS, ModelGrid, PredictOptions, Predictor
from .progress import Reporter, scaled, silent

REGION = 16  # model-grid voxels recomputed on every side of a click


@dataclass
class MaskChange:
    """What one click (or undo) changed: ``box`` ((i0, i1), (j0, j1), (k0, k1)) of the input grid,
    ``mask`` its new content as a uint8 array in SimpleITK's (k, j, i) order."""
    task: str
    box: tuple
    mask: np.ndarray
    seconds: float = 0.0
    also: list = field(default_factory=list)  # MaskChanges of exclusive group mates in the same box


@dataclass
class _Undo:
    region: tuple
    logits: torch.Tensor
    box: tuple
    mask: np.ndarray
    clicks: int


class InteractiveSession:
    def __init__(self, predictor: Predictor, image, modality: str, tasks: Optional[Sequence[str]] = None,
                 options: Optional[PredictOptions] = None, report: Reporter = silent,
                 domain: Optional[str] = None):
        if predictor.net.prompt is None:
            raise InputError("this model has no click-refinement stage: train it with --clicks (or "
                             "fine-tune it with --mode clicks) to refine with clicks")
        self.predictor = p = predictor
        self.options = options or PredictOptions()
        self.options.validate()
        self.tasks = list(tasks) if tasks else list(p.package.config.tasks)
        task_ids = [p.vocab.task_id(t) for t in self.tasks]
        computed = p.with_group_members(self.tasks)  # the open tasks' exclusive group mates too
        task_ids += [p.vocab.task_id(t) for t in computed[len(self.tasks):]]
        modality_id, domain_id = p.vocab.modality_id(modality), p.vocab.domain_id(domain)
        c = p.net.config.channels[0]
        self.grid: ModelGrid = p.prepare(image, modality, 2 * len(computed) + c, self.options, report)
        out = p._infer(self.grid.volume, task_ids, modality_id, domain_id, self.options,
                       scaled(report, 0.15, 0.9, "infer"), with_features=True).float()
        n = len(computed)
        self.features = out[None, :c].contiguous()              # [1, C, X, Y, Z]
        self.logits = {t: out[c + i].clone() for i, t in enumerate(computed)}
        masks, _ = p.to_input_masks(out[c + n:], computed, self.tasks, self.grid, self.options,
                                    scaled(report, 0.9, 1.0, "resample"))
        self.masks: dict[str, np.ndarray] = {t: sitk.GetArrayFromImage(m) for t, m in masks.items()}  # (k, j, i)
        del out, masks
        self.clicks: dict[str, list] = {t: [] for t in self.tasks}
        self.history: dict[str, list[_Undo]] = {t: [] for t in self.tasks}
        self.ras_to_voxel = np.linalg.inv(self.grid.affine)
        report("done", 1.0, "ready for clicks")

    # ------------------------------------------------------------------ public
    def mask(self, task: str) -> sitk.Image:
        image = sitk.GetImageFromArray(self.masks[self._task(task)])
        image.CopyInformation(self.grid.reference)
        return image

    def refine(self, task: str, points: Sequence[tuple[Sequence[float], bool]]) -> MaskChange:
        """Add clicks (RAS mm, positive?) to ``task`` and recompute around them."""
        t0 = time.perf_counter()
        task = self._task(task)
        if not points:
            raise InputError("refine: give at least one click")
        voxels = [self._voxel(ras) for ras, _ in points]
        before = len(self.clicks[task])
        self.clicks[task] += [(v, bool(positive)) for v, (_, positive) in zip(voxels, points)]
        shape = np.array(self.features.shape[2:])
        lo = np.clip(np.floor(np.min(voxels, 0)).astype(int) - REGION, 0, shape)
        hi = np.clip(np.ceil(np.max(voxels, 0)).astype(int) + REGION + 1, 0, shape)
        ctx_lo = (np.maximum(lo - MARGIN, 0) // 4) * 4   # the stage's 2x steps stay on the volume's phase
        ctx_hi = np.minimum(hi + MARGIN, shape)
        ctx = tuple(slice(a, b) for a, b in zip(ctx_lo, ctx_hi))
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        logits = self.logits[task]
        positive, negative = click_maps(ctx_hi - ctx_lo, self.clicks[task], self.predictor.net.prompt.sigma,
                                        offset=ctx_lo, device=self.features.device)
        with torch.inference_mode():
            task_id = torch.tensor([self.predictor.vocab.task_id(task)], device=self.features.device)
            refined = self.predictor.net.refine(self.features[(slice(None), slice(None)) + ctx],
                                                logits[ctx][None, None], positive, negative, task_id)[0, 0]
        inner = tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, ctx_lo))
        undo = _Undo(region, logits[region].clone(), (), np.empty(0), before)
        signs = {bool(positive) for _, positive in points}
        if signs == {True}:     # "add": a positive click never removes what the mask had
            logits[region] = torch.maximum(logits[region], refined[inner])
        elif signs == {False}:  # "remove": a negative click never adds
            logits[region] = torch.minimum(logits[region], refined[inner])
        else:
            logits[region] = refined[inner]
        change = self._paste(task, lo, hi, undo)
        self.history[task].append(undo)
        change.seconds = time.perf_counter() - t0
        return change

    def undo(self, task: str) -> Optional[MaskChange]:
        """Put back the mask and clicks as before the last refinement; None if there is none."""
        task = self._task(task)
        if not self.history[task]:
            return None
        undo = self.history[task].pop()
        self.logits[task][undo.region] = undo.logits
        del self.clicks[task][undo.clicks:]
        if self._group(task) != [task]:  # the box again from the logits: the mates may have moved since
            lo, hi = (np.array([s.start for s in undo.region]), np.array([s.stop for s in undo.region]))
            return self._paste(task, lo, hi, _Undo(undo.region, undo.logits, (), np.empty(0), undo.clicks))
        (k0, k1), (j0, j1), (i0, i1) = undo.box[::-1]
        self.masks[task][k0:k1, j0:j1, i0:i1] = undo.mask
        return MaskChange(task, undo.box, undo.mask.copy())

    def set_mask(self, task: str, mask: sitk.Image) -> None:
        """Make ``mask`` (on the input grid, e.g. edited in Slicer) the task's current state: its
        logits become +-8 inside / outside (linear resampling at the edge); clicks start over."""
        task = self._task(task)
        ref = self.grid.reference
        if mask.GetSize() != ref.GetSize() or not np.allclose(mask.GetOrigin(), ref.GetOrigin(), atol=1e-3) \
                or not np.allclose(mask.GetSpacing(), ref.GetSpacing(), atol=1e-5):
            raise InputError("set_mask: the mask is not on the image's grid (size, origin and spacing "
                             "must match the image the session was opened with)")
        array = (sitk.GetArrayFromImage(mask) > 0).astype(np.uint8)
        on_model = sitk.Resample(sitk.Cast(mask > 0, sitk.sitkFloat32), self.grid.sitk_image(
            self.logits[task]), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        p = torch.from_numpy(sitk.GetArrayFromImage(on_model)).permute(2, 1, 0).clamp(1e-4, 1 - 1e-4)
        self.logits[task] = torch.logit(p).clamp(-LOGIT_CLAMP, LOGIT_CLAMP).contiguous()
        self.masks[task] = array
        self.clicks[task], self.history[task] = [], []

    # ------------------------------------------------------------------ steps
    def _task(self, task: str) -> str:
        if task not in self.tasks:
            raise InputError(f"the task {task!r} is not open in this session; open tasks: {self.tasks}")
        return task

    def _voxel(self, ras: Sequence[float]) -> np.ndarray:
        if len(ras) != 3 or not all(np.isfinite(float(v)) for v in ras):
            raise InputError(f"a click needs three finite RAS coordinates in mm, got {list(ras)}")
        voxel = (self.ras_to_voxel @ np.array([*map(float, ras), 1.0]))[:3]
        shape = np.array(self.features.shape[2:])
        if np.any(voxel < -0.5) or np.any(voxel > shape - 0.5):
            # outside the cropped model grid: either outside the image or in its empty background
            raise InputError(f"the click at RAS ({', '.join(f'{v:.1f}' for v in ras)}) mm is outside "
                             "the image region being segmented; click inside the image")
        return voxel

    def _paste(self, task: str, lo: np.ndarray, hi: np.ndarray, undo: _Undo) -> MaskChange:
        """Resample the box of the input grid that the model-grid region [lo, hi) covers (one
        model voxel wider: linear interpolation reaches that far) and write it into the mask."""
        ref = self.grid.reference
        corners = np.array([[a, b, c, 1.0] for a in (lo[0] - 1, hi[0]) for b in (lo[1] - 1, hi[1])
                            for c in (lo[2] - 1, hi[2])])
        lps = (RAS_TO_LPS @ self.grid.affine @ corners.T)[:3].T
        index = np.array([ref.TransformPhysicalPointToContinuousIndex(tuple(map(float, pt))) for pt in lps])
        size = np.array(ref.GetSize())
        start = np.clip(np.floor(index.min(0)).astype(int), 0, size)
        stop = np.clip(np.ceil(index.max(0)).astype(int) + 1, 0, size)
        box = tuple((int(a), int(b)) for a, b in zip(start, stop))
        sub = sitk.Image([max(1, int(b - a)) for a, b in box], sitk.sitkUInt8)
        sub.SetSpacing(ref.GetSpacing())
        sub.SetDirection(ref.GetDirection())
        sub.SetOrigin(ref.TransformIndexToPhysicalPoint(tuple(int(a) for a, _ in box)))
        group = self._group(task)  # the task alone, or its exclusive group (resolved together)
        open_members = [t for t in group if t in self.masks]
        masks, _ = self.predictor.to_input_masks([torch.sigmoid(self.logits[t]) for t in group], group,
                                                 open_members, self.grid, self.options, reference=sub,
                                                 cleanup=False)
        (k0, k1), (j0, j1), (i0, i1) = box[::-1]
        changes = {}
        for member in open_members:
            target = self.masks[member][k0:k1, j0:j1, i0:i1]
            new = sitk.GetArrayFromImage(masks[member])[:target.shape[0], :target.shape[1], :target.shape[2]]
            if member == task:
                undo.box, undo.mask = box, target.copy()
            elif np.array_equal(new, target):
                continue
            target[...] = new
            changes[member] = MaskChange(member, box, new.copy())
        change = changes.pop(task)
        change.also = list(changes.values())
        return change

    def _group(self, task: str) -> list[str]:
        for group in self.predictor.exclusive_groups:
            if task in group:
                return list(group)
        return [task]


def read_points(path, tasks: Sequence[str]) -> list[tuple[str, tuple[float, float, float], bool]]:
    """``--points`` file: {"points": [{"task": "liver", "position": [x, y, z], "label":
    "positive"|"negative"}, ...]} with RAS mm positions; "task" may be left out when one task is
    requested. In the order given (each click refines the result of the ones before)."""
    from ..structured_file import read_structured
    data = read_structured(path, "points file", InputError)
    points = data.get("points") if isinstance(data, dict) else None
    if not isinstance(points, list) or not points:
        raise InputError(f"{path}: expected {{\"points\": [{{\"task\": ..., \"position\": [x, y, z], "
                         f"\"label\": \"positive\"}}, ...]}} with at least one point")
    out = []
    for n, point in enumerate(points):
        where = f"{path}: points[{n}]"
        if not isinstance(point, dict):
            raise InputError(f"{where}: each point is a mapping with task, position and label")
        task = point.get("task", tasks[0] if len(tasks) == 1 else None)
        if task not in tasks:
            raise InputError(f"{where}: task {task!r} is not among the requested tasks {list(tasks)}")
        position = point.get("position")
        if not (isinstance(position, list) and len(position) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in position)):
            raise InputError(f"{where}: position must be three RAS coordinates in mm, got {position!r}")
        label = point.get("label")
        if label not in ("positive", "negative"):
            raise InputError(f"{where}: label must be \"positive\" (add) or \"negative\" (remove), got {label!r}")
        out.append((task, tuple(float(v) for v in position), label == "positive"))
    return out
