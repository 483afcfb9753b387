"""Progress reporting for long work: a bar for people, JSON lines for programs (the Slicer module).

A reporter is called as ``report(stage, fraction, message)`` with ``fraction`` in [0, 1] of the
whole job. ``JsonLinesProgress`` writes one JSON object per line to stdout and flushes, so a parent
process can read it line by line; ``BarProgress`` draws a tqdm bar on stderr.
"""
from __future__ import annotations

import json
import sys
from typing import Callable, Optional

Reporter = Callable[[str, float, str], None]


def silent(stage: str, fraction: float, message: str = "") -> None:
    return None


class JsonLinesProgress:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def __call__(self, stage: str, fraction: float, message: str = "", **extra) -> None:
        record = {"stage": stage, "fraction": round(float(fraction), 4), "message": message, **extra}
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


class BarProgress:
    def __init__(self, desc: str = "predicting"):
        from tqdm import tqdm
        self.bar = tqdm(total=1000, desc=desc, unit="‰", file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        self.last = 0

    def __call__(self, stage: str, fraction: float, message: str = "", **extra) -> None:
        n = int(round(fraction * 1000))
        if n > self.last:
            self.bar.update(n - self.last)
            self.last = n
        self.bar.set_postfix_str(f"{stage}: {message}" if message else stage)
        if fraction >= 1:
            self.bar.close()


def scaled(report: Reporter, start: float, end: float, stage: str) -> Callable[[float, str], None]:
    """A reporter for one stage that maps its own 0..1 onto [start, end] of the whole job."""
    def inner(fraction: float, message: str = "") -> None:
        report(stage, start + (end - start) * min(max(fraction, 0.0), 1.0), message)
    return inner


def make_reporter(kind: Optional[str]) -> Reporter:
    if kind == "json":
        return JsonLinesProgress()
    if kind == "none":
        return silent
    return BarProgress()
