"""`overrided` command line: dispatches to the subcommand modules in ``overrided.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from overrided import __version__
from overrided.errors import OverridedError

# Each module defines ``register(subparsers)``, which adds its parser and sets ``func`` to a
# callable taking the parsed namespace and returning an exit status.
COMMAND_MODULES: tuple[str, ...] = (
    "overrided.commands.fit",
    "overrided.commands.tftp",
    "overrided.commands.cpio",
    "overrided.commands.serve",
    "overrided.commands.boards",
    "overrided.commands.keys",
    "overrided.commands.store",
    "overrided.commands.dhcp",
    "overrided.commands.builds",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="overrided",
        description="Per-board boot artifacts (FIT, initrd, devboot scripts) over TFTP and HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"overrided {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line to stderr and return 1 (2 for usage errors)."""
    try:
        return _run(argv)
    except BrokenPipeError:
        # `overrided fit ls FILE | head`: the reader left; stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.func(args)
    except OverridedError as err:
        print(f"overrided: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status
