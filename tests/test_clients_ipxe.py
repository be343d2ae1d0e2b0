"""iPXE scripts: rendered, then read back by a small parser of iPXE's script language
(``tests/support/ipxe.py``). The real iPXE binary is not run here: it needs a PXE/EFI firmware
boot we do not have in CI.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import unquote, urlsplit

import pytest

from overrided.clients import Artifacts
from overrided.clients.ipxe import IpxeClientError, artifact_url, render
from tests.support.ipxe import IpxeSyntaxError, parse, uri

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
