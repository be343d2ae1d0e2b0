"""Artifacts over HTTP: GET and HEAD of catalog names, with ranges, validators and sendfile.

A served name is a ``View``: ranges of immutable files and literal bytes, in order. The handler
opens the entry's view once (one descriptor per file) and sends every file range from those
descriptors with the kernel's ``sendfile`` and every literal piece with a plain write, so a
catalog swap during the transfer cannot mix old and new bytes (docs/design.md, "Views, not copies").

What to answer (304, 416, 206 or 200) is decided first from the request's headers alone
(``plan``); the handler then carries it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO, Literal

from aiohttp import web

from overrided.http.context import SERVICE
from overrided.http.errors import json_error
from overrided.served import Entry, Held, NotServed, OpenView, Transfer, View, clean_name
from overrided.state import Service

# RFC 9110 §14.1.2: ranges-specifier = range-unit "=" range-set; a range-set is a comma list of
# int-range ("first-last", "first-") or suffix-range ("-length").
_RANGE_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")

# Bytes read per write when the transport cannot sendfile: large enough that a 64 MiB artifact
# takes few round trips through the event loop, small enough to stay out of the way of others.
_COPY_CHUNK = 1 << 20


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


class Shrank(ConnectionError):
    """A file of the view ended before its piece did: the response cannot be completed.

    A ``ConnectionError`` so that aiohttp drops the connection: after the ``Content-Length`` has
    been sent, closing is the only way to tell the client the body is incomplete (RFC 9112 §8).
    """


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


def etag_of(view: View, opened: OpenView) -> str:
    """A strong entity tag for ``view`` as opened (RFC 9110 §8.8.3).

    The view's digest names its pieces, and a piece of a store blob names the blob's content,
    so equal pieces give equal tags and any other piece another tag. A piece of a file with no
    content hash (a plain folder's file) is named only by its path, which is no strong
    validator for a file that may be rewritten in place (§8.8.1): the identity on disk of the
    file actually opened (device, inode, size, mtime) is added for those.
    """
    if all(p.path is None or p.digest for p in view.pieces):
        return f'"{view.digest[:32]}"'
    h = hashlib.sha256(view.digest.encode())
    seen: set[int] = set()
    # ``pieces`` yields one part per piece of the view, in the view's order.
    for piece, part in zip(view.pieces, opened.pieces(0, opened.size), strict=True):
        if piece.path is None or piece.digest or not isinstance(part, tuple) or part[0] in seen:
            continue
        seen.add(part[0])
        st = os.fstat(part[0])
        h.update(f"\0{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}".encode())
    return f'"{h.hexdigest()[:32]}"'


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


@dataclass(frozen=True)
class Plan:
    """The answer to a GET or HEAD of one representation, decided before any I/O."""

    status: Literal[200, 206, 304, 416]
    first: int = 0  # the body is the representation's bytes [first, first + count)
    count: int = 0
    range: ByteRange | None = None  # the range a 206 sends


def plan(method: str, headers: Mapping[str, str], etag: str, size: int) -> Plan:
    """What to answer a ``method`` request with ``headers`` for a ``size``-byte representation.

    A view has no modification date that is a validator: its pieces' files are shared by many
    views and may be older than the view (a trimmed FIT around ranges of a build's FIT, a rollback
    to an older build), and its literal pieces have none at all. So no ``Last-Modified`` is sent
    (RFC 9110 §8.8.2.1 asks for it only where it can be determined consistently), and the strong
    ``ETag`` is the only validator.
    """
    # §13.2.2 step 3: If-None-Match; for GET and HEAD a match is 304 (§13.1.2), compared weakly.
    inm = headers.get("If-None-Match")
    if inm is not None and etag_in(inm, etag, weak=True):
        return Plan(304)
    # §13.2.2 step 4: If-Modified-Since needs a last modification date, and a view has none: the
    # field is ignored (§13.1.3) and the representation sent.
    whole = Plan(200, 0, size)
    range_header = headers.get("Range")
    # §14.2: GET is the only method with range handling; a Range on HEAD is ignored.
    if method != "GET" or range_header is None:
        return whole
    # §13.2.2 step 5: If-Range decides whether the Range applies at all (§13.1.5).
    if not _if_range_holds(headers.get("If-Range"), etag):
        return whole
    try:
        ranges = parse_range(range_header, size)
    except Unsatisfiable:
        return Plan(416)
    # §14.2 lets a server ignore a Range; several ranges are answered with the whole artifact
    # (200) rather than multipart/byteranges: boot clients ask for one range.
    if ranges is None or len(ranges) > 1:
        return whole
    rng = ranges[0]
    return Plan(206, rng.first, rng.length, rng)


def _if_range_holds(if_range: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.5: the range condition, true only for a strong match of our entity tag.

    An HTTP-date validator can only hold against a ``Last-Modified`` we sent, and we send none:
    the condition is false and the whole representation is the answer.
    """
    if if_range is None:
        return True
    return etag_in(if_range.strip(), etag, weak=False)


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


async def lookup(service: Service, name: str, client: str | None) -> Entry:
    """``service.lookup``, waiting while the service holds the request for a render in
    progress (it stops holding after a bound of its own, then says why not)."""
    while True:
        try:
            return service.lookup(name, client=client)
        except Held as held:
            # shield: one waiter leaving (a client closing) must not cancel the others' wait.
            # Asked again each second at least: the service's bound applies even if nothing
            # is published meanwhile.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(held.ready), 1.0)


async def serve_artifact(request: web.Request) -> web.StreamResponse:
    """GET/HEAD ``/<name>``: a catalog name (names may contain ``/``)."""
    service = request.app[SERVICE]
    raw = request.match_info["name"]
    started = time.monotonic()
    try:
        entry = await lookup(service, clean_name(raw), _address(request))
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
        opened = entry.view.open()
    except OSError as err:
        # A file of the view vanished or is unreadable: a service fault, but the caller learns what.
        service.finished(
            Transfer(
                protocol="http",
                client=_client(request),
                name=entry.name,
                board=entry.board,
                outcome="failed",
                reason=f"cannot open view: {err.strerror}",
            )
        )
        return json_error(503, f"{entry.name}: cannot be read right now ({err.strerror}); retry")
    try:
        return await _send(request, service, entry, opened, started)
    finally:
        opened.close()


async def _send(
    request: web.Request, service: Service, entry: Entry, opened: OpenView, started: float
) -> web.StreamResponse:
    """Answer the request from the opened view as ``plan`` decides; journal a sent body."""
    size = opened.size
    etag = etag_of(entry.view, opened)
    validators = {
        "ETag": etag,
        # Served names are versioned or change with each rebuild: revalidate every time.
        "Cache-Control": "no-cache",
    }
    todo = plan(request.method, request.headers, etag, size)
    if todo.status == 304:
        # RFC 9110 §15.4.5: a 304 carries the validators, not the content headers.
        return web.Response(status=304, headers=validators)
    if todo.status == 416:
        # RFC 9110 §15.5.17: 416 carries Content-Range "bytes */<complete-length>".
        return json_error(
            416,
            f"{entry.name}: range {request.headers.get('Range')!r} is outside the {size}-byte "
            "artifact",
            headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
        )

    head = request.method == "HEAD"
    # A body of literal bytes only (a script, a PXE menu) goes out with the headers in one
    # write; file ranges go by sendfile, after the headers.
    literal: bytes | None = None
    if not head and todo.count and not opened.fds:  # a view of literal pieces opens no file
        literal = opened.read_at(todo.first, todo.count)
    response = (
        web.StreamResponse(status=todo.status, headers=validators)
        if literal is None or head
        else web.Response(status=todo.status, headers=validators, body=literal)
    )
    response.headers["Accept-Ranges"] = "bytes"  # RFC 9110 §14.3
    response.headers["Content-Type"] = "application/octet-stream"
    if todo.range is not None:
        response.headers["Content-Range"] = todo.range.content_range(size)  # RFC 9110 §14.4
    if literal is None:
        response.content_length = todo.count

    transfer = Transfer(
        protocol="http",
        client=_client(request),
        name=entry.name,
        board=entry.board,
        size=size,
        options={"range": f"{todo.first}-{todo.first + todo.count - 1}"} if todo.range else {},
        outcome="probe" if head else "ok",
    )
    if not head:
        service.started(transfer)  # a HEAD sends no body: it only ends
    try:
        await response.prepare(request)
        if literal is not None:
            transfer.sent = len(literal)  # written by write_eof, with the headers
        elif not head and todo.count:
            await _send_body(request, response, opened, todo.first, todo.count, transfer)
        await response.write_eof()
    except Shrank as err:
        transfer.outcome = "failed"
        transfer.reason = str(err)
        raise
    except (ConnectionError, asyncio.CancelledError) as err:
        transfer.outcome = "aborted"
        transfer.reason = "client closed the connection" if not str(err) else str(err)
        raise
    finally:
        transfer.duration = time.monotonic() - started
        service.finished(transfer)
    return response


async def _send_body(
    request: web.Request,
    response: web.StreamResponse,
    opened: OpenView,
    first: int,
    count: int,
    transfer: Transfer,
) -> None:
    """Send the view's bytes ``[first, first + count)``: each file range with the kernel's
    sendfile (no copy into Python), each literal piece with a write; ``transfer.sent`` grows
    as each piece is sent.

    An event loop or transport without sendfile support raises ``NotImplementedError`` on the
    first file range; that range and every later one are then copied by offset.
    """
    loop = asyncio.get_running_loop()
    files: dict[int, BinaryIO] = {}  # a private file object per descriptor, for loop.sendfile
    native = True
    with contextlib.ExitStack() as closing:
        for part in opened.pieces(first, count):
            if isinstance(part, bytes):
                await response.write(part)
                transfer.sent += len(part)
                continue
            fd, offset, length = part
            sent = -1
            if native:
                transport = request.transport
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("client closed the connection")
                f = files.get(fd)
                if f is None:
                    # closefd=False: the descriptor belongs to the OpenView, which closes it.
                    f = files[fd] = closing.enter_context(open(fd, "rb", closefd=False))
                try:
                    # Literal pieces written before are flushed first: loop.sendfile waits for
                    # the transport's buffer to drain, so the bytes stay in order.
                    sent = await loop.sendfile(transport, f, offset, length)
                except NotImplementedError:
                    native = False
            if not native:
                sent = await _copy(response, fd, offset, length)
            transfer.sent += sent
            if sent < length:
                raise Shrank(
                    f"a file of the view ended {length - sent} bytes before its piece"
                    f" (at file offset {offset + sent})"
                )


async def _copy(response: web.StreamResponse, fd: int, offset: int, length: int) -> int:
    """Copy ``length`` bytes of ``fd`` from ``offset`` into the response; the bytes copied
    (short only if the file ends first)."""
    done = 0
    while done < length:
        chunk = os.pread(fd, min(_COPY_CHUNK, length - done), offset + done)
        if not chunk:
            break
        await response.write(chunk)
        done += len(chunk)
    return done
