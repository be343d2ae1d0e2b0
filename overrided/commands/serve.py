"""`overrided serve`: watch builds and boards, serve per-board artifacts over TFTP and HTTP."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overrided import config_file
from overrided import fetch as fetch_mod
from overrided.config import Settings
from overrided.errors import OverridedError

if TYPE_CHECKING:
    from overrided.dhcp import Dnsmasq
    from overrided.service import OverridedService

log = logging.getLogger("overrided.serve")


class ServeError(OverridedError):
    """The service cannot start as configured."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve``."""
    p = sub.add_parser(
        "serve",
        help="serve per-board FITs, initrds and devboot scripts over TFTP and HTTP",
        description="Watch --builds and --boards, render every board, serve the results.",
    )
    d = Settings()
    p.add_argument("--boards", type=Path, default=d.boards_dir, help="board files (boards/)")
    p.add_argument("--builds", type=Path, default=d.builds_dir, help="build folders")
    p.add_argument("--store", type=Path, default=d.store_dir, help="state: blobs, cache, token")
    p.add_argument("--keys", type=Path, default=d.keys_dir, help="signing keys (never served)")
    p.add_argument("--tftp-addr", default=d.tftp_addr, help="TFTP address (default all)")
    p.add_argument("--tftp-port", type=int, default=d.tftp_port, help="TFTP port (69 as root)")
    p.add_argument("--http-addr", default=d.http_addr, help="HTTP address (default all)")
    p.add_argument("--http-port", type=int, default=d.http_port, help="HTTP port")
    p.add_argument("--no-http", action="store_true", help="serve TFTP only")
    p.add_argument(
        "--token",
        default=os.environ.get("OVERRIDED_TOKEN"),
        help="upload token (env OVERRIDED_TOKEN; default: created once in the store)",
    )
    p.add_argument("--max-upload", type=int, default=d.max_upload, help="upload size limit")
    p.add_argument(
        "--http-timeout",
        type=float,
        default=None,
        help="seconds an HTTP client may take to send a request head, or pause in an upload "
        "body, before it is dropped (default 60)",
    )
    p.add_argument("--public-url", help="base URL clients use for HTTP (iPXE scripts)")
    p.add_argument(
        "--grace",
        type=float,
        default=d.grace,
        help="seconds a replaced artifact stays served (default 600)",
    )
    p.add_argument(
        "--pin-idle",
        type=float,
        default=d.pin_idle,
        help="seconds a client keeps reading a board's stable names (script, boot net names) "
        "from one snapshot after its last read (default 60; 0: always the newest)",
    )
    p.add_argument("--max-blksize", type=int, default=d.max_blksize, help="TFTP blksize cap")
    p.add_argument("--max-windowsize", type=int, default=d.max_windowsize, help="TFTP window cap")
    p.add_argument(
        "--dhcp",
        metavar="INTERFACE",
        help="serve DHCP on this interface only (with dnsmasq): each board with a mac gets its "
        "ip, its barebox hostname, this server and its boot file (docs/network.md)",
    )
    p.add_argument(
        "--dhcp-range",
        metavar="START,END",
        help="with --dhcp: addresses for clients without a board file (default: boards only)",
    )
    p.add_argument(
        "--dhcp-proxy",
        action="store_true",
        help="with --dhcp: proxy DHCP beside another DHCP server: answer PXE clients only, "
        "hand out no addresses",
    )
    p.add_argument(
        "--config", type=Path, help="instance settings file (docs/farm.md); flags win over it"
    )
    p.add_argument("--token-file", type=Path, help="file holding the upload token")
    fetch_mod.add_options(p)
    p.set_defaults(func=run)
    # Keep last: flags given on the command line win over --config, defaults do not.
    config_file.track_defaults(p)


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings the options describe (defaults settled, if ``resolve_options`` has not)."""
    config_file.resolve(args)
    return Settings(
        boards_dir=args.boards,
        builds_dir=args.builds,
        store_dir=args.store,
        keys_dir=args.keys,
        tftp_addr=args.tftp_addr,
        tftp_port=args.tftp_port,
        http_addr=args.http_addr,
        http_port=None if args.no_http else args.http_port,
        public_url=args.public_url,
        token=args.token,
        max_upload=args.max_upload,
        grace=args.grace,
        pin_idle=args.pin_idle,
        max_blksize=args.max_blksize,
        max_windowsize=args.max_windowsize,
        **_dhcp_settings(args),
    )


def _dhcp_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``dhcp_*`` settings of ``--dhcp``, ``--dhcp-range`` and ``--dhcp-proxy``."""
    from overrided.dhcp import parse_range

    interface = config_file.unwrapped(getattr(args, "dhcp", None))
    raw_range = config_file.unwrapped(getattr(args, "dhcp_range", None))
    proxy = bool(config_file.unwrapped(getattr(args, "dhcp_proxy", False)))
    if interface is None:
        if raw_range is not None or proxy:
            raise ServeError("--dhcp-range and --dhcp-proxy need --dhcp INTERFACE")
        return {}
    if raw_range is not None and proxy:
        raise ServeError("--dhcp-proxy hands out no addresses: drop --dhcp-range")
    return {
        "dhcp_interface": interface,
        "dhcp_range": None if raw_range is None else parse_range(raw_range),
        "dhcp_proxy": proxy,
    }


def check_keys_outside_roots(settings: Settings) -> None:
    """Refuse a keys folder inside a folder whose files end up served."""
    keys = settings.keys_dir.resolve()
    for root in (settings.builds_dir, settings.boards_dir, settings.store_dir):
        r = root.resolve()
        if keys == r or keys.is_relative_to(r):
            raise ServeError(
                f"--keys {settings.keys_dir} lies inside {root}: private keys must never sit "
                "below a served folder"
            )


def resolve_options(args: argparse.Namespace) -> None:
    """The command line's options, else ``--config``'s, else the defaults; the token file."""
    path = config_file.unwrapped(args.config)
    config = config_file.load_config_file(path) if path is not None else None
    config_file.resolve(args, config, path)
    if not args.token and args.token_file is not None:
        try:
            args.token = args.token_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ServeError(f"{args.token_file}: cannot read the upload token: {err}") from None
        if not args.token:
            raise ServeError(f"{args.token_file}: the upload token file is empty")


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM."""
    resolve_options(args)
    settings = settings_of(args)
    try:
        fetch_settings = fetch_mod.settings_from(args)
    except fetch_mod.FetchError as err:
        raise ServeError(str(err)) from None
    check_keys_outside_roots(settings)
    if args.http_timeout is not None and args.http_timeout <= 0:
        raise ServeError(f"--http-timeout {args.http_timeout:g}: give a number of seconds above 0")
    asyncio.run(serve(settings, http_timeout=args.http_timeout, fetch=fetch_settings))
    return 0


def _http_base(settings: Settings, port: int) -> str:
    host = settings.http_addr
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


async def serve(
    settings: Settings,
    *,
    http_timeout: float | None = None,
    fetch: fetch_mod.FetchSettings | None = None,
) -> None:
    """Start the service and both servers, print the ready line, stop cleanly on a signal.

    ``http_timeout``: see ``--http-timeout`` (``None``: the HTTP side's default); ``fetch``:
    builds by URL (``None``: refused).
    """
    from overrided.service import OverridedService
    from overrided.tftp import TftpServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    service = OverridedService(settings)
    tftp = TftpServer(
        service,
        service,
        max_blksize=settings.max_blksize,
        max_windowsize=settings.max_windowsize,
    )
    try:
        await tftp.start(settings.tftp_addr, settings.tftp_port)
    except OverridedError as err:
        raise ServeError(str(err)) from None

    runner = None
    http_port: int | None = None
    if settings.http_port is not None:
        from aiohttp import web

        from overrided.http import load_or_create_token, make_app
        from overrided.http.app import DEFAULT_TIMEOUT, make_runner

        token = settings.token
        if not token:
            token, created = load_or_create_token(settings.store_dir)
            if created:
                print(
                    f"overrided: upload token (stored in {settings.store_dir}): {token}",
                    file=sys.stderr,
                    flush=True,
                )
        timeout = DEFAULT_TIMEOUT if http_timeout is None else http_timeout
        from overrided.http.fetch import Fetching

        app = make_app(
            service,
            token=token,
            max_upload=settings.max_upload,
            body_timeout=timeout,
            fetching=Fetching(fetch or fetch_mod.FetchSettings(), service.store),
        )
        runner = make_runner(app, timeout=timeout)
        await runner.setup()
        site = web.TCPSite(runner, settings.http_addr, settings.http_port)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            await tftp.close()
            raise ServeError(
                f"cannot bind HTTP on {settings.http_addr}:{settings.http_port}: {err.strerror}"
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        http_port = sockets[0].getsockname()[1] if sockets else settings.http_port
        if settings.public_url is None:
            service.ctx.http_base = _http_base(settings, http_port)
            if settings.http_addr in ("", "0.0.0.0", "::"):
                log.info(
                    "HTTP URLs in iPXE scripts use %s; pass --public-url for remote boards",
                    service.ctx.http_base,
                )

    dhcp = None
    try:
        await service.start()
        if settings.dhcp_interface is not None:
            dhcp = await _start_dhcp(settings, service, tftp.port)
        log.info(
            "ready: tftp %s:%d http %s serving %d names",
            settings.tftp_addr,
            tftp.port,
            f"{settings.http_addr}:{http_port}" if http_port is not None else "off",
            len(service.catalog),
        )
        await stop.wait()
        log.info("shutting down")
    finally:
        if dhcp is not None:
            await dhcp.close()
        await tftp.close()
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        await service.close()


async def _start_dhcp(settings: Settings, service: OverridedService, tftp_port: int) -> Dnsmasq:
    """Start dnsmasq for ``--dhcp``; its failures are logged and shown at ``/api/dhcp``, and
    TFTP and HTTP serve on whatever happens to it."""
    from overrided.dhcp import DhcpSettings, Dnsmasq

    assert settings.dhcp_interface is not None
    dhcp = Dnsmasq(
        DhcpSettings(settings.dhcp_interface, settings.dhcp_range, settings.dhcp_proxy),
        settings.store_dir / "dhcp",
        lambda: service.snapshot.boards,
        http_base=lambda: service.ctx.http_base,
        tftp_port=tftp_port,
    )
    service.dhcp = dhcp
    await dhcp.start()
    return dhcp
