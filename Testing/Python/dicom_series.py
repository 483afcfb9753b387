"""A real-header CT series for tests: pydicom's CT_small.dcm as the template of every slice, with
our voxels and any (oblique) geometry. No DICOM series ships with our dependencies."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def write_ct_series(folder: Path, hu_kji: np.ndarray, spacing=(2.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0),
                    row=(1.0, 0.0, 0.0), column=(0.0, 1.0, 0.0)) -> dict:
    """Slices k of ``hu_kji`` (k, j, i) as files; ``spacing`` (i, j, k) mm; geometry in LPS as DICOM
    has it. Returns the series' UIDs and the files in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    row, column = np.asarray(row, float), np.asarray(column, float)
    normal = np.cross(row, column)
    files, instances = [], []
    for k, plane in enumerate(hu_kji):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids["study"], uids["series"], uids["frame"]
        ds.InstanceNumber = k + 1
        position = np.asarray(origin, float) + k * spacing[2] * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *column)]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing (j), column spacing (i)
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.SliceLocation = f"{float(position @ normal):.6f}"
        ds.Rows, ds.Columns = plane.shape
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (np.asarray(plane) + 1024).astype(np.int16).tobytes()
        path = folder / f"slice{len(hu_kji) - k:03d}.dcm"  # file names in the reverse of slice order
        ds.save_as(path)
        files.append(path)
        instances.append(ds.SOPInstanceUID)
    return {**uids, "files": files, "instances": instances, "patient": template.PatientID}
