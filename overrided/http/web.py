"""The web pages: boards, one board, builds; HTML rendered from the same data as the JSON API.

Pages are Jinja2 templates (``templates/``) with autoescape on: board files, build names and
uploaded file names are user input, and every value is escaped where it is shown. The pages work
without JavaScript; ``static/web.js`` follows ``/api/events`` and swaps the page's live regions for
a fresh render of the same page, so there is one renderer, on the server.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from overrided.clients.barebox import parse_stable_name
from overrided.clients.uboot import LEGACY_HEADER, LEGACY_MAGIC
from overrided.http.api import Fetch, find_board
from overrided.http.context import SERVICE
from overrided.http.errors import RequestError
from overrided.served import NotServed
from overrided.state import BoardInfo, BuildInfo, Service

HERE = Path(__file__).parent
JOURNAL_ROWS = 50
# Scripts larger than this are linked, not shown inline.
MAX_SHOWN_SCRIPT = 64 * 1024
FAILED_OUTCOMES = frozenset({"failed", "not-found", "refused"})
# Pages load nothing but their own script and style sheet; any markup that slipped past the
# escaping still could not run a script (W3C CSP Level 3 §6).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class ServedFile:
    """One name a board is served under, as the board page lists it."""

    name: str
    role: str  # "barebox", "pxe", ... for scripts; "fit", "initrd", ... for artifacts
    size: int | None  # None: not served right now
    digest: str
    text: str | None  # the script, for scripts small enough to show
    reason: str = ""  # why it is not served


@dataclass(frozen=True)
class BoardRow:
    """A board with its newest fetch, as a row of the boards page."""

    board: BoardInfo
    last: Fetch | None

    @property
    def failed(self) -> str:
        """Why this board is marked failed ("" when it is not): its own error, else a last
        fetch that was not answered."""
        if self.board.error:
            return self.board.error
        if self.last is not None and self.last.outcome in FAILED_OUTCOMES:
            return f"{self.last.name}: {self.last.outcome}" + (
                f": {self.last.reason}" if self.last.reason else ""
            )
        return ""


def fetches_of(service: Service, board: BoardInfo, limit: int) -> list[Fetch]:
    """The board's last fetches, newest first; for a board nothing serves, the requests it made
    that nothing answered (journaled without a board, recognised by their barebox names)."""
    own = service.journal.of(board.name, limit)
    if own:
        return [Fetch.of(t) for t in own]
    asked = []
    for t in service.journal.of(None):
        parsed = parse_stable_name(t.name)
        if parsed is not None and (parsed[0], parsed[2]) == (board.user, board.hostname):
            asked.append(Fetch.of(t))
            if len(asked) == limit:
                break
    return asked


def script_text(data: bytes) -> str:
    """A served script as text; a U-Boot legacy script image is shown without its header and
    length table (``clients/uboot.py`` writes one part)."""
    if len(data) >= LEGACY_HEADER.size + 8 and int.from_bytes(data[:4], "big") == LEGACY_MAGIC:
        data = data[LEGACY_HEADER.size + 8 :]
    return data.decode("utf-8", errors="replace")


def served_files(service: Service, board: BoardInfo) -> list[ServedFile]:
    """Every name the board is served under: its scripts (by format), then its artifacts."""
    named = [(name, fmt) for fmt, names in board.served.items() for name in names]
    named += [(name, role) for role, name in board.artifacts.items()]
    out: list[ServedFile] = []
    for name, role in named:
        try:
            view = service.lookup(name).view
        except NotServed as err:
            out.append(ServedFile(name, role, None, "", None, str(err)))
            continue
        text = None
        if role in board.served and view.size <= MAX_SHOWN_SCRIPT:
            text = script_text(view.read())
        out.append(ServedFile(name, role, view.size, view.digest, text))
    return out


def console_lines(board: BoardInfo, server: str, http: str) -> dict[str, list[str]]:
    """What to type on the board's bootloader console to boot from this server, per format:
    ``server`` is the TFTP host, ``http`` the HTTP ``host:port`` (iPXE chains over HTTP)."""
    lines: dict[str, list[str]] = {}
    if "barebox" in board.served:
        lines["barebox"] = [
            f"nv user={board.user}",
            f"nv hostname={board.hostname}",
            f"global.net.server={server}",
            "devboot net",
        ]
    for name in board.served.get("pxe", []):
        lines["U-Boot PXE"] = [f"setenv serverip {server}", f"pxe get {name}", "pxe boot"]
    for name in board.served.get("bootscr", []):
        lines["U-Boot boot.scr"] = [
            f"setenv serverip {server}",
            f"tftpboot ${{scriptaddr}} {name}",
            "source ${scriptaddr}",
        ]
    for name in board.served.get("ipxe", []):
        lines["iPXE"] = ["dhcp", f"chain http://{http}/{quote_path(name)}"]
    return lines


def quote_path(name: str) -> str:
    """A served name as a URL path (its '/' kept)."""
    return urllib.parse.quote(name, safe="/")


def quote_part(name: str) -> str:
    """A board or build name as one URL path segment."""
    return urllib.parse.quote(name, safe="")


def size_text(n: int | float | None) -> str:
    """Bytes for people: ``70.3 KiB``."""
    if n is None:
        return "–"
    if n < 1024:
        return f"{int(n)} B"
    exp = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024**exp:.1f} {'KMGT'[exp - 1]}iB"


def speed_text(bytes_per_s: float) -> str:
    """Throughput for people: ``12.5 MiB/s``."""
    return size_text(bytes_per_s) + "/s"


def time_text(when: datetime | float | None) -> str:
    """A UTC time stamp: ``2026-12-04 18:37:39 UTC``."""
    if when is None:
        return "–"
    if isinstance(when, int | float):
        when = datetime.fromtimestamp(when, UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_time(when: datetime | float | None) -> str:
    """The same instant in ISO 8601, for ``<time datetime>``."""
    if when is None:
        return ""
    if isinstance(when, int | float):
        when = datetime.fromtimestamp(when, UTC)
    return when.astimezone(UTC).isoformat(timespec="seconds")


def host_of(request: web.Request) -> str:
    """The server's host as the browser named it, without the port: what a board on the same
    network reaches over TFTP too."""
    return request.url.host or "127.0.0.1"


def setup_templates(app: web.Application) -> jinja2.Environment:
    """The template environment: package templates, autoescape for every template."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("overrided.http", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        size=size_text,
        speed=speed_text,
        when=time_text,
        iso=iso_time,
        urlpath=quote_path,
        urlname=quote_part,
    )
    return env


def render(
    request: web.Request, template: str, context: dict[str, object], status: int = 200
) -> web.Response:
    """A page: ``template`` with ``context``, the CSP and no caching (pages are live)."""
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    return response


def not_found(request: web.Request, err: RequestError) -> web.Response:
    """The 404 page, with the API's message (what exists)."""
    return render(request, "missing.html", {"page": "", "message": str(err)}, status=err.status)


async def boards_page(request: web.Request) -> web.Response:
    """GET ``/``: one row per board."""
    service = request.app[SERVICE]
    rows = [BoardRow(b, next(iter(fetches_of(service, b, 1)), None)) for b in service.boards()]
    return render(request, "boards.html", {"page": "boards", "rows": rows})


async def board_page(request: web.Request) -> web.Response:
    """GET ``/boards/<name>``: scripts, served names, journal, console lines."""
    service = request.app[SERVICE]
    try:
        board = find_board(service, request.match_info["name"])
    except RequestError as err:
        return not_found(request, err)
    journal = fetches_of(service, board, JOURNAL_ROWS)
    row = BoardRow(board, journal[0] if journal else None)
    context: dict[str, object] = {
        "page": "board",
        "row": row,
        "board": board,
        "files": served_files(service, board),
        "journal": journal,
        "console": console_lines(board, host_of(request), request.host),
    }
    return render(request, "board.html", context)


def users_of(boards: list[BoardInfo]) -> dict[str, list[BoardInfo]]:
    """Build name → the boards that resolve to it."""
    out: dict[str, list[BoardInfo]] = {}
    for b in boards:
        if b.build is not None:
            out.setdefault(b.build, []).append(b)
    return out


def _builds_context(service: Service, builds: list[BuildInfo]) -> dict[str, object]:
    return {
        "page": "builds",
        "builds": builds,
        "users": users_of(service.boards()),
        "folder": service.builds_dir.name,
    }


async def builds_page(request: web.Request) -> web.Response:
    """GET ``/builds``: every build, and the upload form."""
    service = request.app[SERVICE]
    return render(request, "builds.html", _builds_context(service, service.builds()))


async def build_page(request: web.Request) -> web.Response:
    """GET ``/builds/<name>``: one build, and the upload form to replace it."""
    service = request.app[SERVICE]
    name = request.match_info["name"]
    builds = service.builds()
    chosen = [b for b in builds if b.name == name]
    if not chosen:
        known = ", ".join(sorted(b.name for b in builds)) or "none yet"
        return not_found(request, RequestError(404, f"no build {name!r} (builds: {known})"))
    context = _builds_context(service, chosen)
    context["build"] = name
    return render(request, "builds.html", context)


def setup_web(app: web.Application) -> None:
    """Add the pages and their static files to ``app``; call before the catch-all artifact
    route, which would otherwise answer these paths."""
    setup_templates(app)
    r = app.router
    r.add_get("/", boards_page)
    r.add_get("/boards/{name}", board_page)
    r.add_get("/builds", builds_page)
    r.add_get("/builds/{name}", build_page)
    r.add_static("/static/", HERE / "static", name="static", append_version=True)
