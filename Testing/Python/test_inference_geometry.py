"""Geometry: predictions lie exactly on the input grid, to the voxel, for real images.

The network is replaced by an "oracle" that thresholds its input, so the expected mask is known
on the input grid: any error in reading, reorienting, resampling, cropping, sliding-window
stitching or resampling back shows up as misplaced voxels.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai import transforms as mt

from conftest import tiny_config
from UniversalSeg.data.image_io import to_metatensor
from UniversalSeg.data.modalities import KNOWN_MODALITIES
from UniversalSeg.data.terminology import TaskInfo, task_info
from UniversalSeg.errors import InputError
from UniversalSeg.inference import PredictOptions, Predictor
from UniversalSeg.model_package import load_package, save_package
from UniversalSeg.networks import UniversalSegNet
from UniversalSeg.training.evaluation import dice

NILEARN_DATA = Path(importlib.util.find_spec("nilearn").origin).parent / "datasets" / "data"


def mni_t1() -> sitk.Image:
    return sitk.ReadImage(str(NILEARN_DATA / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
                          sitk.sitkFloat32)


class ThresholdOracle(torch.nn.Module):
    """logits = steep(x - c): 'segments' voxels whose normalized intensity is above c."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, ctx):
        return {"logits": 200.0 * (x - self.c).expand(-1, ctx.task_ids.shape[1], -1, -1, -1)}


def oracle_predictor(tmp_path, spacing, structure: sitk.Image) -> Predictor:
    """A predictor whose network thresholds the (normalized) structure image at its midpoint."""
    cfg = tiny_config(domains=[])
    path = save_package(tmp_path / "pkg", UniversalSegNet(cfg), [task_info(t) for t in cfg.tasks],
                        dict(KNOWN_MODALITIES), spacing, (128, 128, 128))
    predictor = Predictor(load_package(path), device="cpu", precision="fp32")
    # the z-score the predictor will apply, to place the oracle's threshold at intensity 50
    raw = mt.Compose([mt.Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
                      mt.Spacing(pixdim=spacing, mode="bilinear")])(to_metatensor(structure))
    mean, std = float(raw.mean()), float(raw.std(unbiased=False))
    predictor.net = ThresholdOracle((50.0 - mean) / std)
    return predictor


def binary(image: sitk.Image, threshold: float) -> sitk.Image:
    return sitk.Cast(image > threshold, sitk.sitkUInt8)


def same_grid(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    assert a.GetOrigin() == b.GetOrigin()
    assert a.GetSpacing() == b.GetSpacing()
    assert a.GetDirection() == b.GetDirection()


def centroid_mm(mask: sitk.Image) -> np.ndarray:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    return np.array(stats.GetCentroid(1))


def structure_image(t1: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """White matter of the MNI T1 as a 0/100 image, and its mask, on the T1's own grid."""
    mask = binary(t1, 170)
    image = sitk.Cast(mask, sitk.sitkFloat32) * 100.0
    image.CopyInformation(t1)
    return image, mask


def test_mni152_at_model_spacing_round_trips_voxel_exact(tmp_path):
    t1 = mni_t1()
    image, expected = structure_image(t1)
    predictor = oracle_predictor(tmp_path, (1.0, 1.0, 1.0), image)
    result = predictor.predict(image, "CT", ["liver"], PredictOptions(sw_batch_size=1))
    out = result.masks["liver"]
    same_grid(out, t1)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(out), sitk.GetArrayViewFromImage(expected))


def test_rotated_anisotropic_copy_lands_on_its_own_grid(tmp_path):
    t1 = mni_t1()
    rotation = sitk.Euler3DTransform((0.0, -18.0, 18.0), np.deg2rad(15), np.deg2rad(-10), np.deg2rad(25))
    direction = np.array(rotation.GetMatrix()).reshape(3, 3) @ np.array(t1.GetDirection()).reshape(3, 3)
    spacing = (1.2, 1.6, 2.5)
    ref = sitk.Image([160, 130, 80], sitk.sitkFloat32)
    ref.SetSpacing(spacing)
    ref.SetDirection(tuple(direction.ravel()))
    center_index = np.array(ref.GetSize()) / 2
    ref.SetOrigin(tuple(np.array([0.0, -18.0, 18.0]) - direction @ (center_index * spacing)))
    rotated_t1 = sitk.Resample(t1, ref, sitk.Transform(), sitk.sitkLinear, 0.0)
    image, expected = structure_image(rotated_t1)
    predictor = oracle_predictor(tmp_path, (2.0, 2.0, 2.0), image)
    result = predictor.predict(image, "CT", ["liver"], PredictOptions(sw_batch_size=2))
    out = result.masks["liver"]
    same_grid(out, rotated_t1)
    assert dice(out, expected) > 0.9
    # the structure is where it should be: centroids agree to well under a voxel
    assert np.linalg.norm(centroid_mm(out) - centroid_mm(expected)) < 0.5 * min(spacing)


def write_dicom_series(image: sitk.Image, folder: Path) -> None:
    folder.mkdir(parents=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    series = "1.2.826.0.1.3680043.2.1125.1." + "4242"
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        tags = {"0008|0060": "CT", "0020|000e": series, "0020|000d": series + ".1",
                "0020|0013": str(k + 1), "0008|0018": f"{series}.{k + 1}",
                "0020|0037": "\\".join(f"{d:.6f}" for d in (direction[0], direction[3], direction[6],
                                                             direction[1], direction[4], direction[7])),
                "0020|0032": "\\".join(f"{p:.6f}" for p in image.TransformIndexToPhysicalPoint((0, 0, k))),
                "0018|0050": str(image.GetSpacing()[2]), "0028|1052": "0", "0028|1053": "1"}
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:04d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder_round_trips(tmp_path):
    t1 = mni_t1()[40:160, 40:200, 50:130]  # a smaller block keeps the series short
    image, _ = structure_image(t1)
    write_dicom_series(image, tmp_path / "dicom")
    series = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "dicom")),
                            sitk.sitkFloat32)
    expected = binary(series, 50)
    predictor = oracle_predictor(tmp_path, (1.0, 1.0, 1.0), series)
    result = predictor.predict(tmp_path / "dicom", "CT", ["liver"], PredictOptions())
    out = result.masks["liver"]
    assert out.GetSize() == series.GetSize()
    np.testing.assert_allclose(out.GetOrigin(), series.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(out.GetSpacing(), series.GetSpacing(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(out), sitk.GetArrayViewFromImage(expected))


def test_roi_crop_keeps_the_grid_and_empties_the_outside(tmp_path):
    t1 = mni_t1()
    image, expected = structure_image(t1)
    predictor = oracle_predictor(tmp_path, (1.0, 1.0, 1.0), image)
    roi = (-20.0, 30.0, -40.0, 10.0, 0.0, 40.0)  # RAS mm
    out = predictor.predict(image, "CT", ["liver"], PredictOptions(roi=roi)).masks["liver"]
    same_grid(out, t1)
    arr = sitk.GetArrayViewFromImage(out)
    idx = np.argwhere(arr > 0)[:, ::-1]  # (i, j, k)
    pts = np.array([t1.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in idx[::97]])
    ras = pts * np.array([-1, -1, 1])
    assert len(idx) > 1000
    assert np.all(ras.min(0) >= np.array(roi[0::2]) - 1.01) and np.all(ras.max(0) <= np.array(roi[1::2]) + 1.01)
    inside = sitk.GetArrayViewFromImage(expected) > 0
    assert (arr > 0).sum() < inside.sum()


def test_largest_component_clean_up_keeps_as_many_parts_as_the_structure_has(tmp_path):
    """Both kidneys survive the clean-up (a task covering a paired organ has 2 parts), a liver
    keeps its largest part, lesions are never removed; old packages get the known counts."""
    arr = np.zeros((40, 40, 40), np.float32)  # SimpleITK order (k, j, i)
    arr[5:15, 5:15, 5:15] = 100      # 1000 voxels
    arr[5:13, 25:33, 25:33] = 100    # 512
    arr[25:30, 5:10, 25:30] = 100    # 125
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((2.0, 2.0, 2.0))
    predictor = oracle_predictor(tmp_path, (2.0, 2.0, 2.0), image)
    tasks = ["liver", "kidney", "tumor"]
    masks = predictor.predict(image, "CT", tasks, PredictOptions(largest_component=True)).masks
    sizes = {t: sorted(np.bincount(sitk.GetArrayFromImage(sitk.ConnectedComponent(masks[t], True)).ravel())[1:])
             for t in tasks}
    assert sizes == {"liver": [1000], "kidney": [512, 1000], "tumor": [125, 512, 1000]}
    plain = predictor.predict(image, "CT", ["kidney"], PredictOptions()).masks["kidney"]
    assert int(sitk.GetArrayViewFromImage(plain).sum()) == 1637
    # a model.json written before "parts" existed: known tasks get their count, others 1
    old = {k: v for k, v in task_info("kidney").to_dict().items() if k != "parts"}
    assert TaskInfo.from_dict(old).parts == 2
    assert TaskInfo.from_dict({"name": "thing", "color": [1, 2, 3]}).parts == 1
    assert task_info("adrenal", {"parts": 2}).parts == 2
    with pytest.raises(InputError, match="parts must be a whole number"):
        task_info("adrenal", {"parts": -1})
