"""The JSON API: boards, builds and each board's fetch journal, as pydantic models."""

from __future__ import annotations

from dataclasses import asdict

from aiohttp import web
from pydantic import BaseModel, TypeAdapter

from overrided.http.context import SERVICE
from overrided.http.errors import RequestError
from overrided.served import Outcome, Transfer
from overrided.state import BoardInfo, BuildInfo, Service

DEFAULT_JOURNAL = 50
MAX_JOURNAL = 1000


class Fetch(BaseModel):
    """One fetch of a board's artifact, TFTP or HTTP, as the journal shows it."""

    protocol: str
    client: str
    name: str
    board: str | None
    options: dict[str, str]
    size: int
    sent: int
    started: float  # seconds since the epoch
    duration: float  # seconds
    throughput: float  # payload bytes per second
    retransmits: int
    cpu: float  # server CPU seconds spent on it (TFTP; 0 for HTTP)
    outcome: Outcome
    reason: str

    @classmethod
    def of(cls, transfer: Transfer) -> Fetch:
        """The journal view of a finished transfer."""
        return cls(**asdict(transfer), throughput=transfer.throughput)


BOARDS = TypeAdapter(list[BoardInfo])
BUILDS = TypeAdapter(list[BuildInfo])
FETCHES = TypeAdapter(list[Fetch])


def _json(
    adapter: TypeAdapter[list[BoardInfo]] | TypeAdapter[list[BuildInfo]] | TypeAdapter[list[Fetch]],
    value: object,
) -> web.Response:
    return web.json_response(text=adapter.dump_json(value).decode())  # type: ignore[arg-type]


def find_board(service: Service, name: str) -> BoardInfo:
    """The board called ``name`` (file stem or hostname), or a 404 listing what exists."""
    boards = service.boards()
    for board in boards:
        if board.name == name:
            return board
    for board in boards:
        if board.hostname == name:
            return board
    known = ", ".join(sorted(b.name for b in boards)) or "none yet"
    raise RequestError(404, f"no board {name!r} (known boards: {known})")


def parse_limit(raw: str | None) -> int:
    """The ``limit`` query parameter of the journal: 1 to ``MAX_JOURNAL``."""
    if raw is None:
        return DEFAULT_JOURNAL
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_JOURNAL:
        raise RequestError(400, f"limit={raw!r}: give a whole number from 1 to {MAX_JOURNAL}")
    return limit


async def list_boards(request: web.Request) -> web.Response:
    """GET ``/api/boards``."""
    service = request.app[SERVICE]
    return _json(BOARDS, service.boards())


async def get_board(request: web.Request) -> web.Response:
    """GET ``/api/boards/<name>``."""
    board = find_board(request.app[SERVICE], request.match_info["name"])
    return web.json_response(text=board.model_dump_json())


async def board_journal(request: web.Request) -> web.Response:
    """GET ``/api/boards/<name>/journal?limit=N``: the board's last fetches, newest first."""
    service = request.app[SERVICE]
    limit = parse_limit(request.query.get("limit"))
    board = find_board(service, request.match_info["name"])
    return _json(FETCHES, [Fetch.of(t) for t in service.journal.of(board.name, limit)])


async def list_builds(request: web.Request) -> web.Response:
    """GET ``/api/builds``."""
    service = request.app[SERVICE]
    return _json(BUILDS, service.builds())


async def get_build(request: web.Request) -> web.Response:
    """GET ``/api/builds/<name>``: the build's configurations and their compatibles."""
    service = request.app[SERVICE]
    name = request.match_info["name"]
    builds = service.builds()
    for build in builds:
        if build.name == name:
            return web.json_response(text=build.model_dump_json())
    known = ", ".join(sorted(b.name for b in builds)) or "none yet"
    raise RequestError(404, f"no build {name!r} (builds: {known})")
