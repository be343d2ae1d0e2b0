"""``/api/events``: the service's events as server-sent events (HTML Living Standard §9.2).

Each event is ``id:``, ``event: <kind>`` and one ``data:`` line of JSON (an ``Event``). A comment
line every ``KEEPALIVE`` seconds keeps proxies from closing an idle stream and lets the server
notice a client that went away.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from overrided.http.context import SERVICE, STREAMS
from overrided.http.errors import RequestError
from overrided.state import Event, EventKind

KEEPALIVE = 15.0
KINDS: frozenset[str] = frozenset(EventKind.__args__)  # type: ignore[attr-defined]


def sse_frame(event: Event, event_id: int) -> bytes:
    """One event in the text/event-stream format; JSON has no raw newlines, so one data line."""
    return f"id: {event_id}\nevent: {event.kind}\ndata: {event.model_dump_json()}\n\n".encode()


def parse_kinds(raw: str | None) -> frozenset[str]:
    """The ``kinds`` filter: a comma list of event kinds; empty means all."""
    if not raw:
        return KINDS
    kinds = frozenset(k.strip() for k in raw.split(",") if k.strip())
    unknown = kinds - KINDS
    if unknown:
        raise RequestError(
            400, f"kinds: unknown {', '.join(sorted(unknown))} (known: {', '.join(sorted(KINDS))})"
        )
    return kinds


async def stream_events(request: web.Request) -> web.StreamResponse:
    """GET ``/api/events?kinds=a,b&board=x``: follow the service until the client leaves."""
    service = request.app[SERVICE]
    kinds = parse_kinds(request.query.get("kinds"))
    board = request.query.get("board")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    subscription = service.events.subscribe()
    pending: asyncio.Future[Event] = asyncio.ensure_future(anext(subscription))
    # Let the subscription register before the headers go out: a client that uploads once it
    # sees them must not miss that upload's events.
    await asyncio.sleep(0)
    task = asyncio.current_task()
    streams = request.app[STREAMS]
    if task is not None:
        streams.add(task)
    sent = 0
    try:
        await response.prepare(request)
        await response.write(b": overrided events\n\n")
        while True:
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE)
            if not done:
                await response.write(b": keepalive\n\n")
                continue
            event = pending.result()
            pending = asyncio.ensure_future(anext(subscription))
            if event.kind not in kinds or (board is not None and event.board != board):
                continue
            sent += 1
            await response.write(sse_frame(event, sent))
    except (ConnectionError, asyncio.CancelledError):
        pass  # the client left, or the server is shutting down (see ``close_streams``)
    finally:
        if task is not None:
            streams.discard(task)
        pending.cancel()
        with contextlib.suppress(BaseException):
            await pending
        await subscription.aclose()  # type: ignore[attr-defined]
    return response


async def close_streams(app: web.Application) -> None:
    """On shutdown, end open event streams so the server need not wait for their clients."""
    streams = app[STREAMS]
    for task in list(streams):
        task.cancel()
