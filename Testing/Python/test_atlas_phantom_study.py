"""Testing/Benchmarks/atlas_phantom.py's own logic: the atlas is paired with the model by case id
(never by position), the committed studies' data settings are read from their recorded commands,
and the model grid rebuilt from a preprocessed tensor is the grid MONAI resampled the label onto."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

BENCHMARKS = Path(__file__).resolve().parents[1] / "Benchmarks"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("atlas_phantom", BENCHMARKS / "atlas_phantom.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(scores):
    return [{"dataset": d, "task": t, "case": c, "dice": v} for (d, t, c), v in scores.items()]


def test_atlas_is_paired_by_case_id_not_by_position(study):
    model = {("ct", "liver", "ct_002"): 0.9, ("ct", "liver", "ct_000"): 0.7, ("ct", "spleen", "ct_000"): 0.5}
    atlas = {("ct", "liver", "ct_000"): 0.6, ("ct", "spleen", "ct_000"): 0.4, ("ct", "liver", "ct_002"): 0.8}
    cells = study.pair_by_id(rows(model), list(reversed(rows(atlas))))
    ids, m, a = cells[("ct", "liver")]
    assert ids == ["ct_000", "ct_002"] and m == [0.7, 0.9] and a == [0.6, 0.8]
    assert cells[("ct", "spleen")] == (["ct_000"], [0.5], [0.4])
    with pytest.raises(ValueError, match="different test cases"):
        study.pair_by_id(rows(model), rows({k: v for k, v in atlas.items() if k[2] != "ct_002"}))
    with pytest.raises(ValueError, match="scored twice"):
        study.pair_by_id(rows(model) + rows(model)[:1], rows(atlas))


def test_settings_come_from_the_committed_studies_commands(study):
    for path, shape in zip(study.ACCURACY_STUDIES, (40, 64)):
        settings = study.accuracy_settings(json.loads(path.read_text()))
        assert settings == {"cases": 8, "shape": shape, "spacing": 180.0 / shape, "test_cases": 20, "data_seed": 0,
                            "vary_data_seed": True, "test_data_seed": 1000, "kidneys": "posterior"}
    merged = {"vary_data_seed": True,
              "command": "python Testing/Benchmarks/accuracy.py --shape 40 --vary-data-seed + "
                         "python Testing/Benchmarks/accuracy.py --shape 64 --vary-data-seed (merged: --merge-from)"}
    with pytest.raises(ValueError, match="disagree"):
        study.accuracy_settings(merged)


def test_model_grid_is_the_grid_monai_resampled_onto(study, tmp_path):
    """A permuted, flipped, anisotropic image (3 mm -> 2 mm: no nearest-neighbour ties):
    the label resampled onto the rebuilt grid equals MONAI's preprocessed target voxel for voxel."""
    from UniversalSeg.data.catalog import KNOWN_MODALITIES
    from UniversalSeg.data.dataset import PreprocessedCases
    rng = np.random.default_rng(0)
    label = np.zeros((14, 18, 22), np.uint8)  # [z, y, x]
    label[3:9, 4:15, 6:12] = 1
    label[rng.random(label.shape) < 0.05] = 2
    paths = {}
    for key, array in (("image", label.astype(np.float32) * 100), ("label", label)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((2.0, 3.0, 2.0))
        image.SetDirection((0, 0, 1, -1, 0, 0, 0, -1, 0))  # permuted, flipped: RAS reorders the axes
        image.SetOrigin((10.0, -4.0, 7.5))
        paths[key] = str(tmp_path / f"{key}.nii.gz")
        sitk.WriteImage(image, paths[key])
    record = {**paths, "case_id": "c", "dataset": "d", "modality": "MR-T1", "task_names": ["a", "b"],
              "task_values": [[1], [2]], "task_ids": [0, 1], "modality_id": 0, "domain_id": -1}
    target = PreprocessedCases([record], (2.0, 2.0, 2.0), KNOWN_MODALITIES)[0]["target"]
    grid = study.model_grid(target)
    assert tuple(grid.GetSize()) == tuple(target.shape[1:])
    resampled = sitk.Resample(sitk.ReadImage(paths["label"]), grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    lab = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)
    np.testing.assert_array_equal(np.stack([lab == 1, lab == 2]), target.as_tensor().numpy() > 0)
