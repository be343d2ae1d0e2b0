"""Download throughput of one 64 MiB artifact: overrided's HTTP side vs Debian's nginx.

Both servers run on loopback in this run, each in its own process with one worker: nginx from a
temporary config (``sendfile on``), overrided as ``make_app`` over a one-file service (the same
artifact handler ``overrided serve`` uses). The client is curl for both, writing to /dev/null;
rounds alternate between the servers and the table shows medians.

    .venv/bin/python bench/bench_http.py [--size-mib 64] [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAME = "afa-fit-bench-0123456789ab"

SERVER = r"""
import asyncio, sys
from pathlib import Path
from aiohttp import web
from overrided.http import make_app
from overrided.served import Entry, NotServed, Transfer, View
from overrided.state import EventHub, Journal

class OneFile:
    def __init__(self, path: Path) -> None:
        self.builds_dir = path.parent / "kernel-builds"
        self.events = EventHub()
        self.journal = Journal()
        self.entry = Entry(path.name, View.of_file(path, path.stat().st_size), "bench")
    def lookup(self, name, client=None):
        if name != self.entry.name:
            raise NotServed(f"{name!r} is not in the catalog")
        return self.entry
    def boards(self): return []
    def builds(self): return []
    async def index_now(self, build): raise NotImplementedError
    async def remove_build(self, build): raise NotImplementedError
    def started(self, t: Transfer) -> None: pass
    def finished(self, t: Transfer) -> None: self.journal.add(t)

async def main() -> None:
    app = make_app(OneFile(Path(sys.argv[1])), token="bench")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[2])).start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    sendfile on;
    tcp_nopush on;
    access_log off;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
    }}
}}
"""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    """Until ``port`` accepts connections (at most 20 s)."""
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port}")


def fetch(url: str, size: int) -> float:
    """One download with curl to /dev/null; bytes per second of the whole request."""
    r = subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    got, seconds = r.stdout.split()
    if int(got) != size:
        raise SystemExit(f"{url}: got {got} bytes, expected {size}")
    return size / float(seconds)


def main() -> int:
    """Run the comparison and print the table and ``ratio_vs_nginx=``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        root = Path(tmp)
        (root / "www").mkdir()
        (root / "tmp").mkdir()
        artifact = root / "www" / NAME
        with open(artifact, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        nginx_port, ours_port = free_port(), free_port()
        (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=nginx_port))
        procs = [
            subprocess.Popen([nginx, "-p", str(root), "-c", str(root / "nginx.conf")]),
            subprocess.Popen(
                [sys.executable, "-c", SERVER, str(artifact), str(ours_port)],
                stdout=subprocess.DEVNULL,
            ),
        ]
        try:
            wait_listening(nginx_port, procs[0], "nginx")
            wait_listening(ours_port, procs[1], "overrided")
            urls = {
                "nginx": f"http://127.0.0.1:{nginx_port}/{NAME}",
                "overrided": f"http://127.0.0.1:{ours_port}/{NAME}",
            }
            for url in urls.values():  # warm the page cache and both servers
                fetch(url, size)
            rates: dict[str, list[float]] = {k: [] for k in urls}
            for i in range(args.rounds):
                order = list(urls) if i % 2 == 0 else list(reversed(urls))
                for who in order:
                    rates[who].append(fetch(urls[who], size))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=10)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{args.size_mib} MiB artifact, {args.rounds} alternating rounds, curl client, loopback")
    print(f"{'server':<10} {'median MiB/s':>13} {'min MiB/s':>10} {'max MiB/s':>10}")
    for who, values in rates.items():
        print(
            f"{who:<10} {med[who] / 2**20:>13.0f} {min(values) / 2**20:>10.0f}"
            f" {max(values) / 2**20:>10.0f}"
        )
    print(f"ratio_vs_nginx={med['overrided'] / med['nginx']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
