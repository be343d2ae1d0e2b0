"""The aiohttp application: artifacts, JSON API, uploads, events, metrics, OpenAPI."""

from __future__ import annotations

import errno
import logging

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from overrided.fetch import FetchSettings
from overrided.http import api, dhcp, events, files, openapi, uploads
from overrided.http.context import MAX_UPLOAD, SERVICE, STREAMS, TOKEN, UPLOAD_LOCKS
from overrided.http.errors import Handler, RequestError, error_answer, json_error
from overrided.http.fetch import FETCHING, Fetching, put_build_by_url
from overrided.http.metrics import METRICS, Metrics, serve_metrics
from overrided.http.token import bearer_matches
from overrided.http.web import setup_web
from overrided.state import Service

log = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"PUT", "POST", "DELETE", "PATCH"})
DEFAULT_MAX_UPLOAD = 1 << 30
# Seconds a client may take to send a request's headers (or sit idle between requests), and the
# longest pause allowed inside an upload body; ``overrided serve --http-timeout``.
DEFAULT_TIMEOUT = 60.0
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


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
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request: a write needs ``Authorization: Bearer <token>`` (reads are open), and
    whatever goes wrong is answered in JSON: our ``RequestError``s and aiohttp's HTML/plain
    errors (``error_answer``), and anything else (``fault_answer``), never aiohttp's text/plain
    500. One middleware, not three: it runs for each of the thousands of requests a lab's
    boards make after a build lands."""
    try:
        refused = refusal(request)
        return refused if refused is not None else await handler(request)
    except RequestError as err:
        return error_answer(request, err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_answer(request, exc)
    except Exception as err:
        if request.writer.output_size > 0:
            raise  # the answer has begun: only dropping the connection is left (aiohttp does)
        return fault_answer(request, err)


def fault_answer(request: web.Request, err: Exception) -> web.Response:
    """The answer to an exception no handler turned into one, logged in proportion: a client
    that broke an upload off is one warning line (and the connection is closed), a full disk is
    507, anything else is a bug: 500, logged with its traceback."""
    where = f"{request.method} {request.raw_path} from {request.remote}"  # raw: no newlines
    if isinstance(err, uploads.ClientFault):
        log.warning("%s: %s", where, err)
        return _closing(json_error(err.status, str(err)))
    if isinstance(err, ConnectionError):  # the client left while we answered: nobody to tell
        log.info("%s: connection lost (%s)", where, err)
        return _closing(json_error(400, "connection lost"))
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        log.warning("%s: %s", where, err)
        return json_error(
            507,
            f"the server's disk is full ({err.strerror}): nothing stored, previous files kept; "
            "free space on the server (old builds: DELETE /api/builds/<build>)",
        )
    log.error("%s: unexpected error", where, exc_info=err)
    return json_error(
        500,
        f"internal error ({type(err).__name__}) answering {request.method} {request.path}; "
        "the server log has the details",
    )


def _closing(response: web.Response) -> web.Response:
    # The request was broken off, so the connection is not reused (after a 408, RFC 9110
    # §15.5.9 says the server closes it).
    response.force_close()
    return response


class ClientFaultLog(logging.Filter):
    """One line instead of a traceback when aiohttp logs a client's fault: a malformed request
    (aiohttp answers it 400 before any handler runs) or a dropped connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite such a record in place; let every record through."""
        exc = record.exc_info[1] if record.exc_info else None
        args = record.args if isinstance(record.args, tuple) else ()
        client = args[0] if len(args) == 1 else "a client"
        if isinstance(exc, HttpProcessingError):
            lines = (line.strip() for line in str(exc.message).splitlines())
            what = " ".join(line for line in lines if line.strip("^ "))
            level, record.msg, record.args = (
                logging.WARNING,
                "malformed HTTP request from %s: %s",
                (client, what),
            )
        elif isinstance(exc, ConnectionError):
            level, record.msg, record.args = (
                logging.INFO,
                "connection from %s lost: %s",
                (client, exc),
            )
        else:
            return True
        record.levelno, record.levelname = level, logging.getLevelName(level)
        record.exc_info, record.exc_text = None, None
        return True


def make_runner(app: web.Application, *, timeout: float = DEFAULT_TIMEOUT) -> web.AppRunner:
    """The runner ``overrided serve`` uses: no access log, client faults logged in one line, and
    a connection that has not sent a whole request head within ``timeout`` s closed.

    aiohttp's keep-alive timer starts when a connection opens and again after each answer, and
    closes it if no request has arrived by then: a header timeout and an idle timeout in one.
    """
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientFaultLog) for f in server_log.filters):
        server_log.addFilter(ClientFaultLog())
    return web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=timeout, logger=server_log
    )


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
    service: Service,
    *,
    token: str,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    body_timeout: float = DEFAULT_TIMEOUT,
    fetching: Fetching | None = None,
) -> web.Application:
    """The HTTP side of ``service``: reads are open, writes need ``Bearer <token>``.

    An upload body that pauses for ``body_timeout`` s is dropped; temporary upload files an
    earlier run left are removed at start-up.
    """
    if not token:
        raise ValueError("make_app needs a non-empty upload token")
    app = web.Application(middlewares=[guard])
    app[SERVICE] = service
    app[TOKEN] = token
    app[MAX_UPLOAD] = max_upload
    app[uploads.BODY_TIMEOUT] = body_timeout
    app.on_startup.append(uploads.remove_leftovers)
    app[UPLOAD_LOCKS] = {}
    # Builds by URL: refused unless the caller allows URL prefixes and gives a store.
    app[FETCHING] = fetching or Fetching(FetchSettings(), None)
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
    r.add_get("/api/dhcp", dhcp.get_dhcp)
    r.add_put("/api/builds/{name}", put_build_by_url)
    r.add_route("PUT", "/builds/{build}", uploads.put_build, expect_handler=expect_continue)
    r.add_route("POST", "/builds/{build}", uploads.put_build, expect_handler=expect_continue)
    r.add_route(
        "PUT", "/builds/{build}/{path:.+}", uploads.put_artifact, expect_handler=expect_continue
    )
    setup_web(app)  # the pages: /, /boards/<name>, /builds, /builds/<name>, /static/
    # Last: every other path is a served name; names may contain '/'.
    r.add_get("/{name:.+}", files.serve_artifact)  # add_get registers HEAD too
    return app
