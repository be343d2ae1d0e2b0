"""U-Boot descriptions: pxelinux entries and legacy script images (``boot.scr``).

Checked against real peers: ``mkimage -T script`` must produce byte-identical images,
``mkimage -l``/``dumpimage`` must read ours, and Debian's U-Boot 2023.01 must ``source`` one.
Boots through both formats are in ``tests/e2e/test_boot.py``.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from overrided.clients import Artifacts
from overrided.clients.uboot import (
    UBootClientError,
    boot_script,
    legacy_script_image,
    pxe_entry,
    pxe_mac_name,
    render_bootscr,
    render_pxe,
)
from overrided.errors import OverridedError
from tests.support.uboot import UBoot

BASE = Artifacts(
    board="qemu-virt",
    hostname="dummy-virt",
    user="none",
    arch="arm64",
    provenance="build b1, conf-1: board string 0 'linux,dummy-virt' matches",
    fit="qemu-virt/fit-0123456789ab",
    configuration="conf-1",
    oftree="qemu-virt/oftree-0123456789ab",
    initrd="qemu-virt/initrd-0123456789ab",
    bootargs={"console": "console=ttyAMA0", "debug": "loglevel=7"},
)


@pytest.mark.parametrize(
    ("mac", "name"),
    [
        ("52:54:00:12:34:56", "pxelinux.cfg/01-52-54-00-12-34-56"),
        ("52:54:00:AB:CD:EF", "pxelinux.cfg/01-52-54-00-ab-cd-ef"),  # U-Boot prints lower case
        ("52-54-00-ab-cd-ef", "pxelinux.cfg/01-52-54-00-ab-cd-ef"),
        ("5254.00ab.cdef", "pxelinux.cfg/01-52-54-00-ab-cd-ef"),
    ],
)
def test_pxe_name_by_mac(mac: str, name: str) -> None:
    assert pxe_mac_name(mac) == name
    assert list(render_pxe(replace(BASE, mac=mac))) == [name]


@pytest.mark.parametrize("mac", ["52:54:00:12:34", "52:54:00:12:34:5g", "", "52:54:00:12:34:56:78"])
def test_bad_mac_is_refused(mac: str) -> None:
    with pytest.raises(UBootClientError, match="mac"):
        pxe_mac_name(mac)


def test_pxe_without_mac_is_named_by_board() -> None:
    # The board reaches it with `setenv pxeuuid qemu-virt` (tried first by `pxe get`).
    assert list(render_pxe(BASE)) == ["pxelinux.cfg/qemu-virt"]


def _label(entry: str) -> dict[str, str]:
    """The keyword → value lines of the entry's only label (syslinux grammar)."""
    out: dict[str, str] = {}
    in_label = False
    for line in entry.splitlines():
        words = line.split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "label":
            in_label = True
            continue
        if in_label:
            out[words[0]] = words[1] if len(words) > 1 else ""
    return out


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {},
            {
                "kernel": "qemu-virt/fit-0123456789ab#conf-1",
                "fdt": "qemu-virt/oftree-0123456789ab",
                "initrd": "qemu-virt/initrd-0123456789ab",
                "append": "console=ttyAMA0 loglevel=7",
            },
        ),
        # a FIT without a named configuration boots its default
        ({"configuration": None}, {"kernel": "qemu-virt/fit-0123456789ab"}),
        # plain kernel, DTB and overlays
        (
            {"image_mode": "kernel", "kernel": "k/Image-1", "overlays": ("o/a.dtbo", "o/b.dtbo")},
            {"kernel": "k/Image-1", "fdtoverlays": "o/a.dtbo o/b.dtbo"},
        ),
        # keep the board's own DT: no fdt line
        ({"oftree_mode": "keep"}, {"fdt": None}),
        ({"initrd": None, "bootargs": {}}, {"initrd": None, "append": None}),
    ],
)
def test_pxe_entry_lines(changes: dict[str, object], expected: dict[str, str | None]) -> None:
    entry = pxe_entry(replace(BASE, **changes))  # type: ignore[arg-type]
    assert entry.splitlines()[0].startswith("# overrided: qemu-virt: build b1")
    assert "default overrided" in entry.splitlines()
    # a menu would make U-Boot wait at "Enter choice:" instead of booting
    assert not any(line.split()[:1] == ["menu"] for line in entry.splitlines())
    label = _label(entry)
    for key, value in expected.items():
        assert label.get(key) == value, entry


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"fit": None, "kernel": None}, "neither a FIT nor a kernel"),
        ({"initrd": "with space"}, "initrd"),
        ({"fit": "a#b"}, "fit"),
        ({"configuration": "conf 1"}, "configuration"),
        ({"bootargs": {"x": "a\nb"}}, "bootargs"),
        ({"initrd": "x" * 128}, "127"),
    ],
)
def test_pxe_refuses_what_it_cannot_say(changes: dict[str, object], field: str) -> None:
    with pytest.raises(UBootClientError, match=field) as err:
        render_pxe(replace(BASE, **changes))  # type: ignore[arg-type]
    assert isinstance(err.value, OverridedError)
    assert "qemu-virt" in str(err.value)


def test_boot_script_for_a_fit() -> None:
    text = boot_script(BASE)
    lines = text.splitlines()
    assert "setenv bootargs 'console=ttyAMA0 loglevel=7'" in lines
    assert 'test -n "${overrided_fit_addr}" || setenv overrided_fit_addr ${kernel_addr_r}' in lines
    # One chained line: each step runs only if the previous succeeded; the initrd is loaded
    # last so that ${filesize} is its size when bootm runs; the FIT's own fdt is used.
    assert (
        "tftpboot ${overrided_fit_addr} qemu-virt/fit-0123456789ab"
        " && tftpboot ${overrided_initrd_addr} qemu-virt/initrd-0123456789ab"
        " && bootm ${overrided_fit_addr}#conf-1 ${overrided_initrd_addr}:${filesize}"
    ) in lines


def test_boot_script_for_a_kernel_with_overlays() -> None:
    a = replace(BASE, image_mode="kernel", kernel="k/Image", overlays=("o/x.dtbo",), initrd=None)
    last = next(line for line in boot_script(a).splitlines() if "&&" in line)
    assert last.split(" && ") == [
        "tftpboot ${overrided_kernel_addr} k/Image",
        "tftpboot ${overrided_fdt_addr} qemu-virt/oftree-0123456789ab",
        "fdt addr ${overrided_fdt_addr}",
        "fdt resize 65536",
        "tftpboot ${overrided_overlay_addr} o/x.dtbo",
        "fdt apply ${overrided_overlay_addr}",
        "booti ${overrided_kernel_addr} - ${overrided_fdt_addr}",
    ]
    arm = boot_script(replace(a, arch="arm"))
    assert "bootz ${overrided_kernel_addr} - ${overrided_fdt_addr}" in arm


def test_boot_script_refuses_quotes_in_bootargs() -> None:
    with pytest.raises(UBootClientError, match="bootargs"):
        boot_script(replace(BASE, bootargs={"x": "it's"}))


@pytest.mark.parametrize("arch", ["arm64", "arm", "riscv", "x86_64"])
def test_script_image_is_what_mkimage_writes(tmp_path: Path, arch: str) -> None:
    script = boot_script(replace(BASE, arch=arch))
    ours = legacy_script_image(script, name="overrided qemu-virt", arch=arch)
    (tmp_path / "s.txt").write_text(script)
    ref = tmp_path / "ref.scr"
    argv = ["mkimage", "-A", arch, "-O", "linux", "-T", "script", "-C", "none"]
    argv += ["-n", "overrided qemu-virt", "-d", str(tmp_path / "s.txt"), str(ref)]
    subprocess.run(
        argv,
        check=True,
        capture_output=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": "0"},  # mkimage's time stamp; ours is 0
    )
    assert ours == ref.read_bytes()


def test_script_image_is_read_by_mkimage_and_dumpimage(tmp_path: Path) -> None:
    ((name, image),) = render_bootscr(BASE).items()
    assert name == "qemu-virt.scr"
    path = tmp_path / name
    path.write_bytes(image)
    listing = subprocess.run(
        ["mkimage", "-l", path], check=True, capture_output=True, text=True
    ).stdout
    assert "Image Name:   overrided qemu-virt" in listing
    assert "AArch64 Linux Script (uncompressed)" in listing
    out = tmp_path / "out"
    subprocess.run(["dumpimage", "-T", "script", "-p", "0", "-o", out, path], check=True)
    # dumpimage hands back the data part: the length table (len, 0) then the script
    assert out.read_bytes()[8:] == boot_script(BASE).encode()


def test_long_names_are_cut_to_32_bytes() -> None:
    image = legacy_script_image("echo x\n", name="n" * 40, arch="arm64")
    assert image[32:64] == b"n" * 32


def test_unknown_arch_is_refused() -> None:
    with pytest.raises(UBootClientError, match="arch"):
        legacy_script_image("echo x\n", name="x", arch="vax")


def test_uboot_sources_our_script_image(tmp_path: Path) -> None:
    """U-Boot 2023.01 checks the header and data CRCs (``iminfo``) and runs the script."""
    script = "echo script-line-1 && setenv from_script yes\necho script-line-2 ${from_script}\n"
    path = tmp_path / "s.scr"
    path.write_bytes(legacy_script_image(script, name="overrided test", arch="arm64"))
    loader = ["-device", f"loader,file={path},addr=0x50000000,force-raw=on"]
    with UBoot(loader) as ub:
        ub.boot_to_prompt()
        info = ub.check("iminfo 0x50000000")
        assert "Verifying Checksum ... OK" in info, ub.log
        out = ub.check("source 0x50000000")
        assert "script-line-1" in out and "script-line-2 yes" in out, ub.log
        # a flipped byte in the script is caught by the data CRC
        res = ub.run("mw.b 0x50000050 0x41 1 && source 0x50000000")
        assert res.status != 0 and "Bad data crc" in res.output, ub.log
