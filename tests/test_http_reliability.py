"""No bad input stops the service: the upload and API paths against hostile or broken clients.

Most tests drive the real ``overrided serve`` on loopback (``tests/support/serve.py``) with raw
sockets and ``http.client``: tarballs naming a file twice, build names with a newline, build
folders that are links, clients that go away or stall mid-request, malformed request lines. Each
checks the answer (JSON, 4xx), that nothing is written outside the builds folder, that no
temporary file stays behind, and that the log says what happened in one line.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import tarfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from overrided.http import make_app
from overrided.http.errors import RequestError
from overrided.http.uploads import check_artifact_path, check_build_name, leftovers
from overrided.served import Entry
from overrided.state import BoardInfo, BuildInfo, EventHub, IndexResult, Journal
from tests.support.fits import SampleFit, sample_fit
from tests.support.serve import HOST, Served
from tests.support.serve import served_with_board_a as served

TAR = "application/x-tar"


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory) -> SampleFit:
    """One mkimage FIT that boots ``board-a``."""
    return sample_fit(tmp_path_factory.mktemp("fit"))


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Served]:
    with served(tmp_path) as s:
        yield s


class Answer:
    """One HTTP answer: status, content type, body."""

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body

    def error(self) -> str:
        """The ``error`` of a JSON error body (fails on anything else, text/plain included)."""
        assert self.content_type.startswith("application/json"), (self.status, self.body)
        message: str = json.loads(self.body)["error"]
        return message


def call(
    srv: Served,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    *,
    token: bool = True,
) -> Answer:
    """One request with ``http.client`` (which leaves percent-escapes such as ``%0A`` alone)."""
    conn = http.client.HTTPConnection(HOST, srv.http_port, timeout=60)
    try:
        sent = {**(headers or {})}
        if token:
            sent["Authorization"] = f"Bearer {srv.token}"
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        return Answer(resp.status, resp.getheader("Content-Type", ""), resp.read())
    finally:
        conn.close()


def make_tar(members: list[tuple[str, bytes]]) -> bytes:
    """A tarball of regular files, in the order given (duplicates kept)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def dotfiles(folder: Path) -> list[str]:
    """Hidden files below ``folder`` (temporary upload files and backups), links not followed."""
    found = []
    for _, dirnames, filenames in os.walk(folder):
        found += [n for n in dirnames + filenames if n.startswith(".")]
    return sorted(found)


def files_below(folder: Path) -> list[str]:
    """Every path below ``folder``, relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def raw_request(port: int, data: bytes) -> socket.socket:
    """A connected socket that has sent ``data`` (the caller closes it)."""
    s = socket.create_connection((HOST, port), timeout=10)
    s.sendall(data)
    return s


def read_until_closed(s: socket.socket, limit: float) -> bytes:
    """Everything the server sends until it closes the connection; fails after ``limit`` s."""
    deadline = time.monotonic() + limit
    got = b""
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
    raise AssertionError(f"connection still open after {limit} s; got {got[:200]!r}")


def read_response(s: socket.socket, limit: float) -> tuple[bytes, bytes]:
    """One HTTP answer read off ``s`` (head, body by its Content-Length) within ``limit`` s."""
    s.settimeout(limit)
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {got!r}"
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {got!r}"
        body += chunk
    return head, body


def upload_head(srv: Served, path: str, length: int, kind: str | None = None) -> bytes:
    """The request head of an upload of ``length`` bytes, with the token."""
    lines = [
        f"PUT {path} HTTP/1.1",
        "Host: x",
        f"Content-Length: {length}",
        f"Authorization: Bearer {srv.token}",
    ]
    if kind:
        lines.append(f"Content-Type: {kind}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- 5: a tarball naming a path twice; no temporary file on any path -----------------------------


@pytest.mark.parametrize(
    ("names", "member"),
    [
        (["image.fit", "image.fit"], "'image.fit'"),
        (["a.dtb", "./a.dtb"], "'./a.dtb'"),
        (["./v/b.dtb", "v//b.dtb"], "'v//b.dtb'"),
    ],
    ids=["same-name", "dot-slash", "double-slash"],
)
def test_tar_naming_a_path_twice_is_refused(
    srv: Served, fit: SampleFit, names: list[str], member: str
) -> None:
    data = fit.fit.read_bytes()
    for _ in range(3):  # again and again: nothing piles up
        a = call(
            srv, "PUT", "/builds/k1", make_tar([(n, data) for n in names]), {"Content-Type": TAR}
        )
        assert a.status == 400, a.body
        assert member in a.error() and "a second time" in a.error()
    assert not (srv.builds / "k1").exists()
    assert dotfiles(srv.builds) == []


def test_tar_with_a_file_and_a_folder_of_one_name_is_refused(srv: Served, fit: SampleFit) -> None:
    tar = make_tar([("image.fit", fit.fit.read_bytes()), ("x.dtb", b"1"), ("x.dtb/y.dtb", b"2")])
    a = call(srv, "PUT", "/builds/k1", tar, {"Content-Type": TAR})
    assert a.status == 400, a.body
    assert "'x.dtb/y.dtb'" in a.error()
    assert not (srv.builds / "k1").exists() and dotfiles(srv.builds) == []


def test_multipart_naming_a_path_twice_is_refused(srv: Served, fit: SampleFit) -> None:
    boundary = "b0undary"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + fit.fit.read_bytes()
        + b"\r\n"
        for i, name in enumerate(["image.fit", "image.fit"])
    )
    body = parts + f"--{boundary}--\r\n".encode()
    a = call(
        srv,
        "POST",
        "/builds/k1",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert a.status == 400 and "a second time" in a.error()
    assert dotfiles(srv.builds) == []


@pytest.mark.parametrize("kind", ["artifact", "tar", "multipart"])
def test_client_gone_mid_upload_leaves_no_temporary_file(
    srv: Served, fit: SampleFit, kind: str
) -> None:
    data = fit.fit.read_bytes()
    if kind == "artifact":
        head, body = upload_head(srv, "/builds/k1/image.fit", len(data)), data
    elif kind == "tar":
        body = make_tar([("image.fit", data)])
        head = upload_head(srv, "/builds/k1", len(body), TAR)
    else:
        body = (
            b'--x\r\nContent-Disposition: form-data; name="f"; filename="image.fit"\r\n\r\n'
            + data
            + b"\r\n--x--\r\n"
        )
        head = upload_head(srv, "/builds/k1", len(body), "multipart/form-data; boundary=x")
        head = head.replace(b"PUT ", b"POST ", 1)
    with raw_request(srv.http_port, head + body[: len(body) // 2]):
        time.sleep(0.3)  # the body has started arriving, then the client is gone
    srv.wait_for(lambda: " went away " in srv.log(), what="the one-line warning")
    srv.wait_for(lambda: not dotfiles(srv.builds), what="no temporary file")
    assert not (srv.builds / "k1").exists()


def test_leftover_temporary_files_are_removed_at_start(tmp_path: Path, fit: SampleFit) -> None:
    builds = tmp_path / "kernel-builds"
    outside = tmp_path / "elsewhere"
    (builds / "k1" / "v").mkdir(parents=True)
    outside.mkdir()
    (builds / "k1" / "image.fit").write_bytes(fit.fit.read_bytes())
    crashed = [
        builds / ".upload-k1-0123456789ab-image.fit",
        builds / ".upload-k1-0123456789ab-upload.tar",
        builds / "k1" / ".previous-0123456789ab-image.fit",
        builds / "k1" / "v" / ".previous-0123456789ab-x.dtb",
    ]
    for p in crashed:
        p.write_bytes(b"left by a crash")
    kept = [builds / "k1" / ".config", outside / ".previous-0123456789ab-image.fit"]
    for p in kept:
        p.write_bytes(b"not ours")
    (builds / "linked").symlink_to(outside, target_is_directory=True)
    assert sorted(leftovers(builds)) == sorted(crashed)  # links are not followed
    with served(tmp_path) as srv:
        assert [p for p in crashed if p.exists()] == []
        assert all(p.exists() for p in kept)
        assert "removed 4 temporary upload files left by an earlier run" in srv.log()


# --- 6: names with a final newline ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["k1\n", "k1\r", "k1 ", "", ".k", "a..b", "x" * 129, "k/1", "k1\x00"]
)
def test_bad_build_names(name: str) -> None:
    with pytest.raises(RequestError) as err:
        check_build_name(name)
    assert err.value.status == 400


@pytest.mark.parametrize(
    "path", ["Image.\n", "image.fit\n", "v\n/x.dtb", "x.dtb\n", "Image.gz\n", "v/.x.dtb"]
)
def test_bad_artifact_paths(path: str) -> None:
    with pytest.raises(RequestError):
        check_artifact_path(path)


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("PUT", "/builds/nl%0A/image.fit", None),
        ("PUT", "/builds/nl%0A", TAR),
        ("DELETE", "/api/builds/nl%0A", None),
    ],
)
def test_names_ending_in_a_newline_are_refused(
    srv: Served, fit: SampleFit, method: str, path: str, kind: str | None
) -> None:
    data = fit.fit.read_bytes()
    body = make_tar([("image.fit", data)]) if kind else data if method == "PUT" else b""
    a = call(srv, method, path, body, {"Content-Type": kind} if kind else {})
    assert a.status == 400, a.body
    assert "not allowed" in a.error()
    assert files_below(srv.builds) == []


def test_tar_member_ending_in_a_newline_is_refused(srv: Served, fit: SampleFit) -> None:
    # (In a URL, the route's ``{path:.+}`` never matches a newline: 404 before any check.)
    tar = make_tar([("image.fit", fit.fit.read_bytes()), ("Image.\n", b"kernel")])
    a = call(srv, "PUT", "/builds/k1", tar, {"Content-Type": TAR})
    assert a.status == 400, a.body
    assert "'Image.\\n' is not allowed" in a.error()
    assert files_below(srv.builds) == []


# --- 7: build folders that are links --------------------------------------------------------------


@pytest.fixture
def linked(tmp_path: Path, fit: SampleFit) -> Iterator[tuple[Served, Path]]:
    """``kernel-builds/mainline`` links to a build folder outside (as the README suggests)."""
    outside = tmp_path / "linux" / "build-arm64"
    (outside / "v").mkdir(parents=True)
    (outside / "image.fit").write_bytes(fit.fit.read_bytes())
    (tmp_path / "kernel-builds").mkdir()
    (tmp_path / "kernel-builds" / "mainline").symlink_to(outside, target_is_directory=True)
    with served(tmp_path) as srv:
        srv.wait_for(lambda: srv.api("/api/boards/board-a")["build"] == "mainline")
        yield srv, outside


def test_upload_into_a_linked_build_is_refused(linked: tuple[Served, Path], fit: SampleFit) -> None:
    srv, outside = linked
    before = files_below(outside)
    data = fit.fit.read_bytes()
    for path, body, headers in [
        ("/builds/mainline/image.fit", b"new bytes", {}),
        ("/builds/mainline/v/new.dtb", b"dtb", {}),
        ("/builds/mainline", make_tar([("image.fit", data)]), {"Content-Type": TAR}),
    ]:
        a = call(srv, "PUT", path, body, headers)
        assert a.status == 409, a.body
        assert a.error() == (
            "build 'mainline' is a link to a folder outside the builds folder; "
            "upload to a new name or copy into it"
        )
    assert files_below(outside) == before
    assert (outside / "image.fit").read_bytes() == data
    assert dotfiles(srv.builds) == dotfiles(outside) == []


def test_upload_through_a_link_inside_a_build_is_refused(
    tmp_path: Path, srv: Served, fit: SampleFit
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (srv.builds / "k1").mkdir()
    (srv.builds / "k1" / "v").symlink_to(outside, target_is_directory=True)
    (srv.builds / "k1" / "w").symlink_to(outside, target_is_directory=True)
    tar = make_tar([("image.fit", fit.fit.read_bytes()), ("v/x.dtb", b"dtb")])
    a = call(srv, "PUT", "/builds/k1", tar, {"Content-Type": TAR})
    assert a.status == 409, a.body
    assert "v is a link" in a.error()
    a = call(srv, "PUT", "/builds/k1/w/deeper/y.dtb", b"dtb")
    assert a.status == 409 and "w is a link" in a.error()
    assert files_below(outside) == []
    assert not (srv.builds / "k1" / "image.fit").exists()
    assert dotfiles(srv.builds) == []


def test_upload_where_a_file_stands_in_the_way_is_refused(srv: Served) -> None:
    (srv.builds / "k1").mkdir()
    (srv.builds / "k1" / "x.dtb").write_bytes(b"dtb")
    (srv.builds / "k1" / "v.dtb").mkdir()
    (srv.builds / "plain.dtb").write_bytes(b"a file, not a build folder")
    for path, why in [
        ("/builds/k1/x.dtb/y.dtb", "x.dtb is a file"),
        ("/builds/k1/v.dtb", "v.dtb is a folder"),
        ("/builds/plain.dtb/image.fit", "plain.dtb is a file"),
    ]:
        a = call(srv, "PUT", path, b"dtb")
        assert a.status == 409, (path, a.body)
        assert why in a.error()
    assert dotfiles(srv.builds) == []


def test_delete_of_a_linked_build_removes_only_the_link(
    linked: tuple[Served, Path], fit: SampleFit
) -> None:
    srv, outside = linked
    before = files_below(outside)
    a = call(srv, "DELETE", "/api/builds/mainline")
    assert a.status == 200, a.body
    assert json.loads(a.body) == {"removed": "mainline"}
    assert not (srv.builds / "mainline").is_symlink()
    assert files_below(outside) == before  # the target's files are untouched
    assert srv.api("/api/boards/board-a")["build"] is None
    assert call(srv, "DELETE", "/api/builds/mainline").status == 404


def test_delete_of_a_dangling_link_removes_it(srv: Served, tmp_path: Path) -> None:
    (srv.builds / "gone").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    a = call(srv, "DELETE", "/api/builds/gone")
    assert a.status == 200, a.body
    assert not (srv.builds / "gone").is_symlink()


# --- 9: one-line logs for client faults; stalled clients are dropped ------------------------------

MALFORMED = [
    b"GET / HTTP/1.1 x\r\n\r\n",  # bad status line
    b"GET /\x01 HTTP/1.1\r\n\r\n",  # control character in the path
    b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",  # bad header name
]


def test_client_faults_log_one_line(srv: Served, fit: SampleFit) -> None:
    for raw in MALFORMED:
        with raw_request(srv.http_port, raw) as s:
            assert read_until_closed(s, 10).startswith(b"HTTP/1.")
    data = fit.fit.read_bytes()
    with raw_request(
        srv.http_port, upload_head(srv, "/builds/k1/image.fit", len(data)) + data[:99]
    ):
        time.sleep(0.3)
    srv.wait_for(lambda: " went away " in srv.log(), what="the client-gone line")
    log = srv.log()
    assert "Traceback" not in log and " ERROR " not in log, log
    bad = [line for line in log.splitlines() if "malformed HTTP request from 127.0.0.1" in line]
    assert len(bad) == len(MALFORMED), log
    assert any("Bad status line" in line for line in bad)
    gone = [line for line in log.splitlines() if " went away " in line]
    assert len(gone) == 1 and " WARNING " in gone[0] and "after 99 of" in gone[0], log


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[Served]:
    """The real server with a 1 s HTTP timeout."""
    with served(tmp_path, "--http-timeout", "1") as s:
        yield s


def test_stalled_headers_are_dropped(quick: Served) -> None:
    started = time.monotonic()
    with raw_request(quick.http_port, b"PUT /builds/k1/image.fit HTTP/1.1\r\nHost:") as s:
        assert read_until_closed(s, 8) == b""
    assert time.monotonic() - started < 8


def test_stalled_body_is_dropped_with_408(quick: Served, fit: SampleFit) -> None:
    data = fit.fit.read_bytes()
    head = upload_head(quick, "/builds/k1/image.fit", len(data))
    started = time.monotonic()
    with raw_request(quick.http_port, head + data[:1000]) as s:
        answer, body = read_response(s, 8)
    assert time.monotonic() - started < 8
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"Connection: close" in answer
    assert "no body bytes for 1 s after 1000 of" in json.loads(body)["error"]
    quick.wait_for(lambda: not dotfiles(quick.builds), what="no temporary file")
    assert not (quick.builds / "k1").exists()
    assert "Traceback" not in quick.log()


def test_slow_upload_that_makes_progress_completes(quick: Served, fit: SampleFit) -> None:
    data = fit.fit.read_bytes()
    pieces = [data[i : i + len(data) // 5 + 1] for i in range(0, len(data), len(data) // 5 + 1)]
    started = time.monotonic()
    with raw_request(quick.http_port, upload_head(quick, "/builds/k1/image.fit", len(data))) as s:
        for piece in pieces:
            time.sleep(0.5)  # half the timeout between pieces; more than it in all
            s.sendall(piece)
        answer, _ = read_response(s, 30)
    assert time.monotonic() - started > 2
    assert answer.startswith(b"HTTP/1.1 201"), answer
    assert (quick.builds / "k1" / "image.fit").read_bytes() == data


# --- every error is JSON ----------------------------------------------------------------------


class BrokenService:
    """A service whose every action fails with an unexpected error (a bug, a full disk)."""

    def __init__(self, root: Path) -> None:
        self.builds_dir = root / "kernel-builds"
        (self.builds_dir / "k1").mkdir(parents=True)
        self.events = EventHub()
        self.journal = Journal()

    def lookup(self, name: str, *, client: str | None = None) -> Entry:
        raise RuntimeError("lookup broke")

    def boards(self) -> list[BoardInfo]:
        raise RuntimeError("boards broke")

    def builds(self) -> list[BuildInfo]:
        raise RuntimeError("builds broke")

    async def index_now(self, build: str) -> IndexResult:
        raise OSError(28, "No space left on device")

    async def remove_build(self, build: str) -> None:
        raise RuntimeError("remove broke")

    def started(self, transfer: object) -> None:
        pass

    def finished(self, transfer: object) -> None:
        pass


@pytest.fixture
async def broken(tmp_path: Path) -> AsyncIterator[tuple[str, BrokenService]]:
    service = BrokenService(tmp_path)
    runner = web.AppRunner(make_app(service, token="t"), shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    yield f"{HOST}:{runner.addresses[0][1]}", service
    await runner.cleanup()


@pytest.mark.parametrize(
    ("method", "path", "status", "why"),
    [
        ("PUT", "/builds/k1/image.fit", 507, "No space left on device"),
        ("DELETE", "/api/builds/k1", 500, "internal error"),
        ("GET", "/api/builds", 500, "internal error"),
        ("GET", "/api/boards/x", 500, "internal error"),
    ],
)
async def test_unexpected_errors_are_json(
    broken: tuple[str, BrokenService], method: str, path: str, status: int, why: str
) -> None:
    address, service = broken
    async with (
        aiohttp.ClientSession() as http_client,
        http_client.request(
            method, f"http://{address}{path}", data=b"x", headers={"Authorization": "Bearer t"}
        ) as resp,
    ):
        assert resp.status == status
        assert resp.content_type == "application/json"
        assert why in (await resp.json())["error"]
    assert dotfiles(service.builds_dir) == []
