"""Start the real ``overrided serve`` as a subprocess on loopback, wait for "ready", stop it.

Typical use::

    with Served(tmp_path) as srv:                # temp boards/, kernel-builds/, store
        srv.tftp_get("none-devboot-board-a")     # real tftp-hpa client
        srv.http_get("/api/boards")              # urllib against the HTTP port
        srv.wait_for(lambda: "afa-devboot-x" in srv.names())

Ports are picked free on 127.0.0.1 before the start (TFTP UDP, HTTP TCP). The process log is
kept in ``srv.log_path`` and shown when a wait times out.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.netns import Netns

if TYPE_CHECKING:
    from overrided.config import Settings

HOST = "127.0.0.1"
# One board that the sample FITs (``tests/support/fits.py``) serve as ``board-a``.
BOARD_A = 'compatible = ["v,board-a", "v,soc"]\narch = "arm64"\n'

REPO = Path(__file__).resolve().parents[2]


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port on 127.0.0.1 that was free a moment ago (UDP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Served:
    """One ``overrided serve`` process and its folders; a context manager."""

    def __init__(
        self,
        root: Path,
        *,
        boards: Path | None = None,
        builds: Path | None = None,
        extra: Sequence[str] = (),
        token: str = "test-token",
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.boards = boards or root / "boards"
        self.builds = builds or root / "kernel-builds"
        self.store = root / "store"
        self.keys = root / "keys"
        for d in (self.boards, self.builds):
            d.mkdir(parents=True, exist_ok=True)
        self.tftp_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port(socket.SOCK_STREAM)
        self.token = token
        self.extra = list(extra)
        self.env = env or {}
        self.log_path = root / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_base(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.http_port}"

    def command(self) -> list[str]:
        """The exact command line started."""
        return [
            sys.executable,
            "-m",
            "overrided",
            "serve",
            "--boards",
            str(self.boards),
            "--builds",
            str(self.builds),
            "--store",
            str(self.store),
            "--keys",
            str(self.keys),
            "--tftp-addr",
            HOST,
            "--tftp-port",
            str(self.tftp_port),
            "--http-addr",
            HOST,
            "--http-port",
            str(self.http_port),
            "--token",
            self.token,
            *self.extra,
        ]

    def start(self, timeout: float = 60.0) -> Served:
        """Start the process and wait for its "ready" log line."""
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(), cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        self.wait_for(lambda: " ready: " in self.log(), timeout=timeout, what="ready line")
        return self

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait; returns the exit status (kills it if it does not stop)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

    def __enter__(self) -> Served:
        # ``with srv.start():`` must not start a second process beside the first.
        if self.proc is not None and self.proc.poll() is None:
            return self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, cond: Callable[[], Any], *, timeout: float = 30.0, what: str = "") -> Any:
        """Poll ``cond`` until it returns something true; fail with the log on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"overrided serve exited ({self.proc.returncode}):\n{self.log()}"
                )
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or cond}:\n{self.log()[-6000:]}")
            time.sleep(0.05)

    # --- clients ------------------------------------------------------------------------------

    def tftp_get(self, name: str, dest: Path | None = None) -> bytes:
        """Fetch ``name`` with tftp-hpa's ``tftp``; raises ``FileNotFoundError`` if not served."""
        dest = dest or self.root / "fetched" / name.replace("/", "_")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        r = subprocess.run(
            ["tftp", "-v", HOST, str(self.tftp_port), "-m", "binary", "-c", "get", name, str(dest)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        out = r.stdout + r.stderr
        # tftp-hpa exits 0 even on errors; its output says what happened.
        if "Error code" in out or not dest.exists() or "Received" not in out:
            dest.unlink(missing_ok=True)
            raise FileNotFoundError(f"tftp get {name}: {out.strip()}")
        return dest.read_bytes()

    def http_get(self, path: str) -> bytes:
        """GET ``path`` from the HTTP port (raises ``urllib.error.HTTPError`` on 4xx/5xx)."""
        with urllib.request.urlopen(self.http_base + path, timeout=30) as r:
            data: bytes = r.read()
            return data

    def api(self, path: str) -> Any:
        """GET a JSON API path and decode it."""
        return json.loads(self.http_get(path))

    def served(self, name: str) -> bytes | None:
        """``name`` over TFTP, or ``None`` if it is not served."""
        try:
            return self.tftp_get(name)
        except FileNotFoundError:
            return None


class NsServed(Served):
    """``overrided serve`` inside the network namespace ``ns``. The host cannot reach the
    namespace's loopback, so HTTP goes through curl run inside it."""

    def __init__(self, root: Path, ns: Netns, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.ns = ns

    def command(self) -> list[str]:
        """``ip netns exec <ns> python -m overrided serve …``."""
        return self.ns.wrap(super().command())

    def curl(self, *args: str) -> tuple[int, bytes]:
        """curl inside the namespace: (HTTP status, body)."""
        proc = self.ns.run(
            ["curl", "-sS", "--max-time", "120", "-o", "-", "-w", "\n%{http_code}", *args],
            text=False,
            check=False,
            timeout=150,
        )
        body, _, code = bytes(proc.stdout).rpartition(b"\n")
        assert code.isdigit(), proc.stderr
        return int(code), body

    def http_get(self, path: str) -> bytes:
        """GET ``path``; ``FileNotFoundError`` unless it answers 200."""
        status, body = self.curl(self.http_base + path)
        if status != 200:
            raise FileNotFoundError(f"GET {path}: {status} {body[:200]!r}")
        return body

    def api(self, path: str) -> Any:
        """GET a JSON API path."""
        return json.loads(self.http_get(path))


def served_with_board_a(root: Path, *extra: str) -> Served:
    """The real server on ``root`` with one board file, ``board-a`` (``BOARD_A``); not started."""
    (root / "boards").mkdir(parents=True, exist_ok=True)
    (root / "boards" / "board-a.toml").write_text(BOARD_A)
    return Served(root, extra=extra)


def sample_service(tmp_path: Path, board: str, **settings: Any) -> tuple[Settings, Path, Path]:
    """What an ``OverridedService`` in this process serves: board file ``a.toml`` holding
    ``board``, build ``b1`` of the sample FIT, and ``settings`` on top. Returns the settings,
    the build folder, and a second sample FIT (other hashes) to rebuild it with."""
    from overrided.config import Settings
    from tests.support.fits import sample_fit

    one = sample_fit(tmp_path / "fit1").fit
    two = sample_fit(tmp_path / "fit2", hashes=("sha1",)).fit
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "a.toml").write_text(board)
    build = tmp_path / "kernel-builds" / "b1"
    build.mkdir(parents=True)
    shutil.copy(one, build / "image.fit")
    ready = Settings(
        boards_dir=tmp_path / "boards",
        builds_dir=tmp_path / "kernel-builds",
        store_dir=tmp_path / "store",
        keys_dir=tmp_path / "keys",
        quiet=0.0,
        **settings,
    )
    return ready, build, two


def rebuild(build: Path, fit: Path) -> None:
    """Replace ``build``'s image.fit with ``fit`` by a rename, as a finished make would."""
    shutil.copy(fit, build / "image.fit.tmp")
    (build / "image.fit.tmp").replace(build / "image.fit")
