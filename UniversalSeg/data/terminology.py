"""Task metadata: display name, color and standard terminology (SNOMED CT) for Slicer segments.

A task in a catalog or model package carries ``TaskInfo``. Known structure names get their
display name, color (Slicer's generic anatomy colors) and SNOMED CT codes from ``KNOWN_TASKS``;
a catalog may override any field or declare new tasks. ``inference.writers`` turns the codes into
the terminology entry of each segment of a ``.seg.nrrd`` file.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Optional

from ..errors import InputError

__all__ = ["ALTERED", "ANATOMY", "DICOM_MASTER_CONTEXT", "KNOWN_TASKS", "MAX_DISPLAY_NAME", "SLICER_ANATOMY_CONTEXT",
           "TASK_NAME", "Code", "TaskInfo", "check_code", "check_task_names", "task_info"]

# Task names become file names (probability maps, exported datasets) and segment IDs; display
# names become .seg.nrrd header values. Both are data from outside (catalogs, model packages):
# names get a safe character set, display names no control characters (a newline would inject a
# header line).
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
MAX_DISPLAY_NAME = 128


def check_task_names(name: str, display_name: str) -> None:
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise InputError(f"task name {name!r} is not allowed: use 1-64 letters, digits, '.', '_', '+' "
                         "or '-', starting with a letter or digit")
    if (not isinstance(display_name, str) or not display_name.strip() or len(display_name) > MAX_DISPLAY_NAME
            or any(ord(c) < 32 or ord(c) == 127 for c in display_name) or not _utf8(display_name)):
        raise InputError(f"display name {display_name!r} of task {name!r} is not allowed: 1-{MAX_DISPLAY_NAME} "
                         "printable characters, no line breaks")


def _utf8(text: str) -> bool:
    """Text that UTF-8 can carry (.seg.nrrd headers, DICOM): JSON's lone surrogates cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_code(task: str, field: str, value) -> "Code":
    """A coded concept from a package or catalog: three texts (scheme, value, meaning), each a
    header value in a .seg.nrrd file: no line break (it would start a header line of its own),
    UTF-8, bounded (other control characters reach a terminal escaped: ``printable``)."""
    keys = ("scheme", "value", "meaning")
    if not isinstance(value, dict) or set(value) != set(keys) or not all(
            isinstance(value[k], str) and 0 < len(value[k]) <= 256 and _utf8(value[k])
            and not any(c in value[k] for c in "\n\r\0") for k in keys):
        raise InputError(f"task {task!r}: {field} must be a code {{scheme, value, meaning}} of texts (1-256 "
                         f"characters, no line breaks), got {str(value)[:80]!r}")
    return Code(value["scheme"], value["value"], value["meaning"])

ANATOMY = ("SCT", "123037004", "Anatomical Structure")
ALTERED = ("SCT", "49755003", "Morphologically Altered Structure")

# Terminology contexts that 3D Slicer ships (Modules/Loadable/Terminologies/Resources, the
# "SegmentationCategoryTypeContextName" of each file). A segment's terminology entry names the
# context its codes come from; Slicer looks the codes up there. The anatomy list has the organs
# with Slicer's colors; lesions such as "Neoplasm" exist only in the DICOM master list, which
# also holds every organ code, so it is the default for codes we do not know.
SLICER_ANATOMY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_MASTER_CONTEXT = "Segmentation category and type - DICOM master list"


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
    context: str = DICOM_MASTER_CONTEXT  # the Slicer terminology context the codes come from
    # separate connected parts the structure has: 2 for a task covering both kidneys or lungs;
    # 0 for lesions (any number). Largest-component clean-up keeps this many (0: none removed).
    parts: int = 1
    # the type's modifier in the same context: SCT 7771000 Left / 24028007 Right for a side's task
    modifier: Optional[Code] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["color"] = list(self.color)
        if self.modifier is None:  # packages without sides stay as they were
            del d["modifier"]
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "TaskInfo":
        name = str(data["name"])

        def code(field):
            v = data.get(field)
            return None if v is None else check_code(name, field, v)
        known = KNOWN_TASKS.get(name)  # packages written before "parts" existed: the known count
        parts = data.get("parts", known.parts if known else 1)
        if isinstance(parts, bool) or not isinstance(parts, int) or not 0 <= parts <= 1000:
            raise InputError(f"task {name!r}: parts must be a whole number 0-1000 (0: any number of "
                             f"parts, e.g. lesions), got {parts!r}")
        color = data["color"]
        if not (isinstance(color, list) and len(color) == 3
                and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)):
            raise InputError(f"task {name!r}: color must be three whole numbers 0-255 (red, green, blue), "
                             f"got {color!r}")
        context = data.get("context") or DICOM_MASTER_CONTEXT
        if not (isinstance(context, str) and len(context) <= 256 and _utf8(context)
                and not any(c in context for c in "\n\r\0")):
            raise InputError(f"task {name!r}: context must be a terminology context's name (1-256 characters, "
                             f"no line breaks), got {str(context)[:80]!r}")
        return cls(name, str(data.get("display_name", name)),
                   tuple(color), code("category"),
                   code("type"), context, parts,
                   code("modifier"))


def _known(name, display, color, category, scheme_value_meaning, parts=1, context=None, modifier=None):
    context = context or (SLICER_ANATOMY_CONTEXT if category == ANATOMY else DICOM_MASTER_CONTEXT)
    return TaskInfo(name, display, color, Code(*category), Code(*scheme_value_meaning), context, parts,
                    Code(*modifier) if modifier else None)


LEFT, RIGHT = ("SCT", "7771000", "Left"), ("SCT", "24028007", "Right")

# Brain structures with a left and a right task (brain-synth 2.0). Codes, contexts and colors as
# Slicer's terminology files have them (Slicer/Slicer 583e9b37, Modules/Loadable/Terminologies/
# Resources/SegmentationCategoryTypeModifier-{SlicerGeneralAnatomy,DICOM-Master}.json): the
# General Anatomy list where it has the type with Left/Right modifiers (its colors), else the
# DICOM master list (cerebral cortex, cerebral white matter, hippocampus, accumbens: the only list
# with their side modifiers). Colors where Slicer's lists give none (hippocampus, accumbens):
# our choice. Cerebellar cortex and ventral DC have no code in either list: name and color only.
_SIDED = (  # name, display, color, code, context
    ("cerebral-cortex", "cerebral cortex", (128, 174, 128),
     ("SCT", "40146001", "Cerebral cortex"), DICOM_MASTER_CONTEXT),
    ("cerebral-white-matter", "cerebral white matter", (250, 250, 225),
     ("SCT", "68523003", "Cerebral White Matter"), DICOM_MASTER_CONTEXT),
    ("lateral-ventricle", "lateral ventricle", (88, 106, 215), ("SCT", "66720007", "Lateral ventricle"),
     SLICER_ANATOMY_CONTEXT),
    ("thalamus", "thalamus", (122, 101, 38), ("SCT", "119406000", "Thalamus"), SLICER_ANATOMY_CONTEXT),
    ("caudate", "caudate", (30, 111, 85), ("SCT", "11000004", "Caudate nucleus"), SLICER_ANATOMY_CONTEXT),
    ("putamen", "putamen", (210, 157, 166), ("SCT", "89278009", "Putamen"), SLICER_ANATOMY_CONTEXT),
    ("pallidum", "pallidum", (48, 129, 126), ("SCT", "14738005", "Globus pallidus"), SLICER_ANATOMY_CONTEXT),
    ("hippocampus", "hippocampus", (220, 216, 20), ("SCT", "5366008", "Hippocampus"), DICOM_MASTER_CONTEXT),
    ("amygdala", "amygdala", (98, 153, 112), ("SCT", "4958002", "Amygdala"), SLICER_ANATOMY_CONTEXT),
    ("accumbens", "accumbens", (255, 165, 0), ("SCT", "427667007", "Nucleus accumbens"), DICOM_MASTER_CONTEXT),
)
_UNCODED_SIDED = (("cerebellum-cortex", "cerebellum cortex", (230, 148, 34)),
                  ("ventral-dc", "ventral DC", (165, 42, 42)))


def _brain_structures() -> list[TaskInfo]:
    out = []
    for name, display, color, code, context in _SIDED:
        for side, modifier in (("left", LEFT), ("right", RIGHT)):
            out.append(_known(f"{name}-{side}", f"{side.capitalize()} {display}", color, ANATOMY, code,
                              context=context, modifier=modifier))
    for name, display, color in _UNCODED_SIDED:
        for side in ("left", "right"):
            out.append(TaskInfo(f"{name}-{side}", f"{side.capitalize()} {display}", color))
    for side in ("left", "right"):  # one code, no side modifier in Slicer's lists
        out.append(_known(f"cerebellum-white-matter-{side}", f"{side.capitalize()} cerebellum white matter",
                          (194, 195, 164), ANATOMY, ("SCT", "33060004", "Cerebellar white matter")))
    out += [_known("brain-stem", "Brain stem", (119, 159, 176), ANATOMY, ("SCT", "119238007", "Brain stem"),
                   context=DICOM_MASTER_CONTEXT),
            _known("third-ventricle", "Third ventricle", (204, 182, 142), ANATOMY,
                   ("SCT", "49841001", "Third ventricle"), context=DICOM_MASTER_CONTEXT),
            _known("fourth-ventricle", "Fourth ventricle", (88, 106, 215), ANATOMY,
                   ("SCT", "35918002", "Fourth ventricle"))]
    return out


KNOWN_TASKS: dict[str, TaskInfo] = {t.name: t for t in [
    _known("liver", "Liver", (221, 130, 101), ANATOMY, ("SCT", "10200004", "Liver")),
    _known("spleen", "Spleen", (157, 108, 162), ANATOMY, ("SCT", "78961009", "Spleen")),
    _known("kidney", "Kidney", (185, 102, 83), ANATOMY, ("SCT", "64033007", "Kidney"), parts=2),
    _known("pancreas", "Pancreas", (249, 180, 111), ANATOMY, ("SCT", "15776009", "Pancreas")),
    _known("brain", "Brain", (250, 250, 225), ANATOMY, ("SCT", "12738006", "Brain")),
    _known("heart", "Heart", (206, 110, 84), ANATOMY, ("SCT", "80891009", "Heart")),
    _known("lung", "Lung", (197, 165, 145), ANATOMY, ("SCT", "39607008", "Lung"), parts=2),
    _known("prostate", "Prostate", (230, 158, 140), ANATOMY, ("SCT", "41216001", "Prostate")),
    # brain tissues: codes and colors as Slicer's terminology files have them (5.10, Modules/Loadable/
    # Terminologies/Resources): CSF is only in the DICOM master list
    _known("gray-matter", "Gray matter", (200, 200, 235), ANATOMY, ("SCT", "389081007", "Gray Matter"), parts=0),
    _known("white-matter", "White matter", (250, 250, 210), ANATOMY, ("SCT", "389080008", "White Matter")),
    _known("csf", "Cerebrospinal fluid", (85, 188, 255), ANATOMY, ("SCT", "65216001", "Cerebrospinal Fluid"),
           parts=0, context=DICOM_MASTER_CONTEXT),
    _known("head", "Head", (177, 122, 101), ANATOMY, ("SCT", "69536005", "Head")),
    _known("liver-tumor", "Liver tumor", (255, 64, 64), ALTERED, ("SCT", "108369006", "Neoplasm"), parts=0),
    _known("tumor", "Tumor", (255, 64, 64), ALTERED, ("SCT", "108369006", "Neoplasm"), parts=0),
    *_brain_structures(),
]}

# Colors for tasks without a known entry: distinct, readable on grey images.
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def task_info(name: str, overrides: Optional[dict] = None, index: int = 0) -> TaskInfo:
    """The metadata of task ``name``: known defaults, then the catalog's overrides."""
    check_task_names(name, (overrides or {}).get("display_name", name))
    base = KNOWN_TASKS.get(name) or TaskInfo(name, name.replace("-", " ").capitalize(),
                                             _PALETTE[index % len(_PALETTE)])
    if not overrides:
        return base
    data = base.to_dict()
    for key, value in overrides.items():
        if key not in ("display_name", "color", "category", "type", "context", "parts"):
            raise InputError(f"task {name!r}: unknown field {key!r}; fields are display_name, "
                             "color, category, type, context, parts")
        data[key] = value
    if ("category" in overrides or "type" in overrides) and "context" not in overrides:
        data["context"] = DICOM_MASTER_CONTEXT  # own codes: the list that holds them all
    color = data["color"]
    if isinstance(color, str):
        color = color.lstrip("#")
        if len(color) != 6:
            raise InputError(f"task {name!r}: color {data['color']!r} is not #RRGGBB or [r, g, b]")
        data["color"] = [int(color[i:i + 2], 16) for i in (0, 2, 4)]
    if len(data["color"]) != 3 or not all(0 <= int(c) <= 255 for c in data["color"]):
        raise InputError(f"task {name!r}: color must be three integers 0-255")
    for key in ("category", "type"):
        v = data[key]
        if isinstance(v, (list, tuple)):  # [scheme, value, meaning]
            data[key] = dict(zip(("scheme", "value", "meaning"), v))
    return TaskInfo.from_dict(data)
