"""Training and validation datasets over a catalog, with caching and reproducible augmentation.

- ``case_records``: one plain dict per case of a split: paths, modality, the dataset's label
  values per task, and the GLOBAL ids (task ids, modality id, domain id) the network needs.
- ``PreprocessedCases``: MONAI ``CacheDataset`` over the deterministic preprocessing, so an epoch
  never re-reads or re-resamples a NIfTI file.
- ``AugmentedPatches``: indexed by ``(case_index, seed)`` items from ``DatasetWeightedSampler``;
  all randomness of an item comes from its seed, so batches are reproducible across restarts and
  any number of loader workers.
- ``collate_patches``: stacks images, pads each sample's task list to the batch's longest with
  -1 and its targets with zeros (padding slots are masked in the network and in the loss).
"""
from __future__ import annotations

from typing import Sequence

import torch
from monai.data import CacheDataset
from torch.utils.data import Dataset

from .catalog import Catalog
from .transforms import AugmentationConfig, augmentation, preprocessing

__all__ = ["AugmentedPatches", "PreprocessedCases", "case_records", "collate_patches"]


def case_records(catalog: Catalog, split: str, tasks: Sequence[str], modalities: Sequence[str],
                 domains: Sequence[str]) -> list[dict]:
    records = []
    for ds in catalog.datasets:
        for case in ds.splits.get(split, []):
            records.append({
                "image": str(case.image), "label": str(case.label) if case.label else None,
                "case_id": case.id, "dataset": ds.name, "modality": ds.modality,
                "task_names": list(ds.label_map),
                "task_values": [list(v) for v in ds.label_map.values()],
                "task_ids": [list(tasks).index(t) for t in ds.label_map],
                "modality_id": list(modalities).index(ds.modality),
                "domain_id": list(domains).index(ds.name) if ds.name in domains else -1,
                "synthesis": dict(ds.synthesize) if ds.synthesize else None,
                "generator": ds.generator,  # label-maps generator (data.label_synthesis) or None
            })
    return records


class PreprocessedCases(CacheDataset):
    """Deterministic preprocessing, cached in memory (``cache_rate`` of the cases)."""

    def __init__(self, records: list[dict], spacing, policies, cache_rate: float = 1.0,
                 num_workers: int = 0, progress: bool = False):
        super().__init__(records, preprocessing(spacing, policies), cache_rate=cache_rate,
                         num_workers=num_workers or None, progress=progress, copy_cache=False)


class AugmentedPatches(Dataset):
    def __init__(self, cases: PreprocessedCases, patch: Sequence[int], aug: AugmentationConfig,
                 policies=None, spacing=None):
        self.cases = cases
        max_value = max(max(v) for rec in cases.data for vals in [rec["task_values"]] for v in vals)
        synthesized = any(rec.get("synthesis") for rec in cases.data)
        others = [rec for rec in cases.data if not rec.get("generator")]
        self.augment = augmentation(patch, aug, num_classes=max_value + 1,
                                    synthesis=(policies, spacing) if synthesized else None) if others else None
        if len(others) < len(cases.data):  # label-maps cases: crop, deformation, image in one transform
            from .transforms import ByGenerator, GenerateFromLabelMapd
            self.augment = ByGenerator(self.augment, GenerateFromLabelMapd(patch, policies, spacing))

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, key):
        index, seed = key
        item = dict(self.cases[index])  # cached deterministic result; transforms below copy
        self.augment.set_random_state(seed=int(seed))
        out = self.augment(item)
        if isinstance(out, list):  # croppers return a list of samples
            out = out[0]
        return {"image": out["image"].as_tensor().float(), "target": out["target"].as_tensor().to(torch.uint8),
                "task_ids": torch.tensor(out["task_ids"]), "modality_id": out["modality_id"],
                "domain_id": out["domain_id"]}


def collate_patches(items: list[dict]) -> dict:
    width = max(len(it["task_ids"]) for it in items)
    b = len(items)
    spatial = items[0]["image"].shape[1:]
    task_ids = torch.full((b, width), -1, dtype=torch.long)
    target = torch.zeros((b, width, *spatial), dtype=torch.uint8)
    for i, it in enumerate(items):
        t = len(it["task_ids"])
        task_ids[i, :t] = it["task_ids"]
        target[i, :t] = it["target"]
    return {"image": torch.stack([it["image"] for it in items]), "target": target,
            "task_ids": task_ids,
            "modality_ids": torch.tensor([it["modality_id"] for it in items], dtype=torch.long),
            "domain_ids": torch.tensor([it["domain_id"] for it in items], dtype=torch.long)}
