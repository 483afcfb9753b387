"""``predict --output result.dcm``: a DICOM SEG (highdicom) that references the input series, with
the tasks' names, codes and colors, frame for frame the same masks as the .seg.nrrd output of the
same run, on an oblique series; refused clearly for any input that is not a DICOM series."""
import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicerio

from dicom_series import write_ct_series
from UniversalSeg.cli import main

TASKS = ["liver", "spleen", "liver-tumor"]


@pytest.fixture(scope="module")
def series(synth_collection, tmp_path_factory):
    """A synthetic CT case as an oblique DICOM series (rotated 30 degrees about the patient axis)."""
    image = synth_collection.parent / "ct-hospital-a" / "imagesTr" / "ct-hospital-a_000_0000.nii.gz"
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(image)))
    a = np.deg2rad(30)
    folder = tmp_path_factory.mktemp("dicom") / "series"
    info = write_ct_series(folder, hu, spacing=(5.625, 5.625, 5.625), origin=(-90.0, -80.0, 20.0),
                           row=(np.cos(a), np.sin(a), 0), column=(-np.sin(a), np.cos(a), 0))
    return folder, info


def test_dicom_seg_references_the_series_and_matches_the_seg_nrrd(trained_run, series, tmp_path):
    folder, info = series
    args = ["predict", "--model", trained_run["package"], "--input", str(folder), "--modality", "CT",
            "--tasks", ",".join(TASKS), "--threshold", "liver=0.5,spleen=0.02,liver-tumor=0.001", "--progress", "none"]
    assert main(args + ["--output", str(tmp_path / "result.dcm")]) == 0
    assert main(args + ["--output", str(tmp_path / "result.seg.nrrd")]) == 0
    seg = hd.seg.segread(str(tmp_path / "result.dcm"))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == info["study"] and seg.FrameOfReferenceUID == info["frame"]
    assert seg.PatientID == info["patient"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == info["series"]
    assert set(seg.get_source_image_uids()[i][2] for i in range(len(info["instances"]))) == set(info["instances"])

    nrrd = slicerio.read_segmentation(str(tmp_path / "result.seg.nrrd"))
    # frames in the series' slice order, each (rows j, columns i), one channel per segment
    pixels = seg.get_pixels_by_source_instance(info["instances"], segment_numbers=[1, 2, 3])
    overlap = None
    for number, (task, expected) in enumerate(zip(TASKS, nrrd["segments"]), start=1):
        description = seg.get_segment_description(number)
        assert description.segment_label == expected["name"]
        assert description.tracking_id == task
        assert [description.segmented_property_type.value, description.segmented_property_category.value] == \
            [expected["terminology"]["type"][1], expected["terminology"]["category"][1]]
        rgb = np.array(hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb())
        assert np.abs(rgb - np.array(expected["color"]) * 255).max() <= 1
        mask = slicerio.segment_mask(nrrd, expected).transpose(2, 1, 0)  # (i, j, k) -> (k, j, i)
        assert mask.any(), task
        assert np.array_equal(pixels[..., number - 1] > 0, mask), f"{task}: the DICOM SEG frames differ"
        overlap = mask if overlap is None else overlap & mask
    liver, tumor = pixels[..., 0] > 0, pixels[..., 2] > 0
    assert (liver & tumor).any(), "overlapping segments are kept (BINARY segmentation)"
    # every frame sits where its source slice is: same plane position, same orientation
    positions = {uid: [float(v) for v in pydicom.dcmread(f).ImagePositionPatient]
                 for uid, f in zip(info["instances"], info["files"])}
    orientation = [float(v) for v in pydicom.dcmread(info["files"][0]).ImageOrientationPatient]
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
                               orientation, atol=1e-5)
    assert seg.NumberOfFrames == 3 * len(info["instances"])
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   positions[source], atol=1e-4)


@pytest.mark.parametrize("make_input, message", [
    (lambda tmp, folder: folder.parent.parent.parent / "synth" / "x", "no such file"),
    (lambda tmp, folder: sorted(folder.iterdir())[0].parent.parent / "nii.nii.gz", "is not a DICOM series folder"),
    (lambda tmp, folder: tmp, "folder holds no DICOM series"),
])
def test_dicom_seg_needs_a_dicom_series_input(trained_run, series, tmp_path, capsys, make_input, message):
    folder, _ = series
    nifti = folder.parent / "nii.nii.gz"
    if not nifti.exists():
        sitk.WriteImage(sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))), str(nifti))
    source = make_input(tmp_path / "empty", folder)
    (tmp_path / "empty").mkdir(exist_ok=True)
    code = main(["predict", "--model", trained_run["package"], "--input", str(source), "--modality", "CT",
                 "--output", str(tmp_path / "out.dcm"), "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out.dcm").exists()


def test_a_series_without_patient_id_or_study_date_gets_them_empty(trained_run, tmp_path):
    """PatientID, PatientName, StudyDate and StudyTime are type 2 (present, may be empty): a series
    without them still gets its SEG, with them empty (highdicom needed them and raised after the
    whole inference)."""
    hu = np.random.default_rng(0).normal(0, 100, (6, 24, 24))
    info = write_ct_series(tmp_path / "series", hu)
    for f in info["files"]:
        ds = pydicom.dcmread(f)
        for key in ("PatientID", "PatientName", "StudyDate", "StudyTime"):
            delattr(ds, key)
        ds.save_as(f)
    assert main(["predict", "--model", str(trained_run["package"]), "--input", str(tmp_path / "series"),
                 "--modality", "CT", "--output", str(tmp_path / "seg.dcm"), "--progress", "none"]) == 0
    seg = pydicom.dcmread(tmp_path / "seg.dcm", stop_before_pixels=True)
    assert seg.PatientID == "" and seg.StudyDate == "" and seg.FrameOfReferenceUID == info["frame"]
