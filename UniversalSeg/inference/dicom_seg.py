"""DICOM SEG output (``--output result.dcm``) with highdicom, for PACS and batch users.

The segmentation references the DICOM series it was computed from (each frame names its source
instance, and the series' patient, study and frame of reference are kept), one segment per task
with the task's display name, SNOMED CT category and type, and its color (as the CIELab value
DICOM stores). Segments may overlap (a BINARY segmentation keeps each segment's own frames), so
an organ and a lesion inside it both survive. Only a DICOM series can be referenced: any other
input is refused before the model is loaded (``check_dicom_output``).

Why highdicom: it builds a standard-conformant SEG instance (multi-frame functional groups,
dimension index, referenced series) from pydicom datasets and a mask array; writing one by hand
would repeat it. Masks come on the input grid, whose slices are the series' files in the order
SimpleITK's GDCM series reader sorted them, so frame k of the mask belongs to file k.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..data.image_io import ImageError
from ..data.terminology import TaskInfo
from .writers import atomic_write

DICOM_SEG_SUFFIXES = (".dcm",)
TISSUE = ("SCT", "85756007", "Tissue")  # Slicer's generic terminology for a structure without codes


def wants_dicom_seg(output: Path) -> bool:
    return output.name.lower().endswith(DICOM_SEG_SUFFIXES)


# Patient and study attributes of type 2 (present, but allowed empty): a series without them still
# gets a SEG, with them empty. Type 1 attributes a SEG copies cannot be made up: refused.
TYPE_2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
          "AccessionNumber", "ReferringPhysicianName")
TYPE_1 = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
          "ImagePositionPatient", "ImageOrientationPatient")


def series_files(folder: Path) -> list[str]:
    """The files of the one DICOM series in ``folder``, in the slice order of the read volume."""
    from ..data.image_io import one_series_files
    return one_series_files(folder)


def series_headers(folder: Path) -> list:
    """The series' headers, checked for what a SEG must copy (before any model is loaded): type 1
    attributes present, one frame of reference, no two slices at one position; type 2 attributes
    that are missing are added empty."""
    import pydicom
    files = series_files(folder)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in sources):
        raise ImageError(f"{folder}: a multi-frame (enhanced) DICOM source; DICOM SEG output references a series "
                         "of single-frame files; write .seg.nrrd or .nii.gz instead")
    for key in TYPE_1:
        lacking = [Path(f).name for f, ds in zip(files, sources) if not getattr(ds, key, None)]
        if lacking:
            raise ImageError(f"{folder}: {len(lacking)} file(s) of the series ({lacking[0]}, ...) have no {key}, "
                             "which a DICOM SEG must copy from its source; write .seg.nrrd or .nii.gz instead")
    if len({ds.FrameOfReferenceUID for ds in sources}) > 1:
        raise ImageError(f"{folder}: the series' files name more than one FrameOfReferenceUID; a DICOM SEG "
                         "references one; write .seg.nrrd or .nii.gz instead")
    seen = {}
    for f, ds in zip(files, sources):
        position = tuple(round(float(v), 3) for v in ds.ImagePositionPatient)
        if position in seen:
            raise ImageError(f"{folder}: {Path(seen[position]).name} and {Path(f).name} lie at the same position "
                             f"{list(position)} (a duplicate or a second acquisition); remove one, or write "
                             ".seg.nrrd or .nii.gz instead")
        seen[position] = f
    for ds in sources:
        for key in TYPE_2:
            if key not in ds:
                setattr(ds, key, "")
    return sources


def check_dicom_codes(output: Path, infos) -> None:
    """What DICOM cannot hold in a code (before the weights are read): a meaning of at most 64
    characters (LO), a scheme of at most 16 (SH)."""
    if not wants_dicom_seg(output):
        return
    for info in infos:
        for field in ("category", "type"):
            code = getattr(info, field)
            if code is not None and (len(code.meaning) > 64 or len(code.scheme) > 16):
                raise ImageError(f"--output {output.name}: task {info.name!r}'s {field} code "
                                 f"({code.scheme} {code.value}) has a meaning of {len(code.meaning)} characters "
                                 f"or a scheme of {len(code.scheme)}; DICOM allows 64 and 16; write .seg.nrrd instead")


def check_dicom_output(source: Path, output: Path) -> None:
    """Refuse a ``.dcm`` output for anything but a DICOM series folder (before any work)."""
    if not wants_dicom_seg(output):
        return
    try:
        import highdicom  # noqa: F401 - a core dependency, but not installed into 3D Slicer's Python
    except ImportError:
        raise ImageError(f"--output {output.name}: DICOM SEG output needs highdicom (pip install highdicom); "
                         "or write .seg.nrrd and export DICOM SEG from Slicer's DICOM module") from None
    if not source.is_dir():
        raise ImageError(f"--output {output.name} writes a DICOM SEG, which must reference the DICOM series it "
                         f"segments, but --input {source.name} is not a DICOM series folder; write .seg.nrrd "
                         "or .nii.gz instead")
    series_headers(source)


def _code(code, fallback):
    from highdicom.sr import CodedConcept
    scheme, value, meaning = (code.scheme, code.value, code.meaning) if code is not None else fallback
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def segment_descriptions(tasks: list[str], infos: dict[str, TaskInfo]) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="UniversalSeg", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    out = []
    for number, task in enumerate(tasks, start=1):
        info = infos[task]
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=info.display_name[:64],  # LO: at most 64 characters
            segmented_property_category=_code(info.category, TISSUE),
            segmented_property_type=_code(info.type, TISSUE),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, tracking_id=task, tracking_uid=hd.UID(),
            display_color=hd.color.CIELabColor.from_rgb(*info.color)))
    return out


def write_dicom_seg(path, source_folder, masks: dict[str, sitk.Image], infos: dict[str, TaskInfo]) -> Path:
    """One DICOM SEG instance for ``masks`` (on the grid of the series in ``source_folder``)."""
    import highdicom as hd

    sources = series_headers(Path(source_folder))  # headers only: the voxels are read already
    tasks = list(masks)
    pixels = np.stack([sitk.GetArrayViewFromImage(masks[t]) > 0 for t in tasks], axis=-1)  # (k, j, i, segment)
    if pixels.shape[0] != len(sources):
        raise ImageError(f"{source_folder}: the result has {pixels.shape[0]} slices but the series "
                         f"{len(sources)} files; a multi-frame or irregular series cannot be referenced")
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(tasks, infos),
        series_instance_uid=hd.UID(), series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="UniversalSeg",
        manufacturer_model_name="UniversalSeg", software_versions=__version__, device_serial_number="none",
        series_description="UniversalSeg segmentation", omit_empty_frames=False)
    return atomic_write(path, lambda tmp: seg.save_as(str(tmp)))
