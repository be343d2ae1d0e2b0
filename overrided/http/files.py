"""Artifacts over HTTP: GET and HEAD of catalog names, with ranges, validators and sendfile.

The handler opens the entry's blob once and sends from that file descriptor, so a catalog swap
during the transfer cannot mix old and new bytes (design.md, "Publish").
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from aiohttp import web

from overrided.http.context import SERVICE
from overrided.http.errors import json_error
from overrided.served import Entry, NotServed, OpenBlob, Transfer, clean_name
from overrided.state import Service

# RFC 9110 §14.1.2: ranges-specifier = range-unit "=" range-set; a range-set is a comma list of
# int-range ("first-last", "first-") or suffix-range ("-length").
_RANGE_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


@dataclass(frozen=True)
class ByteRange:
    """An inclusive byte range already clipped to the representation (RFC 9110 §14.1.2)."""

    first: int
    last: int

    @property
    def length(self) -> int:
        """Number of bytes in the range."""
        return self.last - self.first + 1

    def content_range(self, size: int) -> str:
        """The ``Content-Range`` value for a 206 response (RFC 9110 §14.4)."""
        return f"bytes {self.first}-{self.last}/{size}"


class Unsatisfiable(Exception):
    """No range of the set overlaps the representation: answer 416 (RFC 9110 §15.5.17)."""


def parse_range(header: str, size: int) -> list[ByteRange] | None:
    """The satisfiable ranges of a ``Range`` header, or ``None`` to ignore it and send it all.

    RFC 9110 §14.2: a server MAY ignore a Range header, and MUST ignore one with a unit it does not
    understand; an invalid ranges-specifier is ignored too. A set where no range is satisfiable
    raises ``Unsatisfiable``.
    """
    unit, sep, range_set = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    ranges: list[ByteRange] = []
    for spec in range_set.split(","):
        if not spec.strip():
            continue  # RFC 9110 §5.6.1: empty list elements are allowed and ignored
        m = _RANGE_SPEC.match(spec)
        if m is None or (not m[1] and not m[2]):
            return None
        if m[1]:
            first = int(m[1])
            last = int(m[2]) if m[2] else size - 1
            if m[2] and last < first:
                return None  # §14.1.1: a last-pos below first-pos makes the whole field invalid
            if first >= size:
                continue  # §14.1.1: satisfiable only if first-pos < length
            ranges.append(ByteRange(first, min(last, size - 1)))
        else:
            suffix = int(m[2])
            if suffix == 0 or size == 0:
                continue  # §14.1.1: a zero suffix-length is unsatisfiable
            ranges.append(ByteRange(max(0, size - suffix), size - 1))
    if not ranges:
        raise Unsatisfiable
    return ranges


def etag_of(entry: Entry, opened: OpenBlob) -> str:
    """A strong entity tag: the blob's content hash, or its identity on disk."""
    if entry.blob.digest:
        return f'"{entry.blob.digest[:32]}"'
    st = os.fstat(opened.fileno())
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


def etag_in(header: str, etag: str, *, weak: bool) -> bool:
    """Whether an ``If-None-Match``/``If-Range`` list names ``etag`` (RFC 9110 §8.8.3.2).

    ``weak=True`` is the weak comparison of If-None-Match (§13.1.2); If-Range needs the strong one
    (§13.1.5), where a ``W/`` tag never matches.
    """
    for item in header.split(","):
        tag = item.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            if not weak:
                continue
            tag = tag[2:]
        if tag == etag:
            return True
    return False


def _http_date(timestamp: float) -> str:
    return format_datetime(datetime.fromtimestamp(int(timestamp), UTC), usegmt=True)


def _parse_date(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _client(request: web.BaseRequest) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return request.remote or "unknown"


def _address(request: web.BaseRequest) -> str | None:
    """The client's address without the port, as the TFTP server names it: the key of pins."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0])
    return request.remote


async def serve_artifact(request: web.Request) -> web.StreamResponse:
    """GET/HEAD ``/<name>``: a catalog name (names may contain ``/``)."""
    service = request.app[SERVICE]
    raw = request.match_info["name"]
    started = time.monotonic()
    try:
        entry = service.lookup(clean_name(raw), client=_address(request))
    except NotServed as err:
        service.finished(
            Transfer(
                protocol="http",
                client=_client(request),
                name=raw,
                outcome="not-found",
                reason=str(err),
            )
        )
        return json_error(404, f"{raw}: not served: {err}")
    try:
        opened = entry.blob.open()
    except OSError as err:
        # The blob vanished or is unreadable: a service fault, but the caller learns what.
        service.finished(
            Transfer(
                protocol="http",
                client=_client(request),
                name=entry.name,
                board=entry.board,
                outcome="failed",
                reason=f"cannot open blob: {err.strerror}",
            )
        )
        return json_error(503, f"{entry.name}: cannot be read right now ({err.strerror}); retry")
    try:
        return await _send(request, service, entry, opened, started)
    finally:
        opened.close()


async def _send(
    request: web.Request, service: Service, entry: Entry, opened: OpenBlob, started: float
) -> web.StreamResponse:
    size = opened.size
    etag = etag_of(entry, opened)
    mtime = os.fstat(opened.fileno()).st_mtime
    headers = {
        "ETag": etag,
        "Last-Modified": _http_date(mtime),
        "Accept-Ranges": "bytes",  # RFC 9110 §14.3
        "Content-Type": "application/octet-stream",
        # Served names are versioned or change with each rebuild: revalidate every time.
        "Cache-Control": "no-cache",
    }
    # RFC 9110 §13.2.2: If-None-Match is evaluated before If-Modified-Since, which is then ignored.
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        if etag_in(inm, etag, weak=True):
            return web.Response(status=304, headers=_without_body(headers))
    else:
        ims = _parse_date(request.headers.get("If-Modified-Since", ""))
        if ims is not None and int(mtime) <= ims:
            return web.Response(status=304, headers=_without_body(headers))

    ranges: list[ByteRange] | None = None
    range_header = request.headers.get("Range")
    if range_header is not None and _if_range_holds(request.headers.get("If-Range"), etag, mtime):
        try:
            ranges = parse_range(range_header, size)
        except Unsatisfiable:
            # RFC 9110 §15.5.17: 416 carries Content-Range "bytes */<complete-length>".
            return json_error(
                416,
                f"{entry.name}: range {range_header!r} is outside the {size}-byte artifact",
                headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
            )
        # RFC 9110 §14.2 lets a server ignore a Range; several ranges are answered with the whole
        # artifact (200) rather than multipart/byteranges: boot clients ask for one range.
        if ranges is not None and len(ranges) > 1:
            ranges = None

    response = web.StreamResponse(status=200, headers=headers)
    first, count = 0, size
    if ranges:
        rng = ranges[0]
        first, count = rng.first, rng.length
        response.set_status(206)
        response.headers["Content-Range"] = rng.content_range(size)  # RFC 9110 §14.4
    response.content_length = count

    transfer = Transfer(
        protocol="http",
        client=_client(request),
        name=entry.name,
        board=entry.board,
        size=size,
        options={"range": f"{first}-{first + count - 1}"} if ranges else {},
        outcome="probe" if request.method == "HEAD" else "ok",
    )
    service.started(transfer)
    try:
        await response.prepare(request)
        if request.method != "HEAD" and count:
            await _sendfile(request, response, opened, first, count)
            transfer.sent = count
        await response.write_eof()
    except (ConnectionError, asyncio.CancelledError) as err:
        transfer.outcome = "aborted"
        transfer.reason = "client closed the connection" if not str(err) else str(err)
        raise
    finally:
        transfer.duration = time.monotonic() - started
        service.finished(transfer)
    return response


async def _sendfile(
    request: web.Request, response: web.StreamResponse, opened: OpenBlob, first: int, count: int
) -> None:
    """Send ``count`` bytes from ``first`` with the kernel's sendfile (no copy into Python)."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client closed the connection")
    loop = asyncio.get_running_loop()
    # A private file object over the blob's own descriptor: sendfile moves its offset, and
    # closefd=False leaves closing to the OpenBlob.
    with open(opened.fileno(), "rb", closefd=False) as f:
        try:
            await loop.sendfile(transport, f, first, count)
        except NotImplementedError:  # e.g. TLS transports: copy by offset instead
            sent = 0
            while sent < count:
                chunk = opened.read_at(first + sent, min(1 << 20, count - sent))
                if not chunk:
                    raise ConnectionError("artifact shrank while being sent") from None
                await response.write(chunk)
                sent += len(chunk)


def _if_range_holds(if_range: str | None, etag: str, mtime: float) -> bool:
    """RFC 9110 §13.1.5: send the range only if the validator still matches; else the whole."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith('"') or value.startswith("W/"):
        return etag_in(value, etag, weak=False)
    date = _parse_date(value)
    # A date validator must match exactly (the Last-Modified we sent is whole seconds).
    return date is not None and int(mtime) == int(date)


def _without_body(headers: dict[str, str]) -> dict[str, str]:
    # RFC 9110 §15.4.5: a 304 carries the validators, not the content headers.
    return {k: v for k, v in headers.items() if k in ("ETag", "Last-Modified", "Cache-Control")}
