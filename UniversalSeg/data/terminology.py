"""Task metadata: display name, color and standard terminology (SNOMED CT) for Slicer segments.

A task in a catalog or model package carries ``TaskInfo``. Known structure names get their
display name, color (Slicer's generic anatomy colors) and SNOMED CT codes from ``KNOWN_TASKS``;
a catalog may override any field or declare new tasks. ``inference.writers`` turns the codes into
the terminology entry of each segment of a ``.seg.nrrd`` file.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

ANATOMY = ("SCT", "123037004", "Anatomical Structure")
ALTERED = ("SCT", "49755003", "Morphologically Altered Structure")


@dataclass(frozen=True)
class Code:
    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class TaskInfo:
    name: str
    display_name: str
    color: tuple[int, int, int]
    category: Optional[Code] = None
    type: Optional[Code] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["color"] = list(self.color)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "TaskInfo":
        def code(v):
            return None if v is None else Code(**v)
        return cls(str(data["name"]), str(data.get("display_name", data["name"])),
                   tuple(int(c) for c in data["color"]), code(data.get("category")),
                   code(data.get("type")))


def _known(name, display, color, category, scheme_value_meaning):
    return TaskInfo(name, display, color, Code(*category), Code(*scheme_value_meaning))


KNOWN_TASKS: dict[str, TaskInfo] = {t.name: t for t in [
    _known("liver", "Liver", (221, 130, 101), ANATOMY, ("SCT", "10200004", "Liver")),
    _known("spleen", "Spleen", (157, 108, 162), ANATOMY, ("SCT", "78961009", "Spleen")),
    _known("kidney", "Kidney", (185, 102, 83), ANATOMY, ("SCT", "64033007", "Kidney")),
    _known("pancreas", "Pancreas", (249, 180, 111), ANATOMY, ("SCT", "15776009", "Pancreas")),
    _known("brain", "Brain", (250, 250, 225), ANATOMY, ("SCT", "12738006", "Brain")),
    _known("heart", "Heart", (206, 110, 84), ANATOMY, ("SCT", "80891009", "Heart")),
    _known("lung", "Lung", (197, 165, 145), ANATOMY, ("SCT", "39607008", "Lung")),
    _known("prostate", "Prostate", (230, 158, 140), ANATOMY, ("SCT", "41216001", "Prostate")),
    _known("liver-tumor", "Liver tumor", (255, 64, 64), ALTERED, ("SCT", "108369006", "Neoplasm")),
    _known("tumor", "Tumor", (255, 64, 64), ALTERED, ("SCT", "108369006", "Neoplasm")),
]}

# Colors for tasks without a known entry: distinct, readable on grey images.
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def task_info(name: str, overrides: Optional[dict] = None, index: int = 0) -> TaskInfo:
    """The metadata of task ``name``: known defaults, then the catalog's overrides."""
    base = KNOWN_TASKS.get(name) or TaskInfo(name, name.replace("-", " ").capitalize(),
                                             _PALETTE[index % len(_PALETTE)])
    if not overrides:
        return base
    data = base.to_dict()
    for key, value in overrides.items():
        if key not in ("display_name", "color", "category", "type"):
            raise ValueError(f"task {name!r}: unknown field {key!r}; fields are display_name, "
                             "color, category, type")
        data[key] = value
    color = data["color"]
    if isinstance(color, str):
        color = color.lstrip("#")
        if len(color) != 6:
            raise ValueError(f"task {name!r}: color {data['color']!r} is not #RRGGBB or [r, g, b]")
        data["color"] = [int(color[i:i + 2], 16) for i in (0, 2, 4)]
    if len(data["color"]) != 3 or not all(0 <= int(c) <= 255 for c in data["color"]):
        raise ValueError(f"task {name!r}: color must be three integers 0-255")
    for key in ("category", "type"):
        v = data[key]
        if isinstance(v, (list, tuple)):  # [scheme, value, meaning]
            data[key] = dict(zip(("scheme", "value", "meaning"), v))
    return TaskInfo.from_dict(data)
