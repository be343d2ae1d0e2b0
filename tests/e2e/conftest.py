"""Fixtures for real boots: Debian's arm64 kernel and busybox, and ``overrided serve`` in a netns.

QEMU's user network (here on 192.0.2.0/24) answers its gateway's port 69 with its own TFTP
server, and U-Boot always sends to port 69, so each test gets a network namespace with
192.0.2.4/32 on ``lo``; ``overrided serve`` (TFTP on 0.0.0.0:69) and QEMU both run inside it,
and U-Boot reaches 192.0.2.4 through QEMU's gateway (netmask /32: no ARP needed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import parts
from tests.support import barebox, debian
from tests.support.barebox import Images
from tests.support.netns import Netns
from tests.support.serve import REPO, NsServed
from tests.support.uboot import UBoot, user_netdev

SERVER_IP = "192.0.2.4"
HTTP_PORT = 8080
BOARD = "qemu-virt"
MAC = "52:54:00:12:34:56"  # QEMU's default NIC address; boards/qemu-virt.toml names it too
BOOTARGS = {"console": "console=ttyAMA0"}
# Load addresses clear of the kernel: U-Boot moves the arm64 Image to the start of RAM
# (0x40000000), so the default kernel_addr_r 0x40400000 would be overwritten mid-boot.
FIT_ADDR = "0x50000000"
INITRD_ADDR = "0x48000000"
FDT_ADDR = "0x4f000000"
NET_UP = (
    f"setenv autoload no && dhcp && setenv serverip {SERVER_IP} && setenv netmask 255.255.255.255"
)

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class KernelParts:
    """What a build folder and a board folder are made of."""

    release: str
    image: Path
    dtb_a: Path  # QEMU virt DT, /chosen/overrided-build = "build-A"
    dtb_b: Path  # same, "build-B": a rebuild changes the FIT too
    modules_a: Path
    modules_b: Path
    init: Path


@pytest.fixture(scope="session")
def kernel_parts(tmp_path_factory: pytest.TempPathFactory) -> KernelParts:
    """Made once per session: ~3 s (busybox and kernel packages are cached on disk)."""
    d = tmp_path_factory.mktemp("parts")
    k = debian.kernel()
    virt = parts.virt_dtb(d / "virt.dtb")
    dtbs = {}
    for build in ("build-A", "build-B"):
        dtb = d / f"virt-{build}.dtb"
        shutil.copy(virt, dtb)
        parts.run(["fdtput", "-t", "s", dtb, "/chosen", parts.DT_BUILD_PROP, build])
        dtbs[build] = dtb
    return KernelParts(
        release=k.release,
        image=k.image,
        dtb_a=dtbs["build-A"],
        dtb_b=dtbs["build-B"],
        modules_a=parts.modules_cpio(d / "modules-a.cpio", "build-A"),
        modules_b=parts.modules_cpio(d / "modules-b.cpio", "build-B"),
        init=parts.init_cpio(d / "init.cpio"),
    )


def write_build(builds: Path, name: str, kp: KernelParts, which: str) -> Path:
    """A build folder as a kernel build leaves it: Image, DTB, modules CPIO.

    Written under a dot-name and renamed into place, as an upload is, so the watcher never
    sees half a build.
    """
    tmp = builds / f".{name}.tmp"
    tmp.mkdir(parents=True)
    shutil.copy(kp.image, tmp / "Image")
    (tmp / "qemu").mkdir()
    shutil.copy(kp.dtb_a if which == "A" else kp.dtb_b, tmp / "qemu" / "virt.dtb")
    shutil.copy(kp.modules_a if which == "A" else kp.modules_b, tmp / f"modules-{kp.release}.cpio")
    final = builds / name
    tmp.rename(final)
    return final


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def write_board(boards: Path, kp: KernelParts, **fields: Any) -> Path:
    """``boards/qemu-virt.toml`` from the repository, plus the init CPIO, a console and
    ``fields``."""
    board = tomllib.loads((REPO / "boards" / f"{BOARD}.toml").read_text())
    assert board["compatible"] == ["linux,dummy-virt"]
    assert board.get("mac", MAC) == MAC, "QEMU's NIC must carry the board's MAC"
    shutil.copy(kp.init, boards / "init.cpio")
    # These builds carry QEMU's own DT, dumped: the FIT brings kernel and DTB (the shipped
    # example boots the kernel alone, with the DT QEMU gives the bootloader).
    board.update(init="init.cpio", bootargs=BOOTARGS, image="fit", oftree="fit")
    board.update(fields)
    path = boards / f"{BOARD}.toml"
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in board.items()))
    return path


class NetnsServed(NsServed):
    """``overrided serve`` inside a network namespace: TFTP on 0.0.0.0:69, HTTP on lo."""

    def __init__(self, root: Path, ns: Netns) -> None:
        super().__init__(root, ns)
        self.tftp_port = 69
        self.http_port = HTTP_PORT

    def command(self) -> list[str]:
        """``ip netns exec <ns> python -m overrided serve ...`` on the namespace's addresses."""
        argv = super().command()
        argv[argv.index("--tftp-addr") + 1] = "0.0.0.0"
        return argv

    def board(self) -> dict[str, Any]:
        """``GET /api/boards/qemu-virt``."""
        info: dict[str, Any] = self.api(f"/api/boards/{BOARD}")
        return info

    def tftp_get(self, name: str, dest: Path | None = None) -> bytes:
        """Fetch with tftp-hpa inside the namespace."""
        dest = dest or self.root / "fetched" / name.replace("/", "_")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        argv = ["tftp", "-v", SERVER_IP, "69", "-m", "binary", "-c", "get", name, str(dest)]
        out = self.ns.run(argv, check=False)
        text = out.stdout + out.stderr
        if "Error code" in text or not dest.exists() or "Received" not in text:
            raise FileNotFoundError(f"tftp get {name}: {text.strip()}")
        return dest.read_bytes()


@dataclass
class Lab:
    """One test's namespace, service and folders."""

    ns: Netns
    served: NetnsServed
    parts: KernelParts
    root: Path

    def uboot(self, name: str) -> UBoot:
        """A U-Boot in the namespace whose serial log is kept as ``<name>.serial.log``."""
        return UBoot(
            user_netdev(mac=MAC), netns=self.ns.name, log_path=self.root / f"{name}.serial.log"
        )

    def artifacts(self) -> dict[str, str]:
        """The board's artifact names (role → served name), from the API."""
        info = self.served.board()
        assert info.get("error") is None, info
        names: dict[str, str] = info["artifacts"]
        return names


@pytest.fixture
def lab(tmp_path: Path, kernel_parts: KernelParts) -> Iterator[Lab]:
    """``overrided serve`` in a fresh namespace with build ``b1`` (A) and the qemu-virt board."""
    if os.geteuid() != 0:
        pytest.fail("end-to-end boots need root for network namespaces")
    root = tmp_path
    with Netns([f"{SERVER_IP}/32"]) as ns:
        served = NetnsServed(root, ns)
        write_board(served.boards, kernel_parts)
        write_build(served.builds, "b1", kernel_parts, "A")
        served.start(timeout=120)
        try:
            served.wait_for(
                lambda: served.board().get("build") == "b1", timeout=120, what="board rendered"
            )
            yield Lab(ns=ns, served=served, parts=kernel_parts, root=root)
        finally:
            served.stop()


def boot_marker(ub: UBoot, build: str, timeout: float = 240, *, dt: str | None = None) -> float:
    """Wait for the init's markers (right build, modules, modprobe) and power-off; ``dt`` is
    the build the kernel's DT must name (default: ``build``; ``""`` for a DT of no build).

    Returns the seconds from QEMU start to the final marker.
    """
    # The line must be complete: the serial log may end in the middle of it.
    m = ub.expect(rf"{parts.MARKER} init release=(\S+) build=(\S*) dt=(\S*)\r?\n", timeout)
    want_dt = build if dt is None else dt
    if (m.group(2), m.group(3)) != (build, want_dt):
        raise ub.fail(
            f"booted modules {m.group(2)!r} and DT {m.group(3)!r}, expected {build!r} and "
            f"{want_dt!r}"
        )
    ub.expect(f"{parts.MARKER} modules present", 30)
    ub.expect(f"{parts.MARKER} modprobe {parts.PROBE} ok", 30)
    ub.expect(f"{parts.MARKER} done", 30)
    at = ub.elapsed()
    ub.expect("reboot: Power down", 30)
    return at


# --- barebox ---------------------------------------------------------------------------------


def image(images: Images, name: str) -> Path:
    """The image ``name``, else a skip saying how to provide it (a failure when required)."""
    missing = images.missing(name)
    if missing is None:
        return images.path(name)
    if barebox.required():
        pytest.fail(f"{barebox.REQUIRE_VAR} is set, but there is {missing}")
    pytest.skip(missing)


@pytest.fixture(scope="session")
def barebox_images() -> Images:
    """Where the barebox images are; skips (or fails) the boots when the plain one is missing."""
    found = barebox.images()
    image(found, barebox.IMAGE)
    return found


@pytest.fixture(scope="session")
def barebox_parts(
    kernel_parts: KernelParts, barebox_images: Images, tmp_path_factory: pytest.TempPathFactory
) -> KernelParts:
    """The session's kernel parts, with DTBs dumped under barebox's QEMU options."""
    d = tmp_path_factory.mktemp("barebox-parts")
    virt = d / "virt.dtb"
    argv = barebox.qemu_command(barebox_images.path(barebox.IMAGE), barebox.nic(MAC))
    parts.run([*argv, "-machine", f"dumpdtb={virt}"])
    dtbs = {b: named_dtb(virt, d / f"virt-build-{b}.dtb", f"build-{b}") for b in ("A", "B")}
    return dataclasses.replace(kernel_parts, dtb_a=dtbs["A"], dtb_b=dtbs["B"])


def named_dtb(virt: Path, out: Path, name: str) -> Path:
    """A copy of the DTB ``virt`` whose ``/chosen`` carries ``name`` (init prints it)."""
    shutil.copy(virt, out)
    parts.run(["fdtput", "-t", "s", out, "/chosen", parts.DT_BUILD_PROP, name])
    return out
