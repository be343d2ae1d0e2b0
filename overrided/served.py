"""What the servers serve: named, immutable, sized blobs, and the record of each transfer.

This is the whole contract between the protocol servers (``tftp/``, ``http/``) and the rest of
the service: a server asks a ``Namespace`` for a name, gets an ``Entry`` whose blob it opens and
reads by offset, and reports a ``Transfer`` when it is done. Servers know nothing of FITs or boards.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from overrided.errors import OverridedError


class NotServed(OverridedError):
    """The name is not served; ``str()`` says why (unknown name, path escape, ...)."""


@dataclass(frozen=True)
class Blob:
    """An immutable file: its bytes never change while any catalog refers to it."""

    path: Path
    size: int
    digest: str = ""  # content hash (hex) when known; used as HTTP ETag

    def open(self) -> OpenBlob:
        """Open for reading. The open file keeps its bytes even if the blob is later removed."""
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        size = os.fstat(fd).st_size
        return OpenBlob(fd, size)


class OpenBlob:
    """An open blob read by offset (``os.pread``): no per-transfer copy of the file."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes starting at ``offset`` (short only at the end)."""
        return os.pread(self.fd, length, offset)

    def fileno(self) -> int:
        """The file descriptor, for ``sendfile``."""
        return self.fd

    def close(self) -> None:
        """Release the file; idempotent."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> OpenBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Entry:
    """A served name: the blob behind it and the board it belongs to, if any."""

    name: str
    blob: Blob
    board: str | None = None


class Namespace(Protocol):
    """Anything that maps served names to blobs (a catalog snapshot, a plain folder)."""

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
    size: int = 0  # size of the blob
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
        """A request was accepted and its blob opened."""
        ...

    def finished(self, transfer: Transfer) -> None:
        """The transfer ended; ``outcome``, ``sent``, ``duration`` and ``reason`` are final."""
        ...


class NoObserver:
    """A ``TransferObserver`` that ignores everything (a standalone server with no service)."""

    def started(self, transfer: Transfer) -> None:
        """Ignore."""

    def finished(self, transfer: Transfer) -> None:
        """Ignore."""
