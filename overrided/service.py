"""The running service: index builds, render boards, publish catalogs, observe transfers.

One direction for data: the watcher reports changes → builds are (re)indexed → every board is
resolved and rendered (cached) → a new ``Catalog`` is built aside and swapped in whole →
TFTP/HTTP read it through ``lookup``. Only ``_publish`` writes the catalog; heavy work runs in a
worker thread so the servers on the event loop keep answering.

A client that reads a board's devboot script (or a ``boot net`` name) is answered that board's
stable names from the same snapshot until it goes idle (``pins.py``), so a rebuild between its
reads never mixes renders; the store keeps the blobs of live pins.

Boards known only by their hostname (no board file) are resolved when a client first asks for
one of their stable names: the lookup checks the latest build for exactly one configuration
whose first compatible is ``<vendor>,<hostname>``, renders it and publishes it; the outcome,
success or reason, is remembered per build so later lookups cost a dictionary access, and boards
once asked for are re-rendered with every new build. Rendering them all ahead of time would
mean one trimmed FIT per configuration (577 for Debian's arm64 kernel), so it waits for the
first request; that render runs on the loop when it is quick (a trim, a small initrd), else on a
worker thread while the request is told the board is being prepared.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from overrided import builds as builds_mod
from overrided.builds import Build, index_build
from overrided.catalog import Catalog, Group
from overrided.clients.barebox import script_name, stable_names
from overrided.config import Board, Settings, display_path, load_boards
from overrided.errors import OverridedError
from overrided.pins import Pins
from overrided.render import (
    RenderContext,
    Rendered,
    RenderError,
    board_for_hostname,
    initrd_key,
    pick_build,
    render_board,
)
from overrided.served import Entry, NotServed, Transfer, clean_name
from overrided.state import BoardInfo, BuildInfo, Event, EventHub, IndexResult, Journal
from overrided.store import Store

log = logging.getLogger("overrided.service")

# The names barebox itself asks for (design.md): a request for one of these from a board we
# have no file for is worth resolving by hostname.
_STABLE = re.compile(
    r"^(?P<user>[A-Za-z0-9][A-Za-z0-9._+]*?)-(?:devboot|linux|oftree|initramfs)-"
    r"(?P<host>[A-Za-z0-9][A-Za-z0-9._+-]*)$"
)


# An initrd this small is copied within a TFTP retransmit interval even on slow disks.
_QUICK_INITRD = 32 << 20
# Hostname-only boards remembered (with their reason when they cannot be served).
_MAX_UNKNOWN = 256


@dataclass
class _Unknown:
    """A hostname-only board's last resolution against one build."""

    build: str
    build_mtime: float
    rendered: Rendered | None
    reason: str


class OverridedService:
    """Implements ``state.Service`` (HTTP) and ``served.TransferObserver`` (both servers)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.builds_dir = settings.builds_dir
        self.boards_dir = settings.boards_dir
        self.events = EventHub()
        self.journal = Journal()
        self.store = Store(settings.store_dir)
        self.ctx = RenderContext(
            store=self.store,
            boards_dir=settings.boards_dir,
            keys_dir=settings.keys_dir,
            http_base=settings.public_url,
        )
        self.catalog = Catalog()
        # Pins never outlive the grace period, for which the same blobs stay served under
        # their versioned names; collect() also keeps the blobs of live pins.
        self.pins = Pins(idle=settings.pin_idle, limit=settings.grace)
        self._builds: dict[str, Build] = {}
        # Builds whose new contents failed to index while their previous contents were good:
        # boards keep what they had from the previous contents until the build is fixed.
        self._rejected: dict[str, Build] = {}
        self._boards: list[Board] = []
        self._board_errors: dict[str, str] = {}
        self._rendered: dict[str, Rendered] = {}
        self._board_info: dict[str, BoardInfo] = {}
        # Hostname-only boards are resolved from the loop (lookups) and from refresh threads.
        self._unknown: dict[tuple[str, str], _Unknown] = {}
        self._unknown_lock = threading.Lock()
        self._preparing: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Builds whose inputs were still open for writing when last indexed, and the tasks
        # that index them again once their writers closed them.
        self._writing: dict[str, tuple[Path, ...]] = {}
        self._writer_waits: dict[str, asyncio.Task[None]] = {}
        self._versioned_ever: set[str] = set()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Index everything once, publish, and start watching the two folders."""
        self.builds_dir.mkdir(parents=True, exist_ok=True)
        self.store.digests.process.start()  # not at the first new build, which waits for it
        await self.refresh(None, boards=True)
        self._tasks.append(asyncio.create_task(self._watch(), name="watch"))
        self._tasks.append(asyncio.create_task(self._collect(), name="gc"))

    async def close(self) -> None:
        """Stop watching; in-flight renders finish first."""
        self._stop.set()
        tasks = [*self._tasks, *self._writer_waits.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        async with self._lock:
            await asyncio.to_thread(self.store.digests.close)

    async def _watch(self) -> None:
        async for changes in builds_mod.watch(
            self.builds_dir,
            self.boards_dir,
            step_ms=self.settings.debounce_ms,
            stop=self._stop,
        ):
            try:
                await self.refresh(set(changes.builds), boards=changes.boards)
            except Exception:  # keep watching whatever one refresh did
                log.exception("refresh failed")

    async def _collect(self) -> None:
        period = max(1.0, min(60.0, self.settings.grace / 4 or 1.0))
        while not self._stop.is_set():
            await asyncio.sleep(period)
            try:
                await self.collect()
            except OSError as err:  # keep collecting later whatever happened now
                log.error("store: collection failed: %s", err)

    async def collect(self, grace: float | None = None) -> list[str]:
        """One garbage collection: drop expired retired names and ended pins, then delete the
        blobs nothing has referred to for ``grace`` seconds (default: the grace setting)."""
        grace = self.settings.grace if grace is None else grace
        async with self._lock:  # never while a refresh's thread changes the renders
            self._publish()  # drops expired retired names
            # Blobs a client's pin can still hand out stay, whatever the catalog says.
            live = self.catalog.digests() | self.pins.digests()
            # FITs we built from Image + DTBs are inputs, not served: keep them too.
            live |= {
                b.fit.name
                for b in self._builds.values()
                if b.fit is not None and b.fit.parent == self.store.blobs
            }
            deleted = await asyncio.to_thread(self.store.collect, live, grace)
        if deleted:
            log.info("store: deleted %d blobs unserved for %gs", len(deleted), grace)
        return deleted

    # --- the pipeline -------------------------------------------------------------------------

    async def refresh(self, changed: set[str] | None, *, boards: bool = False) -> None:
        """Re-index ``changed`` builds (``None``: all), reload boards if asked, render, publish."""
        async with self._lock:
            if self._stop.is_set():
                return  # closing: a refresh queued behind close() would start hashing again
            await asyncio.to_thread(self._refresh_sync, changed, boards)
            self._publish()
            for name in self._writing:
                if name not in self._writer_waits and not self._stop.is_set():
                    self._writer_waits[name] = asyncio.create_task(
                        self._await_writers(name), name=f"writers-{name}"
                    )

    async def _await_writers(self, name: str) -> None:
        """Index ``name`` again as soon as no process holds its inputs open for writing.

        The watcher reports writes, not closes, so the closing is polled: a few syscalls per
        file every 5 ms at first (a FIT is written within a fraction of a second), then less
        often for a slow copy. The files are those the last index of ``name`` waited for.
        """
        try:
            start = time.monotonic()
            while not self._stop.is_set():
                waited = time.monotonic() - start
                await asyncio.sleep(0.005 if waited < 1.0 else 0.05 if waited < 30.0 else 0.5)
                files = self._writing.get(name)
                if files is None:
                    return  # indexed meanwhile
                if not await asyncio.to_thread(builds_mod.being_written, files):
                    break
        finally:
            del self._writer_waits[name]
        if name in self._writing and not self._stop.is_set():
            await self.refresh({name})

    def _refresh_sync(self, changed: set[str] | None, boards: bool) -> None:
        if boards:
            self._boards, self._board_errors = load_boards(self.boards_dir)
            for err in self._board_errors.values():
                log.error("board file: %s", err)
            log.info(
                "boards: %d loaded (%s), %d invalid",
                len(self._boards),
                ", ".join(b.name for b in self._boards) or "none",
                len(self._board_errors),
            )
        folders = {p.name: p for p in builds_mod.build_folders(self.builds_dir)}
        names = set(folders) | set(self._builds) if changed is None else changed
        self.ctx.fits = builds_mod.FitCache()
        try:
            for name in sorted(names):
                # A build the watcher just saw is likely about to be picked: hash its
                # modules beside the FIT parse (index_build); at start-up, leave it to renders.
                self._index_one(name, folders.get(name), hash_modules=changed is not None)
            self._render_all()
        finally:
            self.ctx.fits.close()
            self.ctx.fits = None

    def _index_one(
        self, name: str, folder: Path | None, *, hash_modules: bool = False
    ) -> Build | None:
        t0 = time.monotonic()
        if folder is None or not folder.is_dir():
            self._rejected.pop(name, None)
            self._writing.pop(name, None)
            if name in self._builds:
                # Replaced, never mutated: lookups on the loop read it while a refresh runs.
                self._builds = {k: v for k, v in self._builds.items() if k != name}
                log.info("build %s: removed", name)
                self.events.publish(Event(kind="build-removed", build=name))
            return None
        build = index_build(
            folder,
            self.store,
            quiet=self.settings.quiet,
            fits=self.ctx.fits,
            hash_modules=hash_modules,
            previous=self._builds.get(name),
        )
        duration = time.monotonic() - t0
        previous = self._builds.get(name)
        if build.writing:
            # Not ready yet, not broken: indexed again when its writers close the files.
            if self._writing.get(name) != build.writing:
                log.info("build %s: waiting: %s", name, build.error)
            self._writing[name] = build.writing
        else:
            self._writing.pop(name, None)
        if build.writing and previous is not None and previous.usable:
            self._rejected[name] = build
            return previous
        if build.error and previous is not None and previous.usable:
            # A rewrite caught half-way, or a broken one: never fall back to another build
            # behind the developer's back; boards keep this build's previous render.
            self._rejected[name] = build
            log.error("build %s: %s; boards keep its previous contents", name, build.error)
            self.events.publish(
                Event(
                    kind="build-failed",
                    build=name,
                    data={"duration": duration, "error": build.error, "kept": True},
                )
            )
            return previous
        self._rejected.pop(name, None)
        self._builds = {**self._builds, name: build}
        if build.writing:
            pass  # logged above, once per set of files
        elif build is previous:
            log.debug("build %s: unchanged since its last index", name)
        elif build.error:
            log.error("build %s: %s", name, build.error)
            self.events.publish(
                Event(
                    kind="build-failed",
                    build=name,
                    data={"duration": duration, "error": build.error},
                )
            )
        else:
            log.info(
                "build %s: indexed in %.3fs: release %s, %s, %d configurations, %d modules CPIOs",
                name,
                duration,
                build.release or "unknown",
                f"FIT {build.info().fit}"
                if build.kernel is None
                else f"kernel {build.kernel.name}",
                len(build.configurations),
                len(build.modules),
            )
            self.events.publish(
                Event(kind="build-indexed", build=name, data={"duration": duration})
            )
        return build

    def _render_one(self, board: Board) -> Rendered | None:
        t0 = time.monotonic()
        builds = list(self._builds.values())
        kept = self._rendered.get(board.name)
        if kept is not None and kept.info.build in self._rejected:
            try:
                same_build = pick_build(board, builds).name == kept.info.build
            except RenderError:
                same_build = False
            if same_build:
                return kept  # its build's new contents are broken: serve what it had
        try:
            r = render_board(board, builds, self.ctx)
        except OverridedError as err:  # RenderError, FitError, CpioError, KeyStoreError...
            self._rendered.pop(board.name, None)
            info = BoardInfo(
                name=board.name,
                hostname=board.hostname,
                user=board.user,
                file=self._file_of(board),
                rule=board.rule,
                build=board.build,
                reason=str(err),
                error=str(err),
            )
            if (
                self._board_info.get(board.name, info).error != info.error
                or board.name not in self._board_info
            ):
                log.warning("board %s: not served: %s", board.name, err)
                self.events.publish(
                    Event(
                        kind="board-failed",
                        board=board.name,
                        data={"duration": time.monotonic() - t0, "error": str(err)},
                    )
                )
            self._board_info[board.name] = info
            return None
        info = r.info.model_copy(update={"file": self._file_of(board)})
        previous = self._rendered.get(board.name)
        self._rendered[board.name] = r
        self._board_info[board.name] = info
        if previous is None or previous.names != r.names:
            log.info(
                "board %s (%s-devboot-%s): build %s, %s: %s%s (rendered in %.3fs)",
                board.name,
                board.user,
                board.hostname,
                info.build,
                info.configuration,
                info.reason,
                "".join(f"; warning: {w}" for w in info.warnings),
                time.monotonic() - t0,
            )
            self.events.publish(
                Event(
                    kind="board-rendered",
                    board=board.name,
                    build=info.build,
                    data={"duration": time.monotonic() - t0, "artifacts": info.artifacts},
                )
            )
        return r

    def _file_of(self, board: Board) -> str | None:
        path = self.boards_dir / f"{board.name}.toml"
        return display_path(path) if path.exists() else None

    def _render_all(self) -> None:
        names = {b.name for b in self._boards}
        for gone in set(self._rendered) - names:
            self._rendered.pop(gone, None)
        for gone in set(self._board_info) - names:
            self._board_info.pop(gone, None)
        for board in self._boards:
            self._render_one(board)
        # Hostname-only boards that were asked for before: follow the new build at once;
        # a board file written for one since takes over its names.
        claimed = {(b.user, b.hostname) for b in self._boards}
        with self._unknown_lock:
            for key in claimed & set(self._unknown):
                del self._unknown[key]
            asked = list(self._unknown)
        for user, host in asked:
            self._resolve_unknown(user, host, self.ctx)

    def _publish(self) -> None:
        entries: list[Entry] = []
        groups: list[Group] = []
        versioned: set[str] = set()
        rendered = [(n, r) for n, r in self._rendered.items()]
        claimed = {(b.user, b.hostname) for b in self._boards}
        with self._unknown_lock:
            unknown = [u for k, u in self._unknown.items() if k not in claimed]
        rendered += [(u.rendered.info.name, u.rendered) for u in unknown if u.rendered is not None]
        for board, r in rendered:
            for name, digest in r.names.items():
                blob = self.store.blob(digest)
                if blob is None:
                    log.error(
                        "board %s: blob %s of %s vanished from the store", board, digest, name
                    )
                    continue
                entries.append(Entry(name, blob, board))
            versioned |= r.versioned
            groups.append(_group(board, r))
        old = self.catalog
        keep = {n for n in old.entries if n in self._versioned_ever}
        self._versioned_ever |= versioned
        self.catalog = old.successor(entries, keep=keep, groups=groups, grace=self.settings.grace)

    # --- hostname-only boards -----------------------------------------------------------------

    def _resolve_unknown(self, user: str, host: str, ctx: RenderContext) -> _Unknown | None:
        """Resolve (or re-resolve for a newer build) a board known only by its hostname."""
        latest = builds_mod.latest(self._builds.values())
        if latest is None:
            return None
        with self._unknown_lock:
            known = self._unknown.get((user, host))
        if known and known.build == latest.name and known.build_mtime == latest.mtime:
            return known
        try:
            board = board_for_hostname(user, host, latest)
            rendered: Rendered | None = render_board(board, [latest], ctx)
            reason = rendered.info.reason if rendered else ""
            log.info(
                "board %s-devboot-%s (no board file): build %s, %s: %s",
                user,
                host,
                latest.name,
                rendered.info.configuration if rendered else "-",
                reason,
            )
        except (OverridedError, ValidationError) as err:
            rendered, reason = None, str(err).splitlines()[0]
            log.warning("board %s-devboot-%s: not served: %s", user, host, reason)
        u = _Unknown(latest.name, latest.mtime, rendered, reason)
        with self._unknown_lock:
            self._unknown[(user, host)] = u
            if len(self._unknown) > _MAX_UNKNOWN:
                # Any client can ask for made-up names: forget the oldest failures first.
                for k in [k for k, v in self._unknown.items() if v.rendered is None][:-1]:
                    if len(self._unknown) <= _MAX_UNKNOWN:
                        break
                    del self._unknown[k]
        return u

    def _cheap_to_render(self, build: Build) -> bool:
        """Whether a hostname-only board of ``build`` renders fast enough for a lookup: the
        FIT trim is quick, but copying a big modules initrd is not, unless it is built."""
        try:
            size = sum(m.stat().st_size for m in build.modules)
        except OSError:
            return False
        if size <= _QUICK_INITRD:
            return True
        # Only digests already known: this runs on the loop and must not hash anything.
        digests = [self.store.digests.peek(m) for m in build.modules]
        known = [d for d in digests if d is not None]
        return len(known) == len(digests) and self.store.cached(initrd_key(known)) is not None

    # --- Service protocol ---------------------------------------------------------------------

    def lookup(self, name: str, *, client: str | None = None) -> Entry:
        """The entry for ``name``: from ``client``'s pin of the board when it has a live one,
        else from the current catalog (then pinning ``client`` when ``name`` is one of a
        board's stable names); a board with no file may be resolved by its hostname.

        A hostname-only board is rendered on its first request, on the loop when that is quick
        (a trim), else on a worker thread while the request gets "being prepared" (the
        servers keep answering everyone else meanwhile).
        """
        if client is None or not self.pins.enabled:
            return self._lookup(name)
        cleaned = clean_name(name)
        pinned = self.pins.lookup(self.catalog, cleaned, client)
        if pinned is not None:
            return pinned
        entry = self._lookup(cleaned)
        # The snapshot that answered: a hostname-only board's first answer was just published.
        self.pins.pin(self.catalog, cleaned, client, entry)
        return entry

    def _lookup(self, name: str) -> Entry:
        try:
            return self.catalog.lookup(name)
        except NotServed as err:
            cleaned = clean_name(name)
            m = _STABLE.match(cleaned)
            if m is None:
                raise
            user, host = m.group("user"), m.group("host")
            if any(b.user == user and b.hostname == host for b in self._boards):
                raise NotServed(f"{err}: board {user}/{host}: {self._why(user, host)}") from None
            latest = builds_mod.latest(self._builds.values())
            if latest is None:
                raise NotServed(f"{err}: no usable build yet") from None
            key = (user, host)
            with self._unknown_lock:
                u = self._unknown.get(key)
            if u is None or u.build != latest.name or u.build_mtime != latest.mtime:
                if key in self._preparing:
                    raise NotServed(f"{err}: board {user}/{host} is being prepared") from None
                ctx = dataclasses.replace(self.ctx, fits=None)
                if not self._cheap_to_render(latest):
                    self._prepare(key, ctx)
                    raise NotServed(
                        f"{err}: board {user}/{host} is being prepared from build {latest.name}; "
                        "ask again in a few seconds"
                    ) from None
                u = self._resolve_unknown(user, host, ctx)
            if u is None or u.rendered is None:
                raise NotServed(f"{err}: {u.reason if u else 'no usable build yet'}") from None
            digest = u.rendered.names.get(cleaned)
            blob = self.store.blob(digest) if digest else None
            if blob is None:
                raise NotServed(f"{err}: board {user}/{host} has no such artifact") from None
            if not self._lock.locked():
                self._publish()  # later lookups hit the catalog; a running refresh publishes too
            return Entry(cleaned, blob, u.rendered.info.name)

    def _prepare(self, key: tuple[str, str], ctx: RenderContext) -> None:
        """Render a hostname-only board on a worker thread, then publish."""
        self._preparing.add(key)
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(None, self._resolve_unknown, key[0], key[1], ctx)

        def done(_: object) -> None:
            self._preparing.discard(key)
            if not self._lock.locked():
                self._publish()

        job.add_done_callback(done)

    def _why(self, user: str, host: str) -> str:
        for b in self._boards:
            if b.user == user and b.hostname == host:
                info = self._board_info.get(b.name)
                return info.reason if info else "not rendered yet"
        return "unknown"

    def boards(self) -> list[BoardInfo]:
        """Every board: by file (valid or not), then hostname-only boards that were asked for."""
        infos = self._board_info
        out = [i for i in (infos.get(b.name) for b in self._boards) if i is not None]
        for file, err in sorted(self._board_errors.items()):
            stem = Path(file).stem
            out.append(BoardInfo(name=stem, hostname="", file=file, reason=err, error=err))
        with self._unknown_lock:
            unknown = sorted(self._unknown.items())
        for (user, host), u in unknown:
            if u.rendered is not None:
                out.append(u.rendered.info)
            else:
                out.append(
                    BoardInfo(
                        name=host,
                        hostname=host,
                        user=user,
                        build=u.build,
                        reason=u.reason,
                        error=u.reason,
                    )
                )
        return out

    def builds(self) -> list[BuildInfo]:
        """Every build folder, indexed or with the reason it could not be."""
        return [self._build_info(b) for b in sorted(self._builds.values(), key=lambda b: b.name)]

    def _build_info(self, build: Build) -> BuildInfo:
        rejected = self._rejected.get(build.name)
        if rejected is None:
            return build.info()
        info = rejected.info()
        info.error = f"{rejected.error}; boards keep its previous contents"
        return info

    async def index_now(self, build: str) -> IndexResult:
        """Index one build at once (after an upload), re-render and publish."""
        await self.refresh({build})
        b = self._builds.get(build)
        info = self._build_info(b) if b else BuildInfo(name=build, error=f"{build}: no such folder")
        return IndexResult(build=info, boards=self.boards())

    async def remove_build(self, build: str) -> None:
        """Delete a build folder, re-render and publish."""
        import shutil

        folder = self.builds_dir / build
        if folder.resolve().parent != self.builds_dir.resolve():
            raise NotServed(f"{build!r} is not a build folder name")
        await asyncio.to_thread(shutil.rmtree, folder, True)
        await self.refresh({build})

    def started(self, transfer: Transfer) -> None:
        """A server accepted a request."""
        self.pins.started(transfer)
        self.events.publish(Event.of_transfer(transfer, started=True))

    def finished(self, transfer: Transfer) -> None:
        """Journal the transfer, log it with its board and outcome, publish the event."""
        self.pins.finished(transfer)
        self.journal.add(transfer)
        # The servers log every request with its outcome; this is the service's own trace.
        log.debug(
            "%s %s %s %s board=%s %d/%d bytes %.3fs%s",
            transfer.protocol,
            transfer.client,
            transfer.name,
            transfer.outcome,
            transfer.board or "-",
            transfer.sent,
            transfer.size,
            transfer.duration,
            f" ({transfer.reason})" if transfer.reason else "",
        )
        self.events.publish(Event.of_transfer(transfer))


def _group(board: str, r: Rendered) -> Group:
    """The stable barebox names of a board's render, which a client reads from one snapshot."""
    info = r.info
    stamp = f", rendered {info.rendered_at:%Y-%m-%dT%H:%M:%SZ}" if info.rendered_at else ""
    return Group(
        board=board,
        script=script_name(info.user, info.hostname),
        names=stable_names(info.user, info.hostname),
        origin=f"build {info.build}{stamp}",
    )


def served_names(service: OverridedService) -> Iterable[str]:
    """Every name the current catalog serves (for logs and tests)."""
    return sorted(service.catalog.entries)
