"""The watcher of the builds and boards folders: debounced batches of changes, the builds they
touch, and a new watch when a watched folder is removed or replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import watchfiles

from overrided.discovery import display, is_hidden

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


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

    watchfiles groups changes until no new one arrives for ``step_ms`` (at most 5 s): it looks
    every ``step_ms``, so a batch comes one to two steps after its last change, and files
    written in a burst make one batch. A folder that is removed (and made
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
