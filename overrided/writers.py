"""Whether a build's files are still being written: a build whose inputs some process holds open
for writing is not indexed yet; where the kernel cannot tell (see ``open_for_writing``), files
modified less than ``quiet`` seconds ago are waited for instead.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from overrided.discovery import newest_mtime

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


def wait_quiet(files: Iterable[Path], quiet: float, *, limit: float = 30.0) -> None:
    """Block until no file in ``files`` was modified within the last ``quiet`` seconds."""
    paths = list(files)
    deadline = time.monotonic() + limit
    while quiet > 0 and time.monotonic() < deadline:
        try:
            age = time.time() - newest_mtime(paths)
        except FileNotFoundError:
            return  # the caller's index will notice the file is gone
        if age >= quiet:
            return
        time.sleep(quiet - age)


# fcntl(2) F_SETSIG (Python's fcntl module does not name it): which signal breaking our lease
# sends us. The default, SIGIO, terminates a process that does not handle it.
_F_SETSIG = getattr(fcntl, "F_SETSIG", 10)


# A file held open but left unchanged this long counts as written: a writer that keeps its
# output open (a shell's `exec 3>file`, a stalled copy) must not hold its build back for ever;
# the parse still tells a complete FIT from a truncated one.
IDLE_WRITER = 2.0


def open_for_writing(path: Path) -> bool | None:
    """Whether a process holds ``path`` open for writing; ``None`` when the kernel will not say.

    Linux refuses a read lease (fcntl(2) F_SETLEASE, F_RDLCK) with EAGAIN while any process
    has the file open for writing, and grants it otherwise; a granted lease is dropped at once.
    Leases are granted to the file's owner and to processes with CAP_LEASE, on file systems
    that support them; elsewhere (EACCES, EINVAL, not Linux) the answer is ``None``.
    """
    setlease = getattr(fcntl, "F_SETLEASE", None)
    if setlease is None:
        return None
    try:
        # O_NONBLOCK: a file under someone's write lease fails at once instead of waiting.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        # While we hold the lease (microseconds), a writer's open(2) breaks it and the kernel
        # signals us: make that SIGURG, which is ignored unless handled, not SIGIO.
        fcntl.fcntl(fd, _F_SETSIG, signal.SIGURG)
        try:
            fcntl.fcntl(fd, setlease, fcntl.F_RDLCK)
        except OSError as err:
            return True if err.errno == errno.EAGAIN else None
        fcntl.fcntl(fd, setlease, fcntl.F_UNLCK)
        return False
    except OSError:
        return None
    finally:
        os.close(fd)


def being_written(files: Iterable[Path], *, idle: float = IDLE_WRITER) -> list[Path] | None:
    """The files a process holds open for writing and modified within ``idle`` seconds;
    ``None`` when that cannot be known for one of them. Files that went away are left out."""
    busy: list[Path] = []
    for path in files:
        state = open_for_writing(path)
        if state is None:
            if path.exists():
                return None
            continue
        if state:
            try:
                age = time.time() - path.stat().st_mtime
            except OSError:
                continue
            if age < idle:
                busy.append(path)
    return busy
