"""iPXE scripts: rendered, then read back by a small parser of iPXE's script language.

The parser follows iPXE ``src/core/exec.c`` and ``src/image/script.c``: the first line is
``#!ipxe``; lines split at whitespace (no quoting); a token starting with ``#`` starts a comment;
``&&``, ``||``, ``;`` separate commands; ``:name`` lines are labels; ``${...}`` is expanded. The
real iPXE binary is not run here: it needs a PXE/EFI firmware boot we do not have in CI.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import unquote, urlsplit

import pytest

from overrided.clients import Artifacts
from overrided.clients.ipxe import IpxeClientError, artifact_url, render

BASE = Artifacts(
    board="qemu-virt",
    hostname="dummy-virt",
    user="none",
    arch="arm64",
    provenance="build b1, conf-1 (linux,dummy-virt)",
    kernel="qemu-virt/kernel-0123456789ab",
    initrd="qemu-virt/initrd-0123456789ab",
    bootargs={"console": "console=ttyAMA0 earlycon", "root": "rdinit=/init"},
    http_base="http://192.0.2.1:8080/",
)

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


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("kernel x\n", "first line"),
        ("#!ipxe\nchain http://x/\n", "unknown command"),
        ("#!ipxe\nkernel --bogus http://x/k\n", "unknown option"),
        ("#!ipxe\nkernel\n", "wrong number"),
        ("#!ipxe\ninitrd --name\n", "needs a value"),
        ("#!ipxe\nkernel http://x/${k}\n", "expanded"),
        ("#!ipxe\nboot a b\n", "wrong number"),
    ],
)
def test_parser_rejects(text: str, error: str) -> None:
    with pytest.raises(IpxeSyntaxError, match=error):
        parse(text)


def test_parser_reads_comments_and_chains() -> None:
    text = "#!ipxe\n# a comment\n:start\ndhcp && echo up || exit 1 # trailing\nboot\n"
    assert parse(text) == [["dhcp"], ["echo", "up"], ["exit", "1"], ["boot"]]


def test_script_is_valid_and_names_served_artifacts() -> None:
    ((name, body),) = render(BASE).items()
    assert name == "boot/qemu-virt.ipxe"
    commands = parse(body.decode())
    assert [c[0] for c in commands] == ["kernel", "initrd", "boot"]
    kernel, initrd, _ = commands
    served = {BASE.kernel, BASE.initrd}
    for argv in (kernel, initrd):
        url = urlsplit(uri(argv))
        assert (url.scheme, url.netloc) == ("http", "192.0.2.1:8080")
        assert unquote(url.path.lstrip("/")) in served
    # the kernel's command line names the initrd as loaded (EFI stub) and carries the bootargs
    assert kernel[2:] == ["initrd=initrd", "console=ttyAMA0", "earlycon", "rdinit=/init"]
    assert initrd[1:3] == ["--name", "initrd"]


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("qemu-virt/kernel-1", "http://h:8080/qemu-virt/kernel-1"),
        ("odd name#1", "http://h:8080/odd%20name%231"),  # no spaces or '#' reach iPXE
        ("cost$5", "http://h:8080/cost%245"),  # no '${' either
    ],
)
def test_urls_are_percent_encoded(name: str, url: str) -> None:
    assert artifact_url("http://h:8080/", name) == url
    assert artifact_url("http://h:8080", name) == url


def test_odd_names_still_parse() -> None:
    a = replace(BASE, kernel="odd name#1/${x}", initrd=None, bootargs={})
    commands = parse(render(a)["boot/qemu-virt.ipxe"].decode())
    assert unquote(urlsplit(uri(commands[0])).path) == "/odd name#1/${x}"
    assert [c[0] for c in commands] == ["kernel", "boot"]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"kernel": None}, "plain kernel"),
        ({"http_base": None}, "HTTP"),
        ({"bootargs": {"x": "a=${b}"}}, "bootargs.x"),
        ({"bootargs": {"x": "#comment"}}, "bootargs.x"),
    ],
)
def test_refused(changes: dict[str, object], error: str) -> None:
    with pytest.raises(IpxeClientError, match=error):
        render(replace(BASE, **changes))  # type: ignore[arg-type]
