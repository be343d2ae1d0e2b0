"""Transfer processes: what each runs, and the small process that starts them for the server.

Each accepted transfer runs in a process of its own (see ``server.py`` for why). Forking the
server for each costs in proportion to the server's memory, and its event loop (HTTP included)
stands still meanwhile: on loopback, the first answer to an RRQ took 4.4 ms (median) from a
service with a catalog loaded and 4.1-4.8 ms from ``overrided tftp serve``, where tftpd-hpa
took 1.1-1.9 ms. Most of it was the fork itself and the new process's first page copies.

So the server starts a launcher: a fresh interpreter that imports only the TFTP modules
(26 MB) and keeps one spare process, forked ahead and warmed up, waiting for the next
transfer. The server hands each transfer over as one message on a ``SOCK_SEQPACKET`` pair
with descriptors attached (``SCM_RIGHTS``): the transfer's connected socket, the write end
of the result pipe, then every file of the served view (its literal pieces moved into one
memory file first, ``OpenView.handoff``); the message's JSON carries the view's table of
pieces over those files (``OpenView.table``). The spare takes it, sends the client its
first packet, answers the server with its pidfd (so the server can stop it without racing
pid reuse), tells the launcher to fork the next spare, and runs the transfer; the kernel
reaps it (``SIGCHLD`` ignored) and it reports through its pipe, as a process the server
forked itself does. Measured the same way, the first answer then takes 1.1-1.7 ms. While
the launcher is not ready, or if it dies, the server forks transfers itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from overrided.served import TABLE_ROW, OpenView, Transfer
from overrided.tftp.packets import Negotiated
from overrided.tftp.transfer import NetasciiSource, OctetSource, ReadTransfer, Source

log = logging.getLogger("overrided.tftp")

# Signals a transfer's process handles itself; blocked across each fork until it has.
CHILD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2}
# Seconds between attempts to start a launcher that stopped.
RESTART_AFTER = 5.0
# A job's message: JSON under this (a name is at most 512 bytes, options a few dozen, the
# view's table 43 bytes of base64 a piece). A larger one is forked by the server instead.
MAX_MESSAGE = 128 * 1024
# Descriptors a job carries at most: the kernel passes no more in one message (SCM_MAX_FD).
# A view of more files than fit beside the socket and the pipe is forked by the server.
MAX_FDS = 253


@dataclass
class TransferJob:
    """Everything a transfer's process needs besides its descriptors (socket, pipe, view)."""

    peer: tuple[Any, ...]
    mode: str  # "octet" or "netascii"
    size: int  # bytes on the wire (netascii: translated)
    granted: Negotiated
    record: Transfer
    timeout: float
    retries: int
    max_stall: float

    def source(self, view: OpenView) -> Source:
        """The view's bytes as this transfer sends them."""
        if self.mode == "netascii":
            return NetasciiSource(view, size=self.size)
        return OctetSource(view)

    def build(self, sock: socket.socket, source: Source) -> ReadTransfer:
        """The transfer, ready to ``run``."""
        return ReadTransfer(
            sock,
            self.peer,
            source,
            self.granted,
            self.record,
            timeout=self.timeout,
            retries=self.retries,
            max_stall=self.max_stall,
        )

    def to_dict(self) -> dict[str, Any]:
        """The job as the launcher receives it (JSON)."""
        g, rec = self.granted, self.record
        return {
            "peer": list(self.peer),
            "mode": self.mode,
            "size": self.size,
            "blksize": g.blksize,
            "windowsize": g.windowsize,
            "client_timeout": g.timeout,
            "tsize": g.tsize,
            "oack": g.oack,  # in the client's order: JSON objects keep it
            "client": rec.client,
            "name": rec.name,
            "options": rec.options,
            "timeout": self.timeout,
            "retries": self.retries,
            "max_stall": self.max_stall,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransferJob:
        """The job from its message (ValueError, KeyError, TypeError or AttributeError if
        malformed)."""
        granted = Negotiated(
            blksize=int(d["blksize"]),
            windowsize=int(d["windowsize"]),
            timeout=d["client_timeout"],
            tsize=bool(d["tsize"]),
            oack={str(k): str(v) for k, v in d["oack"].items()},
        )
        record = Transfer(
            protocol="tftp", client=str(d["client"]), name=str(d["name"]), size=int(d["size"])
        )
        record.options = {str(k): str(v) for k, v in d["options"].items()}
        return cls(
            tuple(d["peer"]),
            str(d["mode"]),
            int(d["size"]),
            granted,
            record,
            float(d["timeout"]),
            int(d["retries"]),
            float(d["max_stall"]),
        )


def job_message(job_id: int, job: TransferJob, view: OpenView) -> bytes:
    """What the server sends a spare for ``job`` over ``view`` (handed off): the job, the
    number of the view's descriptors (sent after the socket and the pipe) and its table."""
    table = base64.b64encode(view.table()).decode()
    message = {"id": job_id, **job.to_dict(), "fds": len(view.fds), "table": table}
    return json.dumps(message).encode()


def take_job(message: Any, fds: list[int]) -> tuple[TransferJob, int, int, OpenView]:
    """The job, socket, result pipe and view of a job's message (see ``job_message``) and its
    descriptors, in that order: the socket, the pipe, then the view's files.

    Raises ValueError, KeyError, TypeError or AttributeError if anything is missing, of the
    wrong kind or does not add up; the descriptors are then still the caller's to close.
    """
    job = TransferJob.from_dict(message)
    count = message["fds"]
    if type(count) is not int or len(fds) != 2 + count:
        raise ValueError(f"{len(fds)} descriptors, not the socket, the pipe and {count!r}")
    table = base64.b64decode(message["table"], validate=True)
    if len(table) % TABLE_ROW.size:
        raise ValueError(f"a view table of {len(table)} bytes is not whole rows")
    view = OpenView.from_table(fds[2:], table)
    # Octet sends the view as it is; netascii only adds bytes (RFC 1350: CR LF, CR NUL).
    fits = view.size == job.size if job.mode == "octet" else view.size <= job.size
    if not fits:
        raise ValueError(f"a view of {view.size} bytes for a transfer of {job.size}")
    return job, fds[0], fds[1], view


def result_message(record: Transfer, cpu: float) -> bytes:
    """What a transfer's process writes to its pipe when it ends (see ``read_result``)."""
    return json.dumps(
        {
            "outcome": record.outcome,
            "reason": record.reason,
            "duration": record.duration,
            "sent": record.sent,
            "retransmits": record.retransmits,
            "cpu": cpu,
        }
    ).encode()


def read_result(data: bytes, record: Transfer) -> None:
    """Fill ``record`` from a transfer's pipe (a process that died wrote nothing)."""
    try:
        result = json.loads(data)
        record.outcome = result["outcome"]
        record.reason = result["reason"]
        record.duration = result["duration"]
        record.sent = result["sent"]
        record.retransmits = result["retransmits"]
        record.cpu = result["cpu"]
    except (ValueError, KeyError, TypeError):
        record.outcome, record.reason = "failed", "transfer process ended without a result"


def read_bytes(pid: int) -> int:
    """Bytes process ``pid`` has read so far (``rchar`` of ``/proc/<pid>/io``), 0 if unknown.

    A transfer's process reads the view's files with ``preadv`` (counted) and the client's
    ACKs with ``recv`` (not counted), so what it read, less what it had read before its
    transfer began, is its progress: at most its read-ahead (a few blocks) past what it sent.
    """
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            for line in f:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cpu_seconds() -> float:
    """User and system CPU time of this process so far (a transfer's, in its process)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_main(
    transfer: ReadTransfer, wfd: int, close: Iterable[int], mask: set[int | signal.Signals]
) -> NoReturn:
    """Body of a process forked for ``transfer``: serve, write the result to ``wfd``, exit.

    ``close``: descriptors of the forking process the transfer must not keep (its other
    transfers' pipes and ports, the listening socket). ``mask``: the signal mask to restore
    once this process's own handlers are in place.
    """
    try:
        _become_transfer(transfer, close, mask)
    except BaseException:
        os._exit(1)
    _run_transfer(transfer, wfd)


def _become_transfer(
    transfer: ReadTransfer, close: Iterable[int], mask: set[int | signal.Signals]
) -> None:
    """Drop what belongs to the process this one was forked from; take the transfer's signals."""
    for fd in close:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)  # a parent loop's wake-up pipe is not ours
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the server cancels us
        for sig in CHILD_SIGNALS - {signal.SIGINT, signal.SIGTERM}:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, lambda *_: transfer.cancel("server shutting down"))
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _run_transfer(transfer: ReadTransfer, wfd: int, cpu_before: float = 0.0) -> NoReturn:
    """Serve to the end, write the result to ``wfd``, exit (``cpu_before``: not the transfer's)."""
    status = 0
    try:
        transfer.run()
        os.write(wfd, result_message(transfer.record, _cpu_seconds() - cpu_before))
    except BaseException:
        status = 1
    finally:
        os._exit(status)


# -- the launcher process ------------------------------------------------------------------

# Spares kept waiting. barebox asks for each file twice in a row (a size probe, then the read),
# and several boards may start at once: one spare would leave the second request waiting for
# the next spare's fork and warm-up.
SPARES = 4
# Spares that die before taking a job this many times in a row stop the launcher (the server
# then forks transfers itself).
SPARE_FAILURES = 5
# What a spare tells the launcher on its pipe: it took a job, or the server closed the channel.
_TOOK, _QUIT = b"t", b"q"
_WARM_UP_JOB = TransferJob(
    ("127.0.0.1", 9),
    "octet",
    1 << 20,
    Negotiated(blksize=1432, tsize=True, oack={"blksize": "1432", "tsize": str(1 << 20)}),
    Transfer(protocol="tftp", client="127.0.0.1:9", name="warm-up"),
    1.0,
    5,
    30.0,
)


def main(channel_fd: int) -> None:
    """The launcher: keep ``SPARES`` processes waiting for the server's next transfers.

    A spare is forked ahead and has already run the code a transfer starts with, so a request
    meets neither the fork nor its first page copies (measured: the fork of this process took
    1.5-2.3 ms until the new process ran, its setup 0.6 ms more). It takes a job from the
    channel itself, sends the client its first packet, answers the server with its own pidfd,
    tells the launcher (which forks a new spare) and becomes that transfer.
    """
    channel = socket.socket(fileno=channel_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps transfers; pipes report
    gc.freeze()  # spares share these objects: no collection of theirs copies their pages
    channel.send(b'{"ready": true}')
    spares: set[int] = set()  # the read ends of the spares' pipes
    failures, quitting = 0, False
    while True:
        while not quitting and len(spares) < SPARES and failures < SPARE_FAILURES:
            if failures:
                time.sleep(0.1)  # do not spin on a spare that cannot start
            said = _fork_spare(channel, spares)
            if said < 0:
                failures += 1
            else:
                spares.add(said)
        if not spares:
            break
        for said in select.select(list(spares), [], [])[0]:
            word = os.read(said, 1)
            os.close(said)
            spares.discard(said)
            if word == _TOOK:
                failures = 0
            elif word == _QUIT:
                quitting = True  # the server closed its end: the others see it too
            else:
                failures += 1  # died waiting
    if not quitting:
        print("overrided tftp launcher: spare processes keep failing; stopping", file=sys.stderr)


def _fork_spare(channel: socket.socket, others: set[int]) -> int:
    """Fork a spare; the read end of the pipe it reports on (-1 if the fork failed).

    ``others``: the other spares' pipes, which the new one closes.
    """
    rfd, wfd = os.pipe()
    try:
        pid = os.fork()
    except OSError as err:
        os.close(rfd)
        os.close(wfd)
        print(f"overrided tftp launcher: cannot fork: {err}", file=sys.stderr)
        return -1
    if pid == 0:  # pragma: no cover - the spare never returns
        for fd in (rfd, *others):
            os.close(fd)
        _spare(channel, wfd)
    os.close(wfd)
    return rfd


def _spare(channel: socket.socket, said: int) -> NoReturn:
    """A spare's life: warm up, wait for a job, take it, become its transfer."""
    try:
        _warm_up()
        while True:
            data, fds, flags, _ = socket.recv_fds(channel, MAX_MESSAGE, MAX_FDS)
            if not data:
                os.write(said, _QUIT)  # the server closed its end
                os._exit(0)
            job_id = None
            try:
                message = json.loads(data)
                job_id = message["id"]
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    raise ValueError("the job or its descriptors did not fit")
                job, sock_fd, wfd, view = take_job(message, fds)
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                for fd in fds:
                    os.close(fd)  # the server sees its pipe close without a result
                print(f"overrided tftp launcher: malformed job: {err!r}", file=sys.stderr)
                channel.send(json.dumps({"id": job_id, "pid": 0}).encode())
                continue
            cpu_before = _cpu_seconds()  # the warm-up's is not the transfer's
            read_before = read_bytes(os.getpid())  # nor are its reads (see ``read_bytes``)
            transfer = job.build(socket.socket(fileno=sock_fd), job.source(view))
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, CHILD_SIGNALS)
            transfer.begin()  # the client's answer first; the rest is off its clock
            pidfd = os.pidfd_open(os.getpid())
            with contextlib.suppress(OSError):  # a server gone cannot stop us: we end anyway
                answer = {"id": job_id, "pid": os.getpid(), "read": read_before}
                reply = json.dumps(answer).encode()
                socket.send_fds(channel, [reply], [pidfd])
            with contextlib.suppress(OSError):  # a launcher gone: this transfer goes on
                os.write(said, _TOOK)
            _become_transfer(transfer, [pidfd, said, channel.fileno()], mask)
            break
    except BaseException:
        os._exit(1)
    _run_transfer(transfer, wfd, cpu_before)


def _warm_up() -> None:
    """Run what a transfer's start runs, so its pages are this process's before a job comes."""
    job = TransferJob.from_dict(json.loads(json.dumps(_WARM_UP_JOB.to_dict())))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        transfer = job.build(sock, job.source(OpenView.of_fd(-1, job.size)))
        result_message(transfer.record, _cpu_seconds())
    os.close(os.pidfd_open(os.getpid()))


# -- the server's side -----------------------------------------------------------------------

# Called with a launched transfer's pid, pidfd (0 and -1 if it could not be started or the
# launcher stopped before saying) and the bytes its process had read before the transfer began.
Launched = Callable[[int, int, int], None]


class Launcher:
    """The server's handle on its launcher process: start it, hand it transfers."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._pidfd = -1  # readable once the launcher process has exited
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = False
        self._waiting: dict[int, Launched] = {}  # by job id, until its process answers
        self._next_id = 0
        self._started_at = 0.0
        self._ready_event = asyncio.Event()

    @property
    def enabled(self) -> bool:
        """False with ``OVERRIDED_TFTP_LAUNCHER=0``: the server forks every transfer."""
        return os.environ.get("OVERRIDED_TFTP_LAUNCHER", "1") != "0"

    def fds(self) -> list[int]:
        """The descriptors this handle holds (a process the server forks closes them)."""
        held = [self._channel.fileno()] if self._channel is not None else []
        return [*held, self._pidfd] if self._pidfd >= 0 else held

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the launcher process; it says when it is ready (jobs fork in the server until).

        ``OVERRIDED_TFTP_LAUNCHER=0`` leaves it off: the server forks every transfer.
        """
        if not self.enabled:
            return
        self._loop = loop
        self._started_at = time.monotonic()
        self._ready_event.clear()
        if self._proc is not None:
            self._proc.poll()  # collect one that stopped
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # A fresh interpreter without site-packages: only this package's TFTP modules load.
        root = str(Path(__file__).resolve().parents[2])
        code = (
            f"import sys; sys.path.insert(0, {root!r}); "
            f"from overrided.tftp.launcher import main; main({theirs.fileno()})"
        )
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", code],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        except OSError as err:
            ours.close()
            log.warning("tftp: cannot start the transfer launcher (%s); the server forks", err)
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        self._channel = ours
        loop.add_reader(ours.fileno(), self._on_reply)
        try:
            self._pidfd = os.pidfd_open(self._proc.pid)
        except OSError:  # already gone: the channel says so too
            return
        loop.add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        """The launcher process ended: close the channel, so its spares stop waiting on it."""
        code = self._proc.poll() if self._proc is not None else None
        self._lost(f"it exited with status {code}")

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until the launcher takes jobs (False after ``timeout``: the server forks)."""
        if self._channel is not None and not self._ready:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready_event.wait(), timeout)
        return self._ready

    def submit(
        self, job: TransferJob, sock_fd: int, wfd: int, view: OpenView, launched: Launched
    ) -> int | None:
        """Hand ``job`` over with its socket, result pipe and (handed-off) view; its id, or
        None if the server must fork it.

        ``launched`` is called once its process answers, or the launcher is lost
        (``forget`` the id when the transfer ends, in case its process died before answering).
        """
        if self._channel is None:
            if self._loop is not None and time.monotonic() - self._started_at >= RESTART_AFTER:
                self.start(self._loop)
            return None
        if not self._ready:
            return None
        fds = [sock_fd, wfd, *view.fds]
        try:
            message = job_message(self._next_id + 1, job, view)
        except ValueError:  # literal bytes outside a file: only this process can read them
            return None
        if len(message) > MAX_MESSAGE or len(fds) > MAX_FDS:
            return None  # more than a spare takes in one message
        self._next_id += 1
        try:
            socket.send_fds(self._channel, [message], fds)
        except BlockingIOError:
            return None  # the launcher is behind: this one forks here
        except OSError as err:
            self._lost(f"cannot hand over a transfer: {err.strerror}")
            return None
        self._waiting[self._next_id] = launched
        return self._next_id

    def forget(self, job_id: int) -> None:
        """The transfer of ``job_id`` ended: its answer, if it still comes, is not needed."""
        self._waiting.pop(job_id, None)

    def _on_reply(self) -> None:
        channel = self._channel
        while channel is not None:
            try:
                data, fds, _, _ = socket.recv_fds(channel, 1024, 1)
            except BlockingIOError:
                return
            except OSError as err:
                self._lost(f"channel failed: {err.strerror}")
                return
            if not data:
                self._lost("it exited")
                return
            try:
                reply = json.loads(data)
            except ValueError:
                reply = None
            if not isinstance(reply, dict):
                reply = {}
            if reply.get("ready"):
                self._ready = True
                self._ready_event.set()
                continue
            pidfd = fds[0] if fds else -1
            job_id, pid, read = reply.get("id"), reply.get("pid"), reply.get("read")
            launched = self._waiting.pop(job_id, None) if isinstance(job_id, int) else None
            if launched is not None:
                launched(
                    pid if isinstance(pid, int) else 0, pidfd, read if isinstance(read, int) else 0
                )
            elif pidfd >= 0:
                os.close(pidfd)

    def _lost(self, why: str) -> None:
        """The launcher is gone: transfers fork in the server until it is restarted."""
        log.warning("tftp: transfer launcher stopped (%s); the server forks transfers", why)
        self._drop_channel()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()  # alive but unusable; reaped when the next one starts
        self._unanswered()

    def _unanswered(self) -> None:
        """No answers will come: their processes (if any) still report through their pipes."""
        waiting, self._waiting = self._waiting, {}
        for launched in waiting.values():
            launched(0, -1, 0)

    def _drop_channel(self) -> None:
        if self._pidfd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        if self._channel is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._channel.fileno())
            self._channel.close()
            self._channel = None
        self._ready = False

    async def close(self) -> None:
        """Stop the launcher (it exits when its channel closes); running transfers go on."""
        self._drop_channel()
        self._unanswered()
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for _ in range(100):
            if proc.poll() is not None:
                return
            await asyncio.sleep(0.02)
        proc.kill()
        proc.wait()
