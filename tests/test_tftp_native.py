"""The C lockstep loop (``overrided/tftp/_lockstep.c``) on its own, and both loops end to end.

The loop is driven directly over a connected UDP pair: ACKs queued in advance are answered one
by one, and it must stop, with its state right, on anything else. It reads a view of pieces
(ranges of files, literal bytes moved into a memory file) across their boundaries, byte for
byte, and refuses a table that is not pieces from 0 to the size. End to end, curl and a raw
client read the same files and views with the C loop and with the Python one
(``OVERRIDED_TFTP_NATIVE=0``), and a file that shrinks under a transfer ends it with an ERROR
instead of stale bytes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from overrided.served import TABLE_ROW, Piece, View
from overrided.tftp import transfer
from overrided.tftp.packets import (
    ErrorCode,
    Opcode,
    block_count,
    encode_ack,
    encode_error,
    opcode_of,
)
from tests.support.tftp import (
    RawClient,
    ServerThread,
    ViewNamespace,
    data_blocks,
    pieced_view,
    read_whole,
)


def test_the_c_loop_is_built_where_a_compiler_is() -> None:
    """``setup.py`` marks the extension optional: make a silently skipped build visible."""
    if not shutil.which("gcc"):
        pytest.skip("no C compiler here: the Python loop serves (checked below)")
    from overrided.tftp import _lockstep

    assert transfer._native_loop() is _lockstep.run
    consts = (_lockstep.STOP_PACKET, _lockstep.STOP_RECV, _lockstep.STOP_SEND)
    assert consts == (transfer.STOP_PACKET, transfer.STOP_RECV, transfer.STOP_SEND)
    assert _lockstep.STOP_READ == transfer.STOP_READ
    assert transfer.READ_AHEAD <= _lockstep.MAX_RUN


def test_env_switch_selects_the_python_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERRIDED_TFTP_NATIVE", "0")
    assert transfer._native_loop() is None


# -- the loop on its own ---------------------------------------------------------------------

BS = 512


@pytest.fixture
def link() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server, client): UDP sockets on loopback connected to each other."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (server, client):
        s.bind(("127.0.0.1", 0))
    server.connect(client.getsockname())
    client.connect(server.getsockname())
    # The loop's receive timeout, as the transfer sets it: nothing queued means EAGAIN soon.
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 200_000))
    client.settimeout(2)
    yield server, client
    server.close()
    client.close()


def native_run() -> transfer.NativeRun:
    run = transfer._native_loop()
    if run is None:
        pytest.skip("the C loop is not built here")
    return run


def packets_for(slots: int, blksize: int = BS) -> tuple[bytearray, bytearray]:
    return bytearray((blksize + 4) * slots), bytearray(1024)


def whole(fd: int, size: int) -> bytes:
    """The loop's table of a view that is one file's first ``size`` bytes."""
    return TABLE_ROW.pack(0, size, fd, 0)


def fd_table(rows: list[tuple[int, int, int, int]]) -> bytes:
    return b"".join(TABLE_ROW.pack(*row) for row in rows)


def test_answers_queued_acks_then_stops_on_anything_else(
    link: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    run = native_run()
    server, client = link
    data = os.urandom(BS * 20 + 100)  # 21 blocks, the last one short
    path = tmp_path / "f"
    path.write_bytes(data)
    buf, pkt = packets_for(8)
    for block in range(1, 10):  # block 1 "went out" before: ACK 1 .. 9 ask for 2 .. 10
        client.send(encode_ack(block))
    error = encode_error(ErrorCode.UNDEFINED, "stop")
    client.send(error)
    with path.open("rb") as f:
        stop, value, sent, ahead, held, sent_at = run(
            server.fileno(), whole(f.fileno(), len(data)), buf, pkt, BS, 21, len(data), 1, 0, 0
        )
    assert (stop, value) == (transfer.STOP_PACKET, len(error))
    assert bytes(pkt[: len(error)]) == error
    # Blocks 2 .. 10 went out; reads ahead ran 2 .. 9 and 10 .. 17.
    assert (sent, ahead, held) == (10, 10, 8)
    assert sent_at > 0
    got = [client.recv(2048) for _ in range(9)]
    assert data_blocks(got) == list(range(2, 11))
    assert b"".join(p[4:] for p in got) == data[BS : 10 * BS]


def test_a_stale_or_foreign_ack_returns_with_state_intact(
    link: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    run = native_run()
    server, client = link
    path = tmp_path / "f"
    path.write_bytes(os.urandom(BS * 10))
    buf, pkt = packets_for(4)
    client.send(encode_ack(4))  # block 5 went out: an ACK for 4 is a duplicate
    with path.open("rb") as f:
        table = whole(f.fileno(), BS * 10)
        result = run(server.fileno(), table, buf, pkt, BS, 11, BS * 10, 5, 5, 3)
    assert result[:5] == (transfer.STOP_PACKET, 4, 5, 5, 3)
    assert result[5] == 0.0  # nothing sent
    assert bytes(pkt[:4]) == encode_ack(4)


def test_block_numbers_roll_over_and_the_last_ack_returns(
    link: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    run = native_run()
    server, client = link
    nblocks = 65537  # 65536 full blocks and an empty last one
    path = tmp_path / "sparse"
    with path.open("wb") as f:
        f.truncate(BS * (nblocks - 1))  # zeros, without writing 32 MiB
    buf, pkt = packets_for(32)
    for wire in (0xFFFE, 0xFFFF, 0x0000):  # ACKs of blocks 65534, 65535, 65536
        client.send(encode_ack(wire))
    with path.open("rb") as f:
        size = BS * (nblocks - 1)
        stop, value, sent, *_ = run(
            server.fileno(), whole(f.fileno(), size), buf, pkt, BS, nblocks, size, 65534, 0, 0
        )
    # 65535 and 65536 (wire 0) went out; 65537 is the empty last block, sent on ACK 65536.
    got = [client.recv(2048) for _ in range(3)]
    assert data_blocks(got) == [0xFFFF, 0x0000, 0x0001]
    assert [len(p) for p in got] == [BS + 4, BS + 4, 4]
    assert (stop, sent) == (transfer.STOP_RECV, nblocks)
    assert value == errno.EAGAIN  # then nothing came: the timer's turn


def test_a_file_shorter_than_its_size_stops_the_loop(
    link: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    run = native_run()
    server, client = link
    path = tmp_path / "f"
    path.write_bytes(os.urandom(BS * 3))  # the transfer believes it has 10 blocks
    buf, pkt = packets_for(4)
    client.send(encode_ack(1))
    with path.open("rb") as f:
        table = whole(f.fileno(), BS * 10)
        result = run(server.fileno(), table, buf, pkt, BS, 11, BS * 10, 1, 0, 0)
    assert result[:5] == (transfer.STOP_READ, 0, 1, 0, 0)
    with pytest.raises(TimeoutError):
        client.settimeout(0.2)
        client.recv(2048)  # nothing of the short read was sent


def test_state_out_of_range_is_refused(link: tuple[socket.socket, socket.socket]) -> None:
    run = native_run()
    server, _ = link
    buf, pkt = packets_for(4)
    table = whole(0, BS * 10)
    with pytest.raises(ValueError, match="out of range"):
        run(server.fileno(), table, buf, pkt, BS, 11, BS * 10, 11, 0, 0)  # the last block's ACK
    with pytest.raises(ValueError, match="out of range"):
        run(server.fileno(), table, buf, pkt, BS, 11, BS * 10, 1, 0, 5)  # more held than slots


# -- the loop over views of many pieces -----------------------------------------------------

# Piece lengths: boundaries inside blocks, several in one block (1, 2, 3, 7 bytes), pieces just
# over and under a block of each size, and pieces longer than a read-ahead run.
LENGTHS = [1000, 1, 2, 511, 1433, 40, 9000, 3, 100000, 1469, 7, 65000, 513, 1431, 1467]


def drive(
    run: transfer.NativeRun,
    link: tuple[socket.socket, socket.socket],
    table: bytes,
    size: int,
    blksize: int,
    *,
    sent: int = 1,
    slots: int = 8,
    chunk: int = 40,
) -> tuple[bytes, list[int]]:
    """Run the loop from block ``sent`` to the last one, ``chunk`` ACKs at a time (each batch
    ended by a packet that is no ACK, which the loop returns on with its state kept for the
    next call); the payloads of the blocks it sent, joined, and their wire numbers."""
    server, client = link
    nblocks = block_count(size, blksize)
    buf, pkt = packets_for(slots, blksize)
    ahead = held = 0
    payloads: list[bytes] = []
    numbers: list[int] = []
    for _ in range(nblocks):  # bounded: each round sends at least one block
        if sent >= nblocks:
            break
        acks = range(sent, min(sent + chunk, nblocks))
        for block in acks:
            client.send(encode_ack(block & 0xFFFF))
        client.send(b"\0\0")
        stop, value, after, ahead, held, _ = run(
            server.fileno(), table, buf, pkt, blksize, nblocks, size, sent, ahead, held
        )
        assert (stop, value, after) == (transfer.STOP_PACKET, 2, sent + len(acks))
        got = [client.recv(blksize + 4) for _ in acks]
        numbers += data_blocks(got)
        payloads += [p[4:] for p in got]
        sent = after
    return b"".join(payloads), numbers


def loop_table(view: View) -> tuple[transfer.OctetSource, bytes]:
    """The view opened as the server opens it (literal pieces in a memory file) and its table
    for the C loop."""
    source = transfer.OctetSource(view.open().handoff())
    table = source.fd_table()
    assert table is not None
    return source, table


@pytest.mark.parametrize("slots", [1, 8, 32])
@pytest.mark.parametrize("blksize", [512, 1432, 1468])
@pytest.mark.parametrize("end", ["short", "exact"])
def test_reads_a_view_across_its_pieces_byte_exact(
    link: tuple[socket.socket, socket.socket],
    tmp_path: Path,
    blksize: int,
    slots: int,
    end: str,
) -> None:
    """Blocks that straddle pieces, literal pieces, a last block short or empty (exact)."""
    run = native_run()
    lengths = list(LENGTHS)
    if end == "exact":  # a last literal piece that makes the size a whole number of blocks
        lengths.append(blksize - sum(lengths) % blksize)
    view = pieced_view(tmp_path, lengths, seed=blksize)
    expected = view.read()
    assert len(view.pieces) == len(lengths) and (len(expected) % blksize == 0) == (end == "exact")
    source, table = loop_table(view)
    with contextlib.closing(source):
        got, numbers = drive(run, link, table, view.size, blksize, slots=slots)
    nblocks = block_count(view.size, blksize)
    assert numbers == list(range(2, nblocks + 1))
    assert got == expected[blksize:]


def test_block_numbers_roll_over_across_pieces(
    link: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    """Blocks 65534 .. 65537 (wire 65534, 65535, 0, 1) straddle a file range, literal bytes
    and another file's range; the last block is empty."""
    run = native_run()
    a, b = tmp_path / "a", tmp_path / "b"
    first = BS * 65535 - 100  # file a's range ends 100 bytes before block 65535 does
    with a.open("wb") as f:
        f.truncate(first + 4096)  # zeros, without writing 32 MiB ...
        f.seek(first - 3000)
        f.write(os.urandom(4096))  # ... but what the last blocks read of it is random
    b.write_bytes(os.urandom(1000))
    literal = os.urandom(50)
    rest = BS * 65536 - first - len(literal)
    view = View((Piece(first, a, 100), Piece.literal(literal), Piece(rest, b, 7)))
    assert view.size == BS * 65536
    source, table = loop_table(view)
    with contextlib.closing(source):
        got, numbers = drive(run, link, table, view.size, BS, sent=65533)
        expected = source.view.read_at(BS * 65533, 4 * BS)
    assert numbers == [65534, 65535, 0, 1]
    assert got == expected and len(got) == 3 * BS


def test_a_piece_shorter_than_its_file_stops_the_loop(
    link: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    """The second piece claims 5000 bytes of a 1000-byte file: the first run (blocks 2 .. 9)
    reads 1608 of them, which stops the loop (STOP_READ, 0) before it sends anything."""
    run = native_run()
    server, client = link
    (tmp_path / "a").write_bytes(os.urandom(3000))
    (tmp_path / "b").write_bytes(os.urandom(1000))
    view = View((Piece(3000, tmp_path / "a"), Piece(5000, tmp_path / "b")))
    source, table = loop_table(view)
    buf, pkt = packets_for(8)
    client.send(encode_ack(1))
    with contextlib.closing(source):
        result = run(server.fileno(), table, buf, pkt, BS, 16, view.size, 1, 0, 0)
    assert result[:5] == (transfer.STOP_READ, 0, 1, 0, 0)
    with pytest.raises(TimeoutError):
        client.settimeout(0.2)
        client.recv(2048)


SIZE = BS * 10
BAD_TABLES = [
    # (case, table for a view of SIZE bytes read from descriptor 0)
    ("no rows", b""),
    ("not whole rows", whole(0, SIZE) + b"\0"),
    ("not from 0", fd_table([(1, SIZE - 1, 0, 0)])),
    ("a gap", fd_table([(0, 100, 0, 0), (101, SIZE - 101, 0, 0)])),
    ("an overlap", fd_table([(0, 100, 0, 0), (99, SIZE - 99, 0, 0)])),
    ("an empty piece", fd_table([(0, 0, 0, 0), (0, SIZE, 0, 0)])),
    ("a negative length", fd_table([(0, -1, 0, 0), (-1, SIZE + 1, 0, 0)])),
    ("no descriptor", fd_table([(0, SIZE, -1, 0)])),
    ("a negative offset", fd_table([(0, SIZE, 0, -1)])),
    ("short of the size", fd_table([(0, SIZE - 1, 0, 0)])),
    ("past the size", fd_table([(0, 100, 0, 0), (100, SIZE, 0, 0)])),
    ("an end past int64", fd_table([(0, 100, 0, 0), (100, 2**63 - 1, 0, 0)])),
    ("an offset past int64", fd_table([(0, SIZE, 0, 2**63 - 5)])),
]


@pytest.mark.parametrize("table", [t[1] for t in BAD_TABLES], ids=[t[0] for t in BAD_TABLES])
def test_a_table_that_is_not_the_view_is_refused(
    link: tuple[socket.socket, socket.socket], table: bytes
) -> None:
    run = native_run()
    server, client = link
    buf, pkt = packets_for(4)
    client.send(encode_ack(1))
    with pytest.raises(ValueError, match="view table"):
        run(server.fileno(), table, buf, pkt, BS, 11, SIZE, 1, 0, 0)
    assert server.recv(16) == encode_ack(1)  # still queued: the loop did not start


def test_literal_pieces_outside_a_file_leave_the_view_to_the_python_loop(tmp_path: Path) -> None:
    """Only a handed-off view has its literal bytes in a file the C loop can read."""
    view = pieced_view(tmp_path, [100, 100, 100])
    with view.open() as opened:
        assert transfer.OctetSource(opened).fd_table() is None
    source, table = loop_table(view)
    with contextlib.closing(source):
        rows = list(TABLE_ROW.iter_unpack(table))
        assert [r[:2] for r in rows] == [(0, 100), (100, 100), (200, 100)]
        assert {r[2] for r in rows} <= set(source.view.fds)


# -- end to end, both loops -------------------------------------------------------------------

LOOPS = ["c", "python"]


@pytest.fixture(params=LOOPS)
def loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which lockstep loop the server's transfers run (each transfer checks when it starts)."""
    if request.param == "python":
        monkeypatch.setenv("OVERRIDED_TFTP_NATIVE", "0")
    else:
        native_run()
    return str(request.param)


@pytest.mark.parametrize("blksize", [512, 1432, 1468])
def test_curl_reads_byte_exact_with_either_loop(loop: str, blksize: int, tmp_path: Path) -> None:
    size = (70000 * 512) if blksize == 512 else (3 << 20) + 7  # 512: past the rollover
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    out = tmp_path / "out"
    with ServerThread(tmp_path) as srv:
        url = f"tftp://127.0.0.1:{srv.port}/f"
        subprocess.run(
            ["curl", "-sS", "--tftp-blksize", str(blksize), "-o", str(out), url],
            check=True,
            timeout=300,
        )
        (record,) = srv.observer.wait_finished(1)
    assert out.read_bytes() == data
    assert (record.outcome, record.sent, record.retransmits) == ("ok", size, 0)


def test_a_file_shrinking_under_a_transfer_ends_it_with_an_error(loop: str, tmp_path: Path) -> None:
    """Blocks read before the truncation are the file's; after it, ERROR, never stale bytes."""
    data = os.urandom(BS * 200)
    path = tmp_path / "f"
    path.write_bytes(data)
    with ServerThread(tmp_path, timeout=0.3, retries=2) as srv:
        client = RawClient(srv.port)
        client.request("f")
        got, block = [client.recv()], 1
        with path.open("r+b") as f:
            f.truncate(BS * 50)
        while opcode_of(got[-1]) == Opcode.DATA:
            assert data_blocks(got[-1:]) == [block]
            assert got[-1][4:] == data[(block - 1) * BS : block * BS]
            client.send(encode_ack(block))
            got.append(client.recv())
            block += 1
        client.close()
        (record,) = srv.observer.wait_finished(1)
    assert opcode_of(got[-1]) == Opcode.ERROR
    assert block <= 51 + transfer.READ_AHEAD  # stopped where the read ahead ran out
    assert record.outcome == "failed"
    assert "shorter than its size" in record.reason


@pytest.mark.parametrize("blksize", [512, 1432, 1468])
def test_a_view_reads_byte_exact_with_either_loop(loop: str, blksize: int, tmp_path: Path) -> None:
    """Every packet checked: blocks across pieces, literal pieces, a short last block."""
    view = pieced_view(tmp_path, LENGTHS * 3, seed=blksize)
    with ServerThread(ViewNamespace({"v": view})) as srv:
        assert read_whole(srv.port, "v", {"blksize": str(blksize)}) == view.read()
        (record,) = srv.observer.wait_finished(1)
    assert (record.outcome, record.sent, record.retransmits) == ("ok", view.size, 0)


def test_curl_reads_a_view_past_the_rollover_with_either_loop(loop: str, tmp_path: Path) -> None:
    """34 MiB of pieces at blksize 512: block numbers roll over inside a piece and a read-ahead
    run crosses pieces on both sides of it."""
    lengths = [(20 << 20) + 3, 1, (3 << 20) - 511, 511, (10 << 20) + 77, 77, 1000, 1 << 20]
    view = pieced_view(tmp_path, lengths)
    assert view.size > 65536 * 512
    out = tmp_path / "out"
    with ServerThread(ViewNamespace({"v": view})) as srv:
        url = f"tftp://127.0.0.1:{srv.port}/v"
        subprocess.run(
            ["curl", "-sS", "--tftp-blksize", "512", "-o", str(out), url], check=True, timeout=300
        )
        (record,) = srv.observer.wait_finished(1)
    assert out.read_bytes() == view.read()
    assert (record.outcome, record.sent, record.retransmits) == ("ok", view.size, 0)


def test_a_piece_shrinking_under_a_transfer_ends_it_with_an_error(
    loop: str, tmp_path: Path
) -> None:
    """The file behind the view's last piece is cut short: blocks before that are the view's,
    then ERROR "read error", never stale bytes."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(os.urandom(BS * 50 + 100))
    b.write_bytes(os.urandom(BS * 150))
    view = View((Piece(BS * 50 + 100, a), Piece.literal(b"0123456789"), Piece(BS * 150, b)))
    data = view.read()
    with ServerThread(ViewNamespace({"v": view}), timeout=0.3, retries=2) as srv:
        client = RawClient(srv.port)
        client.request("v")
        got, block = [client.recv()], 1
        with b.open("r+b") as f:
            f.truncate(BS * 10)
        for _ in range(201):  # bounded: the view has 201 blocks
            if opcode_of(got[-1]) != Opcode.DATA:
                break
            assert data_blocks(got[-1:]) == [block]
            assert got[-1][4:] == data[(block - 1) * BS : block * BS]
            client.send(encode_ack(block))
            got.append(client.recv())
            block += 1
        client.close()
        (record,) = srv.observer.wait_finished(1)
    assert got[-1] == encode_error(ErrorCode.UNDEFINED, "read error")
    assert 1 < block <= 61  # a read-ahead run reached past the cut (at block 61)
    assert record.outcome == "failed"
    assert "shorter than its size" in record.reason
