"""What the servers serve: named, immutable, sized views, and the record of each transfer.

This is the whole contract between the protocol servers (``tftp/``, ``http/``) and the rest of
the service: a server asks a ``Namespace`` for a name, gets an ``Entry`` whose ``View`` it opens
and reads by offset (pieces of immutable files and literal bytes), and reports a ``Transfer``
when it is done. Servers know nothing of FITs or boards.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import os
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from overrided.errors import OverridedError


class NotServed(OverridedError):
    """The name is not served; ``str()`` says why (unknown name, path escape, ...)."""


class Held(NotServed):
    """Not served yet: a render in progress may serve it. ``ready`` completes when the next
    snapshot is published; then the request is looked up again. Servers answer nothing
    meanwhile (TFTP: the client resends) or wait (HTTP)."""

    def __init__(self, reason: str, ready: asyncio.Future[None]) -> None:
        super().__init__(reason)
        self.ready = ready


@dataclass(frozen=True)
class Piece:
    """A run of a view's bytes: ``length`` bytes of an immutable file from ``offset``, or the
    literal ``data`` (then ``path`` is ``None``)."""

    length: int
    path: Path | None = None
    offset: int = 0
    data: bytes = b""
    digest: str = ""  # the file's content hash when it is a store blob (kept while served)

    @classmethod
    def literal(cls, data: bytes) -> Piece:
        """A piece of literal bytes."""
        return cls(len(data), data=bytes(data))

    def ident(self) -> str:
        """What this piece is, for a view's identity: the file's digest and range, or the
        literal bytes' hash; never the output read back."""
        if self.path is None:
            return "b:" + hashlib.sha256(self.data).hexdigest()
        return f"f:{self.digest or self.path}:{self.offset}:{self.length}"


@dataclass(frozen=True)
class View:
    """An immutable served artifact: ranges of immutable files and literal bytes, in order.

    A board's trimmed FIT is its new header and structure around ranges of the build's FIT; an
    initrd is the modules CPIO, padding and the init CPIO; a script is one literal piece. No
    piece's bytes change while any catalog refers to the view, so its ``digest`` (computed
    from the pieces, or the content hash of a single file) is a strong ETag.
    """

    pieces: tuple[Piece, ...]
    digest: str = ""
    size: int = field(init=False)

    def __post_init__(self) -> None:
        pieces = tuple(p for p in self.pieces if p.length > 0)
        for p in pieces:
            if p.path is None and len(p.data) != p.length:
                raise ValueError(f"literal piece of {len(p.data)} bytes claims {p.length}")
            if p.offset < 0:
                raise ValueError(f"piece of {p.path} starts at {p.offset}")
        object.__setattr__(self, "pieces", pieces)
        object.__setattr__(self, "size", sum(p.length for p in pieces))
        if not self.digest:
            object.__setattr__(self, "digest", identity(pieces))

    @classmethod
    def of_file(cls, path: Path, size: int, digest: str = "") -> View:
        """The whole of one immutable file (``digest``: its content hash, when known)."""
        return cls((Piece(size, path, 0, digest=digest),), digest)

    @classmethod
    def of_bytes(cls, data: bytes) -> View:
        """Literal bytes (a script, a boot menu); the digest is their content hash."""
        return cls((Piece.literal(data),), hashlib.sha256(data).hexdigest())

    def files(self) -> frozenset[str]:
        """The content digests of the store blobs this view reads (kept while it is served)."""
        return frozenset(p.digest for p in self.pieces if p.path is not None and p.digest)

    def open(self) -> OpenView:
        """Open every file it reads. The open view keeps its bytes even if a file is removed."""
        return OpenView.of(self)

    def read(self) -> bytes:
        """All its bytes (for tests and small views)."""
        with self.open() as opened:
            return opened.read_at(0, self.size)


def identity(pieces: Iterable[Piece]) -> str:
    """A view's identity from its pieces (sha256 hex): equal pieces, equal bytes."""
    h = hashlib.sha256(b"view\0")
    for p in pieces:
        h.update(p.ident().encode() + b"\0")
    return h.hexdigest()


# A piece as an open view holds it: (start in the view, length, fd or -1, file offset, literal).
_Span = tuple[int, int, int, int, bytes]
# One row of ``OpenView.table``: start, length, index into the descriptors, file offset.
TABLE_ROW = struct.Struct("=qqqq")


class OpenView:
    """An open view read by offset: ``pread``/``preadv`` of each file piece, literal bytes
    copied; no per-transfer copy of the files."""

    __slots__ = ("_spans", "_starts", "fds", "size")

    def __init__(self, fds: list[int], spans: list[_Span]) -> None:
        self.fds = fds  # every descriptor this view owns (closed by ``close``)
        self._spans = spans
        self._starts = [s[0] for s in spans]
        self.size = spans[-1][0] + spans[-1][1] if spans else 0

    @classmethod
    def of(cls, view: View) -> OpenView:
        """Open the files of ``view`` (each once, however many of its pieces read it)."""
        fds: list[int] = []
        by_path: dict[Path, int] = {}
        spans: list[_Span] = []
        start = 0
        try:
            for p in view.pieces:
                fd = -1
                if p.path is not None:
                    fd = by_path.get(p.path, -1)
                    if fd < 0:
                        fd = os.open(p.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                        fds.append(fd)
                        by_path[p.path] = fd
                spans.append((start, p.length, fd, p.offset, p.data))
                start += p.length
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return cls(fds, spans)

    @classmethod
    def of_fd(cls, fd: int, size: int) -> OpenView:
        """A view over one open file's first ``size`` bytes (it then owns ``fd``)."""
        return cls([fd] if fd >= 0 else [], [(0, size, fd, 0, b"")] if size else [])

    @classmethod
    def from_table(cls, fds: list[int], table: bytes) -> OpenView:
        """The view ``handoff`` described, in the process that received its descriptors."""
        spans: list[_Span] = []
        start = 0
        for row_start, length, index, offset in TABLE_ROW.iter_unpack(table):
            if row_start != start or length <= 0 or not 0 <= index < len(fds) or offset < 0:
                raise ValueError(f"view table row at {row_start} does not follow on")
            spans.append((start, length, fds[index], offset, b""))
            start += length
        return cls(fds, spans)

    @property
    def single(self) -> tuple[int, int] | None:
        """``(fd, file offset)`` when the whole view is one range of one file, else ``None``."""
        if len(self._spans) == 1 and self._spans[0][2] >= 0:
            return self._spans[0][2], self._spans[0][3]
        return None

    def table(self) -> bytes:
        """The pieces as ``TABLE_ROW``s over ``self.fds``; literal pieces must be in files
        (see ``handoff``)."""
        index = {fd: i for i, fd in enumerate(self.fds)}
        rows = []
        for start, length, fd, offset, _ in self._spans:
            if fd < 0:
                raise ValueError("a literal piece has no file: hand the view off first")
            rows.append(TABLE_ROW.pack(start, length, index[fd], offset))
        return b"".join(rows)

    def handoff(self) -> OpenView:
        """This view with its literal pieces moved into one memory file, so that every piece is
        a descriptor range (what another process can receive). Consumes ``self``."""
        literals = [s for s in self._spans if s[2] < 0]
        if not literals:
            return self
        mem = os.memfd_create("overrided-view", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(mem, b"".join(s[4] for s in literals))
        except OSError:
            os.close(mem)
            raise
        spans: list[_Span] = []
        at = 0
        for s in self._spans:
            if s[2] < 0:
                spans.append((s[0], s[1], mem, at, b""))
                at += s[1]
            else:
                spans.append(s)
        return OpenView([*self.fds, mem], spans)

    def pieces(self, first: int, count: int) -> Iterator[tuple[int, int, int] | bytes]:
        """The view's bytes ``[first, first + count)`` as ``(fd, file offset, length)`` ranges
        and literal bytes, in order (what HTTP sends with ``sendfile`` and writes)."""
        end = min(first + count, self.size)
        i = max(0, bisect.bisect_right(self._starts, first) - 1)
        pos = first
        while pos < end and i < len(self._spans):
            start, length, fd, offset, data = self._spans[i]
            take = min(end, start + length) - pos
            if take > 0:
                rel = pos - start
                yield (fd, offset + rel, take) if fd >= 0 else data[rel : rel + take]
                pos += take
            i += 1

    def readinto(self, bufs: Sequence[memoryview], offset: int) -> int:
        """Fill ``bufs`` in order from ``offset``; the bytes read (short only at the end, or
        where a file turned out shorter than its piece)."""
        single = self.single
        if single is not None and single[1] == 0 and offset + sum(map(len, bufs)) <= self.size:
            return os.preadv(single[0], bufs, offset)  # the common case: one whole file
        want = sum(len(b) for b in bufs)
        k, at = 0, 0  # the buffer and the position in it where the next byte goes
        done = 0
        for piece in self.pieces(offset, want):
            n = piece[2] if isinstance(piece, tuple) else len(piece)
            parts: list[memoryview] = []
            left = n
            while left:
                room = len(bufs[k]) - at
                take = min(room, left)
                parts.append(bufs[k][at : at + take])
                left -= take
                at += take
                if at == len(bufs[k]):
                    k, at = k + 1, 0
            if isinstance(piece, tuple):
                got = os.preadv(piece[0], parts, piece[1])
            else:
                got = 0
                for part in parts:
                    part[:] = piece[got : got + len(part)]
                    got += len(part)
            done += got
            if got < n:
                break
        return done

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes starting at ``offset`` (short only at the end)."""
        buf = bytearray(max(0, min(length, self.size - offset)))
        got = self.readinto([memoryview(buf)], offset) if buf else 0
        return bytes(buf[:got])

    def close(self) -> None:
        """Release the files; idempotent."""
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> OpenView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Entry:
    """A served name: the view behind it and the board it belongs to, if any."""

    name: str
    view: View
    board: str | None = None


class Namespace(Protocol):
    """Anything that maps served names to views (a catalog snapshot, a plain folder)."""

    def lookup(self, name: str, *, client: str | None = None) -> Entry:
        """The entry for a cleaned name (see ``clean_name``); raise ``NotServed`` with a reason.

        ``client`` is the requester's address (no port) when a server knows it: the service
        answers one board's names from one snapshot per client (``pins.py``); a namespace
        that answers everyone alike ignores it.
        """
        ...


def clean_name(raw: str) -> str:
    """Normalise a requested name; refuse NUL, empty names and any ``..`` component.

    A leading ``/`` is dropped (clients often send absolute-looking names) and repeated
    slashes collapse; the result is a relative POSIX path that cannot climb out of a root.
    """
    if "\x00" in raw:
        raise NotServed("name contains a NUL byte")
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        raise NotServed("empty name")
    if ".." in parts:
        raise NotServed(f"name {raw!r} has a '..' component")
    return "/".join(parts)


Outcome = Literal["ok", "probe", "aborted", "failed", "not-found", "refused"]


@dataclass
class Transfer:
    """One request's record, reported by a server when it ends (TFTP or HTTP)."""

    protocol: Literal["tftp", "http"]
    client: str  # "addr:port"
    name: str
    board: str | None = None
    options: dict[str, str] = field(default_factory=dict)  # granted options (TFTP) or range (HTTP)
    size: int = 0  # size of the view
    sent: int = 0  # payload bytes sent (last window included once)
    started: float = field(default_factory=time.time)
    duration: float = 0.0
    retransmits: int = 0
    cpu: float = 0.0  # server CPU seconds (TFTP: the transfer's process; 0 for HTTP)
    outcome: Outcome = "ok"
    reason: str = ""

    @property
    def address(self) -> str:
        """The client's address without its port (``client`` is ``addr:port`` or ``[v6]:port``)."""
        host = self.client.rpartition(":")[0] if ":" in self.client else self.client
        return host[1:-1] if host.startswith("[") and host.endswith("]") else host

    @property
    def throughput(self) -> float:
        """Payload bytes per second (0 for instant or empty transfers)."""
        return self.sent / self.duration if self.duration > 0 else 0.0


class TransferObserver(Protocol):
    """Told when a transfer starts and when it ends (any outcome), by TFTP and HTTP alike."""

    def started(self, transfer: Transfer) -> None:
        """A request was accepted and its view opened."""
        ...

    def progress(self, transfer: Transfer) -> None:
        """A running transfer got further: ``sent`` is the bytes so far (about once a second)."""
        ...

    def finished(self, transfer: Transfer) -> None:
        """The transfer ended; ``outcome``, ``sent``, ``duration`` and ``reason`` are final."""
        ...


class NoObserver:
    """A ``TransferObserver`` that ignores everything (a standalone server with no service)."""

    def started(self, transfer: Transfer) -> None:
        """Ignore."""

    def progress(self, transfer: Transfer) -> None:
        """Ignore."""

    def finished(self, transfer: Transfer) -> None:
        """Ignore."""
