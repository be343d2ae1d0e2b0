"""A small parser of iPXE's script language, to read back the scripts we render.

It follows iPXE ``src/core/exec.c`` and ``src/image/script.c``: the first line is ``#!ipxe``;
lines split at whitespace (no quoting); a token starting with ``#`` starts a comment; ``&&``,
``||``, ``;`` separate commands; ``:name`` lines are labels; ``${...}`` is expanded.
"""

from __future__ import annotations

# command → (options taking a value, flag options, min positional, max positional or None)
COMMANDS: dict[str, tuple[set[str], set[str], int, int | None]] = {
    "kernel": (
        {"--name", "-n", "--timeout", "-t"},
        {"--autofree", "-a", "--replace", "-r"},
        1,
        None,
    ),
    "initrd": ({"--name", "-n", "--timeout", "-t"}, {"--autofree", "-a"}, 1, None),
    "imgfetch": ({"--name", "-n", "--timeout", "-t"}, {"--autofree", "-a"}, 1, None),
    "boot": ({"--timeout", "-t"}, {"--autofree", "-a", "--replace", "-r"}, 0, 1),
    "echo": (set(), {"-n"}, 0, None),
    "dhcp": (set(), set(), 0, None),
    "exit": (set(), set(), 0, 1),
}


class IpxeSyntaxError(AssertionError):
    """A line the parser (and so iPXE) would not accept."""


def parse(text: str) -> list[list[str]]:
    """Commands (argv lists) of an iPXE script, in order; raise on anything iPXE would reject."""
    lines = text.split("\n")
    if lines[0] != "#!ipxe":
        raise IpxeSyntaxError(f"first line must be '#!ipxe', got {lines[0]!r}")
    commands: list[list[str]] = []
    for number, line in enumerate(lines[1:], start=2):
        tokens = line.split()
        if tokens and tokens[0].startswith(":"):
            continue  # a label
        argv: list[str] = []
        for token in tokens:
            if token.startswith("#"):
                break  # the rest of the line is a comment
            if token in ("&&", "||", ";"):
                if argv:
                    commands.append(_check_command(argv, number))
                argv = []
                continue
            if "${" in token:
                raise IpxeSyntaxError(f"line {number}: {token!r} would be expanded")
            argv.append(token)
        if argv:
            commands.append(_check_command(argv, number))
    return commands


def _check_command(argv: list[str], number: int) -> list[str]:
    name = argv[0]
    if name not in COMMANDS:
        raise IpxeSyntaxError(f"line {number}: unknown command {name!r}")
    valued, flags, least, most = COMMANDS[name]
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] in valued:
            if i + 1 >= len(argv):
                raise IpxeSyntaxError(f"line {number}: {argv[i]} needs a value")
            i += 2
        elif argv[i] in flags:
            i += 1
        else:
            raise IpxeSyntaxError(f"line {number}: {name}: unknown option {argv[i]!r}")
    positional = argv[i:]
    # kernel/initrd: one URI, and (kernel) the rest is the image's command line
    count = 1 if name in ("kernel", "initrd", "imgfetch") and positional else len(positional)
    if count < least or (most is not None and count > most):
        raise IpxeSyntaxError(f"line {number}: {name}: wrong number of arguments")
    return argv


def uri(argv: list[str]) -> str:
    """The URI argument of a kernel/initrd command (after its options)."""
    i = 1
    while argv[i].startswith("-"):
        i += 2 if argv[i] in ("--name", "-n", "--timeout", "-t") else 1
    return argv[i]
