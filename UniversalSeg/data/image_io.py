"""Reading medical images with SimpleITK into MONAI MetaTensors, with checks that name the problem.

SimpleITK reads every format we support (NIfTI, NRRD, MHA, a DICOM series folder). MONAI's own
ITK reader needs the separate ``itk`` package (hundreds of MB) and its nibabel reader does not read
DICOM series or NRRD, so this small bridge is written here: it returns a channel-first float32
``MetaTensor`` whose array axes are (i, j, k) and whose ``affine`` maps voxel indices to RAS
millimetres, which is what MONAI's ``Orientation`` / ``Spacing`` transforms expect.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from ..errors import InputError

__all__ = ["FLOAT_TYPES", "LPS_TO_RAS", "SPACING_MM", "ImageError", "check_complete", "check_header", "check_image",
           "check_nifti_spacing", "one_series_files", "read_image", "read_sitk", "sitk_affine", "to_metatensor"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
FLOAT_TYPES = (sitk.sitkFloat32, sitk.sitkFloat64)
SPACING_MM = (1e-3, 1e3)  # voxel sizes of real scans (microscopy-CT to whole-body PET), with margin


class ImageError(InputError):
    """An image that cannot be segmented as it is; the message names the file and the fix."""


def check_complete(path: Path, strict: bool = False) -> None:
    """ITK reads a truncated ``.nii.gz`` or ``.nii`` as if the missing voxels were 0: an image cut
    short by a failed copy would be segmented (or trained on) as zeros. Read a gzip stream to its
    end marker (about a second per 100 MB) and compare a NIfTI's data size with its header.
    ``strict``: a NIfTI that nibabel cannot parse at all is broken too (our own outputs)."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    problem, size = "", path.stat().st_size
    if name.endswith(".gz"):
        size = 0
        try:
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    size += len(chunk)
        except (EOFError, OSError, zlib.error) as exc:
            problem = f"its compressed data ends early or is damaged ({exc})"
    if not problem:
        import nibabel
        try:
            header = nibabel.load(str(path)).header
            offset = max(int(header.get_data_offset()), int(header.sizeof_hdr) + 4)  # single-file NIfTI
            expected = offset + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
        except Exception:  # noqa: BLE001 - not a NIfTI nibabel can parse
            if strict:
                problem = "it is not a readable NIfTI file"
            expected = 0
        if expected and size < expected:
            problem = f"it holds {size} bytes, its header needs {expected}"
    if problem:
        raise ImageError(f"{path}: the file is truncated or damaged: {problem}; copy or download it again")


def _nifti_pixdim(path: Path):
    """The voxel sizes (pixdim[1:4]) as the file stores them (NIfTI-1 or -2, either byte order), or
    None for a file that is not a NIfTI. nibabel, like ITK, replaces a stored 0 with 1 on reading."""
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
            head = f.read(540)
    except (EOFError, OSError, zlib.error):
        return None  # a damaged file: check_complete names it
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            return struct.unpack(order + "3f", head[80:92])
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            return struct.unpack(order + "3d", head[112:136])
    return None


def check_nifti_spacing(path: Path) -> None:
    """ITK reads a NIfTI voxel size (``pixdim``) of 0 or NaN as 1 mm, without a word: the image
    would be segmented on a made-up grid. Refused, naming the axis."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return
    for n, value in enumerate(_nifti_pixdim(path) or ()):
        if not (math.isfinite(value) and value != 0):
            raise ImageError(f"{path}: the NIfTI header gives voxel spacing {value} along axis {'ijk'[n]} "
                             f"(pixdim[{n + 1}]), which ITK would read as 1 mm; set the real spacing in the "
                             "header and try again")


def check_header(path: str | Path) -> None:
    """What can be refused without reading the voxels: a batch checks every input this way before
    its first inference, so a bad file 50 cases in does not end a long run. Reads the header
    (dimension, components, pixel type, spacing, direction) and, for NIfTI, the data size: a
    ``.nii`` by its length, a ``.nii.gz`` by the size its gzip trailer records (4 bytes; only when
    that disagrees is the whole stream read to be sure)."""
    path = Path(path)
    if not path.is_file():
        if not path.exists():
            raise ImageError(f"{path}: no such file or folder")
        from ..file_modes import special_kind
        kind = special_kind(path)
        if kind:  # reading it would wait for a writer, or never end
            raise ImageError(f"{path} is {kind}, not an image file: give an image file or a DICOM series folder")
        one_series_files(path)  # one series (its voxels are checked when it is read)
        return
    check_nifti_spacing(path)  # before ITK reads it as 1 mm
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise ImageError(f"{path}: cannot read the image ({first})") from None
    complex_voxels = reader.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)
    header = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(),  # complex: 2 "components"
                        1 if complex_voxels else reader.GetNumberOfComponents())
    header.SetSpacing(reader.GetSpacing())
    header.SetDirection(reader.GetDirection())
    _check_geometry(header, str(path), size=reader.GetSize())
    name = path.name.lower()
    if name.endswith(".nii"):
        check_complete(path)
    elif name.endswith(".nii.gz"):
        expected = int(np.prod(reader.GetSize())) * sitk.GetArrayViewFromImage(header).dtype.itemsize
        with open(path, "rb") as f:
            f.seek(-4, 2)
            trailer = int.from_bytes(f.read(4), "little")
        if (trailer - expected) % (1 << 32) not in range(348, 352 + 65536):  # header + extensions
            check_complete(path)


def one_series_files(folder: str | Path) -> list[str]:
    """The files of the one DICOM series in ``folder``, in slice order. Several series are refused
    with a list of them (UID, description, slices) and how to pick one: which of them was meant
    cannot be guessed (a localizer beside the CT, two reconstructions)."""
    folder = Path(folder)
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ImageError(f"{folder}: folder holds no DICOM series")
    files = {uid: reader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series}
    if len(series) > 1:
        from ..model_metadata import printable
        listed = "; ".join(f"{uid} {printable(_series_description(files[uid][0]))!r} ({len(files[uid])} "
                           f"slice{'s' if len(files[uid]) != 1 else ''})" for uid in series[:10])
        raise ImageError(f"{folder}: folder holds {len(series)} DICOM series: {listed}"
                         f"{' ...' if len(series) > 10 else ''}; move the files of the one to segment into a "
                         "folder of their own (SeriesInstanceUID above) and give that folder")
    return list(files[series[0]])


def _series_description(file: str) -> str:
    import pydicom
    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["SeriesDescription", "Modality"])
    except Exception:  # noqa: BLE001 - a description is a courtesy; the listing goes on without it
        return "?"
    return " ".join(str(v) for v in (getattr(ds, "Modality", ""), getattr(ds, "SeriesDescription", "")) if v)[:64]


def read_sitk(path: str | Path) -> sitk.Image:
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file or folder")
    if path.is_file():
        check_complete(path)
        check_nifti_spacing(path)
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(one_series_files(path))
            return reader.Execute()
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise ImageError(f"{path}: cannot read the image ({first})") from None
    if path.name.lower().endswith((".nii", ".nii.gz")) and image.GetPixelID() in FLOAT_TYPES:
        image = _restore_nifti_nonfinite(image, path)
    return image


def _restore_nifti_nonfinite(image: sitk.Image, path: Path) -> sitk.Image:
    """ITK's NIfTI reader silently turns NaN voxels into 0, which would hide a broken volume as
    plausible tissue; nibabel reads the stored values, so non-finite voxels are put back and
    ``check_image`` refuses them. Costs a second read of float NIfTI files only (integer types
    cannot hold NaN)."""
    import nibabel

    try:
        stored = np.asanyarray(nibabel.load(str(path)).dataobj)
    except Exception:  # nibabel cannot read what ITK could: keep ITK's reading
        return image
    if image.GetDimension() != 3 or stored.size != int(np.prod(image.GetSize())) or np.isfinite(stored).all():
        return image  # 2D / 4D images are refused by check_image anyway
    array = sitk.GetArrayFromImage(image)  # (k, j, i); nibabel's axes are (i, j, k[, 1...])
    stored = stored.reshape(image.GetSize()).transpose(2, 1, 0)
    bad = ~np.isfinite(stored)  # only on this failure path
    array[bad] = stored[bad]
    restored = sitk.GetImageFromArray(array)
    restored.CopyInformation(image)
    return restored


def check_image(image: sitk.Image, name: str, *, label: bool = False) -> None:
    """Refuse what the network cannot segment: not 3D, several components, NaNs, empty."""
    _check_geometry(image, name, image.GetSize())
    if not label:
        array = sitk.GetArrayViewFromImage(image)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ImageError(f"{name}: contains NaN or infinite voxels; fix or mask them first")


def _check_geometry(image: sitk.Image, name: str, size) -> None:
    """The header's part of ``check_image`` (``size`` given: a header-only image has size 1)."""
    if image.GetDimension() != 3:
        raise ImageError(f"{name}: a {image.GetDimension()}D image; UniversalSeg needs a 3D volume "
                         "(split a 4D series into 3D frames first)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(f"{name}: {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "give a single-channel (scalar) volume")
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise ImageError(f"{name}: complex voxels ({image.GetPixelIDTypeAsString()}); give a real-valued "
                         "volume, e.g. the magnitude image")
    if min(size) < 2:
        raise ImageError(f"{name}: size {size} is a single slice, not a 3D volume")
    spacing = image.GetSpacing()
    if not all(np.isfinite(s) and SPACING_MM[0] <= s <= SPACING_MM[1] for s in spacing):
        raise ImageError(f"{name}: voxel spacing {tuple(round(s, 6) for s in spacing)} mm is not plausible "
                         f"(expected {SPACING_MM[0]}-{SPACING_MM[1]} mm); fix the image header")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction @ direction.T, np.eye(3), atol=1e-4):
        raise ImageError(f"{name}: the direction matrix is not orthonormal (sheared acquisition); "
                         "resample it to an orthogonal grid first")


def sitk_affine(image: sitk.Image) -> np.ndarray:
    """4x4 matrix mapping (i, j, k) voxel indices to RAS millimetres."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.array(image.GetSpacing())[None, :]
    lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ lps


def to_metatensor(image: sitk.Image, dtype=np.float32, filename: str = "") -> MetaTensor:
    array = sitk.GetArrayFromImage(image)  # (k, j, i)
    array = np.ascontiguousarray(array.transpose(2, 1, 0)).astype(dtype, copy=False)
    meta = {"filename_or_obj": filename, "original_affine": sitk_affine(image),
            "spatial_shape": np.array(image.GetSize())}
    return MetaTensor(torch.from_numpy(array)[None], affine=torch.from_numpy(sitk_affine(image)),
                      meta=meta)


def read_image(path: str | Path, *, label: bool = False) -> MetaTensor:
    """Read and check ``path``; returns a [1, I, J, K] MetaTensor (float32, or int16 for labels)."""
    image = read_sitk(path)
    check_image(image, str(path), label=label)
    if label:
        if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
            array = sitk.GetArrayViewFromImage(image)
            if not np.all(np.equal(np.mod(array, 1), 0)):
                raise ImageError(f"{path}: a label image must hold whole numbers (label values)")
        return to_metatensor(image, np.int16, str(path))
    return to_metatensor(image, np.float32, str(path))
