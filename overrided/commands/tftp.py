"""`overrided tftp serve DIR`: serve a folder read-only over TFTP (a tftpd-hpa drop-in)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from overrided.errors import OverridedError
from overrided.folder import FolderNamespace
from overrided.tftp import TftpServer
from overrided.tftp.packets import MAX_BLKSIZE


def register(subparsers: Any) -> None:
    """Add the ``tftp`` command and its ``serve`` subcommand."""
    parser = subparsers.add_parser("tftp", help="TFTP tools")
    sub = parser.add_subparsers(dest="tftp_command", metavar="SUBCOMMAND", required=True)
    serve = sub.add_parser("serve", help="serve a folder read-only over TFTP")
    serve.add_argument("dir", type=Path, help="folder to serve")
    serve.add_argument("--addr", default="0.0.0.0", help="address to bind (IPv4 or IPv6)")
    serve.add_argument("--port", type=int, default=6969, help="UDP port (69 needs root)")
    serve.add_argument("--max-blksize", type=int, default=MAX_BLKSIZE, help="cap on blksize")
    serve.add_argument("--max-windowsize", type=int, default=64, help="cap on windowsize")
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Serve ``args.dir`` until SIGINT/SIGTERM."""
    root: Path = args.dir
    if not root.is_dir():
        raise OverridedError(f"{root}: not a directory")
    server = TftpServer(
        FolderNamespace(root),
        max_blksize=args.max_blksize,
        max_windowsize=args.max_windowsize,
    )
    asyncio.run(_serve(server, args.addr, args.port))
    return 0


async def _serve(server: TftpServer, addr: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await server.start(addr, port)
    await stop.wait()
    await server.close()
