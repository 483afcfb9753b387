"""The brain model's data path: template label maps, images drawn from them, the catalog switch."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from UniversalSeg.data.brain_template import TASK_VALUES, TISSUES, head_label_map, template_tissues
from UniversalSeg.data.catalog import CatalogError, load_catalog
from UniversalSeg.data.dataset import AugmentedPatches, PreprocessedCases, case_records
from UniversalSeg.data.synthesis import synthesize
from UniversalSeg.data.transforms import AugmentationConfig


@pytest.fixture(scope="module")
def head():
    tissues = template_tissues()
    return tissues, head_label_map(tissues, np.random.default_rng(0))


def test_head_label_map_wraps_the_template_brain_in_ordered_layers(head):
    tissues, labels = head
    t = np.bincount(sitk.GetArrayViewFromImage(tissues).ravel(), minlength=4)
    assert t[2] > t[3] > t[1] > 100_000  # grey > white > CSF voxels (1 mm): an adult brain
    arr = sitk.GetArrayFromImage(labels)
    brain = np.isin(arr, [1, 2, 3])
    assert brain.sum() == t[1:].sum()  # the brain itself is untouched, only padded
    # outward order: rim CSF, bone, fat, skin; each layer a few mm, air outside
    depth = {}
    from scipy import ndimage
    dist = ndimage.distance_transform_edt(~brain)
    for value in (4, 5, 6, 7):
        layer = arr == value
        assert layer.sum() > 50_000, TISSUES[value]
        depth[value] = float(np.median(dist[layer]))
    assert depth[4] < depth[5] < depth[6] < depth[7] < 30, depth
    assert arr[0, 0, 0] == 0 and set(np.unique(arr)) == set(range(8))
    again = head_label_map(tissues, np.random.default_rng(0))
    assert np.array_equal(sitk.GetArrayViewFromImage(again), arr)  # reproducible from the seed


@pytest.mark.parametrize("modality, brighter", [
    ("MR-T1", ["white-matter", "gray-matter", "csf"]), ("MR-T2", ["csf", "gray-matter", "white-matter"]),
    ("MR-FLAIR", ["gray-matter", "white-matter", "csf"]),
    ("CT", ["bone", "gray-matter", "white-matter", "csf", "fat"])])
def test_synthesized_images_keep_each_modality_s_tissue_order(modality, brighter):
    labels = torch.zeros(40, 40, 40, dtype=torch.uint8)
    value = {"csf": 1, "gray-matter": 2, "white-matter": 3, "bone": 5, "fat": 6}
    for i, name in enumerate(["csf", "gray-matter", "white-matter", "bone", "fat"]):
        labels[8 * i:8 * i + 8] = value[name]
    for seed in range(5):
        image = synthesize(labels, TISSUES, modality, (2.0, 2.0, 2.0), np.random.default_rng(seed))
        assert image.shape == labels.shape and image.dtype == torch.float32
        core = {n: float(image[8 * i + 3:8 * i + 5, 10:30, 10:30].mean())
                for i, n in enumerate(["csf", "gray-matter", "white-matter", "bone", "fat"])}
        order = [core[n] for n in brighter]
        assert order == sorted(order, reverse=True), (modality, seed, core)
    a = synthesize(labels, TISSUES, modality, (2.0,) * 3, np.random.default_rng(1))
    b = synthesize(labels, TISSUES, modality, (2.0,) * 3, np.random.default_rng(1))
    c = synthesize(labels, TISSUES, modality, (2.0,) * 3, np.random.default_rng(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def write_maps(tmp_path, n=2):
    paths = []
    for i in range(n):
        arr = np.zeros((32, 32, 32), np.uint8)
        arr[4:28, 4:28, 4:28] = 7
        arr[8:24, 8:24, 8:24] = 2
        arr[12:20, 12:20, 12:20] = 3
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((2.0, 2.0, 2.0))
        path = tmp_path / f"m{i}.nii.gz"
        sitk.WriteImage(img, str(path))
        paths.append(path)
    return paths


def synth_catalog(tmp_path, **extra):
    maps = write_maps(tmp_path)
    ds = {"name": "synth-t2", "modality": "MR-T2", "synthesize": {"tissues": dict(TISSUES)},
          "cases": [{"id": p.stem.split(".")[0], "label": p.name} for p in maps],
          "labels": {t: v for t, v in TASK_VALUES.items()}, **extra}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"format_version": 1, "datasets": [ds]}))
    return path


def test_catalog_synthesize_trains_on_label_maps_alone(tmp_path):
    cat = load_catalog(synth_catalog(tmp_path))
    ds = cat.datasets[0]
    assert ds.synthesize == TISSUES and len(ds.splits["train"]) == 2 and not ds.splits.get("validation")
    assert ds.splits["train"][0].image == ds.splits["train"][0].label
    tasks, mods = list(TASK_VALUES), ["MR-T2"]
    records = case_records(cat, "train", tasks, mods, [])
    cases = PreprocessedCases(records, (2.0, 2.0, 2.0), cat.modalities)
    patches = AugmentedPatches(cases, (32, 32, 32), AugmentationConfig(affine_prob=0.5), cat.modalities, (2.0,) * 3)
    a, b, c = patches[(0, 11)], patches[(0, 11)], patches[(0, 12)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])  # seeded
    assert not torch.equal(a["image"], c["image"])
    assert a["image"].shape == (1, 32, 32, 32) and abs(float(a["image"].mean())) < 0.2  # z-scored
    # the targets follow the (deformed) label map: head is the union of everything, brain of 1-3
    slot = {tasks[int(i)]: k for k, i in enumerate(a["task_ids"])}
    head, brain, wm = (a["target"][slot[t]] for t in ("head", "brain", "white-matter"))
    assert bool((brain <= head).all()) and bool((wm <= brain).all()) and 0 < int(wm.sum()) < int(brain.sum())


@pytest.mark.parametrize("change, message", [
    ({"split": {"validation": 0.5}}, "trains only"),
    ({"synthesize": {"tissues": {1: "unobtainium"}}}, "unknown tissue"),
    ({"synthesize": {"tissues": {1: "csf"}}, "modality": "PET"}, "no tissue model for modality 'PET'"),
    ({"synthesize": ["csf"]}, "must be {tissues"),
    ({"cases": [{"id": "x", "image": "m0.nii.gz"}]}, "needs a 'label'"),
])
def test_bad_synthesize_datasets_name_the_problem(tmp_path, change, message):
    path = synth_catalog(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["datasets"][0].update(change)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)
