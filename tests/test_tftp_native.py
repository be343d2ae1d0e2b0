"""The C lockstep loop (``overrided/tftp/_lockstep.c``) on its own, and both loops end to end.

The loop is driven directly over a connected UDP pair: ACKs queued in advance are answered one
by one, and it must stop, with its state right, on anything else. End to end, curl reads the
same files with the C loop and with the Python one (``OVERRIDED_TFTP_NATIVE=0``), and a file
that shrinks under a transfer ends it with an ERROR instead of stale bytes.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from overrided.tftp import transfer
from overrided.tftp.packets import ErrorCode, Opcode, encode_ack, encode_error, opcode_of
from tests.test_tftp_support import RawClient, ServerThread, data_blocks


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


def packets_for(slots: int) -> tuple[bytearray, bytearray]:
    return bytearray((BS + 4) * slots), bytearray(1024)


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
            server.fileno(), f.fileno(), buf, pkt, BS, 21, len(data), 1, 0, 0
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
        result = run(server.fileno(), f.fileno(), buf, pkt, BS, 11, BS * 10, 5, 5, 3)
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
        stop, value, sent, *_ = run(
            server.fileno(), f.fileno(), buf, pkt, BS, nblocks, BS * (nblocks - 1), 65534, 0, 0
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
        result = run(server.fileno(), f.fileno(), buf, pkt, BS, 11, BS * 10, 1, 0, 0)
    assert result[:5] == (transfer.STOP_READ, 0, 1, 0, 0)
    with pytest.raises(TimeoutError):
        client.settimeout(0.2)
        client.recv(2048)  # nothing of the short read was sent


def test_state_out_of_range_is_refused(link: tuple[socket.socket, socket.socket]) -> None:
    run = native_run()
    server, _ = link
    buf, pkt = packets_for(4)
    with pytest.raises(ValueError, match="out of range"):
        run(server.fileno(), 0, buf, pkt, BS, 11, BS * 10, 11, 0, 0)  # the last block's ACK
    with pytest.raises(ValueError, match="out of range"):
        run(server.fileno(), 0, buf, pkt, BS, 11, BS * 10, 1, 0, 5)  # more held than slots


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
