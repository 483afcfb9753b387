"""The models a user can pick in the panel, read with the core's torch-free modules.

Installed packages (downloaded or imported into the cache), model folders the user added (e.g.
a training run's ``model``), and catalog entries not downloaded yet (picked, they are downloaded
first). Only ``UniversalSeg.model_metadata`` and ``UniversalSeg.model_download`` are imported
here: both use the standard library alone, so Slicer's process never loads torch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .paths import ensure_core_importable

ensure_core_importable()
from UniversalSeg.data.terminology import task_info  # noqa: E402
from UniversalSeg.model_download import cached_packages, default_catalog_path, load_model_catalog  # noqa: E402
from UniversalSeg.model_metadata import read_summary  # noqa: E402


@dataclass(frozen=True)
class ModelChoice:
    label: str
    spec: str                    # what ``universalseg predict --model`` takes
    needs_download: bool = False


def available_models(folders: Sequence[str] = ()) -> list[ModelChoice]:
    cached = cached_packages()
    choices = [ModelChoice(f"{p.stem} (installed)", str(p)) for p in cached]
    choices += [ModelChoice(f"{Path(f).parent.name}/{Path(f).name} (folder)", f) for f in folders if os.path.isdir(f)]
    names = {p.name for p in cached}
    for e in load_model_catalog():
        if e.shipped:  # installed with the extension: used in place, checksum verified when run
            choices.insert(0, ModelChoice(f"{e.id} {e.version} (shipped)", e.id))
        elif e.filename not in names:
            size = f", {e.size / 1e6:.0f} MB" if e.size else ""
            choices.append(ModelChoice(f"{e.id} {e.version} (download{size})", e.id, True))
    return choices


def model_summary(choice: ModelChoice) -> dict:
    """Tasks (name, display name, color), modalities and the model card text, without the weights."""
    if choice.needs_download:
        entry = next(e for e in load_model_catalog() if e.id == choice.spec)
        tasks, modalities = [task_info(t, index=i) for i, t in enumerate(entry.tasks)], list(entry.modalities)
        card = entry.description
    else:
        shipped = {e.id: e for e in load_model_catalog() if e.shipped}
        path = default_catalog_path().parent / shipped[choice.spec].file if choice.spec in shipped else choice.spec
        summary = read_summary(path)
        tasks, modalities = summary.tasks, summary.modalities
        card = card_text(summary.meta.get("provenance", {}).get("card"))
    return {"tasks": [t.to_dict() for t in tasks], "modalities": modalities, "card": card}


CARD_FIELDS = (("summary", "Summary"), ("trained_on", "Trained on"), ("intended_use", "Intended use"),
               ("limits", "Known limits"), ("validation", "Validation"))


def card_text(card) -> str:
    """A model card (``provenance.card`` of model.json) as the panel shows it (the model list's tooltip)."""
    if not isinstance(card, dict):
        return ""
    return "\n\n".join(f"{title}: {card[key]}" for key, title in CARD_FIELDS if isinstance(card.get(key), str))
