"""A real nginx serving a folder, as a farm's artifact store: unprivileged paths, its own config.

Typical use::

    with Nginx(tmp_path / "nginx") as store:          # 127.0.0.1, a free port
        (store.www / "builds" / "b1").mkdir(parents=True)
        ...
        store.url("builds/b1/image.fit")
        store.requests()                                # the access log: what was fetched

Besides ``www/`` as it is, the server has ``/slow/`` (the same files at ``rate`` per
connection, nginx ``limit_rate``), a redirect loop at ``/loop/a`` and ``/loop/b``, and
``/builds/moved/<path>``, which redirects to ``/<path>``. The access log records each request's
method, path, status, bytes sent, query and ``Range`` header, one per line.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format farm '$request_method $uri $status $body_bytes_sent args=$args range=$http_range';
    access_log {root}/access.log farm;
    sendfile on;
    default_type application/octet-stream;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen {addr}:{port};
        root {root}/www;
        location /slow/ {{
            alias {root}/www/;
            limit_rate {rate};
        }}
        location = /loop/a {{ return 302 /loop/b; }}
        location = /loop/b {{ return 302 /loop/a; }}
        location /builds/moved/ {{
            rewrite ^/builds/moved/(.*)$ /$1 redirect;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """Debian's nginx, if installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None


def free_tcp_port(addr: str = "127.0.0.1") -> int:
    """A TCP port on ``addr`` that was free a moment ago."""
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Request:
    """One line of the access log."""

    method: str
    path: str
    status: int
    sent: int
    args: str  # the query string as it arrived
    range: str


class Nginx:
    """One nginx process serving ``root/www``; a context manager."""

    def __init__(
        self,
        root: Path,
        *,
        addr: str = "127.0.0.1",
        port: int | None = None,
        rate: str = "256k",
        wrap: Callable[[Sequence[str]], list[str]] | None = None,
    ) -> None:
        self.root = root
        self.www = root / "www"
        self.addr = addr
        self.port = port or free_tcp_port()
        self.rate = rate
        self.wrap = wrap or list  # e.g. Netns.wrap: run it inside a network namespace
        self.proc: subprocess.Popen[bytes] | None = None
        for d in (self.www, root / "tmp"):
            d.mkdir(parents=True, exist_ok=True)

    def url(self, path: str) -> str:
        """The URL of ``path`` below the served folder."""
        return f"http://{self.addr}:{self.port}/{path}"

    def start(self) -> Nginx:
        """Write the config, start nginx, wait for its pid file (at most 20 s)."""
        binary = nginx_binary()
        assert binary, "nginx is not installed (apt install nginx)"
        conf = self.root / "nginx.conf"
        conf.write_text(CONF.format(root=self.root, addr=self.addr, port=self.port, rate=self.rate))
        pid = self.root / "nginx.pid"
        pid.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            self.wrap([binary, "-p", str(self.root), "-c", str(conf)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not pid.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nginx did not start: {self.error_log()}")
            time.sleep(0.05)
        time.sleep(0.1)  # the pid file is written just before listen() returns to the loop
        return self

    def kill(self) -> None:
        """SIGKILL: every connection is cut where it is."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Stop nginx (SIGTERM, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def error_log(self) -> str:
        """nginx's error log so far."""
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def requests(self) -> list[Request]:
        """Every request logged so far (nginx writes each line when the request ends)."""
        path = self.root / "access.log"
        out: list[Request] = []
        for line in path.read_text().splitlines() if path.exists() else []:
            method, uri, status, sent, args, rng = line.split(" ", 5)
            out.append(
                Request(
                    method,
                    uri,
                    int(status),
                    int(sent),
                    args.removeprefix("args="),
                    rng.removeprefix("range="),
                )
            )
        return out
