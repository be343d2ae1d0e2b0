"""``boards/qemu-virt.toml`` as shipped, on a build made for another machine, boots in QEMU.

A kernel build has no DTB for QEMU's ``virt`` machine: its FIT's configurations are other
boards' (here one Allwinner board's). The shipped board file takes only the kernel from the build
and boots it with the device tree QEMU gave U-Boot. Debian's U-Boot boots it through
``pxe boot`` and through ``boot.scr``; each time the kernel's DT must be QEMU's own (``dt=``
empty: the DT names no build; the Allwinner DTB would name ``foreign``, and would not boot).
"""

from __future__ import annotations

import os
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from overrided.clients.uboot import INITRD_ADDR_VAR, KERNEL_ADDR_VAR
from tests.e2e import parts
from tests.e2e.conftest import (
    BOARD,
    FDT_ADDR,
    FIT_ADDR,
    INITRD_ADDR,
    MAC,
    NET_UP,
    SERVER_IP,
    KernelParts,
    Lab,
    NetnsServed,
    boot_marker,
    write_board,
)
from tests.support.fits import board_dtb
from tests.support.netns import Netns
from tests.support.serve import REPO

SCRIPT_ADDR = "0x4e000000"
FOREIGN = ["allwinner,a100-perf1", "allwinner,sun50i-a100"]


def foreign_build(builds: Path, kp: KernelParts) -> Path:
    """Debian's ``Image``, an Allwinner board's DTB and the modules of build A."""
    tmp = builds / ".mainline.tmp"
    (tmp / "allwinner").mkdir(parents=True)
    shutil.copy(kp.image, tmp / "Image")
    chosen = f'chosen {{ {parts.DT_BUILD_PROP} = "foreign"; }};'
    board_dtb(tmp / "allwinner" / "sun50i-a100-allwinner-perf1.dtb", FOREIGN, "A100 Perf1", chosen)
    shutil.copy(kp.modules_a, tmp / f"modules-{kp.release}.cpio")
    return tmp.rename(builds / "mainline")


@pytest.fixture
def shipped_lab(tmp_path: Path, kernel_parts: KernelParts) -> Iterator[Lab]:
    """``overrided serve`` in a namespace with the shipped board (plus init and console)."""
    if os.geteuid() != 0:
        pytest.fail("end-to-end boots need root for network namespaces")
    shipped = tomllib.loads((REPO / "boards" / f"{BOARD}.toml").read_text())
    with Netns([f"{SERVER_IP}/32"]) as ns:
        served = NetnsServed(tmp_path, ns)
        write_board(served.boards, kernel_parts, image=shipped["image"], oftree=shipped["oftree"])
        foreign_build(served.builds, kernel_parts)
        served.start(timeout=120)
        try:
            served.wait_for(lambda: served.board().get("build") == "mainline", timeout=120)
            yield Lab(ns=ns, served=served, parts=kernel_parts, root=tmp_path)
        finally:
            served.stop()


def test_shipped_qemu_virt_boots_the_kernel_with_qemus_device_tree(shipped_lab: Lab) -> None:
    lab = shipped_lab
    info = lab.served.board()
    assert info["warnings"] == [], info
    assert "oftree" not in info["artifacts"] and "kernel" in info["artifacts"], info
    pxe = lab.served.tftp_get(f"pxelinux.cfg/01-{MAC.replace(':', '-')}").decode()
    assert "fdt" not in pxe and "#" not in pxe.split("kernel ", 1)[1].split("\n")[0], pxe

    with lab.uboot("shipped-pxe") as ub:
        ub.boot_to_prompt()
        ub.check(NET_UP, 30)
        env = (
            f"setenv kernel_addr_r {FIT_ADDR} && setenv ramdisk_addr_r {INITRD_ADDR} "
            f"&& setenv fdt_addr_r {FDT_ADDR} && setenv pxefile_addr_r {SCRIPT_ADDR}"
        )
        ub.check(f"{env} && pxe get", 60)
        ub.send_line("pxe boot")
        pxe_seconds = boot_marker(ub, "build-A", dt="")
    print(f"\nshipped qemu-virt, pxe boot: QEMU start to init marker {pxe_seconds:.1f} s")

    (script,) = info["served"]["bootscr"]
    addrs = f"setenv {KERNEL_ADDR_VAR} {FIT_ADDR} && setenv {INITRD_ADDR_VAR} {INITRD_ADDR}"
    with lab.uboot("shipped-bootscr") as ub:
        ub.boot_to_prompt()
        ub.check(f"{NET_UP} && {addrs} && tftpboot {SCRIPT_ADDR} {script}", 60)
        ub.send_line(f"source {SCRIPT_ADDR}")
        scr_seconds = boot_marker(ub, "build-A", dt="")
    print(f"shipped qemu-virt, boot.scr: QEMU start to init marker {scr_seconds:.1f} s")
