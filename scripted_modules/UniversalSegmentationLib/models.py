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
from .i18n import tr as _

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
    choices = [ModelChoice(_("{name} (installed)").format(name=p.stem), str(p)) for p in cached]
    choices += [ModelChoice(folder_label(f), f) for f in folders if os.path.isdir(f)]
    names = {p.name for p in cached}
    for e in load_model_catalog():
        if e.shipped:  # installed with the extension: used in place, checksum verified when run
            choices.insert(0, ModelChoice(_("{name} {version} (shipped)").format(name=e.id, version=e.version), e.id))
        elif e.filename not in names:
            label = (_("{name} {version} (download, {size} MB)").format(
                name=e.id, version=e.version, size=f"{e.size / 1e6:.0f}") if e.size
                else _("{name} {version} (download)").format(name=e.id, version=e.version))
            choices.append(ModelChoice(label, e.id, True))
    return choices


def model_summary(choice: ModelChoice) -> dict:
    """Tasks (name, display name, color), modalities and the model card text, without the weights."""
    if choice.needs_download:
        entry = next(e for e in load_model_catalog() if e.id == choice.spec)
        tasks, modalities = [task_info(t, index=i) for i, t in enumerate(entry.tasks)], list(entry.modalities)
        card, clicks = entry.description, False
    else:
        shipped = {e.id: e for e in load_model_catalog() if e.shipped}
        path = default_catalog_path().parent / shipped[choice.spec].file if choice.spec in shipped else choice.spec
        summary = read_summary(path)
        tasks, modalities = summary.tasks, summary.modalities
        provenance = summary.meta.get("provenance", {})
        card = "\n\n".join(t for t in (version_text(provenance.get("finetune")), card_text(provenance.get("card"))) if t)
        prompt = summary.meta["network"].get("prompt")
        clicks = isinstance(prompt, dict) and prompt.get("enabled") is True
    # clicks: the model has the click-refinement stage (network.prompt.enabled in model.json)
    return {"tasks": [t.to_dict() for t in tasks], "modalities": modalities, "card": card, "clicks": clicks}


CARD_FIELDS = (("summary", "Summary"), ("trained_on", "Trained on"), ("intended_use", "Intended use"),
               ("limits", "Known limits"), ("validation", "Validation"))


def card_text(card) -> str:
    """A model card (``provenance.card`` of model.json) as the panel shows it (the model list's tooltip)."""
    if not isinstance(card, dict):
        return ""
    return "\n\n".join(f"{title}: {card[key]}" for key, title in CARD_FIELDS if isinstance(card.get(key), str))


def version_text(finetune) -> str:
    """A fine-tuned version's record (``provenance.finetune``): parent, mode, date, cases."""
    if not isinstance(finetune, dict) or not isinstance(finetune.get("parent"), dict):
        return ""
    parent = finetune["parent"]
    cases = ", ".join(f"{t} {n}" for t, n in sorted((finetune.get("cases") or {}).items()))
    parent_text = f"{parent.get('model_id', '?')} {parent.get('version', '')}".rstrip()
    return _("Fine-tuned version '{name}' of {parent} ({mode}, {date}); cases: {cases}. The parent model stays in "
             "the list: select it to go back.").format(
        name=finetune.get("name", ""), parent=parent_text, mode=finetune.get("mode", "?"),
        date=str(finetune.get("finetuned", ""))[:16].replace("T", " "), cases=cases or _("none"))


def folder_label(folder: str) -> str:
    """The model list's entry for a package folder; a fine-tuned version names its parent and date."""
    try:
        finetune = read_summary(folder).meta.get("provenance", {}).get("finetune")
    except Exception:  # noqa: BLE001 - an unreadable folder still gets listed; selecting it says why
        finetune = None
    if isinstance(finetune, dict) and isinstance(finetune.get("parent"), dict):
        date = str(finetune.get("finetuned", ""))[:16].replace("T", " ")
        return _("{name} ({mode} of {parent}, {date})").format(
            name=finetune.get("name", _("fine-tuned")), mode=finetune.get("mode", ""),
            parent=finetune["parent"].get("model_id"), date=date)
    return _("{folder} (folder)").format(folder=f"{Path(folder).parent.name}/{Path(folder).name}")
