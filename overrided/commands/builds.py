"""`overrided builds add NAME --url URL [--sha256 HEX] …`: a build by URL, from the shell.

The command asks a running ``overrided serve`` to fetch the files (``PUT /api/builds/<name>``)
and prints what became of each file and of each board. The server does the fetching, so the
URLs are the ones the server can reach.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from overrided.errors import OverridedError
from overrided.http.token import TOKEN_FILE

DEFAULT_SERVER = "http://127.0.0.1:8080"


class BuildsError(OverridedError):
    """The request could not be made, or the server refused it."""


class _AddUrl(argparse.Action):
    """``--url URL``: one more file; ``--sha256`` and ``--as`` after it describe that file."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        files: list[dict[str, str]] = list(getattr(namespace, "files", None) or [])
        if option_string == "--url":
            files.append({"url": str(values)})
        elif not files:
            parser.error(f"{option_string} describes the --url before it: give --url first")
        else:
            key = "sha256" if option_string == "--sha256" else "name"
            if key in files[-1]:
                parser.error(f"{option_string} given twice for --url {files[-1]['url']}")
            files[-1][key] = str(values)
        namespace.files = files


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``builds add``."""
    p = sub.add_parser("builds", help="builds of a running overrided serve")
    s = p.add_subparsers(dest="builds_command", metavar="ACTION", required=True)
    add = s.add_parser(
        "add",
        help="make a build of files the server fetches by URL",
        description="Ask a running overrided serve to fetch a build by URL (PUT "
        "/api/builds/NAME) and publish it; each --url may be followed by its --sha256 and "
        "--as FILE (default: the URL's last path segment).",
    )
    add.add_argument("name", help="build name")
    add.add_argument("--url", action=_AddUrl, required=True, help="a file of the build")
    add.add_argument("--sha256", action=_AddUrl, help="the sha256 of the --url before it")
    add.add_argument("--as", action=_AddUrl, metavar="FILE", help="its name in the build")
    add.add_argument(
        "--server",
        default=os.environ.get("OVERRIDED_URL", DEFAULT_SERVER),
        help=f"the server's base URL (env OVERRIDED_URL; default {DEFAULT_SERVER})",
    )
    add.add_argument("--token", default=os.environ.get("OVERRIDED_TOKEN"), help="upload token")
    add.add_argument(
        "--store",
        type=Path,
        default=Path(".overrided"),
        help="where to read the token when no --token or OVERRIDED_TOKEN is given",
    )
    add.set_defaults(func=run_add)


def request_files(files: list[dict[str, str]]) -> list[dict[str, str]]:
    """The request's files: each named by ``--as`` or by its URL's last path segment."""
    out = []
    for f in files:
        name = f.get("name") or urlsplit(f["url"]).path.rsplit("/", 1)[-1]
        if not name:
            raise BuildsError(f"--url {f['url']}: no file name in it; add --as FILE")
        out.append({"name": name, **{k: v for k, v in f.items() if k != "name"}})
    return out


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    path: Path = args.store / TOKEN_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError as err:
        raise BuildsError(
            f"no upload token: give --token or OVERRIDED_TOKEN ({path}: {err.strerror})"
        ) from None


def put_build(server: str, token: str, name: str, files: list[dict[str, str]]) -> Any:
    """``PUT /api/builds/<name>``: the server's JSON answer, or ``BuildsError`` with its error."""
    req = urllib.request.Request(
        f"{server.rstrip('/')}/api/builds/{name}",
        data=json.dumps({"files": files}).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=3600) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            message = str(json.loads(body)["error"])
        except (ValueError, KeyError, TypeError):
            message = body.decode(errors="replace").strip() or err.reason
        raise BuildsError(f"{message} (HTTP {err.code})") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise BuildsError(f"{server}: cannot reach overrided serve: {reason}") from None


def answer_lines(answer: dict[str, Any]) -> list[str]:
    """What a person reads: one line per file, then one per board."""
    lines = []
    for f in answer["files"]:
        if f["outcome"] == "in-store":
            lines.append(f"{f['name']}: in the store already (sha256 {f['sha256'][:12]}…)")
        else:
            resumed = f", resumed {f['resumes']}x" if f["resumes"] else ""
            lines.append(
                f"{f['name']}: fetched {f['bytes']} bytes in {f['seconds']:.1f} s{resumed} "
                f"(sha256 {f['sha256'][:12]}…)"
            )
    build = answer["build"]
    for line in answer["on_build"]:
        board, _, script = line.partition(": ")
        lines.append(f"board {board}: boots {build} via {script}")
    lines.extend(f"not on this build: {line}" for line in answer["not_on_build"])
    return lines


def run_add(args: argparse.Namespace) -> int:
    """Send the request, print the answer."""
    answer = put_build(args.server, _token(args), args.name, request_files(args.files))
    print("\n".join(answer_lines(answer)))
    return 0
