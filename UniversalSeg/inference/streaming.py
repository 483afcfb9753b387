"""Sliding-window inference that never holds every task's probabilities for the whole volume.

MONAI's ``sliding_window_inference`` keeps one float map per task for the whole model grid (plus a
weight map) until the last window is done: with 20 tasks about 84 bytes per voxel before anything
is resampled. Here the windows are visited in MONAI's own order (the first spatial axis slowest),
blended with the same Gaussian importance map and the same float operations in the same order,
so every probability is bit-identical to MONAI's; but only a band of the first axis, as wide as
one window, is held. As soon as no later window can reach a slab of that axis, the slab is
divided by its weights and handed on (``WindowStream``).

``ChunkedResampler`` takes those slabs and makes masks on the input grid chunk by chunk: the input
grid is cut along the axis that follows the model's first axis most closely, and a chunk is
resampled (SimpleITK, linear, from the model grid with its own origin) once the slabs that its
voxels' interpolation reads are final; a slab is dropped once no chunk still needs it. Peak
memory: the band, the slabs waiting, one float map of the model grid (shared by all tasks), the
masks as one bit per voxel (unpacked to uint8 one task after the other at the end). The values
are those of resampling whole maps except that SimpleITK computes a chunk's voxel positions from
the chunk's origin: the last bit of an interpolated value can differ (about
1 voxel in 1,000 on the grids tested, never more than one float32 step), so a mask can differ
only where a probability lies within 6e-8 of its threshold (none did in the tests).
"""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size

from ..exclusive_groups import ExclusiveResolver

SIGMA_SCALE = 0.125  # MONAI's default for Gaussian blending


@dataclass
class WindowPlan:
    """The windows of MONAI's ``sliding_window_inference`` for one volume, in its order."""
    pad: list            # F.pad's list (last axis first), as MONAI pads a volume smaller than the window
    padded: tuple        # spatial size after padding
    offset: tuple        # where the volume starts inside the padded one, per axis
    shape: tuple         # the volume's own spatial size
    windows: list        # [(slice, slice, slice)] in MONAI's order
    patch: tuple         # the valid window size

    @classmethod
    def make(cls, shape: Sequence[int], roi: Sequence[int], overlap: float) -> "WindowPlan":
        shape = tuple(int(s) for s in shape)
        padded = tuple(max(s, r) for s, r in zip(shape, roi))
        pad, offset = [], [0, 0, 0]
        for k in (2, 1, 0):  # as MONAI: from the last axis, half before, the rest after
            diff = max(roi[k] - shape[k], 0)
            pad += [diff // 2, diff - diff // 2]
            offset[k] = diff // 2
        interval = tuple(int(r) if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(padded, roi))
        windows = [tuple(slice(int(s.start), int(s.stop)) for s in w)
                   for w in dense_patch_slices(padded, roi, interval)]
        return cls(pad, padded, tuple(offset), shape, windows, tuple(get_valid_patch_size(padded, roi)))


class WindowStream:
    """Runs ``predictor(batch of windows) -> probabilities [n, T, *patch]`` over ``volume``
    ([1, 1, X, Y, Z], already on its device and in the blending dtype) and calls
    ``emit(x0, x1, probs [T, x1 - x0, Y, Z])`` for consecutive slabs of the volume's first axis, in
    order, each the moment it is final (a view of the band, valid during the call only). The values are those of MONAI's
    ``sliding_window_inference(volume, roi, batch, predictor, overlap, mode="gaussian",
    sw_device=device, device=out_device)[0]`` bit for bit: same windows, same importance map, the
    same multiplications, additions (in window order) and division."""

    def __init__(self, plan: WindowPlan, tasks: int, device: torch.device, out_device: torch.device,
                 dtype: torch.dtype):
        self.plan, self.tasks, self.device, self.out_device, self.dtype = plan, tasks, device, out_device, dtype
        weight = compute_importance_map(plan.patch, mode="gaussian", sigma_scale=SIGMA_SCALE, device=device,
                                        dtype=dtype)
        self.weight = weight.to(dtype=dtype, device=device)[None, None]
        self.weight_out = self.weight.to(out_device)
        self.width = plan.patch[0]
        self.band: Optional[torch.Tensor] = None  # [T, width, Y, Z]: padded x in [lo, lo + width)
        self.lo = 0
        self.done = 0  # padded x below this has been emitted

    def run(self, volume: torch.Tensor, batch: int, predictor: Callable, emit: Callable) -> None:
        plan = self.plan
        if any(plan.pad):
            volume = F.pad(volume, pad=plan.pad, mode="constant", value=0.0)
        windows = plan.windows
        for first in range(0, len(windows), batch):
            group = windows[first:first + batch]
            x0 = group[0][0].start
            if x0 > self.done:  # everything left of this window's start is final (MONAI's order)
                self._emit_until(x0, emit)
            # several windows per batch may reach further along the first axis: the band grows
            self._cover(max(w[0].stop for w in group))
            if len(group) == 1:  # as MONAI: one window is a view of the volume, several are concatenated
                data = volume[(slice(0, 1), slice(None)) + group[0]].to(self.device)
            else:
                data = torch.cat([volume[(slice(0, 1), slice(None)) + w] for w in group]).to(self.device)
            probs = predictor(data)
            probs *= self.weight  # as MONAI: in place, on the window device
            probs = probs.to(self.out_device)
            for p, w in zip(probs, group):
                self.band[(slice(None), slice(w[0].start - self.lo, w[0].stop - self.lo)) + w[1:]] += p
        self._emit_until(plan.padded[0], emit)

    def _cover(self, stop: int) -> None:
        """Make the band reach padded x ``stop`` (it starts at ``self.done``)."""
        plan = self.plan
        if self.band is None:
            self.lo = self.done
            self.band = torch.zeros((self.tasks, max(self.width, stop - self.lo)) + plan.padded[1:],
                                    dtype=self.dtype, device=self.out_device)
            return
        if stop - self.lo <= self.band.shape[1]:
            return
        grown = torch.zeros((self.tasks, stop - self.lo) + plan.padded[1:], dtype=self.dtype, device=self.out_device)
        grown[:, :self.band.shape[1]] = self.band
        self.band = grown

    def _emit_until(self, x: int, emit: Callable) -> None:
        """Divide padded x in [done, x) by its weights, hand it on (volume coordinates), shift the band."""
        plan = self.plan
        a, b = self.done, x
        if b <= a:
            return
        count = torch.zeros((1, b - a) + plan.padded[1:], dtype=self.dtype, device=self.out_device)
        for w in plan.windows:  # MONAI's weight map, in its order, restricted to this slab
            lo, hi = max(w[0].start, a), min(w[0].stop, b)
            if lo < hi:
                count[(slice(None), slice(lo - a, hi - a)) + w[1:]] += \
                    self.weight_out[0, :, lo - w[0].start:hi - w[0].start]
        values = self.band[:, a - self.lo:b - self.lo]
        values /= count  # in place, as MONAI divides its whole buffer; the band's part is final now
        # the volume's own part (MONAI crops the padding off the same way)
        ox, oy, oz = plan.offset
        X, Y, Z = plan.shape
        v0, v1 = max(a - ox, 0), min(b - ox, X)
        if v0 < v1:  # a view of the band: ``emit`` copies what it keeps
            emit(v0, v1, values[:, v0 + ox - a:v1 + ox - a, oy:oy + Y, oz:oz + Z].to("cpu"))
        del values, count
        self.done = b
        keep = self.lo + self.band.shape[1] - b
        if keep <= 0:
            self.band = None
            return
        shift = b - self.lo
        # to the front in blocks no wider than the shift: no block's source overlaps its
        # destination, and no copy of the kept part is made (the last windows, aligned to the
        # volume's end, shift by less than they keep: a clone was up to a whole band)
        for c in range(0, keep, shift):
            n = min(shift, keep - c)
            self.band[:, c:c + n] = self.band[:, shift + c:shift + c + n]
        self.band[:, keep:].zero_()
        self.lo = b


def lps_geometry(affine: np.ndarray):
    """RAS affine of (i, j, k) -> (origin, spacing, direction) as SimpleITK (LPS) wants them."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return tuple(lps[:3, 3]), tuple(spacing), tuple(direction.ravel())


def _index_to_point(origin, spacing, direction) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction, float).reshape(3, 3) * np.asarray(spacing, float)
    m[:3, 3] = origin
    return m


class ChunkedResampler:
    """Model-grid probability slabs in (``add``, in order along the model's first axis), masks
    (and, if ``keep``, float32 probabilities) on ``target`` out (``finish``): the values of
    resampling each whole map with SimpleITK (linear, default 0; up to the last bit, see above),
    thresholding it (``threshold <= p <= 2``, SimpleITK's BinaryThreshold in float32) and resolving
    exclusive groups.

    ``tasks``: the rows of the slabs; ``wanted``: those whose masks are returned; ``thresholds``:
    task -> threshold; ``groups``: exclusive groups (``tasks`` holds every member needed)."""

    SPAN = 8  # model voxels of the first axis a chunk of the input grid reaches across, about

    def __init__(self, model_shape: Sequence[int], model_affine: np.ndarray, target: sitk.Image,
                 tasks: Sequence[str], wanted: Sequence[str], thresholds: dict, groups: Sequence,
                 keep: bool = False):
        self.tasks, self.wanted, self.thresholds, self.groups = list(tasks), list(wanted), thresholds, groups
        self.keep = keep
        self.target = target
        self.X = int(model_shape[0])
        self.model_shape = tuple(int(n) for n in model_shape)
        origin, spacing, direction = lps_geometry(model_affine)
        self.model_geometry = (origin, spacing, direction)
        self._image = None
        out_m = _index_to_point(target.GetOrigin(), target.GetSpacing(), target.GetDirection())
        in_m = _index_to_point(origin, spacing, direction)
        to_model = np.linalg.inv(in_m) @ out_m  # target (i, j, k) -> model continuous (x, y, z)
        size = target.GetSize()  # (i, j, k)
        axis = int(np.argmax(np.abs(to_model[0, :3])))
        step = abs(to_model[0, axis])
        thick = max(1, min(size[axis], int(self.SPAN / step) if step > 1e-9 else size[axis]))
        self.axis = axis
        self.chunks = []  # [start, stop, lo, hi] along ``axis`` / the model's first axis; lo >= hi: outside
        for a in range(0, size[axis], thick):
            b = min(size[axis], a + thick)
            ranges = [(0, n - 1) for n in size]
            ranges[axis] = (a, b - 1)
            corners = np.array([[i, j, k, 1.0] for i in ranges[0] for j in ranges[1] for k in ranges[2]])
            xs = (to_model @ corners.T)[0]
            lo = max(0, math.floor(xs.min()) - 1)
            hi = min(self.X, math.floor(xs.max()) + 3)
            self.chunks.append([a, b, lo, hi])
        self.pending = list(range(len(self.chunks)))
        self.shape = shape = tuple(size[::-1])  # numpy (k, j, i)
        # a mask is held as one bit per voxel, chunk by chunk, until ``finish``: a chunk of an
        # axis that numpy stores last touches every page of a whole uint8 mask, so 20 masks of a
        # 384x384x256 volume would take 0.75 GB beside the windows' band from the first chunk on
        self.packed = {t: [] for t in self.wanted}  # task -> [(region, np.packbits of the chunk)]
        self.kept = {t: np.zeros(shape, np.float32) for t in self.wanted} if keep else {}
        self.slabs: list = []  # [(x0, x1, tensor [T, x1 - x0, Y, Z])]
        self.final = 0

    def add(self, x0: int, x1: int, slab: torch.Tensor) -> None:
        """The final probabilities of model x in [x0, x1) (may be a view of the stream's band: what
        is still needed after the chunks it completes is copied)."""
        assert x0 == self.final, "slabs must come in order"
        self.slabs.append((x0, x1, slab))
        self.final = x1
        ready = [c for c in self.pending if self.chunks[c][3] <= self.final]
        for c in ready:
            self._chunk(c)
        self.pending = [c for c in self.pending if c not in ready]
        # keep only what a waiting chunk reads
        need = min((self.chunks[c][2] for c in self.pending if self.chunks[c][2] < self.chunks[c][3]), default=self.X)
        kept = []
        for a, b, s in self.slabs:
            if b <= need:
                continue
            if s is slab:
                start = max(a, need)
                s, a = s[:, start - a:].clone(), start
            kept.append((a, b, s))
        self.slabs = kept

    def finish(self) -> tuple[dict, dict]:
        """{task: uint8 (k, j, i) array} of the wanted tasks, {task: float32 array} if ``keep``.
        The masks are unpacked here, one task after the other, once the band and the model grid's
        float map are gone."""
        for c in self.pending:
            self._chunk(c)
        self.pending, self.slabs, self._image = [], [], None
        masks = {}
        for task in self.wanted:
            mask = masks[task] = np.zeros(self.shape, np.uint8)
            parts = self.packed[task]
            while parts:
                region, bits = parts.pop(0)
                view = mask[region]
                view[...] = np.unpackbits(bits, count=view.size).reshape(view.shape)
        return masks, self.kept

    def _model_image(self) -> tuple:
        """One float32 image of the whole model grid and a writable numpy view of its buffer,
        shared by every chunk and task: a chunk's values are written into the columns it reads, so
        SimpleITK sees the model grid's own origin and makes exactly the whole-map computation (a
        sub-box with a shifted origin rounds the continuous index differently in the last bit)."""
        if self._image is None:
            image = sitk.Image([self.X, *self.model_shape[1:]], sitk.sitkFloat32)
            image.SetOrigin(self.model_geometry[0])
            image.SetSpacing(self.model_geometry[1])
            image.SetDirection(self.model_geometry[2])
            view = sitk.GetArrayViewFromImage(image)  # read-only by SimpleITK's choice; the buffer is ours
            address = view.__array_interface__["data"][0]
            writable = np.ctypeslib.as_array((ctypes.c_float * view.size).from_address(address)).reshape(view.shape)
            self._image = (image, writable)
        return self._image

    def _chunk(self, c: int) -> None:
        a, b, lo, hi = self.chunks[c]
        size = list(self.target.GetSize())
        start = [0, 0, 0]
        start[self.axis], size[self.axis] = a, b - a
        region = [slice(None)] * 3
        region[2 - self.axis] = slice(a, b)  # numpy (k, j, i)
        region = tuple(region)
        origin = self.target.TransformIndexToPhysicalPoint(start)
        resolver = ExclusiveResolver(self.groups, self.wanted)
        for row, task in enumerate(self.tasks):
            if task not in self.wanted and task not in resolver:
                continue
            if lo < hi:
                image, buffer = self._model_image()
                for x0, x1, slab in self.slabs:  # model x in [lo, hi): (z, y, x) columns of the buffer
                    u0, u1 = max(lo, x0), min(hi, x1)
                    if u0 < u1:
                        buffer[:, :, u0:u1] = slab[row, u0 - x0:u1 - x0].to(torch.float32).permute(2, 1, 0).numpy()
                resampled = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin,
                                          self.target.GetSpacing(), self.target.GetDirection(), 0.0, sitk.sitkFloat32)
                values = sitk.GetArrayViewFromImage(resampled)  # a view: ``resampled`` must outlive it
            else:  # the chunk lies beyond the model grid: every value is the default, 0
                values = np.zeros(tuple(size[::-1]), np.float32)
            threshold = np.float32(self.thresholds[task])  # BinaryThreshold compares in float32
            if task in resolver:
                resolver.add(task, values, threshold)
            elif task in self.wanted:
                self._store(task, region, (values >= threshold) & (values <= np.float32(2.0)))
            if self.keep and task in self.wanted:
                self.kept[task][region] = values
        for task in self.wanted:
            if task in resolver:
                self._store(task, region, resolver.mask(task))

    def _store(self, task: str, region: tuple, mask: np.ndarray) -> None:
        """Keep a chunk's 0/1 mask as bits (C order of the chunk)."""
        if mask.any():  # an empty chunk stays the zeros ``finish`` starts from
            self.packed[task].append((region, np.packbits(mask, axis=None)))
