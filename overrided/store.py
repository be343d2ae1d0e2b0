"""Content-addressed blobs and the render cache, in one store folder.

Layout: ``blobs/<sha256>`` holds immutable files named by their content hash; ``cache/<key>.json``
maps a render's input hashes to the digests it produced; ``tmp/`` holds files being written.
A blob is never rewritten in place, so a transfer that opened one keeps reading the same bytes;
a blob that no catalog names any more is deleted only after the grace period.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from overrided.errors import OverridedError
from overrided.served import Blob

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class StoreError(OverridedError):
    """The store folder cannot be used."""


def digest_of_file(path: Path) -> str:
    """The sha256 (hex) of a file's bytes."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fingerprint(path: Path) -> str:
    """A file's identity without reading it: device, inode, size, mtime (ns).

    Any rewrite or replacement of a build output changes it, so render-cache keys built from
    fingerprints never reuse a render of other bytes; identical bytes written anew only cost a
    re-render whose blobs come out identical (content-addressed), so served names do not move.
    """
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


class FileDigests:
    """sha256 of input files, remembered by (path, size, mtime, inode): a re-hash costs a stat.

    (Comparing a new copy with a known file of the same size instead of hashing it was tried:
    sha256 with the CPU's SHA instructions reads 296 MB in 0.2 s, a byte comparison of two such
    files takes 0.3 to 0.8 s, because it reads twice as much.)
    """

    def __init__(self) -> None:
        self._known: dict[Path, tuple[tuple[int, int, int], str]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _signature(path: Path) -> tuple[int, int, int]:
        st = path.stat()
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def of(self, path: Path) -> str:
        """The file's digest, recomputed only when its stat signature changed."""
        sig = self._signature(path)
        with self._lock:
            known = self._known.get(path)
        if known and known[0] == sig:
            return known[1]
        digest = digest_of_file(path)
        if self._signature(path) != sig:
            # Written while we read it: do not remember a digest of moving bytes.
            return digest_of_file(path)
        with self._lock:
            self._known[path] = (sig, digest)
        return digest

    def peek(self, path: Path) -> str | None:
        """The digest if it is known for the file as it is now; never reads the file."""
        try:
            sig = self._signature(path)
        except OSError:
            return None
        with self._lock:
            known = self._known.get(path)
        return known[1] if known and known[0] == sig else None


class Store:
    """A folder of immutable blobs named by sha256, a render cache and grace-period GC."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.cache = root / "cache"
        self.tmp = root / "tmp"
        try:
            for d in (self.blobs, self.cache, self.tmp):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"{root}: cannot create the store folder: {err}") from None
        self.digests = FileDigests()
        self._dead_since: dict[str, float] = {}

    def path_of(self, digest: str) -> Path:
        """Where the blob with this digest lives."""
        return self.blobs / digest

    def blob(self, digest: str) -> Blob | None:
        """The stored blob with this digest, or ``None`` if it is not (or no longer) stored."""
        path = self.path_of(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        return Blob(path, size, digest)

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh path in the store's temp folder (same file system as the blobs)."""
        fd, name = tempfile.mkstemp(dir=self.tmp, suffix=suffix)
        os.close(fd)
        return Path(name)

    def adopt(self, path: Path, digest: str | None = None) -> Blob:
        """Move a finished temp file into the store under its content hash (``digest``, when
        the writer hashed the bytes as it wrote them)."""
        digest = digest or digest_of_file(path)
        target = self.path_of(digest)
        if target.exists():
            path.unlink()
        else:
            path.chmod(0o444)
            os.replace(path, target)
        self._dead_since.pop(digest, None)
        return Blob(target, target.stat().st_size, digest)

    def put_bytes(self, data: bytes) -> Blob:
        """Store ``data`` (idempotent) and return its blob."""
        digest = hashlib.sha256(data).hexdigest()
        existing = self.blob(digest)
        if existing is not None:
            self._dead_since.pop(digest, None)
            return existing
        tmp = self.temp_path()
        tmp.write_bytes(data)
        return self.adopt(tmp)

    def put_file(self, source: Path) -> Blob:
        """Copy a file into the store (a hard link when possible: no bytes copied)."""
        digest = self.digests.of(source)
        existing = self.blob(digest)
        if existing is not None:
            self._dead_since.pop(digest, None)
            return existing
        tmp = self.temp_path()
        tmp.unlink()
        try:
            # A hard link would share the build's inode, which `make` may later rewrite in
            # place; copy instead so a blob can never change under a transfer.
            with source.open("rb") as src, tmp.open("wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return self.adopt(tmp)

    # --- render cache -------------------------------------------------------------------------

    def cached(self, key: str) -> dict[str, Any] | None:
        """A cached render result, if every blob it names is still stored."""
        path = self.cache / f"{key}.json"
        try:
            value: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        for digest in value.get("blobs", {}).values():
            if self.blob(digest) is None:
                return None
        return value

    def remember(self, key: str, value: dict[str, Any]) -> None:
        """Record a render result (``value["blobs"]``: role → digest) under its input key."""
        tmp = self.temp_path(".json")
        tmp.write_text(json.dumps(value, sort_keys=True))
        os.replace(tmp, self.cache / f"{key}.json")

    # --- garbage collection -------------------------------------------------------------------

    def collect(self, live: Iterable[str], grace: float, now: float | None = None) -> list[str]:
        """Delete blobs not in ``live`` that have been unreferenced for ``grace`` seconds.

        A blob first seen unreferenced starts its grace period then, so blobs left by an
        earlier run of the service also get the full grace period. Returns deleted digests.
        """
        now = time.time() if now is None else now
        alive = set(live)
        deleted: list[str] = []
        for path in self.blobs.iterdir():
            digest = path.name
            if digest in alive:
                self._dead_since.pop(digest, None)
                continue
            since = self._dead_since.setdefault(digest, now)
            if now - since >= grace:
                path.unlink(missing_ok=True)
                self._dead_since.pop(digest, None)
                deleted.append(digest)
        for stale in self.tmp.iterdir():
            # Temp files older than the grace period belong to renders that died.
            try:
                if now - stale.stat().st_mtime > max(grace, 60.0):
                    stale.unlink()
            except OSError:
                pass
        if deleted:
            log.debug("store: deleted %d unreferenced blobs", len(deleted))
        return deleted
