"""`overrided boards ls|check`: list and validate board files without starting the service."""

from __future__ import annotations

import argparse
from ipaddress import IPv4Network
from pathlib import Path

from overrided.clients.barebox import script_name
from overrided.config import load_boards
from overrided.dhcp import check_subnet


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``boards ls`` and ``boards check``."""
    p = sub.add_parser("boards", help="list or check board files")
    bsub = p.add_subparsers(dest="boards_command", metavar="ACTION", required=True)
    ls = bsub.add_parser("ls", help="one line per valid board: names and what it matches")
    ls.add_argument("--boards", type=Path, default=Path("boards"))
    ls.set_defaults(func=list_boards)
    check = bsub.add_parser("check", help="validate every board file; exit 1 on any error")
    check.add_argument("--boards", type=Path, default=Path("boards"))
    check.add_argument(
        "--subnet",
        type=_subnet,
        help="the subnet DHCP serves (e.g. 192.0.2.0/24): every board's ip must lie in it",
    )
    check.set_defaults(func=check_boards)


def _subnet(text: str) -> IPv4Network:
    try:
        return IPv4Network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IPv4 subnet like 192.0.2.0/24"
        ) from None


def list_boards(args: argparse.Namespace) -> int:
    """Print each valid board and each invalid file's error."""
    boards, errors = load_boards(args.boards)
    for b in boards:
        print(
            f"{b.name}\t{script_name(b.user, b.hostname)}\t{b.rule}\t{', '.join(b.compatible)}"
            f"\tbuild={b.build or 'latest'}"
        )
    for err in errors.values():
        print(f"error: {err}")
    return 0


def check_boards(args: argparse.Namespace) -> int:
    """Validate; print one line per problem; exit status 1 if there is any."""
    boards, errors = load_boards(args.boards)
    if args.subnet is not None:
        outside = check_subnet(boards, args.subnet)
        for name, why in outside.items():
            errors[f"{args.boards.name}/{name}.toml"] = f"{args.boards.name}/{name}.toml: {why}"
        boards = [b for b in boards if b.name not in outside]
    for err in errors.values():
        print(err)
    print(f"{len(boards)} valid, {len(errors)} invalid")
    return 1 if errors else 0
