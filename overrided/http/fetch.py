"""``PUT /api/builds/<name>``: a build named by URLs, fetched into the store, then published
exactly like an upload (``uploads.publish``).

Each file is fetched into a temporary file of the store (``overrided.fetch``), checked against
the sha256 the request gives, and kept as a blob; a file whose sha256 names a blob the store
holds already is not fetched at all. Only when every file is there are they staged into the
build folder and published: a failed, partial or mismatching fetch leaves the build as it was,
and the answer says which file failed and why.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Literal

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from overrided.fetch import (
    FetchError,
    FetchSettings,
    ProgressFn,
    client_session,
    fetch_file,
    parse_url,
    shown,
)
from overrided.http.context import SERVICE
from overrided.http.errors import HttpError, RequestError
from overrided.http.uploads import (
    Staged,
    answer,
    check_artifact_path,
    check_build_folder,
    check_build_name,
    publish,
)
from overrided.state import Event, EventKind, IndexResult
from overrided.store import Blob, Store, clone_or_copy

log = logging.getLogger(__name__)

MAX_FILES = 64
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Fetching:
    """What builds by URL need: the settings, and the store fetched files go to (``None``: the
    application has no store, so builds by URL are refused)."""

    settings: FetchSettings
    store: Store | None


FETCHING = web.AppKey("fetching", Fetching)


class FileByUrl(BaseModel):
    """One file of a build by URL, as the request names it."""

    model_config = ConfigDict(extra="forbid")

    name: str  # the artifact's path in the build: image.fit, modules-….cpio, vendor/x.dtb
    url: str
    sha256: str | None = None

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is not None:
            value = value.lower()
            if not _SHA256.fullmatch(value):
                raise ValueError("must be 64 hexadecimal digits")
        return value


class BuildByUrl(BaseModel):
    """The body of ``PUT /api/builds/<name>``."""

    model_config = ConfigDict(extra="forbid")

    files: list[FileByUrl] = Field(min_length=1, max_length=MAX_FILES)


Outcome = Literal["fetched", "in-store", "failed", "not-fetched"]


class FileOutcome(BaseModel):
    """What became of one file: fetched, found in the store by its sha256, failed, or not
    fetched because an earlier file failed."""

    name: str
    url: str  # without its query (a presigned URL's signature is a credential)
    sha256: str | None = None  # of the bytes stored; the request's when not fetched
    outcome: Outcome
    bytes: int = 0  # bytes fetched over the network (0 when found in the store)
    resumes: int = 0  # connections resumed with Range after a cut
    restarts: int = 0  # connections that had to start from the first byte again
    seconds: float = 0.0
    reason: str = ""  # why it failed


class BuildByUrlAnswer(BaseModel):
    """The 201 answer: every file's outcome, then what the published build gave the boards."""

    build: str
    files: list[FileOutcome]
    fetched_bytes: int  # over the network, all files
    on_build: list[str]  # boards now resolving to this build, "board: devboot name"
    not_on_build: list[str]  # boards that are not, "board: reason"
    result: IndexResult


class BuildByUrlRefusal(HttpError):
    """An error answer that also says what became of each file."""

    files: list[FileOutcome] = Field(default_factory=list)


def describe(err: ValidationError) -> str:
    """The first problem of a request body as ``files[1].sha256: must be …``."""
    first = err.errors()[0]
    loc = ""
    for part in first["loc"]:
        loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
    msg = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "missing":
        msg = "is required"
    elif first["type"] == "extra_forbidden":
        msg = "is not a field (files: [{name, url, sha256}])"
    return f"{loc}: {msg}" if loc else msg


def parse_request(body: bytes) -> BuildByUrl:
    """The request body, checked: names of build artifacts, each once; http(s) URLs."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(
            400, f'body is not JSON ({err}); send {{"files": [{{"name": …, "url": …}}]}}'
        ) from None
    try:
        request = BuildByUrl.model_validate(data)
    except ValidationError as err:
        raise RequestError(400, f"body: {describe(err)}") from None
    names: set[str] = set()
    for i, f in enumerate(request.files):
        try:
            check_artifact_path(f.name)
            parse_url(f.url)
        except RequestError as err:
            raise RequestError(400, f"files[{i}].name: {err}") from None
        except FetchError as err:
            raise RequestError(err.status, f"files[{i}].url: {err}") from None
        if f.name in names:
            raise RequestError(400, f"files[{i}].name: {f.name} is named twice")
        names.add(f.name)
    return request


class _Run:
    """One request's fetches: the outcomes so far and the events they publish."""

    def __init__(self, request: web.Request, build: str, files: list[FileByUrl]) -> None:
        self.service = request.app[SERVICE]
        self.build = build
        self.outcomes = [
            FileOutcome(
                name=f.name, url=shown(parse_url(f.url)), sha256=f.sha256, outcome="not-fetched"
            )
            for f in files
        ]

    def event(self, kind: EventKind, file: str | None = None, **data: object) -> None:
        """Publish one event of this build (``file``: the artifact it is about)."""
        self.service.events.publish(Event(kind=kind, build=self.build, name=file, data=data))

    def progress(self, name: str) -> ProgressFn:
        """A callback that publishes ``name``'s progress as ``fetch-progress`` events."""

        def report(received: int, total: int | None) -> None:
            self.event("fetch-progress", name, received=received, total=total)

        return report


async def _from_store(store: Store, digest: str) -> Blob | None:
    """The blob with ``digest``, if the store holds it and its bytes still match its name."""
    blob = store.blob(digest)
    if blob is None:
        return None
    if store.verified(digest) or await asyncio.to_thread(store.verify, digest) is True:
        return blob
    return None


def _stage(staged: Staged, path: str, blob: Blob) -> None:
    """Copy a blob into the build's staging (a reflink where the file system can)."""
    with blob.path.open("rb") as src, staged.add(path, "the request") as dst:
        clone_or_copy(src.fileno(), dst.fileno(), blob.size)
    staged.size += blob.size


async def _fetch_all(
    run: _Run, request: BuildByUrl, fetching: Fetching, staged: Staged
) -> list[Blob]:
    """Every file as a blob of the store, in the order of the request; the first failure
    raises ``FetchError`` (its outcome recorded)."""
    store = fetching.store
    assert store is not None
    blobs: list[Blob] = []
    async with client_session(fetching.settings) as session:
        for f, outcome in zip(request.files, run.outcomes, strict=True):
            start = time.monotonic()
            blob = await _from_store(store, f.sha256) if f.sha256 else None
            if blob is not None:
                outcome.outcome = "in-store"
            else:
                blob = await _fetch_one(run, f, outcome, fetching, store, session)
            outcome.seconds = round(time.monotonic() - start, 3)
            log.info(
                "build %s: %s %s from %s (%d bytes, %d resumes)",
                run.build,
                f.name,
                outcome.outcome,
                outcome.url,
                blob.size,
                outcome.resumes,
            )
            run.event("fetch-file", f.name, **outcome.model_dump(exclude={"name"}))
            blobs.append(blob)
    return blobs


async def _fetch_one(
    run: _Run,
    f: FileByUrl,
    outcome: FileOutcome,
    fetching: Fetching,
    store: Store,
    session: aiohttp.ClientSession,
) -> Blob:
    """Fetch one file into the store's temp folder, check its sha256, keep it as a blob."""
    tmp = store.temp_path(".fetch")
    start = time.monotonic()
    try:
        got = await fetch_file(
            session, parse_url(f.url), tmp, fetching.settings, run.progress(f.name)
        )
        outcome.bytes, outcome.resumes, outcome.restarts = got.size, got.resumes, got.restarts
        outcome.sha256 = got.sha256
        if f.sha256 is not None and got.sha256 != f.sha256:
            raise FetchError(
                422,
                f"the fetched bytes hash to sha256 {got.sha256}, the request says {f.sha256}; "
                "nothing stored",
            )
        try:
            blob = await asyncio.to_thread(store.adopt, tmp, got.sha256)
        except FileNotFoundError:
            # The store's collection removes temporary files idle for longer than the grace
            # period: a fetch that stalled that long lost its file.
            raise FetchError(
                503, "its temporary file in the store was removed while it was fetched; try again"
            ) from None
    except FetchError as err:
        outcome.outcome, outcome.reason = "failed", f"{f.name}: {err}"
        outcome.seconds = round(time.monotonic() - start, 3)
        run.event("fetch-file", f.name, **outcome.model_dump(exclude={"name"}))
        raise FetchError(err.status, outcome.reason) from None
    finally:
        tmp.unlink(missing_ok=True)  # an adopted file was renamed away already
    outcome.outcome = "fetched"
    return blob


def _refusal(status: int, message: str, outcomes: list[FileOutcome]) -> web.Response:
    body = BuildByUrlRefusal(error=message, status=status, files=outcomes)
    return web.json_response(text=body.model_dump_json(), status=status)


async def put_build_by_url(request: web.Request) -> web.Response:
    """PUT ``/api/builds/<name>`` with ``{"files": [{"name", "url", "sha256"?}, …]}``."""
    service = request.app[SERVICE]
    fetching = request.app[FETCHING]
    build = check_build_name(request.match_info["name"])
    check_build_folder(service.builds_dir, build)  # a link or a file: refused before fetching
    body = parse_request(await request.read())
    for i, f in enumerate(body.files):
        try:
            fetching.settings.check(parse_url(f.url))
        except FetchError as err:
            raise RequestError(err.status, f"files[{i}].url: {err}") from None
    if fetching.store is None:
        raise RequestError(503, "this server has no store to fetch builds into")
    run = _Run(request, build, body.files)
    staged = Staged(service.builds_dir / build)
    run.event("fetch-started", files=[o.model_dump() for o in run.outcomes])
    try:
        blobs = await _fetch_all(run, body, fetching, staged)
        for f, blob in zip(body.files, blobs, strict=True):
            await asyncio.to_thread(_stage, staged, f.name, blob)
        files = sorted(staged.files)
        result = await publish(request.app, staged)
    except (FetchError, RequestError) as err:
        message = str(err) if str(err).startswith(f"build {build}:") else f"build {build}: {err}"
        message = message if "previous" in message else f"{message}; previous build kept"
        log.warning("%s", message)
        run.event("fetch-failed", error=message, status=err.status)
        return _refusal(err.status, message, run.outcomes)
    finally:
        staged.discard()  # what was published was renamed away already
    upload = answer(result, files, staged.size)
    fetched = sum(o.bytes for o in run.outcomes)
    run.event("fetch-finished", fetched_bytes=fetched, on_build=upload.on_build)
    ans = BuildByUrlAnswer(
        build=build,
        files=run.outcomes,
        fetched_bytes=fetched,
        on_build=upload.on_build,
        not_on_build=upload.not_on_build,
        result=result,
    )
    return web.json_response(text=ans.model_dump_json(), status=201)
