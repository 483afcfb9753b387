"""The demo's collection drawn from real abdominal anatomy (AMOS 2022 label maps)."""
import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from UniversalSeg.data import abdomen_anatomy as anatomy_mod
from UniversalSeg.data import abdomen_collection as coll


@pytest.fixture(scope="module")
def anatomy():
    maps = coll.default_label_maps()
    assert [p.name for p in maps] == ["amos_0001_label.nii.gz", "amos_0013_label.nii.gz"]
    return anatomy_mod.tissue_map(maps[1])  # the smaller of the two


def test_the_shipped_label_maps_are_the_documented_files():
    import hashlib
    folder = coll.default_label_maps()[0].parent
    sums = dict(reversed(line.split()) for line in (folder / "SHA256SUMS").read_text().splitlines())
    for path in coll.default_label_maps():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[path.name]
    assert "CC BY 4.0" in (folder / "README.md").read_text()


def test_tissue_map_keeps_every_organ_voxel_and_builds_the_body_around_them(anatomy):
    organs, _ = anatomy_mod.resample_labels(coll.default_label_maps()[1])
    values = anatomy.values[:, :, :organs.shape[2]]  # the room added above is new
    assert np.array_equal(values[organs > 0], organs[organs > 0])  # organs untouched
    for value in anatomy_mod.CONTEXT:  # every context tissue is there
        assert (anatomy.values == value).sum() > 100, anatomy_mod.CONTEXT[value]
    # every organ lies inside the body: no organ voxel borders air
    organ = (anatomy.values > 0) & (anatomy.values <= 15)
    grown = np.zeros_like(organ)
    grown[1:] |= organ[:-1]
    grown[:-1] |= organ[1:]
    assert not (grown & (anatomy.values == 0)).any()
    # the spine lies behind (larger y, LPS) the aorta; the lungs above the liver's middle
    aorta = np.argwhere(anatomy.values == anatomy_mod.ORGAN_VALUE["aorta"]).mean(0)
    bone = np.argwhere(anatomy.values == anatomy_mod.BONE)
    near = bone[np.abs(bone[:, 2] - aorta[2]) < 5]
    assert np.median(near[:, 1]) > aorta[1]
    liver = np.argwhere(anatomy.values == anatomy_mod.ORGAN_VALUE["liver"])
    assert np.median(np.argwhere(anatomy.values == anatomy_mod.LUNG)[:, 2]) > np.median(liver[:, 2])
    # the patient's right (smaller x, LPS) holds the liver, the left the spleen
    spleen = np.argwhere(anatomy.values == anatomy_mod.ORGAN_VALUE["spleen"])
    assert liver[:, 0].mean() < spleen[:, 0].mean()


def test_collection_partial_labels_grids_and_held_out_site(anatomy, tmp_path):
    catalog = coll.generate_collection(tmp_path, cases=2, seed=3, anatomies=[anatomy])
    train = yaml.safe_load(catalog.read_text())["datasets"]
    held = yaml.safe_load((tmp_path / "catalog-heldout.yaml").read_text())["datasets"]
    assert [d["name"] for d in held] == ["mr-t1-hospital-f"]
    assert {d["name"] for d in train} == {i.name for i in coll.INSTITUTIONS if not i.held_out}
    for inst in coll.INSTITUTIONS:
        img = sitk.ReadImage(str(tmp_path / inst.name / "imagesTr" / f"{inst.name}_000_0000.nii.gz"))
        lab = sitk.ReadImage(str(tmp_path / inst.name / "labelsTr" / f"{inst.name}_000.nii.gz"))
        # labels lie exactly on the image grid, the site's own spacing and axes
        assert img.GetSize() == lab.GetSize() and np.allclose(img.GetSpacing(), inst.spacing)
        assert np.allclose(img.GetDirection(), inst.direction) and np.allclose(img.GetOrigin(), lab.GetOrigin())
        present = set(np.unique(sitk.GetArrayViewFromImage(lab)).tolist()) - {0}
        assert present == {coll.TASK_VALUES[t] for t in inst.tasks}  # only what the site labels
    # CT in Hounsfield units: the liver (any phase) and the air where the tables put them
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ct-hospital-a/imagesTr/ct-hospital-a_001_0000.nii.gz")))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ct-hospital-a/labelsTr/ct-hospital-a_001.nii.gz")))
    liver = img[lab == coll.TASK_VALUES["liver"]]
    assert 40 < np.median(liver) < 140
    assert img.min() < -900  # air around the body
    # cases differ (deformation, bowel, contrast) and the same seed gives the same case
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ct-hospital-a/labelsTr/ct-hospital-a_000.nii.gz")))
    again = coll.generate_collection(tmp_path / "again", cases=1, seed=3, anatomies=[anatomy])
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(again.parent / "ct-hospital-a/labelsTr/ct-hospital-a_000.nii.gz")))
    assert np.array_equal(a, b) and not np.array_equal(a.shape, lab.shape) or not np.array_equal(a, lab)


def test_contrast_tables_keep_the_orders_every_patient_has():
    rng = np.random.default_rng(0)
    for _ in range(50):
        t1, t2 = coll.draw_means("mr-t1", rng), coll.draw_means("mr-t2", rng)
        assert t1["spleen"] < t1["liver"] < t1["subcutaneous-fat"]  # T1: fat bright, spleen below liver
        assert t2["spleen"] > t2["liver"] and t2["gallbladder"] > t2["liver"]  # T2: fluid and spleen bright
        pv = coll.draw_means("ct-portal-venous", rng)
        assert pv["subcutaneous-fat"] < 0 < pv["liver"] < pv["bone"]
    assert set(coll.PAINT.values()) <= set(coll.CONTRASTS["pet"])
    for table in coll.CONTRASTS.values():
        assert set(coll.PAINT.values()) <= set(table)
