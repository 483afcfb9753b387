"""Downloads from a local HTTP server (127.0.0.1) and file:// URLs: checksum, cache, resume."""
import hashlib
import http.server
import shutil
import socket
import threading

import pytest

from UniversalSeg.model_download import (
    CatalogEntry,
    DownloadError,
    fetch_model,
    import_model,
    load_model_catalog,
    resolve_model,
)
from UniversalSeg.model_package import PackageError


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files and honours 'Range: bytes=N-' (SimpleHTTPRequestHandler does not)."""
    ranges = []

    def log_message(self, *args):
        pass

    def handle(self):
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):  # the client stopped reading (by design)
            pass

    def do_GET(self):
        # /cut/FILE: announces the whole file, sends half, closes cleanly; /norange/FILE: 416 on Range;
        # BROKEN modes below: a broken server's answers (chunked and cut, no size and too long, ...)
        mode, _, rest = self.path.lstrip("/").partition("/")
        mode = mode if mode in ("cut", "norange", *BROKEN) else ""
        path = self.translate_path("/" + rest if mode else self.path)
        try:
            data = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return
        start = 0
        header = self.headers.get("Range")
        if header and mode == "norange":
            self.send_error(416)
            return
        if mode in BROKEN:
            BROKEN[mode](self, data)
            self.close_connection = True
            return
        if mode == "cut":
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        if header:
            start = int(header.split("=")[1].split("-")[0])
            RangeHandler.ranges.append(start)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


def _chunked_cut(handler, data):
    """Chunked transfer, half the file in one chunk, then the connection closes without the last
    (empty) chunk: http.client raises IncompleteRead."""
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    half = data[: len(data) // 2]
    handler.wfile.write(b"%x\r\n" % len(data) + half)


def _text_length(handler, data):
    handler.send_response(200)
    handler.send_header("Content-Length", "12ab")
    handler.end_headers()
    handler.wfile.write(data)


def _no_length_too_long(handler, data):
    """No size announced, the file and then 8 MiB more (bounded: the test never waits long)."""
    handler.send_response(200)
    handler.end_headers()
    handler.wfile.write(data)
    for _ in range(128):
        handler.wfile.write(bytes(1 << 16))


def _huge_length(handler, data):
    handler.send_response(200)
    handler.send_header("Content-Length", str(1 << 40))
    handler.end_headers()
    handler.wfile.write(data)


def _garbage_status(handler, data):
    handler.wfile.write(b"HELLO THERE\r\n\r\n")


def _wait(handler, seconds):
    """Up to ``seconds``, or until the client has closed the connection."""
    import select
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if select.select([handler.connection], [], [], 0.05)[0]:
            try:
                if not handler.connection.recv(1, socket.MSG_PEEK):
                    return False
            except OSError:
                return False
    return True


def _drip(handler, data):
    """Slow-loris: the headers, then one byte every 50 ms (a 1 MB package would take 14 hours);
    bounded at 30 s so that a test never waits longer."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    for byte in data[:600]:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        if not _wait(handler, 0.05):
            return


def _silent(handler, data):
    """The headers, then nothing (for up to 30 s)."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.flush()
    _wait(handler, 30)


def _slow_headers(handler, data):
    """The status line and headers one byte every 50 ms, forever (up to 30 s): no read ever waits
    for long, so only an overall deadline ends it."""
    for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 10000:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        if not _wait(handler, 0.05):
            return


BROKEN = {"chunkcut": _chunked_cut, "textlength": _text_length, "nolength": _no_length_too_long,
          "hugelength": _huge_length, "garbage": _garbage_status, "drip": _drip, "silent": _silent,
          "slowheaders": _slow_headers}


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.ranges = []
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def model_zip(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("zip") / "model.zip"
    shutil.make_archive(str(out.with_suffix("")), "zip", trained_run["package"])
    return out


def entry(url, data, **kw):
    return CatalogEntry(id="synthetic", version="1.0", url=url, sha256=hashlib.sha256(data).hexdigest(),
                        size=len(data), **kw)


def test_download_verifies_and_caches(server, model_zip, tmp_path):
    root, base = server
    shutil.copy(model_zip, root / "m.zip")
    data = model_zip.read_bytes()
    path = fetch_model(entry(f"{base}/m.zip", data), cache=tmp_path / "cache", progress=False)
    assert path.read_bytes() == data
    (root / "m.zip").unlink()  # the second call is served from the cache
    assert fetch_model(entry(f"{base}/m.zip", data), cache=tmp_path / "cache", progress=False) == path


def test_wrong_checksum_fails_and_leaves_nothing_cached(server, model_zip, tmp_path):
    root, base = server
    shutil.copy(model_zip, root / "m.zip")
    bad = CatalogEntry(id="synthetic", version="1.0", url=f"{base}/m.zip",
                       sha256=hashlib.sha256(b"something else").hexdigest(), size=model_zip.stat().st_size)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch_model(bad, cache=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_interrupted_download_resumes_with_a_range_request(server, model_zip, tmp_path):
    root, base = server
    shutil.copy(model_zip, root / "m.zip")
    data = model_zip.read_bytes()
    folder = tmp_path / "cache" / "models"
    folder.mkdir(parents=True)
    half = len(data) // 2
    (folder / "synthetic-1.0.zip.part").write_bytes(data[:half])
    path = fetch_model(entry(f"{base}/m.zip", data), cache=tmp_path / "cache", progress=False)
    assert RangeHandler.ranges == [half]
    assert path.read_bytes() == data
    assert not (folder / "synthetic-1.0.zip.part").exists()


def test_file_urls_and_missing_servers(model_zip, tmp_path):
    data = model_zip.read_bytes()
    path = fetch_model(entry(model_zip.as_uri(), data), cache=tmp_path / "c1", progress=False)
    assert path.read_bytes() == data
    with pytest.raises(DownloadError, match="cannot download"):
        fetch_model(entry("http://127.0.0.1:9/none.zip", data), cache=tmp_path / "c2", progress=False)


def test_offline_import_validates_and_resolves_by_name(model_zip, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIVERSALSEG_CACHE", str(tmp_path / "cache"))
    path = import_model(model_zip, name="synthetic.zip")
    assert path == tmp_path / "cache" / "models" / "synthetic.zip"
    assert list(resolve_model("synthetic.zip").config.tasks) == ["liver", "spleen", "kidney", "liver-tumor"]
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(PackageError):
        import_model(junk)
    assert not (tmp_path / "cache" / "models" / "junk.zip").exists()


def test_catalog_ids_resolve_through_the_download(server, model_zip, tmp_path, monkeypatch):
    root, base = server
    shutil.copy(model_zip, root / "m.zip")
    data = model_zip.read_bytes()
    catalog = tmp_path / "Models.json"
    e = entry(f"{base}/m.zip", data)
    import json
    catalog.write_text(json.dumps({"models": [{**e.__dict__, "tasks": list(e.tasks), "modalities": []}]}))
    monkeypatch.setenv("UNIVERSALSEG_CACHE", str(tmp_path / "cache"))
    assert load_model_catalog(catalog)[0].id == "synthetic"
    package = resolve_model("synthetic", progress=False, catalog=catalog)
    assert package.spacing == (5.625, 5.625, 5.625)
    with pytest.raises(PackageError, match="known model id"):
        resolve_model("nope", catalog=catalog)


def test_shipped_model_catalog_is_valid():
    load_model_catalog()


def test_names_from_catalogs_and_imports_never_leave_the_cache(model_zip, tmp_path, monkeypatch):
    import json
    monkeypatch.setenv("UNIVERSALSEG_CACHE", str(tmp_path / "cache"))
    for name in ("../../outside.zip", "sub/dir.zip", ".hidden.zip", "model.exe"):
        with pytest.raises(ValueError, match="is not allowed"):
            import_model(model_zip, name=name)
    assert not (tmp_path / "outside.zip").exists() and not list(tmp_path.rglob("*outside*"))
    data = model_zip.read_bytes()
    for field, value, message in (("id", "../../evil", "id"), ("version", "1/../../x", "version"),
                                  ("sha256", "z" * 64, "sha256"), ("file", "../../outside.zip", "file"),
                                  ("file", "/etc/model.zip", "file"), ("file", "Models/x.tar", "file"),
                                  ("url", "", "needs a 'url' or a shipped 'file'")):
        e = entry(model_zip.as_uri(), data)
        raw = {**e.__dict__, "tasks": [], "modalities": [], field: value}
        catalog = tmp_path / f"{field}.json"
        catalog.write_text(json.dumps({"models": [raw]}))
        with pytest.raises(PackageError, match=message):
            load_model_catalog(catalog)


def test_a_download_larger_than_its_catalog_entry_is_stopped(model_zip, tmp_path):
    data = model_zip.read_bytes()
    small = CatalogEntry(id="synthetic", version="1.0", url=model_zip.as_uri(),
                         sha256=hashlib.sha256(data).hexdigest(), size=len(data) // 4)
    with pytest.raises(DownloadError, match="sends more than"):
        fetch_model(small, cache=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_a_clean_close_mid_file_keeps_the_partial_and_resumes(server, model_zip, tmp_path):
    root, base = server
    shutil.copy(model_zip, root / "m.zip")
    data = model_zip.read_bytes()
    part = tmp_path / "cache" / "models" / "synthetic-1.0.zip.part"
    with pytest.raises(DownloadError, match="broke off at"):
        fetch_model(entry(f"{base}/cut/m.zip", data), cache=tmp_path / "cache", progress=False)
    assert part.stat().st_size == len(data) // 2  # kept, not blamed on tampering
    RangeHandler.ranges = []
    path = fetch_model(entry(f"{base}/m.zip", data), cache=tmp_path / "cache", progress=False)
    assert RangeHandler.ranges == [len(data) // 2] and path.read_bytes() == data


def test_a_complete_part_or_a_server_without_ranges_never_fails_forever(server, model_zip, tmp_path):
    root, base = server
    shutil.copy(model_zip, root / "m.zip")
    data = model_zip.read_bytes()
    folder = tmp_path / "cache" / "models"
    folder.mkdir(parents=True)
    (folder / "synthetic-1.0.zip.part").write_bytes(data)  # complete, the rename did not happen
    path = fetch_model(entry(f"{base}/gone.zip", data), cache=tmp_path / "cache", progress=False)
    assert path.read_bytes() == data and not (folder / "synthetic-1.0.zip.part").exists()
    path.unlink()
    (folder / "synthetic-1.0.zip.part").write_bytes(data[:100])
    path = fetch_model(entry(f"{base}/norange/m.zip", data), cache=tmp_path / "cache", progress=False)
    assert path.read_bytes() == data  # 416 on the Range request: started again from the first byte
