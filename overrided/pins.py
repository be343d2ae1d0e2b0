"""Per-client pins: one client reads all of a board's stable names from one catalog snapshot.

barebox reads a board's names one after the other (``clients/barebox.py`` builds them):
``devboot`` sources the devboot script, then the ``net`` boot entry probes the ``oftree`` and
``initramfs`` names and opens the ``linux`` name, which the script names as the image too.
Those names follow every rebuild, so a rebuild between two of the reads would hand the board a
FIT from one render and a script or initrd from another. A pin prevents that. A client (an
address; its ports change with every request) that reads a board's script, or any of the
board's stable names while it holds no live pin for that board, is pinned to the snapshot that
answered that read: later reads of the board's stable names from that address get that
snapshot's entries. A script read always pins anew, to the newest snapshot.

A pin lives while its client keeps reading that board's names: it ends ``idle`` seconds after
the last read (a transfer still running counts as reading), and ``limit`` seconds after it was
made whatever happens. The service sets ``limit`` to the grace period and keeps the blobs of
live pins out of the store's collection, so a pin never names a blob that is gone.

Servers look names up once per request: this costs a dictionary access or two. Everything here
runs on the service's event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from overrided.catalog import Catalog, Group
from overrided.served import Entry, NotServed, Transfer

log = logging.getLogger("overrided.pins")

# Pins kept at most; past this the oldest go first (any address can ask for names).
MOST = 4096


@dataclass(eq=False)
class Pin:
    """One client's view of one board: the entries of its stable names in one snapshot."""

    client: str  # address, no port
    group: Group  # the board's stable names in that snapshot
    entries: dict[str, Entry]  # the names of ``group`` that snapshot served
    version: int  # the snapshot's catalog version
    created: float
    used: float  # last read of one of the board's names
    transfers: set[int] = field(default_factory=set)  # id() of the board's transfers running

    @property
    def origin(self) -> str:
        """The render the pinned entries come from, for logs and refusals."""
        return f"{self.group.origin or 'an earlier render'} (catalog {self.version})"


class Pins:
    """The pins of every (client, board); ``idle`` 0 turns pinning off."""

    def __init__(
        self,
        *,
        idle: float,
        limit: float,
        most: int = MOST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle = idle
        self.limit = limit
        self.most = most
        self._clock = clock
        self._by_board: dict[tuple[str, str], Pin] = {}  # (client, board) → pin
        self._by_name: dict[tuple[str, str], Pin] = {}  # (client, stable name) → the same pin

    @property
    def enabled(self) -> bool:
        """Whether pins are made at all."""
        return self.idle > 0 and self.limit > 0

    def __len__(self) -> int:
        return len(self._by_board)

    def lookup(self, catalog: Catalog, name: str, client: str) -> Entry | None:
        """The entry a live pin of ``client`` holds for the cleaned ``name``, else ``None``.

        ``None`` means: answer from ``catalog``, then call ``pin``. A script read is never
        answered from a pin. A name the pinned snapshot did not serve raises ``NotServed``, even
        if the current one serves it: the client sees one snapshot or nothing.
        """
        pin = self._alive(self._by_name.get((client, name)))
        if pin is None or name == pin.group.script:
            return None
        pin.used = self._clock()
        entry = pin.entries.get(name)
        if entry is None:
            raise NotServed(
                f"{name!r} is not served: {client} is pinned to {pin.origin}, which did not "
                "serve it"
            )
        current = catalog.entries.get(name)
        if current is None or current.view != entry.view:
            group = catalog.groups.get(name)
            log.info(
                "pin: client %s gets %s of board %s from %s, not from %s",
                client,
                name,
                pin.group.board,
                pin.origin,
                f"{group.origin if group else 'the current render'} (catalog {catalog.version})"
                if current is not None
                else f"catalog {catalog.version}, which does not serve it",
            )
        return entry

    def pin(self, catalog: Catalog, name: str, client: str, entry: Entry) -> None:
        """Pin ``client`` to ``catalog`` for the board of the cleaned ``name``, when ``name`` is
        one of a board's stable names and ``catalog`` is the snapshot that answered ``entry``."""
        if not self.enabled:
            return
        group = catalog.groups.get(name)
        if group is None or catalog.entries.get(name) != entry:
            return
        now = self._clock()
        old = self._by_board.get((client, group.board))
        if old is not None:
            self._drop(old)
        entries = {n: catalog.entries[n] for n in group.names if n in catalog.entries}
        pin = Pin(client, group, entries, catalog.version, now, now)
        self._by_board[(client, group.board)] = pin
        for n in group.names:
            self._by_name[(client, n)] = pin
        log.debug("pin: client %s reads board %s from %s", client, group.board, pin.origin)
        if len(self._by_board) > self.most:
            self._shed()

    def started(self, transfer: Transfer) -> None:
        """A transfer of one of a board's names began: its pin lives at least until it ends."""
        pin = self._of(transfer)
        if pin is not None:
            pin.transfers.add(id(transfer))

    def finished(self, transfer: Transfer) -> None:
        """A transfer ended: the pin of its board and client counts it as a read now."""
        pin = self._of(transfer)
        if pin is not None:
            pin.transfers.discard(id(transfer))

    def digests(self) -> set[str]:
        """The store blobs live pins can still serve (dead pins are dropped first)."""
        self.prune()
        return {
            d
            for pin in self._by_board.values()
            for e in pin.entries.values()
            for d in e.view.files()
        }

    def prune(self) -> int:
        """Drop the pins that ended; returns how many."""
        now = self._clock()
        dead = [p for p in self._by_board.values() if not self._live(p, now)]
        for pin in dead:
            self._drop(pin)
        return len(dead)

    def _of(self, transfer: Transfer) -> Pin | None:
        """The live pin of the transfer's client and board, touched now."""
        if transfer.board is None or not self._by_board:
            return None
        pin = self._alive(self._by_board.get((transfer.address, transfer.board)))
        if pin is not None:
            pin.used = self._clock()
        return pin

    def _alive(self, pin: Pin | None) -> Pin | None:
        """``pin`` if it still lives; a pin found dead is dropped."""
        if pin is None:
            return None
        if not self._live(pin, self._clock()):
            self._drop(pin)
            return None
        return pin

    def _live(self, pin: Pin, now: float) -> bool:
        if now - pin.created >= self.limit:
            return False
        return bool(pin.transfers) or now - pin.used < self.idle

    def _drop(self, pin: Pin) -> None:
        for n in pin.group.names:
            if self._by_name.get((pin.client, n)) is pin:
                del self._by_name[(pin.client, n)]
        if self._by_board.get((pin.client, pin.group.board)) is pin:
            del self._by_board[(pin.client, pin.group.board)]

    def _shed(self) -> None:
        self.prune()
        while len(self._by_board) > self.most:
            # Oldest first: a pin is (re)inserted when it is made.
            self._drop(next(iter(self._by_board.values())))
