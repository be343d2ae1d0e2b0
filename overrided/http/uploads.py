"""Uploads: ``make && curl -T`` into ``kernel-builds/<build>/``, then index at once.

Every upload streams into a dot-named temporary file inside the builds folder (the watcher
ignores dotfiles), becomes visible by one ``rename``, and is indexed before the response is sent.
If indexing refuses what arrived, the previous files are put back, so the board keeps booting the
build it had. Every way out of a handler (a refusal, a client gone or stalled, a cancelled task)
removes the temporary files it made; what a crash leaves is removed at the next start
(``leftovers``). Nothing is ever written through a link, so nothing lands outside the builds
folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import re
import secrets
import shutil
import tarfile
import threading
from collections.abc import Awaitable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel

from overrided import codecs
from overrided.clients.barebox import script_name
from overrided.discovery import MODULES_NAME
from overrided.errors import OverridedError
from overrided.http.context import MAX_UPLOAD, SERVICE, UPLOAD_LOCKS
from overrided.http.errors import RequestError
from overrided.state import BoardInfo, IndexResult, Service

log = logging.getLogger(__name__)

T = TypeVar("T")
CHUNK = 1 << 20
# Matched with ``fullmatch``: ``re.match(...$)`` would let a final newline through ("k1\n").
_BUILD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_PATH_PART = re.compile(r"[A-Za-z0-9_+,@=-][A-Za-z0-9._+,@=-]{0,127}")
# Temporary files: received bodies beside the build folders, backups inside them.
UPLOAD_PREFIX = ".upload-"
BACKUP_PREFIX = ".previous-"
# Seconds an upload body may go without a byte before the upload is dropped (``make_app``).
BODY_TIMEOUT = web.AppKey("body_timeout", float)
# The artifact kinds a build folder holds (kernel-builds/README.md).
ARTIFACT_PATTERNS = (
    "image.fit",
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
    if not _BUILD_NAME.fullmatch(name) or ".." in name:
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
        if not _PATH_PART.fullmatch(part) or ".." in part:
            raise RequestError(
                400,
                f"file name {path!r} is not allowed: each part uses letters, digits and "
                "._+,@=- with no leading dot and no '..'",
            )
    base = parts[-1]
    if not MODULES_NAME.fullmatch(base) and not any(
        fnmatch.fnmatchcase(base, pattern) for pattern in ARTIFACT_PATTERNS
    ):
        # (fnmatch's ``*`` matches a newline too; the part check above has refused it already)
        raise RequestError(
            400,
            f"{path!r} is not a build artifact: upload image.fit, modules-<release>.cpio"
            f"[{codecs.suffixes_text()}], Image[.gz], zImage or *.dtb",
        )
    if len(parts) > 1 and not base.endswith(".dtb"):
        raise RequestError(400, f"{path!r}: only DTBs may sit in subfolders (vendor/board.dtb)")
    if len(parts) > 3:
        raise RequestError(400, f"{path!r}: too deep; DTBs sit at most two folders down")
    return path


class ClientFault(OverridedError):
    """The client broke an upload off: it went away, or stopped sending.

    Not a ``RequestError``: the application logs it as one warning line, answers ``status`` in
    case anyone still listens, and closes the connection (``app.guard``).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def temp_name(build_dir: Path, stem: str) -> Path:
    """A fresh dot-named path beside ``build_dir`` (same file system, so the final rename is
    atomic); the watcher ignores dotfiles, and nothing serves them."""
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    flat = stem.replace("/", "_")
    return build_dir.parent / f"{UPLOAD_PREFIX}{build_dir.name}-{secrets.token_hex(6)}-{flat}"


def parents_of(path: str) -> list[str]:
    """The folders an artifact path sits in: ``a/b/c.dtb`` → ``["a", "a/b"]``."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def path_conflict(files: Collection[str], folders: Collection[str], path: str) -> str | None:
    """Why ``path`` cannot join an upload of ``files`` (which sit in ``folders``), or ``None``.

    One upload names each file once, and no name is both a file and a folder.
    """
    if path in files:
        return f"names {path} a second time: a build holds one file per name"
    if path in folders:
        return f"names {path} as a file, while other files of the upload sit below it"
    for folder in parents_of(path):
        if folder in files:
            return f"puts {path} below {folder}, which the upload also sends as a file"
    return None


@dataclass
class Staged:
    """Files received into temporary names, not yet visible.

    A tarball unpacks on a worker thread that may outlive its handler (a cancelled request):
    ``add``, ``scratch`` and ``discard`` share a lock, and nothing is created after ``discard``,
    so no temporary file outlives the request.
    """

    build_dir: Path
    files: dict[str, Path] = field(default_factory=dict)  # artifact path → temp file
    size: int = 0
    _folders: set[str] = field(default_factory=set)  # the folders the staged files sit in
    _temps: list[Path] = field(default_factory=list)  # every temp file made, artifact or not
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def scratch(self, stem: str) -> tuple[Path, BinaryIO]:
        """A new temporary file that is not an artifact (a received tarball), open for writing."""
        with self._lock:
            return self._create(stem)

    def add(self, path: str, what: str) -> BinaryIO:
        """A new temporary file for artifact ``path``, open for writing.

        ``what`` says where the path came from (``tarball member './a.dtb'``) for the 400 when
        the upload already names it, or names it both as a file and as a folder.
        """
        with self._lock:
            why = path_conflict(self.files, self._folders, path)
            if why is not None:
                raise RequestError(400, f"{what} {why}")
            tmp, f = self._create(path)
            self.files[path] = tmp
            self._folders.update(parents_of(path))
            return f

    def _create(self, stem: str) -> tuple[Path, BinaryIO]:
        if self._closed:  # the request is over; whoever still unpacks stops here
            raise RequestError(400, "upload abandoned")
        tmp = temp_name(self.build_dir, stem)
        f = open(tmp, "xb")  # noqa: SIM115 (the caller closes it; discard removes it)
        self._temps.append(tmp)
        return tmp, f

    def discard(self) -> None:
        """Remove every temporary file still there (a broken or refused upload, or the
        leftovers of an installed one: installed files were renamed away already)."""
        with self._lock:
            self._closed = True
            temps, self._temps = self._temps, []
            self.files.clear()
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@dataclass
class Installed:
    """Files renamed into place, with what they replaced, so a refused build can be undone."""

    build_dir: Path
    created: bool = False  # the upload created the build folder
    backups: dict[Path, Path | None] = field(default_factory=dict)  # target → backup or None

    def undo(self) -> None:
        """Put back the previous files (and remove files that did not exist before)."""
        for target, backup in self.backups.items():
            try:
                if backup is None:
                    with contextlib.suppress(FileNotFoundError):
                        target.unlink()
                else:
                    os.replace(backup, target)
            except OSError as err:  # go on: every other file is still put back
                log.warning("%s: cannot put the previous file back: %s", target, err.strerror)

    def commit(self) -> None:
        """Drop the backups: the new files stay."""
        for backup in self.backups.values():
            if backup is not None:
                with contextlib.suppress(FileNotFoundError):
                    backup.unlink()


def link_refusal(builds_root: Path, build: str) -> str:
    """Why ``build``, a link in the builds folder (real path ``builds_root``), takes no upload."""
    target = Path(os.path.realpath(builds_root / build))
    if target.parent == builds_root and _BUILD_NAME.fullmatch(target.name):
        return (
            f"build {build!r} is a link to build {target.name!r}; "
            f"upload to {target.name} or to a new name"
        )
    return (
        f"build {build!r} is a link to a folder outside the builds folder; "
        "upload to a new name or copy into it"
    )


def check_build_folder(builds_dir: Path, build: str) -> Path:
    """The real path of ``build``'s folder (which may not exist yet), or a 409 when it is a link
    or a file: uploads write only into real folders of the builds folder."""
    root = Path(os.path.realpath(builds_dir))
    folder = root / build
    if folder.is_symlink():
        raise RequestError(409, link_refusal(root, build))
    if folder.exists() and not folder.is_dir():
        raise RequestError(409, f"build {build!r}: {build} is a file in the builds folder")
    return folder


def write_target(builds_dir: Path, build: str, path: str) -> Path:
    """Where artifact ``path`` of ``build`` is written, or a 409 when a link or a file stands in
    the way. Uploads never write through or over a link, so never outside the builds folder."""
    folder = check_build_folder(builds_dir, build)
    target = folder
    parts = path.split("/")
    for depth, part in enumerate(parts, 1):
        target = target / part
        shown = "/".join(parts[:depth])
        if target.is_symlink():
            raise RequestError(
                409,
                f"build {build}: {shown} is a link; uploads never write through or over links "
                "(replace it with a folder or file, or upload to a new build)",
            )
        if depth < len(parts) and target.exists() and not target.is_dir():
            raise RequestError(
                409, f"build {build}: {shown} is a file, so {path} cannot go below it"
            )
    if target.is_dir():
        raise RequestError(409, f"build {build}: {path} is a folder; uploads replace files only")
    # Belt and braces: the folder the file lands in resolves to inside the build folder.
    if not Path(os.path.realpath(target.parent)).is_relative_to(folder):
        raise RequestError(409, f"build {build}: {path} would land outside the build folder")
    return target


def install(staged: Staged, targets: Mapping[str, Path], done: Installed) -> None:
    """Rename every staged file onto its target, recording in ``done`` a hard-linked backup of
    what it replaces before each rename, so that a failure part-way can be undone."""
    for path, tmp in staged.files.items():
        target = targets[path]
        target.parent.mkdir(parents=True, exist_ok=True)
        backup: Path | None = target.parent / f"{BACKUP_PREFIX}{secrets.token_hex(6)}-{target.name}"
        try:
            os.link(target, backup)  # type: ignore[arg-type]
        except FileNotFoundError:
            backup = None
        done.backups[target] = backup
        os.replace(tmp, target)  # the one atomic step that makes the file visible
    staged.files.clear()


def leftovers(builds_dir: Path) -> list[Path]:
    """The temporary files uploads of an earlier run left behind (a crash, a kill -9).

    ``.upload-*`` beside the build folders, ``.previous-*`` backups at most two folders down
    inside them; links are not followed (what they point to is not ours to clean).
    """
    found: list[Path] = []
    if not builds_dir.is_dir():
        return found
    for entry in builds_dir.iterdir():
        if entry.name.startswith(UPLOAD_PREFIX) and (entry.is_symlink() or not entry.is_dir()):
            found.append(entry)
        elif entry.is_dir() and not entry.is_symlink() and not entry.name.startswith("."):
            for top, dirs, names in os.walk(entry):  # os.walk does not descend into links
                found += (Path(top) / n for n in names if n.startswith(BACKUP_PREFIX))
                if len(Path(top).relative_to(entry).parts) >= 2:
                    dirs.clear()
    return sorted(found)


async def remove_leftovers(app: web.Application) -> None:
    """On start-up: remove what uploads of an earlier run left (one server per builds folder,
    so no upload is in progress now)."""
    builds_dir = app[SERVICE].builds_dir

    def remove() -> int:
        removed = 0
        for path in leftovers(builds_dir):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        return removed

    removed = await asyncio.to_thread(remove)
    if removed:
        log.info(
            "removed %d temporary upload files left by an earlier run in %s", removed, builds_dir
        )


def limit_message(limit: int) -> str:
    """The 413's message: the limit, and how to raise it."""
    return (
        f"upload is larger than the server's limit of {limit} bytes "
        f"({limit / (1 << 20):.0f} MiB); raise it with `overrided serve --max-upload`"
    )


def _progress(received: int, expected: int | None) -> str:
    return f"{received} of {expected} bytes" if expected is not None else f"{received} bytes"


async def body_read(read: Awaitable[T], timeout: float, received: int, expected: int | None) -> T:
    """One read of a request body. Waiting ``timeout`` s for the next byte drops the upload with
    a 408 (RFC 9110 §15.5.9), so a stalled client cannot hold a temporary file for ever; a slow
    one that keeps sending goes on. A client that went away is a ``ClientFault`` too."""
    try:
        async with asyncio.timeout(timeout):
            return await read
    except TimeoutError:
        raise ClientFault(
            408,
            f"no body bytes for {timeout:g} s after {_progress(received, expected)}; "
            "upload dropped, nothing stored",
        ) from None
    except ConnectionError:
        raise ClientFault(
            400, f"client went away after {_progress(received, expected)}; nothing stored"
        ) from None
    except HttpProcessingError as err:  # a broken chunked encoding, a short body
        message = " ".join(str(err.message).split())
        raise RequestError(400, f"malformed body after {received} bytes: {message}") from None


async def receive_file(
    reader: web.Request | BodyPartReader,
    dst: BinaryIO,
    limit: int,
    expected: int | None,
    timeout: float,
) -> int:
    """Stream a body (or one multipart part) into ``dst``; 413 past ``limit`` bytes.

    A body shorter than its ``Content-Length`` means the client went away: that is an error too.
    """
    received = 0
    loop = asyncio.get_running_loop()
    while True:
        if isinstance(reader, BodyPartReader):
            chunk = await body_read(reader.read_chunk(CHUNK), timeout, received, expected)
        else:
            chunk = await body_read(reader.content.read(CHUNK), timeout, received, expected)
        if not chunk:
            break
        received += len(chunk)
        if received > limit:
            raise RequestError(413, limit_message(limit))
        await loop.run_in_executor(None, dst.write, chunk)
    if expected is not None and received != expected:
        raise ClientFault(
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
    """The devboot script name barebox fetches for ``board``."""
    return script_name(board.user, board.hostname)


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
    files = sorted(staged.files)
    result = await publish(request.app, staged)
    ans = answer(result, files, staged.size)
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response(text=ans.model_dump_json(), status=201)
    return web.Response(text=answer_text(ans), status=201)


async def publish(app: web.Application, staged: Staged) -> IndexResult:
    """Install staged files and index the build at once; if indexing refuses it, put the
    previous files back and raise a 422. Uploads and builds by URL publish through here."""
    service = app[SERVICE]
    build = staged.build_dir.name
    files = sorted(staged.files)
    lock = app[UPLOAD_LOCKS].setdefault(build, asyncio.Lock())
    async with lock:  # two uploads into one build must not interleave their undo
        # Decide before touching anything: a link or a file in the way refuses the whole upload.
        targets = {path: write_target(service.builds_dir, build, path) for path in files}
        installed = Installed(staged.build_dir, created=not staged.build_dir.exists())
        try:
            install(staged, targets, installed)
            result = await service.index_now(build)
        except BaseException as err:
            with contextlib.suppress(Exception):
                await _restore(service, installed)
            if isinstance(err, OverridedError) and not isinstance(err, RequestError):
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
    return result


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
    build = check_build_name(request.match_info["build"])
    check_build_folder(service.builds_dir, build)  # a link or a file: refused before the body
    return service.builds_dir / build


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
    write_target(request.app[SERVICE].builds_dir, folder.name, path)  # before the body, too
    staged = Staged(folder)
    try:
        with staged.add(path, "the upload") as f:
            staged.size = await receive_file(
                request, f, limit, request.content_length, request.app[BODY_TIMEOUT]
            )
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
    staged = Staged(folder)
    try:
        tar_tmp, f = staged.scratch("upload.tar")
        with f:
            await receive_file(request, f, limit, request.content_length, request.app[BODY_TIMEOUT])
        staged.size = await asyncio.to_thread(unpack_tar, tar_tmp, staged, limit)
        return await finish(request, staged)
    finally:
        staged.discard()  # a thread still unpacking stops at its next member


def tar_members(tar: tarfile.TarFile, limit: int) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """The regular files of a build tarball, checked: artifact names only, no links, bounded."""
    total = 0
    for count, member in enumerate(tar, 1):
        if count > MAX_TAR_MEMBERS:
            raise RequestError(413, f"tarball has more than {MAX_TAR_MEMBERS} members")
        name = str(PurePosixPath(member.name))  # "./a.dtb" → "a.dtb", "v//b.dtb" → "v/b.dtb"
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
                with src, staged.add(path, f"tarball member {member.name!r}") as dst:
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
    timeout = request.app[BODY_TIMEOUT]
    reader = await request.multipart()
    while (part := await body_read(reader.next(), timeout, staged.size, None)) is not None:
        if not isinstance(part, BodyPartReader):
            raise RequestError(400, "nested multipart bodies are not accepted")
        if not part.filename:
            raise RequestError(
                400, f"multipart part {part.name!r} has no filename: use curl -F 'f=@Image'"
            )
        # The part's filename names the artifact; a vendor folder may prefix a DTB.
        path = check_artifact_path(part.filename)
        with staged.add(path, f"multipart part {part.filename!r}") as f:
            staged.size += await receive_file(part, f, limit - staged.size, None, timeout)


async def delete_build(request: web.Request) -> web.Response:
    """DELETE ``/api/builds/<name>``: remove a build folder, re-render, publish.

    A build that is a link loses only the link: what it points to is the developer's own folder
    (``ln -s ~/linux/build-arm64 kernel-builds/mainline``), never ours to delete.
    """
    service = request.app[SERVICE]
    build = check_build_name(request.match_info["name"])
    folder = service.builds_dir / build
    async with request.app[UPLOAD_LOCKS].setdefault(build, asyncio.Lock()):
        if folder.is_symlink():
            folder.unlink()
        elif not folder.is_dir():
            raise RequestError(404, f"build {build!r} does not exist (see GET /api/builds)")
        await service.remove_build(build)
    return web.json_response({"removed": build})
