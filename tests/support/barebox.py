"""Drive barebox (images for QEMU's arm64 ``virt`` machine) in ``qemu-system-aarch64`` by serial.

barebox is not packaged in Debian, so the images come from outside the repository: the folder
named by ``$OVERRIDED_BAREBOX_DIR``, by default ``../shared/barebox/`` beside the checkout (a
relative value is taken relative to the repository root). ``images()`` says where they are and
``Images.missing`` why a test cannot boot one and how to provide it; with
``$OVERRIDED_REQUIRE_BAREBOX=1`` (set by ``.ci/run``) a missing image fails the tests instead of
skipping them.

The console is driven like U-Boot's (``tests/support/uboot.py``: one log read by a thread, every
wait a bounded regex search), with what differs for barebox:

* QEMU loads barebox with ``-kernel`` (a ``barebox-dt-2nd`` image: it runs on the DT QEMU
  generates) on ``virt,highmem=off``; ``virtio-mmio.force-legacy=false`` gives it a modern
  virtio-net.
* The default prompt carries colour codes; ``boot_to_prompt`` stops the autoboot countdown and
  sets a plain ``PS1`` of our own. It is typed as two adjacent quoted words, so the echo of the
  typed line never matches the prompt it sets.
* barebox polls the console for Ctrl-C while a command runs, as U-Boot does, so input typed
  ahead may be eaten: type one line at a time and wait for its status.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.serve import REPO
from tests.support.uboot import QEMU, SLIRP_NET, CommandResult, UBoot

DIR_VAR = "OVERRIDED_BAREBOX_DIR"
REQUIRE_VAR = "OVERRIDED_REQUIRE_BAREBOX"
DEFAULT_DIR = Path("..", "shared", "barebox")  # relative to the repository root
IMAGE = "barebox-qemu-virt64.img"  # FS_TFTP_MAX_WINDOW_SIZE=1: lockstep TFTP
IMAGE_WINDOW16 = "barebox-qemu-virt64-window16.img"  # asks for windowsize 8

# barebox's qemu-virt board code sets these; the default environment's user is "none".
HOSTNAME = "virt64"
USER = "none"

# The machine every barebox boot uses. A DT for the kernel must be dumped with these options:
# highmem=off moves the PCIe ECAM below 4 GiB, and without -bios QEMU adds a GPIO power key.
MACHINE_ARGS: tuple[str, ...] = (
    "-M",
    "virt,highmem=off",
    "-cpu",
    "cortex-a57",
    "-m",
    "1024",
    "-global",
    "virtio-mmio.force-legacy=false",
)

# QEMU's user network on documentation addresses (RFC 5737): the guest gets .15 by DHCP, .2 is
# the gateway. No ``tftp=``: QEMU's own TFTP server stays off. Guest packets to other
# addresses leave from QEMU's sockets in QEMU's network namespace (127.0.0.1 included).
SLIRP = f"user,id=n0,{SLIRP_NET}"

AUTOBOOT = "Hit m for menu or any to stop autoboot"
PS1_WORDS = ('"@ovd-"', '"bb> "')  # typed as PS1="@ovd-""bb> "
PROMPT = "@ovd-bb> "


# What to add to the skip reason of each image: (configuration beyond the defconfig, its use)
BUILD_HINTS = {
    IMAGE: ("", ""),
    IMAGE_WINDOW16: (" and CONFIG_FS_TFTP_MAX_WINDOW_SIZE=16", " (its TFTP asks windowsize 8)"),
}


@dataclass(frozen=True)
class Images:
    """The folder the barebox images are looked up in."""

    folder: Path

    def path(self, name: str) -> Path:
        """Where image ``name`` (``IMAGE`` or ``IMAGE_WINDOW16``) is expected."""
        return self.folder / name

    def missing(self, name: str) -> str | None:
        """Why image ``name`` cannot be booted and how to provide it; None if it is there."""
        if self.path(name).is_file():
            return None
        config, purpose = BUILD_HINTS.get(name, ("", ""))
        return (
            f"no {name}{purpose} in {self.folder}: build barebox with multi_v8_defconfig{config} "
            f"(it runs on QEMU's arm64 virt machine) and copy images/barebox-dt-2nd.img there "
            f"as {name}, or set {DIR_VAR} to a folder holding {name}"
        )


def images() -> Images:
    """The image folder: ``$OVERRIDED_BAREBOX_DIR``, else ``../shared/barebox/`` from the repo.

    A relative value is taken relative to the repository root, like the default.
    """
    raw = os.environ.get(DIR_VAR)
    folder = Path(raw) if raw else DEFAULT_DIR
    return Images((REPO / folder).resolve())  # an absolute folder stays what it is


def required() -> bool:
    """True when a missing image must fail the tests rather than skip them (CI)."""
    return os.environ.get(REQUIRE_VAR, "") not in ("", "0")


def nic(mac: str | None = None) -> list[str]:
    """QEMU args for barebox's virtio-net on the documentation-address user network."""
    dev = "virtio-net-device,netdev=n0" + (f",mac={mac}" if mac else "")
    return ["-netdev", SLIRP, "-device", dev]


def qemu_command(image: Path, extra: Sequence[str] = (), *, netns: str | None = None) -> list[str]:
    """The full argv: QEMU ``virt`` booting ``image`` with ``-kernel``, optionally in a netns."""
    argv = [QEMU, *MACHINE_ARGS, "-nographic", "-kernel", str(image), *extra]
    return ["ip", "netns", "exec", netns, *argv] if netns is not None else argv


def fw_cfg_env(path: str, file: Path) -> list[str]:
    """QEMU args that add ``file`` to barebox's environment as ``/env/<path>``."""
    if "," in str(file) or "," in path:
        raise ValueError(f"QEMU's -fw_cfg cannot take a comma in {path!r} or {file}")
    return ["-fw_cfg", f"name=opt/org.barebox.env/{path},file={file}"]


class Barebox(UBoot):
    """One QEMU running barebox; a context manager that always kills QEMU on exit."""

    def __init__(
        self,
        image: Path,
        extra: Sequence[str] = (),
        *,
        netns: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        super().__init__(extra, netns=netns, log_path=log_path)
        self.argv = qemu_command(image, extra, netns=netns)
        self._runs = 0

    def __enter__(self) -> Barebox:
        super().__enter__()
        return self

    def boot_to_prompt(self, timeout: float = 60) -> None:
        """Stop the autoboot countdown and set our own plain prompt."""
        self.expect(re.escape(AUTOBOOT), timeout)
        self.send(" ")  # any key but "m" (the menu)
        self.send_line("PS1=" + "".join(PS1_WORDS))
        self.expect(re.escape(PROMPT), timeout)

    def run(self, line: str, timeout: float = 30) -> CommandResult:
        """Type ``line`` at the prompt, wait for its status (``$?``) and the next prompt."""
        self._runs += 1
        tag = f"@@bb{self._runs}@@"
        self.send_line(f"{line}; echo {tag}$?{tag}")
        echoed = self.expect(re.escape(tag) + r"\$\?" + re.escape(tag), timeout)
        m = self.expect(re.escape(tag) + r"(\d+)" + re.escape(tag), timeout)
        output = m.string[echoed.end() : m.start()].strip("\n")
        self.expect(re.escape(PROMPT), timeout)
        return CommandResult(command=line, output=output, status=int(m.group(1)))
