"""The context that steers the universal network: which tasks, which modality, which domain.

One ``SegContext`` travels with the image through every conditional module (prior look-up, fusion,
harmonization plug-ins, heads). It holds integer ids only; ``Vocabulary`` turns the names a person
types (task and modality names) into ids and refuses names the model does not know, listing the
ones it does.

Conventions
- ``task_ids``   LongTensor [B, T]; padding slots hold ``-1`` (they become the null token and are
  masked out of every attention and every loss).
- ``modality_ids`` LongTensor [B].
- ``domain_ids``   LongTensor [B]; ``-1`` means "unknown domain" (plug-ins that can, infer it).
- ``class_maps``   optional {level: [B, k, d, h, w]} task-embedded soft masks for class-aware
  normalization; set by the network itself on its second pass, never by callers.
- ``domain_weights`` [B, num_domains] mixture over domains for the harmonization plug-ins; set by
  the network (one-hot for a known domain, the domain gate's softmax for an unknown one).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from ..errors import InputError

PAD = -1


class UnknownNameError(InputError, KeyError):
    """A task, modality or domain name the model was not trained with."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class SegContext:
    task_ids: torch.Tensor
    modality_ids: torch.Tensor
    domain_ids: torch.Tensor
    class_maps: Optional[dict] = None
    domain_weights: Optional[torch.Tensor] = None

    @property
    def task_mask(self) -> torch.Tensor:
        """True where a task slot holds a real task, False for padding."""
        return self.task_ids >= 0

    def to(self, device) -> "SegContext":
        def move(t):
            return None if t is None else t.to(device)
        maps = None if self.class_maps is None else {k: move(v) for k, v in self.class_maps.items()}
        return SegContext(move(self.task_ids), move(self.modality_ids), move(self.domain_ids),
                          maps, move(self.domain_weights))

    def replace(self, **changes) -> "SegContext":
        return dataclasses.replace(self, **changes)

    def validate(self, batch: int, num_tasks: int, num_modalities: int, num_domains: int) -> None:
        if self.task_ids.dim() != 2 or self.task_ids.shape[0] != batch:
            raise ValueError(f"context.task_ids must be [B={batch}, T], got {tuple(self.task_ids.shape)}")
        if self.task_ids.shape[1] == 0:
            raise ValueError("context.task_ids asks for no task; request at least one")
        if self.modality_ids.shape != (batch,) or self.domain_ids.shape != (batch,):
            raise ValueError(f"context.modality_ids and context.domain_ids must be [B={batch}], got "
                             f"{tuple(self.modality_ids.shape)} and {tuple(self.domain_ids.shape)}")
        if not bool(self.task_mask.any(dim=1).all()):
            raise ValueError("context: a sample has only padding task slots; each needs a real task")
        for name, ids, n, low in (("task_ids", self.task_ids, num_tasks, PAD),
                                  ("modality_ids", self.modality_ids, num_modalities, 0),
                                  ("domain_ids", self.domain_ids, num_domains, PAD)):
            if ids.numel() and (int(ids.min()) < low or int(ids.max()) >= n):
                raise ValueError(f"context.{name} out of range: values must lie in [{low}, {n - 1}], "
                                 f"got [{int(ids.min())}, {int(ids.max())}]")


class Vocabulary:
    """Names <-> ids for tasks, modalities and domains, with helpful errors."""

    def __init__(self, tasks: Sequence[str], modalities: Sequence[str], domains: Sequence[str] = ()):
        self.tasks = list(tasks)
        self.modalities = list(modalities)
        self.domains = list(domains)

    @staticmethod
    def _index(kind: str, names: list[str], name: str) -> int:
        try:
            return names.index(name)
        except ValueError:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            plural = {"modality": "modalities"}.get(kind, kind + "s")
            raise UnknownNameError(
                f"unknown {kind} {name!r}: this model knows the {plural} {names}.{hint}") from None

    def task_id(self, name: str) -> int:
        return self._index("task", self.tasks, name)

    def modality_id(self, name: str) -> int:
        return self._index("modality", self.modalities, name)

    def domain_id(self, name: Optional[str]) -> int:
        return PAD if name is None else self._index("domain", self.domains, name)

    def context(self, tasks: Sequence[Sequence[str]] | Sequence[str], modalities: Sequence[str] | str,
                domains: Sequence[Optional[str]] | Optional[str] = None, batch: Optional[int] = None,
                device=None) -> SegContext:
        """Build a context from names.

        ``tasks`` is either one list of task names (shared by the whole batch) or one list per
        sample (lists of different lengths are padded). ``modalities`` / ``domains`` are one name
        or one per sample.
        """
        if tasks and isinstance(tasks[0], str):
            if batch is None:  # one task list shared by every sample named below
                lists = [v for v in (modalities, domains) if isinstance(v, (list, tuple))]
                batch = len(lists[0]) if lists else 1
            per_sample = [list(tasks)] * batch
        else:
            per_sample = [list(t) for t in tasks]
        b = len(per_sample)
        if isinstance(modalities, str):
            modalities = [modalities] * b
        if domains is None or isinstance(domains, str):
            domains = [domains] * b
        if len(modalities) != b or len(domains) != b:
            raise InputError(f"got task lists for {b} samples but {len(modalities)} modalities and "
                             f"{len(domains)} domains")
        width = max(len(t) for t in per_sample)
        if width == 0:
            raise InputError("no task requested; pass at least one task name")
        ids = torch.full((b, width), PAD, dtype=torch.long)
        for i, names in enumerate(per_sample):
            if len(set(names)) != len(names):
                raise InputError(f"sample {i} requests a task twice: {names}")
            ids[i, :len(names)] = torch.tensor([self.task_id(n) for n in names], dtype=torch.long)
        mod = torch.tensor([self.modality_id(m) for m in modalities], dtype=torch.long)
        dom = torch.tensor([self.domain_id(d) for d in domains], dtype=torch.long)
        ctx = SegContext(ids, mod, dom)
        return ctx.to(device) if device is not None else ctx
