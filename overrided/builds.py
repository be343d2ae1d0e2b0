"""Build discovery: turn each ``kernel-builds/<build>/`` folder into a ``Build``, and watch them.

A build folder may be a whole kernel build tree or just the dropped artifacts. It is usable when
it holds ``image.fit`` (anywhere below, e.g. ``arch/arm64/boot/image.fit``) or a kernel
``Image``/``Image.gz``/``zImage`` plus ``*.dtb`` files (we then build the FIT ourselves, cached
in the store by the inputs' hashes). A kernel with no ``*.dtb`` files is a kernel-only build
(``Build.kernel_only``): its FIT holds one configuration with only the kernel, for boards that
boot with their own device tree. ``modules-*.cpio*`` files (``make modules-cpio-pkg`` names them
``modules-<release>-<arch>.cpio``, maybe compressed) are its modules.

Files whose name starts with ``.`` are never inputs: an upload is written under a dot-name and
renamed into place when complete. A build whose inputs some process still holds open for writing
is not indexed yet (``Build.writing``): the service indexes it once they are closed. Where the
kernel cannot tell whether a file is open for writing (see ``open_for_writing``), files modified
less than ``quiet`` seconds ago are waited for instead. Either way a FIT that fails to parse
(e.g. truncated) makes the build unusable rather than half-used.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import watchfiles

from overrided import codecs
from overrided.errors import OverridedError
from overrided.state import BuildInfo, ConfigInfo
from overrided.store import Blob, Store, StoreError, fingerprint

if TYPE_CHECKING:
    from overrided.fit import Fit

log = logging.getLogger(__name__)

KERNEL_NAMES = ("Image", "Image.gz", "zImage")
# ``modules-<release>[-<arch>].cpio``, optionally compressed (``codecs.py`` lists the suffixes).
MODULES_NAME = re.compile(rf"modules-(?P<rest>.+?)\.cpio(?:\.(?:{codecs.SUFFIX_ALTERNATION}))?")
# Architectures as kbuild names them; `modules-<release>-<arch>.cpio` carries one at the end.
_ARCHES = ("arm64", "arm", "riscv", "x86", "x86_64", "powerpc", "mips", "loongarch")
_KERNEL_ARCH = {"Image": "arm64", "Image.gz": "arm64", "zImage": "arm"}


class BuildError(OverridedError):
    """A build folder that cannot be used; ``str()`` says which file and why."""


@dataclass(frozen=True)
class Build:
    """One indexed build folder: where its FIT and modules are, and the FIT's configurations."""

    name: str
    path: Path
    fit: Path | None = None  # the build's FIT as found, or the one we built into the store
    kernel: Path | None = None  # Image/Image.gz/zImage when the build is kernel + DTBs
    dtbs: tuple[Path, ...] = ()
    modules: tuple[Path, ...] = ()
    # The inputs as ingested into the store (immutable): what renders read and views point at.
    fit_blob: Blob | None = None
    kernel_blob: Blob | None = None
    module_blobs: tuple[Blob, ...] = ()  # in the order of ``modules``
    release: str | None = None
    arch: str | None = None
    configurations: tuple[ConfigInfo, ...] = ()
    mtime: float = 0.0  # newest input's mtime: orders builds for "latest"
    indexed_at: float = field(default_factory=time.time)
    error: str | None = None
    writing: tuple[Path, ...] = ()  # inputs still open for writing: not indexed yet
    stamp: tuple[str, ...] = ()  # every input's path and fingerprint, taken before reading it

    @property
    def kernel_only(self) -> bool:
        """A kernel with no DTBs: only boards that keep their own device tree can use it."""
        return self.kernel is not None and not self.dtbs

    @property
    def usable(self) -> bool:
        """Whether boards can be rendered from this build."""
        return self.error is None and self.fit_blob is not None

    def blobs(self) -> dict[str, str]:
        """The store blobs this build holds: role → digest (its store manifest)."""
        out = {
            f"modules:{m.name}": b.digest
            for m, b in zip(self.modules, self.module_blobs, strict=True)
        }
        if self.fit_blob is not None:
            out["fit"] = self.fit_blob.digest
        if self.kernel_blob is not None:
            out["kernel"] = self.kernel_blob.digest
        return out

    def info(self) -> BuildInfo:
        """The API's view of this build."""

        def rel(p: Path | None) -> str | None:
            if p is None:
                return None
            try:
                return str(p.relative_to(self.path))
            except ValueError:
                return p.name  # a FIT we built lives in the store

        return BuildInfo(
            name=self.name,
            release=self.release,
            arch=self.arch,
            fit=rel(self.fit),
            kernel=rel(self.kernel),
            modules=[str(rel(m)) for m in self.modules],
            configurations=list(self.configurations),
            indexed_at=datetime.fromtimestamp(self.indexed_at, UTC),
            error=self.error,
        )


def is_hidden(path: Path, root: Path) -> bool:
    """True for a dot-file or anything inside a dot-folder below ``root`` (temp uploads)."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return True
    return any(p.startswith(".") for p in parts)


def release_of_modules_name(name: str) -> str | None:
    """The kernel release in ``modules-<release>[-<arch>].cpio[.gz|…]``.

    kbuild's ``modules-cpio-pkg`` names its output ``modules-<KERNELRELEASE>-<ARCH>.cpio``; a
    release may itself end in an arch-like word (Debian's ``6.1.0-56-arm64``), so exactly one
    trailing arch is dropped only when another arch-like word or version part remains before it.
    """
    m = MODULES_NAME.fullmatch(name)
    if not m:
        return None
    rest = m.group("rest")
    for arch in _ARCHES:
        if rest.endswith(f"-{arch}"):
            head = rest[: -len(arch) - 1]
            # "6.1.0-56-arm64-arm64" → "6.1.0-56-arm64"; "6.19.0-arm64" → "6.19.0"
            return head if head else rest
    return rest


_MODULES_DIR = re.compile(r"^(?:\./)?(?:usr/)?lib/modules/([^/\n]+)(?:/|\Z)")


_RELEASES: dict[str, str | None] = {}  # fingerprint → release: a re-index costs a stat


def release_in_modules_cpio(path: Path, *, look: int = 64) -> str | None:
    """The release a modules CPIO holds modules for: ``lib/modules/<release>/`` in its first
    entries (``usr/lib/modules`` too). Reading stops after ``look`` entries."""
    try:
        key = fingerprint(path)
    except OSError:
        return None
    if key not in _RELEASES:
        if len(_RELEASES) > 1024:
            _RELEASES.clear()
        _RELEASES[key] = _read_release(path, look)
    return _RELEASES[key]


def _read_release(path: Path, look: int) -> str | None:
    from overrided.cpio import CpioError, entries

    try:
        for i, entry in enumerate(entries(path)):
            m = _MODULES_DIR.match(entry.name)
            if m:
                return m.group(1)
            if i >= look:
                break
    except (CpioError, OSError):
        return None
    return None


def _newest(paths: Iterable[Path]) -> float:
    return max((p.stat().st_mtime for p in paths), default=0.0)


def _walk(root: Path) -> Iterable[Path]:
    """Every regular file below ``root``, skipping dot-files and dot-folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                yield Path(dirpath) / f


@dataclass
class Inputs:
    """The files of a build folder that matter, before any of them is parsed."""

    fit: Path | None = None
    kernel: Path | None = None
    dtbs: list[Path] = field(default_factory=list)
    modules: list[Path] = field(default_factory=list)

    def files(self) -> list[Path]:
        """Every input file."""
        out = [p for p in (self.fit, self.kernel) if p is not None]
        return out + self.dtbs + self.modules


def find_inputs(root: Path) -> Inputs:
    """Locate the FIT or kernel + DTBs, and the modules CPIOs, below ``root``."""
    found = Inputs()
    fits: list[Path] = []
    kernels: list[Path] = []
    for path in _walk(root):
        name = path.name
        if name == "image.fit":
            fits.append(path)
        elif name in KERNEL_NAMES:
            kernels.append(path)
        elif name.endswith(".dtb"):
            found.dtbs.append(path)
        elif MODULES_NAME.fullmatch(name):
            found.modules.append(path)

    def newest(paths: list[Path]) -> Path:
        # Several candidates (stale outputs in a build tree): the most recently written wins.
        return max(paths, key=lambda p: (p.stat().st_mtime, -len(p.parts)))

    if fits:
        found.fit = newest(fits)
        found.dtbs = []
    elif kernels:
        # Prefer the uncompressed Image: it is what arm64 `make` produces first.
        by_kind = sorted(kernels, key=lambda p: KERNEL_NAMES.index(p.name))
        found.kernel = newest([k for k in by_kind if k.name == by_kind[0].name])
    return found


def wait_quiet(files: Iterable[Path], quiet: float, *, limit: float = 30.0) -> None:
    """Block until no file in ``files`` was modified within the last ``quiet`` seconds."""
    paths = list(files)
    deadline = time.monotonic() + limit
    while quiet > 0 and time.monotonic() < deadline:
        try:
            age = time.time() - _newest(paths)
        except FileNotFoundError:
            return  # the caller's index will notice the file is gone
        if age >= quiet:
            return
        time.sleep(quiet - age)


# fcntl(2) F_SETSIG (Python's fcntl module does not name it): which signal breaking our lease
# sends us. The default, SIGIO, terminates a process that does not handle it.
_F_SETSIG = getattr(fcntl, "F_SETSIG", 10)
# A file held open but left unchanged this long counts as written: a writer that keeps its
# output open (a shell's `exec 3>file`, a stalled copy) must not hold its build back for ever;
# the parse still tells a complete FIT from a truncated one.
IDLE_WRITER = 2.0


def open_for_writing(path: Path) -> bool | None:
    """Whether a process holds ``path`` open for writing; ``None`` when the kernel will not say.

    Linux refuses a read lease (fcntl(2) F_SETLEASE, F_RDLCK) with EAGAIN while any process
    has the file open for writing, and grants it otherwise; a granted lease is dropped at once.
    Leases are granted to the file's owner and to processes with CAP_LEASE, on file systems
    that support them; elsewhere (EACCES, EINVAL, not Linux) the answer is ``None``.
    """
    setlease = getattr(fcntl, "F_SETLEASE", None)
    if setlease is None:
        return None
    try:
        # O_NONBLOCK: a file under someone's write lease fails at once instead of waiting.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        # While we hold the lease (microseconds), a writer's open(2) breaks it and the kernel
        # signals us: make that SIGURG, which is ignored unless handled, not SIGIO.
        fcntl.fcntl(fd, _F_SETSIG, signal.SIGURG)
        try:
            fcntl.fcntl(fd, setlease, fcntl.F_RDLCK)
        except OSError as err:
            return True if err.errno == errno.EAGAIN else None
        fcntl.fcntl(fd, setlease, fcntl.F_UNLCK)
        return False
    except OSError:
        return None
    finally:
        os.close(fd)


def being_written(files: Iterable[Path], *, idle: float = IDLE_WRITER) -> list[Path] | None:
    """The files a process holds open for writing and modified within ``idle`` seconds;
    ``None`` when that cannot be known for one of them. Files that went away are left out."""
    busy: list[Path] = []
    for path in files:
        state = open_for_writing(path)
        if state is None:
            if path.exists():
                return None
            continue
        if state:
            try:
                age = time.time() - path.stat().st_mtime
            except OSError:
                continue
            if age < idle:
                busy.append(path)
    return busy


def open_fit(path: Path, shown: Path | None = None) -> Fit:
    """Parse the FIT at ``path``: mapped when it is a store blob (immutable), else read.

    A build folder's FIT may be rewritten in place by the next ``make`` while we parse it;
    touching a mapping of a file truncated under it kills the process (SIGBUS), so those are
    read into memory (0.04 s more for a 60 MB FIT) and a rewrite only makes the parse fail.
    """
    from overrided.fit import Fit, FitError

    if path.parent.name == "blobs" and path.stat().st_mode & 0o222 == 0:
        return Fit.open(path, shown=shown)  # a read-only store blob: never rewritten
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FitError(f"{path}: cannot read: {err.strerror}") from None
    if not data:
        raise FitError(f"{path}: not a FIT: the file is empty")
    return Fit.from_bytes(data, path)


class FitCache:
    """Parsed FITs, so that indexing and rendering parse each FIT once.

    Meant for store blobs, which never change: a parsed FIT maps its file. (A build tree's
    file may be rewritten in place by the next ``make``; ``open`` parses it again then.)
    """

    def __init__(self) -> None:
        self._fits: dict[tuple[Path, str], Fit] = {}

    def open(self, path: Path, shown: Path | None = None) -> Fit:
        """The parsed FIT at ``path`` (parsed again if the file changed)."""

        key = (path, fingerprint(path))
        fit = self._fits.get(key)
        if fit is None:
            fit = self._fits[key] = open_fit(path, shown)
        return fit

    def drop(self, path: Path) -> None:
        """Release the mappings of ``path``."""
        for key in [k for k in self._fits if k[0] == path]:
            self._fits.pop(key).close()

    def retain(self, names: set[str]) -> None:
        """Release the mappings of files whose name is not in ``names`` (store blobs are named
        by their digest)."""
        for key in [k for k in self._fits if k[0].name not in names]:
            self._fits.pop(key).close()

    def close(self) -> None:
        """Release every mapping."""
        for fit in self._fits.values():
            fit.close()
        self._fits.clear()


def configurations_of(
    fit_path: Path, fits: FitCache | None = None, shown: Path | None = None
) -> tuple[tuple[ConfigInfo, ...], str | None, str | None]:
    """The FIT's configurations as the API shows them, its kernel arch and its kernel release
    (``shown``: the name messages give the file). A FIT whose image data does not match its
    hash nodes is refused (``BuildError``): the bootloaders would refuse it at boot."""
    from overrided.fit.hashes import hash_mismatches

    fit = fits.open(fit_path, shown) if fits is not None else open_fit(fit_path, shown)
    bad = hash_mismatches(fit)
    if bad:
        if fits is None:
            fit.close()
        else:
            fits.drop(fit_path)
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise BuildError(
            f"{shown or fit_path}: {bad[0]}{more}; barebox and U-Boot refuse such an image"
        )
    configs: list[ConfigInfo] = []
    arch: str | None = None
    for name, conf in fit.configurations.items():
        configs.append(
            ConfigInfo(
                name=name,
                compatible=list(conf.effective_compatible(fit)),
                description=conf.description or "",
                kernel=conf.kernel,
                fdt=list(conf.fdt),
                ramdisk=list(conf.ramdisk),
                signed=bool(conf.signatures),
            )
        )
        if arch is None and conf.kernel and conf.kernel in fit.images:
            arch = fit.images[conf.kernel].arch or None
    if fits is None:
        fit.close()
    return tuple(configs), arch, None


def built_fit(inputs: Inputs, store: Store, arch: str) -> Path:
    """The FIT made from ``Image`` + DTBs, built once per distinct set of input hashes."""
    from overrided.fit import build_fit

    assert inputs.kernel is not None
    parts = [fingerprint(inputs.kernel), *(fingerprint(d) for d in inputs.dtbs)]
    key = "fit-build-" + _key([*parts, arch])
    cached = store.cached(key)
    if cached:
        blob = store.blob(cached["blobs"]["fit"])
        if blob is not None:
            return blob.path
    out = store.temp_path(".fit")
    build_fit(
        inputs.kernel,
        inputs.dtbs,
        out,
        arch=arch,
        compression="none",
        description=key,
        kernel_only=not inputs.dtbs,
    )
    blob = store.adopt(out)
    store.remember(key, {"blobs": {"fit": blob.digest}})
    return blob.path


def _key(parts: Iterable[str]) -> str:
    import hashlib

    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _fit_still_growing(fit: Path | None) -> bool:
    """Whether ``fit`` is shorter than its flattened-tree header's ``totalsize`` (big-endian
    u32 at offset 4, after the 0xd00dfeed magic: devicetree specification, 5.2)."""
    if fit is None:
        return False
    try:
        with fit.open("rb") as f:
            head = f.read(8)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return True
    if len(head) < 8 or head[:4] != b"\xd0\x0d\xfe\xed":
        return True
    return size < int.from_bytes(head[4:8], "big")


def index_build(
    path: Path,
    store: Store,
    *,
    quiet: float = 0.0,
    fits: FitCache | None = None,
    hash_modules: bool = False,
    previous: Build | None = None,
    ingested: Callable[[Blob], object] | None = None,
) -> Build:
    """Index one build folder; problems become ``Build.error``, never exceptions.

    ``ingested`` is called with each modules CPIO's blob as soon as it is stored, on the
    thread that stored it (the renders that follow read its members).

    ``previous`` (the folder's last usable index) is returned as it is when no input file was
    added, removed or changed since (``store.fingerprint``): the watcher reports a build again
    for writes that an index already saw, and parsing a 60 MB FIT again costs 0.1 s.

    Inputs that a process still holds open for writing make a ``Build`` with ``writing`` set
    and an error saying so, without reading anything; where that cannot be known, the inputs
    must have stayed unchanged for ``quiet`` seconds (waited for).

    With ``hash_modules``, the modules CPIOs start being hashed into ``store.digests`` (by its
    hash process) before the FIT is parsed, or as soon as they are written when the FIT is
    still being written, so that the render that follows (its initrd is cached by content)
    waits for the end of that hash instead of starting it after the parse and the trim. Worth
    it for a build that just landed, which the boards are about to pick; not for every build at
    start-up, which no board may use.
    """
    name = path.name
    try:
        inputs = find_inputs(path)
        writing = being_written(inputs.files())
        if writing:
            if hash_modules:
                # Modules copied in before the FIT: hash them while the FIT is being written.
                for m in inputs.modules:
                    if m not in writing:
                        store.digests.start(m)
            files = ", ".join(str(p.relative_to(path)) for p in writing)
            return Build(
                name=name,
                path=path,
                error=f"{name}: {files}: still open for writing by another process",
                writing=tuple(writing),
            )
        if writing is None:
            wait_quiet(inputs.files(), quiet)
            # Look again: files may have been renamed into place while we waited.
            inputs = find_inputs(path)
        # (A FIT still being written fails the index at once: hashing modules that may still
        # be copied too would only compete with the refresh that follows.)
        if hash_modules and not _fit_still_growing(inputs.fit):
            for m in inputs.modules:
                # The hash runs in another process (HashProcess), beside the FIT parse.
                store.digests.start(m)
        stamp = tuple(f"{p}:{fingerprint(p)}" for p in inputs.files())
        if (
            previous is not None
            and previous.usable
            and previous.stamp == stamp
            and all(store.blob(d) is not None for d in previous.blobs().values())
        ):
            return previous
        built = _index(name, path, inputs, store, fits, ingested)
        return dataclasses.replace(built, stamp=stamp)
    except OverridedError as err:
        return Build(name=name, path=path, error=str(err))
    except OSError as err:
        return Build(name=name, path=path, error=f"{name}: {err.strerror}: {err.filename}")


def _index(
    name: str,
    path: Path,
    inputs: Inputs,
    store: Store,
    fits: FitCache | None,
    ingested: Callable[[Blob], object] | None = None,
) -> Build:
    if inputs.fit is None and inputs.kernel is None:
        raise BuildError(f"{name}: no image.fit and no Image/Image.gz/zImage found")
    modules = tuple(sorted(inputs.modules))
    # The modules CPIOs (hundreds of MB) are ingested on a thread of their own, while the FIT is
    # ingested and parsed here: the copies run in the kernel, without the GIL.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ingest-{name}") as pool:
        module_jobs = [pool.submit(_ingest, store, m, ingested) for m in modules]
        build = _index_fit(name, path, inputs, store, fits)
        try:
            module_blobs = tuple(job.result() for job in module_jobs)
        except StoreError as err:
            raise BuildError(f"{name}: {err}") from None
    build = dataclasses.replace(build, modules=modules, module_blobs=module_blobs)
    store.record_build(name, build.blobs())
    return build


def _ingest(store: Store, path: Path, then: Callable[[Blob], object] | None) -> Blob:
    blob = store.ingest(path)
    if then is not None:
        then(blob)
    return blob


def _index_fit(name: str, path: Path, inputs: Inputs, store: Store, fits: FitCache | None) -> Build:
    """The build as its FIT (or ``Image`` and DTBs) makes it: ingested, parsed; no modules."""
    from overrided.kernel import release_of_image

    release: str | None = None
    arch: str | None = None
    kernel_blob: Blob | None = None
    try:
        if inputs.kernel is not None:
            arch = _KERNEL_ARCH.get(inputs.kernel.name)
            release = release_of_image(inputs.kernel)
            fit = built_fit(inputs, store, arch or "arm64")
            fit_blob = store.blob(fit.name)
            kernel_blob = store.ingest(inputs.kernel, here=True)
        else:
            assert inputs.fit is not None
            fit = inputs.fit
            # Hashed here, beside the hash process's modules: both read at once.
            fit_blob = store.ingest(fit, here=True)
    except StoreError as err:
        raise BuildError(f"{name}: {err}") from None
    if fit_blob is None:
        raise BuildError(f"{name}: the FIT built from {inputs.kernel} left the store")
    configs, fit_arch, _ = configurations_of(fit_blob.path, fits, fit)
    arch = arch or fit_arch
    if release is None:
        # The archive's own lib/modules/<release>/ is authoritative; the file name is a guess
        # (modules-<release>-<arch>.cpio, and a release may itself end in an arch).
        for m in inputs.modules:
            release = release_in_modules_cpio(m) or release_of_modules_name(m.name)
            if release:
                break
    return Build(
        name=name,
        path=path,
        fit=fit,
        kernel=inputs.kernel,
        dtbs=tuple(inputs.dtbs),
        release=release,
        arch=arch,
        configurations=configs,
        mtime=_newest(inputs.files()),
        fit_blob=fit_blob,
        kernel_blob=kernel_blob,
    )


def build_folders(builds_dir: Path) -> list[Path]:
    """The build folders below ``builds_dir`` (dot-folders are uploads in progress)."""
    if not builds_dir.is_dir():
        return []
    return sorted(p for p in builds_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def latest(builds: Iterable[Build]) -> Build | None:
    """The usable build whose inputs were written last."""
    usable = [b for b in builds if b.usable]
    return max(usable, key=lambda b: (b.mtime, b.name)) if usable else None


@dataclass(frozen=True)
class Changes:
    """One debounced batch of file changes: which builds, and whether board files changed."""

    builds: frozenset[str]
    boards: bool
    everything: bool = False  # a watched folder was replaced: look at every build again


def classify(paths: Iterable[Path], builds_dir: Path, boards_dir: Path) -> Changes:
    """Map changed paths to build names and a boards flag; hidden (temp) files are ignored."""
    builds: set[str] = set()
    boards = False
    b_root, d_root = builds_dir.resolve(), boards_dir.resolve()
    for raw in paths:
        p = raw.resolve() if not raw.is_absolute() else raw
        if p.is_relative_to(b_root) and p != b_root:
            if is_hidden(p, b_root):
                continue
            builds.add(p.relative_to(b_root).parts[0])
        elif p.is_relative_to(d_root) and p.suffix == ".toml" and not p.name.startswith("."):
            boards = True
    return Changes(frozenset(builds), boards)


# How often the watcher checks that the folders it watches are still the same folders (s).
_RECHECK = 0.25


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


async def watch(
    builds_dir: Path,
    boards_dir: Path,
    *,
    step_ms: int,
    stop: asyncio.Event,
    watching: asyncio.Event | None = None,
) -> AsyncIterator[Changes]:
    """Debounced batches of changes below the two folders, until ``stop`` is set.

    ``watching`` is set once the folders are watched; the first batch then says
    ``everything``, for what landed before the watch began.

    watchfiles groups changes until no new one arrives for ``step_ms`` (at most 5 s), so a
    ``make`` writing hundreds of files yields one batch. A folder that is removed (and made
    again), replaced, or made after the start is watched anew within ``_RECHECK`` seconds and
    reported as ``Changes(everything=True)``: the kernel's watch of a removed folder is gone
    for good.
    """
    b_root, d_root = builds_dir.resolve(), boards_dir.resolve()

    def wanted(change: watchfiles.Change, raw: str) -> bool:
        # A dot-file (upload in progress) only matters once renamed, which is its own event.
        return not Path(raw).name.startswith(".")

    first = True
    while not stop.is_set():
        folders = (builds_dir, boards_dir)
        seen = [_identity(p) for p in folders]
        roots = [p for p, ident in zip(folders, seen, strict=True) if ident is not None]
        if not first:
            log.warning(
                "watch: %s changed (removed, replaced or made): watching %s anew",
                " or ".join(display(p) for p in folders),
                ", ".join(display(p) for p in roots) or "nothing until one exists",
            )
            yield Changes(frozenset(), True, everything=True)
        first = False
        if not roots:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _RECHECK)
            if [_identity(p) for p in folders] == seen:
                first = True  # nothing to say again until something changes
            continue
        try:
            async for batch in watchfiles.awatch(
                *roots,
                watch_filter=wanted,
                step=step_ms,
                debounce=5000,
                stop_event=stop,
                rust_timeout=int(_RECHECK * 1000),
                yield_on_timeout=True,
            ):
                if [_identity(p) for p in folders] != seen:
                    break
                if watching is not None and not watching.is_set():
                    watching.set()
                    yield Changes(frozenset(), True, everything=True)
                    continue
                changes = classify((Path(p) for _, p in batch), b_root, d_root)
                if changes.builds or changes.boards:
                    yield changes
        except (OSError, RuntimeError) as err:  # the watched folder went away under it
            log.warning("watch: %s", err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _RECHECK)


def display(path: Path) -> str:
    """A folder's name for messages: relative to the working folder when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
