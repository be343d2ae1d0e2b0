"""The server against hand-made packets: malformed requests, barebox's probes, TIDs, ACK rules.

Each case asserts the exact answer the RFCs call for and that a normal read still works after.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overrided.tftp.packets import (
    ErrorCode,
    Opcode,
    encode_ack,
    encode_error,
    encode_request,
    opcode_of,
    parse_error,
    parse_oack,
)
from overrided.tftp.server import PROGRESS_EVERY
from tests.support.tftp import RawClient, ServerThread, data_blocks, read_whole, wait_until

SMALL = bytes(range(256)) * 4  # 1024 bytes: two full 512-byte blocks and an empty one
BIG = os.urandom(600 * 1024)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "small").write_bytes(SMALL)
    (tmp_path / "big").write_bytes(BIG)
    (tmp_path / "secret.pem").write_text("key")
    (tmp_path / "text").write_bytes(b"one\ntwo\rthree\n")
    return tmp_path


@pytest.fixture(params=["c-loop", "python-loop", "forked"])
def server(
    root: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServerThread]:
    """The server, its lockstep transfers run by the C loop or by the Python one, in
    processes started by the launcher or ("forked") forked by the server itself."""
    if request.param == "python-loop":
        monkeypatch.setenv("OVERRIDED_TFTP_NATIVE", "0")
    if request.param == "forked":
        monkeypatch.setenv("OVERRIDED_TFTP_LAUNCHER", "0")
    with ServerThread(root, timeout=0.3, retries=2) as srv:
        yield srv


MALFORMED = [
    # (case, packet sent to the well-known port, expected ERROR code or None for silence, text)
    ("empty datagram", b"", ErrorCode.ILLEGAL_OPERATION, "illegal opcode -1"),
    ("one byte", b"\x00", ErrorCode.ILLEGAL_OPERATION, "illegal opcode -1"),
    ("opcode 0", b"\x00\x00abc\x00octet\x00", ErrorCode.ILLEGAL_OPERATION, "illegal opcode 0"),
    ("opcode 9", b"\x00\x09abc\x00octet\x00", ErrorCode.ILLEGAL_OPERATION, "illegal opcode 9"),
    ("opcode 0x0100", b"\x01\x00", ErrorCode.ILLEGAL_OPERATION, "illegal opcode 256"),
    ("RRQ without name", b"\x00\x01", ErrorCode.ILLEGAL_OPERATION, "no NUL after the filename"),
    ("name without NUL", b"\x00\x01small", ErrorCode.ILLEGAL_OPERATION, "no NUL after"),
    ("no mode", b"\x00\x01small\x00", ErrorCode.ILLEGAL_OPERATION, "no NUL after"),
    ("mode without NUL", b"\x00\x01small\x00octet", ErrorCode.ILLEGAL_OPERATION, "no NUL after"),
    ("empty name", b"\x00\x01\x00octet\x00", ErrorCode.ILLEGAL_OPERATION, "empty filename"),
    ("empty mode", b"\x00\x01small\x00\x00", ErrorCode.ILLEGAL_OPERATION, "empty mode"),
    ("mail mode", b"\x00\x01small\x00mail\x00", ErrorCode.ILLEGAL_OPERATION, "mode 'mail'"),
    ("bogus mode", b"\x00\x01small\x00binary\x00", ErrorCode.ILLEGAL_OPERATION, "'binary'"),
    (
        "option without value",
        b"\x00\x01small\x00octet\x00blksize\x00",
        ErrorCode.ILLEGAL_OPERATION,
        "has no value",
    ),
    ("name not UTF-8", b"\x00\x01\xff\x00octet\x00", ErrorCode.ILLEGAL_OPERATION, "UTF-8"),
    (
        "request over 512 bytes",
        encode_request(Opcode.RRQ, "small", options={"x-pad": "p" * 600}),
        ErrorCode.ILLEGAL_OPERATION,
        "exceeds 512",
    ),
    ("60 KiB datagram", b"\x00\x01" + b"A" * 60000, ErrorCode.ILLEGAL_OPERATION, "exceeds 512"),
    ("WRQ", encode_request(Opcode.WRQ, "small"), ErrorCode.ACCESS_VIOLATION, "read-only server"),
    ("WRQ new file", encode_request(Opcode.WRQ, "new"), ErrorCode.ACCESS_VIOLATION, "read-only"),
    ("dotdot", encode_request(Opcode.RRQ, "../etc/passwd"), ErrorCode.ACCESS_VIOLATION, "access"),
    ("inner dotdot", encode_request(Opcode.RRQ, "a/../../x"), ErrorCode.ACCESS_VIOLATION, "access"),
    ("only a slash", encode_request(Opcode.RRQ, "/"), ErrorCode.ACCESS_VIOLATION, "access"),
    ("unknown name", encode_request(Opcode.RRQ, "nope"), ErrorCode.FILE_NOT_FOUND, "not found"),
    ("private key", encode_request(Opcode.RRQ, "secret.pem"), ErrorCode.FILE_NOT_FOUND, "not"),
    ("directory", encode_request(Opcode.RRQ, "."), ErrorCode.ACCESS_VIOLATION, "access"),
    ("stray ACK", encode_ack(1), ErrorCode.UNKNOWN_TID, "unknown transfer ID"),
    ("stray DATA", b"\x00\x03\x00\x01abc", ErrorCode.UNKNOWN_TID, "unknown transfer ID"),
    ("stray OACK", b"\x00\x06blksize\x00512\x00", ErrorCode.ILLEGAL_OPERATION, "opcode 6"),
    # RFC 1350 section 7: an ERROR is never answered (two servers could loop forever)
    ("stray ERROR", encode_error(ErrorCode.UNDEFINED, ""), None, ""),
]


@pytest.mark.parametrize(
    ("packet", "code", "text"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_packets(
    server: ServerThread, packet: bytes, code: ErrorCode | None, text: str
) -> None:
    client = RawClient(server.port, timeout=1.0)
    client.send_raw(packet)
    got = client.recv_all(quiet=0.3)
    client.close()
    if code is None:
        assert got == []
    else:
        assert len(got) == 1, got
        assert opcode_of(got[0]) == Opcode.ERROR
        got_code, message = parse_error(got[0])
        assert got_code == code
        assert text in message
    # and the server goes on serving others
    assert read_whole(server.port) == SMALL


@pytest.mark.parametrize(
    ("name", "outcome", "reason"),
    [
        ("nope", "not-found", "does not exist"),
        ("../etc/passwd", "refused", "'..' component"),
        ("secret.pem", "not-found", "key file"),
    ],
)
def test_refusals_are_reported(server: ServerThread, name: str, outcome: str, reason: str) -> None:
    client = RawClient(server.port)
    client.request(name)
    client.recv()
    client.close()
    (record,) = server.observer.wait_finished(1)
    assert (record.outcome, record.protocol) == (outcome, "tftp")
    assert reason in record.reason
    assert server.observer.started_records == []


def test_wrq_is_refused_and_reported(server: ServerThread, root: Path) -> None:
    client = RawClient(server.port)
    client.send_raw(encode_request(Opcode.WRQ, "small"))
    assert parse_error(client.recv()) == (ErrorCode.ACCESS_VIOLATION, "read-only server")
    (record,) = server.observer.wait_finished(1)
    assert (record.outcome, record.reason) == ("refused", "WRQ")
    assert (root / "small").read_bytes() == SMALL


@pytest.mark.parametrize(
    ("options", "oack"),
    [
        # barebox full read (fs/tftp.c): timeout 5, blksize 1432, tsize
        (
            {"timeout": "5", "blksize": "1432", "tsize": "0"},
            {"timeout": "5", "blksize": "1432", "tsize": str(len(SMALL))},
        ),
        # barebox with a window: windowsize granted only because asked
        (
            {"blksize": "1432", "tsize": "0", "windowsize": "8"},
            {"blksize": "1432", "tsize": str(len(SMALL)), "windowsize": "8"},
        ),
        # U-Boot default: blksize 1468 and timeout, no tsize, no windowsize
        ({"blksize": "1468", "timeout": "1"}, {"blksize": "1468", "timeout": "1"}),
        # capped, never raised; junk dropped
        (
            {"blksize": "70000", "windowsize": "1000", "x": "y"},
            {"blksize": "65464", "windowsize": "64"},
        ),
    ],
)
def test_oack_grants_only_what_was_asked(
    server: ServerThread, options: dict[str, str], oack: dict[str, str]
) -> None:
    client = RawClient(server.port)
    client.request("small", options)
    packet = client.recv()
    assert opcode_of(packet) == Opcode.OACK
    assert parse_oack(packet) == oack
    assert list(parse_oack(packet)) == [k for k in options if k in oack]
    client.send(encode_error(ErrorCode.UNDEFINED, ""))
    client.close()


@pytest.mark.parametrize(
    "options",
    [{"blksize": "-5", "windowsize": "0", "tsize": "x"}, {"x-unknown": "1"}, {"blksize": "4"}],
)
def test_no_usable_option_means_no_oack(server: ServerThread, options: dict[str, str]) -> None:
    # RFC 2347: with no option granted the server answers with DATA 1 as in RFC 1350
    client = RawClient(server.port)
    client.request("small", options)
    packet = client.recv()
    client.close()
    assert packet[:4] == b"\x00\x03\x00\x01"
    assert len(packet) == 4 + 512


def test_barebox_probe_sequence(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    """barebox's lookup of each file (fs/tftp.c): RRQ with timeout 5, blksize 512 and tsize;
    OACK; ACK 0; DATA 1 arrives; the client closes with ERROR 0 and an empty message."""
    caplog.set_level(logging.INFO, logger="overrided.tftp")
    client = RawClient(server.port)
    client.request("big", {"timeout": "5", "blksize": "512", "tsize": "0"})
    oack = client.recv()
    assert parse_oack(oack) == {"timeout": "5", "blksize": "512", "tsize": str(len(BIG))}
    client.send(encode_ack(0))
    data = client.recv()
    assert data[:4] == b"\x00\x03\x00\x01" and data[4:] == BIG[:512]
    # barebox's tftp_do_close: six bytes, opcode 5, code 0, an empty message and one more NUL
    client.send(b"\x00\x05\x00\x00\x00\x00")
    assert client.recv_all(quiet=0.5) == []  # dropped at once: no retransmissions follow
    client.close()
    (record,) = server.observer.wait_finished(1)
    assert record.outcome == "probe"
    assert record.options == {"timeout": "5", "blksize": "512", "tsize": str(len(BIG))}
    assert [r.levelno for r in caplog.records if "outcome=" in r.message] == [logging.INFO]
    assert "outcome=probe" in caplog.text
    wait_until(lambda: server.run(lambda: not server.server.transfers))  # type: ignore[union-attr]


def test_header_read_aborted_after_a_few_blocks_is_a_probe(server: ServerThread) -> None:
    client = RawClient(server.port)
    client.request("big", {"blksize": "1432", "tsize": "0", "timeout": "5"})
    client.recv()
    for block in range(4):
        client.send(encode_ack(block))
        assert data_blocks([client.recv()]) == [block + 1]
    client.send(encode_error(ErrorCode.UNDEFINED, ""))
    client.close()
    (record,) = server.observer.wait_finished(1)
    assert record.outcome == "probe"
    assert "after 3 blocks" in record.reason  # ACKed 1..3, got 4, aborted


def test_late_abort_is_aborted(server: ServerThread) -> None:
    client = RawClient(server.port)
    client.request("big", {"blksize": "8192"})
    client.recv()
    for block in range(40):  # 320 KiB, past what a probe reads
        client.send(encode_ack(block))
        client.recv()
    client.send(encode_error(ErrorCode.DISK_FULL, "no space"))
    client.close()
    (record,) = server.observer.wait_finished(1)
    assert record.outcome == "aborted"
    assert "ERROR 3 'no space'" in record.reason


def test_silent_probe_is_a_probe(server: ServerThread) -> None:
    client = RawClient(server.port)
    client.request("big", {"tsize": "0"})
    got = client.recv_all(quiet=1.5)
    client.close()
    # the OACK, then one resend per retry (server timeout 0.3 s, 2 retries), then silence
    assert [opcode_of(p) for p in got] == [Opcode.OACK] * 3
    (record,) = server.observer.wait_finished(1)
    assert (record.outcome, record.retransmits) == ("probe", 2)


def test_silent_client_fails_with_reason(server: ServerThread) -> None:
    client = RawClient(server.port)
    client.request("big")
    got = client.recv_all(quiet=1.5)
    client.close()
    assert data_blocks(got) == [1, 1, 1]
    assert parse_error(got[-1]) == (ErrorCode.UNDEFINED, "timed out")
    (record,) = server.observer.wait_finished(1)
    assert record.outcome == "failed"
    assert "after 2 retransmissions" in record.reason and "acknowledged 0 of" in record.reason


def test_foreign_tid_gets_error_5_and_transfer_goes_on(server: ServerThread) -> None:
    client = RawClient(server.port)
    client.request("small")
    first = client.recv()
    assert data_blocks([first]) == [1]
    stranger = RawClient(server.port)
    stranger.peer = client.peer
    stranger.send(encode_ack(1))  # RFC 1350 section 4: wrong source port
    assert parse_error(stranger.recv()) == (ErrorCode.UNKNOWN_TID, "unknown transfer ID")
    stranger.close()
    client.send(encode_ack(1))
    second = client.recv()
    client.send(encode_ack(2))
    third = client.recv()
    client.send(encode_ack(3))
    client.close()
    assert first[4:] + second[4:] + third[4:] == SMALL
    assert data_blocks([second, third]) == [2, 3]
    (record,) = server.observer.wait_finished(1)
    assert (record.outcome, record.sent, record.retransmits) == ("ok", len(SMALL), 0)


def test_lockstep_resend_inside_a_read_ahead_keeps_bytes_exact(server: ServerThread) -> None:
    """A resend in the middle of the blocks read ahead (window 1) leaves every block exact."""
    client = RawClient(server.port)
    client.request("big")
    out, block, held_back = b"", 1, {40, 41, 77}
    while True:
        packet = client.recv()
        assert data_blocks([packet]) == [block & 0xFFFF]
        if block in held_back:
            held_back.discard(block)  # this ACK is "lost": the server's timer resends
            continue
        out += packet[4:]
        client.send(encode_ack(block))
        if len(packet) < 516:
            break
        block += 1
    client.close()
    assert out == BIG
    (record,) = server.observer.wait_finished(1)
    assert (record.outcome, record.retransmits) == ("ok", 3)


def test_stray_error_is_not_answered_and_transfer_goes_on(server: ServerThread) -> None:
    """RFC 1350 section 7: an ERROR from a foreign TID is dropped, never answered."""
    client = RawClient(server.port)
    client.request("small")
    assert data_blocks([client.recv()]) == [1]
    stranger = RawClient(server.port)
    stranger.peer = client.peer
    stranger.send(encode_error(ErrorCode.UNDEFINED, "not yours"))
    assert stranger.recv_all(quiet=0.3) == []
    stranger.close()
    client.send(encode_ack(1))
    # Block 1 may have been resent while the stranger listened (the timer is 0.3 s too):
    # copies of it may come first, then block 2.
    blocks = data_blocks([client.recv()])
    while blocks == [1]:
        blocks = data_blocks([client.recv()])
    assert blocks == [2]
    client.close()


# Reads block 1, ACKs it and exits: a client in a process of its own, since transfers are
# forked from the server and a socket of this process would live on in them.
LEAVING_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"\\0\\1big\\0octet\\0", ("127.0.0.1", int(sys.argv[1])))
data, peer = s.recvfrom(1024)
assert data[:4] == b"\\0\\3\\0\\1", data[:4]
s.sendto(b"\\0\\4\\0\\1", peer)
"""


def test_closed_client_port_ends_the_transfer_without_retransmitting(root: Path) -> None:
    """A client that leaves without ERROR (ICMP port unreachable) frees the transfer at once."""
    with ServerThread(root, timeout=1.0, retries=5) as server:
        # Block 2 (or its first resend, if the client's socket was still open when block 2
        # came) goes to a closed port and the kernel answers port unreachable. Without that
        # answer the transfer would end as failed after 5 retransmissions.
        subprocess.run([sys.executable, "-c", LEAVING_CLIENT, str(server.port)], check=True)
        (record,) = server.observer.wait_finished(1)
        assert record.outcome == "probe"
        assert record.reason == "client port closed (ICMP port unreachable) after 1 blocks"
        assert record.retransmits <= 1


def test_duplicate_acks_do_not_duplicate_windows(root: Path) -> None:
    """RFC 1350's Sorcerer's Apprentice: a copied ACK must not send the next window twice."""
    with ServerThread(root, timeout=5.0) as server:
        duplicate_acks(server)


def duplicate_acks(server: ServerThread) -> None:
    client = RawClient(server.port)
    client.request("big", {"blksize": "512", "windowsize": "4"})
    client.recv()
    client.send(encode_ack(0))
    assert data_blocks(client.recv_all(quiet=0.1)) == [1, 2, 3, 4]
    client.send(encode_ack(4))
    client.send(encode_ack(4))
    client.send(encode_ack(4))
    assert data_blocks(client.recv_all(quiet=0.1)) == [5, 6, 7, 8]
    # RFC 7440: an ACK inside the window restarts right after it
    client.send(encode_ack(6))
    assert data_blocks(client.recv_all(quiet=0.1)) == [7, 8, 9, 10]
    # an ACK for something never sent, or long acknowledged, is ignored
    client.send(encode_ack(500))
    client.send(encode_ack(3))
    assert client.recv_all(quiet=0.1) == []
    # the same ACK once the window is overdue means "nothing arrived": resend at once
    time.sleep(0.15)
    client.send(encode_ack(6))
    assert data_blocks(client.recv_all(quiet=0.1)) == [7, 8, 9, 10]
    client.send(encode_error(ErrorCode.UNDEFINED, ""))
    client.close()
    (record,) = server.observer.wait_finished(1)
    assert record.retransmits == 2 + 4


def test_repeated_rrq_from_same_tid_is_one_transfer(server: ServerThread) -> None:
    client = RawClient(server.port)
    client.request("small")
    client.request("small")
    got = client.recv_all(quiet=0.1)
    assert data_blocks(got) == [1]
    client.send(encode_error(ErrorCode.UNDEFINED, ""))
    client.close()
    server.observer.wait_finished(1)
    assert len(server.observer.started_records) == 1


def test_transfer_keeps_the_file_it_opened(server: ServerThread, root: Path) -> None:
    """A catalog swap (here: the file replaced by rename) never mixes versions."""
    client = RawClient(server.port)
    client.request("small")
    first = client.recv()
    new = root / "small.new"
    new.write_bytes(b"N" * len(SMALL))
    new.rename(root / "small")
    out = first[4:]
    for block in (1, 2):
        client.send(encode_ack(block))
        out += client.recv()[4:]
    client.send(encode_ack(3))
    client.close()
    assert out == SMALL
    assert read_whole(server.port) == b"N" * len(SMALL)


def test_close_cancels_running_transfers(root: Path) -> None:
    with ServerThread(root) as srv:
        client = RawClient(srv.port)
        client.request("big")
        client.recv()
        assert srv.server is not None
        srv.call(srv.server.close(grace=0.2))
        assert parse_error(client.recv()) == (ErrorCode.UNDEFINED, "server shutting down")
        client.close()
        (record,) = srv.observer.wait_finished(1)
        assert (record.outcome, record.reason) == ("aborted", "server shutting down")


@pytest.mark.parametrize("loop", ["c-loop", "python-loop", "forked"])
def test_a_running_transfer_reports_its_bytes_so_far(
    root: Path, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that stops acknowledging halfway sees the server report, while it waits, how
    far the transfer got: at least what was acknowledged, at most a read-ahead past it."""
    if loop == "python-loop":
        monkeypatch.setenv("OVERRIDED_TFTP_NATIVE", "0")
    if loop == "forked":
        monkeypatch.setenv("OVERRIDED_TFTP_LAUNCHER", "0")
    acked = 300  # blocks of 512 bytes, of BIG's 1200
    with ServerThread(root, timeout=5.0, retries=2) as srv:
        client = RawClient(srv.port)
        try:
            client.request("big")
            for block in range(1, acked + 1):
                packet = client.recv()
                assert data_blocks([packet]) == [block]
                client.send(encode_ack(block))
            packet = client.recv()  # block acked + 1, left unacknowledged for a while
            deadline = time.monotonic() + 2.5 * PROGRESS_EVERY
            while time.monotonic() < deadline and not srv.observer.progress_sent:
                time.sleep(0.05)
            reports = list(srv.observer.progress_sent)
            assert reports, "no progress reported while the client paused"
            name, sent = reports[-1]
            assert name == "big"
            assert acked * 512 <= sent < len(BIG), (sent, len(BIG))
            assert sent <= (acked + 1 + 64) * 512  # the read-ahead is a few blocks, not more
            block = acked + 1
            while True:  # the rest, to the end
                client.send(encode_ack(block))
                if len(packet) - 4 < 512:
                    break
                packet = client.recv()
                block += 1
        finally:
            client.close()
        (record,) = srv.observer.wait_finished()
        assert (record.outcome, record.sent) == ("ok", len(BIG))
        assert all(s <= len(BIG) for _, s in srv.observer.progress_sent)
