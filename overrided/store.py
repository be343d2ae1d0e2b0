"""Content-addressed blobs, small cached results and build manifests, in one store folder.

Layout: ``blobs/<sha256>`` holds immutable files named by their content hash: every input of a
build (FIT, kernel, modules CPIOs, init CPIOs, overlays) is ingested once per distinct content
(``ingest``: a reflink where the file system can, else an in-kernel copy), and boards' artifacts
are views over those blobs (``served.View``), so rendering a board writes no artifact bytes.
``cache/<key>.json`` keeps small results worth keeping across restarts (initrd warnings, a FIT
built from ``Image`` + DTBs); ``builds/<name>.json`` names the blobs each build holds
(``overrided store du``); ``tmp/`` holds files being written. A blob is never rewritten in place,
so a transfer that opened one keeps reading the same bytes; a blob that nothing served, pinned
or indexed refers to any more is deleted only after the grace period.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overrided.errors import OverridedError
from overrided.served import Piece, View

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_Signature = tuple[int, int, int]  # size, mtime (ns), inode
# Files at least this big are hashed by the hash process (``HashProcess``), which runs this.
_BIG_FILE = 4 << 20
_PROGRAM = "digest_process.py"


@dataclass(frozen=True)
class Blob:
    """A file of the store: immutable, named by the sha256 of its bytes."""

    path: Path
    size: int
    digest: str

    def view(self) -> View:
        """The whole blob as a served view."""
        return View.of_file(self.path, self.size, self.digest)

    def range(self, offset: int, length: int) -> Piece:
        """``length`` bytes of the blob from ``offset``, as a piece of a view."""
        if offset < 0 or offset + length > self.size:
            raise StoreError(f"{self.path.name}: range {offset}+{length} beyond {self.size} bytes")
        return Piece(length, self.path, offset, digest=self.digest)


class StoreError(OverridedError):
    """The store folder cannot be used, or an input could not be ingested."""


# ioctl(2) FICLONE: share the source's extents (btrfs, XFS, bcachefs): no bytes copied.
_FICLONE = 0x40049409


def clone_or_copy(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes of file ``src`` into the empty file ``dst``: a reflink where the
    file system can, else ``copy_file_range`` (in the kernel), else ``sendfile``/``read``."""
    import fcntl

    try:
        fcntl.ioctl(dst, _FICLONE, src)
        return
    except OSError:
        pass  # not supported here (ext4, tmpfs, across file systems): copy
    offset = 0
    try:
        while offset < size:
            n = os.copy_file_range(src, dst, size - offset, offset, offset)
            if n == 0:
                break
            offset += n
    except OSError:
        pass  # e.g. EXDEV on old kernels: the slower ways below
    while offset < size:
        chunk = os.pread(src, min(_CHUNK, size - offset), offset)
        if not chunk:
            raise StoreError("the file shrank while it was copied")
        os.pwrite(dst, chunk, offset)
        offset += len(chunk)


def digest_of_file(path: Path) -> str:
    """The sha256 (hex) of a file's bytes."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class HashProcess:
    """sha256 of big files, computed by a child process of our own.

    In the service's process, hashing a 296 MB modules CPIO (0.2 s alone) took 0.6 to 1 s
    while a FIT was parsed and boards fetched files: every chunk's hash must take the GIL back
    from the parsing thread, and the TFTP server forks a process per transfer, which makes the
    hash buffer's pages fault again on their next write (copy-on-write). A process of its own
    has neither. One file at a time; when the process cannot run, files are hashed here.
    Its program is ``digest_process.py``, run as a script.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._end: Callable[[], object] | None = None
        self._failed = False

    def start(self) -> None:
        """Start the process now rather than at the first hash."""
        with self._lock:
            self._running()

    def _running(self) -> subprocess.Popen[bytes] | None:
        if self._proc is None and not self._failed:
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", str(Path(__file__).with_name(_PROGRAM))],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                # Also ended when this object is dropped without close() (tests, tools).
                self._end = weakref.finalize(self, _end_process, self._proc)
            except OSError as err:
                log.warning("store: no hash process (%s): hashing in the service", err)
                self._failed = True
        return self._proc

    def digest(self, path: Path) -> str:
        """The sha256 (hex) of the file at ``path``; ``OSError`` as if it were read here."""
        with self._lock:
            proc = self._running()
            if proc is not None:
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    proc.stdin.write(os.fsencode(path).hex().encode() + b"\n")
                    proc.stdin.flush()
                    answer = proc.stdout.readline().decode().strip()
                except (OSError, ValueError):
                    answer = ""
                if answer.startswith("! "):
                    code, _, message = answer[2:].partition(" ")
                    raise OSError(int(code), message, str(path))
                if len(answer) == 64:
                    return answer
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(1)
                if proc.returncode == -signal.SIGBUS:
                    # It hashes a mapping of the file, and the file shrank under it: the file
                    # changed, the process did not fail. A new one hashes the next file.
                    self._stop()
                    raise OSError(errno.EAGAIN, "it shrank while it was hashed", str(path))
                log.warning("store: the hash process stopped: hashing in the service")
                self._stop()
                self._failed = True
        return digest_of_file(path)

    def _stop(self) -> None:
        self._proc = None
        if self._end is not None:
            self._end()  # runs _end_process once

    def close(self) -> None:
        """Stop the process (it also stops by itself when this process ends)."""
        with self._lock:
            self._stop()


def _end_process(proc: subprocess.Popen[bytes]) -> None:
    """Close the hash process's input (it then exits) and reap it."""
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _changed(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ino, a.st_dev) != (
        b.st_size,
        b.st_mtime_ns,
        b.st_ino,
        b.st_dev,
    )


def _manifest_name(build: str) -> str:
    # Build names are folder names (no "/"); the hash keeps odd ones apart from each other.
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in build)[:64]
    return f"{safe}-{hashlib.sha256(build.encode()).hexdigest()[:8]}"


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

    ``start`` hashes a file on a worker thread ahead of need; ``of`` then waits for that hash
    instead of reading the file a second time. Big files are hashed by a ``HashProcess``.

    (Comparing a new copy with a known file of the same size instead of hashing it was tried:
    sha256 with the CPU's SHA instructions reads 296 MB in 0.2 s, a byte comparison of two such
    files takes 0.3 to 0.8 s, because it reads twice as much.)
    """

    def __init__(self) -> None:
        self._known: dict[Path, tuple[_Signature, str]] = {}
        self._running: dict[tuple[Path, _Signature], Future[str]] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.process = HashProcess()

    def hash(self, path: Path, *, here: bool = False) -> str:
        """The sha256 of the file's bytes, read now (big files by the hash process, unless
        ``here``: the hash process hashes one file at a time)."""
        if not here and path.stat().st_size >= _BIG_FILE:
            return self.process.digest(path)
        return digest_of_file(path)

    @staticmethod
    def _signature(path: Path) -> _Signature:
        st = path.stat()
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def _claim(self, path: Path, sig: _Signature) -> tuple[str | Future[str], bool]:
        """The known digest, or the future of its hash and whether the caller must compute it."""
        with self._lock:
            known = self._known.get(path)
            if known and known[0] == sig:
                return known[1], False
            running = self._running.get((path, sig))
            if running is not None:
                return running, False
            running = self._running[(path, sig)] = Future()
            return running, True

    def _compute(
        self, path: Path, sig: _Signature, running: Future[str], here: bool = False
    ) -> str:
        try:
            digest = self.hash(path, here=here)
            if self._signature(path) != sig:
                # Written while we read it: do not remember a digest of moving bytes.
                digest = self.hash(path, here=here)
            else:
                with self._lock:
                    self._known[path] = (sig, digest)
        except BaseException as err:
            with self._lock:
                self._running.pop((path, sig), None)
            running.set_exception(err)
            raise
        with self._lock:
            self._running.pop((path, sig), None)
        running.set_result(digest)
        return digest

    def of(self, path: Path, *, here: bool = False) -> str:
        """The file's digest, recomputed only when its stat signature changed (in this
        thread when ``here``, beside whatever the hash process is hashing)."""
        sig = self._signature(path)
        found, mine = self._claim(path, sig)
        if isinstance(found, str):
            return found
        return self._compute(path, sig, found, here) if mine else found.result()

    def start(self, path: Path) -> None:
        """Hash ``path`` on a worker thread, unless its digest is known or being computed.

        Errors (the file went away) are left for the ``of`` that needs the digest to report.
        """
        try:
            sig = self._signature(path)
        except OSError:
            return
        found, mine = self._claim(path, sig)
        if not mine:
            return
        assert isinstance(found, Future)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digest")
            pool = self._pool
        try:
            pool.submit(self._compute, path, sig, found)
        except RuntimeError:  # closed meanwhile: whoever waits for this hash must not hang
            with self._lock:
                self._running.pop((path, sig), None)
            found.set_exception(StoreError(f"{path}: not hashed: the store is closing"))

    def close(self) -> None:
        """Finish the hashes started, stop the worker thread and the hash process."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.process.close()

    def settle(self) -> None:
        """Wait for every hash started by ``start`` (or running in ``of``)."""
        with self._lock:
            running = list(self._running.values())
        wait(running)

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
        self.manifests = root / "builds"
        try:
            for d in (self.blobs, self.cache, self.tmp, self.manifests):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"{root}: cannot create the store folder: {err}") from None
        self.digests = FileDigests()
        self._dead_since: dict[str, float] = {}
        # Blobs whose bytes were checked against their name since this process started.
        self._verified: set[str] = set()

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

    def verify(self, digest: str) -> bool | None:
        """Whether the blob still holds the bytes its name promises, hashed now (big ones by
        the hash process). One that does not (a flipped bit on disk, a hand edit) is moved out
        of ``blobs/`` into ``tmp/``, so it is neither served nor reused again, and logged; the
        build it came from is then ingested anew. ``None``: no such blob."""
        path = self.path_of(digest)
        try:
            actual = self.digests.hash(path)
        except FileNotFoundError:
            return None
        if actual == digest:
            self._verified.add(digest)
            return True
        self._verified.discard(digest)
        with contextlib.suppress(OSError):
            os.replace(path, self.tmp / f"corrupt-{digest}")
        log.error(
            "store: blob %s is corrupt (its bytes hash to %s): taken out of service; "
            "its build is read again from its folder",
            digest[:12],
            actual[:12],
        )
        return False

    def verified(self, digest: str) -> bool:
        """Whether ``verify`` (or an ingest that copied it) checked the blob in this process."""
        return digest in self._verified

    def adopt(self, path: Path, digest: str | None = None) -> Blob:
        """Move a finished temp file into the store under its content hash (``digest``, when
        the writer hashed the bytes as it wrote them)."""
        digest = digest or self.digests.hash(path)
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

    def ingest(
        self,
        source: Path,
        *,
        here: bool = False,
        eager: bool = False,
        meanwhile: Callable[[Path], object] | None = None,
    ) -> Blob:
        """Make ``source`` an immutable blob: hashed once (``digests``), stored once per
        distinct content. A file whose content is stored already costs its hash only.

        A hard link would share the build's inode, which the next ``make`` may rewrite in
        place; the copy (a reflink where possible) is the store's own. The copy is checked
        against the file's stat signature before and after, so the blob holds exactly the
        bytes that were hashed; ``StoreError`` if the file changed meanwhile.

        ``meanwhile`` is called on this thread with the finished copy (the store's own file,
        which nothing else writes) while the hash process is still hashing, when a big file is
        copied and hashed side by side (``eager``); what it reads there is what the blob holds
        if the ingest then succeeds.
        """
        with source.open("rb") as src:
            before = os.fstat(src.fileno())
            tmp: Path | None = None
            if eager and before.st_size >= _BIG_FILE and not self.digests.peek(source):
                # A big file just written (``eager``): it is hashed (by the hash process, or
                # ``here``) while the kernel copies it, and the copy is dropped if its content
                # is stored already.
                tmp, digest = self._copy_while_hashing(
                    source, src.fileno(), before.st_size, here, meanwhile
                )
            else:
                digest = self.digests.of(source, here=here)
            existing = self.blob(digest)
            # A blob stored before is reused once its bytes were checked in this process
            # (then it is copied anew if they no longer match).
            if existing is not None and (digest in self._verified or self.verify(digest)):
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
                self._dead_since.pop(digest, None)
                return existing
            if tmp is None:
                tmp = self._copy(source, src.fileno(), before.st_size)
            after = os.stat(source)
        if _changed(before, after) or tmp.stat().st_size != before.st_size:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"{source}: changed while it was ingested; it is read again")
        blob = self.adopt(tmp, digest)
        self._verified.add(digest)  # the copy of the bytes just hashed, unchanged meanwhile
        return blob

    put_file = ingest

    def _copy_while_hashing(
        self,
        source: Path,
        src: int,
        size: int,
        here: bool,
        meanwhile: Callable[[Path], object] | None = None,
    ) -> tuple[Path, str]:
        """A temp copy of ``source`` and its digest, computed side by side: the hash process
        hashes while this thread copies (then calls ``meanwhile`` with the copy), or (``here``)
        this thread hashes while another copies (both release the GIL)."""
        if here:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="copy") as pool:
                copying = pool.submit(self._copy, source, src, size)
                try:
                    digest = self.digests.of(source, here=True)
                except BaseException:
                    with contextlib.suppress(Exception):
                        copying.result().unlink(missing_ok=True)
                    raise
                return copying.result(), digest
        self.digests.start(source)
        tmp = self._copy(source, src, size)
        try:
            if meanwhile is not None:
                meanwhile(tmp)
            return tmp, self.digests.of(source)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _copy(self, source: Path, src: int, size: int) -> Path:
        """A temp file of the store holding ``size`` bytes of ``src`` (the file ``source``)."""
        tmp = self.temp_path()
        try:
            with tmp.open("r+b") as dst:
                clone_or_copy(src, dst.fileno(), size)
        except StoreError as err:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"{source}: {err}; it is read again") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    # --- build manifests ----------------------------------------------------------------------

    def record_build(self, name: str, blobs: dict[str, str]) -> None:
        """Remember which blobs build ``name`` holds (role → digest), for ``store du``."""
        tmp = self.temp_path(".json")
        tmp.write_text(json.dumps({"build": name, "blobs": blobs}, sort_keys=True))
        os.replace(tmp, self.manifests / f"{_manifest_name(name)}.json")

    def forget_build(self, name: str) -> None:
        """Drop build ``name``'s manifest (its blobs go with the next collections)."""
        (self.manifests / f"{_manifest_name(name)}.json").unlink(missing_ok=True)

    def build_manifests(self) -> dict[str, dict[str, str]]:
        """Every recorded build: name → (role → digest)."""
        out: dict[str, dict[str, str]] = {}
        for path in sorted(self.manifests.glob("*.json")):
            try:
                value = json.loads(path.read_text())
                out[str(value["build"])] = {str(k): str(v) for k, v in value["blobs"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # a manifest cut short by a crash: that build is recorded again
        return out

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
