"""``/openapi.json``: the API described from the same pydantic models the handlers return."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic.json_schema import models_json_schema

from overrided import __version__, codecs
from overrided.dhcp import DhcpInfo
from overrided.http.api import MAX_JOURNAL, Fetch
from overrided.http.errors import HttpError
from overrided.http.fetch import BuildByUrl, BuildByUrlAnswer, BuildByUrlRefusal
from overrided.http.uploads import UploadAnswer
from overrided.state import BoardInfo, BuildInfo, Event

_MODELS = (
    BoardInfo,
    DhcpInfo,
    BuildInfo,
    Fetch,
    UploadAnswer,
    HttpError,
    Event,
    BuildByUrl,
    BuildByUrlAnswer,
    BuildByUrlRefusal,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("HttpError"), description)


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


_AUTH: list[dict[str, list[str]]] = [{"token": []}]
_UNAUTHORIZED = _error("No or wrong bearer token")
_BUILD = {
    **_path_param("build", "Build folder name (letters, digits, . _ + -)"),
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"},
}
_ARTIFACT = {
    **_path_param("path", "image.fit, modules-*.cpio*, Image*, zImage or [vendor/]*.dtb"),
    "schema": {
        "type": "string",
        "pattern": r"^(image\.fit|modules-[0-9A-Za-z._+-]+\.cpio(\.("
        + codecs.SUFFIX_ALTERNATION
        + r"))?|Image(\.gz)?|zImage|([A-Za-z0-9._+,@=-]+/)?[A-Za-z0-9._+,@=-]+\.dtb)$",
    },
}


def _upload_responses() -> dict[str, Any]:
    return {
        "201": {
            "description": "Stored and indexed; text, or JSON with Accept: application/json",
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/json": {"schema": _ref("UploadAnswer")},
            },
        },
        "400": _error("Bad name, a path named twice, or an incomplete body"),
        "401": _UNAUTHORIZED,
        "408": _error("No body bytes for the HTTP timeout (--http-timeout); nothing stored"),
        "409": _error(
            "The build folder (or a folder on the path) is a link, or a file stands "
            "where a folder is needed"
        ),
        "413": _error("Over the upload size limit"),
        "415": _error("PUT/POST of a whole build that is neither a tarball nor multipart"),
        "417": _error("An Expect other than 100-continue"),
        "422": _error("The build was refused by indexing; the previous files are kept"),
        "500": _error("An unexpected error; the log has the details, nothing is stored"),
        "507": _error("The disk is full; nothing is stored"),
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (JSON Schema 2020-12, which pydantic emits)."""
    _, defs = models_json_schema(
        [(m, "serialization") for m in _MODELS], ref_template="#/components/schemas/{model}"
    )
    schemas = defs["$defs"]
    artifact_headers = {"ETag": {"schema": {"type": "string"}}}
    artifact = {
        "parameters": [_path_param("name", "A served name; may contain '/' (pxelinux.cfg/...)")],
        "get": {
            "summary": "Download a served artifact (Range, If-Range, If-None-Match honoured)",
            "operationId": "getArtifact",
            "responses": {
                "200": {
                    "description": "The artifact",
                    "headers": artifact_headers,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
                "206": {"description": "One byte range of the artifact"},
                "304": {"description": "Not modified (ETag matched)"},
                "404": _error("Not served, with the reason"),
                "416": _error("Range outside the artifact"),
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "overrided",
            "version": __version__,
            "description": "Per-board boot artifacts, uploads of kernel builds, and what "
            "every board fetched. Writes need `Authorization: Bearer <token>`.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/api/boards": {
                "get": {
                    "summary": "Every board as resolved now",
                    "operationId": "listBoards",
                    "responses": {
                        "200": _json({"type": "array", "items": _ref("BoardInfo")}, "Boards")
                    },
                }
            },
            "/api/boards/{name}": {
                "parameters": [_path_param("name", "Board name or hostname")],
                "get": {
                    "summary": "One board: build, configuration, reason, served names, warnings",
                    "operationId": "getBoard",
                    "responses": {
                        "200": _json(_ref("BoardInfo"), "The board"),
                        "404": _error("No such board"),
                    },
                },
            },
            "/api/boards/{name}/journal": {
                "parameters": [
                    _path_param("name", "Board name or hostname"),
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_JOURNAL},
                    },
                ],
                "get": {
                    "summary": "The board's last fetches over TFTP and HTTP, newest first",
                    "operationId": "getBoardJournal",
                    "responses": {
                        "200": _json({"type": "array", "items": _ref("Fetch")}, "Fetches"),
                        "400": _error("Bad limit"),
                        "404": _error("No such board"),
                    },
                },
            },
            "/api/dhcp": {
                "get": {
                    "summary": "DHCP (serve --dhcp): mode, dnsmasq's state or failure, each "
                    "board's boot file, the leases (MAC, IP, board, last seen)",
                    "operationId": "getDhcp",
                    "responses": {"200": _json(_ref("DhcpInfo"), "DHCP")},
                }
            },
            "/api/builds": {
                "get": {
                    "summary": "Every build folder",
                    "operationId": "listBuilds",
                    "responses": {
                        "200": _json({"type": "array", "items": _ref("BuildInfo")}, "Builds")
                    },
                }
            },
            "/api/builds/{name}": {
                "parameters": [_path_param("name", "Build name")],
                "get": {
                    "summary": "One build with its configurations and their compatibles",
                    "operationId": "getBuild",
                    "responses": {
                        "200": _json(_ref("BuildInfo"), "The build"),
                        "404": _error("No such build"),
                    },
                },
                "put": {
                    "summary": "Make the build of files fetched by URL, then publish it like an "
                    "upload; files whose sha256 the store holds are not fetched",
                    "operationId": "putBuildByUrl",
                    "security": _AUTH,
                    "requestBody": {
                        "content": {"application/json": {"schema": _ref("BuildByUrl")}}
                    },
                    "responses": {
                        "201": _json(_ref("BuildByUrlAnswer"), "Fetched, stored and published"),
                        **{
                            code: _json(_ref("BuildByUrlRefusal"), what + "; previous build kept")
                            for code, what in (
                                ("400", "Bad body, name or URL"),
                                ("403", "A URL, or a redirect, outside the allowed prefixes"),
                                ("409", "The build folder is a link or a file"),
                                ("413", "A file larger than the fetch limit"),
                                ("422", "A sha256 mismatch, or the build refused by indexing"),
                                ("502", "The store answered an error, looped, or cut the file"),
                                ("503", "A fetched file was lost before it was kept"),
                                ("504", "A file not fetched within the fetch timeout"),
                            )
                        },
                        "401": _UNAUTHORIZED,
                    },
                },
                "delete": {
                    "summary": "Remove a build folder; boards re-resolve",
                    "operationId": "deleteBuild",
                    "security": _AUTH,
                    "responses": {
                        "200": _json({"type": "object"}, "Removed"),
                        "400": _error("Bad build name"),
                        "401": _UNAUTHORIZED,
                        "404": _error("No such build"),
                    },
                },
            },
            "/api/events": {
                "get": {
                    "summary": "Server-sent events: builds indexed, boards rendered, transfers",
                    "operationId": "streamEvents",
                    "parameters": [
                        {
                            "name": "kinds",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "Comma list of kinds",
                        },
                        {
                            "name": "board",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "text/event-stream; each data line is an Event",
                            "content": {"text/event-stream": {"schema": _ref("Event")}},
                        },
                        "400": _error("Unknown event kind"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "metrics",
                    "responses": {"200": {"description": "Prometheus text format"}},
                }
            },
            "/builds/{build}": {
                "parameters": [_BUILD],
                "put": {
                    "summary": "Upload a tarball of build outputs",
                    "operationId": "putBuildTarball",
                    "security": _AUTH,
                    "requestBody": {
                        "content": {
                            "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                            "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                        }
                    },
                    "responses": _upload_responses(),
                },
                "post": {
                    "summary": "Upload several artifacts as multipart/form-data",
                    "operationId": "postBuildFiles",
                    "security": _AUTH,
                    "requestBody": {
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string", "format": "binary"},
                                }
                            }
                        }
                    },
                    "responses": _upload_responses(),
                },
            },
            "/builds/{build}/{path}": {
                "parameters": [
                    _BUILD,
                    _ARTIFACT,
                ],
                "put": {
                    "summary": "Upload one artifact (curl -T)",
                    "operationId": "putArtifact",
                    "security": _AUTH,
                    "requestBody": {
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        }
                    },
                    "responses": _upload_responses(),
                },
            },
            "/{name}": artifact,
        },
    }


async def serve_openapi(request: web.Request) -> web.Response:
    """GET ``/openapi.json``."""
    return web.json_response(document())
