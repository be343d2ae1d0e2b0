"""The web pages in a real browser: Debian's Chromium driven by Playwright, against a real
``overrided serve`` on loopback, real builds landing, and tftp-hpa fetching.

Playwright is pointed at ``/usr/bin/chromium`` (Debian's ``chromium`` package); it never
downloads a browser of its own. Screenshots of the three pages at desktop and phone widths go
to pytest's temporary folder (the path is printed; nothing is committed).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from overrided.tftp.packets import ErrorCode, Opcode, encode_ack, encode_error, opcode_of
from tests.support.builds import RELEASE, modules_cpio, newc_archive
from tests.support.fits import sample_fit
from tests.support.serve import Served
from tests.support.tftp import RawClient
from tests.support.tftp_clients import tftp_hpa

CHROMIUM = Path("/usr/bin/chromium")
BOARD_A = 'user = "afa"\ncompatible = ["v,board-a", "v,soc"]\ninitrd = "append"\n'
BOARD_B = 'user = "afa"\ncompatible = ["v,board-b", "v,soc"]\nformats = ["barebox", "pxe"]\n'
EVIL_STEM = '<img src=x onerror="window.pwned=1">'
EVIL_BOARD = 'compatible = ["v,<script>window.pwned=2</script>"]\n'
# Big enough that tftp-hpa (512-byte blocks, one at a time) takes a while on loopback.
BIG_MODULE = 24 << 20
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless."""
    assert CHROMIUM.exists(), "needs Debian's chromium: apt-get install chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        yield b
        b.close()


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_fit(tmp_path_factory.mktemp("fit")).fit


@pytest.fixture(scope="module")
def big_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A modules CPIO (GNU cpio) holding one module of ``BIG_MODULE`` random bytes."""
    folder = tmp_path_factory.mktemp("mods")
    ko = folder / "tree" / "lib" / "modules" / RELEASE / "kernel" / "big.ko"
    ko.parent.mkdir(parents=True)
    ko.write_bytes(os.urandom(BIG_MODULE))
    (ko.parents[1] / "modules.dep").write_text("kernel/big.ko:\n")
    return newc_archive(folder / "tree", folder / f"modules-{RELEASE}-arm64.cpio")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with Served(tmp_path / "srv") as srv:
        yield srv


@pytest.fixture
def expected_errors() -> list[str]:
    """Browser console errors a test provokes on purpose (parts of their text)."""
    return []


@pytest.fixture
def page(browser: Browser, expected_errors: list[str]) -> Iterator[Page]:
    """A desktop-sized tab; the test fails if the page logged an error it did not expect (a
    script error, a failed request, something the Content-Security-Policy blocked)."""
    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda err: errors.append(str(err)))
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield pg
    context.close()
    errors = [e for e in errors if not any(x in e for x in expected_errors)]
    assert not errors, errors


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("web-screenshots")
    print(f"\nscreenshots: {folder}")
    return folder


def land(srv: Served, name: str, fit: Path, modules: Path | None = None) -> None:
    """Drop a build the way ``make`` and a copy would: written beside, renamed into place."""
    folder = srv.builds / name
    folder.mkdir()
    for src, dst in [(fit, "image.fit")] + ([(modules, modules.name)] if modules else []):
        tmp = folder / f".{dst}.part"
        tmp.write_bytes(src.read_bytes())
        tmp.rename(folder / dst)


def open_live(page: Page, url: str) -> None:
    """Load ``url`` and wait until it follows the server's events."""
    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-live", "live", timeout=WAIT_MS)


def row(page: Page, board: str) -> Locator:
    """The boards page's row of ``board``."""
    return page.locator(f'tr[data-board="{board}"]')


def test_boards_page_lists_boards_and_a_landing_build_updates_rows(
    served: Served, page: Page, fit: Path
) -> None:
    (served.boards / "board-a.toml").write_text(BOARD_A)
    (served.boards / "board-b.toml").write_text(BOARD_B)
    served.wait_for(lambda: len(served.api("/api/boards")) == 2)
    open_live(page, served.http_base + "/")
    expect(page.locator("tr[data-board]")).to_have_count(2)
    expect(row(page, "board-a")).to_contain_text("nothing")
    page.evaluate("window.sameDocument = true")

    land(served, "b1", fit)
    expect(row(page, "board-a")).to_contain_text("b1", timeout=WAIT_MS)
    expect(row(page, "board-a")).to_contain_text("conf-a")
    expect(row(page, "board-b")).to_contain_text("conf-b")
    expect(row(page, "board-b")).to_contain_text("pxe")
    assert page.evaluate("window.sameDocument") is True, "the page reloaded"


def test_the_page_catches_up_after_the_server_restarts(
    served: Served, page: Page, expected_errors: list[str]
) -> None:
    expected_errors.append("ERR_CONNECTION_REFUSED")  # the event stream, while it is down
    (served.boards / "board-a.toml").write_text(BOARD_A)
    served.wait_for(lambda: served.api("/api/boards"))
    open_live(page, served.http_base + "/")
    page.evaluate("window.sameDocument = true")
    served.stop()
    expect(page.locator("#live")).to_have_text("reconnecting…", timeout=WAIT_MS)
    (served.boards / "board-b.toml").write_text(BOARD_B)  # while nobody could say so
    served.start()  # the same ports
    expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)
    expect(row(page, "board-b")).to_have_count(1, timeout=WAIT_MS)
    assert page.evaluate("window.sameDocument") is True, "the page reloaded"


def test_a_tftp_download_shows_progress_then_the_finished_fetch(
    served: Served, page: Page, fit: Path, big_modules: Path, shots: Path
) -> None:
    (served.boards / "board-a.toml").write_text(BOARD_A)
    land(served, "b1", fit, big_modules)
    board = served.wait_for(  # the watcher may index the FIT before the CPIO lands
        lambda: next((b for b in served.api("/api/boards") if "initrd" in b["artifacts"]), None)
    )
    initrd = board["artifacts"]["initrd"]
    open_live(page, served.http_base + "/")
    # Record every in-flight bar the page shows, however short the transfer.
    page.evaluate(
        """() => {
        window.seen = [];
        new MutationObserver(() => {
          for (const cell of document.querySelectorAll('.inflight:not([hidden])')) {
            const text = cell.textContent;
            if (!cell.querySelector('progress') || window.seen.includes(text)) continue;
            window.seen.push(text);
          }
        }).observe(document.body, {subtree: true, childList: true, attributes: true});
    }"""
    )
    out = served.root / "initrd.fetched"
    started = time.monotonic()
    client = subprocess.Popen(
        tftp_hpa(served.tftp_port, initrd, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        # Seen by the observer, so a transfer faster than Playwright's polling still counts.
        # A function, not an expression: polling an expression evals it, which the page's CSP
        # (script-src 'self') refuses whenever the first look finds nothing yet.
        page.wait_for_function("() => window.seen.length > 0", timeout=WAIT_MS)
        if client.poll() is None:
            page.screenshot(path=str(shots / "boards-transfer-desktop.png"))
        assert client.wait(120) == 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    took = time.monotonic() - started
    size = len(served.http_get("/" + initrd))
    assert out.stat().st_size == size
    last = row(page, "board-a").locator(".last-fetch")
    expect(last).to_contain_text(initrd, timeout=WAIT_MS)
    expect(last).to_contain_text("ok")
    expect(row(page, "board-a").locator(".inflight")).to_be_hidden()
    seen = page.evaluate("window.seen")
    assert any(initrd in s and "tftp" in s for s in seen), seen
    print(f"tftp-hpa fetched {size} bytes in {took:.1f} s; the page showed {seen[:2]}")


def test_a_transfer_in_flight_shows_its_bytes_and_speed(
    served: Served, page: Page, fit: Path, big_modules: Path
) -> None:
    """A client that stops acknowledging partway: while the server waits, the row's bar says
    how many bytes of how many went, and at what speed (the server reports it once a second)."""
    (served.boards / "board-a.toml").write_text(BOARD_A)
    land(served, "b1", fit, big_modules)
    board = served.wait_for(
        lambda: next((b for b in served.api("/api/boards") if "initrd" in b["artifacts"]), None)
    )
    initrd = board["artifacts"]["initrd"]
    open_live(page, served.http_base + "/")
    client = RawClient(served.tftp_port, timeout=10.0)
    try:
        client.request(initrd)
        for block in range(1, 201):  # 100 KiB acknowledged, then a pause
            packet = client.recv()
            assert opcode_of(packet) == Opcode.DATA, packet[:40]
            client.send(encode_ack(block))
        inflight = row(page, "board-a").locator(".inflight")
        expect(inflight).to_contain_text(" of ", timeout=WAIT_MS)
        text = inflight.inner_text()
        assert initrd in text and "tftp" in text and "/s" in text, text
        assert "KiB of" in text or "MiB of" in text, text
    finally:
        client.send(encode_error(ErrorCode.UNDEFINED, "enough"))
        client.close()
    expect(row(page, "board-a").locator(".inflight")).to_be_hidden(timeout=WAIT_MS)


def test_a_script_like_board_is_shown_escaped(served: Served, page: Page, fit: Path) -> None:
    (served.boards / "board-a.toml").write_text(BOARD_A)
    (served.boards / f"{EVIL_STEM}.toml").write_text(EVIL_BOARD)
    land(served, "b1", fit)
    served.wait_for(lambda: len(served.api("/api/boards")) == 2)
    open_live(page, served.http_base + "/")
    evil = page.locator("a.board-name", has_text="onerror")
    expect(evil).to_have_text(EVIL_STEM)
    expect(page.locator("main")).to_contain_text("<script>window.pwned=2</script>")
    assert page.locator("main img, main script").count() == 0
    # A live refresh swaps the rows in again: still text.
    land(served, "b2", fit)
    expect(row(page, "board-a")).to_contain_text("b2", timeout=WAIT_MS)
    evil.click()
    expect(page.locator("h1")).to_have_text(EVIL_STEM)
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("window.pwned") is None


def test_the_upload_form_shows_the_servers_refusal_then_uploads(
    served: Served, page: Page, fit: Path, expected_errors: list[str]
) -> None:
    expected_errors.append("status of 401")  # the browser logs the refusal it shows
    (served.boards / "board-a.toml").write_text(BOARD_A)
    open_live(page, served.http_base + "/builds")
    form = page.locator("#upload")
    form.locator("input[name=build]").fill("up1")
    form.locator("input[name=token]").fill("not-the-token")
    form.locator("input[name=files]").set_input_files(
        {"name": "image.fit", "mimeType": "application/octet-stream", "buffer": fit.read_bytes()}
    )
    form.locator("button[type=submit]").click()
    result = form.locator(".upload-result")
    expect(result).to_have_class("upload-result refused", timeout=WAIT_MS)
    expect(result).to_contain_text("refused (401)")
    expect(result).to_contain_text("needs the upload token, got a wrong token")
    assert not (served.builds / "up1").exists()

    form.locator("input[name=token]").fill(served.token)
    form.locator("button[type=submit]").click()
    expect(result).to_contain_text("build up1: stored image.fit", timeout=WAIT_MS)
    expect(result).to_contain_text("board-a: afa-devboot-board-a")
    # The new build shows in the list without a reload (the event of its indexing).
    expect(page.locator('section[data-build="up1"]')).to_contain_text("conf-a", timeout=WAIT_MS)
    # The token stays in this tab's session storage; the page never shows it.
    assert page.evaluate("sessionStorage.getItem('overrided-token')") == served.token
    assert served.token not in page.content()
    assert served.token not in served.http_get("/builds").decode()


def test_the_pages_work_without_javascript(served: Served, browser: Browser, fit: Path) -> None:
    (served.boards / "board-a.toml").write_text(BOARD_A)
    land(served, "b1", fit)
    served.wait_for(lambda: any(b["build"] == "b1" for b in served.api("/api/boards")))
    context = browser.new_context(java_script_enabled=False, viewport=PHONE)
    try:
        pg = context.new_page()
        pg.goto(served.http_base + "/")
        expect(pg.locator('tr[data-board="board-a"]')).to_contain_text("conf-a")
        pg.locator("a.board-name").click()
        expect(pg.locator("pre.console")).to_contain_text("devboot net")
        pg.goto(served.http_base + "/builds")
        expect(pg.locator('section[data-build="b1"]')).to_contain_text("conf-soc")
        expect(pg.locator("noscript")).to_have_count(1)
    finally:
        context.close()


def test_screenshots_at_desktop_and_phone_widths(
    served: Served, browser: Browser, fit: Path, shots: Path
) -> None:
    (served.boards / "board-a.toml").write_text(BOARD_A)
    (served.boards / "board-b.toml").write_text(BOARD_B)
    (served.boards / f"{EVIL_STEM}.toml").write_text(EVIL_BOARD)
    land(served, "b1", fit, modules_cpio(served.root / f"modules-{RELEASE}-arm64.cpio", RELEASE))
    served.wait_for(lambda: sum("initrd" in b["artifacts"] for b in served.api("/api/boards")) == 2)
    served.tftp_get("afa-devboot-board-a")
    served.served("afa-devboot-nobody")  # a board nothing serves: marked failed
    served.wait_for(lambda: served.api("/api/boards/board-a/journal"))
    pages = {"boards": "/", "board": "/boards/board-a", "builds": "/builds"}
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport)
        try:
            pg = context.new_page()
            for name, path in pages.items():
                open_live(pg, served.http_base + path)
                target = shots / f"{name}-{width}.png"
                pg.screenshot(path=str(target), full_page=True)
                assert target.stat().st_size > 10_000
                # Readable on a phone: nothing wider than the screen.
                overflow = pg.evaluate("document.documentElement.scrollWidth")
                assert overflow <= viewport["width"], f"{path} is {overflow} px wide at {width}"
        finally:
            context.close()
