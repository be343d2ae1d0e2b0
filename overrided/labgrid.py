"""labgrid support: an overrided board as a resource, a driver that stages builds, a strategy.

Importing this module registers, with labgrid's own ``target_factory``:

* ``OverridedBoard``, a resource: the overrided instance (``url``), the board's name there
  (``board``: its board-file stem, or its barebox hostname) and, optionally, the file holding the
  upload token (``token_file``; else ``$OVERRIDED_TOKEN``);
* ``OverridedDriver``, a driver bound to that resource and, optionally, to ``BareboxDriver``. It
  stages a build (an upload of local files, or a build by URL that the instance fetches), waits
  until the board is rendered from it, reports the board's resolution, and runs barebox's
  ``devboot`` through the bound ``BareboxDriver``;
* ``OverridedStrategy``: ``off`` → ``barebox`` → ``booted`` (``devboot``) → ``shell``.

An environment file names the module in ``imports:`` (docs/labgrid.md). labgrid is optional:
nothing else in overrided imports this module (``pip install 'overrided[labgrid]'``).

The HTTP side (``Instance``) uses the standard library only: a labgrid test run is synchronous,
and labgrid hosts need nothing beyond what overrided itself installs.
"""

from __future__ import annotations

import enum
import json
import os
import re
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from overrided.state import BoardInfo

try:
    import attr
    from labgrid.driver.common import Driver
    from labgrid.factory import target_factory
    from labgrid.resource.common import Resource
    from labgrid.step import step
    from labgrid.strategy.common import Strategy, StrategyError, never_retry
except ImportError as err:  # pragma: no cover - depends on the host
    raise ImportError(
        f"overrided.labgrid needs labgrid ({err}): pip install 'overrided[labgrid]'"
    ) from err

TOKEN_VAR = "OVERRIDED_TOKEN"
# The events a stage waits on. Build events carry no board, so the stream is not filtered by
# board; the few other boards' events are skipped here.
STAGE_EVENTS = ("build-indexed", "build-failed", "board-rendered", "board-failed")
STREAM_SILENCE = 45.0  # the server sends a comment every 15 s; three missed ones is a dead stream
REQUEST_TIMEOUT = 30.0  # reads of the API; staging requests get the stage's own timeout


class StageError(Exception):
    """overrided refused a build, the board does not boot it, or barebox booted nothing; the
    message says why, on one line where overrided's answer is one line."""


# --- the instance's HTTP API ------------------------------------------------------------------


class Instance:
    """The HTTP API of one overrided instance: boards, events, uploads, builds by URL."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def board(self, name: str) -> BoardInfo:
        """``GET /api/boards/<name>``: the board's build, configuration, reason and warnings."""
        return BoardInfo.model_validate(self._json("GET", f"/api/boards/{_quote(name)}"))

    def upload(self, build: str, files: Mapping[str, Path], timeout: float) -> dict[str, Any]:
        """``PUT /builds/<build>`` with the files as one tarball (one index run); the answer.

        ``files`` maps each artifact's name in the build (``image.fit``, ``Image``,
        ``rockchip/x.dtb``, ``modules-<release>.cpio``) to the local file.
        """
        with tempfile.TemporaryFile() as body:
            with tarfile.open(fileobj=body, mode="w") as tar:
                for name, path in files.items():
                    tar.add(str(path), arcname=name, recursive=False)
            size = body.tell()
            body.seek(0)
            headers = {"Content-Type": "application/x-tar", "Content-Length": str(size)}
            answer: dict[str, Any] = self._json(
                "PUT", f"/builds/{_quote(build)}", body, headers, timeout
            )
            return answer

    def fetch(
        self, build: str, files: Sequence[Mapping[str, str]], timeout: float
    ) -> dict[str, Any]:
        """``PUT /api/builds/<build>``: the instance fetches each file by URL; the answer.

        Each file is ``{"name": …, "url": …}``, optionally with ``"sha256"``.
        """
        body = json.dumps({"files": [dict(f) for f in files]}).encode()
        headers = {"Content-Type": "application/json"}
        answer: dict[str, Any] = self._json(
            "PUT", f"/api/builds/{_quote(build)}", body, headers, timeout
        )
        return answer

    @contextmanager
    def events(self, kinds: Sequence[str]) -> Iterator[Iterator[dict[str, Any] | None]]:
        """Follow ``/api/events``: each event as a dict, ``None`` for each keep-alive comment.

        The server subscribes before it answers, so a stage started inside the ``with`` block
        cannot be missed.
        """
        query = urllib.parse.urlencode({"kinds": ",".join(kinds)})
        try:
            stream = urllib.request.urlopen(
                f"{self.url}/api/events?{query}", timeout=STREAM_SILENCE
            )
        except (urllib.error.URLError, OSError) as err:
            raise StageError(self._why("GET /api/events", err)) from err
        with stream:
            yield _sse_events(stream, self.url)

    def _json(
        self,
        method: str,
        path: str,
        body: bytes | IO[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> Any:
        head = {"Accept": "application/json", **(headers or {})}
        if method != "GET":
            if not self.token:
                raise StageError(
                    f"{method} {path}: no upload token: set token_file of OverridedBoard "
                    f"or {TOKEN_VAR}"
                )
            head["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=head)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return json.load(r)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise StageError(self._why(f"{method} {path}", err)) from err

    def _why(self, what: str, err: Exception) -> str:
        if isinstance(err, urllib.error.HTTPError):
            raw = err.read().decode(errors="replace")
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.strip() or err.reason
            return f"{what}: {err.code}: {message}"
        if isinstance(err, urllib.error.URLError):
            return f"{what}: cannot reach overrided at {self.url}: {err.reason}"
        return f"{what} at {self.url}: {err}"


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _sse_events(stream: IO[bytes], url: str) -> Iterator[dict[str, Any] | None]:
    """The events of a ``text/event-stream`` (one ``data:`` line each), ``None`` per comment."""
    while True:
        try:
            raw = stream.readline()
        except OSError as err:  # TimeoutError included: no keep-alive for STREAM_SILENCE s
            raise StageError(f"{url}/api/events: the event stream broke: {err}") from err
        if not raw:
            raise StageError(f"{url}/api/events: the server closed the event stream")
        line = raw.decode(errors="replace").rstrip("\r\n")
        if line.startswith("data: "):
            event: dict[str, Any] = json.loads(line[len("data: ") :])
            yield event
        elif line.startswith(":"):
            yield None


# --- waiting for the board --------------------------------------------------------------------


def answer_verdict(answer: Mapping[str, Any], board: str, build: str) -> bool:
    """What a staging answer says of ``board``: True if it boots ``build`` now, False if the
    answer does not say; raises ``StageError`` with the reason if it does not boot it."""
    prefix = f"{board}: "
    for line in answer.get("not_on_build") or ():
        if isinstance(line, str) and line.startswith(prefix):
            raise StageError(f"board {board} does not boot build {build}: {line[len(prefix) :]}")
    return any(
        isinstance(line, str) and line.startswith(prefix) for line in answer.get("on_build") or ()
    )


def event_verdict(event: Mapping[str, Any], board: str, build: str) -> bool | None:
    """What one event says of the stage: True when the board is rendered from ``build``, None
    when it says nothing of it; raises ``StageError`` when the build or the board failed."""
    kind, error = event.get("kind"), (event.get("data") or {}).get("error")
    if kind == "build-failed" and event.get("build") == build:
        raise StageError(f"build {build} refused: {error}")
    if kind == "board-failed" and event.get("board") == board:
        raise StageError(f"board {board}: not rendered: {error}")
    if kind == "board-rendered" and event.get("board") == board:
        return True if event.get("build") == build else None
    return None


def settled(info: BoardInfo, build: str, *, strict: bool = False) -> bool | None:
    """True when ``info`` shows the board served from ``build``, else None. ``strict`` (the
    build is indexed): raises ``StageError`` when the board's file makes it resolve to another
    build (a board known by hostname only is rendered a moment later: still None)."""
    if info.build == build and info.error is None and info.artifacts:
        return True
    if strict and info.file is not None and info.build != build:
        raise StageError(
            f"board {info.name} does not boot build {build}: "
            f"{info.error or info.reason or f'resolves to build {info.build}'}"
        )
    return None


def staged_files(answer: Mapping[str, Any]) -> list[str]:
    """One line per file of a staging answer: ``name: fetched, 1234 bytes`` for a build by URL
    (``in-store`` when the instance had its sha256 already), ``name`` for an upload."""
    files = answer.get("files") or []
    lines = []
    for f in files:
        if isinstance(f, Mapping):
            lines.append(f"{f.get('name')}: {f.get('outcome')}, {f.get('bytes', 0)} bytes")
        else:
            lines.append(str(f))
    return lines


def describe(info: BoardInfo) -> str:
    """The board's resolution on one line: build, configuration, reason, warnings."""
    if info.error:
        return f"board {info.name}: not served: {info.error}"
    warnings = "".join(f"; warning: {w}" for w in info.warnings)
    return (
        f"board {info.name}: build {info.build}, configuration {info.configuration}: "
        f"{info.reason}{warnings}"
    )


# --- labgrid ----------------------------------------------------------------------------------


@target_factory.reg_resource
@attr.s(eq=False)
class OverridedBoard(Resource):  # type: ignore[misc]  # labgrid is untyped
    """A board as one overrided instance serves it.

    Args:
        url (str): the instance's HTTP base, ``http://192.0.2.1:8080``
        board (str): the board's name there: its board-file stem, or its barebox hostname
        token_file (str): optional, a file holding the upload token (else ``$OVERRIDED_TOKEN``)
    """

    url: str = attr.ib(validator=attr.validators.instance_of(str))
    board: str = attr.ib(validator=attr.validators.instance_of(str))
    token_file: str | None = attr.ib(
        default=None, validator=attr.validators.optional(attr.validators.instance_of(str))
    )


@target_factory.reg_driver
@attr.s(eq=False)
class OverridedDriver(Driver):  # type: ignore[misc]  # labgrid is untyped
    """Stage a build on overrided for this board, report its resolution, ``devboot`` it.

    Binds to ``OverridedBoard`` and, optionally, to ``BareboxDriver`` (for ``devboot``). As
    labgrid activates a driver's suppliers with it, and a build is staged before the board is
    powered, ``stage``, ``stage_urls`` and ``resolution`` need no activation
    (``target.get_driver("OverridedDriver", activate=False)``); ``devboot`` activates the driver,
    and so ``BareboxDriver``, which waits for barebox's prompt.

    Args:
        build (str): the build to stage into (``kernel-builds/<build>`` on the instance)
        images (list): keys of the environment's ``images:`` that ``stage()`` uploads, each
            under its file name (``image.fit``, ``Image``, ``modules-<release>.cpio``, ``x.dtb``)
        timeout (int): seconds a stage may take, from the request to the board's render
        boot_timeout (int): seconds ``devboot()`` waits for the kernel to start
        net_server (str): optional, for boards whose DHCP does not name overrided's TFTP
            server: ``devboot()`` first runs ``ifup -a1`` and ``global.net.server=<net_server>``
    """

    bindings = {  # noqa: RUF012  # labgrid reads it from the class
        "board": "OverridedBoard",
        "barebox": {"BareboxDriver", None},
    }

    build: str = attr.ib(default="labgrid", validator=attr.validators.instance_of(str))
    images: list[str] = attr.ib(
        factory=list,
        validator=attr.validators.deep_iterable(
            attr.validators.instance_of(str), attr.validators.instance_of(list)
        ),
    )
    timeout: int = attr.ib(default=300, validator=attr.validators.instance_of(int))
    boot_timeout: int = attr.ib(default=120, validator=attr.validators.instance_of(int))
    net_server: str | None = attr.ib(
        default=None, validator=attr.validators.optional(attr.validators.instance_of(str))
    )

    def instance(self) -> Instance:
        """The overrided instance named by the bound ``OverridedBoard``, with its token."""
        token = os.environ.get(TOKEN_VAR) or None
        if self.board.token_file:
            path = Path(self.target.env.config.resolve_path(self.board.token_file))
            try:
                token = path.read_text().strip()
            except OSError as err:
                raise StageError(f"OverridedBoard: token_file: cannot read {path}: {err}") from err
        return Instance(self.board.url, token)

    @step(title="overrided resolution", result=True)  # type: ignore[untyped-decorator]
    def resolution(self) -> BoardInfo:
        """The board as overrided resolves it now: build, configuration, reason, warnings."""
        return self.instance().board(self.board.board)

    @step(title="overrided stage", args=["build"])  # type: ignore[untyped-decorator]
    def stage(
        self, files: Mapping[str, str | Path] | None = None, build: str | None = None
    ) -> BoardInfo:
        """Upload a local build and wait until the board is rendered from it; its resolution.

        ``files`` maps each artifact's name in the build to a local file; by default the
        driver's ``images`` under their file names.
        """
        if files is None:
            if not self.images:
                raise StageError("OverridedDriver: nothing to stage: set images, or pass files")
            paths = [Path(self.target.env.config.get_image_path(key)) for key in self.images]
            files = {p.name: p for p in paths}
        local = {name: Path(path) for name, path in files.items()}
        for name, path in local.items():
            if not path.is_file():
                raise StageError(f"stage: {name}: no such file: {path}")
        name = build or self.build
        instance = self.instance()
        return self._stage(
            instance, name, lambda: instance.upload(name, local, float(self.timeout))
        )

    @step(title="overrided stage by URL", args=["build"])  # type: ignore[untyped-decorator]
    def stage_urls(self, files: Sequence[Mapping[str, str]], build: str | None = None) -> BoardInfo:
        """Have the instance fetch a build by URL (``{"name", "url", "sha256"?}`` per file) and
        wait until the board is rendered from it; its resolution."""
        for f in files:
            missing = {"name", "url"} - set(f)
            if missing:
                raise StageError(f"stage_urls: {dict(f)}: missing {', '.join(sorted(missing))}")
        name = build or self.build
        instance = self.instance()
        return self._stage(instance, name, lambda: instance.fetch(name, files, float(self.timeout)))

    def _stage(
        self, instance: Instance, build: str, request: Callable[[], dict[str, Any]]
    ) -> BoardInfo:
        board = self.board.board
        deadline = time.monotonic() + self.timeout
        with instance.events(STAGE_EVENTS) as events:
            answer = request()
            for line in staged_files(answer):
                self.logger.info("build %s: %s", build, line)
            done = answer_verdict(answer, board, build)
            indexed = False  # the instance said it indexed the build: the board's state is final
            for event in events if not done else ():
                if event is None:  # a keep-alive: look at the board itself
                    done = indexed and bool(settled(instance.board(board), build))
                elif event.get("kind") == "build-indexed" and event.get("build") == build:
                    indexed = True
                    done = bool(settled(instance.board(board), build, strict=True))
                else:
                    done = bool(event_verdict(event, board, build))
                if done or time.monotonic() > deadline:
                    break
        info = instance.board(board)
        if not done or info.build != build:
            raise StageError(
                f"board {board} not rendered from build {build} within {self.timeout} s; "
                f"now: {describe(info)}"
            )
        self.logger.info("%s", describe(info))
        return info

    @step(title="devboot", args=["entry"])  # type: ignore[untyped-decorator]
    def devboot(self, entry: str = "") -> None:
        """In barebox (the bound ``BareboxDriver``, at its prompt): run ``devboot [entry]`` and
        wait until the kernel starts (``BareboxDriver``'s ``bootstring``).

        barebox fetches the devboot script overrided rendered for this board over TFTP and boots
        the board's FIT, initrd and bootargs.
        """
        barebox = self.barebox
        if barebox is None:
            raise StageError("devboot: OverridedDriver is not bound to a BareboxDriver")
        self.target.activate(self)  # and BareboxDriver with it: at barebox's prompt
        if self.net_server:
            barebox.run_check("ifup -a1", timeout=60)
            barebox.run_check(f"global.net.server={self.net_server}")
        # BareboxDriver quietens barebox at its prompt; the boot's messages are worth seeing.
        devboot = f"devboot {entry}".rstrip()
        command = f"global.loglevel={barebox.saved_log_level}; {devboot}"
        barebox.console.sendline(command)
        index, before, _, _ = barebox.console.expect(
            # barebox's last word when every entry failed; "... found on 'x'" is one of several
            [barebox.bootstring, r"Nothing bootable found\r?\n"],
            timeout=self.boot_timeout,
        )
        if index != 0:
            tail = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", before.decode(errors="replace"))
            raise StageError(f"{devboot}: barebox booted nothing: {tail.strip()[-500:]}")


class Status(enum.Enum):
    """The states of ``OverridedStrategy``."""

    unknown = 0
    off = 1
    barebox = 2  # at barebox's prompt
    booted = 3  # devboot ran; the kernel started
    shell = 4


@target_factory.reg_driver
@attr.s(eq=False)
class OverridedStrategy(Strategy):  # type: ignore[misc]  # labgrid is untyped
    """Power-cycle into barebox, boot what overrided rendered with ``devboot``, log in.

    States: ``off``, ``barebox`` (power cycled, at barebox's prompt), ``booted``
    (``OverridedDriver.devboot()``: the kernel started), ``shell`` (``ShellDriver`` logged
    in; needs one bound). Stage the build first: ``OverridedDriver.stage()``.
    """

    bindings = {  # noqa: RUF012  # labgrid reads it from the class
        "power": "PowerProtocol",
        "console": "ConsoleProtocol",
        "barebox": "BareboxDriver",
        "overrided": "OverridedDriver",
        "shell": {"ShellDriver", None},
    }

    status: Status = attr.ib(default=Status.unknown)

    @never_retry  # type: ignore[untyped-decorator]
    @step(args=["status"])  # type: ignore[untyped-decorator]
    def transition(self, status: Status | str) -> None:
        """Go to ``status`` (a ``Status`` or its name), through the states before it."""
        if not isinstance(status, Status):
            status = Status[status]
        if status == self.status:
            return
        if status == Status.off:
            self.target.deactivate(self.console)
            self.target.activate(self.power)
            self.power.off()
        elif status == Status.barebox:
            self.transition(Status.off)
            self.target.activate(self.console)
            self.power.cycle()
            self.target.activate(self.barebox)  # stops autoboot at barebox's prompt
        elif status == Status.booted:
            self.transition(Status.barebox)
            self.overrided.devboot()
        elif status == Status.shell:
            if self.shell is None:
                raise StrategyError("OverridedStrategy: shell needs a ShellDriver")
            self.transition(Status.booted)
            self.target.activate(self.shell)
        else:
            raise StrategyError(f"OverridedStrategy: cannot go to {status.name}")
        self.status = status
