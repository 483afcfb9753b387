"""Model catalog and downloads: streaming, resumable, checksum-verified, cached; offline import.

The catalog (``Resources/Models.json``) lists published packages: id, version, url, sha256, size,
license, tasks, modalities. An entry with ``file`` (a path relative to the catalog) is SHIPPED:
installed with the extension, used in place, offline, after its checksum is verified.
``fetch_model`` streams the zip into the user cache
(``$UNIVERSALSEG_CACHE`` or ``~/.cache/universalseg``) as ``<id>-<version>.zip.part``, continuing
a partial download with an HTTP Range request, hashes it while it arrives, and only renames it
into place when the SHA-256 matches; on a mismatch the partial file is deleted, so the cache never
holds a wrong model. ``import_model`` copies a local zip (offline sites, proxies) into the cache
after validating it. ``resolve_model`` turns what a user typed (folder, zip, or catalog id) into
a loaded, validated ``ModelPackage``.

A download has an overall deadline (``UNIVERSALSEG_DOWNLOAD_TIMEOUT`` seconds, default 3600): a
server that sends its headers or its bytes slowly forever (slow-loris), so that no single read
ever waits long, is cut off when it passes; a server silent for 60 s ends it too. What arrived by
then is kept as the ``.part`` to continue from.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import socket
import threading
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from .errors import InputError
from .file_modes import atomic_write
from .model_metadata import MAX_MEMBER_BYTES, PackageError
from .structured_file import read_structured

if TYPE_CHECKING:
    from .model_package import ModelPackage

__all__ = ["CHUNK", "DOWNLOAD_DEADLINE_S", "MAX_DOWNLOAD_BYTES", "SAFE_NAME", "CatalogEntry", "DownloadError",
           "cache_dir", "cached_packages", "default_catalog_path", "download_deadline", "fetch_model", "import_model",
           "load_model_catalog", "resolve_model", "resolve_model_path", "sha256_of", "shipped_model_path"]

CHUNK = 1 << 20
# Catalog ids, versions and cache file names become paths in the cache: no separators, no "..".
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
# no catalog entry may make us download more than a package can hold (its members, plus zip overhead)
MAX_DOWNLOAD_BYTES = sum(MAX_MEMBER_BYTES.values()) + (1 << 20)
DOWNLOAD_DEADLINE_S = 3600.0  # the whole download, unless UNIVERSALSEG_DOWNLOAD_TIMEOUT says otherwise


class DownloadError(RuntimeError):
    """A download that failed or did not match its checksum; nothing is left in the cache."""


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    version: str
    sha256: str
    url: str = ""
    file: str = ""  # shipped with UniversalSeg: relative to the catalog file
    size: Optional[int] = None
    license: str = ""
    tasks: tuple = ()
    modalities: tuple = ()
    description: str = ""

    @property
    def filename(self) -> str:
        return f"{self.id}-{self.version}.zip"

    @property
    def shipped(self) -> bool:
        return bool(self.file)


def cache_dir() -> Path:
    root = os.environ.get("UNIVERSALSEG_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "universalseg"


def default_catalog_path() -> Path:
    env = os.environ.get("UNIVERSALSEG_MODEL_CATALOG")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "Resources" / "Models.json",
                      here.parent / "UniversalSegResources" / "Models.json"):
        if candidate.is_file():
            return candidate
    return here.parent / "Resources" / "Models.json"


def load_model_catalog(path: Optional[Path] = None) -> list[CatalogEntry]:
    path = Path(path) if path else default_catalog_path()
    if not path.is_file():
        return []
    data = read_structured(path, "model catalog", PackageError)
    if not isinstance(data, dict):
        raise PackageError(f"model catalog {path} is not a JSON object")
    entries = []
    for i, raw in enumerate(data.get("models", [])):
        try:
            entry = CatalogEntry(**{**raw, "tasks": tuple(raw.get("tasks", ())),
                                    "modalities": tuple(raw.get("modalities", ()))})
        except TypeError as exc:
            raise PackageError(f"{path}: models[{i}] is malformed ({exc})") from None
        if not re.fullmatch(r"[0-9a-fA-F]{64}", str(entry.sha256)):
            raise PackageError(f"{path}: models[{i}] ({entry.id}) needs a 64-hex-digit sha256")
        if entry.size is not None and (isinstance(entry.size, bool) or not isinstance(entry.size, int)
                                       or not 0 < entry.size <= MAX_DOWNLOAD_BYTES):
            raise PackageError(f"{path}: models[{i}] ({entry.id}) size {entry.size!r} must be the zip's size in "
                               f"bytes (1 to {MAX_DOWNLOAD_BYTES})")
        if not entry.url and not entry.file:
            raise PackageError(f"{path}: models[{i}] ({entry.id}) needs a 'url' or a shipped 'file'")
        if entry.url and not entry.file and entry.size is None:  # the bound a download is held to
            raise PackageError(f"{path}: models[{i}] ({entry.id}) needs 'size', the zip's size in bytes: a "
                               "download is stopped when the server sends more")
        if entry.file and (not isinstance(entry.file, str) or Path(entry.file).is_absolute()
                           or ".." in Path(entry.file).parts or not entry.file.endswith(".zip")):
            raise PackageError(f"{path}: models[{i}] ({entry.id}) file {entry.file!r} must be a .zip path "
                               "inside the catalog's folder")
        for field in ("id", "version"):
            if not SAFE_NAME.fullmatch(str(getattr(entry, field))):
                raise PackageError(f"{path}: models[{i}] {field} {getattr(entry, field)!r} is not allowed: use "
                                   "letters, digits, '.', '_', '+' or '-', starting with a letter or digit")
        entries.append(entry)
    return entries


def shipped_model_path(entry: CatalogEntry, catalog: Optional[Path] = None) -> Path:
    """The verified path of a shipped package (``entry.file``), used in place."""
    path = (Path(catalog) if catalog else default_catalog_path()).parent / entry.file
    if not path.is_file():
        raise PackageError(f"the shipped model {entry.id} {entry.version} is missing ({path}); "
                           "reinstall UniversalSeg")
    if entry.size is not None and path.stat().st_size != entry.size or sha256_of(path) != entry.sha256.lower():
        raise PackageError(f"the shipped model file {path} does not match its checksum in the model "
                           "catalog: it was changed or damaged; reinstall UniversalSeg")
    return path


def cached_packages(cache: Optional[Path] = None) -> list[Path]:
    """Model zips in the cache (downloaded or imported), by name."""
    return sorted(((cache or cache_dir()) / "models").glob("*.zip"))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download_deadline() -> float:
    """Seconds a whole download may take: ``UNIVERSALSEG_DOWNLOAD_TIMEOUT``, else 3600."""
    text = os.environ.get("UNIVERSALSEG_DOWNLOAD_TIMEOUT", "").strip()
    if not text:
        return DOWNLOAD_DEADLINE_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 1e7:  # NaN too
        raise InputError(f"UNIVERSALSEG_DOWNLOAD_TIMEOUT={text[:40]!r}: give the seconds a download may take "
                         "(a number above 0), or unset it for the default of 3600")
    return seconds


class _Watchdog:
    """Shuts the download's sockets down when the deadline passes: a read blocked in the kernel
    then returns, whatever the server does. Every connection urllib opens (redirects, proxies,
    HTTPS) is registered through ``opener``'s connection classes."""

    def __init__(self, seconds: float):
        self.seconds, self.expired, self._sockets = seconds, False, []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()

    def _expire(self):
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def register(self, sock):
        with self._lock:
            self._sockets.append(sock)
        if self.expired:
            self._expire()

    def opener(self):
        watch = self

        class HTTP(http.client.HTTPConnection):
            def connect(self):
                super().connect()
                watch.register(self.sock)

        class HTTPS(http.client.HTTPSConnection):
            def connect(self):
                super().connect()
                watch.register(self.sock)

        class HTTPHandler(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(HTTP, req)

        class HTTPSHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(HTTPS, req, context=self._context)

        return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


def fetch_model(entry: CatalogEntry, cache: Optional[Path] = None, progress: bool = True,
                timeout: float = 60.0, on_bytes: Optional[Callable[[int, Optional[int]], None]] = None,
                deadline: Optional[float] = None) -> Path:
    """Download (or reuse) ``entry`` into the cache; returns the verified zip's path.
    ``progress`` draws a bar; ``on_bytes(done, total)`` is called per chunk (programs);
    ``timeout``: seconds one read may wait; ``deadline``: seconds the whole download may take
    (default ``download_deadline()``). Past the deadline, what arrived is kept to continue from."""
    deadline = download_deadline() if deadline is None else deadline
    with _Watchdog(deadline) as watch:
        try:
            return _fetch(entry, cache, progress, timeout, on_bytes, watch)
        except DownloadError:
            if not watch.expired:
                raise
        part = (cache or cache_dir()) / "models" / (entry.filename + ".part")
        if part.exists() and part.stat().st_size == 0:
            part.unlink()  # nothing arrived: nothing to continue from
        kept = part.stat().st_size if part.exists() else 0
        raise DownloadError(f"the download of {entry.id} did not finish within {deadline:g} s "
                            f"(UNIVERSALSEG_DOWNLOAD_TIMEOUT){f': {kept} bytes arrived and are kept' if kept else ''}"
                            "; the server is too slow or stalled: run the same command again later to continue, "
                            "raise the limit, or import a local copy with `universalseg models import FILE.zip`")


def _fetch(entry: CatalogEntry, cache: Optional[Path], progress: bool, timeout: float,
           on_bytes: Optional[Callable[[int, Optional[int]], None]], watch: _Watchdog) -> Path:
    folder = (cache or cache_dir()) / "models"
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / entry.filename
    if dest.exists():
        if sha256_of(dest) == entry.sha256.lower():
            return dest
        dest.unlink()  # a changed or damaged cached file is never used
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have and entry.size and have >= entry.size:  # a complete .part (stopped before the rename)
        if have == entry.size and sha256_of(part) == entry.sha256.lower():
            os.replace(part, dest)
            return dest
        part.unlink()  # too long or wrong: start again
        have = 0
    request = urllib.request.Request(entry.url, headers={"User-Agent": "UniversalSeg"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    opener = watch.opener()
    try:
        try:
            response = opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not have:  # 416: the server cannot continue this .part
                raise
            part.unlink()
            have = 0
            request.remove_header("Range")
            response = opener.open(request, timeout=timeout)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        raise DownloadError(f"cannot download {entry.id} from {entry.url}: {_reason(exc)}; check the network "
                            "or proxy (https_proxy), or import a local copy with "
                            "`universalseg models import FILE.zip`") from None
    with response:
        status = getattr(response, "status", None)
        resumed = have and status == 206
        h = hashlib.sha256()
        if resumed:
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    h.update(chunk)
        else:
            have = 0
        length = response.headers.get("Content-Length")
        if length is not None and not re.fullmatch(r"[0-9]{1,20}", length.strip()):
            raise DownloadError(f"{entry.url} sent a malformed Content-Length {length[:40]!r} (a broken server or "
                                f"proxy); nothing was downloaded; try again later, or import a local copy with "
                                "`universalseg models import FILE.zip`")
        total = (int(length) + have) if length is not None else entry.size
        limit = entry.size or MAX_DOWNLOAD_BYTES
        if total is not None and total > limit:  # announced: refused before a byte is written
            part.unlink(missing_ok=True)
            raise DownloadError(f"{entry.url} sends more than the {limit} bytes the catalog allows for "
                                f"{entry.id} (it announces {total}); nothing was kept")
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=f"downloading {entry.id}")
        try:
            with open(part, "ab" if resumed else "wb") as f:
                # as it runs, whatever the server announced (or did not): never a byte past the
                # catalog's size on disk (one more is read to tell "more" from "exactly")
                for chunk in iter(lambda: response.read(min(CHUNK, limit - f.tell() + 1)), b""):
                    if f.tell() + len(chunk) > limit:
                        raise DownloadError(f"{entry.url} sends more than the {limit} bytes the catalog "
                                            f"allows for {entry.id}; the download was stopped and deleted")
                    f.write(chunk)
                    h.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    if on_bytes is not None:
                        on_bytes(f.tell(), total)
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # a truncated chunked response (IncompleteRead) too: what arrived is kept to continue from
            raise DownloadError(f"the download of {entry.id} broke off ({_reason(exc)}); run the same "
                                "command again to continue where it stopped") from None
        finally:
            if bar is not None:
                bar.close()
        received = part.stat().st_size
        if total and received < total:  # the server closed the connection early, without an error
            raise DownloadError(f"the download of {entry.id} broke off at {received} of {total} bytes; run the "
                                "same command again to continue where it stopped")
    digest = h.hexdigest()
    if digest != entry.sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(f"checksum mismatch for {entry.id} from {entry.url}: expected "
                            f"{entry.sha256}, got {digest}; the file was deleted (a damaged or "
                            "tampered download); try again or ask the model's publisher")
    os.replace(part, dest)
    return dest


def _reason(exc: BaseException) -> str:
    """One short, printable line for a network error; the server's words are escaped (its status
    line can hold anything)."""
    from .model_metadata import printable
    if isinstance(exc, http.client.IncompleteRead):
        return "the server closed the connection in the middle of a chunk"
    if isinstance(exc, http.client.HTTPException):
        return f"the server's answer is not valid HTTP ({type(exc).__name__}: {printable(str(exc)[:120])})"
    return printable(str(exc)[:200]) or type(exc).__name__


def import_model(zip_path: str | Path, cache: Optional[Path] = None, name: Optional[str] = None,
                 replace: bool = False) -> Path:
    """Validate a local model zip and copy it into the cache (offline installation)."""
    from .model_package import load_package  # torch: only where weights are read
    zip_path = Path(zip_path)
    if zip_path.is_dir() or (zip_path.exists() and not zipfile.is_zipfile(zip_path)):
        raise PackageError(f"{zip_path} is not a zip file; import takes a model package .zip")
    name = name or zip_path.name
    if not SAFE_NAME.fullmatch(name) or not name.endswith(".zip"):
        raise InputError(f"--name {name!r} is not allowed: a file name ending in .zip, of letters, digits, "
                         "'.', '_', '+' or '-' (no folders)")
    load_package(zip_path)  # refuses corrupt, foreign or newer packages before copying
    folder = (cache or cache_dir()) / "models"
    dest = folder / name
    if dest.exists() and not replace and sha256_of(dest) != sha256_of(zip_path):
        raise InputError(f"the cache already holds a different model named {name} ({dest}); choose another "
                         "--name, or pass --replace to replace it")
    # all or nothing (a full disk leaves no half copy behind); the temporary ends in .part, so it
    # is never listed as a cached model (*.zip)
    return atomic_write(dest, lambda tmp: shutil.copyfile(zip_path, tmp), suffix=".part")


def resolve_model_path(spec: str, progress: bool = True, catalog: Optional[Path] = None) -> Path:
    """A package folder, a .zip, a cached name, or a catalog id (downloaded once) -> its path.
    A bare name (no folder separator) that is a catalog id or a cached name AND a file or folder in
    the working folder is refused: the shipped, checksum-verified model must not be swapped for
    whatever lies there under its name (``./NAME`` means the local one)."""
    path = Path(spec)
    bare = SAFE_NAME.fullmatch(spec) is not None  # no folder separator
    cached = cache_dir() / "models" / spec
    entries = {e.id: e for e in load_model_catalog(catalog)} if bare or not path.exists() else {}
    if path.exists():
        if bare and (spec in entries or cached.exists()):
            kind = "a catalog model id" if spec in entries else "a model in the cache"
            raise InputError(f"model {spec!r} is both {kind} and a {'folder' if path.is_dir() else 'file'} "
                             f"in the working folder; write ./{spec} for the local one, or run from another "
                             "folder for the catalog's")
        return path
    if bare and cached.exists():
        return cached
    if spec in entries and entries[spec].shipped:
        return shipped_model_path(entries[spec], catalog)
    if spec in entries:
        return fetch_model(entries[spec], progress=progress)
    known = sorted(entries) + [p.name for p in cached_packages()]
    raise PackageError(f"model {spec!r} is neither a package folder, a .zip file, nor a known "
                       f"model id; known: {known or 'none (import one with universalseg models import)'}")


def resolve_model(spec: str, progress: bool = True, catalog: Optional[Path] = None) -> ModelPackage:
    """A package folder, a .zip, a cached name, or a catalog id -> a validated ModelPackage."""
    from .model_package import load_package  # torch: only where weights are read
    return load_package(resolve_model_path(spec, progress, catalog))
