"""Uploads: ``make && curl -T`` into ``kernel-builds/<build>/``, then index at once.

Every upload streams into a dot-named temporary file inside the builds folder (the watcher
ignores dotfiles), becomes visible by one ``rename``, and is indexed before the response is sent.
If indexing refuses what arrived, the previous files are put back, so the board keeps booting the
build it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel

from overrided.errors import OverridedError
from overrided.http.context import MAX_UPLOAD, SERVICE, UPLOAD_LOCKS
from overrided.http.errors import RequestError
from overrided.state import BoardInfo, IndexResult, Service

CHUNK = 1 << 20
_BUILD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_+,@=-][A-Za-z0-9._+,@=-]{0,127}$")
# The artifact kinds a build folder holds (design.md, "Sources").
ARTIFACT_PATTERNS = (
    "image.fit",
    "modules-*.cpio",
    "modules-*.cpio.*",
    "Image",
    "Image.*",
    "zImage",
    "*.dtb",
)
TAR_TYPES = ("application/x-tar", "application/tar")
TARGZ_TYPES = ("application/gzip", "application/x-gzip", "application/x-compressed-tar")
MAX_TAR_MEMBERS = 10_000


def check_build_name(name: str) -> str:
    """A build name is one folder name: letters, digits, ``. _ + -``, no leading dot."""
    if not _BUILD_NAME.match(name) or ".." in name:
        raise RequestError(
            400,
            f"build name {name!r} is not allowed: use letters, digits and . _ + - "
            "(no slashes, no leading dot, no '..', at most 128 characters)",
        )
    return name


def check_artifact_path(path: str) -> str:
    """A file inside a build: one of ``ARTIFACT_PATTERNS``, DTBs possibly in vendor folders."""
    parts = path.split("/")
    for part in parts:
        if not _PATH_PART.match(part) or ".." in part:
            raise RequestError(
                400,
                f"file name {path!r} is not allowed: each part uses letters, digits and "
                "._+,@=- with no leading dot and no '..'",
            )
    base = parts[-1]
    if not any(fnmatch.fnmatchcase(base, pattern) for pattern in ARTIFACT_PATTERNS):
        raise RequestError(
            400,
            f"{path!r} is not a build artifact: upload image.fit, modules-<release>.cpio[.gz|.xz|"
            ".zst], Image[.gz], zImage or *.dtb",
        )
    if len(parts) > 1 and not base.endswith(".dtb"):
        raise RequestError(400, f"{path!r}: only DTBs may sit in subfolders (vendor/board.dtb)")
    if len(parts) > 3:
        raise RequestError(400, f"{path!r}: too deep; DTBs sit at most two folders down")
    return path


def temp_name(build_dir: Path, stem: str) -> Path:
    """A fresh dot-named path beside ``build_dir`` (same file system, so the final rename is
    atomic); the watcher ignores dotfiles, and nothing serves them."""
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    flat = stem.replace("/", "_")
    return build_dir.parent / f".upload-{build_dir.name}-{secrets.token_hex(6)}-{flat}"


@dataclass
class Staged:
    """Files received into temporary names, not yet visible."""

    build_dir: Path
    files: dict[str, Path] = field(default_factory=dict)  # artifact path → temp file
    size: int = 0

    def discard(self) -> None:
        """Remove every temporary file (a broken or refused upload)."""
        for tmp in self.files.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.files.clear()


@dataclass
class Installed:
    """Files renamed into place, with what they replaced, so a refused build can be undone."""

    build_dir: Path
    created: bool = False  # the upload created the build folder
    backups: dict[Path, Path | None] = field(default_factory=dict)  # target → backup or None

    def undo(self) -> None:
        """Put back the previous files (and remove files that did not exist before)."""
        for target, backup in self.backups.items():
            if backup is None:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
            else:
                os.replace(backup, target)

    def commit(self) -> None:
        """Drop the backups: the new files stay."""
        for backup in self.backups.values():
            if backup is not None:
                with contextlib.suppress(FileNotFoundError):
                    backup.unlink()


def install(staged: Staged) -> Installed:
    """Rename every staged file into place, keeping a hard-linked backup of what it replaces."""
    done = Installed(staged.build_dir, created=not staged.build_dir.exists())
    for path, tmp in staged.files.items():
        target = staged.build_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        backup: Path | None = target.parent / f".previous-{secrets.token_hex(6)}-{target.name}"
        try:
            os.link(target, backup)  # type: ignore[arg-type]
        except FileNotFoundError:
            backup = None
        done.backups[target] = backup
        os.replace(tmp, target)  # the one atomic step that makes the file visible
    staged.files.clear()
    return done


def limit_message(limit: int) -> str:
    return (
        f"upload is larger than the server's limit of {limit} bytes "
        f"({limit / (1 << 20):.0f} MiB); raise it with `overrided serve --max-upload`"
    )


async def receive_file(
    reader: web.Request | BodyPartReader, tmp: Path, limit: int, expected: int | None
) -> int:
    """Stream a body (or one multipart part) into ``tmp``; 413 past ``limit`` bytes.

    A body shorter than its ``Content-Length`` means the client went away: that is an error too.
    """
    received = 0
    loop = asyncio.get_running_loop()
    with open(tmp, "xb") as f:
        while True:
            if isinstance(reader, BodyPartReader):
                chunk = await reader.read_chunk(CHUNK)
            else:
                chunk = await reader.content.read(CHUNK)
            if not chunk:
                break
            received += len(chunk)
            if received > limit:
                raise RequestError(413, limit_message(limit))
            await loop.run_in_executor(None, f.write, chunk)
    if expected is not None and received != expected:
        raise RequestError(
            400, f"upload ended after {received} of {expected} bytes (connection lost?)"
        )
    return received


class UploadAnswer(BaseModel):
    """What an upload did: the index result plus a one-line summary per board."""

    build: str
    files: list[str]
    bytes: int
    on_build: list[str]  # boards now resolving to this build, "board: devboot name"
    not_on_build: list[str]  # boards that are not, "board: reason"
    result: IndexResult


def devboot_name(board: BoardInfo) -> str:
    """The devboot script name barebox fetches for ``board`` (design.md, "barebox")."""
    for names in board.served.values():
        for name in names:
            if "-devboot-" in name:
                return name
    return f"{board.user}-devboot-{board.hostname}"


def answer(result: IndexResult, files: list[str], size: int) -> UploadAnswer:
    """Summarise an index result for the developer who uploaded."""
    build = result.build.name
    on = [f"{b.name}: {devboot_name(b)}" for b in result.boards if b.build == build]
    off = [
        f"{b.name}: " + (b.error or b.reason or f"resolves to build {b.build}")
        for b in result.boards
        if b.build != build
    ]
    return UploadAnswer(
        build=build, files=files, bytes=size, on_build=on, not_on_build=off, result=result
    )


def answer_text(a: UploadAnswer) -> str:
    """The plain-text answer curl prints."""
    info = a.result.build
    lines = [
        f"build {a.build}: stored {', '.join(a.files)} ({a.bytes} bytes); "
        f"release {info.release or '?'}, {len(info.configurations)} configuration(s)"
    ]
    for b in a.result.boards:
        if b.build == a.build:
            lines.append(
                f"  board {b.name}: boots {a.build} via {devboot_name(b)}"
                f" (configuration {b.configuration})"
            )
            lines.extend(f"    warning: {w}" for w in b.warnings)
    for line in a.not_on_build:
        lines.append(f"  not on this build: {line}")
    if not a.result.boards:
        lines.append("  no boards known yet: add boards/<name>.toml or boot one by hostname")
    return "\n".join(lines) + "\n"


async def finish(request: web.Request, staged: Staged) -> web.Response:
    """Install staged files, index the build at once, undo if the build is refused, answer."""
    service = request.app[SERVICE]
    build = staged.build_dir.name
    files = sorted(staged.files)
    lock = request.app[UPLOAD_LOCKS].setdefault(build, asyncio.Lock())
    async with lock:  # two uploads into one build must not interleave their undo
        installed = install(staged)
        try:
            result = await service.index_now(build)
        except BaseException as err:
            with contextlib.suppress(Exception):
                await _restore(service, installed)
            if isinstance(err, OverridedError):
                raise RequestError(
                    422, f"build {build}: {', '.join(files)} refused, previous files kept: {err}"
                ) from err
            raise
        if result.build.error:
            await _restore(service, installed)
            raise RequestError(
                422,
                f"build {build}: {', '.join(files)} refused, previous files kept: "
                f"{result.build.error}",
            )
        installed.commit()
    ans = answer(result, files, staged.size)
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response(text=ans.model_dump_json(), status=201)
    return web.Response(text=answer_text(ans), status=201)


async def _restore(service: Service, installed: Installed) -> None:
    """Put the previous files back and re-index; a build that did not exist goes away again."""
    installed.undo()
    if installed.created:
        await service.remove_build(installed.build_dir.name)
    else:
        await service.index_now(installed.build_dir.name)


def _build_dir(request: web.Request) -> Path:
    # Not created here: a broken upload must not leave an empty build folder behind.
    service = request.app[SERVICE]
    return service.builds_dir / check_build_name(request.match_info["build"])


def _check_length(request: web.Request, limit: int) -> None:
    # Refuse early, before reading a byte, when the client announced the size (RFC 9110 §15.5.14).
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(413, limit_message(limit))


async def put_artifact(request: web.Request) -> web.Response:
    """PUT ``/builds/<build>/<path>``: one artifact (``curl -T image.fit``)."""
    limit = request.app[MAX_UPLOAD]
    path = check_artifact_path(request.match_info["path"])
    _check_length(request, limit)
    folder = _build_dir(request)
    staged = Staged(folder)
    try:
        tmp = temp_name(folder, path)
        staged.files[path] = tmp
        staged.size = await receive_file(request, tmp, limit, request.content_length)
        return await finish(request, staged)
    finally:
        staged.discard()


async def put_build(request: web.Request) -> web.Response:
    """PUT ``/builds/<build>`` with a tar (or tar.gz) of build outputs, or POST multipart."""
    if request.content_type.startswith("multipart/"):
        return await _multipart(request)
    kind = request.content_type
    if kind not in TAR_TYPES + TARGZ_TYPES:
        raise RequestError(
            415,
            f"{request.path}: send a tarball (Content-Type: application/x-tar or application/gzip)"
            " or multipart/form-data; to upload one file, PUT /builds/<build>/<file>",
        )
    limit = request.app[MAX_UPLOAD]
    _check_length(request, limit)
    folder = _build_dir(request)
    tar_tmp = temp_name(folder, "upload.tar")
    staged = Staged(folder)
    try:
        await receive_file(request, tar_tmp, limit, request.content_length)
        staged.size = await asyncio.to_thread(unpack_tar, tar_tmp, staged, limit)
        return await finish(request, staged)
    finally:
        staged.discard()
        with contextlib.suppress(FileNotFoundError):
            tar_tmp.unlink()


def tar_members(tar: tarfile.TarFile, limit: int) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """The regular files of a build tarball, checked: artifact names only, no links, bounded."""
    total = 0
    for count, member in enumerate(tar, 1):
        if count > MAX_TAR_MEMBERS:
            raise RequestError(413, f"tarball has more than {MAX_TAR_MEMBERS} members")
        name = str(PurePosixPath(member.name))
        name = name.removeprefix("./") if name != "." else ""
        if member.isdir() or not name:
            continue
        if not member.isfile():
            raise RequestError(
                400,
                f"tarball member {member.name!r}: only regular files are accepted "
                "(no links, devices or fifos)",
            )
        path = check_artifact_path(name)
        total += member.size
        if total > limit:
            raise RequestError(
                413, "tarball unpacks to more than the limit: " + limit_message(limit)
            )
        yield path, member


def unpack_tar(archive: Path, staged: Staged, limit: int) -> int:
    """Unpack a build tarball into dot-temporary files of the build folder; bytes unpacked."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            for path, member in tar_members(tar, limit):
                src = tar.extractfile(member)
                if src is None:
                    continue
                tmp = temp_name(staged.build_dir, path)
                staged.files[path] = tmp
                with src, open(tmp, "xb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                staged.size += member.size
    except tarfile.TarError as err:
        raise RequestError(400, f"not a readable tarball: {err}") from err
    if not staged.files:
        raise RequestError(400, "tarball holds no build artifacts")
    return staged.size


async def _multipart(request: web.Request) -> web.Response:
    limit = request.app[MAX_UPLOAD]
    _check_length(request, limit)
    folder = _build_dir(request)
    staged = Staged(folder)
    try:
        try:
            await _receive_parts(request, staged, limit)
        except (ValueError, HttpProcessingError) as err:  # how aiohttp's reader says "malformed"
            message = getattr(err, "message", None) or str(err)
            raise RequestError(400, f"malformed multipart body: {message}") from err
        if not staged.files:
            raise RequestError(400, "multipart upload holds no files")
        return await finish(request, staged)
    finally:
        staged.discard()


async def _receive_parts(request: web.Request, staged: Staged, limit: int) -> None:
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise RequestError(400, "nested multipart bodies are not accepted")
        if not part.filename:
            raise RequestError(
                400, f"multipart part {part.name!r} has no filename: use curl -F 'f=@Image'"
            )
        # The part's filename names the artifact; a vendor folder may prefix a DTB.
        path = check_artifact_path(part.filename)
        if path in staged.files:
            raise RequestError(400, f"{path!r} appears twice in the upload")
        tmp = temp_name(staged.build_dir, path)
        staged.files[path] = tmp
        staged.size += await receive_file(part, tmp, limit - staged.size, None)


async def delete_build(request: web.Request) -> web.Response:
    """DELETE ``/api/builds/<name>``: remove a build folder, re-render, publish."""
    service = request.app[SERVICE]
    build = check_build_name(request.match_info["name"])
    if not (service.builds_dir / build).is_dir():
        raise RequestError(404, f"build {build!r} does not exist (see GET /api/builds)")
    await service.remove_build(build)
    return web.json_response({"removed": build})
