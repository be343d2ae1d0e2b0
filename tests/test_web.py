"""The web pages without a browser: the formatting rules as tables, then the pages of a real
``overrided serve`` fetched with plain HTTP GETs (what a browser without JavaScript gets).

The browser side (live updates, uploads, screenshots) is ``tests/test_web_browser.py``.
"""

from __future__ import annotations

import html
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from overrided.clients.uboot import legacy_script_image
from overrided.http.api import Fetch
from overrided.http.web import BoardRow, console_lines, script_text, size_text, speed_text
from overrided.served import Transfer
from overrided.state import BoardInfo
from tests.support.builds import build_folder
from tests.support.fits import sample_fit
from tests.support.serve import Served

BOARD_A = 'user = "afa"\ncompatible = ["v,board-a", "v,soc"]\ninitrd = "append"\n'
# A board file name and a field that are markup: board files are user input.
EVIL_STEM = '<img src=x onerror="window.pwned=1">'
EVIL_BOARD = 'compatible = ["v,<script>window.pwned=2</script>"]\n'


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (70_001, "68.4 KiB"),
        (5 * 1024**3, "5.0 GiB"),
        (None, "–"),
    ],
)
def test_size_text(n: int | None, text: str) -> None:
    assert size_text(n) == text


def test_speed_text() -> None:
    assert speed_text(3 * 1024 * 1024) == "3.0 MiB/s"


def test_script_text_strips_the_legacy_image_header() -> None:
    image = legacy_script_image("echo hi\nboot\n", name="overrided b", arch="arm64")
    assert script_text(image) == "echo hi\nboot\n"
    assert script_text(b"#!ipxe\nboot\n") == "#!ipxe\nboot\n"
    assert script_text(b"\xff\xfe") == "\ufffd\ufffd"  # shown, not a crash


def _fetch(outcome: str, reason: str = "") -> Fetch:
    t = Transfer("tftp", "127.0.0.1:5000", "afa-devboot-a", board="a", size=10, sent=10)
    t.outcome, t.reason = outcome, reason  # type: ignore[assignment]
    return Fetch.of(t)


@pytest.mark.parametrize(
    ("error", "outcome", "reason", "failed"),
    [
        (None, "ok", "", ""),
        (None, "probe", "", ""),
        (None, "aborted", "", ""),
        (None, "not-found", "no board", "afa-devboot-a: not-found: no board"),
        (None, "refused", "", "afa-devboot-a: refused"),
        (None, "failed", "gave up after 5 tries", "afa-devboot-a: failed: gave up after 5 tries"),
        ("boards/a.toml: user: bad", "ok", "", "boards/a.toml: user: bad"),
    ],
)
def test_a_board_is_marked_failed_with_the_reason(
    error: str | None, outcome: str, reason: str, failed: str
) -> None:
    board = BoardInfo(name="a", hostname="a", error=error)
    assert BoardRow(board, _fetch(outcome, reason)).failed == failed


def test_console_lines_per_format() -> None:
    board = BoardInfo(
        name="a",
        hostname="rock3a",
        user="afa",
        served={"barebox": ["afa-devboot-rock3a"], "ipxe": ["boot/a.ipxe"], "pxe": ["p/a"]},
    )
    lines = console_lines(board, "192.0.2.10", "192.0.2.10:8080")
    assert lines["barebox"] == [
        "nv user=afa",
        "nv hostname=rock3a",
        "global.net.server=192.0.2.10",
        "devboot net",
    ]
    assert lines["iPXE"][-1] == "chain http://192.0.2.10:8080/boot/a.ipxe"
    assert lines["U-Boot PXE"][1] == "pxe get p/a"
    assert "U-Boot boot.scr" not in lines


# --- a real server, plain HTTP -----------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """``overrided serve`` with board A (on build b1), a board file whose name and compatible
    are markup, and one fetch of A's script by tftp-hpa."""
    fit = sample_fit(tmp_path / "fit").fit
    with Served(tmp_path / "srv") as srv:
        (srv.boards / "board-a.toml").write_text(BOARD_A)
        (srv.boards / f"{EVIL_STEM}.toml").write_text(EVIL_BOARD)
        build_folder(srv.builds, "b1", fit)
        srv.wait_for(lambda: any(b["build"] == "b1" for b in srv.api("/api/boards")))
        srv.tftp_get("afa-devboot-board-a")
        assert srv.served("afa-devboot-nobody") is None  # a board that nothing serves
        srv.wait_for(lambda: srv.api("/api/boards/board-a/journal"), what="the fetch journaled")
        yield srv


def get(srv: Served, path: str) -> tuple[int, dict[str, str], str]:
    """Status, headers and body of a GET (errors included)."""
    try:
        with urllib.request.urlopen(srv.http_base + path, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def test_the_boards_page_lists_every_board_without_javascript(served: Served) -> None:
    status, headers, body = get(served, "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    rows = re.findall(r'<tr data-board="([^"]*)"', body)
    api = [b["name"] for b in served.api("/api/boards")]
    # Board A's fetches do not make the hostname render of the same name a board of its own.
    assert len(set(api)) == len(api), api
    assert [html.unescape(r) for r in rows] == api  # one row per board, the API's order
    row = body.split('<tr data-board="board-a">', 1)[1].split("</tr>", 1)[0]
    assert "afa" in row and "conf-a" in row and 'href="/builds/b1"' in row
    assert "afa-devboot-board-a" in row and "outcome-ok" in row  # the last fetch


def test_a_board_nothing_serves_is_marked_with_its_last_request(served: Served) -> None:
    _, _, body = get(served, "/")
    row = body.split('<tr data-board="nobody" class="failed">', 1)[1].split("</tr>", 1)[0]
    assert "failed: no board file for afa/nobody" in row
    assert "outcome-not-found" in row and "afa-devboot-nobody" in row  # the request it made
    status, _, page = get(served, "/boards/nobody")
    assert status == 200
    journal = page.split("Fetch journal", 1)[1]
    assert "afa-devboot-nobody" in journal and "outcome-not-found" in journal


def test_every_value_is_escaped(served: Served) -> None:
    _, _, body = get(served, "/")
    assert "<img" not in body and "<script>window" not in body
    assert "&lt;img src=x onerror=" in body and EVIL_STEM in html.unescape(body)  # as text
    assert "&lt;script&gt;window.pwned=2&lt;/script&gt;" in body
    evil = re.search(r'<tr data-board="([^"]*)"( class="failed")?', body.split("board-a", 2)[-1])
    assert evil is not None and evil.group(2), "the invalid board file is marked failed"
    # Its own page, by the link the boards page gives.
    link = re.search(r'href="(/boards/%3Cimg[^"]*)"', body)
    assert link is not None
    status, _, page = get(served, link.group(1))
    assert status == 200 and "<img" not in page and "<h1>&lt;img src=x onerror=" in page


def test_the_board_page_shows_scripts_names_journal_and_console(served: Served) -> None:
    status, _, body = get(served, "/boards/board-a")
    assert status == 200
    script = served.http_get("/afa-devboot-board-a").decode()
    shown = re.findall(r'<pre class="script">(.*?)</pre>', body, re.S)
    assert script in [html.unescape(s) for s in shown]  # the rendered devboot script, whole
    board = served.api("/api/boards/board-a")
    for name in [*board["artifacts"].values(), "afa-devboot-board-a"]:
        assert f'href="/{name}" download' in body
        size = len(served.http_get("/" + name))
        assert f"({size} bytes)" in body
    assert "nv user=afa" in body and "devboot net" in body
    assert "global.net.server=127.0.0.1" in body
    journal = body.split("Fetch journal", 1)[1]
    assert "afa-devboot-board-a" in journal and "outcome-ok" in journal


def test_the_builds_page_shows_each_build(served: Served) -> None:
    status, _, body = get(served, "/builds")
    assert status == 200
    section = body.split('data-build="b1"', 1)[1].split("</section>", 1)[0]
    assert "6.19.0" in section and "modules-6.19.0-arm64.cpio" in section
    for conf in ("conf-a", "conf-b", "conf-c", "conf-soc"):
        assert f"<code>{conf}</code>" in section
    assert 'href="/boards/board-a"' in section  # which boards use it
    assert "<time datetime=" in section  # when it was indexed
    assert '<form id="upload"' in body and 'type="password"' in body
    status, _, one = get(served, "/builds/b1")
    assert status == 200 and 'data-build="b1"' in one


def test_unknown_pages_say_what_exists(served: Served) -> None:
    status, headers, body = get(served, "/boards/nope")
    assert status == 404 and headers["Content-Type"].startswith("text/html")
    assert "no board &#39;nope&#39;" in body and "board-a" in body
    status, _, body = get(served, "/builds/nope")
    assert status == 404 and "b1" in body


def test_static_files_are_served_and_versioned(served: Served) -> None:
    _, _, body = get(served, "/")
    for path in re.findall(r'(?:src|href)="(/static/[^"]+)"', body):
        status, headers, text = get(served, html.unescape(path))
        assert status == 200 and text, path
        kind = "text/css" if ".css" in path else "javascript"
        assert kind in headers["Content-Type"], (path, headers["Content-Type"])
    assert re.search(r'src="/static/web\.js\?v=', body)


def test_the_artifacts_and_api_still_answer(served: Served) -> None:
    assert served.http_get("/afa-devboot-board-a").startswith(b"# afa-devboot-board-a")
    assert served.api("/api/builds")[0]["name"] == "b1"
