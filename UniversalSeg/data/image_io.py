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
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from ..errors import InputError

__all__ = ["FLOAT_TYPES", "LPS_TO_RAS", "SPACING_MM", "ImageError", "check_complete", "check_dicom_geometry",
           "check_header", "check_image", "check_nifti_spacing", "one_series_files", "read_image", "read_sitk",
           "sitk_affine", "to_metatensor"]

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
    grid = check_dicom_geometry([str(path)], path) if _dicom_file(path) else None
    if grid is not None:  # a multi-frame file: its frames checked as a series' slices, read by us
        header, size = _read_multiframe(path, grid, pixels=False)
        _check_geometry(header, str(path), size=size)
        return
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
    cannot be guessed (a localizer beside the CT, two reconstructions). A FIFO or device in the
    folder is refused before GDCM lists it (GDCM then drops a slice, or finds no series), and the
    series' geometry is checked (``check_dicom_geometry``)."""
    return _one_series(Path(folder))[0]


def _one_series(folder: Path) -> tuple[list[str], DicomGrid | None]:
    """``one_series_files`` and the grid of its slices (``check_dicom_geometry``)."""
    from ..file_modes import special_kind
    for entry in sorted(folder.iterdir()):
        kind = special_kind(entry)
        if kind:
            raise ImageError(f"{entry} is {kind}, not a DICOM file: the DICOM reader would skip slices beside it "
                             "or find no series; move it out of the series folder")
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
    return list(files[series[0]]), check_dicom_geometry(files[series[0]], folder)


def _frames(files) -> tuple[list, list, list, str] | None:
    """Each slice's (ImageOrientationPatient, ImagePositionPatient, PixelSpacing) in the order the
    reader stacks them, and what they are called ("slices" of a series, "frames" of one multi-frame
    file); None where a header lacks them (a DICOM SEG output refuses that; other outputs keep
    GDCM's reading). A multi-frame file's come from its per-frame / shared functional groups."""
    import pydicom
    tags = ["ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "NumberOfFrames",
            "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"]
    headers = []
    for f in files:
        try:
            headers.append(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags))
        except Exception as exc:  # noqa: BLE001 - pydicom's errors have no common base
            raise ImageError(f"{f}: cannot read its DICOM header ({str(exc).strip()[:200]})") from None
    frames = [int(getattr(ds, "NumberOfFrames", 1) or 1) for ds in headers]
    if max(frames) == 1:
        if not all(ds.get("ImageOrientationPatient") and ds.get("ImagePositionPatient") and ds.get("PixelSpacing")
                   for ds in headers):
            return None
        return ([ds.ImageOrientationPatient for ds in headers], [ds.ImagePositionPatient for ds in headers],
                [ds.PixelSpacing for ds in headers], "slices")
    if len(files) > 1:
        raise ImageError(f"{Path(files[0]).parent}: the series holds {len(files)} files of which some are "
                         "multi-frame; give one multi-frame file, or a series of single-frame files")
    ds = headers[0]

    def item(group, name):
        sequence = group.get(name) if group is not None else None
        return sequence[0] if sequence else None

    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    orientations, positions, spacings = [], [], []
    for group in per_frame:
        position = item(group, "PlanePositionSequence") or item(shared, "PlanePositionSequence")
        orientation = item(group, "PlaneOrientationSequence") or item(shared, "PlaneOrientationSequence")
        measures = item(group, "PixelMeasuresSequence") or item(shared, "PixelMeasuresSequence")
        if not (position and orientation and measures and position.get("ImagePositionPatient")
                and orientation.get("ImageOrientationPatient") and measures.get("PixelSpacing")):
            break
        orientations.append(orientation.ImageOrientationPatient)
        positions.append(position.ImagePositionPatient)
        spacings.append(measures.PixelSpacing)
    if len(positions) != frames[0]:
        raise ImageError(f"{files[0]}: a multi-frame DICOM file with {frames[0]} frames but without each frame's "
                         "position, orientation and pixel spacing (per-frame functional groups); export the "
                         "volume as a series of single-frame files, or as .nrrd / .nii.gz")
    return orientations, positions, spacings, "frames"


class DicomGrid(NamedTuple):
    """The grid a checked series (or multi-frame file) spans: LPS millimetres, ITK's conventions."""
    positions: np.ndarray  # (slices, 3), in the order the slices are stacked
    spacing: tuple  # (i, j, k) mm
    direction: tuple  # row-major 3x3, columns the i, j, k axes
    what: str  # "slices" (a series) or "frames" (one multi-frame file)


def check_dicom_geometry(files, name) -> DicomGrid | None:
    """GDCM stacks a series' slices (or a multi-frame file's frames) on the grid of the first one's
    orientation and position, spaced by the distance between the first two: any slice that is not
    on that grid would be segmented in the wrong place without a word. Refused: slices of more
    than one orientation, slices that are not along the slice normal (gantry tilt: a sheared grid),
    two slices at one position, uneven gaps (a lost slice) and, in a multi-frame file, frames out
    of order. Tolerance: 5% of the smallest voxel edge. Returns the grid, or None where the
    headers lack positions (a single slice, a header without them)."""
    geometry = _frames(files)
    if geometry is None or len(geometry[1]) < 2:
        return None
    orientations, positions, spacings, what = geometry
    try:
        orientations = np.array([[float(v) for v in o] for o in orientations])
        positions = np.array([[float(v) for v in p] for p in positions])
        pixel = np.array([[float(v) for v in s] for s in spacings])
    except (TypeError, ValueError):
        raise ImageError(f"{name}: the {what}' ImageOrientationPatient, ImagePositionPatient or PixelSpacing "
                         "are not numbers; fix the DICOM headers") from None
    if orientations.shape[1:] != (6,) or positions.shape[1:] != (3,):
        raise ImageError(f"{name}: the {what}' ImageOrientationPatient (6 numbers) or ImagePositionPatient "
                         "(3 numbers) are malformed; fix the DICOM headers")
    differing = np.flatnonzero(np.abs(orientations - orientations[0]).max(axis=1) > 1e-4)
    if differing.size:
        k = int(differing[0])
        raise ImageError(f"{name}: the series has {what} of more than one orientation (ImageOrientationPatient "
                         f"{orientations[0].round(4).tolist()} in {_which(files, 0, what)}, "
                         f"{orientations[k].round(4).tolist()} in {_which(files, k, what)}); a volume has one: "
                         "give the slices of one orientation, in a folder of their own")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    normal /= np.linalg.norm(normal)
    offsets = positions - positions[0]
    along = offsets @ normal
    across = np.linalg.norm(offsets - along[:, None] * normal, axis=1)
    gaps = np.diff(along)
    tolerance = 0.05 * min(pixel.min(), float(np.abs(gaps).min()) or pixel.min())
    for k in range(1, len(positions)):
        same = np.flatnonzero(np.linalg.norm(positions[:k] - positions[k], axis=1) <= tolerance)
        if same.size:
            raise ImageError(f"{name}: {_which(files, int(same[0]), what)} and {_which(files, k, what)} lie at the "
                             f"same position {positions[k].round(3).tolist()} (a duplicate, a second acquisition "
                             "or a time series); remove one, or give one volume's files")
    if across.max() > tolerance:
        k = int(np.argmax(across))
        tilt = math.degrees(math.atan2(across[-1], abs(along[-1])))
        raise ImageError(f"{name}: the series is gantry-tilted by {tilt:.1f} degrees (slices up to {across[k]:.2f} "
                         "mm off the slice normal), which would be read onto a sheared grid; resample it to an "
                         "orthogonal grid first (e.g. 3D Slicer's DICOM module with 'Acquisition geometry "
                         "regularization' set to harden the transform, then save the volume as .nrrd)")
    back = np.flatnonzero(np.sign(gaps) != np.sign(gaps[0]))
    if back.size:  # GDCM sorts a series' files; a multi-frame file's frames are stacked as stored
        raise ImageError(f"{name}: the {what} are not evenly spaced: {_which(files, int(back[0]) + 1, what)} goes "
                         "back along the slice normal (out of order), which would be read onto a wrong grid; "
                         "export the volume again, or as a series of single-frame files")
    if np.abs(gaps - gaps[0]).max() > tolerance:
        raise ImageError(f"{name}: the {what} are not evenly spaced (gaps of {np.abs(gaps).min():.1f} to "
                         f"{np.abs(gaps).max():.1f} mm along the slice normal: a slice missing?), which would "
                         "be read onto a wrong grid; give the complete series, or resample it to even spacing")
    axes = np.column_stack([orientations[0][:3], orientations[0][3:], normal * np.sign(gaps[0])])
    spacing = (float(pixel[0, 1]), float(pixel[0, 0]), float(abs(gaps).mean()))  # PixelSpacing: rows, columns
    return DicomGrid(positions, spacing, tuple(axes.ravel()), what)


def _check_read_grid(image: sitk.Image, grid: DicomGrid | None, name: str) -> None:
    """After GDCM read a checked series: every slice k must lie at origin + k x spacing along the
    third axis (a last guard: the series reader's own rules decide the grid)."""
    if grid is None:
        return
    positions = grid.positions
    if image.GetDimension() != 3 or image.GetSize()[2] != len(positions):
        raise ImageError(f"{name}: read as {image.GetSize()} voxels but its headers give {len(positions)} "
                         "slices; convert it to .nrrd or .nii.gz with another tool and give that")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    expected = np.array(image.GetOrigin()) + np.arange(len(positions))[:, None] * spacing[2] * direction[:, 2]
    error = float(np.linalg.norm(expected - positions, axis=1).max())
    if error > 0.05 * spacing.min():
        raise ImageError(f"{name}: read onto a grid {error:.2f} mm away from its slices' positions; convert it to "
                         ".nrrd or .nii.gz with another tool (e.g. 3D Slicer's DICOM module) and give that")


def _read_multiframe(path: Path, grid: DicomGrid, pixels: bool = True) -> tuple[sitk.Image, tuple]:
    """A checked multi-frame (enhanced) file read with pydicom onto the grid of its functional
    groups: GDCM reads an oblique one with a negative spacing, or as 4D inside a folder. Each
    frame's rescale (per-frame or shared Pixel Value Transformation) is applied. Returns the image
    and its size; ``pixels=False``: a one-voxel image with the grid only, for the header check."""
    import pydicom
    frames = len(grid.positions)
    if pixels:
        ds = pydicom.dcmread(path)
        try:
            array = np.asarray(ds.pixel_array)
        except Exception as exc:  # noqa: BLE001 - a missing decoder, damaged pixel data
            raise ImageError(f"{path}: cannot decode the multi-frame pixel data ({str(exc).strip()[:200]}); "
                             "export the volume uncompressed, or as .nrrd / .nii.gz") from None
        if array.ndim != 3 or array.shape[0] != frames:
            raise ImageError(f"{path}: multi-frame pixel data of shape {array.shape}; give a single-channel "
                             f"volume of {frames} frames")
        slope, intercept = _rescale(ds, frames)
        if (slope != 1).any() or (intercept != 0).any():
            array = array.astype(np.float32) * slope[:, None, None] + intercept[:, None, None]
        image = sitk.GetImageFromArray(array)  # (k, j, i)
    else:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns", "SamplesPerPixel"])
        image = sitk.Image([1, 1, 1], sitk.sitkFloat32, int(ds.get("SamplesPerPixel", 1) or 1))
        array = np.empty((frames, int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)), np.uint8)
    image.SetSpacing(grid.spacing)
    image.SetDirection(grid.direction)
    image.SetOrigin(tuple(float(v) for v in grid.positions[0]))
    return image, tuple(int(n) for n in array.shape[::-1])


def _rescale(ds, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's (slope, intercept): per-frame, else shared, else top-level, else (1, 0)."""
    def item(group):
        sequence = group.get("PixelValueTransformationSequence") if group is not None else None
        return sequence[0] if sequence else None
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or [None] * frames
    slope, intercept = np.ones(frames, np.float32), np.zeros(frames, np.float32)
    for k, group in enumerate(per_frame[:frames]):
        source = item(group) or item(shared) or ds
        slope[k] = float(source.get("RescaleSlope", 1) or 1)
        intercept[k] = float(source.get("RescaleIntercept", 0) or 0)
    return slope, intercept


def _dicom_file(path: Path) -> bool:
    """A DICOM file (its ``DICM`` marker), whatever its name."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _which(files, k, what) -> str:
    return Path(files[k]).name if what == "slices" else f"frame {k + 1}"


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
        grid = check_dicom_geometry([str(path)], path) if _dicom_file(path) else None
        if grid is not None:  # a multi-frame file
            return _read_multiframe(path, grid)[0]
    try:
        if path.is_dir():
            files, grid = _one_series(path)
            if grid is not None and grid.what == "frames":
                return _read_multiframe(Path(files[0]), grid)[0]
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
            _check_read_grid(image, grid, str(path))
            return image
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
