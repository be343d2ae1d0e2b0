"""The service's core as one step: ``refresh(previous snapshot, changes) -> snapshot``.

A ``Snapshot`` is everything the service answers from at one moment: the indexed builds, the
boards and their renders, what the API shows about each, and the ``Catalog`` of served names.
It is immutable; ``refresh`` makes the next one from the previous one and what changed (build
folders, board files, users that hostname-only boards must be rendered for) and reports what
happened as events. It runs off the event loop; the service swaps its result in whole, so every
lookup is answered from one snapshot and nothing is rendered or published from a read path.

What a refresh does, in the order of the data: index the changed build folders (their inputs are
ingested into the store: ``builds.py``), load board files when they changed, render every board
file, and every configuration of the latest build that a hostname alone picks (for each user
seen), as views (``render.py``: about a millisecond each), and build the catalog, keeping the
versioned names that left it for the grace period.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from pydantic import ValidationError

from overrided import builds as builds_mod
from overrided.builds import Build, FitReady, index_build
from overrided.catalog import Catalog, Group
from overrided.clients.barebox import default_hostname, script_name, stable_names
from overrided.config import Board, display_name, load_boards
from overrided.discovery import build_folders
from overrided.errors import OverridedError
from overrided.render import (
    Render,
    RenderContext,
    RenderMemo,
    pick_build,
    render_board,
    warm,
)
from overrided.served import Entry
from overrided.state import BoardInfo, Event
from overrided.store import Store

log = logging.getLogger("overrided.service")

# The user barebox has unless told otherwise (global.user): hostname-only boards are always
# rendered for it.
DEFAULT_USER = "none"
# Users remembered for hostname-only boards (any client can make names up).
MAX_USERS = 32


def _frozen(d: Mapping[str, object] | None = None) -> Mapping[str, object]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class Snapshot:
    """What the service answers from at one moment. Never changed once made."""

    builds: Mapping[str, Build] = field(default_factory=dict)  # name → index boards use
    # Builds whose new contents failed to index while their previous contents were good:
    # boards keep the previous contents' renders until the build is fixed.
    rejected: Mapping[str, Build] = field(default_factory=dict)
    # Builds whose inputs were still open for writing: indexed again once they are closed.
    writing: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)
    boards: tuple[Board, ...] = ()
    board_errors: Mapping[str, str] = field(default_factory=dict)  # file → one-line error
    renders: Mapping[str, Render] = field(default_factory=dict)  # board file name → render
    # Boards known by hostname only, rendered from the latest build: (user, hostname) → render.
    hostname_renders: Mapping[tuple[str, str], Render] = field(default_factory=dict)
    infos: Mapping[str, BoardInfo] = field(default_factory=dict)  # board file name → info
    users: frozenset[str] = frozenset({DEFAULT_USER})
    catalog: Catalog = field(default_factory=Catalog)
    versioned_ever: frozenset[str] = frozenset()  # every versioned name served so far
    published_at: float = 0.0

    def __post_init__(self) -> None:
        for name in ("builds", "rejected", "writing", "board_errors", "renders", "infos"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "hostname_renders", MappingProxyType(dict(self.hostname_renders)))

    def latest(self) -> Build | None:
        """The usable build whose inputs were written last."""
        return builds_mod.latest(self.builds.values())

    def board_for(self, user: str, hostname: str) -> Board | None:
        """The board file that claims ``<user>-…-<hostname>``, if any."""
        for b in self.boards:
            if b.user == user and b.hostname == hostname:
                return b
        return None


@dataclass(frozen=True)
class Changes:
    """What a refresh must look at again."""

    builds: frozenset[str] | None = None  # build folder names; None: every folder
    boards: bool = False  # board files changed (or first load)
    users: frozenset[str] = frozenset()  # users newly asking for hostname-only boards

    def merge(self, other: Changes) -> Changes:
        """Both sets of changes in one."""
        both = None if self.builds is None or other.builds is None else self.builds | other.builds
        return Changes(both, self.boards or other.boards, self.users | other.users)


@dataclass(frozen=True)
class Env:
    """What a refresh reads besides the previous snapshot: folders, store, settings."""

    builds_dir: Path
    boards_dir: Path
    store: Store
    ctx: RenderContext
    grace: float
    quiet: float = 0.0


@dataclass(frozen=True)
class Refreshed:
    """A refresh's result: the new snapshot and the events to publish, in order."""

    snapshot: Snapshot
    events: tuple[Event, ...]


def refresh(previous: Snapshot, changes: Changes, env: Env, *, hostnames: bool = True) -> Refreshed:
    """The next snapshot: index, load boards, render everything, make the catalog.

    Without ``hostnames``, boards known only by their hostname keep their previous renders
    (whole renders of the build they had), and ``render_hostnames`` brings them up to date in
    a step of its own: board files are then served without waiting for hundreds of them.
    """
    events: list[Event] = []
    if changes.boards:
        boards, board_errors = load_boards(env.boards_dir)
        boards_t = tuple(boards)
        for err in board_errors.values():
            log.error("board file: %s", err)
        log.info(
            "boards: %d loaded (%s), %d invalid",
            len(boards_t),
            ", ".join(b.name for b in boards_t) or "none",
            len(board_errors),
        )
    else:
        boards_t, board_errors = previous.boards, dict(previous.board_errors)
    t0 = time.monotonic()
    builds, rejected, writing = _index(previous, changes, env, events, _warmer(boards_t, env))
    t_index = time.monotonic() - t0
    users = set(previous.users) | set(changes.users)
    if len(users) > MAX_USERS:
        users = {DEFAULT_USER, *sorted(changes.users)[: MAX_USERS - 1]}
    env.ctx.memo = RenderMemo()  # per refresh: initrd views by their parts' contents
    for build in builds.values():
        for blob in build.module_blobs:
            env.ctx.inspect_soon(blob)  # read beside the renders that do not need it
    t1 = time.monotonic()
    renders, infos = _render_files(previous, boards_t, builds, rejected, env, events)
    if hostnames:
        hostname_renders = _render_hostnames(builds, boards_t, frozenset(users), env)
    else:
        hostname_renders = dict(previous.hostname_renders)
    log.info(
        "refresh: indexed %s in %.3fs, rendered %d boards%s in %.3fs",
        "every build" if changes.builds is None else ", ".join(sorted(changes.builds)) or "none",
        t_index,
        len(renders),
        f" and {len(hostname_renders)} hostname-only boards" if hostnames else "",
        time.monotonic() - t1,
    )
    # FIT mappings of builds that are gone are released.
    env.ctx.retire({b.fit_blob.digest for b in builds.values() if b.fit_blob is not None})
    draft = Snapshot(
        builds=builds,
        rejected=rejected,
        writing=writing,
        boards=boards_t,
        board_errors=board_errors,
        renders=renders,
        hostname_renders=hostname_renders,
        infos=infos,
        users=frozenset(users),
    )
    return Refreshed(publish(previous, draft, env.grace), tuple(events))


def render_hostnames(previous: Snapshot, env: Env) -> Snapshot:
    """``previous`` with every hostname-only board of its latest build rendered anew."""
    t0 = time.monotonic()
    renders = _render_hostnames(previous.builds, previous.boards, previous.users, env)
    log.info(
        "refresh: rendered %d hostname-only boards in %.3fs", len(renders), time.monotonic() - t0
    )
    draft = dataclasses.replace(previous, hostname_renders=renders)
    return publish(previous, draft, env.grace)


def publish(
    previous: Snapshot, draft: Snapshot, grace: float, now: float | None = None
) -> Snapshot:
    """``draft`` with its catalog: every render's names, plus versioned names of ``previous``
    that left it within ``grace`` seconds (a board that read a script before a rebuild still
    gets what it names)."""
    entries: list[Entry] = []
    groups: list[Group] = []
    versioned: set[str] = set()
    for board, r in _served(draft):
        entries += [Entry(name, view, board) for name, view in r.names.items()]
        versioned |= r.versioned
        groups.append(_group(board, r))
    old = previous.catalog
    keep = {n for n in old.entries if n in previous.versioned_ever}
    catalog = old.successor(entries, keep=keep, groups=groups, grace=grace, now=now)
    return Snapshot(
        builds=draft.builds,
        rejected=draft.rejected,
        writing=draft.writing,
        boards=draft.boards,
        board_errors=draft.board_errors,
        renders=draft.renders,
        hostname_renders=draft.hostname_renders,
        infos=draft.infos,
        users=draft.users,
        catalog=catalog,
        versioned_ever=previous.versioned_ever | versioned,
        published_at=time.time() if now is None else now,
    )


def _served(s: Snapshot) -> Iterable[tuple[str, Render]]:
    """Every render the catalog serves: board files first, then hostname-only boards that no
    board file claims."""
    yield from s.renders.items()
    claimed = {(b.user, b.hostname) for b in s.boards}
    for key, r in sorted(s.hostname_renders.items()):
        if key not in claimed:
            yield r.info.name, r


def _group(board: str, r: Render) -> Group:
    """The stable barebox names of a board's render, which a client reads from one snapshot."""
    info = r.info
    return Group(
        board=board,
        script=script_name(info.user, info.hostname),
        names=stable_names(info.user, info.hostname),
        origin=f"build {info.build}, configuration {info.configuration}",
    )


# --- index ------------------------------------------------------------------------------------


def _warmer(boards: tuple[Board, ...], env: Env) -> FitReady:
    """While a new build's modules CPIOs are hashed and copied (a few tenths of a second on
    another core), make the FIT trims its renders will take: the board files' first, then
    every configuration's (hostname-only boards), until the modules are stored."""

    def warm_up(build: Build, done: Callable[[], bool]) -> None:
        for board in boards:
            if done():
                return
            if board.build in (None, build.name):
                warm(board, build, env.ctx)
        if build.kernel_only:
            return
        parts = env.ctx.parts_of(build)
        for conf in build.configurations:
            if done():
                return
            with contextlib.suppress(OverridedError, OSError):
                parts.trimmed(conf.name)

    return warm_up


def _index(
    previous: Snapshot,
    changes: Changes,
    env: Env,
    events: list[Event],
    fit_ready: FitReady | None = None,
) -> tuple[dict[str, Build], dict[str, Build], dict[str, tuple[Path, ...]]]:
    builds = dict(previous.builds)
    rejected = dict(previous.rejected)
    writing = dict(previous.writing)
    folders = {p.name: p for p in build_folders(env.builds_dir)}
    names = set(folders) | set(builds) if changes.builds is None else set(changes.builds)
    for name in sorted(names):
        _index_one(
            name, folders.get(name), builds, rejected, writing, env, events, changes, fit_ready
        )
    return builds, rejected, writing


def _index_one(
    name: str,
    folder: Path | None,
    builds: dict[str, Build],
    rejected: dict[str, Build],
    writing: dict[str, tuple[Path, ...]],
    env: Env,
    events: list[Event],
    changes: Changes,
    fit_ready: FitReady | None = None,
) -> None:
    t0 = time.monotonic()
    previous = builds.get(name)
    if folder is None or not folder.is_dir():
        rejected.pop(name, None)
        writing.pop(name, None)
        if previous is not None:
            del builds[name]
            env.store.forget_build(name)
            log.info("build %s: removed", name)
            events.append(Event(kind="build-removed", build=name))
        return
    build = index_build(
        folder,
        env.store,
        quiet=env.quiet,
        # A build the watcher just saw is likely about to be picked: hash its modules beside
        # the FIT parse; at start-up every build is indexed alike.
        hash_modules=changes.builds is not None,
        previous=previous,
        fits=env.ctx.fits,  # the renders that follow use this parse
        members=env.ctx,  # their members are read while they are hashed
        # A build that just landed: its trims are made while its modules are stored.
        fit_ready=fit_ready if changes.builds is not None else None,
    )
    duration = time.monotonic() - t0
    if build.writing:
        # Not ready yet, not broken: indexed again when its writers close the files.
        if writing.get(name) != build.writing:
            log.info("build %s: waiting: %s", name, build.error)
        writing[name] = build.writing
    else:
        writing.pop(name, None)
    if (build.writing or build.error) and previous is not None and previous.usable:
        # A rewrite caught half-way, or a broken one: never fall back to another build behind
        # the developer's back; boards keep this build's previous render.
        rejected[name] = build
        if not build.writing:
            log.error("build %s: %s; boards keep its previous contents", name, build.error)
            data = {"duration": duration, "error": build.error, "kept": True}
            events.append(Event(kind="build-failed", build=name, data=data))
        return
    rejected.pop(name, None)
    builds[name] = build
    if build.writing:
        return  # logged above, once per set of files
    if build is previous:
        log.debug("build %s: unchanged since its last index", name)
    elif build.error:
        log.error("build %s: %s", name, build.error)
        events.append(
            Event(
                kind="build-failed", build=name, data={"duration": duration, "error": build.error}
            )
        )
    else:
        log.info(
            "build %s: indexed in %.3fs: release %s, %s, %d configurations, %d modules CPIOs",
            name,
            duration,
            build.release or "unknown",
            f"FIT {build.info().fit}" if build.kernel is None else f"kernel {build.kernel.name}",
            len(build.configurations),
            len(build.modules),
        )
        events.append(Event(kind="build-indexed", build=name, data={"duration": duration}))


# --- render -----------------------------------------------------------------------------------


def _render_files(
    previous: Snapshot,
    boards: tuple[Board, ...],
    builds: Mapping[str, Build],
    rejected: Mapping[str, Build],
    env: Env,
    events: list[Event],
) -> tuple[dict[str, Render], dict[str, BoardInfo]]:
    renders: dict[str, Render] = {}
    infos: dict[str, BoardInfo] = {}
    usable = list(builds.values())
    for board in boards:
        t0 = time.monotonic()
        file = _file_of(board, env.boards_dir)
        kept = previous.renders.get(board.name)
        if kept is not None and kept.info.build in rejected and _same_build(board, usable, kept):
            # Its build's new contents are broken: serve what it had.
            renders[board.name] = kept
            infos[board.name] = previous.infos.get(board.name, kept.info)
            continue
        try:
            r = render_board(board, usable, env.ctx, file=file)
        except OverridedError as err:  # RenderError, FitError, CpioError, KeyStoreError...
            if kept is not None and kept.info.build in builds:
                # A new build or board setting that fails to render must not take the board
                # offline: it keeps what it had, from a build that is still there.
                note = f"{err}; serving its previous render (build {kept.info.build}) meanwhile"
                shown = previous.infos.get(board.name, kept.info)
                if shown.error != note:
                    log.warning("board %s: %s", board.name, note)
                    data = {"duration": time.monotonic() - t0, "error": note, "kept": True}
                    events.append(Event(kind="board-failed", board=board.name, data=data))
                renders[board.name] = kept
                infos[board.name] = shown.model_copy(update={"error": note, "file": file})
                continue
            info = BoardInfo(
                name=board.name,
                hostname=board.hostname,
                user=board.user,
                file=file,
                rule=board.rule,
                build=board.build,
                reason=str(err),
                error=str(err),
            )
            before = previous.infos.get(board.name)
            if before is None or before.error != info.error:
                log.warning("board %s: not served: %s", board.name, err)
                data = {"duration": time.monotonic() - t0, "error": str(err)}
                events.append(Event(kind="board-failed", board=board.name, data=data))
            infos[board.name] = info
            continue
        if r.same_names(kept):
            assert kept is not None
            renders[board.name] = kept  # unchanged: keeps its render time, no event
            infos[board.name] = previous.infos.get(board.name, kept.info)
            continue
        info = r.info
        renders[board.name] = r
        infos[board.name] = info
        log.info(
            "board %s (%s): build %s, %s: %s%s",
            board.name,
            script_name(board.user, board.hostname),
            info.build,
            info.configuration,
            info.reason,
            "".join(f"; warning: {w}" for w in info.warnings),
        )
        events.append(
            Event(
                kind="board-rendered",
                board=board.name,
                build=info.build,
                data={"duration": time.monotonic() - t0, "artifacts": info.artifacts},
            )
        )
    return renders, infos


def _same_build(board: Board, builds: list[Build], kept: Render) -> bool:
    try:
        return pick_build(board, builds).name == kept.info.build
    except OverridedError:
        return False


def _file_of(board: Board, boards_dir: Path) -> str:
    # A board file's board is named after its file (config.load_board).
    return display_name(boards_dir.name, f"{board.name}.toml")


def hostnames(build: Build) -> dict[str, list[str]]:
    """The build's configurations by the hostname barebox derives from their first compatible
    (``<vendor>,<hostname>`` → ``hostname``, lower case)."""
    out: dict[str, list[str]] = {}
    for c in build.configurations:
        if c.compatible and "," in c.compatible[0]:
            out.setdefault(default_hostname(c.compatible[0]).lower(), []).append(c.name)
    return out


def _render_hostnames(
    builds: Mapping[str, Build], boards: tuple[Board, ...], users: frozenset[str], env: Env
) -> dict[tuple[str, str], Render]:
    """Every hostname-only board of the latest build, for every user: each configuration whose
    first compatible is ``<vendor>,<hostname>`` for exactly one configuration."""
    latest = builds_mod.latest(builds.values())
    if latest is None:
        return {}
    claimed = {(b.user, b.hostname) for b in boards}
    out: dict[tuple[str, str], Render] = {}
    by_name = {c.name: c for c in latest.configurations}
    for configs in hostnames(latest).values():
        if len(configs) != 1:
            continue
        conf = by_name[configs[0]]
        host = default_hostname(conf.compatible[0])  # as barebox has it, case and all
        for user in sorted(users):
            if (user, host) in claimed:
                continue
            try:
                board = Board(
                    name=host,
                    hostname=host,
                    user=user,
                    arch=latest.arch or "arm64",
                    compatible=[conf.compatible[0]],
                    build=latest.name,
                )
                out[(user, host)] = render_board(board, [latest], env.ctx)
            except (OverridedError, ValidationError) as err:
                log.debug("board %s: not served: %s", script_name(user, host), err)
            # These renders follow the board files' publication, while the boards fetch what
            # it serves: the event loop gets the GIL between two of them (a sleep releases it)
            # instead of waiting up to a switch interval (5 ms) for each of its requests.
            time.sleep(0)
    return out


def why_not(s: Snapshot, user: str, host: str) -> str:
    """Why ``<user>-…-<host>`` is not served by snapshot ``s`` (a board file's reason, or why
    no configuration of the latest build answers for that hostname)."""
    board = s.board_for(user, host)
    if board is not None:
        info = s.infos.get(board.name)
        return f"board {user}/{host}: {info.reason if info else 'not rendered'}"
    latest = s.latest()
    if latest is None:
        return "no usable build yet"
    configs = hostnames(latest).get(host.lower(), [])
    if not configs and latest.kernel_only:
        return (
            f"no board file for {user}/{host}, and build {latest.name} is a kernel without "
            'DTBs: only a board file with oftree = "board" or "keep" can boot it'
        )
    if not configs:
        return (
            f"no board file for {user}/{host}, and no configuration of build {latest.name} "
            f"has a first compatible '<vendor>,{host}'"
        )
    if len(configs) > 1:
        return (
            f"no board file for {user}/{host}, and build {latest.name} has {len(configs)} "
            f"configurations for '<vendor>,{host}': {', '.join(configs[:5])}; add a board file"
        )
    if user not in s.users:
        return f"board {user}/{host} is being rendered for user {user!r}"
    return f"board {user}/{host} could not be rendered from build {latest.name}"
