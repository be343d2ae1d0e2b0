"""Shared pieces of the TFTP tests: a server on its own thread, an observer that records, a
raw UDP client for hand-made packets, views of many pieces and a namespace that serves them.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from overrided.folder import FolderNamespace
from overrided.served import Entry, Namespace, NotServed, Piece, Transfer, View, clean_name
from overrided.tftp import TftpServer
from overrided.tftp.packets import Opcode, encode_ack, encode_request, opcode_of, parse_error


class RecordingObserver:
    """Keeps every started/finished transfer; ``wait`` blocks until a predicate holds."""

    def __init__(self) -> None:
        self.started_records: list[Transfer] = []
        self.finished_records: list[Transfer] = []
        self.progress_sent: list[tuple[str, int]] = []  # (name, bytes so far) as reported
        self._cond = threading.Condition()

    def started(self, transfer: Transfer) -> None:
        with self._cond:
            self.started_records.append(transfer)
            self._cond.notify_all()

    def progress(self, transfer: Transfer) -> None:
        with self._cond:
            self.progress_sent.append((transfer.name, transfer.sent))

    def finished(self, transfer: Transfer) -> None:
        with self._cond:
            self.finished_records.append(transfer)
            self._cond.notify_all()

    def wait_finished(self, count: int = 1, timeout: float = 30.0) -> list[Transfer]:
        """The first ``count`` finished transfers, waiting for them (AssertionError if late)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.finished_records) >= count, timeout)
            assert ok, f"only {len(self.finished_records)} of {count} transfers finished"
            return list(self.finished_records[:count])


class ServerThread:
    """A ``TftpServer`` on loopback with its own event loop in a thread (a context manager)."""

    def __init__(
        self, namespace: Namespace | Path, host: str = "127.0.0.1", **options: Any
    ) -> None:
        self.namespace = FolderNamespace(namespace) if isinstance(namespace, Path) else namespace
        self.host = host
        self.options = options
        self.observer = RecordingObserver()
        self.port = 0
        self.server: TftpServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.server = TftpServer(self.namespace, self.observer, **self.options)
        self.call(self.server.start(self.host, 0))
        self.port = self.server.port
        return self

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run a plain function on the server's loop (to inspect server state safely)."""

        async def wrapper() -> Any:
            return fn()

        return self.call(wrapper())

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.call(self.server.close(grace=0.5))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class RawClient:
    """A bare UDP socket speaking hand-made TFTP packets to the server."""

    def __init__(self, port: int, timeout: float = 3.0) -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(timeout)
        self.peer: tuple[str, int] | None = None  # the transfer's TID once known

    def request(
        self, name: str, options: dict[str, str] | None = None, mode: str = "octet"
    ) -> None:
        """Send an RRQ to the server's well-known port."""
        self.send_raw(encode_request(Opcode.RRQ, name, mode, options))

    def send_raw(self, packet: bytes) -> None:
        """Send bytes to the well-known port."""
        self.sock.sendto(packet, self.server)

    def send(self, packet: bytes) -> None:
        """Send bytes to the transfer's TID."""
        assert self.peer is not None
        self.sock.sendto(packet, self.peer)

    def recv(self) -> bytes:
        """The next packet (TimeoutError if none); remembers the sender as the transfer TID."""
        data, addr = self.sock.recvfrom(70000)
        if addr != self.server:
            self.peer = addr
        return bytes(data)

    def recv_all(self, quiet: float = 0.3) -> list[bytes]:
        """Every packet until the line stays quiet for ``quiet`` seconds."""
        got: list[bytes] = []
        old = self.sock.gettimeout()
        self.sock.settimeout(quiet)
        try:
            while True:
                got.append(self.recv())
        except TimeoutError:
            return got
        finally:
            self.sock.settimeout(old)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def data_blocks(packets: list[bytes]) -> list[int]:
    """Block numbers of the DATA packets in ``packets``."""
    return [(p[2] << 8) | p[3] for p in packets if opcode_of(p) == Opcode.DATA]


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``pred`` until true (AssertionError on timeout); for state set by another thread."""
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


class ViewNamespace:
    """Serves views by name, as a catalog does (any object with ``lookup`` is a namespace)."""

    def __init__(self, views: dict[str, View]) -> None:
        self.views = views

    def lookup(self, name: str, *, client: str | None = None) -> Entry:
        """The view served as ``name``."""
        del client  # every client sees the same views
        view = self.views.get(clean_name(name))
        if view is None:
            raise NotServed(f"{name!r} is not served")
        return Entry(clean_name(name), view)


def pieced_view(folder: Path, lengths: Sequence[int], *, seed: int = 0) -> View:
    """A view of pieces of these lengths, in turn a range of file ``a``, literal bytes and a
    range of file ``b`` (random bytes, written in ``folder``), each range at a random offset.

    ``lengths`` set where the pieces meet: pick them to put boundaries inside blocks, in the
    middle of a read-ahead run or a window, several in one block.
    """
    rng = random.Random(seed)
    longest = max([0, *lengths])
    files = []
    for name in ("a", "b"):
        path = folder / f"view{seed}-{name}"
        path.write_bytes(os.urandom(longest + 8191))
        files.append(path)
    pieces = []
    for i, length in enumerate(lengths):
        if i % 3 == 1:
            pieces.append(Piece.literal(rng.randbytes(length)))
        else:
            path = files[0 if i % 3 == 0 else 1]
            pieces.append(Piece(length, path, rng.randrange(8192)))
    return View(tuple(pieces))


def read_whole(port: int, name: str = "small", options: dict[str, str] | None = None) -> bytes:
    """Read a file lockstep with the raw client (window 1), checking every packet."""
    client = RawClient(port)
    try:
        client.request(name, options)
        blksize = int((options or {}).get("blksize", 512))
        first = client.recv()
        out = b""
        if opcode_of(first) == Opcode.OACK:
            client.send(encode_ack(0))
            first = client.recv()
        packet, block = first, 1
        while True:
            assert opcode_of(packet) == Opcode.DATA, parse_error(packet)
            assert data_blocks([packet]) == [block & 0xFFFF]
            out += packet[4:]
            client.send(encode_ack(block))
            if len(packet) - 4 < blksize:
                return out
            block += 1
            packet = client.recv()
    finally:
        client.close()
