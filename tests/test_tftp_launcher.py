"""The transfer launcher: transfers start in its warmed-up spares, and survive its failures.

The server hands each transfer to a small launcher process (``overrided/tftp/launcher.py``)
with the descriptors of its socket, its result pipe and its view's files, and the view's table
of pieces; these tests look at the real processes (``/proc``) and break the launcher on
purpose: killed, its spare killed, fed malformed jobs (bad fields, a bad table, the wrong
number of descriptors). Reads must stay byte-exact throughout, of files and of views of many
pieces, in spares and in processes the server forks itself.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from overrided.served import TABLE_ROW, Transfer, View
from overrided.tftp import launcher as launcher_module
from overrided.tftp.launcher import SPARES, TransferJob, job_message, take_job
from overrided.tftp.packets import ErrorCode, Negotiated, encode_error
from tests.support.tftp import (
    RawClient,
    ServerThread,
    ViewNamespace,
    data_blocks,
    pieced_view,
    read_whole,
    wait_until,
)

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
        ("127.0.0.1", 9), "octet", 0, Negotiated(), Transfer("tftp", "127.0.0.1:9", "x"), 1, 1, 1
    ).to_dict()
    rfd, wfd = os.pipe()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        message = {**job, "id": 998, "oack": [], "fds": 0, "table": ""}
        socket.send_fds(channel, [json.dumps(message).encode()], [sock.fileno(), wfd])
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


# -- views: what a job carries ----------------------------------------------------------------


def a_job(size: int) -> TransferJob:
    record = Transfer("tftp", "127.0.0.1:9", "v")
    return TransferJob(("127.0.0.1", 9), "octet", size, Negotiated(), record, 1.0, 1, 1.0)


def test_a_job_carries_a_view_of_many_pieces(tmp_path: Path) -> None:
    """The socket, the pipe, then the view's files (literal bytes in a memory file), and the
    table over them: the receiving side rebuilds the same view."""
    view = pieced_view(tmp_path, [1000, 10, 2000, 1, 3000, 20])
    opened = view.open().handoff()
    assert len(opened.fds) == 3  # two files and the memory file of the literal pieces
    message = json.loads(job_message(5, a_job(view.size), opened))
    assert (message["id"], message["fds"]) == (5, 3)
    sent = [os.dup(fd) for fd in opened.fds]  # as the kernel passes them: new numbers
    opened.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        job, sock_fd, wfd, received = take_job(message, [sock.fileno(), 99, *sent])
        with received:
            assert (sock_fd, wfd, received.fds) == (sock.fileno(), 99, sent)
            assert received.read_at(0, view.size) == view.read()
            assert job.size == view.size


def good_message() -> dict[str, Any]:
    """A job for a 100-byte view, one row over the one file sent after the socket and pipe."""
    table = base64.b64encode(TABLE_ROW.pack(0, 100, 0, 0)).decode()
    return {**a_job(100).to_dict(), "id": 997, "fds": 1, "table": table}


def rows(*rows: tuple[int, int, int, int]) -> str:
    return base64.b64encode(b"".join(TABLE_ROW.pack(*r) for r in rows)).decode()


# (case, change to a good job's message, view descriptors sent with it)
MALFORMED_VIEWS: list[tuple[str, Callable[[dict[str, Any]], None], int]] = [
    ("fewer descriptors than it says", lambda m: None, 0),
    ("more descriptors than it says", lambda m: None, 2),
    ("a count of the wrong kind", lambda m: m.update(fds="1"), 1),
    ("a count that is true, not 1", lambda m: m.update(fds=True), 1),
    ("no table", lambda m: m.pop("table"), 1),
    ("a table of the wrong kind", lambda m: m.update(table=[0, 100, 0, 0]), 1),
    ("a table that is not base64", lambda m: m.update(table="!!"), 1),
    ("a table of part of a row", lambda m: m.update(table=base64.b64encode(b"x" * 33).decode()), 1),
    ("a table with a gap", lambda m: m.update(table=rows((0, 50, 0, 0), (51, 49, 0, 0))), 1),
    ("a table not from 0", lambda m: m.update(table=rows((1, 100, 0, 0))), 1),
    ("a table with an empty row", lambda m: m.update(table=rows((0, 0, 0, 0), (0, 100, 0, 0))), 1),
    ("a table naming a file not sent", lambda m: m.update(table=rows((0, 100, 1, 0))), 1),
    ("a table shorter than the transfer", lambda m: m.update(table=rows((0, 99, 0, 0))), 1),
    ("a table longer than the transfer", lambda m: m.update(table=rows((0, 101, 0, 0))), 1),
    ("a negative file offset", lambda m: m.update(table=rows((0, 100, 0, -1))), 1),
]


@pytest.mark.parametrize(
    ("change", "count"), [m[1:] for m in MALFORMED_VIEWS], ids=[m[0] for m in MALFORMED_VIEWS]
)
def test_a_job_with_a_bad_view_is_refused_and_the_next_is_served(
    server: ServerThread,
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
    count: int,
) -> None:
    assert server.server is not None
    launcher = launcher_pid(server)
    waiting = spares(launcher)
    channel = server.server._launcher._channel
    assert channel is not None
    (tmp_path / "view").write_bytes(os.urandom(100))
    message = good_message()
    change(message)
    rfd, wfd = os.pipe()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        files = [os.open(tmp_path / "view", os.O_RDONLY) for _ in range(count)]
        try:
            fds = [sock.fileno(), wfd, *files]
            socket.send_fds(channel, [json.dumps(message).encode()], fds)
        finally:
            for fd in files:
                os.close(fd)
    os.close(wfd)
    with open(rfd, "rb") as result:
        assert result.read() == b""  # refused: its result pipe closes without a result
    # No spare died of it; one of them takes the next real transfer.
    assert all(alive(p) for p in waiting)
    assert read_whole(server.port, "big") == DATA
    assert launcher_pid(server) == launcher


def test_a_view_of_many_pieces_runs_in_a_spare(tmp_path: Path) -> None:
    view = pieced_view(tmp_path, [300000, 7, 1, 200000, 513, 40000, 9], seed=3)
    with ServerThread(ViewNamespace({"v": view}), timeout=0.3, retries=2) as srv:
        launcher = launcher_pid(srv)
        spares(launcher)
        client = RawClient(srv.port)
        client.request("v")
        assert data_blocks([client.recv()]) == [1]
        assert parent_of(running_transfer_pid(srv)) == launcher
        client.send(encode_error(ErrorCode.UNDEFINED, "enough"))
        client.close()
        assert read_whole(srv.port, "v", {"blksize": "1432"}) == view.read()
        records = srv.observer.wait_finished(2)
    assert [r.outcome for r in records] == ["probe", "ok"]


def fd_links(pid: int) -> set[str]:
    """What the descriptors of process ``pid`` refer to (paths, ``pipe:[inode]``, ...)."""
    links = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            links.add(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
    return links


def test_a_forked_transfer_holds_no_other_transfers_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forked by the server, a transfer keeps its own socket, pipe and view's files, and none
    of what the server holds for the transfers before it (their pipes and twin sockets; their
    views' files the server closed once each was forked)."""
    monkeypatch.setenv("OVERRIDED_TFTP_LAUNCHER", "0")
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    views: dict[str, View] = {
        "a": pieced_view(a, [300000, 9, 300000], seed=1),
        "b": pieced_view(b, [300000, 9, 300000], seed=2),
    }
    with ServerThread(ViewNamespace(views), timeout=0.5, retries=10) as srv:
        first = RawClient(srv.port)
        first.request("a")
        first.recv()
        first_pid = running_transfer_pid(srv)
        assert parent_of(first_pid) == os.getpid()

        def held_for_first() -> set[str]:
            assert srv.server is not None
            (child,) = srv.server.transfers.values()
            return {os.readlink(f"/proc/self/fd/{fd}") for fd in (child.fd, child.twin.fileno())}

        server_side = srv.run(held_for_first)
        second = RawClient(srv.port)
        second.request("b")
        second.recv()

        def second_pid() -> int:
            assert srv.server is not None
            return int(srv.server.transfers[second.sock.getsockname()].pid)

        wait_until(lambda: srv.run(second_pid) > 0)
        links = fd_links(srv.run(second_pid))
        assert links.isdisjoint(server_side)
        assert not any(link.startswith(str(a)) for link in links)
        assert {str(b / "view2-a"), str(b / "view2-b")} <= links
        assert any(link.startswith("/memfd:overrided-view") for link in links)
        for client in (first, second):
            client.send(encode_error(ErrorCode.UNDEFINED, "enough"))
            client.close()
        records = srv.observer.wait_finished(2)
    assert [r.outcome for r in records] == ["probe", "probe"]
