"""The aiohttp application: artifacts, JSON API, uploads, events, metrics, OpenAPI."""

from __future__ import annotations

from aiohttp import HttpVersion11, hdrs, web

from overrided.http import api, events, files, openapi, uploads
from overrided.http.context import MAX_UPLOAD, SERVICE, STREAMS, TOKEN, UPLOAD_LOCKS
from overrided.http.errors import Handler, errors_as_json, json_error
from overrided.http.metrics import METRICS, Metrics, serve_metrics
from overrided.http.token import bearer_matches
from overrided.state import Service

WRITE_METHODS = frozenset({"PUT", "POST", "DELETE", "PATCH"})
DEFAULT_MAX_UPLOAD = 1 << 30


def refusal(request: web.Request) -> web.Response | None:
    """The 401 for a write without the right bearer token, or ``None`` when it may go on."""
    if request.method not in WRITE_METHODS:
        return None
    if bearer_matches(request.headers.get(hdrs.AUTHORIZATION), request.app[TOKEN]):
        return None
    said = "a wrong token" if request.headers.get(hdrs.AUTHORIZATION) else "no token"
    return json_error(
        401,
        f"{request.method} {request.path} needs the upload token, got {said}: add "
        "-H 'Authorization: Bearer <token>' (overrided serve prints the token when it creates "
        "it and keeps it in <store>/token, .overrided/token by default)",
        # RFC 6750 §3: a protected resource answers 401 with a Bearer challenge.
        headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="overrided"'},
    )


@web.middleware
async def writes_need_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse writes without ``Authorization: Bearer <token>``; reads are open."""
    refused = refusal(request)
    return refused if refused is not None else await handler(request)


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect: 100-continue`` (RFC 9110 §10.1.1) with 401/413 before the body is sent.

    curl asks this for large uploads; refusing here spares sending a 60 MB FIT for nothing.
    """
    refused = refusal(request)
    if refused is not None:
        return refused
    limit = request.app[MAX_UPLOAD]
    if request.content_length is not None and request.content_length > limit:
        return json_error(413, uploads.limit_message(limit))
    if request.version != HttpVersion11:
        return None
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        return json_error(417, f"unknown expectation {request.headers[hdrs.EXPECT]!r}")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the interim response is not part of the body count
    return None


def make_app(
    service: Service, *, token: str, max_upload: int = DEFAULT_MAX_UPLOAD
) -> web.Application:
    """The HTTP side of ``service``: reads are open, writes need ``Bearer <token>``."""
    if not token:
        raise ValueError("make_app needs a non-empty upload token")
    app = web.Application(middlewares=[errors_as_json, writes_need_token])
    app[SERVICE] = service
    app[TOKEN] = token
    app[MAX_UPLOAD] = max_upload
    app[UPLOAD_LOCKS] = {}
    app[STREAMS] = set()
    metrics = Metrics()
    app[METRICS] = metrics
    service.events.listen(metrics.observe)
    app.on_shutdown.append(events.close_streams)

    r = app.router
    r.add_get("/openapi.json", openapi.serve_openapi)
    r.add_get("/metrics", serve_metrics)
    r.add_get("/api/events", events.stream_events)
    r.add_get("/api/boards", api.list_boards)
    r.add_get("/api/boards/{name}", api.get_board)
    r.add_get("/api/boards/{name}/journal", api.board_journal)
    r.add_get("/api/builds", api.list_builds)
    r.add_get("/api/builds/{name}", api.get_build)
    r.add_delete("/api/builds/{name}", uploads.delete_build)
    r.add_route("PUT", "/builds/{build}", uploads.put_build, expect_handler=expect_continue)
    r.add_route("POST", "/builds/{build}", uploads.put_build, expect_handler=expect_continue)
    r.add_route(
        "PUT", "/builds/{build}/{path:.+}", uploads.put_artifact, expect_handler=expect_continue
    )
    # Last: every other path is a served name; names may contain '/'.
    r.add_get("/{name:.+}", files.serve_artifact)  # add_get registers HEAD too
    return app
