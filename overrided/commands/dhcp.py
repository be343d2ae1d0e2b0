"""`overrided dhcp export`: the boards' DHCP host entries, for a DHCP server that is not ours."""

from __future__ import annotations

import argparse
import sys
from ipaddress import IPv4Address
from pathlib import Path

from overrided import dhcp
from overrided.config import load_boards
from overrided.errors import OverridedError


class DhcpCommandError(OverridedError):
    """The export cannot be made as asked."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dhcp export``."""
    p = sub.add_parser("dhcp", help="DHCP entries of the boards (docs/network.md)")
    dsub = p.add_subparsers(dest="dhcp_command", metavar="ACTION", required=True)
    ex = dsub.add_parser(
        "export",
        help="print host entries (MAC, IP, hostname, next-server, boot file) of every board "
        "with a mac",
    )
    ex.add_argument("--boards", type=Path, default=Path("boards"))
    ex.add_argument("--format", choices=sorted(dhcp.EXPORTS), default="dnsmasq")
    ex.add_argument(
        "--server", required=True, help="this server's IPv4 address (next-server, option 66)"
    )
    ex.add_argument(
        "--public-url", help="base URL of overrided's HTTP, for iPXE boards' script URLs"
    )
    ex.set_defaults(func=export)


def export(args: argparse.Namespace) -> int:
    """Print the entries; each invalid board file or unusable board is one line on stderr."""
    try:
        server = IPv4Address(args.server)
    except ValueError:
        raise DhcpCommandError(f"--server {args.server!r}: give an IPv4 address") from None
    boards, errors = load_boards(args.boards)
    entries, problems = dhcp.host_entries(boards, server, http_base=args.public_url)
    for err in errors.values():
        print(err, file=sys.stderr)
    for board, why in problems.items():
        print(f"board {board}: {why}", file=sys.stderr)
    sys.stdout.write(dhcp.EXPORTS[args.format](entries, server))
    return 0
