"""Errors as JSON: every failure the HTTP side answers is ``{"error": "<what to do>", ...}``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from pydantic import BaseModel

from overrided.errors import OverridedError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(BaseModel):
    """The body of every error response."""

    error: str  # one line a person can act on
    status: int


class RequestError(OverridedError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def json_error(
    status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    """An error response with a JSON body naming what is wrong."""
    body = HttpError(error=message, status=status).model_dump_json()
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def error_answer(request: web.Request, exc: RequestError | web.HTTPException) -> web.Response:
    """The JSON answer to our ``RequestError`` or to one of aiohttp's HTML/plain errors."""
    if isinstance(exc, RequestError):
        return json_error(exc.status, str(exc))
    if exc.status == 404:
        message = f"{request.path}: not found (see /openapi.json for the API)"
    elif exc.status == 405:
        message = f"{request.method} is not allowed on {request.path}"
    else:
        message = exc.text or exc.reason
    return json_error(exc.status, message, headers=_kept_headers(exc))


def _kept_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
