"""The running service: lifecycle, lookups, observation.

The core is one step, ``pipeline.refresh(previous snapshot, changes) -> snapshot``, run on a
worker thread whenever the watcher reports changes (or an upload lands); the service swaps the
new ``Snapshot`` in whole and publishes its events. Every lookup is answered from one snapshot,
and nothing is rendered or published from a read path.

A client that reads a board's devboot script (or a ``boot net`` name) is answered that board's
stable names from the same snapshot until it goes idle (``pins.py``), so a rebuild between its
reads never mixes renders; the store keeps the blobs of live pins.

A request that a refresh in progress may answer is held, not refused (``served.Held``): during
start-up, while a build is being indexed, or for a hostname-only board of a user not rendered
yet (which starts that render). It is answered once the next snapshot is published, or refused
after ``HOLD_LIMIT`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from overrided import builds as builds_mod
from overrided import watch as watch_mod
from overrided import writers
from overrided.catalog import Catalog
from overrided.clients import barebox
from overrided.config import Settings
from overrided.dhcp import Dnsmasq
from overrided.pins import Pins
from overrided.pipeline import (
    Changes,
    Env,
    Snapshot,
    hostnames,
    publish,
    refresh,
    render_hostnames,
    why_not,
)
from overrided.render import RenderContext
from overrided.served import Entry, Held, NotServed, Transfer, clean_name
from overrided.state import BoardInfo, BuildInfo, Event, EventHub, IndexResult, Journal
from overrided.store import Store

log = logging.getLogger("overrided.service")

# How long a request may be held for a render in progress (barebox gives up after about 15 s
# without an answer, and resends its request every second meanwhile).
HOLD_LIMIT = 10.0
# Held requests remembered at once (any client can ask for names that never come).
_MAX_HELD = 4096
# Seconds between two checks of every blob in use against its name.
VERIFY_EVERY = 3600.0
# After a refresh publishes the board files' renders, the hostname-only boards (one per FIT
# configuration: hundreds) are rendered once no request has begun for QUIET seconds, at once
# when a request waits for one of them, and at the latest LATEST seconds after the publication.
QUIET = 0.1
LATEST = 2.0


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
        self.snapshot = Snapshot()
        # Pins never outlive the grace period, for which the same blobs stay served under
        # their versioned names; collect() also keeps the blobs of live pins.
        self.pins = Pins(idle=settings.pin_idle, limit=settings.grace)
        self._lock = asyncio.Lock()  # one refresh (or collection) at a time
        self._stop = asyncio.Event()
        self._watching = asyncio.Event()  # set once the folders are watched
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        # Changes waiting for the next refresh, and whether one is queued or running.
        self._pending: Changes | None = None
        self._busy = False
        self._published: asyncio.Future[None] | None = None
        self._held: dict[tuple[str | None, str], float] = {}  # (client, name) → first held
        self._last_lookup = 0.0  # time.monotonic() of the last request for a name
        self._last_held = 0.0  # time.monotonic() of the last request held
        # Tasks that index a build again once its writers closed its files.
        self._writer_waits: dict[str, asyncio.Task[None]] = {}
        self.dhcp: Dnsmasq | None = None  # set by `serve --dhcp`: leases in boards()

    @property
    def catalog(self) -> Catalog:
        """The current snapshot's catalog of served names."""
        return self.snapshot.catalog

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Index everything once, publish, and start watching the two folders."""
        self.builds_dir.mkdir(parents=True, exist_ok=True)
        self.store.digests.process.start()  # not at the first new build, which waits for it
        # The watch begins first, so that nothing landing during the first index goes unseen;
        # once it is in place, everything is looked at once more (unchanged builds cost a stat).
        self._tasks.append(asyncio.create_task(self._watch(), name="watch"))
        await self.refresh(None, boards=True)
        self._started = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._watching.wait(), 10.0)
        self._tasks.append(asyncio.create_task(self._collect(), name="gc"))
        self._tasks.append(asyncio.create_task(self._verify(), name="verify"))

    async def close(self) -> None:
        """Stop watching; a refresh in progress finishes first."""
        self._stop.set()
        tasks = [*self._tasks, *self._writer_waits.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        async with self._lock:
            await asyncio.to_thread(self._close_sync)
        self._wake()

    def _close_sync(self) -> None:
        self.ctx.retire(set())
        self.store.digests.close()

    async def _watch(self) -> None:
        async for changes in watch_mod.watch(
            self.builds_dir,
            self.boards_dir,
            step_ms=self.settings.debounce_ms,
            stop=self._stop,
            watching=self._watching,
        ):
            try:
                changed = None if changes.everything else set(changes.builds)
                await self.refresh(changed, boards=changes.boards)
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

    async def _verify(self) -> None:
        """Check every blob the service depends on against its name: once after start-up,
        then every ``VERIFY_EVERY`` seconds, one blob at a time in the hash process (a build
        of 356 MB takes about 0.3 s of its time). A corrupt blob is taken out of service and
        its build ingested anew from its folder."""
        while not self._stop.is_set():
            try:
                await self.verify()
            except OSError as err:  # try again next time whatever happened now
                log.error("store: verification failed: %s", err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), VERIFY_EVERY)

    async def verify(self) -> list[str]:
        """One pass of ``_verify``; returns the corrupt digests (their builds are re-read)."""
        s = self.snapshot
        wanted: list[str] = []
        for b in [*s.builds.values(), *s.rejected.values()]:
            wanted += b.blobs().values()
        wanted += sorted(s.catalog.digests())
        corrupt: list[str] = []
        for digest in dict.fromkeys(wanted):
            if self._stop.is_set():
                break
            if await asyncio.to_thread(self.store.verify, digest) is False:
                corrupt.append(digest)
        if corrupt and not self._stop.is_set():
            async with self._lock:
                self.ctx.forget(corrupt)  # parses of corrupt bytes must not be reused
            await self.refresh(None)
        return corrupt

    async def collect(self, grace: float | None = None) -> list[str]:
        """One garbage collection: drop expired retired names and ended pins, then delete the
        blobs nothing has referred to for ``grace`` seconds (default: the grace setting).

        Alive: what the catalog's views read, what live pins can still hand out, and every
        indexed build's inputs (a board may pick that build any time)."""
        grace = self.settings.grace if grace is None else grace
        async with self._lock:  # never while a refresh ingests blobs
            s = self.snapshot
            self.snapshot = publish(s, s, self.settings.grace)  # drops expired retired names
            live = self.snapshot.catalog.digests() | self.pins.digests()
            for b in [*s.builds.values(), *s.rejected.values()]:
                live |= set(b.blobs().values())
            deleted = await asyncio.to_thread(self.store.collect, live, grace)
        if deleted:
            log.info("store: deleted %d blobs unserved for %gs", len(deleted), grace)
        return deleted

    # --- the pipeline -------------------------------------------------------------------------

    async def refresh(
        self,
        changed: set[str] | None,
        *,
        boards: bool = False,
        users: frozenset[str] = frozenset(),
    ) -> None:
        """Re-index ``changed`` builds (``None``: all), reload boards if asked, render
        everything and publish; returns once a snapshot with these changes is published."""
        changes = Changes(None if changed is None else frozenset(changed), boards, users)
        self._pending = changes if self._pending is None else self._pending.merge(changes)
        self._busy = True
        async with self._lock:
            pending, self._pending = self._pending, None
            if pending is None or self._stop.is_set():
                return  # published by a refresh that ran while this one waited; or closing
            env = Env(
                builds_dir=self.builds_dir,
                boards_dir=self.boards_dir,
                store=self.store,
                ctx=self.ctx,
                grace=self.settings.grace,
                quiet=self.settings.quiet,
            )
            try:
                # Board files first; then the hostname-only boards (hundreds for a FIT of
                # hundreds of configurations), published as a second snapshot.
                done = await asyncio.to_thread(
                    refresh, self.snapshot, pending, env, hostnames=False
                )
                self.snapshot = done.snapshot
                for event in done.events:
                    self.events.publish(event)
                self._wake()
                # The boards that fetch what was just published go first: these renders share
                # the GIL with the servers' event loop.
                await self._after_requests()
                self.snapshot = await asyncio.to_thread(render_hostnames, self.snapshot, env)
            finally:
                self._busy = self._pending is not None
            self._wake()
            for name in done.snapshot.writing:
                if name not in self._writer_waits and not self._stop.is_set():
                    self._writer_waits[name] = asyncio.create_task(
                        self._await_writers(name), name=f"writers-{name}"
                    )

    async def _after_requests(self) -> None:
        """Return once no request has begun for ``QUIET`` s since the call, one was held since
        (it may wait for what follows), or ``LATEST`` s have passed. Requests held before the
        call were waiting for the snapshot just published, which serves them."""
        start = time.monotonic()
        deadline = start + LATEST
        while self._last_held < start and not self._stop.is_set():
            now = time.monotonic()
            # Requests held until the publication ask again once woken: count from it.
            idle = now - max(self._last_lookup, start)
            if idle >= QUIET or now >= deadline:
                return
            await asyncio.sleep(min(QUIET - idle, deadline - now))

    def _wake(self) -> None:
        """Answer the requests held for this snapshot."""
        ready, self._published = self._published, None
        if ready is not None and not ready.done():
            ready.set_result(None)
        now = time.monotonic()
        self._held = {k: t for k, t in self._held.items() if now - t < HOLD_LIMIT}

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
                files = self.snapshot.writing.get(name)
                if files is None:
                    return  # indexed meanwhile
                if not await asyncio.to_thread(writers.being_written, files):
                    break
        finally:
            del self._writer_waits[name]
        if name in self.snapshot.writing and not self._stop.is_set():
            await self.refresh({name})

    # --- Service protocol ---------------------------------------------------------------------

    def lookup(self, name: str, *, client: str | None = None) -> Entry:
        """The entry for ``name``: from ``client``'s pin of the board when it has a live one,
        else from the current snapshot (then pinning ``client`` when ``name`` is one of a
        board's stable names). ``Held`` when a refresh in progress may serve it."""
        cleaned = clean_name(name)
        snapshot = self.snapshot
        self._last_lookup = time.monotonic()
        if client is not None and self.pins.enabled:
            pinned = self.pins.lookup(snapshot.catalog, cleaned, client)
            if pinned is not None:
                return pinned
        try:
            entry = snapshot.catalog.lookup(cleaned)
        except NotServed as err:
            raise self._not_served(snapshot, cleaned, client, err) from None
        self._held.pop((client, cleaned), None)
        if client is not None and self.pins.enabled:
            self.pins.pin(snapshot.catalog, cleaned, client, entry)
        return entry

    def _not_served(
        self, snapshot: Snapshot, name: str, client: str | None, err: NotServed
    ) -> NotServed:
        """Why ``name`` is not served, or ``Held`` if a refresh (running, or started here for
        a new user of hostname-only boards) may serve it soon."""
        stable = barebox.parse_stable_name(name)
        reason = str(err)
        wanted_user: str | None = None
        if stable is not None:
            user, _, host = stable
            reason = f"{err}: {why_not(snapshot, user, host)}"
            latest = snapshot.latest()
            if (
                user not in snapshot.users
                and snapshot.board_for(user, host) is None
                and latest is not None
                and len(hostnames(latest).get(host.lower(), [])) == 1
            ):
                wanted_user = user
        pending = not self._started or self._busy or wanted_user is not None
        if not pending or self._stop.is_set():
            return NotServed(reason)
        key = (client, name)
        now = time.monotonic()
        since = self._held.setdefault(key, now)
        if now - since >= HOLD_LIMIT or len(self._held) > _MAX_HELD:
            self._held.pop(key, None)
            return NotServed(f"{reason} (still not served after {HOLD_LIMIT:g} s)")
        if wanted_user is not None and not self._busy:
            task = asyncio.get_running_loop().create_task(
                self.refresh(set(), users=frozenset({wanted_user}))
            )
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)
        self._last_held = now
        return Held(f"{reason}: waiting for the render in progress", self._ready())

    def _ready(self) -> asyncio.Future[None]:
        if self._published is None:
            self._published = asyncio.get_running_loop().create_future()
        return self._published

    def boards(self) -> list[BoardInfo]:
        """Every board: by file (valid or not), then hostname-only boards that have asked."""
        s = self.snapshot
        out = [i for i in (s.infos.get(b.name) for b in s.boards) if i is not None]
        for file, err in sorted(s.board_errors.items()):
            stem = Path(file).stem
            out.append(BoardInfo(name=stem, hostname="", file=file, reason=err, error=err))
        claimed = {(b.user, b.hostname) for b in s.boards}
        # The journal is kept by board name: a file board's fetches (rock3a.toml, hostname
        # rock3a) are not a sign that the hostname render of the same name has asked.
        files = {b.name for b in s.boards}
        for key, r in sorted(s.hostname_renders.items()):
            if key not in claimed and r.info.name not in files and self.journal.of(r.info.name, 1):
                out.append(r.info)
        # Boards that asked for barebox names nothing serves, with the reason.
        asked: dict[tuple[str, str], None] = {}
        for t in self.journal.of(None):
            stable = barebox.parse_stable_name(t.name)
            if stable is not None and t.name not in s.catalog:
                asked.setdefault((stable[0], stable[2]), None)
        for user, host in sorted(asked):
            if (user, host) in claimed or (user, host) in s.hostname_renders:
                continue
            reason = why_not(s, user, host)
            out.append(BoardInfo(name=host, hostname=host, user=user, reason=reason, error=reason))
        return out if self.dhcp is None else self.dhcp.with_leases(out)

    def builds(self) -> list[BuildInfo]:
        """Every build folder, indexed or with the reason it could not be."""
        s = self.snapshot
        return [self._build_info(s, b) for b in sorted(s.builds.values(), key=lambda b: b.name)]

    @staticmethod
    def _build_info(s: Snapshot, build: builds_mod.Build) -> BuildInfo:
        rejected = s.rejected.get(build.name)
        if rejected is None:
            return build.info()
        info = rejected.info()
        info.error = f"{rejected.error}; boards keep its previous contents"
        return info

    async def index_now(self, build: str) -> IndexResult:
        """Index one build at once (after an upload), re-render and publish."""
        await self.refresh({build})
        s = self.snapshot
        b = s.builds.get(build)
        if b is None:
            info = BuildInfo(name=build, error=f"{build}: no such folder")
        else:
            info = self._build_info(s, b)
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

    def progress(self, transfer: Transfer) -> None:
        """A running transfer's bytes so far: an event only (the journal keeps ended ones)."""
        self.events.publish(Event.of_transfer(transfer, progress=True))

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


def served_names(service: OverridedService) -> list[str]:
    """Every name the current catalog serves (for logs and tests)."""
    return sorted(service.snapshot.catalog.entries)
