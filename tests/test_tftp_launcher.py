"""The transfer launcher: transfers start in its warmed-up spares, and survive its failures.

The server hands each transfer to a small launcher process (``overrided/tftp/launcher.py``);
these tests look at the real processes (``/proc``) and break the launcher on purpose: killed,
its spare killed, fed a malformed job. Reads must stay byte-exact throughout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from overrided.served import Transfer
from overrided.tftp import launcher as launcher_module
from overrided.tftp.launcher import SPARES, TransferJob
from overrided.tftp.packets import ErrorCode, Negotiated, encode_error
from tests.test_tftp_protocol import read_whole
from tests.test_tftp_support import RawClient, ServerThread, data_blocks, wait_until

DATA = os.urandom(300 * 1024)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    (tmp_path / "big").write_bytes(DATA)
    with ServerThread(tmp_path, timeout=0.3, retries=2) as srv:
        yield srv


def launcher_pid(srv: ServerThread) -> int:
    """The pid of the server's launcher process (0 if none)."""

    def pid() -> int:
        assert srv.server is not None
        proc = srv.server._launcher._proc
        return proc.pid if proc is not None and proc.poll() is None else 0

    return int(srv.run(pid))


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(x) for x in text.split()]


def parent_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def running_transfer_pid(srv: ServerThread) -> int:
    """The pid of the one running transfer, once the server knows it."""

    def pid() -> int:
        assert srv.server is not None
        (child,) = srv.server.transfers.values()
        return int(child.pid)

    wait_until(lambda: srv.run(pid) > 0)
    return int(srv.run(pid))


def spares(launcher: int) -> list[int]:
    """The launcher's spares, once all are forked."""
    wait_until(lambda: len(children(launcher)) == SPARES)
    return children(launcher)


def test_a_transfer_runs_in_a_spare_the_launcher_forked_ahead(server: ServerThread) -> None:
    launcher = launcher_pid(server)
    assert launcher, "the launcher is not running after start()"
    waiting = spares(launcher)
    client = RawClient(server.port)
    client.request("big")
    assert data_blocks([client.recv()]) == [1]
    # A waiting spare became this transfer, and the server knows it by its pid.
    transfer = running_transfer_pid(server)
    assert transfer in waiting
    assert parent_of(transfer) == launcher
    # A new spare takes its place.
    wait_until(lambda: len(children(launcher)) == SPARES + 1)
    client.send(encode_error(ErrorCode.UNDEFINED, "enough"))
    client.close()
    (record,) = server.observer.wait_finished(1)
    assert record.outcome == "probe"
    assert read_whole(server.port, "big") == DATA


def test_close_stops_a_launched_transfer_then_the_launcher(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(DATA)
    with ServerThread(tmp_path) as srv:
        launcher = launcher_pid(srv)
        waiting = spares(launcher)
        client = RawClient(srv.port)
        client.request("big")
        client.recv()
        transfer = running_transfer_pid(srv)
        assert parent_of(transfer) == launcher
        waiting = [p for p in children(launcher) if p != transfer] + waiting
        assert srv.server is not None
        srv.call(srv.server.close(grace=0.2))
        # Stopped through its pidfd: it tells the client, and reports why.
        assert client.recv() == encode_error(ErrorCode.UNDEFINED, "server shutting down")
        client.close()
        (record,) = srv.observer.wait_finished(1)
        assert (record.outcome, record.reason) == ("aborted", "server shutting down")
        wait_until(lambda: not alive(launcher) and not any(alive(p) for p in waiting))


def test_transfers_go_on_when_the_launcher_is_killed(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher_module, "RESTART_AFTER", 0.0)
    first = launcher_pid(server)
    orphans = spares(first)
    os.kill(first, signal.SIGKILL)
    # The server sees it exit and closes the channel: the spares stop waiting on it.
    wait_until(lambda: not any(alive(p) for p in [first, *orphans]))
    # Meanwhile the server forks transfers itself, and starts a new launcher.
    assert read_whole(server.port, "big") == DATA
    assert read_whole(server.port, "big") == DATA
    wait_until(lambda: launcher_pid(server) not in (0, first))
    assert server.server is not None
    assert server.call(server.server._launcher.wait_ready(10.0))
    new = launcher_pid(server)
    client = RawClient(server.port)
    client.request("big")
    client.recv()
    assert parent_of(running_transfer_pid(server)) == new
    client.send(encode_error(ErrorCode.UNDEFINED, "enough"))
    client.close()
    records = server.observer.wait_finished(3)
    assert [r.outcome for r in records] == ["ok", "ok", "probe"]
    assert all(r.sent == len(DATA) for r in records[:2])


def test_a_killed_spare_is_replaced(server: ServerThread) -> None:
    launcher = launcher_pid(server)
    killed = spares(launcher)[0]
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: len([p for p in children(launcher) if alive(p) and p != killed]) == SPARES)
    assert read_whole(server.port, "big") == DATA
    assert launcher_pid(server) == launcher


def test_a_malformed_job_is_refused_and_the_next_is_served(server: ServerThread) -> None:
    assert server.server is not None
    launcher = launcher_pid(server)
    waiting = spares(launcher)
    channel = server.server._launcher._channel
    assert channel is not None
    # What a broken server might send: a job without its descriptors, not even JSON, fields
    # of the wrong kind.
    socket.send_fds(channel, [json.dumps({"id": 999, "peer": []}).encode()], [])
    socket.send_fds(channel, [b"\xff not json"], [])
    job = TransferJob(
        ("127.0.0.1", 9), "octet", 1, Negotiated(), Transfer("tftp", "127.0.0.1:9", "x"), 1, 1, 1
    ).to_dict()
    rfd, wfd = os.pipe()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, open(os.devnull) as null:
        fds = [sock.fileno(), null.fileno(), wfd]
        socket.send_fds(channel, [json.dumps({**job, "id": 998, "oack": []}).encode()], fds)
    os.close(wfd)
    with open(rfd, "rb") as result:
        assert result.read() == b""  # refused: its result pipe closes without a result
    # The same spare refuses both, then takes the next real transfer.
    client = RawClient(server.port)
    client.request("big")
    assert data_blocks([client.recv()]) == [1]
    transfer = running_transfer_pid(server)
    assert transfer in waiting
    # No spare died of the malformed jobs.
    assert all(alive(p) for p in waiting if p != transfer)
    client.send(encode_error(ErrorCode.UNDEFINED, "enough"))
    client.close()
    assert read_whole(server.port, "big") == DATA
    assert launcher_pid(server) == launcher


def test_without_the_launcher_the_server_forks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERRIDED_TFTP_LAUNCHER", "0")
    (tmp_path / "big").write_bytes(DATA)
    with ServerThread(tmp_path) as srv:
        assert launcher_pid(srv) == 0
        client = RawClient(srv.port)
        client.request("big")
        client.recv()
        assert parent_of(running_transfer_pid(srv)) == os.getpid()
        client.send(encode_error(ErrorCode.UNDEFINED, "enough"))
        client.close()
        assert read_whole(srv.port, "big") == DATA
