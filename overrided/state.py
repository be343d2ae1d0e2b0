"""What the service shows of itself: the models the HTTP API returns, its events, its journal.

The service core (``render.py`` and friends) produces these; the HTTP layer only reads them
through the ``Service`` protocol. Both sides import this module and nothing of each other.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from overrided.served import Entry, Transfer


class ConfigInfo(BaseModel):
    """One FIT configuration of a build."""

    name: str
    compatible: list[str] = Field(default_factory=list)
    description: str = ""
    kernel: str | None = None
    fdt: list[str] = Field(default_factory=list)
    ramdisk: list[str] = Field(default_factory=list)
    signed: bool = False


class BuildInfo(BaseModel):
    """An indexed build folder under ``kernel-builds/``."""

    name: str
    release: str | None = None  # kernel release, e.g. "6.1.0-56-arm64"
    arch: str | None = None
    fit: str | None = None  # path of the FIT inside the build folder, if the build has one
    kernel: str | None = None  # path of Image/Image.gz/zImage when the build is Image + DTBs
    modules: list[str] = Field(default_factory=list)  # modules-*.cpio* paths
    configurations: list[ConfigInfo] = Field(default_factory=list)
    indexed_at: datetime | None = None
    error: str | None = None  # why the build cannot be used, if it cannot


class Lease(BaseModel):
    """A DHCP client the service's dnsmasq answered (``--dhcp``), with the board of its MAC."""

    mac: str
    ip: str | None = None
    board: str | None = None
    hostname: str | None = None
    last_seen: datetime | None = None
    expires: datetime | None = None


class BoardInfo(BaseModel):
    """A board as the service resolves it: what it gets, under which names, and why."""

    name: str  # board file stem, or the hostname for a board known only by its hostname
    hostname: str
    user: str = "none"
    file: str | None = None  # "boards/<name>.toml"; None for boards matched by hostname only
    rule: Literal["barebox", "u-boot"] = "barebox"
    build: str | None = None
    configuration: str | None = None
    reason: str = ""  # why this configuration, or why nothing
    served: dict[str, list[str]] = Field(default_factory=dict)  # format → served names
    artifacts: dict[str, str] = Field(default_factory=dict)  # role (fit, initrd, ...) → name
    warnings: list[str] = Field(default_factory=list)
    rendered_at: datetime | None = None
    error: str | None = None  # e.g. an invalid board file: one line naming file and field
    leases: list[Lease] = Field(default_factory=list)  # with --dhcp: what it was handed


class IndexResult(BaseModel):
    """What indexing one build changed: the answer to an upload."""

    build: BuildInfo
    boards: list[BoardInfo]  # every board, resolved against the new state


EventKind = Literal[
    "build-indexed",
    "build-failed",
    "build-removed",
    "board-rendered",
    "board-failed",
    "transfer-started",
    "transfer-progress",
    "transfer-finished",
    "transfer-failed",
    # Builds by URL (``PUT /api/builds/<name>``): a fetch began, one file's bytes so far, one
    # file's outcome, and the build published or refused.
    "fetch-started",
    "fetch-progress",
    "fetch-file",
    "fetch-finished",
    "fetch-failed",
]


_TRANSFER_FIELDS = tuple(f.name for f in fields(Transfer))


class Event(BaseModel):
    """One thing that happened, as streamed on ``/api/events``.

    ``data`` carries the details: for builds ``{"duration": seconds}``; for boards
    ``{"duration": seconds, "artifacts": {...}}``; for transfers the fields of ``Transfer``.
    """

    kind: EventKind
    time: float = Field(default_factory=time.time)
    board: str | None = None
    build: str | None = None
    name: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of_transfer(
        cls, transfer: Transfer, *, started: bool = False, progress: bool = False
    ) -> Event:
        """The event for a transfer that started, got further, or ended."""
        if started:
            kind: EventKind = "transfer-started"
        elif progress:
            kind = "transfer-progress"
        elif transfer.outcome in ("ok", "probe", "aborted"):
            kind = "transfer-finished"
        else:
            kind = "transfer-failed"
        # Every HTTP request makes two of these: built field by field, without validation
        # (all values come from a ``Transfer``), they cost a tenth of ``asdict`` + validation.
        data = {f: getattr(transfer, f) for f in _TRANSFER_FIELDS}
        data["options"] = dict(transfer.options)
        return cls.model_construct(
            kind=kind,
            time=time.time(),
            board=transfer.board,
            build=None,
            name=transfer.name,
            data=data,
        )


class EventHub:
    """Fan-out of events to synchronous listeners (metrics) and async subscribers (SSE)."""

    def __init__(self, backlog: int = 1000) -> None:
        self._listeners: list[Callable[[Event], None]] = []
        self._queues: set[asyncio.Queue[Event]] = set()
        self._backlog = backlog

    def listen(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` for every event, in the publisher's thread, before subscribers."""
        self._listeners.append(listener)

    def publish(self, event: Event) -> None:
        """Deliver to every listener and subscriber; a subscriber that lags drops old events."""
        for listener in self._listeners:
            listener(event)
        for q in self._queues:
            if q.full():
                q.get_nowait()
            q.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[Event]:
        """Events published from now on, until the consumer stops iterating."""
        q: asyncio.Queue[Event] = asyncio.Queue(self._backlog)
        self._queues.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._queues.discard(q)


class Journal:
    """The last transfers per board (and of unattributed names under the key ``None``)."""

    def __init__(self, per_board: int = 200) -> None:
        self._per_board = per_board
        self._by_board: dict[str | None, collections.deque[Transfer]] = {}

    def add(self, transfer: Transfer) -> None:
        """Record a finished transfer."""
        d = self._by_board.get(transfer.board)
        if d is None:
            d = self._by_board[transfer.board] = collections.deque(maxlen=self._per_board)
        d.append(transfer)

    def of(self, board: str | None, limit: int | None = None) -> list[Transfer]:
        """Newest first."""
        items = list(reversed(self._by_board.get(board, ())))
        return items if limit is None else items[:limit]


class Service(Protocol):
    """What the HTTP layer may ask of the running service."""

    builds_dir: Path
    events: EventHub
    journal: Journal

    def lookup(self, name: str, *, client: str | None = None) -> Entry:
        """The entry for a served name (raises ``NotServed``): the current catalog's, or the
        one ``client`` (an address) is pinned to (``served.Namespace``)."""
        ...

    def boards(self) -> list[BoardInfo]:
        """Every board, known by file or by hostname, as resolved now."""
        ...

    def builds(self) -> list[BuildInfo]:
        """Every build folder, indexed or with the reason it could not be."""
        ...

    async def index_now(self, build: str) -> IndexResult:
        """Index one build folder at once (after an upload), re-render and publish."""
        ...

    async def remove_build(self, build: str) -> None:
        """Delete a build folder, re-render and publish."""
        ...

    def started(self, transfer: Transfer) -> None:
        """A server accepted a request (``TransferObserver``)."""
        ...

    def progress(self, transfer: Transfer) -> None:
        """A running transfer got further (``TransferObserver``)."""
        ...

    def finished(self, transfer: Transfer) -> None:
        """A server's transfer ended: journal it and publish the event (``TransferObserver``)."""
        ...
