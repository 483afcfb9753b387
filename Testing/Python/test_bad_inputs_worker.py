"""Bad lines for the click worker's JSON-lines protocol (``universalseg worker``): each is answered
with one error reply ({"ok": false, "error": ...}, no traceback) and the worker keeps serving: the
"close" sent after it is answered, and the worker ends with 0. No model is needed: every case is
refused before one would be loaded."""
import json
import threading

import pytest

from UniversalSeg.inference import worker as worker_module

REFINE = '{"id": 7, "cmd": "refine", "task": "liver", "points": [{"position": %s, "label": "positive"}]}'
CASES = {  # name: (input lines, the error's words)
    "not-json": ("hello\n", "not JSON (Expecting value)"),
    "truncated-json": ('{"id": 1, "cmd": "mask"\n', "not JSON (Expecting ',' delimiter)"),
    "json-null": ("null\n", 'a request is a JSON object with a "cmd"'),
    "json-list": ('[1, 2]\n', 'a request is a JSON object with a "cmd"'),
    "json-number": ("42\n", 'a request is a JSON object with a "cmd"'),
    "no-cmd": ('{"id": 1}\n', 'a request is a JSON object with a "cmd"'),
    "cmd-not-text": ('{"id": 1, "cmd": 5}\n', 'a request is a JSON object with a "cmd"'),
    "unknown-cmd": ('{"id": 1, "cmd": "format_disk"}\n', "unknown command 'format_disk'"),
    "internal-name": ('{"id": 1, "cmd": "__bad_json__"}\n', "unknown command '__bad_json__'"),
    "nested-too-deep": ("[" * 100000 + "]" * 100000 + "\n", "nested too deeply"),
    "huge-request": ('{"id": 1, "cmd": "mask", "pad": "' + "x" * (2 << 20) + '"}\n',
                     "a request line of more than 1048576 characters was refused unread"),
    "mask-before-open": ('{"id": 1, "cmd": "mask", "task": "liver"}\n', 'no image is open: send "open" first'),
    "undo-before-open": ('{"id": 1, "cmd": "undo", "task": "liver"}\n', 'no image is open: send "open" first'),
    "set-mask-before-open": ('{"id": 1, "cmd": "set_mask", "task": "liver", "file": "m.nrrd"}\n',
                             'no image is open: send "open" first'),
    "refine-before-open": (REFINE % "[1, 2, 3]" + "\n", 'no image is open: send "open" first'),
    "open-without-image": ('{"id": 1, "cmd": "open", "model": "m", "modality": "CT"}\n',
                           'open: "image" is required (a string)'),
    "position-nan": (REFINE % "[NaN, 0, 0]" + "\n", "not JSON (NaN is not a JSON number)"),
    "position-infinity": (REFINE % "[0, -Infinity, 0]" + "\n", "not JSON (-Infinity is not a JSON number)"),
    "position-huge": (REFINE % "[1e999, 0, 0]" + "\n", "three finite numbers, RAS mm"),
    "position-text": (REFINE % '["a", "b", "c"]' + "\n", "three finite numbers, RAS mm"),
    "position-two": (REFINE % "[1, 2]" + "\n", "three finite numbers, RAS mm"),
    "position-bool": (REFINE % "[true, 0, 0]" + "\n", "three finite numbers, RAS mm"),
    "points-empty": ('{"id": 7, "cmd": "refine", "task": "liver", "points": []}\n',
                     '"points" must be a list of 1-1000'),
    "points-too-many": ('{"id": 7, "cmd": "refine", "points": [%s]}\n' % ",".join(['{"position": [0, 0, 0], '
                                                                                  '"label": "positive"}'] * 1001),
                        '"points" must be a list of 1-1000'),
    "label-unknown": ('{"id": 7, "cmd": "refine", "points": [{"position": [0, 0, 0], "label": "maybe"}]}\n',
                      '"label" "positive" or "negative"'),
}


def _serve(text, capsys, timeout=60):
    import io
    result = {}
    thread = threading.Thread(target=lambda: result.update(code=worker_module.serve(io.StringIO(text))),
                              daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the worker stopped answering"
    out, err = capsys.readouterr()
    return result.get("code"), [json.loads(line) for line in out.splitlines()], err


@pytest.mark.parametrize("case", CASES)
def test_a_bad_request_is_answered_and_the_worker_keeps_serving(case, capsys):
    line, message = CASES[case]
    code, replies, err = _serve(line + '{"id": 99, "cmd": "close"}\n', capsys)
    assert "Traceback" not in err and "internal error" not in json.dumps(replies), (replies, err[-2000:])
    assert replies[0] == {"ready": True}
    assert len(replies) == 3, replies
    assert replies[1]["ok"] is False and message in replies[1]["error"], replies[1]
    assert "\n" not in replies[1]["error"]
    assert replies[2] == {"id": 99, "ok": True, "closing": True} and code == 0


def test_the_input_ending_in_the_middle_of_a_request_is_answered_and_ends_the_worker(capsys):
    code, replies, err = _serve('{"id": 1, "cmd": "mask"}\n{"id": 2, "cmd": "ma', capsys)
    assert code == 0 and "Traceback" not in err
    assert [r.get("error", "") for r in replies[1:]] == [
        'no image is open: send "open" first', 'the input ended in the middle of a request: {"id": 2, "cmd": "ma']
