"""Firmware and Linux get their network from ``overrided serve --dhcp``, on a real layer-2 segment.

The segment (``tests/support/segment.py``): a bridge in one namespace, QEMU's ``-netdev tap``
on it, and the service's ``eth0`` (192.0.2.4/24) in a namespace of its own, where
``overrided serve --dhcp eth0`` runs dnsmasq and serves TFTP on port 69. Nothing else on the
segment answers DHCP. Two boards, one per bootloader, each with its MAC and address:

* U-Boot (Debian's ``qemu_arm64``): ``dhcp`` sets ``ipaddr``, ``serverip`` and ``bootfile``
  (the board's ``boot.scr``), loads it, and ``source`` boots the FIT and initrd it names.
* barebox (``../shared/barebox/``): ``dhcp`` sets ``global.hostname`` from option 12 (the board
  file's ``bench-7``, not barebox's built-in ``virt64``) and ``global.net.server``, so ``devboot``
  sources ``none-devboot-bench-7`` and boots it.

In both boots the kernel's initrd runs busybox ``udhcpc`` on the same NIC and prints what it got:
Linux asks the same dnsmasq and gets the board's address again. One boot per bootloader.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import parts
from tests.e2e.conftest import (
    BOOTARGS,
    FIT_ADDR,
    INITRD_ADDR,
    KernelParts,
    NetnsServed,
    write_build,
)
from tests.support import barebox, debian
from tests.support.barebox import Barebox
from tests.support.segment import SERVER_IFACE, SERVER_IP, Segment
from tests.support.uboot import UBoot

pytestmark = pytest.mark.e2e

MARK = "OVERRIDED-DHCP"
UBOOT_MAC, UBOOT_IP = "52:54:00:d1:00:21", "192.0.2.21"
BAREBOX_MAC, BAREBOX_IP = "52:54:00:d1:00:22", "192.0.2.22"
BAREBOX_HOST = "bench-7"
# The kernel arguments of ``nfsroot``: both boards carry them, and the init prints the command
# line it got. Debian's kernel (no CONFIG_IP_PNP, /init in the initramfs) does not act on them.
NFSROOT = "192.0.2.4:/srv/nfs/{board}"
NFS_ARGS = "root=/dev/nfs nfsroot=192.0.2.4:/srv/nfs/{board} ip=dhcp rw"
TIMEOUT = 240  # every wait for firmware or the kernel (TCG on a loaded machine)

# Debian's kernel has virtio-mmio and virtio-net as modules (virtio and virtio_ring are built
# in): the init loads them in this order, each after what it needs, then asks for an address
# with busybox udhcpc.
NET_MODULES = (
    "drivers/virtio/virtio_mmio.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
)
INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "{MARK} init release=$(uname -r) cmdline=$(cat /proc/cmdline)"
for m in {" ".join(Path(m).name for m in NET_MODULES)}; do
    insmod /net-modules/$m || echo "{MARK} insmod $m failed"
done
ip link set eth0 up
udhcpc -i eth0 -f -q -n -t 10 -T 2 -O hostname -O tftp -s /udhcpc.sh || echo "{MARK} udhcpc failed"
poweroff -f
"""
UDHCPC_SCRIPT = f"""#!/bin/sh
[ "$1" = bound ] && echo "{MARK} bound ip=$ip hostname=$hostname tftp=$tftp siaddr=$siaddr"
exit 0
"""


@pytest.fixture(scope="module")
def net_init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The boards' init CPIO: busybox, the network modules, ``/init`` and udhcpc's script."""
    d = tmp_path_factory.mktemp("net-init")
    root = d / "root"
    for sub in ("bin", "dev", "proc", "sys", "net-modules"):
        (root / sub).mkdir(parents=True)
    shutil.copy(debian.busybox(), root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    k = debian.kernel()
    for m in NET_MODULES:
        shutil.copy(k.modules / "kernel" / m, root / "net-modules" / Path(m).name)
    for name, text in (("init", INIT), ("udhcpc.sh", UDHCPC_SCRIPT)):
        (root / name).write_text(text)
        (root / name).chmod(0o755)
    return parts.newc(root, d / "net-init.cpio")


@dataclass
class DhcpLab:
    """The segment, the service on it, and where logs go."""

    segment: Segment
    served: NetnsServed
    root: Path


def board_file(hostname: str, mac: str, ip: str, *extra: str) -> str:
    console = BOOTARGS["console"]
    lines = [
        'compatible = ["linux,dummy-virt"]',
        f'hostname = "{hostname}"',
        f'mac = "{mac}"',
        f'ip = "{ip}"',
        'init = "net-init.cpio"',
        f'nfsroot = "{NFSROOT.format(board=hostname)}"',
        *extra,
        "[bootargs]",
        f'console = "{console}"',
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def dhcp_lab(tmp_path: Path, kernel_parts: KernelParts, net_init: Path) -> Iterator[DhcpLab]:
    """``overrided serve --dhcp eth0`` on a fresh segment: build b1, a U-Boot and a barebox
    board."""
    with Segment() as seg:
        served = NetnsServed(tmp_path, seg.server)
        served.extra = ["--dhcp", SERVER_IFACE]
        shutil.copy(net_init, served.boards / "net-init.cpio")
        (served.boards / "uboot.toml").write_text(
            board_file("ub-virt", UBOOT_MAC, UBOOT_IP, 'formats = ["bootscr"]')
        )
        # barebox passes its own DT (the FIT's was dumped with U-Boot's machine options).
        (served.boards / "bench.toml").write_text(
            board_file(BAREBOX_HOST, BAREBOX_MAC, BAREBOX_IP, 'oftree = "board"')
        )
        write_build(served.builds, "b1", kernel_parts, "A")
        served.start(timeout=120)
        try:
            served.wait_for(
                lambda: (
                    all(b.get("build") == "b1" for b in served.api("/api/boards"))
                    and served.api("/api/dhcp")["running"]
                ),
                timeout=120,
                what="boards rendered and dnsmasq running",
            )
            yield DhcpLab(seg, served, tmp_path)
        finally:
            served.stop()


def linux_lease(fw: UBoot, ip: str, hostname: str) -> None:
    """The kernel got the board's NFS root arguments, and its udhcpc got ``ip`` and
    ``hostname`` from the same service."""
    init = fw.expect(rf"{MARK} init release=\S+ cmdline=(.*)\n", TIMEOUT)
    assert NFS_ARGS.format(board=hostname) in init.group(1), init.group(1)
    m = fw.expect(rf"{MARK} (bound .*|udhcpc failed|insmod .* failed)\n", TIMEOUT)
    got = dict(kv.split("=", 1) for kv in m.group(1).split()[1:] if "=" in kv)
    if not m.group(1).startswith("bound"):
        raise fw.fail(f"Linux got no address: {m.group(1)}")
    assert (got["ip"], got["hostname"], got["tftp"]) == (ip, hostname, SERVER_IP), fw.log[-3000:]
    fw.expect("reboot: Power down", 60)


def leased(lab: DhcpLab, mac: str) -> str | None:
    for lease in lab.served.api("/api/dhcp")["leases"]:
        if lease["mac"] == mac:
            return str(lease["board"])
    return None


def test_uboot_dhcp_gets_its_address_and_server_then_boots_what_overrided_serves(
    dhcp_lab: DhcpLab,
) -> None:
    lab = dhcp_lab
    nic = lab.segment.tap_args(UBOOT_MAC)
    with UBoot(nic, netns=lab.segment.lab.name, log_path=lab.root / "uboot.serial.log") as ub:
        ub.boot_to_prompt(TIMEOUT)
        ub.check(f"setenv overrided_fit_addr {FIT_ADDR}")
        ub.check(f"setenv overrided_initrd_addr {INITRD_ADDR}")
        # autoload (the default): dhcp also loads $bootfile from $serverip over TFTP.
        out = ub.check("dhcp", TIMEOUT)
        assert "uboot.scr" in out, out
        env = ub.check("printenv ipaddr serverip bootfile", 30)
        assert f"ipaddr={UBOOT_IP}" in env and f"serverip={SERVER_IP}" in env, env
        assert "bootfile=uboot.scr" in env, env
        ub.send_line("source ${fileaddr}")
        ub.expect(re.escape("overrided: uboot: build b1"), TIMEOUT)
        linux_lease(ub, UBOOT_IP, "ub-virt")
    served = {t["name"] for t in lab.served.api("/api/boards/uboot/journal")}
    assert "uboot.scr" in served, served
    assert leased(lab, UBOOT_MAC) == "uboot"


def test_barebox_takes_its_hostname_from_dhcp_and_devboot_boots_that_boards_script(
    dhcp_lab: DhcpLab,
) -> None:
    images = barebox.images()
    reason = images.missing(barebox.IMAGE)
    if reason is not None:
        if barebox.required():
            pytest.fail(reason)
        pytest.skip(reason)
    lab = dhcp_lab
    nic = lab.segment.tap_args(BAREBOX_MAC)
    log_path = lab.root / "barebox.serial.log"
    image = images.path(barebox.IMAGE)
    with Barebox(image, nic, netns=lab.segment.lab.name, log_path=log_path) as bb:
        bb.boot_to_prompt(TIMEOUT)
        assert bb.check("echo ${global.hostname}").strip() == barebox.HOSTNAME  # built in
        bb.check("dhcp", TIMEOUT)
        assert bb.check("echo ${global.hostname}").strip() == BAREBOX_HOST
        assert bb.check("echo ${global.net.server}").strip() == SERVER_IP
        assert bb.check("echo ${eth0.ipaddr}").strip() == BAREBOX_IP
        bb.send_line("devboot net")
        bb.expect(re.escape(f"none-devboot-{BAREBOX_HOST}"), TIMEOUT)
        linux_lease(bb, BAREBOX_IP, BAREBOX_HOST)
    names = {t["name"] for t in lab.served.api("/api/boards/bench/journal")}
    assert f"none-devboot-{BAREBOX_HOST}" in names and f"none-linux-{BAREBOX_HOST}" in names
    assert leased(lab, BAREBOX_MAC) == "bench"
