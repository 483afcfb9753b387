"""Mutually exclusive task groups: structures a voxel can be at most one of.

Every task of a universal model is an independent sigmoid, so nothing in the network stops a voxel
being called cortex and white matter at once. A model declares which of its tasks exclude each
other in ``model.json``:

    "exclusive_groups": [["cortex-left", "white-matter-left", "hippocampus-left"], ...]

and prediction resolves each group voxel by voxel: the voxel goes to the member with the highest
probability among the members whose probability reaches their threshold, else to none of them
(with one threshold for all: argmax among the group's members and background). A task in no
group is thresholded alone, as before, so nesting survives ("brain", in no group, still contains
"cortex"). Probability maps stay raw. A package without the field behaves exactly as before.

Resolution needs every member's probability: ``with_members`` adds the requested tasks' group
mates to the network's query (their masks are not returned), so a task's mask does not depend on
which other tasks the user asked for. Standard library only at import (``model_metadata`` imports
it in the Slicer GUI); the resolver uses numpy.
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["EXAMPLE", "FIELD", "ExclusiveResolver", "read_groups", "with_members"]

FIELD = "exclusive_groups"
EXAMPLE = '[["cortex-left", "white-matter-left"], ...]'


def read_groups(meta: dict, task_names: Sequence[str], where: str, error=ValueError) -> list[list[str]]:
    """``model.json``'s ``exclusive_groups`` checked against the model's tasks (absent: none).
    Raises ``error`` with one line naming the problem: not a list of lists of names, a name that
    is not a task of the model, a task in two groups (or twice in one), a group of fewer than 2."""
    groups = meta.get(FIELD)
    if groups is None:
        return []
    prefix = f"{where}: {FIELD}"
    if not isinstance(groups, list) or not all(
            isinstance(g, list) and all(isinstance(n, str) for n in g) for g in groups):
        raise error(f"{prefix} must be a list of groups, each a list of task names (e.g. {EXAMPLE}), "
                    f"got {_short(groups)}")
    known = set(task_names)
    seen: dict[str, int] = {}
    for i, group in enumerate(groups):
        if len(group) < 2:
            raise error(f"{prefix}[{i}] has {len(group)} task(s); a group needs at least 2 mutually "
                        "exclusive tasks (remove it or add its other members)")
        for name in group:
            if name not in known:
                raise error(f"{prefix}[{i}] names {_short(name)}, which is not a task of this model; "
                            f"use names from tasks[] ({_short(sorted(known))})")
            if name in seen:
                other = "the same group twice" if seen[name] == i else f"{FIELD}[{seen[name]}] too"
                raise error(f"{prefix}[{i}]: task {name!r} is in {other}; a task belongs to at most "
                            "one group (merge the groups or drop the repeat)")
            seen[name] = i
    return [list(g) for g in groups]


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def with_members(tasks: Sequence[str], groups: Sequence[Sequence[str]]) -> list[str]:
    """``tasks`` followed by the other members of their groups (in group order), each once."""
    out, present = list(tasks), set(tasks)
    for group in groups:
        if present.intersection(group):
            for name in group:
                if name not in present:
                    out.append(name)
                    present.add(name)
    return out


class ExclusiveResolver:
    """Turns the probabilities of grouped tasks into masks that never overlap within a group.

    Feed each grouped task's probabilities once (``add``, any order, arrays of one shape); then
    ``mask(task)`` is 1 where the task reaches its threshold with the group's highest probability
    (ties: the member listed first). Holds one float32 and one int16 array per group, not one per task."""

    def __init__(self, groups: Sequence[Sequence[str]], tasks: Sequence[str] = ()):
        """``tasks``: only groups with a member among them matter (all groups when empty)."""
        wanted = set(tasks)
        self.where = {name: (g, k) for g, group in enumerate(groups) for k, name in enumerate(group)
                      if not wanted or wanted.intersection(group)}
        self.best: dict = {}    # group -> float32 array: the best probability so far (-1: background)
        self.winner: dict = {}  # group -> int16 array: its member's index in the group (-1: none)

    def __contains__(self, task: str) -> bool:
        return task in self.where

    def add(self, task: str, prob, threshold: float) -> None:
        import numpy as np
        g, k = self.where[task]
        prob = np.asarray(prob, dtype=np.float32)
        candidate = np.where(prob >= np.float32(threshold), prob, np.float32(-1))  # below: background
        if g not in self.best:
            self.best[g] = np.full(prob.shape, -1, np.float32)
            self.winner[g] = np.full(prob.shape, -1, np.int16)
        best, winner = self.best[g], self.winner[g]
        better = (candidate > best) | ((candidate == best) & (candidate >= 0) & (k < winner))
        np.copyto(best, candidate, where=better)
        winner[better] = k

    def mask(self, task: str):
        """uint8 0/1 in the shape of the arrays added."""
        g, k = self.where[task]
        if g not in self.winner:
            raise KeyError(f"no probabilities were added for the group of {task!r}")
        return (self.winner[g] == k).astype("uint8")
