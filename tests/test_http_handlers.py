"""Handlers on a real aiohttp server on loopback, driven by real curl and aiohttp's client.

The service behind them is ``FolderService`` below, a small stand-in for ``overrided.service``
(a test double, used only here): it serves files of a folder and "indexes" a build by checking
that its image.fit starts with the FDT magic. Tests against the real ``overrided serve`` are in
``test_http_functional.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import socket
import subprocess
import tarfile
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import aiohttp
import pytest
from aiohttp import web
from openapi_spec_validator import validate

from overrided.http import make_app
from overrided.served import Entry, NotServed, Piece, Transfer, View
from overrided.state import BoardInfo, BuildInfo, Event, EventHub, IndexResult, Journal

TOKEN = "t0ken-for-tests"
FDT_MAGIC = b"\xd0\x0d\xfe\xed"
LIMIT = 1 << 20


class FolderService:
    """Test double of ``overrided.state.Service``: one board, builds judged by FDT magic."""

    def __init__(self, root: Path) -> None:
        self.builds_dir = root / "kernel-builds"
        self.builds_dir.mkdir(parents=True)
        self.events = EventHub()
        self.journal = Journal()
        self.current: str | None = None
        self.entries: dict[str, Entry] = {}
        self.clients: list[str | None] = []  # the client address of each lookup

    def lookup(self, name: str, *, client: str | None = None) -> Entry:
        self.clients.append(client)
        if name not in self.entries:
            raise NotServed(f"{name!r} is not in the catalog")
        return self.entries[name]

    def boards(self) -> list[BoardInfo]:
        return [
            BoardInfo(
                name="rock3a",
                hostname="rock3a",
                build=self.current,
                configuration="conf-1" if self.current else None,
                reason="compatible radxa,rock3a" if self.current else "no build yet",
                served={"barebox": ["none-devboot-rock3a"]},
            ),
            BoardInfo(name="other", hostname="other", reason="no configuration for acme,other"),
        ]

    def builds(self) -> list[BuildInfo]:
        return [BuildInfo(name=p.name) for p in sorted(self.builds_dir.iterdir()) if p.is_dir()]

    async def index_now(self, build: str) -> IndexResult:
        fit = self.builds_dir / build / "image.fit"
        if fit.exists() and not fit.read_bytes().startswith(FDT_MAGIC):
            info = BuildInfo(name=build, error="image.fit: offset 0: bad FDT magic")
            self.events.publish(Event(kind="build-failed", build=build))
            return IndexResult(build=info, boards=self.boards())
        if fit.exists():
            self.current = build
            self.entries["fit-rock3a"] = Entry(
                "fit-rock3a", View.of_file(fit, fit.stat().st_size), "rock3a"
            )
        self.events.publish(Event(kind="build-indexed", build=build, data={"duration": 0.01}))
        self.events.publish(
            Event(kind="board-rendered", board="rock3a", build=build, data={"duration": 0.02})
        )
        info = BuildInfo(name=build, release="6.1.0", indexed_at=datetime.now(UTC))
        return IndexResult(build=info, boards=self.boards())

    async def remove_build(self, build: str) -> None:
        for p in sorted((self.builds_dir / build).rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        (self.builds_dir / build).rmdir()

    def started(self, transfer: Transfer) -> None:
        self.events.publish(Event.of_transfer(transfer, started=True))

    def finished(self, transfer: Transfer) -> None:
        self.journal.add(transfer)
        self.events.publish(Event.of_transfer(transfer))


class Server:
    def __init__(self, service: FolderService, url: str, tmp: Path) -> None:
        self.service = service
        self.url = url
        self.tmp = tmp

    def curl(
        self, *args: str | Path, token: str | None = TOKEN
    ) -> subprocess.CompletedProcess[str]:
        auth = ["-H", f"Authorization: Bearer {token}"] if token else []
        return subprocess.run(
            ["curl", "-sS", "--max-time", "30", *auth, *map(str, args)],
            capture_output=True,
            text=True,
            errors="surrogateescape",
            timeout=60,
        )

    def status(self, *args: str | Path, token: str | None = TOKEN) -> tuple[int, str]:
        r = self.curl("-o", "-", "-w", "\n%{http_code}", *args, token=token)
        body, _, code = r.stdout.rpartition("\n")
        return int(code), body


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    service = FolderService(tmp_path)
    app = make_app(service, token=TOKEN, max_upload=LIMIT)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield Server(service, f"http://127.0.0.1:{port}", tmp_path)
    await runner.cleanup()


def fit_bytes(tag: bytes, size: int = 4096) -> bytes:
    return (FDT_MAGIC + tag).ljust(size, b"\x00")


async def upload(
    server: Server, data: bytes, name: str = "image.fit", build: str = "k1", *extra: str
) -> tuple[int, str]:
    src = server.tmp / f"upload-{len(data)}"
    src.write_bytes(data)
    return await asyncio.to_thread(
        server.status, "-T", src, *extra, f"{server.url}/builds/{build}/{name}"
    )


def dotfiles(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


async def test_curl_upload_answers_with_boards_and_serves(server: Server) -> None:
    code, body = await upload(server, fit_bytes(b"one"))
    assert code == 201, body
    assert "board rock3a: boots k1 via none-devboot-rock3a" in body
    assert "not on this build: other: no configuration for acme,other" in body
    out = server.tmp / "got"
    await asyncio.to_thread(server.curl, "--fail", "-o", out, f"{server.url}/fit-rock3a")
    assert out.read_bytes() == fit_bytes(b"one")
    assert dotfiles(server.service.builds_dir) == []


async def test_upload_json_answer(server: Server) -> None:
    code, body = await upload(
        server, fit_bytes(b"j"), "image.fit", "k1", "-H", "Accept: application/json"
    )
    assert code == 201
    answer = json.loads(body)
    assert answer["on_build"] == ["rock3a: none-devboot-rock3a"]
    assert answer["result"]["build"]["name"] == "k1"


@pytest.mark.parametrize(("token", "why"), [(None, "got no token"), ("wrong", "got a wrong token")])
async def test_write_without_token_is_refused(server: Server, token: str | None, why: str) -> None:
    src = server.tmp / "f"
    src.write_bytes(fit_bytes(b"x"))
    code, body = await asyncio.to_thread(
        server.status, "-T", src, f"{server.url}/builds/k1/image.fit", token=token
    )
    assert code == 401
    error = json.loads(body)["error"]
    assert why in error and "Authorization: Bearer" in error
    assert not (server.service.builds_dir / "k1" / "image.fit").exists()


async def test_refused_fit_keeps_previous_build(server: Server) -> None:
    assert (await upload(server, fit_bytes(b"good")))[0] == 201
    code, body = await upload(server, b"garbage" * 100)
    assert code == 422
    assert "bad FDT magic" in json.loads(body)["error"]
    assert (server.service.builds_dir / "k1" / "image.fit").read_bytes()[4:8] == b"good"
    assert dotfiles(server.service.builds_dir) == []


@pytest.mark.parametrize("chunked", [False, True])
async def test_over_the_limit_is_413(server: Server, chunked: bool) -> None:
    extra = ["-H", "Transfer-Encoding: chunked"] if chunked else []
    code, body = await upload(server, fit_bytes(b"big", LIMIT + 1), "image.fit", "k1", *extra)
    assert code == 413
    assert f"limit of {LIMIT} bytes" in json.loads(body)["error"]
    assert dotfiles(server.service.builds_dir) == []
    assert not (server.service.builds_dir / "k1" / "image.fit").exists()


async def test_client_disconnect_mid_upload_keeps_previous(server: Server) -> None:
    assert (await upload(server, fit_bytes(b"good")))[0] == 201
    host, port = server.url.removeprefix("http://").split(":")

    def half_upload() -> None:
        with socket.create_connection((host, int(port))) as s:
            s.sendall(
                b"PUT /builds/k1/image.fit HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
                + fit_bytes(b"half", 5000)
            )

    await asyncio.to_thread(half_upload)
    for _ in range(100):  # the server notices the closed connection on its own schedule
        if not dotfiles(server.service.builds_dir):
            break
        await asyncio.sleep(0.05)
    assert dotfiles(server.service.builds_dir) == []
    assert (server.service.builds_dir / "k1" / "image.fit").read_bytes()[4:8] == b"good"


@pytest.mark.parametrize(
    ("name", "status"),
    [("vmlinux", 400), ("..%2F..%2Fetc%2Fpasswd", 400), (".hidden.dtb", 400)],
)
async def test_bad_artifact_names(server: Server, name: str, status: int) -> None:
    code, body = await upload(server, b"x", name)
    assert code == status, body
    assert json.loads(body)["error"]


async def test_bad_build_name(server: Server) -> None:
    code, body = await upload(server, fit_bytes(b"x"), "image.fit", "..k")
    assert code == 400 and "build name" in json.loads(body)["error"]


def make_tar(members: list[tuple[str, bytes | None, str | None]], gz: bool = False) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if gz else "w") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = link
                tar.addfile(info)
            else:
                assert data is not None
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("gz", [False, True])
async def test_tarball_upload(server: Server, gz: bool) -> None:
    tar = make_tar(
        [
            ("./image.fit", fit_bytes(b"tar"), None),
            ("./rockchip/rk3568-rock-3a.dtb", b"dtb", None),
            ("modules-6.1.0.cpio.zst", b"cpio", None),
        ],
        gz=gz,
    )
    src = server.tmp / "b.tar"
    src.write_bytes(tar)
    kind = "application/gzip" if gz else "application/x-tar"
    code, body = await asyncio.to_thread(
        server.status, "-T", src, "-H", f"Content-Type: {kind}", f"{server.url}/builds/k2"
    )
    assert code == 201, body
    folder = server.service.builds_dir / "k2"
    assert (folder / "rockchip" / "rk3568-rock-3a.dtb").read_bytes() == b"dtb"
    assert (folder / "image.fit").read_bytes()[4:7] == b"tar"
    assert dotfiles(server.service.builds_dir) == []


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([("image.fit", None, "/etc/passwd")], "only regular files"),
        ([("../image.fit", b"x", None)], "not allowed"),
        ([("/abs/x.dtb", b"x", None)], "not allowed"),
        ([("image.fit", fit_bytes(b""), None), ("notes.txt", b"x", None)], "not a build artifact"),
        ([("big.dtb", b"x" * (LIMIT + 1), None)], "limit"),
        ([], "no build artifacts"),
    ],
)
async def test_tarball_refused(
    server: Server, members: list[tuple[str, bytes | None, str | None]], why: str
) -> None:
    src = server.tmp / "b.tar"
    src.write_bytes(make_tar(members))
    code, body = await asyncio.to_thread(
        server.status, "-T", src, "-H", "Content-Type: application/x-tar", f"{server.url}/builds/k3"
    )
    assert code in (400, 413), body
    assert why in json.loads(body)["error"]
    assert not list((server.service.builds_dir / "k3").rglob("*"))
    assert dotfiles(server.service.builds_dir) == []


async def test_multipart_upload(server: Server) -> None:
    (server.tmp / "image.fit").write_bytes(fit_bytes(b"mp"))
    (server.tmp / "Image").write_bytes(b"kernel")
    code, body = await asyncio.to_thread(
        server.status,
        "-F",
        f"a=@{server.tmp / 'image.fit'}",
        "-F",
        f"b=@{server.tmp / 'Image'}",
        "-F",
        f"c=@{server.tmp / 'Image'};filename=rockchip/x.dtb",
        f"{server.url}/builds/k4",
    )
    assert code == 201, body
    folder = server.service.builds_dir / "k4"
    assert (folder / "Image").read_bytes() == b"kernel"
    assert (folder / "rockchip" / "x.dtb").read_bytes() == b"kernel"


async def test_tar_with_wrong_type_is_415(server: Server) -> None:
    code, body = await asyncio.to_thread(
        server.status,
        "-X",
        "PUT",
        "--data-binary",
        "x",
        "-H",
        "Content-Type: text/plain",
        f"{server.url}/builds/k5",
    )
    assert code == 415 and "tarball" in json.loads(body)["error"]


@pytest.fixture
async def served(server: Server) -> bytes:
    data = os.urandom(10_000)
    f = server.tmp / "blob"
    f.write_bytes(data)
    server.service.entries["pxelinux.cfg/01-52-54-00-12-34-56"] = Entry(
        "pxelinux.cfg/01-52-54-00-12-34-56", View.of_file(f, len(data), "ab" * 32), "rock3a"
    )
    return data


NAME = "pxelinux.cfg/01-52-54-00-12-34-56"


@pytest.mark.parametrize(
    ("args", "status", "first", "last"),
    [
        (["-r", "0-99"], 206, 0, 99),
        (["-r", "9990-"], 206, 9990, 9999),
        (["-r", "-10"], 206, 9990, 9999),
        (["-r", "0-1,5-6"], 200, 0, 9999),  # several ranges: the whole artifact
        (["-H", "Range: items=0-1"], 200, 0, 9999),
        (["-r", "0-9", "-H", 'If-Range: "' + "ab" * 16 + '"'], 206, 0, 9),
        (["-r", "0-9", "-H", 'If-Range: "old"'], 200, 0, 9999),  # validator changed: all
    ],
)
async def test_range_with_curl(
    server: Server, served: bytes, args: list[str], status: int, first: int, last: int
) -> None:
    out = server.tmp / "out"
    r = await asyncio.to_thread(
        server.curl, "-o", out, "-w", "%{http_code}", *args, f"{server.url}/{NAME}"
    )
    assert int(r.stdout) == status
    assert out.read_bytes() == served[first : last + 1]


async def test_range_outside_is_416(server: Server, served: bytes) -> None:
    r = await asyncio.to_thread(server.curl, "-i", "-r", "20000-", f"{server.url}/{NAME}")
    assert " 416 " in r.stdout.splitlines()[0]
    assert "Content-Range: bytes */10000" in r.stdout


async def test_etag_304_with_curl(server: Server, served: bytes) -> None:
    r = await asyncio.to_thread(server.curl, "-sI", f"{server.url}/{NAME}")
    headers = dict(line.split(": ", 1) for line in r.stdout.splitlines()[1:] if ": " in line)
    etag = headers["ETag"]
    assert headers["Content-Length"] == "10000"
    code, _ = await asyncio.to_thread(
        server.status, "-H", f"If-None-Match: {etag}", f"{server.url}/{NAME}"
    )
    assert code == 304
    code, _ = await asyncio.to_thread(
        server.status, "-H", 'If-None-Match: "other"', f"{server.url}/{NAME}"
    )
    assert code == 200


async def test_lookups_name_the_client_address(server: Server, served: bytes) -> None:
    # The service answers a board's unversioned names per client address (pins), not per port.
    out = server.tmp / "out"
    await asyncio.to_thread(
        server.curl, "--fail", "--interface", "127.0.0.4", "-o", out, f"{server.url}/{NAME}"
    )
    assert out.read_bytes() == served
    assert server.service.clients == ["127.0.0.4"]


async def test_missing_name_is_404_with_reason(server: Server) -> None:
    code, body = await asyncio.to_thread(server.status, f"{server.url}/none-devboot-nope")
    assert code == 404
    assert "'none-devboot-nope' is not in the catalog" in json.loads(body)["error"]


async def test_journal_records_fetches(server: Server, served: bytes) -> None:
    await asyncio.to_thread(server.status, "-r", "0-9", f"{server.url}/{NAME}")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/boards/rock3a/journal?limit=5") as resp:
            assert resp.status == 200
            journal = await resp.json()
        async with http.get(f"{server.url}/api/boards/rock3a/journal?limit=0") as resp:
            assert resp.status == 400
            assert "limit" in (await resp.json())["error"]
        async with http.get(f"{server.url}/api/boards/nope") as resp:
            assert resp.status == 404
            assert "known boards: other, rock3a" in (await resp.json())["error"]
    assert journal[0]["name"] == NAME
    assert journal[0]["sent"] == 10 and journal[0]["outcome"] == "ok"
    assert journal[0]["options"] == {"range": "0-9"}


async def test_events_stream_board_rendered(server: Server) -> None:
    url = f"{server.url}/api/events?kinds=board-rendered"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        code, _ = await upload(server, fit_bytes(b"sse"))
        assert code == 201
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(resp.content.readline(), 10)
            line = raw.decode().rstrip("\n")
            if line.startswith(":") or (not line and not lines):
                continue  # comments and the blank line closing them
            if not line:
                break
            lines.append(line)
    fields = dict(line.split(": ", 1) for line in lines if ": " in line)
    assert fields["event"] == "board-rendered"
    assert json.loads(fields["data"])["board"] == "rock3a"


async def test_unknown_event_kind_is_400(server: Server) -> None:
    code, body = await asyncio.to_thread(server.status, f"{server.url}/api/events?kinds=nope")
    assert code == 400 and "unknown nope" in json.loads(body)["error"]


async def test_metrics_count_transfers(server: Server, served: bytes) -> None:
    await asyncio.to_thread(server.status, f"{server.url}/{NAME}")
    await asyncio.to_thread(server.status, f"{server.url}/missing")
    await upload(server, fit_bytes(b"m"))
    code, text = await asyncio.to_thread(server.status, f"{server.url}/metrics")
    assert code == 200
    assert 'overrided_transfers_total{outcome="ok",protocol="http"} 1.0' in text
    assert 'overrided_transfer_bytes_total{protocol="http"} 10000.0' in text
    assert 'overrided_active_transfers{protocol="http"} 0.0' in text
    assert 'reason="… is not in the catalog"' in text
    assert "overrided_index_seconds_count 1.0" in text


async def test_delete_build(server: Server) -> None:
    assert (await upload(server, fit_bytes(b"d"), "image.fit", "gone"))[0] == 201
    code, body = await asyncio.to_thread(
        server.status, "-X", "DELETE", f"{server.url}/api/builds/gone", token=None
    )
    assert code == 401 and "needs the upload token" in body
    code, body = await asyncio.to_thread(
        server.status, "-X", "DELETE", f"{server.url}/api/builds/gone"
    )
    assert code == 200 and json.loads(body) == {"removed": "gone"}
    assert not (server.service.builds_dir / "gone").exists()
    code, body = await asyncio.to_thread(
        server.status, "-X", "DELETE", f"{server.url}/api/builds/gone"
    )
    assert code == 404 and "does not exist" in body


async def test_openapi_document_is_valid(server: Server) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/openapi.json") as resp:
        doc = await resp.json()
    validate(doc)  # raises on an invalid OpenAPI 3.1 document
    assert "/api/boards/{name}/journal" in doc["paths"]


@pytest.mark.parametrize(
    ("token", "size", "status"),
    [
        (TOKEN, 4096, 201),
        (None, 4096, 401),  # refused before curl sends the body
        (TOKEN, LIMIT + 1, 413),
    ],
)
async def test_expect_100_continue(
    server: Server, token: str | None, size: int, status: int
) -> None:
    src = server.tmp / "expect.fit"
    src.write_bytes(fit_bytes(b"e", size))
    code, body = await asyncio.to_thread(
        server.status,
        "-T",
        src,
        "-H",
        "Expect: 100-continue",
        f"{server.url}/builds/k1/image.fit",
        token=token,
    )
    assert code == status, body
    assert (server.service.builds_dir / "k1" / "image.fit").exists() is (status == 201)


# A view of many pieces, as a trimmed FIT or an initrd is served: literal bytes around ranges of
# two files, one of them read twice. Each row: (literal bytes | None, file, offset, length).
MULTI = "fit-rock3a-multi"
LAYOUT: list[tuple[bytes | None, str, int, int]] = [
    (b"HDR:" * 25, "", 0, 100),
    (None, "a", 1000, 20_000),
    (b"mid", "", 0, 3),
    (None, "b", 0, 40_000),
    (None, "a", 50_000, 14_000),
    (b"\n", "", 0, 1),
]
MULTI_SIZE = sum(row[3] for row in LAYOUT)  # 74104; pieces start at 0 100 20100 20103 60103 74103


class SendfileSpy:
    """Stands in for the running loop's ``sendfile``: records each call's byte count and either
    sends (``native``) or refuses like a transport without sendfile support (``copy``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, mode: str) -> None:
        self.mode = mode
        self.calls: list[int] = []
        self._real = loop.sendfile

    async def __call__(
        self, transport: asyncio.WriteTransport, file: BinaryIO, offset: int, count: int
    ) -> int:
        self.calls.append(count)
        if self.mode == "copy":
            raise NotImplementedError("sendfile is not supported for this transport")
        return await self._real(transport, file, offset, count)


@pytest.fixture(params=["native", "copy"])
async def sendfile(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> SendfileSpy:
    """The server's sendfile, watched (``native``) or unavailable (``copy``, the fallback)."""
    loop = asyncio.get_running_loop()
    spy = SendfileSpy(loop, request.param)
    monkeypatch.setattr(loop, "sendfile", spy)
    return spy


@pytest.fixture
async def multi(server: Server) -> bytes:
    """Serve ``MULTI`` (store-like file pieces, with content hashes); its expected bytes."""
    contents = {"a": os.urandom(64_000), "b": os.urandom(40_000)}
    files = {k: server.tmp / f"blob-{k}" for k in contents}
    for k, data in contents.items():
        files[k].write_bytes(data)
    digests = {k: hashlib.sha256(v).hexdigest() for k, v in contents.items()}
    view = View(
        tuple(
            Piece.literal(d) if d is not None else Piece(n, files[f], o, digest=digests[f])
            for d, f, o, n in LAYOUT
        )
    )
    server.service.entries[MULTI] = Entry(MULTI, view, "rock3a")
    expected = b"".join(d if d is not None else contents[f][o : o + n] for d, f, o, n in LAYOUT)
    assert view.size == len(expected) == MULTI_SIZE
    return expected


def file_parts(first: int, last: int) -> list[int]:
    """The byte counts of the file ranges the bytes ``[first, last]`` of ``MULTI`` cross."""
    parts, start = [], 0
    for data, _, _, n in LAYOUT:
        overlap = min(last + 1, start + n) - max(first, start)
        if data is None and overlap > 0:
            parts.append(overlap)
        start += n
    return parts


async def last_transfer(service: FolderService, name: str) -> Transfer:
    """The journal's newest record of ``name`` (the handler files it just after the body)."""
    for _ in range(200):
        found = [t for t in service.journal.of("rock3a") if t.name == name]
        if found:
            return found[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no transfer of {name} in the journal")


async def test_multi_piece_view_with_curl(
    server: Server, multi: bytes, sendfile: SendfileSpy
) -> None:
    out = server.tmp / "out"
    r = await asyncio.to_thread(
        server.curl, "--fail", "-o", out, "-w", "%{http_code}", f"{server.url}/{MULTI}"
    )
    assert r.stdout == "200", r.stderr
    assert out.read_bytes() == multi
    # Native: one sendfile per file range. Copy: the first one refused, the rest never tried.
    assert sendfile.calls == ([20_000, 40_000, 14_000] if sendfile.mode == "native" else [20_000])
    transfer = await last_transfer(server.service, MULTI)
    assert (transfer.outcome, transfer.sent, transfer.size) == ("ok", MULTI_SIZE, MULTI_SIZE)


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("0-99", 0, 99),  # exactly the first (literal) piece
        ("100-20099", 100, 20_099),  # exactly a file range
        ("20100-20102", 20_100, 20_102),  # exactly a literal piece between two files
        ("50-149", 50, 149),  # across a literal/file boundary
        ("99-100", 99, 100),  # the last byte of one piece and the first of the next
        ("100-100", 100, 100),  # one byte, on a boundary
        ("20101-20101", 20_101, 20_101),  # one byte inside a literal piece
        ("20099-20103", 20_099, 20_103),  # file, literal, file
        ("30000-30999", 30_000, 30_999),  # inside a file range, away from its start
        ("5000-70000", 5_000, 70_000),  # across every middle piece
        ("60103-", 60_103, MULTI_SIZE - 1),  # from a boundary to the end
        ("60200-", 60_200, MULTI_SIZE - 1),  # from inside a piece to the end
        ("74000-99999", 74_000, MULTI_SIZE - 1),  # last-pos clipped
        ("0-", 0, MULTI_SIZE - 1),
        ("-1", MULTI_SIZE - 1, MULTI_SIZE - 1),  # suffix: the last literal byte
        ("-14001", 60_103, MULTI_SIZE - 1),  # suffix: exactly the last two pieces
        ("-50000", MULTI_SIZE - 50_000, MULTI_SIZE - 1),  # suffix from inside a piece
        ("-100000", 0, MULTI_SIZE - 1),  # suffix longer than the view: all of it
    ],
)
async def test_ranges_of_a_multi_piece_view(
    server: Server, multi: bytes, sendfile: SendfileSpy, spec: str, first: int, last: int
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/{MULTI}", headers={"Range": f"bytes={spec}"}) as resp,
    ):
        body = await resp.read()
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{MULTI_SIZE}"
    assert body == multi[first : last + 1]
    parts = file_parts(first, last)
    assert sendfile.calls == (parts if sendfile.mode == "native" else parts[:1])
    transfer = await last_transfer(server.service, MULTI)
    assert transfer.options == {"range": f"{first}-{last}"}
    assert (transfer.outcome, transfer.sent) == ("ok", last - first + 1)


async def test_multi_piece_view_validators(server: Server, multi: bytes) -> None:
    url = f"{server.url}/{MULTI}"
    async with aiohttp.ClientSession() as http:
        async with http.head(url, headers={"Range": "bytes=0-9"}) as resp:
            # HEAD: the headers of the whole GET, no body; a Range applies to GET only (§14.2).
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(MULTI_SIZE)
            assert "Last-Modified" not in resp.headers
            etag = resp.headers["ETag"]
        assert (await last_transfer(server.service, MULTI)).outcome == "probe"
        async with http.get(url, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304 and resp.headers["ETag"] == etag
            assert await resp.read() == b""
        async with http.get(url, headers={"If-None-Match": f'"x", W/{etag}'}) as resp:
            assert resp.status == 304
        # Without a Last-Modified there is no date to compare: If-Modified-Since is ignored.
        later = "Sun, 06 Nov 2094 08:49:37 GMT"
        async with http.get(url, headers={"If-Modified-Since": later}) as resp:
            assert resp.status == 200 and await resp.read() == multi
        async with http.get(url, headers={"Range": "bytes=100-199", "If-Range": etag}) as resp:
            assert resp.status == 206 and await resp.read() == multi[100:200]
        for stale in ('"other"', later):  # a changed tag, and a date we never sent: the whole
            headers = {"Range": "bytes=100-199", "If-Range": stale}
            async with http.get(url, headers=headers) as resp:
                assert resp.status == 200 and await resp.read() == multi
        async with http.get(url, headers={"Range": f"bytes={MULTI_SIZE}-"}) as resp:
            assert resp.status == 416
            assert resp.headers["Content-Range"] == f"bytes */{MULTI_SIZE}"


async def test_etag_follows_the_pieces(server: Server, multi: bytes) -> None:
    view = server.service.entries[MULTI].view
    rebuilt = View(tuple(Piece(**vars(p)) for p in view.pieces))  # equal pieces, new objects
    shifted = View((*view.pieces[:1], replace(view.pieces[1], offset=1001), *view.pieces[2:]))
    relabelled = View((Piece.literal(b"hdr:" * 25), *view.pieces[1:]))
    for name, v in [("same", rebuilt), ("shifted", shifted), ("relabelled", relabelled)]:
        server.service.entries[name] = Entry(name, v, "rock3a")
    tags = {}
    async with aiohttp.ClientSession() as http:
        for name in (MULTI, "same", "shifted", "relabelled"):
            async with http.head(f"{server.url}/{name}") as resp:
                tags[name] = resp.headers["ETag"]
    assert tags["same"] == tags[MULTI]
    assert len({tags[MULTI], tags["shifted"], tags["relabelled"]}) == 3


@pytest.mark.parametrize(
    ("view", "body"),
    [
        (View.of_bytes(b"#!ipxe\nchain http://x/boot\n"), b"#!ipxe\nchain http://x/boot\n"),
        (View(()), b""),
    ],
    ids=["literal", "empty"],
)
async def test_views_without_files(
    server: Server, sendfile: SendfileSpy, view: View, body: bytes
) -> None:
    server.service.entries["script"] = Entry("script", view, "rock3a")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/script") as resp:
            assert resp.status == 200 and await resp.read() == body
            assert resp.headers["ETag"] == f'"{view.digest[:32]}"'
        async with http.get(f"{server.url}/script", headers={"Range": "bytes=-5"}) as resp:
            # An empty view has no byte a range could select (RFC 9110 §14.1.1).
            assert resp.status == (206 if body else 416)
            if body:
                assert await resp.read() == body[-5:]
    assert sendfile.calls == []


async def test_file_shorter_than_its_piece_drops_the_connection(
    server: Server, sendfile: SendfileSpy
) -> None:
    # A plain file (no content hash) truncated under the view: the Content-Length cannot be
    # honoured, so the connection is closed mid-body and the journal says why.
    f = server.tmp / "plain"
    f.write_bytes(os.urandom(10_000))
    view = View((Piece.literal(b"head"), Piece(10_000, f), Piece.literal(b"tail")))
    server.service.entries["short"] = Entry("short", view, "rock3a")
    os.truncate(f, 4_000)
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/short") as resp:
        assert resp.status == 200 and resp.content_length == 10_008
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    transfer = await last_transfer(server.service, "short")
    assert transfer.outcome == "failed"
    assert "ended 6000 bytes before its piece" in transfer.reason
    assert transfer.sent == 4 + 4_000


def test_metrics_count_a_transfer_once_whatever_its_progress_reports() -> None:
    from prometheus_client import generate_latest

    from overrided.http.metrics import Metrics
    from overrided.served import Transfer
    from overrided.state import Event

    m = Metrics()
    t = Transfer(protocol="tftp", client="192.0.2.7:1069", name="initrd", size=3000)
    m.observe(Event.of_transfer(t, started=True))
    for sent in (1000, 2000):
        t.sent = sent
        m.observe(Event.of_transfer(t, progress=True))
    t.sent = 3000
    m.observe(Event.of_transfer(t))
    text = generate_latest(m.registry).decode()
    assert 'overrided_transfers_total{outcome="ok",protocol="tftp"} 1.0' in text
    assert 'overrided_transfer_bytes_total{protocol="tftp"} 3000.0' in text
    assert 'overrided_active_transfers{protocol="tftp"} 0.0' in text


async def test_a_literal_body_leaves_with_its_headers_in_one_write(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script is a few hundred bytes: one write of headers and body, not two (thousands of
    boards fetch theirs after a build lands). curl is the client, so every write counted is
    the server's."""
    from aiohttp import http_writer

    writes: list[bytes] = []
    real_write = http_writer.StreamWriter._write
    real_lines = http_writer.StreamWriter._writelines

    def write(self: http_writer.StreamWriter, chunk: bytes) -> None:
        writes.append(bytes(chunk))
        real_write(self, chunk)

    def writelines(self: http_writer.StreamWriter, chunks: list[bytes]) -> None:
        writes.append(b"".join(chunks))
        real_lines(self, chunks)

    monkeypatch.setattr(http_writer.StreamWriter, "_write", write)
    monkeypatch.setattr(http_writer.StreamWriter, "_writelines", writelines)
    body = b"#!/bin/sh\nglobal.bootm.image=/mnt/tftp/lab-linux-rock3a\n"
    server.service.entries["script"] = Entry("script", View.of_bytes(body), "rock3a")
    code, got = await asyncio.to_thread(server.status, f"{server.url}/script")
    assert code == 200 and got == body.decode()
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200") and writes[0].endswith(body)
    writes.clear()
    code, got = await asyncio.to_thread(
        server.status, "-H", "Range: bytes=10-19", f"{server.url}/script"
    )
    assert code == 206 and got == body[10:20].decode() and len(writes) == 1
    assert b"Content-Range: bytes 10-19/" in writes[0]
    assert server.service.journal.of("rock3a", 1)[0].sent == 10


async def test_a_head_only_ends(server: Server, served: bytes) -> None:
    """A HEAD sends no body: it makes one event, the transfer's end (a probe), and leaves the
    active-transfers gauge where it was; a GET starts and ends."""
    kinds: list[tuple[str, object]] = []
    server.service.events.listen(lambda e: kinds.append((e.kind, e.data.get("outcome"))))
    async with aiohttp.ClientSession() as http:
        async with http.head(f"{server.url}/{NAME}") as resp:
            assert resp.status == 200 and resp.headers["Content-Length"] == str(len(served))
        assert kinds == [("transfer-finished", "probe")]
        kinds.clear()
        async with http.get(f"{server.url}/{NAME}") as resp:
            assert await resp.read() == served
        for _ in range(200):  # the server ends the transfer once its last write returned
            if len(kinds) == 2:
                break
            await asyncio.sleep(0.01)
        assert [k for k, _ in kinds] == ["transfer-started", "transfer-finished"]
    code, text = await asyncio.to_thread(server.status, f"{server.url}/metrics")
    assert code == 200
    assert 'overrided_active_transfers{protocol="http"} 0.0' in text
    assert 'overrided_transfers_total{outcome="probe",protocol="http"} 1.0' in text
