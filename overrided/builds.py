"""Indexing: turn each ``kernel-builds/<build>/`` folder into a ``Build`` whose inputs are blobs.

A build is usable when it holds ``image.fit`` (anywhere below, e.g. ``arch/arm64/boot/image.fit``)
or a kernel ``Image``/``Image.gz``/``zImage`` plus ``*.dtb`` files (we then build the FIT
ourselves, cached in the store by the inputs' hashes). A kernel with no ``*.dtb`` files is a
kernel-only build (``Build.kernel_only``): its FIT holds one configuration with only the kernel,
for boards that boot with their own device tree. Which files a folder holds is
``discovery.py``'s; whether they are still being written, ``writers.py``'s; the watcher is
``watch.py``; parsed FITs are kept by ``fit/cache.py``. A FIT that fails to parse (e.g.
truncated) makes the build unusable rather than half-used.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from overrided.discovery import (
    KERNEL_ARCH,
    Inputs,
    find_inputs,
    newest_mtime,
    release_in_modules_cpio,
    release_of_modules_name,
)
from overrided.errors import OverridedError
from overrided.fit.cache import FitCache, open_fit
from overrided.state import BuildInfo, ConfigInfo
from overrided.store import Blob, Store, StoreError, fingerprint
from overrided.writers import being_written, wait_quiet

if TYPE_CHECKING:
    from overrided.cpio import Part

log = logging.getLogger(__name__)


class BuildError(OverridedError):
    """A build folder that cannot be used; ``str()`` says which file and why."""


@dataclass(frozen=True)
class Configuration:
    """One FIT configuration as indexing found it (``ConfigInfo`` is how the API shows it)."""

    name: str
    compatible: tuple[str, ...]  # effective: the configuration's, else its first fdt's root
    description: str = ""
    kernel: str | None = None
    fdt: tuple[str, ...] = ()
    ramdisk: tuple[str, ...] = ()
    signed: bool = False

    def info(self) -> ConfigInfo:
        """The API's view of this configuration."""
        return ConfigInfo(
            name=self.name,
            compatible=list(self.compatible),
            description=self.description,
            kernel=self.kernel,
            fdt=list(self.fdt),
            ramdisk=list(self.ramdisk),
            signed=self.signed,
        )


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
    configurations: tuple[Configuration, ...] = ()
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
            configurations=[c.info() for c in self.configurations],
            indexed_at=datetime.fromtimestamp(self.indexed_at, UTC),
            error=self.error,
        )


def configurations_of(
    fit_path: Path, fits: FitCache | None = None, shown: Path | None = None
) -> tuple[tuple[Configuration, ...], str | None, str | None]:
    """The FIT's configurations, its kernel arch and its kernel release
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
    configs: list[Configuration] = []
    arch: str | None = None
    for name, conf in fit.configurations.items():
        configs.append(
            Configuration(
                name=name,
                compatible=tuple(conf.effective_compatible(fit)),
                description=conf.description or "",
                kernel=conf.kernel,
                fdt=tuple(conf.fdt),
                ramdisk=tuple(conf.ramdisk),
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


# Told that a build's FIT is parsed while its modules CPIOs are still being stored: the build
# as its FIT makes it, and whether the modules are stored now (to stop work that fills the wait).
FitReady = Callable[[Build, Callable[[], bool]], None]


class MembersReader(Protocol):
    """Who lists a new modules CPIO's members (the renders' initrd warnings need them)."""

    def read(self, copy: Path, after: threading.Event) -> Future[list[Part]]:
        """Start listing the members of a modules CPIO's finished copy while the hash process
        is still hashing it (called by ``Store.ingest``'s ``meanwhile``), once ``after`` is set
        (the build's FIT is parsed)."""
        ...

    def stored(self, blob: Blob, read: Future[list[Part]] | None) -> None:
        """The CPIO is a blob now, listed as ``read`` (``None``: not listed yet)."""
        ...


def index_build(
    path: Path,
    store: Store,
    *,
    quiet: float = 0.0,
    fits: FitCache | None = None,
    hash_modules: bool = False,
    previous: Build | None = None,
    members: MembersReader | None = None,
    fit_ready: FitReady | None = None,
) -> Build:
    """Index one build folder; problems become ``Build.error``, never exceptions.

    ``members`` is told of each modules CPIO's blob as soon as it is stored, on the thread
    that stored it (the renders that follow read its members); with ``hash_modules`` it lists
    them while the hash of the copy is computed. ``fit_ready`` is called
    on this thread with the build as its FIT makes it (no modules yet) once the FIT is parsed
    and checked, while the modules CPIOs may still be hashed and copied, and with a function
    that says whether they are done (``FitReady``).

    ``previous`` (the folder's last usable index) is returned as it is when no input file was
    added, removed or changed since (``store.fingerprint``): the watcher reports a build again
    for writes that an index already saw, and parsing a 60 MB FIT again costs 0.1 s.

    Inputs that a process still holds open for writing make a ``Build`` with ``writing`` set
    and an error saying so, without reading anything; where that cannot be known, the inputs
    must have stayed unchanged for ``quiet`` seconds (waited for).

    With ``hash_modules``, the modules CPIOs start being hashed into ``store.digests`` (by its
    hash process) before the FIT is parsed, or as soon as they are written when the FIT is
    still being written, so that the render that follows (its initrd is cached by content)
    waits for the end of that hash instead of starting it after the parse and the trim; and
    they are copied into the store while they are hashed (a copy whose content the store holds
    already is dropped). Worth it for a build that just landed, which the boards are about to
    pick; not for every build at start-up, which no board may use and whose blobs are mostly
    stored already.
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
        built = _index(
            name, path, inputs, store, fits, members, eager=hash_modules, fit_ready=fit_ready
        )
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
    members: MembersReader | None = None,
    *,
    eager: bool = False,
    fit_ready: FitReady | None = None,
) -> Build:
    if inputs.fit is None and inputs.kernel is None:
        raise BuildError(f"{name}: no image.fit and no Image/Image.gz/zImage found")
    modules = tuple(sorted(inputs.modules))
    # The listing of the modules' members waits for the FIT parse: both need the GIL, and the
    # parse comes first because the trims follow it; the renders need both.
    parsed = threading.Event()
    # The modules CPIOs (hundreds of MB) are ingested on a thread of their own, while the FIT is
    # ingested and parsed here: the copies run in the kernel, without the GIL.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ingest-{name}") as pool:
        module_jobs = [pool.submit(_ingest, store, m, members, eager, parsed) for m in modules]
        try:
            build = _index_fit(name, path, inputs, store, fits, eager=eager)
        finally:
            parsed.set()
        if fit_ready is not None and module_jobs:
            fit_ready(build, lambda: all(job.done() for job in module_jobs))
        try:
            module_blobs = tuple(job.result() for job in module_jobs)
        except StoreError as err:
            raise BuildError(f"{name}: {err}") from None
    build = dataclasses.replace(build, modules=modules, module_blobs=module_blobs)
    store.record_build(name, build.blobs())
    return build


def _ingest(
    store: Store,
    path: Path,
    members: MembersReader | None,
    eager: bool,
    parsed: threading.Event,
) -> Blob:
    if members is None:
        return store.ingest(path, eager=eager)
    read: list[Future[list[Part]]] = []
    blob = store.ingest(
        path, eager=eager, meanwhile=lambda copy: read.append(members.read(copy, parsed))
    )
    members.stored(blob, read[0] if read else None)
    return blob


def _index_fit(
    name: str, path: Path, inputs: Inputs, store: Store, fits: FitCache | None, *, eager: bool
) -> Build:
    """The build as its FIT (or ``Image`` and DTBs) makes it: ingested, parsed; no modules."""
    from overrided.kernel import release_of_image

    release: str | None = None
    arch: str | None = None
    kernel_blob: Blob | None = None
    try:
        if inputs.kernel is not None:
            arch = KERNEL_ARCH.get(inputs.kernel.name)
            release = release_of_image(inputs.kernel)
            fit = built_fit(inputs, store, arch or "arm64")
            fit_blob = store.blob(fit.name)
            kernel_blob = store.ingest(inputs.kernel, here=True)
        else:
            assert inputs.fit is not None
            fit = inputs.fit
            # Hashed here, beside the hash process's modules: both read at once.
            fit_blob = store.ingest(fit, here=True, eager=eager)
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
        mtime=newest_mtime(inputs.files()),
        fit_blob=fit_blob,
        kernel_blob=kernel_blob,
    )


def latest(builds: Iterable[Build]) -> Build | None:
    """The usable build whose inputs were written last."""
    usable = [b for b in builds if b.usable]
    return max(usable, key=lambda b: (b.mtime, b.name)) if usable else None
