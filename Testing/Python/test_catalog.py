"""Dataset catalogs: MSD layout, label maps, reproducible splits, and every bad input stopped early."""
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from scipy import ndimage

from UniversalSeg.data.catalog import CatalogError, check_files, load_catalog


def write_catalog(tmp_path, data, name="catalog.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_synthetic_catalog_loads_msd_layout_with_partial_labels(synth_collection):
    cat = load_catalog(synth_collection)
    assert cat.task_names == ["liver", "spleen", "kidney", "liver-tumor"]
    assert cat.modality_names == ["CT", "MR-T1", "MR-T2", "PET"]
    b = cat.dataset("ct-hospital-b")
    assert b.label_map == {"liver": (1, 2), "liver-tumor": (2,)}  # tumour inside the liver
    assert cat.dataset("mr-t2-hospital-d").tasks == ["spleen", "kidney"]  # partial labels
    for ds in cat.datasets:
        assert len(ds.splits["train"]) == 3 and len(ds.splits["validation"]) == 1
    assert cat.tasks["liver"].type.value == "10200004"  # SNOMED CT Liver
    assert cat.tasks["liver-tumor"].category.meaning == "Morphologically Altered Structure"
    check_files(cat)


def test_splits_are_reproducible_and_seeded(synth_collection, tmp_path):
    data = yaml.safe_load(synth_collection.read_text())
    root = synth_collection.parent
    for d in data["datasets"]:
        d["root"] = str(root / d["root"])
    ids = lambda cat: [c.id for c in cat.datasets[0].splits["validation"]]
    a = load_catalog(write_catalog(tmp_path, data, "a.yaml"))
    b = load_catalog(write_catalog(tmp_path, data, "b.yaml"))
    assert ids(a) == ids(b)
    seeds = set()
    for seed in range(6):
        data["datasets"][0]["split"] = {"seed": seed, "validation": 0.25}
        seeds.add(tuple(ids(load_catalog(write_catalog(tmp_path, data, "c.yaml")))))
    assert len(seeds) > 1
    data["datasets"][0]["split"] = {"validation": ["ct-hospital-a_002"], "test": ["ct-hospital-a_000"]}
    cat = load_catalog(write_catalog(tmp_path, data, "d.yaml"))
    s = cat.datasets[0].splits
    assert [c.id for c in s["train"]] == ["ct-hospital-a_001", "ct-hospital-a_003"]


def test_value_first_label_maps_and_explicit_case_lists(synth_collection, tmp_path):
    root = synth_collection.parent / "ct-hospital-a"
    cases = [{"id": f"c{i}", "image": str(root / "imagesTr" / f"ct-hospital-a_00{i}_0000.nii.gz"),
              "label": str(root / "labelsTr" / f"ct-hospital-a_00{i}.nii.gz")} for i in range(3)]
    cat = load_catalog(write_catalog(tmp_path, {"datasets": [
        {"name": "x", "modality": "CT", "cases": cases, "labels": {1: "liver", 3: "spleen", 4: "kidney"},
         "split": {"validation": 0.34}}],
        "tasks": {"kidney": {"color": "#102030"}}}))
    assert cat.datasets[0].label_map == {"liver": (1,), "spleen": (3,), "kidney": (4,)}
    assert cat.tasks["kidney"].color == (16, 32, 48)
    check_files(cat)


def _one_dataset(tmp_path, synth_collection, **changes):
    root = synth_collection.parent / "ct-hospital-a"
    ds = {"name": "x", "modality": "CT", "root": str(root), "labels": {"liver": 1, "spleen": 3, "kidney": 4}}
    ds.update(changes)
    return {"datasets": [ds]}


@pytest.mark.parametrize("change, message", [
    ({"modality": "XRAY"}, "unknown modality 'XRAY'"),
    ({"labels": {"liver": 0}}, "must be a positive integer"),
    ({"root": "/nonexistent"}, "dataset.json not found"),
    ({"weight": -1}, "weight must be a positive number"),
    ({"colour": "red"}, "unknown keys"),
    ({"split": {"validation": ["nope"]}}, "names unknown cases"),
])
def test_bad_catalogs_name_the_problem(tmp_path, synth_collection, change, message):
    with pytest.raises(CatalogError, match=message):
        load_catalog(write_catalog(tmp_path, _one_dataset(tmp_path, synth_collection, **change)))


def test_catalog_level_errors(tmp_path, synth_collection):
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "none.yaml")
    data = _one_dataset(tmp_path, synth_collection)
    data["datasets"].append(dict(data["datasets"][0]))
    with pytest.raises(CatalogError, match="used twice"):
        load_catalog(write_catalog(tmp_path, data))
    with pytest.raises(CatalogError, match="newer"):
        load_catalog(write_catalog(tmp_path, {"format_version": 99, "datasets": []}))


def _copy_dataset(tmp_path, synth_collection):
    root = tmp_path / "copy"
    shutil.copytree(synth_collection.parent / "ct-hospital-a", root)
    return root


def _catalog_for(tmp_path, root, labels=None):
    return load_catalog(write_catalog(tmp_path, {"datasets": [{
        "name": "copy", "modality": "CT", "root": str(root),
        "labels": labels or {"liver": 1, "spleen": 3, "kidney": 4}}]}))


def _image_path(root, i=0, kind="image"):
    return (root / "imagesTr" / f"ct-hospital-a_00{i}_0000.nii.gz" if kind == "image"
            else root / "labelsTr" / f"ct-hospital-a_00{i}.nii.gz")


def test_check_files_refuses_missing_image(tmp_path, synth_collection):
    root = _copy_dataset(tmp_path, synth_collection)
    _image_path(root, 1).unlink()
    with pytest.raises(CatalogError, match=r"case 'ct-hospital-a_001': image file .* is missing"):
        check_files(_catalog_for(tmp_path, root))


@pytest.mark.parametrize("kind", ["image", "label"])
def test_check_files_refuses_truncated_files(tmp_path, synth_collection, kind):
    """A .nii.gz cut short (a failed copy) would be trained on with zeros where data is missing."""
    root = _copy_dataset(tmp_path, synth_collection)
    path = _image_path(root, 1, kind)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CatalogError, match=r"truncated or damaged"):
        check_files(_catalog_for(tmp_path, root))


def test_check_files_refuses_label_values_outside_the_map(tmp_path, synth_collection):
    root = _copy_dataset(tmp_path, synth_collection)
    with pytest.raises(CatalogError, match=r"holds values \[4\] that the catalog's label map"):
        check_files(_catalog_for(tmp_path, root, {"liver": 1, "spleen": 3}))


def test_check_files_refuses_label_on_another_grid(tmp_path, synth_collection):
    root = _copy_dataset(tmp_path, synth_collection)
    lab = sitk.ReadImage(str(_image_path(root, 2, "label")))
    lab.SetSpacing([s * 1.1 for s in lab.GetSpacing()])
    sitk.WriteImage(lab, str(_image_path(root, 2, "label")))
    with pytest.raises(CatalogError, match=r"ct-hospital-a_002.nii.gz is not on the grid of image"):
        check_files(_catalog_for(tmp_path, root))


@pytest.mark.parametrize("shape, message", [((20, 20), "a 2D image"), ((3, 8, 8, 8), "a 4D image")])
def test_check_files_refuses_non_3d_images(tmp_path, synth_collection, shape, message):
    root = _copy_dataset(tmp_path, synth_collection)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.float32), isVector=False), str(_image_path(root, 0)))
    with pytest.raises(CatalogError, match=message):
        check_files(_catalog_for(tmp_path, root))


@pytest.mark.parametrize("name", ["nan.nrrd", "nan.nii.gz"])  # ITK alone reads NIfTI NaNs as 0
def test_check_files_refuses_nans(tmp_path, synth_collection, name):
    root = synth_collection.parent / "ct-hospital-a"
    img = sitk.ReadImage(str(_image_path(root, 3)))
    arr = sitk.GetArrayFromImage(img)
    arr[5, 6, 7] = np.nan
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(tmp_path / name))
    cat = load_catalog(write_catalog(tmp_path, {"datasets": [{
        "name": "n", "modality": "CT", "labels": {"liver": 1, "spleen": 3, "kidney": 4},
        "cases": [{"id": "c0", "image": name, "label": str(_image_path(root, 3, "label"))},
                  {"id": "c1", "image": str(_image_path(root, 1)), "label": str(_image_path(root, 1, "label"))}]}]}))
    with pytest.raises(CatalogError, match=name.replace(".", r"\.") + r": contains NaN or infinite voxels"):
        check_files(cat)


def test_nifti_nan_is_restored_at_its_voxel(tmp_path):
    from UniversalSeg.data.image_io import read_sitk
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(6, 5, 4)  # (k, j, i)
    arr[5, 1, 3] = np.nan
    arr[0, 4, 0] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "x.nii.gz"))
    back = sitk.GetArrayFromImage(read_sitk(tmp_path / "x.nii.gz"))
    assert np.isnan(back[5, 1, 3]) and np.isinf(back[0, 4, 0])
    finite = np.isfinite(arr)
    assert (~np.isfinite(back)).sum() == 2 and np.array_equal(back[finite], arr[finite])


def test_train_command_stops_on_bad_data_before_training(tmp_path, synth_collection):
    from UniversalSeg.cli import main
    root = _copy_dataset(tmp_path, synth_collection)
    _image_path(root, 0).write_bytes(b"not an image")
    catalog = write_catalog(tmp_path, {"datasets": [{"name": "copy", "modality": "CT", "root": str(root),
                                                     "labels": {"liver": 1, "spleen": 3, "kidney": 4}}]})
    rc = main(["train", "--catalog", str(catalog), "--config", "small", "--out", str(tmp_path / "run"),
               "--no-progress"])
    assert rc == 2
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_synthetic_anatomy_is_on_the_right_side_of_the_patient(synth_collection):
    """Liver on the patient's right, spleen on the left, kidneys posterior (LPS: +x left,
    +y posterior), whatever each institution's grid orientation (hospital B is flipped)."""
    cat = load_catalog(synth_collection)
    for ds in cat.datasets:
        label = sitk.ReadImage(str(ds.splits["train"][0].label))
        arr = sitk.GetArrayFromImage(label).transpose(2, 1, 0)

        def centroid(value):
            ijk = np.argwhere(arr == value).mean(0)
            return np.array(label.TransformContinuousIndexToPhysicalPoint(ijk.tolist()))  # LPS mm

        names = {"liver": 1, "spleen": 3, "kidney": 4}
        present = {t: centroid(v) for t, v in names.items() if t in ds.tasks}
        if "liver" in present:
            assert present["liver"][0] < -10, (ds.name, present["liver"])
        if "spleen" in present:
            assert present["spleen"][0] > 10 and present["spleen"][1] > 0, (ds.name, present["spleen"])
        if "kidney" in present:
            assert present["kidney"][1] > 10, (ds.name, present["kidney"])


def test_synthetic_images_show_each_organ_at_its_contrast(tmp_path):
    """Inside each organ (one voxel in from its edge) a CT image shows the organ's own Hounsfield
    units; the blur is 0.6 voxel, not 0.6 voxel times the spacing in mm (that washed 4 mm kidneys
    into the air around them: mean -22 HU instead of 170). Around each organ lies what surrounds it
    in a patient (fat, bowel, the muscle wall): the shell two voxels out is clearly darker on CT,
    not one uniform "body" a few HU away (the old phantom's spleen was 8 HU above its surroundings)."""
    from UniversalSeg.data.phantom import CONTRAST, TISSUES, generate_collection
    generate_collection(tmp_path, cases=1, shape=40, seed=0)
    image = sitk.GetArrayFromImage(sitk.ReadImage(
        str(tmp_path / "ct-hospital-a/imagesTr/ct-hospital-a_000_0000.nii.gz")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ct-hospital-a/labelsTr/ct-hospital-a_000.nii.gz")))
    hu = dict(zip(TISSUES, CONTRAST["CT"]))
    organs = label > 0
    for name, value in (("liver", 1), ("spleen", 3), ("kidney", 4)):
        core = ndimage.binary_erosion(label == value)
        assert core.sum() >= 5, name
        assert abs(float(image[core].mean()) - hu[name]) < 15, (name, float(image[core].mean()), hu[name])
        shell = ndimage.binary_dilation(label == value, iterations=2) & ~ndimage.binary_dilation(organs)
        assert shell.sum() >= 20, name
        assert float(image[core].mean()) - float(image[shell].mean()) > 60, (name, float(image[shell].mean()))


def test_synthetic_kidneys_lie_in_perirenal_fat_when_retroperitoneal(tmp_path):
    """``kidneys="retroperitoneal"``: inside the muscle wall, wrapped in perirenal fat, as in a
    patient. The default ("posterior", the phantom every committed study ran on) puts about 44 % of
    each kidney in the muscle wall and 25 % in the subcutaneous fat, so on the held-out MR-T1 scanner
    (kidney 200, muscle 210) most of a kidney has no edge. Geometry (the phantom's own ellipsoids,
    1.5 mm grid): retroperitoneal >= 90 % of each kidney inside the abdominal cavity and none outside
    the wall; posterior <= 35 % and >= 20 %. Image (held-out MR-T1, 64^3): every voxel one out from a
    retroperitoneal kidney that is no organ is >= 1.6x brighter than the kidney (fat); posterior 68-71 %."""
    from UniversalSeg.data.phantom import _anatomy, _ellipsoid, generate_collection
    grid = np.stack(np.meshgrid(*[np.arange(-95.0, 95.0, 1.5)] * 3, indexing="ij"), -1)

    def inside(center, radii):
        return _ellipsoid(grid, center, radii)

    for c in range(3):
        for kidneys in ("retroperitoneal", "posterior"):
            anatomy = _anatomy(np.random.default_rng([0, 5, c]), kidneys)
            cavity = inside(*anatomy["visceral"])  # inside the muscle wall
            wall_outside = ~inside(*anatomy["muscle"])  # subcutaneous fat and beyond
            for side in ("left", "right"):
                kidney = inside(*anatomy[f"kidney-{side}"])
                share = (kidney & cavity).sum() / kidney.sum(), (kidney & wall_outside).sum() / kidney.sum()
                if kidneys == "retroperitoneal":
                    assert share[0] >= 0.9 and share[1] == 0, (c, side, share)
                else:
                    assert share[0] <= 0.35 and share[1] >= 0.2, (c, side, share)
    for kidneys, least in (("retroperitoneal", 0.95), ("posterior", 0.0)):
        generate_collection(tmp_path / kidneys, cases=2, shape=64, seed=0, kidneys=kidneys)
        for c in range(2):
            stem = f"{kidneys}/mr-t1-hospital-f/%s/mr-t1-hospital-f_00{c}%s.nii.gz"
            image = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / (stem % ("imagesTr", "_0000")))))
            label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / (stem % ("labelsTr", "")))))
            kidney = label == 4
            shell = ndimage.binary_dilation(kidney) & (label == 0)
            fat = (image[shell] > 1.6 * float(np.median(image[ndimage.binary_erosion(kidney)]))).mean()
            assert shell.sum() > 100 and (fat >= 0.95 if least else fat < 0.8), (kidneys, c, fat)
    with pytest.raises(ValueError, match="kidneys: one of"):
        generate_collection(tmp_path / "x", cases=1, shape=16, kidneys="pelvic")


def test_synthetic_organs_have_real_proportions(tmp_path):
    """Organ volumes relative to the abdomen as in a real one (liver ~1.5 l, spleen ~0.2 l, each
    kidney ~0.15 l in a ~10 l abdomen: liver 10-20 %, spleen 1-3 %, both kidneys 1.5-4 % of the body),
    so that at the demo's 4.5 mm a kidney is hundreds of voxels, not a one-voxel boundary."""
    from UniversalSeg.data.phantom import generate_collection
    generate_collection(tmp_path, cases=3, shape=40, seed=0)
    for c in range(3):
        folder = tmp_path / "ct-hospital-a"
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"imagesTr/ct-hospital-a_00{c}_0000.nii.gz")))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"labelsTr/ct-hospital-a_00{c}.nii.gz")))
        body = float((image > -500).sum())
        share = {name: (label == value).sum() / body for name, value in (("liver", 1), ("spleen", 3), ("kidney", 4))}
        assert 0.10 <= share["liver"] <= 0.20 and 0.01 <= share["spleen"] <= 0.03, share
        assert 0.015 <= share["kidney"] <= 0.04, share
        assert (label == 4).sum() >= 300, "both kidneys at 4.5 mm"
        parts = ndimage.label(label == 4)[1]
        assert parts == 2, "two separate kidneys"


def test_pet_normalization_keeps_a_hot_lesion_above_the_liver(tmp_path):
    """PET is read for its hot lesions: after the modality's normalization a phantom tumour (SUV
    ~2x the liver's after the scanner's blur) must stay clearly brighter than the liver. The
    2nd-98th percentile clip of MR (and of the Hermes reference for PET) flattens it to the liver's
    value on an abdominal field of view (checked below), the PET policy's 99.9th does not."""
    import torch

    from UniversalSeg.data.modalities import KNOWN_MODALITIES, PERCENTILE
    from UniversalSeg.data.phantom import generate_collection
    from UniversalSeg.data.transforms import normalize_intensity
    generate_collection(tmp_path, cases=2, shape=40, seed=1000)
    for c in range(2):
        folder = tmp_path / "pet-hospital-e"
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"imagesTr/pet-hospital-e_00{c}_0000.nii.gz")))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"labelsTr/pet-hospital-e_00{c}.nii.gz")))
        assert image[label == 2].mean() > 1.8 * image[label == 1].mean()  # the lesion as acquired
        ratio = {}
        for name, policy in (("pet", KNOWN_MODALITIES["PET"]), ("mr", PERCENTILE)):
            norm = normalize_intensity(torch.from_numpy(image)[None].float(), policy)[0].numpy()
            norm = norm - norm.min()  # ratios above the background
            ratio[name] = norm[label == 2].mean() / norm[label == 1].mean()
        assert ratio["pet"] > 1.6 and ratio["mr"] < 1.3, ratio


def test_a_catalog_can_declare_the_ct_window(tmp_path, synth_collection):
    """demo.declare_ct_window (the demo study's ct-window arms): the catalog's CT policy replaces
    the default [-991, 500] HU window; the other modalities keep theirs."""
    from UniversalSeg.data.modalities import KNOWN_MODALITIES, IntensityPolicy
    from UniversalSeg.demo import declare_ct_window
    root = tmp_path / "collection"
    shutil.copytree(synth_collection.parent, root)
    declare_ct_window(root / "catalog.yaml", (-160, 240))
    catalog = load_catalog(root / "catalog.yaml")
    assert catalog.modalities["CT"] == IntensityPolicy("window", -160.0, 240.0)
    assert catalog.modalities["MR-T1"] == KNOWN_MODALITIES["MR-T1"]
    assert [d.name for d in catalog.datasets] == [d.name for d in load_catalog(synth_collection).datasets]
