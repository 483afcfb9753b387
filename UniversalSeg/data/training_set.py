"""The user's own training set: corrected cases saved for fine-tuning (the correction loop, #13).

A training-set folder holds one nnU-Net v2-style raw dataset per (modality, set of annotated
structures) and one ``catalog.yaml`` over them::

    MyCases/catalog.yaml
    MyCases/mr-t1_kidney_liver/dataset.json, imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz
    MyCases/ct_liver_liver-tumor/...

Why one dataset per set of structures: a case where only the liver was corrected says nothing
about its spleen, and a dataset's label map claims every structure it names in every case
(partial labels are per dataset). Overlapping structures (a tumour inside the liver) are stored
as nnU-Net's regions: each structure has its own value, each overlap gets a value of its own, and
the catalog maps a structure to every value that contains it (``liver: [1, 3]``,
``liver-tumor: [2, 3]``), so no voxel of any structure is lost.

Nothing is overwritten without ``overwrite=True``: an existing case id is refused (the panel
asks), and files are written to temporary names and moved into place only when all are written.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..file_modes import atomic_write

__all__ = ["CATALOG", "AddedCase", "TrainingSetError", "add_case", "case_ids", "dataset_name", "region_labels",
           "structure_counts", "task_name"]

CATALOG = "catalog.yaml"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class TrainingSetError(InputError):
    """A case that cannot be added as asked (taken id, empty or misaligned masks)."""


@dataclass(frozen=True)
class AddedCase:
    case_id: str
    dataset: str
    structures: tuple[str, ...]
    counts: dict  # structure -> cases in the whole training set


def task_name(label: str) -> str:
    """A segment name -> a task name: lower case, words joined by '-' ("Renal cortex" -> renal-cortex)."""
    name = re.sub(r"[^a-z0-9]+", "-", label.strip().lower()).strip("-")
    if not name:
        raise TrainingSetError(f"segment name {label!r} gives no usable structure name; rename the segment")
    return name


def dataset_name(modality: str, structures) -> str:
    return f"{modality.lower()}_{'_'.join(sorted(structures))}"


def region_labels(masks: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, list[int]], dict[str, int]]:
    """Binary masks per structure -> (label array, structure -> values, region name -> value).
    Values 1..n are the structures (sorted by name) where they do not overlap; every combination
    that occurs gets the next value ("liver+liver-tumor")."""
    names = sorted(masks)
    if len(names) > 32:
        raise TrainingSetError(f"{len(names)} structures in one case; save at most 32 at a time")
    shape = next(iter(masks.values())).shape
    code = np.zeros(shape, np.uint32)  # bit i: inside structure i (a CT of 512x512x300: 300 MB, not 600)
    for bit, name in enumerate(names):
        if masks[name].shape != shape:
            raise TrainingSetError(f"segment {name!r} is not on the volume's grid ({masks[name].shape} vs {shape})")
        code[np.asarray(masks[name], bool)] |= np.uint32(1 << bit)
    values = {name: 1 + i for i, name in enumerate(names)}
    label = np.zeros(shape, np.uint16)
    regions = {}
    for c in sorted(int(v) for v in np.unique(code) if v):
        members = [n for bit, n in enumerate(names) if c >> bit & 1]
        if len(members) == 1:
            label[code == c] = values[members[0]]
        else:
            key = "+".join(members)
            regions[key] = len(names) + 1 + len(regions)
            label[code == c] = regions[key]
    task_values = {n: [values[n]] + [v for k, v in regions.items() if n in k.split("+")] for n in names}
    return label, task_values, {**values, **regions}


def _load_catalog_yaml(folder: Path) -> dict:
    import yaml
    path = folder / CATALOG
    if not path.exists():
        return {"format_version": 1, "datasets": []}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data.get("datasets"), list):
        raise TrainingSetError(f"{path} is not a training-set catalog (no 'datasets' list)")
    return data


def case_ids(folder: Path) -> set[str]:
    return {p.name[: -len(".nii.gz")] for p in Path(folder).glob("*/labelsTr/*.nii.gz")}


def add_case(folder: str | Path, image: sitk.Image, masks: Mapping[str, np.ndarray], modality: str,
             case_id: str, overwrite: bool = False) -> AddedCase:
    """Save ``image`` and its structures' binary ``masks`` (arrays in SimpleITK's [z, y, x] order
    on the image's grid; names are task names) as a case of the training set in ``folder``."""
    folder = Path(folder)
    if not _SAFE_ID.fullmatch(case_id or ""):
        raise TrainingSetError(f"case name {case_id!r}: use letters, digits, '.', '_' or '-'")
    masks = {task_name(k): np.asarray(v).astype(bool) for k, v in masks.items()}
    empty = [k for k, v in masks.items() if not v.any()]
    if not masks or empty:
        raise TrainingSetError(f"segments {empty} are empty: correct them or leave them out" if empty
                               else "no segment to save: select the corrected segments")
    expected = tuple(reversed(image.GetSize()))
    wrong = [k for k, v in masks.items() if v.shape != expected]
    if wrong:
        raise TrainingSetError(f"segments {wrong} are not on the volume's grid {expected}")
    existing = {p.parent.parent.name: p for p in folder.glob(f"*/labelsTr/{case_id}.nii.gz")}
    if existing and not overwrite:
        raise TrainingSetError(f"case {case_id!r} is already in the training set ({sorted(existing)[0]}); "
                               "choose another name or confirm replacing it")
    name = dataset_name(modality, masks)
    label, task_values, value_names = region_labels(masks)
    root = folder / name
    meta_path = root / "dataset.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {
        "name": name, "channel_names": {"0": modality}, "labels": {"background": 0}, "numTraining": 0,
        "file_ending": ".nii.gz", "description": "UniversalSeg: corrected cases for fine-tuning"}
    # one value per structure or region across the dataset: map this case's values to the dataset's
    remap = np.zeros(max(value_names.values()) + 1, np.uint16)
    for region, value in value_names.items():
        if region not in meta["labels"]:
            meta["labels"][region] = max(meta["labels"].values()) + 1
        remap[value] = meta["labels"][region]
    label = remap[label]
    out_label = sitk.GetImageFromArray(label)
    out_label.CopyInformation(image)
    catalog = _load_catalog_yaml(folder)
    staging = Path(tempfile.mkdtemp(prefix=".adding-", dir=folder if folder.exists() else None))
    try:
        sitk.WriteImage(image, str(staging / "image.nii.gz"), useCompression=True)
        sitk.WriteImage(out_label, str(staging / "label.nii.gz"), useCompression=True)
        for old_dataset, old_label in existing.items():  # replacing (confirmed): drop the old copy
            old_label.unlink()
            (old_label.parent.parent / "imagesTr" / f"{case_id}_0000.nii.gz").unlink(missing_ok=True)
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        os.replace(staging / "image.nii.gz", root / "imagesTr" / f"{case_id}_0000.nii.gz")
        os.replace(staging / "label.nii.gz", root / "labelsTr" / f"{case_id}.nii.gz")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    meta["numTraining"] = len(list((root / "labelsTr").glob("*.nii.gz")))
    meta_path.write_text(json.dumps(meta, indent=2))
    for old_dataset in set(existing) - {name}:  # a replaced case that moved to another set of structures
        old_root = folder / old_dataset
        left = len(list((old_root / "labelsTr").glob("*.nii.gz")))
        if not left:  # its last case: the empty dataset goes (the catalog drops it below)
            shutil.rmtree(old_root)
        elif (old_root / "dataset.json").exists():
            data = json.loads((old_root / "dataset.json").read_text())
            data["numTraining"] = left
            (old_root / "dataset.json").write_text(json.dumps(data, indent=2))
    _write_catalog(folder, catalog, name, modality, meta["labels"])
    return AddedCase(case_id, name, tuple(sorted(masks)), structure_counts(folder))


def _write_catalog(folder: Path, catalog: dict, name: str, modality: str, values: dict) -> None:
    import yaml
    structures = sorted(k for k in values if k != "background" and "+" not in k)
    labels = {s: sorted(v for k, v in values.items() if k != "background" and s in k.split("+"))
              for s in structures}
    entry = {"name": name, "modality": modality, "root": name, "labels": labels, "split": {"validation": 0.0}}
    catalog["datasets"] = [d for d in catalog["datasets"] if d.get("name") != name] + [entry]
    catalog["datasets"] = [d for d in catalog["datasets"] if (folder / d["root"] / "labelsTr").is_dir()
                           and any((folder / d["root"] / "labelsTr").glob("*.nii.gz"))]
    text = ("# UniversalSeg training set: corrected cases, written by 'Add to my training set'.\n"
            + yaml.safe_dump(catalog, sort_keys=False))
    atomic_write(folder / CATALOG, lambda tmp: tmp.write_text(text))


def structure_counts(folder: str | Path) -> dict[str, int]:
    """Cases per structure in the training set (what the panel shows)."""
    counts: dict[str, int] = {}
    for meta_path in sorted(Path(folder).glob("*/dataset.json")):
        meta = json.loads(meta_path.read_text())
        n = len(list((meta_path.parent / "labelsTr").glob("*.nii.gz")))
        for key in meta["labels"]:
            if key != "background" and "+" not in key:
                counts[key] = counts.get(key, 0) + n
    return counts
