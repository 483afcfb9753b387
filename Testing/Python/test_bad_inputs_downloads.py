"""Bad catalogs, broken servers and bad zips for ``models download``, ``models import`` and
``predict --model ID``: exit 3 (model problem) or 2 (bad name), one line, no traceback, and
nothing left in the cache (no file, no half download) or anywhere else."""
import hashlib
import json
import shutil
import socket
import time
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from bad_input_checks import assert_refused, tree_state
from test_model_download import model_zip, server  # noqa: F401 - fixtures
from UniversalSeg.cli import main


def _entry(**fields):
    return {"id": "brain", "version": "1.0", "url": "http://127.0.0.1:9/none.zip", "sha256": "0" * 64,
            "size": 100, **fields}


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def place(tmp_path, monkeypatch, server, model_zip):  # noqa: F811
    """A cache (with its models folder), a catalog file and a web root; env points at them."""
    root, url = server
    (tmp_path / "cache" / "models").mkdir(parents=True)
    monkeypatch.setenv("UNIVERSALSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UNIVERSALSEG_MODEL_CATALOG", str(tmp_path / "Models.json"))
    monkeypatch.chdir(tmp_path)
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))  # predict checks its input before the model
    data = model_zip.read_bytes()
    shutil.copy(model_zip, root / "model.zip")
    good = {"url": f"{url}/model.zip", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return {"dir": tmp_path, "www": root, "url": url, "good": good, "zip": model_zip}


def catalog(*entries):
    return json.dumps({"models": list(entries)})


DOWNLOADS = {  # name: (catalog text(place), model id, exit code, message)
    "unknown-id": (lambda p: catalog(), "brain", 2, "no model 'brain' in the catalog"),
    "catalog-not-json": (lambda p: "{models: [", "brain", 3, "is not valid JSON"),
    "catalog-list": (lambda p: "[]", "brain", 3, "is not a JSON object"),
    "catalog-unknown-field": (lambda p: catalog(_entry(weights="x")), "brain", 3, "models[0] is malformed"),
    "catalog-sha": (lambda p: catalog(_entry(sha256="abc")), "brain", 3, "needs a 64-hex-digit sha256"),
    "catalog-id-path": (lambda p: catalog(_entry(id="../../evil")), "../../evil", 3,
                        "id '../../evil' is not allowed"),
    "catalog-version-path": (lambda p: catalog(_entry(version="1/../../x")), "brain", 3,
                             "version '1/../../x' is not allowed"),
    "catalog-size-text": (lambda p: catalog(_entry(size="big")), "brain", 3, "size 'big' must be the zip's size"),
    "catalog-size-negative": (lambda p: catalog(_entry(size=-5)), "brain", 3, "size -5 must be the zip's size"),
    "server-404": (lambda p: catalog(_entry(**{**p["good"], "url": p["url"] + "/missing.zip"})), "brain", 3,
                   "HTTP Error 404"),
    "server-down": (lambda p: catalog(_entry(url=f"http://127.0.0.1:{_closed_port()}/m.zip")), "brain", 3,
                    "Connection refused"),
    "url-scheme": (lambda p: catalog(_entry(url="gopher://example.org/m.zip")), "brain", 3, "unknown url type"),
    "checksum": (lambda p: catalog(_entry(**{**p["good"], "sha256": "1" * 64})), "brain", 3,
                 "checksum mismatch for brain"),
    "too-long": (lambda p: catalog(_entry(**{**p["good"], "size": 1000})), "brain", 3,
                 "sends more than the 1000 bytes"),
    "catalog-no-size": (lambda p: catalog({k: v for k, v in _entry(**p["good"]).items() if k != "size"}),
                        "brain", 3, "models[0] (brain) needs 'size', the zip's size in bytes"),
    "server-chunked-cut": (lambda p: _served(p, "chunkcut"), "brain", 3,
                           "the download of brain broke off (the server closed the connection in the middle "
                           "of a chunk)"),
    "server-text-length": (lambda p: _served(p, "textlength"), "brain", 3, "sent a malformed Content-Length '12ab'"),
    "server-no-length-too-long": (lambda p: _served(p, "nolength"), "brain", 3,
                                  "bytes the catalog allows for brain; the download was stopped and deleted"),
    "server-huge-length": (lambda p: _served(p, "hugelength"), "brain", 3, "(it announces 1099511627776)"),
    "server-garbage-status": (lambda p: _served(p, "garbage"), "brain", 3,
                              "answer is not valid HTTP (BadStatusLine: HELLO THERE\\r\\n)"),
    "server-slow-loris": (lambda p: _served(p, "drip"), "brain", 3,
                          "the download of brain did not finish within 1.5 s (UNIVERSALSEG_DOWNLOAD_TIMEOUT)"),
    "server-headers-then-silence": (lambda p: _served(p, "silent"), "brain", 3,
                                    "the download of brain did not finish within 1.5 s"),
    "server-slow-headers": (lambda p: _served(p, "slowheaders"), "brain", 3,
                            "the download of brain did not finish within 1.5 s"),
    "download-timeout-not-a-number": (lambda p: _served(p, "drip"), "brain", 2,
                                      "UNIVERSALSEG_DOWNLOAD_TIMEOUT='soon': give the seconds a download may take"),
}
# what arrived before a connection broke off is kept to continue from (a Range request next time);
# the test checks that it is no more than a true prefix of the package, and nothing else is written
KEEPS_PARTIAL = {"server-chunked-cut", "server-slow-loris"}
# a server that never finishes: the overall deadline (UNIVERSALSEG_DOWNLOAD_TIMEOUT), made short
# here, ends the download
DEADLINE = {"server-slow-loris": "1.5", "server-headers-then-silence": "1.5", "server-slow-headers": "1.5",
            "download-timeout-not-a-number": "soon"}


def _served(place, mode):
    """The good package, served by one of test_model_download's broken-server modes."""
    return catalog(_entry(**{**place["good"], "url": f"{place['url']}/{mode}/model.zip"}))


@pytest.mark.parametrize("case", DOWNLOADS)
def test_a_bad_catalog_or_server_leaves_nothing_in_the_cache(place, capsys, monkeypatch, case):
    text, model_id, code_expected, message = DOWNLOADS[case]
    (place["dir"] / "Models.json").write_text(text(place))
    if case in DEADLINE:
        monkeypatch.setenv("UNIVERSALSEG_DOWNLOAD_TIMEOUT", str(DEADLINE[case]))
    before = tree_state(place["dir"])
    for args in (["models", "download", model_id, "--progress", "none"],
                 ["predict", "--model", model_id, "--input", "ct.nrrd", "--modality", "CT",
                  "--output", "out.seg.nrrd", "--progress", "none"]):
        if case == "unknown-id" and args[0] == "predict":
            code_expected, message = 3, "is neither a package folder, a .zip file, nor a known model id"
        started = time.monotonic()
        code = main(args)
        limit = float(DEADLINE[case]) if DEADLINE.get(case, "").replace(".", "").isdigit() else 60
        assert time.monotonic() - started < limit + 10  # ended by the deadline, not by the server
        after = tree_state(place["dir"])
        if case in KEEPS_PARTIAL:
            part = place["dir"] / "cache" / "models" / "brain-1.0.zip.part"
            kept = part.read_bytes()
            assert 0 < len(kept) < len(place["zip"].read_bytes()) and place["zip"].read_bytes().startswith(kept)
            del after[str(part)]
        assert_refused(code, capsys.readouterr().err, code_expected, message, before, after)


def _not_a_zip(p):
    (p["dir"] / "m.zip").write_text("hello")
    return ["m.zip"]


def _foreign_zip(p):
    with zipfile.ZipFile(p["dir"] / "m.zip", "w") as z:
        z.writestr("README.txt", "an nnU-Net model")
    return ["m.zip"]


def _taken_name(p):
    other = p["dir"] / "cache" / "models" / "model.zip"
    other.write_bytes(b"PK another model")
    return [str(p["zip"])]


IMPORTS = {  # name: (arguments(place), exit code, message)
    "missing": (lambda p: ["nope.zip"], 3, "does not exist"),
    "folder": (lambda p: [str(p["dir"])], 3, "is not a zip file"),
    "not-a-zip": (_not_a_zip, 3, "is not a zip file"),
    "foreign-zip": (_foreign_zip, 3, "model.json is missing in the zip"),
    "name-path": (lambda p: [str(p["zip"]), "--name", "../../outside.zip"], 2,
                  "--name '../../outside.zip' is not allowed"),
    "name-suffix": (lambda p: [str(p["zip"]), "--name", "model.exe"], 2, "--name 'model.exe' is not allowed"),
    "name-taken": (_taken_name, 2, "already holds a different model named model.zip"),
}


@pytest.mark.parametrize("case", IMPORTS)
def test_a_bad_import_copies_nothing(place, capsys, case):
    arguments, code_expected, message = IMPORTS[case]
    args = arguments(place)
    before = tree_state(place["dir"])
    code = main(["models", "import", *args])
    assert_refused(code, capsys.readouterr().err, code_expected, message, before, tree_state(place["dir"]))


def test_import_replaces_only_when_asked(place, capsys):
    _taken_name(place)
    assert main(["models", "import", str(place["zip"]), "--replace"]) == 0
    assert (place["dir"] / "cache/models/model.zip").read_bytes() == place["zip"].read_bytes()
    assert main(["models", "import", str(place["zip"])]) == 0  # the same model again: nothing to ask
