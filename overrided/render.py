"""Resolve and render one board: pick build and FIT configuration, make its artifacts.

``render_board`` is the per-board step of sources → index → resolve → render: it matches the
board's ``compatible`` against the build's FIT, trims (and optionally signs) the FIT, assembles
the initrd, publishes each artifact as a content-addressed blob, and runs the board's override
renderers (barebox devboot script, PXE, boot.scr, iPXE) over the versioned names (the barebox
script names the ``boot net`` image ``<user>-linux-<hostname>`` instead: see
``clients/barebox.py``). The result is cached in the store under a key made of every input's
hash, so an unchanged board costs a few ``stat`` calls and a JSON read on re-index.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overrided.builds import Build, FitCache, open_fit
from overrided.clients import Artifacts, Renderer
from overrided.clients.barebox import net_name
from overrided.config import Board, hostname_of
from overrided.errors import OverridedError
from overrided.state import BoardInfo
from overrided.store import Store, fingerprint

if TYPE_CHECKING:
    from overrided.fit import Fit

log = logging.getLogger(__name__)

# Bumped whenever the rendered output for the same inputs changes (invalidates the cache).
RENDER_VERSION = "2"

# format → (module, function); imported when a board asks, so a format works once it exists.
RENDERERS: dict[str, tuple[str, str]] = {
    "barebox": ("overrided.clients.barebox", "render"),
    "pxe": ("overrided.clients.uboot", "render_pxe"),
    "bootscr": ("overrided.clients.uboot", "render_bootscr"),
    "ipxe": ("overrided.clients.ipxe", "render"),
}

FORCED_SIGNING_WARNING = (
    "signed_images_forced: barebox ignores every boot override on this board "
    "(bootm_signed_images_are_forced), so devboot changes nothing"
)


class RenderError(OverridedError):
    """A board cannot be rendered; ``str()`` says why (no match, missing file, bad key...)."""


@dataclass(frozen=True)
class Rendered:
    """A board's render: served name → blob digest, and what the API shows about it."""

    names: dict[str, str]  # served name → digest
    versioned: frozenset[str]  # names that embed a content hash (kept after a rebuild)
    info: BoardInfo


@dataclass
class RenderContext:
    """What renders need besides the board and the build."""

    store: Store
    boards_dir: Path
    keys_dir: Path
    http_base: str | None = None
    extra_key: dict[str, str] = field(default_factory=dict)
    fits: FitCache | None = None  # parsed FITs shared with the index, for one refresh


def versioned_name(user: str, role: str, hostname: str, digest: str) -> str:
    """``<user>-<role>-<hostname>-<hash12>``: a name whose bytes never change."""
    return f"{user}-{role}-{hostname}-{digest[:12]}"


def renderer_for(fmt: str) -> Renderer:
    """The render function for a board format; ``RenderError`` if it is not available."""
    module, func = RENDERERS[fmt]
    try:
        r: Renderer = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as err:
        raise RenderError(f"format {fmt!r} is not available: {err}") from None
    return r


def _overlay_path(name: str, ctx: RenderContext, build: Build) -> Path:
    """An overlay named in a board file: relative to the boards folder, else found in the build."""
    direct = ctx.boards_dir / name
    if direct.is_file():
        return direct
    hits = sorted(p for p in build.path.rglob(Path(name).name) if p.is_file())
    if not hits:
        raise RenderError(f"overlay {name!r}: not in {ctx.boards_dir.name}/ nor in {build.name}")
    return hits[0]


def render_key(board: Board, build: Build, ctx: RenderContext) -> str:
    """The hash of every input of a render: board, FIT, modules, init, overlays, signing key.

    Files enter by their fingerprint (``store.fingerprint``: inode, size, mtime), not by a hash
    of their bytes: hashing a 300 MB modules CPIO on every re-index would cost more than the
    half second a rebuild may take to reach the board.
    """
    assert build.fit is not None
    parts: dict[str, Any] = {
        "version": RENDER_VERSION,
        "board": board.model_dump(mode="json"),
        "build": build.name,
        "release": build.release,
        "fit": fingerprint(build.fit),
        "modules": [fingerprint(m) for m in build.modules],
        "http_base": ctx.http_base,
        **ctx.extra_key,
    }
    if board.init:
        parts["init"] = fingerprint(ctx.boards_dir / board.init)
    parts["overlays"] = [fingerprint(_overlay_path(o, ctx, build)) for o in board.overlays]
    if board.sign:
        from overrided.keys import private_key_path

        parts["key"] = fingerprint(private_key_path(ctx.keys_dir, board.sign))
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def pick_build(board: Board, builds: Sequence[Build]) -> Build:
    """The board's build: the one it names, else the latest usable one."""
    from overrided.builds import latest

    if board.build:
        for b in builds:
            if b.name == board.build:
                if not b.usable:
                    raise RenderError(f"build {b.name}: {b.error or 'has no FIT'}")
                return b
        raise RenderError(f"build {board.build!r} does not exist")
    found = latest(builds)
    if found is None:
        raise RenderError("no usable build in the builds folder yet")
    return found


def _sign_algo(key: object) -> str:
    from overrided.keys import key_algo

    return f"sha256,{key_algo(key)}"  # type: ignore[arg-type]


def _render_fresh(board: Board, build: Build, ctx: RenderContext, key: str) -> dict[str, Any]:
    """Do the work: match, trim/sign, initrd, descriptions. Returns the cache record."""

    fits = ctx.fits

    def fit_opener(path: Path) -> AbstractContextManager[Fit]:
        # A FIT parsed during this refresh's index is reused, and stays open for the refresh.
        return nullcontext(fits.open(path)) if fits is not None else open_fit(path)

    # The initrd does not depend on the FIT: make it on another thread meanwhile (copying
    # and hashing release the GIL).
    parts = list(build.modules)
    if board.init:
        parts.append(ctx.boards_dir / board.init)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"render-{board.name}")
    initrd_job: Future[tuple[str, list[str]]] | None = None
    if board.initrd and parts:
        initrd_job = pool.submit(_initrd, ctx.store, parts, build.release)
    try:
        return _render_with(board, build, ctx, key, initrd_job, fit_opener=fit_opener)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def initrd_key(digests: Sequence[str]) -> str:
    """The render-cache key of the initrd made of parts with these content digests.

    Content, not fingerprints: a new build folder holding the same modules CPIO reuses the
    initrd for the price of hashing it (0.2 s for 296 MB), not of copying and hashing it again.
    """
    return hashlib.sha256("\0".join(["initrd", RENDER_VERSION, *digests]).encode()).hexdigest()


def _initrd(store: Store, parts: Sequence[Path], release: str | None) -> tuple[str, list[str]]:
    """The initrd of ``parts`` as a blob, and ``cpio.initrd_warnings`` about it; both cached
    by the parts' contents, so a new kernel with the same modules reuses them."""
    from overrided.cpio import concat, initrd_warnings

    digests = [store.digests.of(p) for p in parts]
    blob_key = initrd_key(digests)
    warn_ids = ["initrd-warnings", RENDER_VERSION, *digests, release or ""]
    warn_key = hashlib.sha256("\0".join(warn_ids).encode()).hexdigest()
    blob_rec, warn_rec = store.cached(blob_key), store.cached(warn_key)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="initrd-warnings") as side:
        # Reading every archive header for the warnings runs beside the copy.
        warn_job = side.submit(initrd_warnings, parts, release) if warn_rec is None else None
        if blob_rec is None:
            out = store.temp_path(".cpio")
            concat(parts, out)
            digest = store.adopt(out).digest
            store.remember(blob_key, {"blobs": {"initrd": digest}})
        else:
            digest = str(blob_rec["blobs"]["initrd"])
        if warn_job is not None:
            warnings = warn_job.result()
            store.remember(warn_key, {"warnings": warnings})
        else:
            assert warn_rec is not None
            warnings = list(warn_rec["warnings"])
    return digest, warnings


def _render_with(
    board: Board,
    build: Build,
    ctx: RenderContext,
    key: str,
    initrd_job: Future[tuple[str, list[str]]] | None,
    *,
    fit_opener: Callable[[Path], AbstractContextManager[Fit]],
) -> dict[str, Any]:
    from overrided.fit import match, trim

    store = ctx.store
    assert build.fit is not None
    blobs: dict[str, str] = {}
    names: dict[str, str] = {}
    versioned: list[str] = []
    artifacts: dict[str, str] = {}
    warnings: list[str] = []
    u, h = board.user, board.hostname

    def publish(role: str, digest: str, *, stable: str | None = None) -> str:
        name = versioned_name(u, role, h, digest)
        blobs[role] = digest
        names[name] = digest
        versioned.append(name)
        artifacts[role] = name
        if stable:
            names[stable] = digest
        return name

    with fit_opener(build.fit) as fit:
        m = match(fit, board.compatible, board.rule)
        if m.config is None:
            raise RenderError(f"build {build.name}: {m.reason}")
        conf = fit.configurations[m.config]
        effective = [c.lower() for c in conf.effective_compatible(fit)]
        if board.rule == "barebox" and board.compatible[0].lower() not in effective:
            # barebox boots /configurations/default when nothing matches: serve what it
            # would boot, and say that it is a guess.
            warnings.append(
                f"no configuration lists {board.compatible[0]!r}: {m.config} is the FIT's "
                "default, which barebox would boot; check the board's compatible"
            )

        # The trimmed FIT: only the matched configuration, set as default, with sha256 hashes
        # (barebox refuses crc32: design.md), signed when the board asks for it.
        out = store.temp_path(".fit")
        written = hashlib.sha256()
        trim(fit, m.config, out, add_hashes=True, sha256=written)
        if board.sign:
            from overrided.fit.sign import sign_configuration
            from overrided.keys import load_signing_key

            signing_key = load_signing_key(ctx.keys_dir, board.sign)
            signed = sign_configuration(
                out.read_bytes(),
                m.config,
                signing_key,
                key_name=board.sign,
                algo=_sign_algo(signing_key),
                # The build's own time, so the same inputs always give the same signed bytes.
                timestamp=fit.timestamp or int(build.fit.stat().st_mtime),
            )
            out.write_bytes(signed)
            written = hashlib.sha256(signed)
        fit_blob = store.adopt(out, written.hexdigest())
        fit_name = publish("fit", fit_blob.digest)

        kernel_name: str | None = None
        # A plain kernel for boards that boot one, and for iPXE, which cannot boot a FIT.
        if board.image == "kernel" or "ipxe" in board.formats:
            try:
                kernel_name = publish("kernel", _plain_kernel(store, build, fit, conf.kernel))
            except RenderError as err:
                if board.image == "kernel":
                    raise
                warnings.append(f"ipxe: {err}")
        # barebox's `boot net` image, which the devboot script names too: what the board's
        # image mode boots (a FIT for `image = "none"`, so that plain `boot net` works).
        if board.image == "kernel" and kernel_name:
            names[net_name(u, "linux", h)] = blobs["kernel"]
        else:
            names[net_name(u, "linux", h)] = fit_blob.digest

        oftree_name: str | None = None
        if conf.fdt and fit.images[conf.fdt[0]].compression in ("none", ""):
            dtb = store.put_bytes(bytes(fit.images[conf.fdt[0]].data())).digest
            if board.oftree == "fit":
                oftree_name = publish("oftree", dtb, stable=net_name(u, "oftree", h))
        elif board.oftree == "fit" and board.image == "kernel":
            raise RenderError(f"build {build.name}: {m.config} has no uncompressed fdt to serve")
        description = conf.description or ""

    overlays: list[str] = []
    for i, o in enumerate(board.overlays):
        digest = store.put_file(_overlay_path(o, ctx, build)).digest
        overlays.append(publish(f"overlay{i}" if i else "overlay", digest))

    initrd_name: str | None = None
    if initrd_job is not None:
        stable = net_name(u, "initramfs", h) if board.init else None
        initrd_digest, initrd_warnings = initrd_job.result()
        initrd_name = publish("initrd", initrd_digest, stable=stable)
        warnings += initrd_warnings
    if board.signed_images_forced:
        warnings.append(FORCED_SIGNING_WARNING)

    now = time.time()
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    provenance = (
        f"build {build.name}"
        + (f" ({build.release})" if build.release else "")
        + f", configuration {m.config}"
        + (f" ({description})" if description else "")
        + f", {m.reason}, rendered {stamp}"
        # Warnings ride along into every description's header, where people read them.
        + "".join(f"; warning: {w}" for w in warnings)
    )
    a = Artifacts(
        board=board.name,
        hostname=h,
        user=u,
        arch=board.arch,
        provenance=provenance,
        fit=fit_name,
        configuration=m.config,
        kernel=kernel_name,
        oftree=oftree_name,
        overlays=tuple(overlays),
        initrd=initrd_name,
        image_mode=board.image,
        oftree_mode="overlays" if board.overlays else board.oftree,  # type: ignore[arg-type]
        initrd_mode=board.initrd,
        bootargs=dict(board.bootargs),
        mac=board.mac,
        http_base=ctx.http_base,
    )
    served: dict[str, list[str]] = {}
    for fmt in board.formats:
        try:
            files = renderer_for(fmt)(a)
        except OverridedError as err:
            warnings.append(f"{fmt}: {err}")
            continue
        served[fmt] = sorted(files)
        for fname, data in files.items():
            names[fname] = store.put_bytes(data).digest
            blobs[f"{fmt}:{fname}"] = names[fname]
    if not served:
        raise RenderError("; ".join(warnings) or "no format could be rendered")
    return {
        "key": key,
        "build": build.name,
        "configuration": m.config,
        "reason": m.reason,
        "warnings": warnings,
        "blobs": blobs,
        "names": names,
        "versioned": versioned,
        "artifacts": artifacts,
        "served": served,
        "rendered_at": now,
    }


def _plain_kernel(store: Store, build: Build, fit: Fit, unit: str | None) -> str:
    """The digest of the build's plain kernel: its ``Image`` file, else the FIT's kernel."""
    if build.kernel is not None:
        return store.put_file(build.kernel).digest
    if not unit:
        raise RenderError(f"build {build.name}: the configuration has no kernel")
    img = fit.images[unit]
    if img.compression not in ("none", ""):
        raise RenderError(
            f"build {build.name}: a plain kernel is needed, the FIT's is {img.compression}"
        )
    return store.put_bytes(bytes(img.data())).digest


def render_board(board: Board, builds: Sequence[Build], ctx: RenderContext) -> Rendered:
    """Resolve and render ``board`` (cached by input hashes); ``RenderError`` says why not."""
    build = pick_build(board, builds)
    try:
        key = render_key(board, build, ctx)
    except OSError as err:
        raise RenderError(f"{err.filename}: {err.strerror}") from None
    record = ctx.store.cached(key)
    if record is None:
        try:
            record = _render_fresh(board, build, ctx, key)
        except OSError as err:
            raise RenderError(f"{err.filename or build.name}: {err.strerror}") from None
        ctx.store.remember(key, record)
    info = BoardInfo(
        name=board.name,
        hostname=board.hostname,
        user=board.user,
        file=None,
        rule=board.rule,
        build=record["build"],
        configuration=record["configuration"],
        reason=record["reason"],
        served=record["served"],
        artifacts=record["artifacts"],
        warnings=record["warnings"],
        rendered_at=datetime.fromtimestamp(record["rendered_at"], UTC),
    )
    return Rendered(dict(record["names"]), frozenset(record["versioned"]), info)


def unknown_board_candidates(build: Build, hostname: str) -> list[str]:
    """Configurations whose first compatible is ``<vendor>,<hostname>`` (barebox's rule)."""
    return [
        c.name
        for c in build.configurations
        if c.compatible
        and "," in c.compatible[0]
        and hostname_of(c.compatible[0]).lower() == hostname.lower()
    ]


def board_for_hostname(user: str, hostname: str, build: Build) -> Board:
    """A board known only by the name it asked for: matched against the build's FIT.

    barebox's ``global.hostname`` defaults to the board's first DT compatible without the
    vendor, so ``<user>-devboot-rock3a`` can only come from a ``<vendor>,rock3a`` board;
    exactly one such configuration makes it unambiguous. ``RenderError`` says why not.
    """
    names = unknown_board_candidates(build, hostname)
    if not names:
        raise RenderError(
            f"no board file for {user}/{hostname}, and no configuration of build {build.name} "
            f"has a first compatible '<vendor>,{hostname}'"
        )
    if len(names) > 1:
        raise RenderError(
            f"no board file for {user}/{hostname}, and build {build.name} has "
            f"{len(names)} configurations for '<vendor>,{hostname}': {', '.join(names[:5])}; "
            "add a board file"
        )
    conf = next(c for c in build.configurations if c.name == names[0])
    return Board(
        name=hostname,
        hostname=hostname,
        user=user,
        arch=build.arch or "arm64",
        compatible=[conf.compatible[0]],
        build=build.name,
    )
