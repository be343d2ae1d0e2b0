"""Windowed reads (RFC 7440) against U-Boot's receiver rules, replayed with a raw socket.

U-Boot 2023.01 (``net/tftp.c``) keeps no reorder buffer. It takes only the block after the
last one it holds; any other block (a gap, or a copy of one it has) makes it ACK the last block
it holds, once per such block, and expect the next ACK point a window further on. It ACKs on
its own only at that point, on the short last block, and when nothing new came for its timeout.
These ACKs fall inside the server's windows whenever the two disagree on where a window
starts, and each resend gives U-Boot copies it already has, so a server that restarts a window
for every ACK inside it resends most of every window from the first loss on. ``UBootReceiver``
follows those rules exactly and drops chosen copies of chosen blocks, which stands in for the
lossy link (no U-Boot runs in the unit tests; ``tests/e2e/test_boot.py`` boots the real one).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from overrided.tftp.packets import Opcode, encode_ack, opcode_of
from tests.support.tftp import RawClient, ServerThread

BLKSIZE = 512
WINDOW = 16
NBLOCKS = 200
FILE = os.urandom(BLKSIZE * NBLOCKS - 100)  # 200 blocks, the last one short


@dataclass
class UBootReceiver:
    """The receiving side of U-Boot's ``net/tftp.c`` (window mode) over a raw socket."""

    port: int
    drops: set[tuple[int, int]]  # (block, which copy of it) lost on the way
    timeout: float
    window: int = WINDOW
    received: list[int] = field(default_factory=list)  # every DATA block the server sent
    acks: list[int] = field(default_factory=list)
    timeouts: int = 0

    def fetch(self, name: str) -> bytes:
        """Read ``name`` the way U-Boot does; return the bytes it stored."""
        client = RawClient(self.port)
        try:
            return self._fetch(client, name)
        finally:
            client.close()

    def _ack(self, client: RawClient, block: int) -> None:
        self.acks.append(block)
        client.send(encode_ack(block))

    def _fetch(self, client: RawClient, name: str) -> bytes:
        client.request(name, {"blksize": str(BLKSIZE), "windowsize": str(self.window)})
        assert opcode_of(client.recv()) == Opcode.OACK
        self._ack(client, 0)
        cur, next_ack, last_nack = 0, self.window, 0
        copies: Counter[int] = Counter()
        out = bytearray()
        deadline = time.monotonic() + self.timeout  # reset only by a block taken in order
        while True:
            client.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                packet = client.recv()
            except TimeoutError:
                # the timeout handler ACKs the last block held again
                self.timeouts += 1
                assert self.timeouts < 20, "receiver stalled"
                self._ack(client, cur)
                deadline = time.monotonic() + self.timeout
                continue
            assert opcode_of(packet) == Opcode.DATA
            block = packet[2] << 8 | packet[3]
            self.received.append(block)
            copies[block] += 1
            if (block, copies[block]) in self.drops:
                continue
            if block != cur + 1:
                # out of order: ACK what is held, once per block held, and move the ACK point
                if last_nack != cur:
                    self._ack(client, cur)
                    last_nack, next_ack = cur, cur + self.window
                continue
            cur += 1
            out += packet[4:]
            deadline = time.monotonic() + self.timeout
            if len(packet) - 4 < BLKSIZE:
                self._ack(client, cur)
                return bytes(out)
            if cur == next_ack:
                self._ack(client, cur)
                next_ack += self.window


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "fit").write_bytes(FILE)
    return tmp_path


@pytest.fixture
def server(root: Path) -> Iterator[ServerThread]:
    # The server's timer is longer than the receiver's: U-Boot's timeout ACK comes first, as
    # when both wait one second but U-Boot started waiting earlier.
    with ServerThread(root, timeout=1.0, retries=5) as srv:
        yield srv


LOSSES = [
    # (case, dropped (block, copy) pairs, losses that need the receiver's timeout)
    ("no loss", set(), 0),
    ("one block inside a window", {(20, 1)}, 0),
    # U-Boot then ACKs the block the window followed, an ACK the server already had: the
    # same as a copy made by the network, which RFC 1350 says not to answer, so it waits
    ("first block of a window", {(17, 1)}, 1),
    # the last block of a window: nothing follows it, only U-Boot's timeout tells
    ("last block of a window", {(32, 1)}, 1),
    ("two gaps in one window", {(20, 1), (27, 1)}, 0),
    # U-Boot ACKs a gap once per block held: the second loss is only seen by its timeout
    ("a block lost, then its resent copy", {(20, 1), (20, 2)}, 1),
    ("a loss inside the resent window", {(20, 1), (25, 1)}, 0),
    # the known price: after the resend from 20, an ACK of 32 (the last block sent before it)
    # reads as U-Boot meeting our resent copies, so the lost 33 waits for U-Boot's timeout
    ("a loss right after the resent copies", {(20, 1), (33, 1)}, 1),
    ("losses in consecutive windows", {(20, 1), (40, 1), (41, 1), (60, 1)}, 0),
    ("every 23rd block", {(b, 1) for b in range(5, NBLOCKS, 23)}, 0),
    ("last block of two windows", {(32, 1), (64, 1)}, 2),
]


@pytest.mark.parametrize("drops,timeouts", [pytest.param(d, t, id=case) for case, d, t in LOSSES])
def test_uboot_window_losses_cost_at_most_a_window_each(
    server: ServerThread, drops: set[tuple[int, int]], timeouts: int
) -> None:
    """Each loss costs at most one window resent, and the ACKs of copies restart nothing."""
    receiver = UBootReceiver(server.port, drops, timeout=0.4)
    assert receiver.fetch("fit") == FILE
    (record,) = server.observer.wait_finished(1)
    assert record.outcome == "ok"
    resent = len(receiver.received) - NBLOCKS
    assert resent <= WINDOW * len(drops), (resent, receiver.acks)
    assert record.retransmits <= WINDOW * len(drops)
    # a receiver timeout only where nothing else can reveal the loss
    assert receiver.timeouts <= timeouts, receiver.acks


def test_server_timer_resend_does_not_start_a_cascade(root: Path) -> None:
    """The server's timer resends a window U-Boot mostly holds; its ACKs of those copies and
    its ACK point a window further on must not make every later window a resend."""
    with ServerThread(root, timeout=0.3, retries=5) as server:
        # the receiver waits longer than the server: the server's resend comes first
        receiver = UBootReceiver(server.port, {(32, 1)}, timeout=2.0)
        assert receiver.fetch("fit") == FILE
        (record,) = server.observer.wait_finished(1)
    assert record.outcome == "ok"
    assert receiver.timeouts == 0
    resent = len(receiver.received) - NBLOCKS
    assert resent <= 2 * WINDOW, (resent, receiver.acks)
