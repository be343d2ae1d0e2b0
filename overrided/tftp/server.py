"""The TFTP server: one listening socket for requests, one socket per transfer (RFC 1350).

Read-only by design: WRQ is refused. The server asks its ``Namespace`` for a name and serves
the view it gets back (ranges of files and literal bytes), reading only from the files it
opened at request time, so a catalog swap during a transfer never mixes versions.

Requests are parsed, looked up and answered on the event loop; each accepted transfer then runs
in a process of its own (``fork``, as tftpd-hpa does) that reports its record back through a
pipe. A small launcher process forks them, so a large server does not pay for its own fork on
each request (``launcher.py``). Why processes: measured at window 1 on loopback, per block of
server CPU, asyncio ``add_reader`` callbacks took 25-30 µs, uvloop 18-23 µs, a blocking
``recvfrom``/``preadv``/``sendto`` loop 11-15 µs, less again on a connected socket (see
``transfer.py``). Threads running that loop share one GIL: 32 transfers at once took 1.7x as
long as with one process each; processes also spread over all cores. A transfer's process only
runs ``ReadTransfer.run`` and leaves with ``os._exit``: it touches no lock another thread could
hold (no logging, no event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import struct

from overrided.errors import OverridedError
from overrided.served import (
    Held,
    Namespace,
    NoObserver,
    NotServed,
    OpenView,
    Transfer,
    TransferObserver,
    View,
    clean_name,
)
from overrided.tftp.launcher import (
    CHILD_SIGNALS,
    Launcher,
    TransferJob,
    child_main,
    read_bytes,
    read_result,
)
from overrided.tftp.packets import (
    MAX_BLKSIZE,
    MAX_REQUEST,
    MAX_WINDOWSIZE,
    ErrorCode,
    Opcode,
    PacketError,
    Request,
    encode_error,
    negotiate,
    opcode_of,
    parse_request,
)
from overrided.tftp.transfer import NetasciiSource, OctetSource, ReadTransfer, Source, report

log = logging.getLogger("overrided.tftp")

# Linux values; Python does not export IP_PKTINFO.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
# Room for a whole window in the kernel, so a window rarely waits for the socket buffer.
_SNDBUF = 4 * 1024 * 1024
# Seconds start() waits for the transfer launcher (a fresh interpreter: ~0.2 s).
LAUNCHER_READY = 10.0
# Seconds between progress reports of the transfers running (bytes sent so far).
PROGRESS_EVERY = 1.0


class TftpError(OverridedError):
    """The TFTP server cannot start (bad address, port in use, bad settings)."""


def _peer_text(addr: tuple[object, ...]) -> str:
    host = str(addr[0])
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


def _local_address(ancdata: list[tuple[int, int, bytes]]) -> str | None:
    """The address a request was sent to, from IP_PKTINFO / IPV6_PKTINFO ancillary data."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(data) >= 12:
            # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
            return socket.inet_ntop(socket.AF_INET, data[8:12])
        if level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO and len(data) >= 20:
            # struct in6_pktinfo { in6_addr addr; int ifindex; }
            addr = socket.inet_ntop(socket.AF_INET6, data[:16])
            ifindex = struct.unpack("=i", data[16:20])[0]
            return f"{addr}%{ifindex}" if addr.startswith("fe80") else addr
    return None


def _open_for_transfer(view: View) -> OpenView:
    """Open ``view`` with every piece in a file (``OpenView.handoff``): what the launcher's
    spare receives, and what the C loop reads, whichever process runs the transfer."""
    opened = view.open()
    try:
        return opened.handoff()
    except OSError:
        opened.close()
        raise


class TftpServer:
    """A read-only TFTP server over a ``Namespace`` (RFC 1350, 2347, 2348, 2349, 7440)."""

    def __init__(
        self,
        namespace: Namespace,
        observer: TransferObserver | None = None,
        *,
        max_blksize: int = MAX_BLKSIZE,
        max_windowsize: int = 64,
        timeout: float = 1.0,
        retries: int = 5,
        max_stall: float = 30.0,
        max_transfers: int = 512,
    ) -> None:
        if not 8 <= max_blksize <= MAX_BLKSIZE:
            raise TftpError(f"max blksize {max_blksize} is outside 8..{MAX_BLKSIZE} (RFC 2348)")
        if not 1 <= max_windowsize <= MAX_WINDOWSIZE:
            raise TftpError(f"max windowsize {max_windowsize} is outside 1..65535 (RFC 7440)")
        if timeout <= 0 or retries < 0 or max_stall <= 0:
            raise TftpError("timeout and max stall must be positive, retries not negative")
        self.namespace = namespace
        self.observer: TransferObserver = observer if observer is not None else NoObserver()
        self.max_blksize = max_blksize
        self.max_windowsize = max_windowsize
        self.timeout = timeout
        self.retries = retries
        self.max_stall = max_stall
        self.max_transfers = max_transfers  # each is a process: bound them
        self.transfers: dict[tuple[object, ...], _Child] = {}
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._family = socket.AF_INET
        self._host = ""
        self._wildcard = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._launcher = Launcher()
        self._progress: asyncio.TimerHandle | None = None
        # Requests the namespace holds for a render in progress: (client, name) → request.
        self._held: dict[tuple[tuple[object, ...], str], Request] = {}

    @property
    def port(self) -> int:
        """The bound UDP port (useful after ``start(host, 0)``)."""
        if self._sock is None:
            raise TftpError("server is not started")
        return int(self._sock.getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Bind ``host:port`` (IPv4 or IPv6 by the address) and start answering requests."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host or None, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
            )
        except OSError as err:
            raise TftpError(f"cannot resolve TFTP address {host!r}: {err}") from None
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            sock.bind(sockaddr)
        except OSError as err:
            sock.close()
            raise TftpError(f"cannot bind TFTP on {host or '*'}:{port}: {err.strerror}") from None
        self._sock, self._loop, self._family = sock, loop, family
        self._host = str(sockaddr[0])
        self._wildcard = ipaddress.ip_address(self._host.split("%")[0]).is_unspecified
        loop.add_reader(sock.fileno(), self._on_readable)
        self._launcher.start(loop)
        if self._launcher.enabled and not await self._launcher.wait_ready(LAUNCHER_READY):
            log.warning("tftp: transfer launcher not ready; the server forks transfers")
        log.info("tftp listening on %s", _peer_text(sock.getsockname()))

    async def close(self, grace: float = 2.0) -> None:
        """Stop accepting requests, let running transfers end for ``grace`` s, cancel the rest."""
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self.transfers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for transfer in list(self.transfers.values()):
            transfer.cancel("server shutting down")
        if self.transfers:  # each child reports its end through its pipe; wait for that
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 2.0)
        if self._progress is not None:
            self._progress.cancel()
            self._progress = None
        await self._launcher.close()

    # -- requests ----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        for _ in range(64):  # a bounded batch; readiness is level-triggered
            if sock is None or sock.fileno() < 0:
                return
            try:
                data, anc, flags, addr = sock.recvmsg(2048, 128)
            except OSError:  # nothing left (EAGAIN), or an error queued on the socket
                return
            local = _local_address(anc) if self._wildcard else None
            try:
                self._on_packet(data, flags, addr, local or self._host)
            except Exception:  # one bad packet must never stop the server
                log.exception("tftp: unexpected error handling a packet from %s", _peer_text(addr))

    def _reply_error(self, addr: tuple[object, ...], code: ErrorCode, message: str) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendto(encode_error(code, message), addr)

    def _on_packet(self, data: bytes, flags: int, addr: tuple[object, ...], local: str) -> None:
        op = opcode_of(data)
        peer = _peer_text(addr)
        if op == Opcode.ERROR:
            return  # RFC 1350 section 7: an ERROR is never answered
        if op in (Opcode.DATA, Opcode.ACK):
            # Meant for a transfer socket, not this one: a stale or misdirected packet.
            self._reply_error(addr, ErrorCode.UNKNOWN_TID, "unknown transfer ID")
            return
        if op not in (Opcode.RRQ, Opcode.WRQ):
            self._reply_error(addr, ErrorCode.ILLEGAL_OPERATION, f"illegal opcode {op}")
            log.warning("tftp client=%s refused: illegal opcode %d", peer, op)
            return
        if flags & socket.MSG_TRUNC:
            data = data + b"\x00" * (MAX_REQUEST + 1 - len(data))  # reported as too long
        try:
            request = parse_request(data)
        except PacketError as err:
            self._reply_error(addr, ErrorCode.ILLEGAL_OPERATION, f"malformed request: {err}")
            log.warning("tftp client=%s refused: malformed request: %s", peer, err)
            return
        if addr in self.transfers:
            return  # a repeated RRQ while we already answer it (RFC 1350: one per TID)
        self._on_request(request, addr, local, peer)

    def _refuse(
        self,
        addr: tuple[object, ...],
        record: Transfer,
        code: ErrorCode,
        message: str,
        reason: str,
    ) -> None:
        self._reply_error(addr, code, message)
        record.outcome = "not-found" if code == ErrorCode.FILE_NOT_FOUND else "refused"
        record.reason = reason
        report(record, self.observer)

    def _on_request(self, req: Request, addr: tuple[object, ...], local: str, peer: str) -> None:
        record = Transfer(protocol="tftp", client=peer, name=req.filename)
        if req.opcode == Opcode.WRQ:
            self._refuse(addr, record, ErrorCode.ACCESS_VIOLATION, "read-only server", "WRQ")
            return
        if req.mode not in ("octet", "netascii"):
            # RFC 1350 names "mail" too; it means writing to a user, so it is refused here.
            msg = f"unsupported mode {req.mode!r}"
            self._refuse(addr, record, ErrorCode.ILLEGAL_OPERATION, msg, msg)
            return
        try:
            name = clean_name(req.filename)
        except NotServed as err:
            self._refuse(addr, record, ErrorCode.ACCESS_VIOLATION, "access violation", str(err))
            return
        record.name = name
        if len(self.transfers) >= self.max_transfers:
            msg = f"server busy ({len(self.transfers)} transfers)"
            self._refuse(addr, record, ErrorCode.UNDEFINED, msg, msg)
            return
        held_key = (addr, req.filename)
        try:
            entry = self.namespace.lookup(name, client=str(addr[0]))
            opened = _open_for_transfer(entry.view)
        except Held as held:
            self._hold(held, held_key, req, addr, local, peer)
            return
        except (NotServed, OSError) as err:
            self._held.pop(held_key, None)
            reason = str(err) if isinstance(err, NotServed) else (err.strerror or str(err))
            self._refuse(addr, record, ErrorCode.FILE_NOT_FOUND, "file not found", reason)
            return
        self._held.pop(held_key, None)
        record.board = entry.board
        source: Source
        try:
            source = OctetSource(opened) if req.mode == "octet" else NetasciiSource(opened)
            granted = negotiate(
                req.options,
                source.size,
                max_blksize=self.max_blksize,
                max_windowsize=self.max_windowsize,
            )
            twin, sock = self._transfer_sockets(local, addr)
        except OSError as err:
            opened.close()
            self._reply_error(addr, ErrorCode.UNDEFINED, "server error")
            record.outcome, record.reason = "failed", f"cannot start transfer: {err}"
            report(record, self.observer)
            return
        record.size = source.size
        record.options = dict(granted.oack)
        if req.mode != "octet":
            record.options["mode"] = req.mode
        job = TransferJob(
            addr, req.mode, source.size, granted, record, self.timeout, self.retries, self.max_stall
        )
        try:
            child = self._start_transfer(job, source, opened, sock, twin)
        except OSError as err:
            self._reply_error(addr, ErrorCode.UNDEFINED, "server busy")
            record.outcome, record.reason = "failed", f"cannot start transfer: {err}"
            report(record, self.observer)
            return
        self.transfers[addr] = child
        self._idle.clear()
        try:
            self.observer.started(record)
        except Exception:
            log.exception("transfer observer failed")
        if self._progress is None and self._loop is not None:
            self._progress = self._loop.call_later(PROGRESS_EVERY, self._report_progress)

    def _report_progress(self) -> None:
        """Tell the observer how far each running transfer got: what its process has read of
        the view (``read_bytes``), which is what it sent give or take its read-ahead."""
        self._progress = None
        for child in list(self.transfers.values()):
            if child.done or child.pid <= 0:
                continue
            sent = min(max(read_bytes(child.pid) - child.read0, 0), child.record.size)
            if sent <= child.record.sent:
                continue
            child.record.sent = sent
            try:
                self.observer.progress(child.record)
            except Exception:
                log.exception("transfer observer failed")
        if self.transfers and self._loop is not None:
            self._progress = self._loop.call_later(PROGRESS_EVERY, self._report_progress)

    def _hold(
        self,
        held: Held,
        key: tuple[tuple[object, ...], str],
        req: Request,
        addr: tuple[object, ...],
        local: str,
        peer: str,
    ) -> None:
        """Answer nothing yet: the request is looked up again when the service publishes
        the snapshot it waits for (the client's resends meanwhile are not answered either)."""
        if key in self._held:
            return
        self._held[key] = req
        log.info("tftp %s %s: held: %s", peer, req.filename, held)

        def again(_: object) -> None:
            if self._held.get(key) is req and self._sock is not None:
                del self._held[key]
                self._on_request(req, addr, local, peer)

        held.ready.add_done_callback(again)

    def _start_transfer(
        self,
        job: TransferJob,
        source: Source,
        opened: OpenView,
        sock: socket.socket,
        twin: socket.socket,
    ) -> _Child:
        """Start ``job``'s process (by the launcher, else by a fork here); its record comes
        back through a pipe.

        The server keeps ``twin`` (the unconnected socket on the transfer's port, see
        ``_transfer_sockets``) and answers strangers on it until the transfer reports.
        """
        assert self._loop is not None
        rfd, wfd = os.pipe()
        child = _Child(rfd, twin, job.record, job.peer)
        try:
            child.job = self._launcher.submit(job, sock.fileno(), wfd, opened, child.launched)
            if child.job is None:
                child.pid = self._fork(job.build(sock, source), rfd, wfd, twin)
                child.forked = True
        except OSError:
            os.close(rfd)
            twin.close()
            raise
        finally:
            os.close(wfd)
            sock.close()  # the transfer's process has its own copies of both
            source.close()  # ... and of the view's files (closing ``opened``)
        self._loop.add_reader(rfd, self._on_child_result, child)
        self._loop.add_reader(twin.fileno(), self._on_stray, child)
        return child

    def _fork(self, transfer: ReadTransfer, rfd: int, wfd: int, twin: socket.socket) -> int:
        """Run ``transfer`` in a process forked from this one; its pid."""
        # Signals stay blocked across the fork until the child has dropped the parent's
        # handlers: one delivered in between would reach the parent loop's wake-up pipe.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, CHILD_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid == 0:  # pragma: no cover - the child never returns
            # The child keeps only its transfer's socket, view files and pipe end. Of other
            # transfers the server holds only these (their views were closed once handed on).
            close = [rfd, twin.fileno(), *self._launcher.fds()]
            if self._sock is not None:
                close.append(self._sock.fileno())  # the port stays the server's alone
            for other in self.transfers.values():
                close += [other.fd, other.twin.fileno()]
                if other.pidfd >= 0:
                    close.append(other.pidfd)
            child_main(transfer, wfd, close, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return pid

    def _on_child_result(self, child: _Child) -> None:
        assert self._loop is not None
        try:
            data = os.read(child.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._loop.remove_reader(child.fd)
        os.close(child.fd)
        self._loop.remove_reader(child.twin.fileno())
        child.twin.close()
        read_result(data, child.record)
        child.ended()
        if child.job is not None:
            self._launcher.forget(child.job)
        if child.forked:
            self._reap(child.pid, 100)  # the launcher's are reaped by the kernel
        if self.transfers.get(child.peer) is child:
            del self.transfers[child.peer]
        if not self.transfers:
            self._idle.set()
        report(child.record, self.observer)

    def _reap(self, pid: int, attempts: int) -> None:
        """Collect an exited child without blocking the loop (it exits right after writing)."""
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if not done and attempts > 0 and self._loop is not None:
            self._loop.call_later(0.02, self._reap, pid, attempts - 1)

    def _transfer_sockets(
        self, local: str, peer: tuple[object, ...]
    ) -> tuple[socket.socket, socket.socket]:
        """The transfer's TID (RFC 1350 section 4): a fresh ephemeral port, as two sockets.

        The transfer's own socket is ``connect()``ed to the client (the kernel then reuses its
        route and keeps other senders away); the twin, unconnected on the same port, gets every
        packet from anyone else, and the server answers those with ERROR 5 (RFC 1350 section
        4) while the transfer goes on. They share the port through ``SO_REUSEPORT``, set on the
        twin only after the kernel chose a port that was free: only processes of this user can
        join, and the kernel hands the client's packets to the connected socket.
        """
        twin = socket.socket(self._family, socket.SOCK_DGRAM)
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            twin.setblocking(False)
            if self._family == socket.AF_INET6:
                host, _, scope = local.partition("%")
                twin.bind((host, 0, 0, int(scope) if scope.isdigit() else 0))
            else:
                twin.bind((local, 0))
            twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(twin.getsockname())
            sock.connect(peer)
        except OSError:
            twin.close()
            sock.close()
            raise
        return twin, sock

    def _on_stray(self, child: _Child) -> None:
        """Packets on a transfer's port from another endpoint: ERROR 5, the transfer goes on."""
        for _ in range(16):  # a bounded batch; readiness is level-triggered
            try:
                data, addr = child.twin.recvfrom(1024)
            except OSError:
                return
            # The client's own packets only land here once its transfer's socket is gone;
            # an ERROR is never answered (RFC 1350 section 7).
            if addr != child.peer and opcode_of(data) != Opcode.ERROR:
                with contextlib.suppress(OSError):
                    child.twin.sendto(
                        encode_error(ErrorCode.UNKNOWN_TID, "unknown transfer ID"), addr
                    )


class _Child:
    """A transfer running in a process of its own, as the server's loop sees it."""

    __slots__ = (
        "cancelled", "done", "fd", "forked", "job", "peer", "pid", "pidfd", "read0", "record",
        "twin",
    )  # fmt: skip

    def __init__(
        self, fd: int, twin: socket.socket, record: Transfer, peer: tuple[object, ...]
    ) -> None:
        self.fd = fd  # the read end of its result pipe
        self.twin = twin
        self.record = record
        self.peer = peer
        self.pid = 0  # known once started (the launcher's answer comes a little later)
        self.pidfd = -1  # from the launcher; a forked child is signalled by its pid
        self.read0 = 0  # bytes its process had read before its transfer began (a fork's: 0)
        self.forked = False  # forked by the server (which then reaps it)
        self.job: int | None = None  # the launcher's job id
        self.cancelled = False
        self.done = False

    def launched(self, pid: int, pidfd: int, read0: int) -> None:
        """The launcher started it (``pidfd`` -1: it has ended already, or never started)."""
        if self.done:
            if pidfd >= 0:
                os.close(pidfd)
            return
        self.pid, self.pidfd, self.read0 = pid, pidfd, read0
        if self.cancelled:
            self._terminate()

    def cancel(self, reason: str) -> None:
        """Ask it to stop (it tells the client with an ERROR and reports ``aborted``)."""
        del reason  # its SIGTERM handler says why: the server is shutting down
        self.cancelled = True
        self._terminate()

    def _terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.pidfd >= 0:
                signal.pidfd_send_signal(self.pidfd, signal.SIGTERM)
            elif self.forked:
                os.kill(self.pid, signal.SIGTERM)

    def ended(self) -> None:
        """It reported: forget its pidfd."""
        self.done = True
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
