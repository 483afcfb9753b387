"""Imaging modalities and how each one's intensities are normalized (data, not code paths).

CT intensities are physical (Hounsfield units): clip to a fixed window, then z-score. MR and PET
intensities are arbitrary per scanner: clip to the volume's own 2nd-98th percentiles, then z-score
(as the Hermes reference does), except that PET's upper clip is the 99.9th percentile (ours): what
PET is read for, a small hot lesion, lies above the 98th percentile of a field of view of the
abdomen, and clipping there flattens it to the liver's value (measured ad hoc on 4 phantom PET cases:
tumour / liver 2.1-2.7 as acquired, 1.1-1.2 after the 98th percentile clip, 1.6-2.0 after the
99.9th; Testing/Python/test_catalog.py holds > 1.6 vs < 1.3). A catalog may declare more
modalities with either policy. The model package stores the policy of every modality, so
inference normalizes exactly as training.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import InputError

__all__ = ["CT_WINDOW", "KNOWN_MODALITIES", "PERCENTILE", "PET_PERCENTILE", "IntensityPolicy"]


@dataclass(frozen=True)
class IntensityPolicy:
    kind: str  # "window" (fixed clip) or "percentile" (per-volume clip)
    low: float
    high: float

    def __post_init__(self):
        if self.kind not in ("window", "percentile"):
            raise InputError(f"intensity policy kind {self.kind!r} must be 'window' or 'percentile'")
        if not self.low < self.high:
            raise InputError(f"intensity policy needs low < high, got {self.low} and {self.high}")
        if self.kind == "percentile" and not (0 <= self.low and self.high <= 100):
            raise InputError("percentile limits must lie in [0, 100]")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "IntensityPolicy":
        return cls(str(data["kind"]), float(data["low"]), float(data["high"]))


CT_WINDOW = IntensityPolicy("window", -991.0, 500.0)
PERCENTILE = IntensityPolicy("percentile", 2.0, 98.0)
PET_PERCENTILE = IntensityPolicy("percentile", 2.0, 99.9)  # keeps hot lesions above the liver

KNOWN_MODALITIES: dict[str, IntensityPolicy] = {
    "CT": CT_WINDOW,
    "MR-T1": PERCENTILE,
    "MR-T1c": PERCENTILE,
    "MR-T2": PERCENTILE,
    "MR-FLAIR": PERCENTILE,
    "MR-PD": PERCENTILE,
    "MR-DWI": PERCENTILE,
    "cine-MR": PERCENTILE,
    "PET": PET_PERCENTILE,
}
