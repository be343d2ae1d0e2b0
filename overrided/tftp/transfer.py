"""One read transfer: its own connected UDP socket (TID), windows of DATA, ACKs, retransmits.

``ReadTransfer.run`` serves one request to its end with a blocking socket whose receive timeout
(``SO_RCVTIMEO``) is the retransmission timer, so an ACK costs one ``recv_into``, one ``preadv``
of exactly the next window straight into a reused packet buffer (headers sit in gaps between
the payloads, so nothing is copied) and one ``send`` per block: no event-loop round, no timer
object, no exception per packet. A view of several pieces (ranges of files, literal bytes) is
read the same way with one ``preadv`` per piece the window covers, split where a piece ends.
The socket is ``connect()``ed to the client, as tftpd-hpa's is: the kernel keeps other
senders' packets away from it (the server answers those on a twin socket, see ``server.py``)
and reuses its route for every packet. Measured on loopback at window 1, client and server on
different cores of a virtual machine (wake-ups included), this cut the server's CPU per block
by a fifth: 37 to 29 µs (tftpd-hpa: 27 µs).
At window 1 (barebox's and U-Boot's default) the expected ACK is answered by a small C loop,
``_lockstep.c``, that runs until anything else happens and then hands back to this class:
what the server does between an ACK's arrival and the next block's send is all it adds to
each round trip, and the interpreter's share of that was most of it (measured: C loop 1.2x
tftpd-hpa, Python loop 1.0x, client and server on one core). Without a C compiler, or with
``OVERRIDED_TFTP_NATIVE=0``, the same steps run in Python.
A closed client port (ICMP port unreachable) ends the transfer at once instead of after the
retransmissions. The server runs it in a process of its own (see ``server.py`` for why), so
``ReadTransfer`` touches no event loop, logging or observer; ``describe`` and ``report`` are
what the server calls on its loop when a transfer ends.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Protocol

from overrided.served import TABLE_ROW, OpenView, Outcome, Transfer, TransferObserver
from overrided.tftp.packets import (
    DATA_HEADERS,
    ErrorCode,
    Negotiated,
    Opcode,
    block_count,
    encode_error,
    encode_oack,
    netascii_encode,
    parse_error,
)

log = logging.getLogger("overrided.tftp")


def _native_loop() -> NativeRun | None:
    """The C lockstep loop (``_lockstep.c``), unless absent or ``OVERRIDED_TFTP_NATIVE=0``."""
    if os.environ.get("OVERRIDED_TFTP_NATIVE", "1") == "0":
        return None
    return _NATIVE_RUN


# ``_lockstep.run``: answers expected ACKs until anything else happens (see its doc and stub).
NativeRun = Callable[..., tuple[int, int, int, int, int, float]]


# Why ``_lockstep.run`` returned (the values of its STOP_* constants).
STOP_PACKET, STOP_RECV, STOP_SEND, STOP_READ = 0, 1, 2, 3

# Imported here, once, not in each transfer's process: loading a shared object there would
# delay its first block by milliseconds.
_NATIVE_RUN: NativeRun | None
try:
    from overrided.tftp._lockstep import run as _NATIVE_RUN
except ImportError:  # built without a C compiler: the Python loop does the same
    _NATIVE_RUN = None

# A client that stops (sends ERROR) before this much was acknowledged was looking, not
# loading: barebox probes every file (RRQ blksize 512 + tsize, ERROR after DATA 1) and then
# reads headers that it abandons after a few blocks (docs/design.md, "barebox").
PROBE_BYTES = 256 * 1024
# A duplicate ACK for the block acknowledged last means "I got nothing since" when it comes
# this long after our last send (barebox resends its ACK after 1 s). Sooner, it is a copy made
# by the network and answering it would double every later window (RFC 1350 "Sorcerer's
# Apprentice"), so it is ignored.
RESYNC_AFTER = 0.25
# How often an idle transfer wakes up to check its deadlines (seconds).
TICK = 0.1
# Blocks read with one ``preadv`` ahead of the ACKs in lockstep (window 1): the next block is
# then already a packet when its ACK comes, and a read costs one syscall per this many blocks.
READ_AHEAD = 32
# ... but no more bytes than this at once: at large block sizes a long read-ahead only spills
# the packets out of the CPU caches before they are sent (measured with curl, blksize 65464,
# one core: 0.85x tftpd-hpa with 32 blocks, 0.91x with 4, 0.97-1.01x with 1; at 8192, 8
# blocks were as fast as 32 and faster than 1).
READ_AHEAD_BYTES = 64 * 1024
# Opcodes as plain ints for the per-packet path (an IntEnum lookup costs more).
_ACK, _ERROR = int(Opcode.ACK), int(Opcode.ERROR)


class Source(Protocol):
    """Bytes of a served view as the wire carries them (octet or netascii)."""

    size: int

    def readinto(self, views: list[memoryview], offset: int) -> int:
        """Fill ``views`` in order from ``offset``; return the bytes read (short only at EOF)."""
        ...

    def release(self, offset: int) -> None:
        """Bytes before ``offset`` were acknowledged and will not be read again."""
        ...

    def close(self) -> None:
        """Release the view's files."""
        ...


class OctetSource:
    """The view's bytes unchanged, read with one ``preadv`` per window and file piece."""

    def __init__(self, view: OpenView) -> None:
        self.view = view
        self.size = view.size
        single = view.single
        # A whole single file (every folder's file, most store blobs) is read with one preadv
        # straight from the window's caller, without a frame of ours in between.
        self.readinto: Callable[[list[memoryview], int], int] = (
            functools.partial(os.preadv, single[0])
            if single is not None and single[1] == 0
            else view.readinto
        )

    def fd_table(self) -> bytes | None:
        """The pieces as the C loop reads them: ``TABLE_ROW``s of (start in the view, length,
        descriptor, file offset), the descriptor itself in place of its index (``_lockstep.c``).

        ``None`` when a piece is literal bytes, which only a handed-off view has in a file
        (``OpenView.handoff``): the Python loop then reads it.
        """
        try:
            table = self.view.table()
        except ValueError:
            return None
        fds = self.view.fds
        return b"".join(
            TABLE_ROW.pack(start, length, fds[index], offset)
            for start, length, index, offset in TABLE_ROW.iter_unpack(table)
        )

    def release(self, offset: int) -> None:
        """Nothing is kept: every read goes to the files."""

    def close(self) -> None:
        """Close the view's files."""
        self.view.close()


class NetasciiSource:
    """The view translated to netascii (RFC 1350), produced as the transfer advances.

    Reads never go back before the first unacknowledged block (a window restarts there at the
    earliest), so the translated bytes are kept from there on only (see ``release``).
    """

    CHUNK = 64 * 1024

    def __init__(self, view: OpenView, *, size: int | None = None) -> None:
        self.view = view
        # ``size``: already counted (by the server, before its transfer's process started).
        self.size = self._translated_size() if size is None else size
        self._buf = b""  # translated bytes starting at ``_buf_offset``
        self._buf_offset = 0
        self._raw_offset = 0

    def _translated_size(self) -> int:
        size, offset = 0, 0
        while chunk := self.view.read_at(offset, self.CHUNK):
            offset += len(chunk)
            size += len(chunk) + chunk.count(b"\n") + chunk.count(b"\r")
        return size

    def readinto(self, views: list[memoryview], offset: int) -> int:
        """Copy translated bytes from ``offset`` into ``views``."""
        want = sum(len(v) for v in views)
        end = min(offset + want, self.size)
        while self._buf_offset + len(self._buf) < end:
            raw = self.view.read_at(self._raw_offset, self.CHUNK)
            if not raw:
                break
            self._raw_offset += len(raw)
            self._buf += netascii_encode(raw)
        data = self._buf[offset - self._buf_offset : end - self._buf_offset]
        pos = 0
        for view in views:
            piece = data[pos : pos + len(view)]
            view[: len(piece)] = piece
            pos += len(piece)
        return pos

    def release(self, offset: int) -> None:
        """Forget the translated bytes before ``offset``."""
        drop = offset - self._buf_offset
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_offset = offset

    def close(self) -> None:
        """Close the view's files."""
        self.view.close()


def describe(record: Transfer) -> str:
    """The one structured log line of a finished transfer (``key=value`` pairs)."""
    options = ",".join(f"{k}={v}" for k, v in record.options.items()) or "-"
    rate = record.throughput / 1e6
    return (
        f"tftp client={record.client} name={record.name!r} board={record.board or '-'}"
        f" options={options} bytes={record.sent} size={record.size}"
        f" duration={record.duration:.3f}s throughput={rate:.2f}MB/s cpu={record.cpu:.3f}s"
        f" retransmits={record.retransmits} outcome={record.outcome} reason={record.reason!r}"
    )


def report(record: Transfer, observer: TransferObserver) -> None:
    """Log the transfer's line (warning for failures) and tell the observer."""
    level = logging.INFO if record.outcome in ("ok", "probe") else logging.WARNING
    log.log(level, "%s", describe(record), extra={"transfer": record})
    try:
        observer.finished(record)
    except Exception:  # an observer bug must not take the server down
        log.exception("transfer observer failed")


class ReadTransfer:
    """A read request served from its own socket until the last ACK, an ERROR or a timeout.

    ``run`` blocks until the end and leaves the outcome in ``record``; ``cancel`` (from a
    signal handler) makes it end within one timer tick.
    """

    def __init__(
        self,
        sock: socket.socket,
        peer: tuple[object, ...],
        source: Source,
        granted: Negotiated,
        record: Transfer,
        *,
        timeout: float,
        retries: int,
        max_stall: float,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.source = source
        self._readinto = source.readinto
        self.record = record
        self.blksize = granted.blksize
        self.window = granted.windowsize
        self.oack = encode_oack(granted.oack) if granted.oack else b""
        self.timeout = min(granted.timeout or timeout, max_stall)
        self.retries = retries
        self.max_stall = max_stall
        self.size = source.size
        self.nblocks = block_count(self.size, self.blksize)
        self.done = False
        # Absolute block numbers (no 16-bit wrap): ``acked`` is the highest acknowledged block,
        # -1 while the OACK (block 0) waits for its ACK; ``last_sent`` the highest block sent.
        self.acked = -1 if self.oack else 0
        self.last_sent = 0
        self.tries = 0  # consecutive timeouts without progress
        step = self.blksize + 4
        self._step = step
        self._lockstep = self.window == 1 and isinstance(source, OctetSource)
        ahead = max(1, min(READ_AHEAD, READ_AHEAD_BYTES // self.blksize))
        packets = ahead if self._lockstep else self.window
        self._buf = bytearray(step * max(1, min(packets, self.nblocks)))
        self._mv = memoryview(self._buf)
        count = len(self._buf) // step
        self._views = [self._mv[i * step + 4 : (i + 1) * step] for i in range(count)]
        # After a resend from block r, blocks r .. ``_overlap_end`` went out twice: the client
        # may take the older copies and then see the newer ones as out of order (see _on_ack).
        self._overlap_end = 0
        self._sent_at = 0.0
        self._progress_at = 0.0
        self._deadline = 0.0
        self._cancelled = ""
        self._begun = False
        self._t0 = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        """Send the OACK (RFC 2347) or the first window (RFC 1350), then answer ACKs to the end."""
        self.begin()
        if not self.done:
            try:
                self._serve()
            except Exception as err:  # never leave a transfer unreported
                self._finish("failed", f"internal error: {err!r}")

    def begin(self) -> None:
        """Send the OACK or the first window (``run`` does, unless this was called first)."""
        if self._begun:
            return
        self._begun = True
        sock = self.sock
        try:
            sock.setblocking(True)
            # The receive timeout is the timer's tick; deadlines are checked on each wake-up.
            tick = min(self.timeout, TICK)
            tv = struct.pack("@ll", int(tick), int((tick - int(tick)) * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            self._progress_at = time.monotonic()
            if self.oack:
                self._send_oack()
            else:
                self._send_window(1)
        except Exception as err:  # never leave a transfer unreported
            self._finish("failed", f"internal error: {err!r}")

    def _serve(self) -> None:
        sock, monotonic = self.sock, time.monotonic
        # Lockstep (window 1) from a plain file is the common case (barebox and U-Boot by
        # default): its ACK is handled right here, without the general window machinery, by
        # the C loop when it is built (``_lockstep.c``), else by the Python lines below.
        lockstep = self._lockstep
        native = _native_loop() if lockstep else None
        # The C loop reads the view's pieces by descriptor; a view with literal bytes outside
        # a file (not handed off, see ``OpenView.handoff``) is left to the Python loop.
        table = self.source.fd_table() if isinstance(self.source, OctetSource) else None
        if table is None:
            native = None
        views, mv, bs, step = self._views, self._mv, self.blksize, self._step
        # The buffer's packets as sent for full blocks; the file's last block may be short.
        packets = [mv[i * step : i * step + 4 + bs] for i in range(len(views))]
        nblocks, size = self.nblocks, self.size
        last_full = nblocks - 1  # blocks before this one are followed by another
        last_length = size - last_full * bs
        # Lockstep reads ahead: packets[i] holds block ``ahead + i`` for i < ``held``. Anything
        # else that sends (a resend, a timer) reuses the buffer, so it drops them (held = 0).
        ahead = held = 0
        readinto, send, recv_into = self._readinto, sock.send, sock.recv_into
        sock_fd, buf = sock.fileno(), self._buf
        pkt = bytearray(1024)  # an ACK is 4 bytes, an ERROR a few dozen
        while not self.done:
            try:
                sent = self.last_sent
                if native is not None and self.acked == sent - 1 and 0 < sent <= last_full:
                    stop, value, sent, ahead, held, sent_at = native(
                        sock_fd, table, buf, pkt, bs, nblocks, size, sent, ahead, held
                    )
                    if sent != self.last_sent:
                        self.acked, self.last_sent, self.tries = sent - 1, sent, 0
                        self._sent_at = self._progress_at = sent_at
                        self._deadline = sent_at + self.timeout
                    if stop == STOP_PACKET:
                        n = value
                    elif stop == STOP_RECV:
                        raise OSError(value, os.strerror(value))  # as recv_into would
                    else:
                        self._fail_block(stop, value, sent + 1)
                        return
                else:
                    n = recv_into(pkt)
            except (BlockingIOError, TimeoutError, InterruptedError):
                held = 0
                self._on_timer()  # SO_RCVTIMEO ran out: nothing came for a tick
                continue
            except ConnectionRefusedError:
                if self._cancelled:
                    self._on_timer()
                else:
                    self._client_gone()
                return
            except OSError as err:
                if not self._cancelled:
                    self._finish("failed", f"receive: {err}")
                    return
                n = 0
            if self._cancelled:
                self._on_timer()
                return
            if n == 4 and pkt[1] == _ACK and pkt[0] == 0:
                sent = self.last_sent
                if (
                    lockstep
                    and (pkt[2] << 8 | pkt[3]) == sent & 0xFFFF
                    and self.acked == sent - 1
                    and 0 < sent <= last_full
                ):
                    # The ACK of the block just sent: send the next one (same rules as
                    # ``_on_ack`` and ``_send_window`` for a window of one).
                    i = sent + 1 - ahead
                    try:
                        if not 0 <= i < held:
                            count = min(len(views), nblocks - sent)
                            want = min(count * bs, size - sent * bs)
                            if readinto(views[:count], sent * bs) < want:
                                held = 0
                                self._fail_block(STOP_READ, 0, sent + 1)
                                return
                            held = count
                            self._write_headers(sent + 1, held)
                            ahead, i = sent + 1, 0
                        send(packets[i] if sent < last_full else packets[i][: 4 + last_length])
                    except ConnectionRefusedError:
                        self._client_gone()
                        return
                    except OSError as err:
                        self._finish("failed", f"block {sent + 1}: {err}")
                        return
                    self.acked, self.last_sent, self.tries = sent, sent + 1, 0
                    self._sent_at = self._progress_at = now = monotonic()
                    self._deadline = now + self.timeout
                    continue
                held = 0
                if self._on_ack((pkt[2] << 8) | pkt[3]):
                    continue  # a window went out: the deadline was just moved
            elif n >= 4 and pkt[1] == _ERROR and pkt[0] == 0:
                self._on_client_error(bytes(pkt[:n]))
            # Anything else from the client (a short ACK, DATA, a request) is ignored: the
            # timer and the client's own retransmissions recover.
            if not self.done and monotonic() >= self._deadline:
                held = 0
                self._on_timer()  # packets keep coming but none moves the transfer on

    def _fail_block(self, stop: int, errno_value: int, block: int) -> None:
        """End the transfer on a failed send or read of ``block`` (errno 0: a short read)."""
        if stop == STOP_SEND:
            if errno_value == errno.ECONNREFUSED:
                self._client_gone()
            else:
                self._finish("failed", f"block {block}: {os.strerror(errno_value)}")
            return
        why = os.strerror(errno_value) if errno_value else "the file is shorter than its size"
        self._send_error(ErrorCode.UNDEFINED, "read error")
        self._finish("failed", f"read at block {block}: {why}")

    def cancel(self, reason: str) -> None:
        """Make ``run`` end soon with outcome ``aborted`` (safe from a signal handler)."""
        self._cancelled = reason

    def _finish(self, outcome: Outcome, reason: str = "") -> None:
        if self.done:
            return
        self.done = True
        self.sock.close()
        self.source.close()
        rec = self.record
        rec.outcome = outcome
        rec.reason = reason
        rec.duration = time.monotonic() - self._t0
        rec.sent = min(self.size, max(self.last_sent, 0) * self.blksize)

    # -- sending -----------------------------------------------------------------------------

    def _send_oack(self) -> None:
        try:
            self.sock.send(self.oack)
        except ConnectionRefusedError:
            self._client_gone()
            return
        except OSError as err:
            self._finish("failed", f"send OACK: {err}")
            return
        self._sent_at = time.monotonic()
        self._deadline = self._sent_at + self.timeout

    def _send_error(self, code: ErrorCode, message: str) -> None:
        with contextlib.suppress(OSError):  # best effort: the transfer ends either way
            self.sock.send(encode_error(code, message))

    def _write_headers(self, first: int, count: int) -> None:
        """Put the DATA headers of blocks ``first`` .. ``first + count - 1`` in the buffer."""
        buf, step = self._buf, self._step
        for i in range(count):
            buf[i * step : i * step + 4] = DATA_HEADERS[(first + i) & 0xFFFF]

    def _send_window(self, first: int, count: int | None = None) -> None:
        """Read and send ``count`` blocks (a window if None) from ``first`` (RFC 7440 sec. 4)."""
        count = min(self.window if count is None else count, self.nblocks - first + 1)
        if count <= 0:  # nothing left to send: only the timer runs on
            self._sent_at = now = time.monotonic()
            self._deadline = now + self.timeout
            return
        views = self._views if count == len(self._views) else self._views[:count]
        offset = (first - 1) * self.blksize
        try:
            got = self._readinto(views, offset)
        except OSError as err:
            self._send_error(ErrorCode.UNDEFINED, "read error")
            self._finish("failed", f"read at block {first}: {err}")
            return
        if got < min(count * self.blksize, self.size - offset):
            # The file shrank under us (a plain folder's file rewritten in place): never send
            # what an earlier window left in the buffer as if it were this file's bytes.
            self._fail_block(STOP_READ, 0, first)
            return
        buf, step, bs = self._buf, self._step, self.blksize
        mv, send = self._mv, self.sock.send
        remaining = self.size - (first - 1) * bs
        pos = 0
        try:
            for i in range(count):
                buf[pos : pos + 4] = DATA_HEADERS[(first + i) & 0xFFFF]
                length = bs if remaining >= bs else remaining
                # Blocking send: a full socket buffer just waits (this thread only).
                send(mv[pos : pos + 4 + length])
                remaining -= length
                pos += step
        except ConnectionRefusedError:
            self._client_gone()
            return
        except OSError as err:
            self._finish("failed", f"send block {first + i}: {err}")
            return
        if first + count - 1 > self.last_sent:
            self.last_sent = first + count - 1
        self._sent_at = now = time.monotonic()
        self._deadline = now + self.timeout

    # -- receiving ---------------------------------------------------------------------------

    def _on_ack(self, wire: int) -> bool:
        """Handle an ACK; True when it moved the transfer on (a window sent, or the end)."""
        # Map the 16-bit block number to the one block in (acked, acked + 65535] it can mean;
        # blocks roll over past 65535 (to 0) on files longer than 65535 blocks.
        delta = (wire - self.acked) & 0xFFFF
        if delta == 0:
            # The same ACK again: a copy made by the network, or the client timing out on a
            # lost window. Only the latter, recognisably late, is answered (see RESYNC_AFTER).
            if time.monotonic() - self._sent_at >= RESYNC_AFTER and self.acked >= 0:
                # The client waited for its timeout: nothing of ours is still on its way, so
                # no older copy can reach it after the resent ones.
                self.record.retransmits += self._resend(overlap=False)
            return False
        block = self.acked + delta
        if block > self.last_sent:
            return False  # acknowledges something never sent: stale or forged, ignore
        self.acked = block
        self.tries = 0
        self.source.release(block * self.blksize)
        if block >= self.nblocks:
            self._finish("ok")
            return True
        if block == self.last_sent:
            self._send_window(block + 1)  # the whole window arrived: the next one
        elif block == self._overlap_end:
            # The client holds every block up to the last one sent before our resend, and then
            # met the resent copies: U-Boot ACKs the last block it holds when a block it already
            # has arrives, and expects its next ACK point a window after that (net/tftp.c).
            # The resent copies of the blocks after it are on their way, so restarting here
            # would only send a third copy, which makes the next such ACK, and so on for every
            # window. Send just what extends the window to that ACK point.
            self._send_window(self.last_sent + 1, block + self.window - self.last_sent)
        else:
            # RFC 7440 section 4: an ACK inside the window means the blocks after it were lost;
            # the next window starts right after it. U-Boot keeps nothing that comes after a
            # gap, so the whole window is sent again.
            self.record.retransmits += self.last_sent - block
            self._overlap_end = self.last_sent
            self._send_window(block + 1)
        self._progress_at = self._sent_at
        return True

    def _on_client_error(self, data: bytes) -> None:
        code, message = parse_error(data)
        self._stopped_by_client(f"client sent ERROR {code} {message!r}")

    def _client_gone(self) -> None:
        """The client's port is closed (ICMP port unreachable): it stopped without an ERROR."""
        reason = "client port closed (ICMP port unreachable)"
        if self.last_sent >= self.nblocks:
            # Every block went out: the client took the last one and left (its final ACK was
            # lost, or it never sends one).
            self._finish("ok", reason)
        else:
            self._stopped_by_client(reason)

    def _stopped_by_client(self, reason: str) -> None:
        acked_bytes = max(self.acked, 0) * self.blksize
        if acked_bytes < PROBE_BYTES:
            self._finish("probe", f"{reason} after {max(self.acked, 0)} blocks")
        else:
            self._finish("aborted", f"{reason} after {acked_bytes} bytes")

    # -- timing ------------------------------------------------------------------------------

    def _resend(self, *, overlap: bool = True) -> int:
        """Send again from the first unacknowledged block; return the packets resent.

        ``overlap``: earlier copies of the resent blocks may still reach the client (our own
        timer ran out, so the client may hold any part of the window).
        """
        if self.acked < 0:
            self._send_oack()
            return 1
        before = self.last_sent
        self._overlap_end = before if overlap else self.acked
        self._send_window(self.acked + 1)
        return max(before, self.last_sent) - self.acked

    def _on_timer(self) -> None:
        if self.done:
            return
        if self._cancelled:
            self._send_error(ErrorCode.UNDEFINED, self._cancelled)
            self._finish("aborted", self._cancelled)
            return
        now = time.monotonic()
        if now < self._deadline:
            return  # woken early (a packet that changed nothing): keep waiting
        stalled = now - self._progress_at
        if self.tries >= self.retries or stalled >= self.max_stall:
            self._give_up(stalled)
            return
        self.tries += 1
        self.record.retransmits += self._resend()

    def _give_up(self, stalled: float) -> None:
        why = f"no ACK for {stalled:.1f}s after {self.tries} retransmissions"
        if self.acked < 0:
            if "tsize" in self.record.options:
                # barebox's size probe may simply stop after reading tsize from the OACK.
                self._finish("probe", "client did not ACK the OACK (size probe)")
            else:
                self._finish("failed", f"{why} of the OACK")
        elif self.last_sent >= self.nblocks:
            # Every block went out and the client acknowledged up to the last window; clients
            # exit right after their final ACK, so a lost final ACK is not a failed transfer.
            self._finish("ok", f"final ACK not received ({why})")
        else:
            self._send_error(ErrorCode.UNDEFINED, "timed out")
            self._finish("failed", f"{why}; client acknowledged {self.acked} of {self.nblocks}")
