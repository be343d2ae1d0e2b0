"""Builds by URL: one file fetched over HTTP(S) into a temporary file, bounded and checked.

The farm's artifact store (an S3-compatible bucket, a KernelCI-style storage, any HTTP server)
holds a build once; each lab's instance fetches it from there. A fetch is bounded in size, in
time and in redirects, and every URL it touches, redirects included, must start with one of the
allowed prefixes. A connection cut mid-file is resumed with ``Range`` where the server allows it
(RFC 9110 §14.3 ``Accept-Ranges``), guarded by ``If-Range`` (§13.1.5) so that bytes of two
different files are never joined; otherwise the file is fetched again from its first byte. The
sha256 is computed while the bytes are written, so the digest check costs no second read.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, BinaryIO

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from yarl import URL

from overrided.errors import OverridedError

CHUNK = 1 << 20
SCHEMES = ("http", "https")
# RFC 9110 §15.4: the redirects that name the next URL in Location.
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Seconds between two progress reports of one file.
PROGRESS_EVERY = 0.5
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class FetchError(OverridedError):
    """A fetch that failed or was refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def shown(url: URL) -> str:
    """A URL as logs and answers show it: without user info, and without its query, which in a
    presigned S3 URL is a credential (``X-Amz-Signature``)."""
    if not url.is_absolute():
        return str(url.with_query(None))[:200]
    plain = url.with_user(None).with_fragment(None)
    return str(plain.with_query(None)) + ("?…" if url.raw_query_string else "")


def parse_url(raw: str) -> URL:
    """An absolute http(s) URL, kept exactly as written (a presigned URL's signature covers its
    encoding); ``FetchError(400)`` when it is anything else."""
    try:
        url = URL(raw, encoded=True)
    except (ValueError, TypeError) as err:
        raise FetchError(400, f"{raw[:200]!r} is not a URL: {err}") from None
    if url.scheme not in SCHEMES or not url.host:
        raise FetchError(400, f"{shown(url)}: give an absolute http:// or https:// URL")
    if any(c in raw for c in "\r\n\t ") or not raw.isprintable():
        raise FetchError(400, f"{shown(url)}: a URL holds no spaces or control characters")
    # Checked on the decoded path: %2e%2e is '..' to many servers.
    if any(part in (".", "..") for part in url.path.split("/")):
        raise FetchError(400, f"{shown(url)}: '.' and '..' path segments are not accepted")
    return url


def _origin(url: URL) -> tuple[str, str, int | None]:
    return url.scheme, (url.host or "").lower(), url.port


def allowed_by(url: URL, prefix: URL) -> bool:
    """Whether ``url`` lies below ``prefix``: the same scheme, host and port, and a path that is
    the prefix's path or continues it. A prefix path not ending in ``/`` is a whole segment:
    ``/kernels`` allows ``/kernels/x`` but not ``/kernels-old/x``."""
    if _origin(url) != _origin(prefix):
        return False
    base = prefix.path or "/"
    if base.endswith("/"):
        return url.path.startswith(base)
    return url.path == base or url.path.startswith(base + "/")


def check_prefix(raw: str) -> str:
    """One allowed prefix as the settings hold it, or ``ValueError`` saying why not."""
    try:
        prefix = URL(raw)
    except ValueError as err:
        raise ValueError(f"{raw!r} is not a URL: {err}") from None
    if prefix.scheme not in SCHEMES or not prefix.host:
        raise ValueError(f"{raw!r}: a prefix is an http:// or https:// URL with a host")
    if prefix.raw_query_string or prefix.fragment or prefix.user:
        raise ValueError(f"{raw!r}: a prefix has no query, fragment or user")
    return raw


class FetchSettings(BaseModel):
    """Where builds may be fetched from, and how much a fetch of one file may take."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: tuple[str, ...] = ()  # URL prefixes; none: builds by URL are refused
    max_size: Annotated[int, Field(gt=0)] = 4 << 30  # bytes of one file
    timeout: Annotated[float, Field(gt=0)] = 1800.0  # seconds for one file, resumes included
    stall: Annotated[float, Field(gt=0)] = 60.0  # seconds without a byte: the connection drops
    redirects: Annotated[int, Field(ge=0, le=20)] = 5
    resumes: Annotated[int, Field(ge=0, le=100)] = 3  # new connections after a cut, per file

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_prefix(p) for p in value)

    def check(self, url: URL) -> None:
        """``FetchError(403)`` unless ``url`` lies below an allowed prefix."""
        if not self.allow:
            raise FetchError(
                403,
                f"{shown(url)}: builds by URL are off on this server; allow the artifact store "
                "with `overrided serve --allow-url PREFIX` (or fetch.allow in --config)",
            )
        if not any(allowed_by(url, URL(p)) for p in self.allow):
            raise FetchError(
                403,
                f"{shown(url)} is outside the allowed URL prefixes ({', '.join(self.allow)}); "
                "nothing fetched",
            )


@dataclass
class Fetched:
    """What one fetch wrote: its size and sha256, the URL that answered, how often it resumed."""

    size: int
    sha256: str
    url: URL
    resumes: int
    restarts: int  # new connections that had to start again from the first byte


ProgressFn = Callable[[int, int | None], None]  # (bytes received, total or None)


@dataclass
class _Attempt:
    """The state of one file's fetch across its connections."""

    dst: BinaryIO
    limit: int
    received: int = 0
    total: int | None = None
    validator: str | None = None  # a strong ETag, or Last-Modified, for If-Range
    ranges: bool = False  # the server said Accept-Ranges: bytes
    restarts: int = 0

    def __post_init__(self) -> None:
        self.hash = hashlib.sha256()

    def restart(self) -> None:
        """Forget what arrived: the next bytes are the file's first."""
        if self.received:
            self.restarts += 1
        self.dst.seek(0)
        self.dst.truncate()
        self.hash = hashlib.sha256()
        self.received = 0


def _too_big(url: URL, limit: int) -> FetchError:
    return FetchError(
        413,
        f"{shown(url)} is larger than the limit of {limit} bytes; nothing stored (raise it with "
        "`overrided serve --fetch-max-size` or fetch.max_size)",
    )


def _progress(received: int, total: int | None) -> str:
    return f"{received} of {total} bytes" if total is not None else f"{received} bytes"


async def _open(
    session: aiohttp.ClientSession, url: URL, headers: dict[str, str], settings: FetchSettings
) -> tuple[aiohttp.ClientResponse, URL]:
    """GET ``url``, following at most ``settings.redirects`` redirects by hand, so that each
    hop is checked against the allowed prefixes and a loop is named as one."""
    seen = [url]
    for _ in range(settings.redirects + 1):
        resp = await session.get(url, headers=headers, allow_redirects=False)
        if resp.status not in REDIRECTS:
            return resp, url
        location = resp.headers.get("Location")
        resp.release()
        if not location:
            raise FetchError(502, f"{shown(url)}: {resp.status} redirect without a Location")
        nxt = url.join(URL(location, encoded=True))
        if nxt in seen:
            loop = " → ".join(shown(u) for u in [*seen[seen.index(nxt) :], nxt])
            raise FetchError(502, f"redirect loop: {loop}; nothing stored")
        try:
            settings.check(parse_url(str(nxt)))
        except FetchError as err:
            raise FetchError(403, f"{shown(url)} redirects: {err}") from None
        seen.append(nxt)
        url = nxt
    raise FetchError(
        502,
        f"{shown(seen[0])}: more than {settings.redirects} redirects (ends at {shown(url)}); "
        "nothing stored",
    )


def _content_range_start(value: str | None) -> int | None:
    """The first byte of a 206's ``Content-Range: bytes a-b/c`` (RFC 9110 §14.4)."""
    m = _CONTENT_RANGE.fullmatch((value or "").strip())
    return int(m.group(1)) if m else None


async def _one_connection(
    session: aiohttp.ClientSession,
    url: URL,
    state: _Attempt,
    settings: FetchSettings,
    progress: ProgressFn,
) -> URL:
    """One GET of the file (or of its rest): write what arrives; the URL that answered."""
    headers = {"Accept-Encoding": "identity"}
    if state.received and state.ranges:
        headers["Range"] = f"bytes={state.received}-"
        if state.validator:
            headers["If-Range"] = state.validator
    elif state.received:
        state.restart()  # no ranges: the whole file again
    resp, answered = await _open(session, url, headers, settings)
    async with resp:
        if resp.status == 206 and state.received:
            if _content_range_start(resp.headers.get("Content-Range")) != state.received:
                raise FetchError(
                    502,
                    f"{shown(answered)}: asked for the bytes from {state.received}, got "
                    f"Content-Range {resp.headers.get('Content-Range')!r}; nothing stored",
                )
        elif resp.status == 200:
            # A 200 to a Range request means the file changed (If-Range) or the server ignores
            # ranges: what arrived so far is dropped and the whole file is taken.
            state.restart()
            state.total = resp.content_length
            etag = resp.headers.get("ETag", "")
            strong = etag if etag and not etag.startswith("W/") else None
            state.validator = strong or resp.headers.get("Last-Modified")
            state.ranges = resp.headers.get("Accept-Ranges", "").strip().lower() == "bytes"
        else:
            raise FetchError(
                502, f"GET {shown(answered)}: {resp.status} {resp.reason}; nothing stored"
            )
        if state.total is not None and state.total > state.limit:
            raise _too_big(answered, state.limit)
        loop = asyncio.get_running_loop()
        last = 0.0
        async for chunk in resp.content.iter_chunked(CHUNK):
            state.received += len(chunk)
            if state.received > state.limit:
                raise _too_big(answered, state.limit)
            state.hash.update(chunk)
            await loop.run_in_executor(None, state.dst.write, chunk)
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                progress(state.received, state.total)
        if state.total is not None and state.received < state.total:
            # aiohttp raises this itself for a short Content-Length body; belt and braces.
            raise aiohttp.ClientPayloadError("the body ended early")
        progress(state.received, state.total)
    return answered


async def fetch_file(
    session: aiohttp.ClientSession,
    url: URL,
    dst: Path,
    settings: FetchSettings,
    progress: ProgressFn,
) -> Fetched:
    """Fetch ``url`` into ``dst`` (created or truncated): size, sha256, resumes.

    Raises ``FetchError`` with the status to answer: 403 for a redirect outside the allowed
    prefixes, 413 past ``max_size``, 502 for an error status, a redirect loop or a connection
    lost more than ``resumes`` times, 504 past ``timeout``.
    """
    settings.check(url)
    resumes = 0
    with dst.open("wb") as f:
        state = _Attempt(f, settings.max_size)
        try:
            async with asyncio.timeout(settings.timeout):
                while True:
                    try:
                        answered = await _one_connection(session, url, state, settings, progress)
                        break
                    except aiohttp.ClientError as err:  # refused, reset, cut, stalled
                        if resumes >= settings.resumes:
                            raise FetchError(
                                502,
                                f"{shown(url)}: connection lost after "
                                f"{_progress(state.received, state.total)} "
                                f"({_reason(err)}), {resumes} resume(s) tried; nothing stored",
                            ) from None
                        resumes += 1
                        await asyncio.sleep(min(0.5 * 2**resumes, 10.0))
        except TimeoutError:
            raise FetchError(
                504,
                f"{shown(url)}: not fetched within {settings.timeout:g} s "
                f"({_progress(state.received, state.total)}); nothing stored",
            ) from None
    return Fetched(state.received, state.hash.hexdigest(), answered, resumes, state.restarts)


def _reason(err: aiohttp.ClientError) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]


def client_session(settings: FetchSettings) -> aiohttp.ClientSession:
    """The session fetches use: raw bytes (no decompression), a stall timeout per read."""
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=min(settings.stall, 30.0), sock_read=settings.stall
    )
    return aiohttp.ClientSession(
        timeout=timeout,
        auto_decompress=False,
        headers={"User-Agent": "overrided"},
        # Not kept between files: a killed server must not leave a dead pooled connection.
        connector=aiohttp.TCPConnector(force_close=True),
    )


def add_options(parser: argparse.ArgumentParser) -> None:
    """``overrided serve``'s options for builds by URL (``[fetch]`` in ``--config``)."""
    d = FetchSettings()
    parser.add_argument(
        "--allow-url",
        action="append",
        metavar="PREFIX",
        help="URL prefix builds may be fetched from (PUT /api/builds/<name>); repeat for more; "
        "none: builds by URL are refused",
    )
    parser.add_argument(
        "--fetch-max-size", type=int, default=d.max_size, help="bytes one fetched file may have"
    )
    parser.add_argument(
        "--fetch-timeout", type=float, default=d.timeout, help="seconds one file may take"
    )
    parser.add_argument(
        "--fetch-stall", type=float, default=d.stall, help="seconds without a byte: reconnect"
    )
    parser.add_argument(
        "--fetch-redirects", type=int, default=d.redirects, help="redirects followed at most"
    )
    parser.add_argument(
        "--fetch-resumes", type=int, default=d.resumes, help="reconnections per file at most"
    )


def settings_from(args: argparse.Namespace) -> FetchSettings:
    """The fetch settings ``add_options``' options describe; ``FetchError`` naming the option."""
    try:
        return FetchSettings(
            allow=tuple(args.allow_url or ()),
            max_size=args.fetch_max_size,
            timeout=args.fetch_timeout,
            stall=args.fetch_stall,
            redirects=args.fetch_redirects,
            resumes=args.fetch_resumes,
        )
    except ValidationError as err:
        first = err.errors()[0]
        option = "--allow-url" if first["loc"][0] == "allow" else f"--fetch-{first['loc'][0]}"
        option = option.replace("_", "-")
        message = str(first["msg"]).removeprefix("Value error, ")
        raise FetchError(400, f"{option}: {message}") from None
