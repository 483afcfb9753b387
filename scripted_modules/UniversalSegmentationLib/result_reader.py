"""Reading a result .seg.nrrd straight into its shared labelmap layers, one buffer per layer.

Slicer's reader (vtkMRMLSegmentationStorageNode::ReadBinaryLabelmapRepresentation,
Libs/MRML/Core/vtkMRMLSegmentationStorageNode.cxx:519) holds the whole file image from ITK's
reader, then per layer a vtkImageExtractComponents output, a vtkImageConstantPad output and a
DeepCopy of it (lines 853-859): about 3.2x the labelmap at its peak. Here the file is decompressed
a slice at a time into each layer's final buffer, cropped to the union of its segments' extents as
Slicer crops it, so the peak is the labelmap itself plus one slice.

The result is what Slicer's reader gives (the same segments, IDs, names, colours, tags, label
values, layers, extents, voxels and image-to-world matrix; tested against it), built with the same
calls: vtkSegment::AddRepresentation keeps the image it is given, no copy (vtkSegment.cxx:281-289).
Files this reader does not take (no segment fields, the legacy per-file extent, a detached or
bzip2-compressed data file, a floating-point or 64-bit type) return None: the caller then uses
Slicer's reader.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import get_vtk_array_type, vtk_to_numpy

from .i18n import tr as _
LABELMAP = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
_TYPES = {name: code for code, names in {
    "i1": ("int8", "int8_t", "signed char"),
    "u1": ("uint8", "uint8_t", "uchar", "unsigned char"),
    "i2": ("int16", "int16_t", "short", "short int", "signed short", "signed short int"),
    "u2": ("uint16", "uint16_t", "ushort", "unsigned short", "unsigned short int"),
    "i4": ("int32", "int32_t", "int", "signed int"),
    "u4": ("uint32", "uint32_t", "uint", "unsigned int")}.items() for name in names}
_LPS = ("left-posterior-superior", "LPS")
_RAS = ("right-anterior-superior", "RAS")


class _Stream:
    """Exactly ``n`` bytes at a time from the data part of a raw or gzip NRRD: never more than
    asked is decompressed (a sparse labelmap compresses several hundredfold)."""

    def __init__(self, fh, gzip: bool):
        self.fh, self.z = fh, zlib.decompressobj(zlib.MAX_WBITS | 16) if gzip else None

    def read(self, n: int) -> bytes:
        if self.z is None:
            data = self.fh.read(n)
        else:
            parts, size = [], 0
            while size < n:
                source = self.z.unconsumed_tail or self.fh.read(1 << 16)
                if not source:
                    break
                parts.append(self.z.decompress(source, n - size))
                size += len(parts[-1])
            data = b"".join(parts)
        if len(data) != n:
            raise RuntimeError(_("the result file is truncated"))
        return data


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split()]


def _layout(header: dict):
    """(dtype, layers, (I, J, K), image-to-world of file IJK as 4x4) or None where not taken."""
    dtype = _TYPES.get(str(header.get("type", "")))
    sizes = [int(s) for s in header.get("sizes", [])]
    space = header.get("space")
    if (dtype is None or header.get("encoding") not in ("raw", "gzip", "gz") or len(sizes) not in (3, 4)
            or any(k in header for k in ("data file", "datafile", "line skip", "lineskip", "byte skip", "byteskip"))
            or space not in _LPS + _RAS or "Segmentation_Extent" in header or "Segment0_ID" not in header):
        return None
    directions = np.asarray(header["space directions"], float)
    layers = sizes[0] if len(sizes) == 4 else 1
    if len(sizes) == 4:
        if not np.isnan(directions[0]).all():
            return None
        directions = directions[1:]
    if np.isnan(directions).any() or sizes[-3:] == [1, 1, 1]:  # Slicer: extent 0 0 0 0 0 0 is "no data"
        return None
    if dtype != "u1":
        dtype = ("<" if header.get("endian", "little") == "little" else ">") + dtype
    ijk_to_world = np.eye(4)
    ijk_to_world[:3, :3] = directions.T  # one row per file axis in the header
    ijk_to_world[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), float)
    if space in _LPS:
        ijk_to_world[:2] *= -1  # ITK reads LPS; Slicer's world is RAS
    return np.dtype(dtype), layers, sizes[-3:], ijk_to_world


def _segment(header: dict, index: int) -> tuple[str, object, int]:
    """(ID, vtkSegment with its metadata, layer), field by field as the storage node reads them
    (vtkMRMLSegmentationStorageNode.cxx:797-838, 933-952, tags split as at 1791-1802)."""
    def field(key):
        return header.get(f"Segment{index}_{key}")
    segment = slicer.vtkSegment()
    color = field("Color") or field("DefaultColor")
    if color:
        segment.SetColor(*[float(v) for v in color.split()[:3]])
    for tag in (field("Tags") or "").split("|"):
        if ":" in tag:
            key, value = tag.split(":", 1)
            segment.SetTag(key, value)
    if field("NameAutoGenerated") is not None:
        segment.SetNameAutoGenerated(field("NameAutoGenerated") == "1")
    if field("ColorAutoGenerated") is not None:
        segment.SetColorAutoGenerated(field("ColorAutoGenerated") == "1")
    if field("LabelValue") is not None:
        segment.SetLabelValue(int(field("LabelValue")))
    segment_id = field("ID")
    segment.SetName(field("Name") if field("Name") is not None else segment_id)
    layer = field("Layer")
    return segment_id, segment, int(layer) if layer is not None else index


def read_result(path: str | Path):
    """A vtkSegmentation read from a .seg.nrrd (see the module's text), or None where the file is
    not one this reader takes."""
    try:
        import nrrd
    except ImportError:
        return None
    with open(path, "rb") as fh:
        header = nrrd.read_header(fh)  # leaves fh at the first byte of the data
        layout = _layout(header)
        if layout is None:
            return None
        dtype, n_layers, (ni, nj, nk), file_to_world = layout
        count = 0
        while f"Segment{count}_ID" in header:
            count += 1
        segments = [_segment(header, n) for n in range(count)]
        if any(layer >= n_layers or not sid for sid, _, layer in segments):
            return None
        offset = _ints(header.get("Segmentation_ReferenceImageExtentOffset", "0 0 0"))
        image_to_world = file_to_world.copy()
        image_to_world[:3, 3] -= file_to_world[:3, :3] @ offset  # IJK index ``offset`` is file voxel 0
        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, image_to_world[r, c] + 0.0)  # no -0.0, as Slicer's reader
        images, boxes = {}, {}
        for layer in sorted({layer for _, _, layer in segments}):
            extent = _layer_extent(header, [n for n, s in enumerate(segments) if s[2] == layer], (ni, nj, nk))
            image = slicer.vtkOrientedImageData()
            if extent is None:  # Slicer: an empty layer is an empty image (storage node, lines 862-872)
                image.SetExtent(0, -1, 0, -1, 0, -1)
                image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            else:
                image.SetExtent(*[e + offset[a // 2] for a, e in enumerate(extent)])
                image.AllocateScalars(get_vtk_array_type(dtype.newbyteorder("=")), 1)
                voxels = vtk_to_numpy(image.GetPointData().GetScalars())
                voxels.fill(0)
                boxes[layer] = (extent, voxels.reshape(extent[5] - extent[4] + 1, extent[3] - extent[2] + 1,
                                                       extent[1] - extent[0] + 1))
            image.SetImageToWorldMatrix(matrix)
            images[layer] = image
        _fill(_Stream(fh, header["encoding"] != "raw"), dtype, n_layers, (ni, nj, nk), boxes)
    segmentation = slicer.vtkSegmentation()
    if header.get("Segmentation_ConversionParameters"):
        segmentation.DeserializeConversionParameters(header["Segmentation_ConversionParameters"])
    segmentation.SetSourceRepresentationName(LABELMAP)
    for segment_id, segment, layer in segments:
        segment.AddRepresentation(LABELMAP, images[layer])
        segmentation.AddSegment(segment, segment_id)
    for name in (header.get("Segmentation_ContainedRepresentationNames") or "").split("|"):
        if name and name != LABELMAP:  # as CreateRepresentationsBySerializedNames (storage node, 1720-1731)
            segmentation.CreateRepresentation(name)
    return segmentation


def _layer_extent(header: dict, members: list[int], sizes) -> list[int] | None:
    """Union of the members' extents in file IJK, clipped to nothing when empty; the whole file
    when one has no extent (storage node, lines 841-860). None: empty."""
    union = None
    for n in members:
        text = header.get(f"Segment{n}_Extent")
        if text is None:
            return [0, sizes[0] - 1, 0, sizes[1] - 1, 0, sizes[2] - 1]
        e = _ints(text)
        if e[0] > e[1] or e[2] > e[3] or e[4] > e[5]:
            continue
        union = e if union is None else [min(u, v) if a % 2 == 0 else max(u, v)
                                         for a, (u, v) in enumerate(zip(union, e))]
    return union


def _fill(stream: _Stream, dtype, n_layers: int, sizes, boxes: dict) -> None:
    """Copy each file slice's part inside each layer's extent (zero outside the file, as Slicer's
    vtkImageConstantPad); stop reading once every layer is complete."""
    ni, nj, nk = sizes
    last = max((min(e[5], nk - 1) for e, _ in boxes.values()), default=-1)
    for k in range(last + 1):
        plane = np.frombuffer(stream.read(ni * nj * n_layers * dtype.itemsize), dtype).reshape(nj, ni, n_layers)
        for layer, (e, voxels) in boxes.items():
            if e[4] <= k <= e[5]:
                i0, i1, j0, j1 = max(e[0], 0), min(e[1], ni - 1), max(e[2], 0), min(e[3], nj - 1)
                if i0 <= i1 and j0 <= j1:
                    voxels[k - e[4], j0 - e[2]:j1 - e[2] + 1, i0 - e[0]:i1 - e[0] + 1] = \
                        plane[j0:j1 + 1, i0:i1 + 1, layer]
