"""The warm worker: one process keeps the model and the open image, and answers clicks.

``universalseg worker`` reads one JSON request per line on stdin and writes one JSON reply per
line on stdout (progress lines carry "progress"; a reply carries "ok"). Requests:

    {"id": 1, "cmd": "open", "model": "brain-synth", "image": "/tmp/t1.nrrd", "modality": "MR-T1",
     "tasks": ["brain"], "device": "auto", "largest_component": false}
        -> {"id": 1, "ok": true, "tasks": [...], "seconds": 12.3}
    {"id": 2, "cmd": "mask", "task": "brain"}                  -> a mask reply for the whole grid
    {"id": 3, "cmd": "refine", "task": "brain",
     "points": [{"position": [x, y, z], "label": "positive"}]} -> a mask reply for the changed box
    {"id": 4, "cmd": "undo", "task": "brain"}                  -> a mask reply (box null: nothing to undo)
    {"id": 5, "cmd": "set_mask", "task": "brain", "file": "/tmp/edited.nrrd"}  -> {"ok": true}
    {"cmd": "cancel"}   ends a running "open" (its reply: "ok": false, "cancelled": true)
    {"id": 6, "cmd": "close"}  (or end of input)                -> exits 0

A mask reply: {"ok": true, "task", "box": [[i0, i1], [j0, j1], [k0, k1]] (input-grid voxels,
end exclusive), "shape": [nk, nj, ni], "mask": base64 of the zlib-compressed uint8 array in
(k, j, i) order, "seconds"}; for a task in one of the model's exclusive groups, a refine or undo
reply may add "also": [{"task", "box", "shape", "mask"}, ...], the group mates whose masks that
change altered in the box (they never overlap the task). A bad request gets {"ok": false,
"error": "one line"} and the worker goes on; a bug in the worker answers "internal error" with
its traceback on stderr and goes on too.
Why a line protocol over pipes, not a socket: nothing to configure or secure (no port is
opened), and the worker dies with its pipes; ``UNIVERSALSEG_PARENT_PID`` ends it with Slicer.
"""
from __future__ import annotations

import base64
import json
import math
import queue
import sys
import threading
import time
import traceback
import zlib
from typing import Optional

import numpy as np

from ..errors import InputError


class Cancelled(Exception):
    pass


def encode_mask(array: np.ndarray) -> str:
    """The reply's "mask": decoded by the Slicer side's ``refine_worker.decode_mask`` (which must
    not import this package)."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array, dtype=np.uint8).tobytes(), 1)).decode()


def mask_reply(change, seconds: Optional[float] = None) -> dict:
    if change is None:
        return {"ok": True, "box": None}
    reply = {"ok": True, "task": change.task, "box": [list(b) for b in change.box],
             "shape": list(change.mask.shape), "mask": encode_mask(change.mask),
             "seconds": round(change.seconds if seconds is None else seconds, 4)}
    if getattr(change, "also", None):  # exclusive group mates changed in the box
        reply["also"] = [{"task": c.task, "box": [list(b) for b in c.box], "shape": list(c.mask.shape),
                          "mask": encode_mask(c.mask)} for c in change.also]
    return reply


class Worker:
    def __init__(self, write=None):
        self.write = write or (lambda message: print(json.dumps(message), flush=True))
        self.predictors: dict = {}   # (model, device) -> Predictor: the model stays loaded
        self.session = None
        self.cancel = threading.Event()

    def handle(self, request) -> Optional[dict]:
        """One request -> its reply (None for "cancel", which has none of its own)."""
        rid = request.get("id") if isinstance(request, dict) else None
        try:
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise InputError('a request is a JSON object with a "cmd" (open, mask, refine, undo, '
                                 'set_mask, cancel, close)')
            command = getattr(self, "cmd_" + request["cmd"], None)
            if command is None:
                raise InputError(f"unknown command {request['cmd']!r}; commands: open, mask, refine, "
                                 "undo, set_mask, cancel, close")
            reply = command(request)
        except Cancelled:
            reply = {"ok": False, "cancelled": True, "error": "cancelled"}
        except (InputError, FileNotFoundError) as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug: said as one, the worker stays up for the next request
            traceback.print_exc(file=sys.stderr)
            reply = {"ok": False, "error": f"internal error ({type(exc).__name__}: {exc}); the "
                                           "traceback is in the worker's log"}
        if reply is not None:
            reply = {"id": rid, **reply}
        return reply

    # ------------------------------------------------------------------ commands
    def cmd_open(self, r):
        from ..model_download import resolve_model
        from .interactive import InteractiveSession
        from .predictor import PredictOptions, Predictor
        t0 = time.perf_counter()
        for key in ("model", "image", "modality"):
            if not isinstance(r.get(key), str):
                raise InputError(f'open: "{key}" is required (a string)')
        key = (r["model"], r.get("device", "auto"))
        if key not in self.predictors:
            self.predictors = {key: Predictor(resolve_model(r["model"], progress=False), device=key[1])}
        predictor = self.predictors[key]
        self.session = None
        self.cancel.clear()

        def report(stage, fraction, message=""):
            if self.cancel.is_set():
                raise Cancelled()
            self.write({"id": r.get("id"), "progress": round(float(fraction), 4), "stage": stage,
                        "message": message})

        options = PredictOptions(largest_component=bool(r.get("largest_component", False)))
        self.session = InteractiveSession(predictor, r["image"], r["modality"], r.get("tasks") or None,
                                          options, report)
        return {"ok": True, "tasks": self.session.tasks, "seconds": round(time.perf_counter() - t0, 3)}

    def _open_session(self):
        if self.session is None:
            raise InputError('no image is open: send "open" first')
        return self.session

    def cmd_mask(self, r):
        session = self._open_session()
        task = session._task(r.get("task"))
        mask = session.masks[task]
        from .interactive import MaskChange
        box = tuple((0, n) for n in mask.shape[::-1])
        return mask_reply(MaskChange(task, box, mask, 0.0))

    def cmd_refine(self, r):
        points = r.get("points")  # the request's form first, then the state it needs
        if not isinstance(points, list) or not 0 < len(points) <= MAX_POINTS:
            raise InputError(f'refine: "points" must be a list of 1-{MAX_POINTS} {{"position": [x, y, z], '
                             '"label": "positive"|"negative"}')
        clicks = []
        for p in points:
            position = p.get("position") if isinstance(p, dict) else None
            if not isinstance(p, dict) or p.get("label") not in ("positive", "negative") \
                    or not isinstance(position, list) or len(position) != 3 \
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                               for v in position):
                raise InputError(f'refine: a point needs "position" [x, y, z] (three finite numbers, RAS mm) and '
                                 f'"label" "positive" or "negative", got {json.dumps(p)[:120]}')
            clicks.append((position, p["label"] == "positive"))
        session = self._open_session()
        t0 = time.perf_counter()
        change = session.refine(r.get("task"), clicks)
        return mask_reply(change, time.perf_counter() - t0)

    def cmd_undo(self, r):
        return mask_reply(self._open_session().undo(r.get("task")))

    def cmd_set_mask(self, r):
        from ..data.image_io import read_sitk
        session = self._open_session()
        if not isinstance(r.get("file"), str):
            raise InputError('set_mask: "file" (a mask image on the input grid) is required')
        session.set_mask(r.get("task"), read_sitk(r["file"]))
        return {"ok": True}

    def cmd_cancel(self, r):
        self.cancel.set()
        return None

    def cmd_close(self, r):
        return {"ok": True, "closing": True}


MAX_REQUEST_CHARS = 1 << 20  # one request line: a click, a file name; never the image itself
MAX_POINTS = 1000
_END = object()


class _Unreadable(str):
    """A line that is not a request: the reply's error (a str subclass, never a request)."""


def _not_json(constant):
    raise ValueError(f"{constant} is not a JSON number")


def parse_request(line: str):
    """One line -> the decoded request, or ``_Unreadable`` saying why it is none (NaN and
    Infinity are not JSON; nesting too deep for the parser is refused, not a crash)."""
    try:
        return json.loads(line, parse_constant=_not_json)
    except RecursionError:
        return _Unreadable("not JSON the worker reads: nested too deeply")
    except ValueError as exc:  # JSONDecodeError too
        return _Unreadable(f"not JSON ({getattr(exc, 'msg', exc)}): {line[:80]}")


def serve(stdin=None) -> int:
    """Read requests until "close" or the end of input. A reader thread takes the lines so that
    a "cancel" reaches a running "open" at once. A line longer than ``MAX_REQUEST_CHARS`` is
    skipped unread (never held in memory) and answered with an error; so is anything that is not
    a JSON request, and a last line cut off by the end of input."""
    stdin = stdin or sys.stdin
    worker = Worker()
    requests: "queue.Queue" = queue.Queue()

    def read():
        while True:
            line = stdin.readline(MAX_REQUEST_CHARS + 1)
            if not line:
                break
            if len(line) > MAX_REQUEST_CHARS and not line.endswith("\n"):
                while (rest := stdin.readline(MAX_REQUEST_CHARS)) and not rest.endswith("\n"):
                    pass
                requests.put(_Unreadable(f"a request line of more than {MAX_REQUEST_CHARS} characters was "
                                         "refused unread; send masks as files (set_mask)"))
                continue
            ended = not line.endswith("\n")
            line = line.strip()
            if not line:
                continue
            request = parse_request(line)
            if ended and isinstance(request, _Unreadable):
                request = _Unreadable(f"the input ended in the middle of a request: {line[:80]}")
            if isinstance(request, dict) and request.get("cmd") == "cancel":
                worker.cancel.set()
                continue
            requests.put(request)
        requests.put(_END)

    threading.Thread(target=read, name="requests", daemon=True).start()
    worker.write({"ready": True})
    while True:
        request = requests.get()
        if request is _END:
            return 0
        if isinstance(request, _Unreadable):
            worker.write({"id": None, "ok": False, "error": str(request)})
            continue
        reply = worker.handle(request)
        if reply is not None:
            worker.write(reply)
            if reply.get("closing"):
                return 0
