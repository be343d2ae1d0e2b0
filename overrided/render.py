"""Resolve and render one board: pick build and FIT configuration, make its artifacts as views.

``render_board`` is the per-board step of sources → index → resolve → render. A build's inputs
were ingested into the store when it was indexed (``builds.py``); a board's artifacts are views
over those blobs (``served.View``): its trimmed FIT is a new header and structure around ranges
of the build's FIT, its initrd the modules CPIOs, padding and the init CPIO, its DTB and plain
kernel ranges of the FIT or the ingested ``Image``, its descriptions (barebox devboot script,
PXE, boot.scr, iPXE) literal bytes. Rendering writes no artifact bytes and costs about a
millisecond, so every board is rendered on every refresh. Work that boards share is done once
per build (``BuildParts``: the parsed FIT, added ``hash-1`` values, each configuration's trim,
signatures) and per set of initrd parts (``RenderMemo``).

Served names: the versioned ``<user>-<role>-<hostname>-<hash12>`` names embed the view's
identity (``View.digest``, from its pieces), so equal inputs give equal names; the barebox
script names the ``boot net`` image ``<user>-linux-<hostname>`` instead (see
``clients/barebox.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from overrided import cpio
from overrided.builds import Build
from overrided.clients import FORMATS, Artifacts, Renderer, barebox
from overrided.clients.barebox import net_name
from overrided.config import Board
from overrided.errors import OverridedError
from overrided.fit.cache import FitCache
from overrided.served import Piece, View
from overrided.state import BoardInfo
from overrided.store import Blob, Store

if TYPE_CHECKING:
    from overrided.fit import Fit
    from overrided.fit.trim import Segment

log = logging.getLogger(__name__)

# Bumped whenever the rendered output for the same inputs changes (invalidates cached warnings).
RENDER_VERSION = "3"

# CPIO blobs whose members are remembered (a few builds' modules and init CPIOs).
_INSPECTED = 16
# Seconds a modules CPIO's listing waits for its build's FIT parse at most (see ``read``).
_WAIT_FOR_PARSE = 10.0

FORCED_SIGNING_WARNING = (
    "signed_images_forced: barebox ignores every boot override on this board "
    "(bootm_signed_images_are_forced), so devboot changes nothing"
)


class RenderError(OverridedError):
    """A board cannot be rendered; ``str()`` says why (no match, missing file, bad key...)."""


@dataclass(frozen=True)
class Render:
    """A board's render: served name → view, and what the API shows about it."""

    names: Mapping[str, View]
    versioned: frozenset[str]  # names that embed a view's identity (kept after a rebuild)
    info: BoardInfo

    def same_names(self, other: Render | None) -> bool:
        """Whether ``other`` serves the same names with the same views."""
        return other is not None and dict(self.names) == dict(other.names)


def views_of(fit_blob: Blob, segments: Sequence[Segment]) -> tuple[Piece, ...]:
    """A FIT trim's segments (``fit.trim.plan``) as view pieces over the FIT's blob; runs of
    literal segments are joined into one piece."""
    pieces: list[Piece] = []
    literal = bytearray()
    for seg in segments:
        if isinstance(seg, bytes):
            literal += seg
            continue
        if literal:
            pieces.append(Piece.literal(bytes(literal)))
            literal.clear()
        pieces.append(fit_blob.range(seg[0], seg[1]))
    if literal:
        pieces.append(Piece.literal(bytes(literal)))
    return tuple(pieces)


def rebase(data: bytes, plain: Sequence[Piece], *, least: int = 4096) -> tuple[Piece, ...]:
    """``data`` as pieces that reuse ``plain``'s file ranges where ``data`` holds the same bytes
    at the same place (a signature node added after the images moves none of their data), and
    literal bytes elsewhere."""
    pieces: list[Piece] = []
    pos = 0  # where the next piece of ``data`` starts
    at = 0  # where the current piece of ``plain`` starts in its own output
    literal_from = 0
    for p in plain:
        if (
            p.path is not None
            and p.length >= least
            and at >= pos
            and at + p.length <= len(data)
            and _same(data, at, p)
        ):
            if at > literal_from:
                pieces.append(Piece.literal(data[literal_from:at]))
            pieces.append(p)
            pos = literal_from = at + p.length
        at += p.length
    if literal_from < len(data):
        pieces.append(Piece.literal(data[literal_from:]))
    return tuple(pieces)


def _same(data: bytes, at: int, piece: Piece) -> bool:
    assert piece.path is not None
    with piece.path.open("rb") as f:
        f.seek(piece.offset)
        return f.read(piece.length) == data[at : at + piece.length]


class BuildParts:
    """One build's FIT, parsed once (mapped from its immutable store blob), and the views that
    its boards share: each configuration's trim, signed trims, DTBs and the plain kernel.

    Kept for as long as the build is indexed, so ``hash-1`` values and signatures are computed
    once per image and build, not per board or per refresh. Used by one refresh at a time.
    """

    def __init__(self, build: Build, fits: FitCache) -> None:
        assert build.fit_blob is not None
        self.build = build
        self.blob = build.fit_blob
        self._fits = fits
        # The parse the build's index made, if it is still there.
        self.fit: Fit = fits.open(self.blob.path, build.fit)
        self._trims: dict[str, View] = {}
        self._signed: dict[tuple[str, str, str], View] = {}
        self._images: dict[str, View] = {}

    def trimmed(self, config: str) -> View:
        """The FIT holding only ``config`` (its default) with sha256 ``hash-1`` in every image
        (barebox refuses crc32: docs/formats.md)."""
        view = self._trims.get(config)
        if view is None:
            from overrided.fit.trim import plan

            view = View(views_of(self.blob, plan(self.fit, config, add_hashes=True)))
            self._trims[config] = view
        return view

    def signed(self, config: str, key_name: str, keys_dir: Path) -> View:
        """The trim of ``config`` signed with the key ``key_name`` (made once per key file)."""
        from overrided.fit.sign import sign_configuration
        from overrided.keys import key_algo, load_signing_key, private_key_path

        key_path = private_key_path(keys_dir, key_name)
        try:
            st = key_path.stat()
        except OSError as err:
            raise RenderError(f"key {key_name!r}: {err.strerror}") from None
        ident = (config, key_name, f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
        view = self._signed.get(ident)
        if view is None:
            plain = self.trimmed(config)
            signing_key = load_signing_key(keys_dir, key_name)
            signed = sign_configuration(
                plain.read(),
                config,
                signing_key,
                key_name=key_name,
                algo=f"sha256,{key_algo(signing_key)}",
                # The build's own time, so the same inputs always give the same signed bytes.
                timestamp=self.fit.timestamp or int(self.build.mtime),
            )
            view = self._signed[ident] = View(rebase(signed, plain.pieces))
        return view

    def image(self, unit: str) -> View:
        """The stored payload of image ``unit``, as a range of the FIT."""
        view = self._images.get(unit)
        if view is None:
            img = self.fit.images[unit]
            view = self._images[unit] = View((self.blob.range(img.data_start, img.size),))
        return view

    def close(self) -> None:
        """Release the FIT's mapping."""
        self._fits.drop(self.blob.path)


@dataclass
class RenderMemo:
    """What one refresh's renders share besides a build's parts: initrds by their parts'
    contents, and small files named by board files (init CPIOs, overlays) as ingested blobs."""

    initrds: dict[tuple[tuple[str, ...], str], tuple[View, list[str]]] = field(default_factory=dict)
    files: dict[Path, Blob] = field(default_factory=dict)
    inits: dict[str, Blob] = field(default_factory=dict)  # by the name a board file gives
    built: dict[float, str] = field(default_factory=dict)  # a build's time, as renders say it
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class RenderContext:
    """What renders need besides the board and the build."""

    store: Store
    boards_dir: Path
    keys_dir: Path
    http_base: str | None = None
    parts: dict[str, BuildParts] = field(default_factory=dict)  # by the FIT blob's digest
    fits: FitCache = field(default_factory=FitCache)  # parsed FITs, shared with the index
    memo: RenderMemo = field(default_factory=RenderMemo)
    # CPIO blobs' members (for initrd warnings), read once per blob on a thread of their own.
    _inspections: dict[str, Future[list[cpio.Part]]] = field(default_factory=dict)
    _pool: ThreadPoolExecutor | None = None

    def inspect_soon(self, blob: Blob) -> None:
        """Start reading the members of a CPIO blob (a new modules CPIO takes a few tenths of a
        second), so that renders which need them wait less or not at all."""
        if blob.digest in self._inspections:
            return
        self._inspections[blob.digest] = self._inspecting().submit(cpio.inspect, blob.path)
        while len(self._inspections) > _INSPECTED:
            self._inspections.pop(next(iter(self._inspections)))  # the oldest

    def read(self, copy: Path, after: threading.Event) -> Future[list[cpio.Part]]:
        """``builds.MembersReader``: list the members of a modules CPIO's finished copy in
        the store while its hash is computed in another process, once ``after`` is set. The
        copy is opened here: it is renamed into the blobs once hashed, maybe before the listing
        begins."""
        try:
            opened = open(copy, "rb")  # noqa: SIM115 - closed by cpio.inspect
        except OSError as err:
            failed: Future[list[cpio.Part]] = Future()
            failed.set_exception(err)
            return failed

        def listing() -> list[cpio.Part]:
            after.wait(_WAIT_FOR_PARSE)  # set when the FIT parse ends, however it ends
            return cpio.inspect(copy, opened)

        return self._inspecting().submit(listing)

    def stored(self, blob: Blob, read: Future[list[cpio.Part]] | None) -> None:
        """``builds.MembersReader``: the members ``read`` from the copy that became ``blob``
        are the blob's. A copy that could not be listed is read again as the blob, so that
        what went wrong names the blob's file."""
        if read is None:
            self.inspect_soon(blob)
            return

        def as_blob() -> list[cpio.Part]:
            # Runs on the same single thread, after the listing: ``read`` is done.
            try:
                parts = read.result()
            except Exception:  # read again below, for a message that names the blob
                return cpio.inspect(blob.path)
            return [dataclasses.replace(p, path=blob.path) for p in parts]

        self._inspections[blob.digest] = self._inspecting().submit(as_blob)
        while len(self._inspections) > _INSPECTED:
            self._inspections.pop(next(iter(self._inspections)))  # the oldest

    def _inspecting(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inspect")
        return self._pool

    def inspected(self, path: Path) -> list[cpio.Part]:
        """The members of a blob's CPIO parts (``path`` is a store blob's: its name is its
        digest)."""
        found = self._inspections.get(path.name)
        if found is None:
            return cpio.inspect(path)
        return found.result()

    def parts_of(self, build: Build) -> BuildParts:
        """The build's shared parts, opened on first use."""
        assert build.fit_blob is not None
        found = self.parts.get(build.fit_blob.digest)
        if found is None:
            found = self.parts[build.fit_blob.digest] = BuildParts(build, self.fits)
        return found

    def ingested(self, path: Path) -> Blob:
        """A board file's small input (init CPIO, overlay) as a blob, once per refresh."""
        found = self.memo.files.get(path)
        if found is None:
            found = self.memo.files[path] = self.store.ingest(path)
        return found

    def forget(self, digests: Sequence[str]) -> None:
        """Drop whatever was read from these blobs (parsed FITs, CPIO members): their bytes
        were found corrupt."""
        for digest in digests:
            found = self.parts.pop(digest, None)
            if found is not None:
                found.close()
            self._inspections.pop(digest, None)
        self.fits.retain({p.blob.digest for p in self.parts.values()})

    def retire(self, live: set[str]) -> None:
        """Close the parts of builds whose FIT digest is not in ``live`` (all, and the
        inspection thread, when ``live`` is empty)."""
        for digest in [d for d in self.parts if d not in live]:
            self.parts.pop(digest).close()
        self.fits.retain(live)
        if not live and self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._inspections.clear()


def versioned_name(user: str, role: str, hostname: str, digest: str) -> str:
    """``<user>-<role>-<hostname>-<hash12>``: a name whose bytes never change."""
    return f"{user}-{role}-{hostname}-{digest[:12]}"


def renderer_for(fmt: str) -> Renderer:
    """The render function for a board format; ``RenderError`` if there is none."""
    if fmt not in FORMATS:
        raise RenderError(f"format {fmt!r} is not available (known: {', '.join(FORMATS)})")
    return FORMATS[fmt].render


def _overlay_path(name: str, ctx: RenderContext, build: Build) -> Path:
    """An overlay named in a board file: relative to the boards folder, else found in the build."""
    direct = ctx.boards_dir / name
    if direct.is_file():
        return direct
    hits = sorted(p for p in build.path.rglob(Path(name).name) if p.is_file())
    if not hits:
        raise RenderError(f"overlay {name!r}: not in {ctx.boards_dir.name}/ nor in {build.name}")
    return hits[0]


def kernel_alone(board: Board, fit: Fit) -> str | None:
    """For a board that boots the build's kernel alone with a device tree of its own
    (``image = "kernel"``, ``oftree`` not ``"fit"``: QEMU's, say), the first configuration with
    a kernel, as no configuration needs to describe the board; ``None`` for other boards."""
    if board.image != "kernel" or board.oftree == "fit":
        return None
    return next((c.name for c in fit.configurations.values() if c.kernel), None)


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


def initrd_view(
    blobs: Sequence[Blob], release: str | None, ctx: RenderContext
) -> tuple[View, list[str]]:
    """The initrd of ``blobs`` in order (modules CPIOs, then the init CPIO) as a view, and
    ``cpio.initrd_warnings`` about it; made once per refresh for each set of parts, the
    warnings cached in the store by the parts' contents."""
    from overrided.cpio import check_part, initrd_warnings, layout

    digests = tuple(b.digest for b in blobs)
    key = (digests, release or "")
    with ctx.memo.lock:
        found = ctx.memo.initrds.get(key)
    if found is not None:
        return found
    placed = layout([(b.path, b.size, check_part(b.path)) for b in blobs])
    pieces: list[Piece] = []
    for blob, part in zip(blobs, placed, strict=True):
        pieces.append(blob.range(0, part.size))
        if part.padding:
            pieces.append(Piece.literal(b"\0" * part.padding))
    warn_ids = ["initrd-warnings", RENDER_VERSION, *digests, release or ""]
    warn_key = hashlib.sha256("\0".join(warn_ids).encode()).hexdigest()
    cached = ctx.store.cached(warn_key)
    if cached is not None:
        warnings = [str(w) for w in cached["warnings"]]
    else:
        # Named by the build's files, not by digests, in messages: people read them.
        warnings = initrd_warnings([b.path for b in blobs], release, ctx.inspected)
        ctx.store.remember(warn_key, {"warnings": warnings})
    found = (View(tuple(pieces)), warnings)
    with ctx.memo.lock:
        ctx.memo.initrds[key] = found
    return found


def _initrd_parts(board: Board, build: Build, ctx: RenderContext) -> list[Blob]:
    parts = list(build.module_blobs)
    if board.init:
        init = ctx.memo.inits.get(board.init)
        if init is None:
            init = ctx.memo.inits[board.init] = ctx.ingested(ctx.boards_dir / board.init)
        parts.append(init)
    return parts


def _named(warnings: list[str], blobs: Sequence[Blob], build: Build, board: Board) -> list[str]:
    """Warnings with store paths replaced by the names people know the files by."""
    names = {str(b.path): str(m) for m, b in zip(build.modules, build.module_blobs, strict=True)}
    if board.init:
        init = blobs[-1]
        names[str(init.path)] = board.init
    out = []
    for w in warnings:
        for path, name in names.items():
            w = w.replace(path, name)
        out.append(w)
    return out


def warm(board: Board, build: Build, ctx: RenderContext) -> None:
    """Make the FIT trim that ``board`` takes from ``build`` (kept in the build's parts), so
    that its render finds it made. Problems are left for the render to report."""
    from overrided.fit import match

    if build.kernel_only or board.sign:
        return
    try:
        parts = ctx.parts_of(build)
        config = match(parts.fit, board.compatible, board.rule).config
        config = config or kernel_alone(board, parts.fit)
        if config is not None:
            parts.trimmed(config)
    except (OverridedError, OSError):
        pass


def render_board(
    board: Board, builds: Sequence[Build], ctx: RenderContext, *, file: str | None = None
) -> Render:
    """Resolve and render ``board`` (from board file ``file``, if any) into views;
    ``RenderError`` (or another ``OverridedError``) says why not."""
    build = pick_build(board, builds)
    try:
        return _render(board, build, ctx, file)
    except OSError as err:
        raise RenderError(f"{err.filename or build.name}: {err.strerror}") from None


def _render(board: Board, build: Build, ctx: RenderContext, file: str | None) -> Render:
    from overrided.fit import match

    parts = ctx.parts_of(build)
    fit = parts.fit
    names: dict[str, View] = {}
    versioned: list[str] = []
    artifacts: dict[str, str] = {}
    warnings: list[str] = []
    u, h = board.user, board.hostname

    def publish(role: str, view: View, *, stable: str | None = None) -> str:
        name = versioned_name(u, role, h, view.digest)
        names[name] = view
        versioned.append(name)
        artifacts[role] = name
        if stable:
            names[stable] = view
        return name

    if build.kernel_only:
        why = kernel_only_refusal(board, build)
        if why:
            raise RenderError(why)
        # Its one configuration holds only the kernel: nothing to match.
        config = next(iter(fit.configurations))
        match_reason = "a kernel-only build (no DTBs): the board keeps its own device tree"
    else:
        m = match(fit, board.compatible, board.rule)
        chosen, match_reason = m.config, m.reason
        if chosen is None:
            chosen = kernel_alone(board, fit)
            match_reason = f"{chosen}'s kernel, with the board's own device tree ({m.reason})"
        if chosen is None:
            raise RenderError(f"build {build.name}: {m.reason}")
        config = chosen
    conf = fit.configurations[config]
    effective = [c.lower() for c in conf.effective_compatible(fit)]
    if (
        not build.kernel_only
        and board.rule == "barebox"
        and board.compatible[0].lower() not in effective
        # A board that takes only the kernel (its own DT) boots the same whatever conf it is.
        and (board.image == "fit" or board.oftree == "fit")
    ):
        # barebox boots /configurations/default when nothing matches: serve what it would
        # boot, and say that it is a guess.
        warnings.append(
            f"no configuration lists {board.compatible[0]!r}: {config} is the FIT's "
            "default, which barebox would boot; check the board's compatible"
        )
    fit_view = (
        parts.signed(config, board.sign, ctx.keys_dir) if board.sign else parts.trimmed(config)
    )
    fit_name = publish("fit", fit_view)

    kernel_name: str | None = None
    # A plain kernel for boards that boot one, and for formats that cannot boot a FIT (iPXE).
    plain = [f for f in board.formats if f in FORMATS and FORMATS[f].plain_kernel]
    if board.image == "kernel" or plain:
        try:
            kernel_name = publish("kernel", _plain_kernel(parts, build, conf.kernel))
        except RenderError as err:
            if board.image == "kernel":
                raise
            warnings += [f"{f}: {err}" for f in plain]
    # barebox's `boot net` image, which the devboot script names too: what the board's image
    # mode boots (a FIT for `image = "none"`, so that plain `boot net` works).
    if board.image == "kernel" and kernel_name:
        names[net_name(u, "linux", h)] = names[kernel_name]
    else:
        names[net_name(u, "linux", h)] = fit_view

    oftree_name: str | None = None
    if conf.fdt and fit.images[conf.fdt[0]].compression in ("none", ""):
        if board.oftree == "fit":
            dtb = parts.image(conf.fdt[0])
            oftree_name = publish("oftree", dtb, stable=net_name(u, "oftree", h))
    elif board.oftree == "fit" and board.image == "kernel":
        raise RenderError(f"build {build.name}: {config} has no uncompressed fdt to serve")
    description = conf.description or ""

    # make_fit.py -D: the configuration's fdt is a base DTB and overlays. U-Boot applies the
    # list itself; barebox loads only the first fdt of a configuration (loadable_from_fit_oftree
    # in common/bootm-fit.c), so its script names the overlays in bootm.oftree.
    fit_overlays: list[str] = []
    for i, unit in enumerate(conf.fdt[1:]):
        if fit.images[unit].compression not in ("none", ""):
            warnings.append(
                f"fdt {unit} of {config} is {fit.images[unit].compression}-compressed: "
                "barebox cannot apply it as an overlay"
            )
            continue
        fit_overlays.append(publish(f"fdtoverlay{i}" if i else "fdtoverlay", parts.image(unit)))
    if fit_overlays and board.signed_images_forced:
        warnings.append(
            f"{config} lists overlays after its base DTB, which barebox applies only through "
            "devboot's bootm.oftree: a board that forces signed images boots the base alone"
        )
    warnings += ramdisk_warnings(board, build, parts, config)

    overlays: list[str] = []
    for i, o in enumerate(board.overlays):
        blob = ctx.ingested(_overlay_path(o, ctx, build))
        overlays.append(publish(f"overlay{i}" if i else "overlay", blob.view()))

    initrd_name: str | None = None
    initrd_blobs = _initrd_parts(board, build, ctx) if board.initrd else []
    if initrd_blobs:
        stable = net_name(u, "initramfs", h) if board.init else None
        try:
            view, initrd_warnings = initrd_view(initrd_blobs, build.release, ctx)
        except OverridedError as err:  # a broken CPIO: say which of the build's files
            raise RenderError(_named([str(err)], initrd_blobs, build, board)[0]) from None
        initrd_name = publish("initrd", view, stable=stable)
        warnings += _named(initrd_warnings, initrd_blobs, build, board)
    if board.initrd and not build.module_blobs:
        # An upload of image.fit alone becomes the latest build: say so rather than let the
        # board lose its modules silently.
        warnings.append(
            f"initrd = {board.initrd!r}, but build {build.name} has no modules CPIO "
            "(make modules-cpio-pkg): "
            + ("the initrd is the init CPIO alone" if board.init else "no initrd is served")
        )
    if board.signed_images_forced:
        warnings.append(FORCED_SIGNING_WARNING)

    built = ctx.memo.built.get(build.mtime)
    if built is None:
        built = datetime.fromtimestamp(build.mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ctx.memo.built[build.mtime] = built
    provenance = (
        f"build {build.name}"
        + (f" ({build.release})" if build.release else "")
        + f", configuration {config}"
        + (f" ({description})" if description else "")
        # The build's time, not the render's: equal inputs render equal bytes.
        + f", {match_reason}, built {built}"
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
        configuration=config,
        kernel=kernel_name,
        oftree=oftree_name,
        overlays=tuple(overlays),
        fit_overlays=tuple(fit_overlays),
        initrd=initrd_name,
        image_mode=board.image,
        oftree_mode="overlays" if board.overlays else board.oftree,  # type: ignore[arg-type]
        initrd_mode=board.initrd,
        bootargs=board.kernel_args,  # the board's bootargs and its NFS root
        mac=board.mac[0] if board.mac else None,
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
            names[fname] = View.of_bytes(data)
    if not served:
        raise RenderError("; ".join(warnings) or "no format could be rendered")
    info = BoardInfo(
        name=board.name,
        hostname=board.hostname,
        user=board.user,
        file=file,
        rule=board.rule,
        build=build.name,
        configuration=config,
        reason=match_reason,
        served=served,
        artifacts=artifacts,
        warnings=warnings,
        rendered_at=datetime.now(UTC),
    )
    return Render(names, frozenset(versioned), info)


def kernel_only_refusal(board: Board, build: Build) -> str | None:
    """Why ``board`` cannot boot from the kernel-only ``build``; ``None`` when it can (its
    device tree is the board's own: ``oftree`` is ``board``, ``keep`` or a list of overlays)."""
    if board.oftree != "fit":
        return None
    return (
        f"build {build.name} is a kernel without DTBs, and the board takes its device tree "
        'from the build (oftree = "fit"): set oftree = "board" or "keep" to boot with the '
        "board's own, or add the *.dtb files to the build"
    )


# How much of a FIT ramdisk is read to tell whether it holds kernel modules.
_RAMDISK_PEEK = 1 << 16


def ramdisk_holds_modules(parts: BuildParts, unit: str) -> bool | None:
    """Whether the FIT's ramdisk ``unit`` holds ``lib/modules/`` (``usr/lib/modules``
    included), judged by its first members; ``None`` when it is not a CPIO we can read."""
    img = parts.fit.images[unit]
    with parts.blob.path.open("rb") as f:
        f.seek(img.data_start)
        first = f.read(16)
    head = b""
    try:
        raw = cpio.compression_of(first) is None
        chunks = cpio.decompressed(parts.blob.path, img.data_start)
        try:
            for chunk in chunks:
                head += chunk
                if len(head) >= _RAMDISK_PEEK:
                    break
        finally:
            chunks.close()  # stops a decompressing tool at once
    except OverridedError:
        return None  # not a CPIO, or a broken stream
    if raw:
        head = head[: img.size]  # the FIT's next bytes are not part of the archive
    return b"lib/modules/" in head[:_RAMDISK_PEEK]


def ramdisk_warnings(board: Board, build: Build, parts: BuildParts, config: str) -> list[str]:
    """What a FIT configuration's ``ramdisk`` (make_fit.py -r) does with the board's initrd.

    barebox's FIT override takes the configuration's ramdisks as the initrd
    (``loadable_from_fit_initrd`` in ``common/bootm-fit.c``); ``bootm.initrd`` then replaces
    them, or with a leading colon (``initrd = "append"``) follows them. Appending the build's
    modules CPIO after a ramdisk that holds modules gives the kernel two copies.
    """
    conf = parts.fit.configurations[config]
    if not conf.ramdisk or board.image != "fit" or board.initrd != "append":
        return []
    if not build.module_blobs:
        return []
    holds = [ramdisk_holds_modules(parts, unit) for unit in conf.ramdisk]
    if any(holds):
        return [
            f"{config}'s ramdisk holds kernel modules and initrd = \"append\" adds the build's "
            "modules CPIO after it: the kernel gets the modules twice (the later copy wins); "
            'use initrd = "replace"'
        ]
    if None in holds:
        return [
            f"{config}'s ramdisk is compressed and initrd = \"append\" adds the build's modules "
            "CPIO after it: if that ramdisk holds modules too, the kernel gets them twice"
        ]
    return []


def _plain_kernel(parts: BuildParts, build: Build, unit: str | None) -> View:
    """The build's plain kernel: its ingested ``Image``, else the FIT's kernel image."""
    if build.kernel_blob is not None:
        return build.kernel_blob.view()
    if not unit:
        raise RenderError(f"build {build.name}: the configuration has no kernel")
    img = parts.fit.images[unit]
    if img.compression not in ("none", ""):
        raise RenderError(
            f"build {build.name}: a plain kernel is needed, the FIT's is {img.compression}"
        )
    return parts.image(unit)


def unknown_board_candidates(build: Build, hostname: str) -> list[str]:
    """Configurations whose first compatible is ``<vendor>,<hostname>`` (barebox's rule)."""
    return [
        c.name
        for c in build.configurations
        if c.compatible
        and "," in c.compatible[0]
        and barebox.default_hostname(c.compatible[0]).lower() == hostname.lower()
    ]


def board_for_hostname(user: str, hostname: str, build: Build) -> Board:
    """A board known only by the name it asked for: matched against the build's FIT.

    barebox's ``global.hostname`` defaults to the board's first DT compatible without the
    vendor, so the devboot script of ``rock3a`` can only come from a ``<vendor>,rock3a`` board;
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
