"""The dataset catalog: which datasets, where their images are, what they annotate.

A catalog (YAML or JSON) lists datasets, each with one modality and a map from its label values
to GLOBAL task names: two datasets may share a task, a dataset may label only some tasks (partial
labels), and a task may be the union of several label values (``liver: [1, 2]`` when the tumour
label 2 lies inside the liver)::

    format_version: 1
    tasks:                          # optional metadata; known names get defaults
      liver-tumor: {display_name: Liver tumor, color: "#ff4040"}
    modalities:                     # optional: new modalities with their intensity policy
      MR-DIXON: {kind: percentile, low: 1, high: 99}
    datasets:
      - name: hospital-a
        modality: CT
        root: hospital-a            # MSD / nnU-Net raw layout: dataset.json, imagesTr/, labelsTr/
        labels: {liver: [1, 2], liver-tumor: 2}   # or {1: liver, 2: liver-tumor}
        weight: 1.0                 # sampling weight
        split: {seed: 0, validation: 0.2, test: 0.0}   # fractions, or {train: [ids], validation: [ids]}
      - name: hospital-b
        modality: MR-T1
        cases: [{id: c1, image: b/c1.nii.gz, label: b/c1-seg.nii.gz}]   # explicit list
        labels: {1: spleen}
      - name: synthetic-t2
        modality: MR-T2
        synthesize: {tissues: {0: air, 1: csf, 2: gray-matter, 3: white-matter}}
        cases: [{id: head1, label: heads/head1.nii.gz}]   # label maps only: images are drawn
        labels: {brain: [1, 2, 3], gray-matter: 2}       # from them at every step (training only)
      - name: label-maps-t1         # SynthSeg-style generation (data.label_synthesis): real label
        modality: MR-T1             # maps, one random Gaussian per label, deformation, flips
        synthesize: {generator: label-maps, tissues: {0: background, 2: white-matter, 3: gray-matter},
                     mirror: {2: 41, 3: 42}}   # left/right twins, swapped on a flip
        cases: [{id: s01, label: maps/s01.nii.gz}]
        labels: {white-matter-left: 2, white-matter-right: 41}

Paths are relative to the catalog file. ``load_catalog`` validates the structure (errors name the
key); ``check_files`` opens every file and refuses missing files, non-3D images, label grids that
differ from the image, label values outside the map and NaNs, naming the file, before training.
"""
from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from ..structured_file import read_structured
from .modalities import KNOWN_MODALITIES, IntensityPolicy
from .terminology import TaskInfo, task_info

__all__ = ["FORMAT_VERSION", "GENERATORS", "SPLITS", "Case", "Catalog", "CatalogError", "DatasetSpec",
           "catalog_from_dict", "check_files", "load_catalog"]

FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")


class CatalogError(InputError):
    """A catalog that cannot be used; the message names the dataset, key or file."""


@dataclass(frozen=True)
class Case:
    id: str
    image: Path
    label: Optional[Path]


@dataclass
class DatasetSpec:
    name: str
    modality: str
    label_map: dict[str, tuple[int, ...]]  # global task -> label values (ordered like catalog.tasks)
    weight: float
    splits: dict[str, list[Case]]
    synthesize: Optional[dict[int, str]] = None  # label value -> tissue: images drawn from labels
    # synthesize: {generator: label-maps, ...}: data.label_synthesis's settings (to_dict form)
    generator: Optional[dict] = None

    @property
    def tasks(self) -> list[str]:
        return list(self.label_map)


@dataclass
class Catalog:
    tasks: dict[str, TaskInfo]
    modalities: dict[str, IntensityPolicy]
    datasets: list[DatasetSpec]
    path: Optional[Path] = None

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    @property
    def modality_names(self) -> list[str]:
        used = {d.modality for d in self.datasets}
        return [m for m in self.modalities if m in used]

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.datasets]

    def dataset(self, name: str) -> DatasetSpec:
        for d in self.datasets:
            if d.name == name:
                return d
        raise CatalogError(f"no dataset {name!r} in the catalog; datasets: {self.domain_names}")


# ---------------------------------------------------------------------- loading
def load_catalog(path: str | Path) -> Catalog:
    path = Path(path)
    data = read_structured(path, "catalog", CatalogError)
    try:
        return catalog_from_dict(data, path.parent, path)
    except CatalogError as exc:
        raise CatalogError(f"{path}: {exc}") from None


def catalog_from_dict(data, base: Path, path: Optional[Path] = None) -> Catalog:
    if not isinstance(data, dict):
        raise CatalogError("a catalog must be a mapping with a 'datasets' list")
    unknown = set(data) - {"format_version", "tasks", "modalities", "datasets"}
    if unknown:
        raise CatalogError(f"unknown top-level keys {sorted(unknown)}; allowed: format_version, "
                           "tasks, modalities, datasets")
    version = data.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CatalogError(f"format_version {version!r} is newer than this UniversalSeg reads "
                           f"({FORMAT_VERSION}); upgrade UniversalSeg")
    modalities = dict(KNOWN_MODALITIES)
    for name, spec in (data.get("modalities") or {}).items():
        try:
            modalities[str(name)] = IntensityPolicy.from_dict(spec)
        except (KeyError, TypeError, ValueError) as exc:
            raise CatalogError(f"modalities.{name}: needs {{kind: window|percentile, low, high}} ({exc})")
    raw_datasets = data.get("datasets")
    if not isinstance(raw_datasets, list) or not raw_datasets:
        raise CatalogError("'datasets' must be a non-empty list")
    datasets, seen = [], set()
    for i, raw in enumerate(raw_datasets):
        ds = _dataset(raw, i, base, modalities)
        if ds.name in seen:
            raise CatalogError(f"dataset name {ds.name!r} is used twice")
        seen.add(ds.name)
        datasets.append(ds)
    # global task order: first appearance across datasets (stable, readable)
    order: list[str] = []
    for ds in datasets:
        order += [t for t in ds.label_map if t not in order]
    overrides = data.get("tasks") or {}
    extra = set(overrides) - set(order)
    if extra:
        raise CatalogError(f"tasks {sorted(extra)} have metadata but no dataset labels them")
    try:
        tasks = {t: task_info(t, overrides.get(t), i) for i, t in enumerate(order)}
    except ValueError as exc:
        raise CatalogError(f"tasks: {exc}") from None
    return Catalog(tasks, modalities, datasets, path)


def _dataset(raw, i: int, base: Path, modalities) -> DatasetSpec:
    where = f"datasets[{i}]"
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{where}: needs a 'name'")
    where = f"dataset {name!r}"
    allowed = {"name", "modality", "root", "cases", "labels", "weight", "split", "synthesize"}
    unknown = set(raw) - allowed
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    modality = raw.get("modality")
    if modality not in modalities:
        raise CatalogError(f"{where}: unknown modality {modality!r}; known: {sorted(modalities)} "
                           "(declare new ones under 'modalities')")
    weight = raw.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf:
        raise CatalogError(f"{where}: weight must be a positive number, got {weight!r}")
    generator = None
    if isinstance(raw.get("synthesize"), dict) and "generator" in raw["synthesize"]:
        generator = _generator(raw["synthesize"], modality, where)
        synthesize = None
    else:
        synthesize = _synthesis(raw["synthesize"], modality, where) if "synthesize" in raw else None
    drawn = synthesize is not None or generator is not None
    msd = None
    if "root" in raw:
        root = (base / raw["root"]).resolve()
        cases, msd = _msd_cases(root, where)
    elif "cases" in raw:
        cases = _listed_cases(raw["cases"], base, where, labels_only=drawn)
    else:
        raise CatalogError(f"{where}: give 'root' (MSD / nnU-Net layout) or a 'cases' list")
    labels = raw.get("labels")
    if labels is None and msd is not None:
        labels = {str(k).lower(): v for k, v in _msd_labels(msd).items()}
    if not labels:
        raise CatalogError(f"{where}: 'labels' must map label values to task names")
    label_map = _label_map(labels, where)
    split = raw.get("split", {})
    if drawn:  # images drawn at random cannot be a fixed validation set
        if not isinstance(split, dict) or any(split.get(k) for k in ("validation", "test")):
            raise CatalogError(f"{where}: a 'synthesize' dataset trains only; validate and test on a "
                               "dataset with images (leave out its 'split')")
        split = {"validation": 0.0}
    return DatasetSpec(name, modality, label_map, float(weight), _split(cases, split, name, where),
                       synthesize, generator)


GENERATORS = ("label-maps",)


def _generator(raw: dict, modality: str, where: str) -> dict:
    """``synthesize: {generator: label-maps, tissues: ..., mirror: ..., ...}`` checked (one line
    naming the key) and returned in ``GeneratorSettings.to_dict`` form."""
    from .label_synthesis import PRIORS, GeneratorSettings
    if raw.get("generator") not in GENERATORS:
        raise CatalogError(f"{where}: synthesize.generator must be one of {list(GENERATORS)}, "
                           f"got {raw.get('generator')!r}")
    if modality not in PRIORS:
        raise CatalogError(f"{where}: the label-maps generator has intensity priors for {sorted(PRIORS)}, "
                           f"not {modality!r}")
    try:
        return GeneratorSettings.from_dict(raw, f"{where}: synthesize").to_dict()
    except InputError as exc:
        raise CatalogError(str(exc)) from None


def _synthesis(raw, modality: str, where: str) -> dict[int, str]:
    from .synthesis import check_tissues
    if not isinstance(raw, dict) or set(raw) != {"tissues"} or not isinstance(raw["tissues"], dict) \
            or not raw["tissues"]:
        raise CatalogError(f"{where}: 'synthesize' must be {{tissues: {{label value: tissue name}}}}")
    tissues = {}
    for k, v in raw["tissues"].items():
        if isinstance(k, bool) or not str(k).isdigit() or not isinstance(v, str):
            raise CatalogError(f"{where}: synthesize.tissues maps label values (0, 1, ...) to tissue "
                               f"names, got {k!r}: {v!r}")
        tissues[int(k)] = v
    try:
        check_tissues(tissues, modality, f"{where}: synthesize")
    except InputError as exc:
        raise CatalogError(str(exc)) from None
    return tissues


def _listed_cases(raw_cases, base: Path, where: str, labels_only: bool = False) -> list[Case]:
    if not isinstance(raw_cases, list) or not raw_cases:
        raise CatalogError(f"{where}: 'cases' must be a non-empty list of {{id, image, label}}")
    cases = []
    for j, c in enumerate(raw_cases):
        if labels_only:  # synthesize: the label map stands in for the image
            if not isinstance(c, dict) or not isinstance(c.get("label"), str):
                raise CatalogError(f"{where}: cases[{j}] needs a 'label' (a 'synthesize' dataset "
                                   "draws its images from label maps)")
            c = {**c, "image": c["label"]}
        if not isinstance(c, dict) or "image" not in c:
            raise CatalogError(f"{where}: cases[{j}] needs at least 'image'")
        image = base / c["image"]
        cases.append(Case(str(c.get("id", Path(c["image"]).name.split(".")[0])), image,
                          base / c["label"] if c.get("label") else None))
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise CatalogError(f"{where}: case ids must be unique")
    return cases


def _msd_cases(root: Path, where: str):
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise CatalogError(f"{where}: {meta_path} not found (MSD / nnU-Net raw layout expected: "
                           "dataset.json, imagesTr/, labelsTr/)")
    meta = read_structured(meta_path, f"{where}:", CatalogError)
    if not isinstance(meta, dict):
        raise CatalogError(f"{where}: {meta_path} is not a dataset description (a JSON object expected)")
    cases = []
    if meta.get("training"):  # MSD: explicit pairs
        for i, entry in enumerate(meta["training"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) \
                    or not isinstance(entry.get("label"), str):
                raise CatalogError(f"{where}: {meta_path}: training[{i}] needs \"image\" and \"label\" file names")
            image = root / entry["image"]
            cid = image.name.split(".")[0]
            cases.append(Case(cid, image, root / entry["label"]))
    else:  # nnU-Net v2: imagesTr/{case}_0000{ending}, labelsTr/{case}{ending}
        ending = meta.get("file_ending", ".nii.gz")
        channels = meta.get("channel_names") or meta.get("modality") or {"0": ""}
        if len(channels) != 1:
            raise CatalogError(f"{where}: {len(channels)} input channels in dataset.json; "
                               "UniversalSeg takes single-channel images")
        for label in sorted((root / "labelsTr").glob(f"*{ending}")):
            cid = label.name[: -len(ending)]
            cases.append(Case(cid, root / "imagesTr" / f"{cid}_0000{ending}", label))
        # as nnU-Net's dataset check: every training image has its label (none silently skipped)
        labelled = {c.id for c in cases}
        unlabelled = sorted(i.name for i in (root / "imagesTr").glob(f"*_0000{ending}")
                            if i.name[: -len(ending) - 5] not in labelled)
        if unlabelled:
            raise CatalogError(f"{where}: {len(unlabelled)} image(s) in {root / 'imagesTr'} have no label in "
                               f"labelsTr/ (e.g. {unlabelled[0]}); add the labels or move the images out")
    if not cases:
        raise CatalogError(f"{where}: no training cases found under {root}")
    return cases, meta


def _msd_labels(meta: dict) -> dict:
    labels = meta.get("labels", {})
    out = {}
    for k, v in labels.items():
        if str(k).lstrip("-").isdigit():  # MSD: {"1": "liver"}
            if int(k) != 0:
                out[str(v)] = int(k)
        elif str(k).lower() != "background":  # nnU-Net v2: {"liver": 1}
            out[str(k)] = v
    return out


def _label_map(labels: dict, where: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(labels, dict):
        raise CatalogError(f"{where}: 'labels' must be a mapping")
    value_first = all(isinstance(k, int) or str(k).isdigit() for k in labels)
    out: dict[str, list[int]] = {}
    for k, v in labels.items():
        if value_first:
            task, values = str(v), [int(k)]
        else:
            task, values = str(k), v if isinstance(v, list) else [v]
        for value in values:
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CatalogError(f"{where}: label value {value!r} for task {task!r} must be a "
                                   "positive integer (0 is background)")
        out.setdefault(task, []).extend(values)
    return {t: tuple(sorted(set(v))) for t, v in out.items()}


def _split(cases: list[Case], spec, name: str, where: str) -> dict[str, list[Case]]:
    if not isinstance(spec, dict):
        raise CatalogError(f"{where}: 'split' must be a mapping")
    by_id = {c.id: c for c in cases}
    if any(isinstance(spec.get(k), list) for k in SPLITS):  # explicit case lists
        splits, used = {}, set()
        for key in SPLITS:
            ids = spec.get(key, [])
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise CatalogError(f"{where}: split.{key} names unknown cases {missing[:5]}")
            if used & set(ids):
                raise CatalogError(f"{where}: a case is in two splits: {sorted(used & set(ids))[:5]}")
            used |= set(ids)
            splits[key] = [by_id[i] for i in ids]
        if "train" not in spec:
            splits["train"] = [c for c in cases if c.id not in used]
        return splits
    seed = spec.get("seed", 0)
    fractions = {k: float(spec.get(k, d)) for k, d in (("validation", 0.2), ("test", 0.0))}
    if any(not 0 <= f < 1 for f in fractions.values()) or sum(fractions.values()) >= 1:
        raise CatalogError(f"{where}: split fractions must be in [0, 1) and leave training cases")
    order = sorted(by_id)
    random.Random(zlib.crc32(f"{seed}:{name}".encode())).shuffle(order)
    n_val = round(fractions["validation"] * len(order)) if fractions["validation"] else 0
    if fractions["validation"] and n_val == 0 and len(order) > 1:
        n_val = 1
    n_test = round(fractions["test"] * len(order))
    val, test, train = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
    if not train:
        raise CatalogError(f"{where}: the split leaves no training case")
    return {"train": [by_id[i] for i in train], "validation": [by_id[i] for i in val],
            "test": [by_id[i] for i in test]}


# ---------------------------------------------------------------------- deep checks
def check_files(catalog: Catalog, splits=SPLITS, progress: bool = False) -> None:
    """Open every image and label; raise ``CatalogError`` naming the first bad file."""
    import SimpleITK as sitk

    from .image_io import ImageError, check_image, read_sitk

    work = [(ds, c) for ds in catalog.datasets for s in splits for c in ds.splits.get(s, [])]
    if progress:
        from tqdm import tqdm
        work = tqdm(work, desc="checking files", unit="case")
    for ds, case in work:
        for path, what in ((case.image, "image"), (case.label, "label")):
            if path is not None and not path.exists():
                raise CatalogError(f"dataset {ds.name!r}, case {case.id!r}: {what} file {path} is missing")
        try:
            image = read_sitk(case.image)
            check_image(image, str(case.image))
            if case.label is None:
                continue
            label = read_sitk(case.label)
            check_image(label, str(case.label), label=True)
        except ImageError as exc:
            raise CatalogError(f"dataset {ds.name!r}: {exc}") from None
        differs = [f"{what} {_round(get(label))} vs {_round(get(image))}" for what, get, same in (
            ("size", sitk.Image.GetSize, lambda a, b: a == b),
            ("spacing", sitk.Image.GetSpacing, lambda a, b: np.allclose(a, b, rtol=1e-4)),
            ("origin", sitk.Image.GetOrigin, lambda a, b: np.allclose(a, b, atol=1e-3)),
            ("direction", sitk.Image.GetDirection, lambda a, b: np.allclose(a, b, atol=1e-4)))
            if not same(get(label), get(image))]
        if differs:
            raise CatalogError(
                f"dataset {ds.name!r}: label {case.label} is not on the grid of image {case.image} "
                f"({'; '.join(differs)}); resample the label onto the image grid")
        values = set(np.unique(sitk.GetArrayViewFromImage(label)).tolist()) - {0}
        allowed = {v for vs in ds.label_map.values() for v in vs}
        if values - allowed:
            raise CatalogError(
                f"dataset {ds.name!r}: label {case.label} holds values {sorted(values - allowed)} "
                f"that the catalog's label map {dict(ds.label_map)} does not assign to a task; "
                "add them to 'labels' (or remove them from the file)")


def _round(values) -> tuple:
    return tuple(round(v, 4) if isinstance(v, float) else v for v in values)
