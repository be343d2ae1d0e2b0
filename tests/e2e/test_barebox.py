"""barebox, the client overrided exists for, boots with ``devboot`` from ``overrided serve``.

barebox (images for QEMU's arm64 ``virt``; ``tests/support/barebox.py`` says where they come
from) runs in QEMU inside a network namespace of the test's own, on QEMU's user network with
documentation addresses (192.0.2.0/24). ``overrided serve`` listens in the same namespace, TFTP
on port 69; barebox reaches it as ``global.net.server=127.0.0.1`` (QEMU sends the guest's packets
for 127.0.0.1 from its own sockets, to the namespace's loopback). Each flow ends with Debian's
arm64 kernel running our initrd's ``/init``: the markers name the build of the DTB the kernel got
and of the modules CPIO, and a module is loaded from it.

The board is the repository's ``boards/qemu-virt.toml`` (hostname ``virt64``, ``oftree = "fit"``
by default): its FIT carries QEMU's DT dumped with barebox's machine options, not U-Boot's
(``highmem=off`` moves the PCIe ECAM, and without ``-bios`` QEMU adds a GPIO power key). Flows
that need another board setting rewrite the board file and wait for the script that follows.
One kernel boot per flow; the seconds
from QEMU start to the init marker are printed (``-s`` or the ``-rA`` report shows them); no
test asserts on time.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import parts
from tests.e2e.conftest import (
    BOARD,
    BOOTARGS,
    KernelParts,
    NetnsServed,
    boot_marker,
    image,
    named_dtb,
    write_board,
    write_build,
)
from tests.support import barebox
from tests.support.barebox import Barebox, Images
from tests.support.netns import Netns
from tests.support.serve import REPO

pytestmark = pytest.mark.e2e

SERVER = "127.0.0.1"  # overrided, as barebox addresses it (through QEMU's user network)
MAC = "52:54:00:12:34:56"  # barebox's preset MAC on QEMU; boards/qemu-virt.toml names it too
FETCHDIR = "/mnt/tftp"  # barebox's global.net.fetchdir, automounted from global.net.server
SCRIPT = f"{barebox.USER}-devboot-{barebox.HOSTNAME}"
LINUX = f"{barebox.USER}-linux-{barebox.HOSTNAME}"  # the FIT, by the name ``boot net`` opens
ENTRY = "ovd-entry"  # the boot entry flow 2 injects with fw_cfg
BOOT_TIMEOUT = 240  # every wait for barebox or the kernel (a boot takes ~10-20 s here)
# barebox's notice for each part a ``boot -o`` replaced, e.g. "replacement initrd: File(x)"
OVERRIDE = re.compile(r"\[bootm override active\] replacement (?P<part>\S+): (?P<what>.*)")


def _report(what: str, seconds: float) -> None:
    print(f"\nbarebox {what}: QEMU start to init marker {seconds:.1f} s")


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def window16(barebox_images: Images) -> Path:
    """The image built with a TFTP window of 16 (checked before a lab is set up for it)."""
    return image(barebox_images, barebox.IMAGE_WINDOW16)


@dataclass
class BareboxLab:
    """One test's namespace, ``overrided serve`` (board ``qemu-virt``, build ``b1``), images."""

    ns: Netns
    served: NetnsServed
    images: Images
    parts: KernelParts
    root: Path

    def barebox(self, name: str, image: Path, extra: Sequence[str] = ()) -> Barebox:
        """A barebox in the namespace; its serial log is kept as ``<name>.serial.log``."""
        return Barebox(
            image,
            [*barebox.nic(MAC), *extra],
            netns=self.ns.name,
            log_path=self.root / f"{name}.serial.log",
        )

    def artifacts(self) -> dict[str, str]:
        """The board's artifact names (role → served name), from the API."""
        info = self.served.board()
        assert info.get("error") is None, info
        names: dict[str, str] = info["artifacts"]
        return names

    def journal(self) -> list[dict[str, Any]]:
        """The board's fetches, oldest first (``/api/boards/<board>/journal``)."""
        fetches: list[dict[str, Any]] = self.served.api(f"/api/boards/{BOARD}/journal?limit=1000")
        return fetches[::-1]


@pytest.fixture
def bb_lab(
    tmp_path: Path, barebox_parts: KernelParts, barebox_images: Images
) -> Iterator[BareboxLab]:
    """``overrided serve`` in a fresh namespace (only ``lo``) with build ``b1`` rendered."""
    if os.geteuid() != 0:
        pytest.fail("end-to-end boots need root for network namespaces")
    with Netns() as ns:
        served = NetnsServed(tmp_path, ns)
        write_board(served.boards, barebox_parts)
        write_build(served.builds, "b1", barebox_parts, "A")
        served.start(timeout=120)
        try:
            served.wait_for(
                lambda: served.board().get("build") == "b1", timeout=120, what="board rendered"
            )
            info = served.board()
            # what barebox asks for: <user>-devboot-<hostname>
            assert (info["user"], info["hostname"]) == (barebox.USER, barebox.HOSTNAME), info
            assert info["served"]["barebox"] == [SCRIPT], info
            yield BareboxLab(
                ns=ns, served=served, images=barebox_images, parts=barebox_parts, root=tmp_path
            )
        finally:
            served.stop()


# --- steps ----------------------------------------------------------------------------------


def net_up(bb: Barebox) -> None:
    """Stop autoboot, bring the network up (DHCP from QEMU) and point barebox at overrided."""
    bb.boot_to_prompt(BOOT_TIMEOUT)
    bb.check("ifup -a1", 60)
    bb.check(f"global.net.server={SERVER}", 30)


@dataclass(frozen=True)
class Booted:
    """What barebox said while booting, and when the kernel's init was done."""

    boot: str  # the ``boot -o ...`` line devboot ran
    entry: str  # the boot entry that booted
    overrides: dict[str, str]  # barebox's ``[bootm override active]`` notices: part → by what
    commandline: list[str]  # the kernel command line barebox passed
    seconds: float  # from QEMU start to the init's last marker


def devboot(bb: Barebox, args: str, build: str, *, dt: str | None = None) -> Booted:
    """Type ``devboot <args>`` and wait until the kernel's init is done with ``build``'s parts
    (``dt``: the build the kernel's DT names, when not ``build``; ``""`` for none)."""
    bb.send_line(f"devboot {args}".strip())
    bb.expect(re.escape(f"Sourcing {FETCHDIR}/{SCRIPT}"), BOOT_TIMEOUT)
    boot = bb.expect(r"\n(boot .*)\n", BOOT_TIMEOUT)
    # Fail at once when every entry failed, not after the marker's timeout.
    which, _ = bb.expect_any([r"Loaded kernel to", r"Nothing bootable found\n"], BOOT_TIMEOUT)
    if which != 0:
        raise bb.fail(f"devboot {args}: barebox booted nothing")
    log = bb.log[boot.start() :]
    entries = re.findall(r"Booting entry '([^']*)'", log)
    commandline = re.search(r"commandline: (.*)\n", log)
    if not entries:
        raise bb.fail("barebox did not say which entry it booted")
    if commandline is None:
        raise bb.fail("barebox did not print the kernel's command line")
    return Booted(
        boot=boot.group(1),
        entry=entries[-1],
        overrides={m["part"]: m["what"].strip() for m in OVERRIDE.finditer(log)},
        commandline=commandline.group(1).split(),
        seconds=boot_marker(bb, build, BOOT_TIMEOUT, dt=dt),
    )


def fit_overrides(lab: BareboxLab, initrd: str) -> dict[str, str]:
    """The notices of a devboot of the board: kernel and DTB from the FIT, our initrd."""
    conf = lab.served.board()["configuration"]
    return {
        "OS": f"FIT({FETCHDIR}/{LINUX}, {conf}/kernel)",
        "FDT": f"FIT({FETCHDIR}/{LINUX}, {conf}/fdt)",
        "initrd": f"File({initrd})",
    }


def read_once(lab: BareboxLab, art: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one complete read of the FIT (by its ``boot net`` name) and of the initrd.

    Every other fetch of the FIT's names (``none-linux-virt64``, the versioned one) is a lookup
    (``[ -f ]``: ERROR 0 after the OACK) or a header read barebox broke off (the first blocks,
    to learn the file's type): journaled ``probe`` or ``aborted``, short of the size.
    """
    journal = lab.journal()
    fit_names = (LINUX, art["fit"])
    full = [t for t in journal if t["outcome"] == "ok" and t["sent"] == t["size"] > 0]
    fit = [t for t in full if t["name"] in fit_names]
    assert [t["name"] for t in fit] == [LINUX], ("the FIT not read once in full", journal)
    for t in journal:
        if t["name"] in fit_names and t is not fit[0]:
            assert t["outcome"] in ("probe", "aborted") and t["sent"] < t["size"], (t, journal)
    initrd = [t for t in full if t["name"] == art["initrd"]]
    assert len(initrd) == 1, ("the initrd not read once in full", journal)
    return fit[0], initrd[0]


def arm64_image_header(size: int = 4096) -> bytes:
    """A file barebox takes for an arm64 ``Image`` (the header of Linux's arm64 booting.rst)
    with no kernel in it.

    barebox reads the boot entry's image to learn its type before it applies any override, so a
    dummy entry needs a recognised type; this one cannot boot, which the override proves.
    """
    # code0, code1, text_offset, image_size, flags, res2, res3, res4, magic "ARM\x64", res5
    header = struct.pack("<IIQQQQQQII", 0, 0, 0, size, 0, 0, 0, 0, 0x644D5241, 0)
    return header.ljust(size, b"\0")


def fw_cfg_entry(lab: BareboxLab, initrd: bytes) -> list[str]:
    """QEMU args adding the boot entry ``ovd-entry`` to barebox's environment (fw_cfg): a dummy
    image (an arm64 ``Image`` header with no kernel), a DTB naming ``dummy-entry`` in
    ``/chosen``, the initrd ``initrd``, and a bootarg ``ovd.entry=ovd-entry``."""
    d = lab.root / "fw_cfg"
    d.mkdir()
    data = f"/env/data/{ENTRY}"
    (d / "entry").write_text(
        "#!/bin/sh\n"
        f"global.bootm.image={data}-image\n"
        f"global.bootm.oftree={data}-oftree\n"
        f"global.bootm.initrd={data}-initrd\n"
        f'global linux.bootargs.dyn.ovd="ovd.entry={ENTRY}"\n'
    )
    (d / "image").write_bytes(arm64_image_header())
    named_dtb(lab.parts.dtb_a, d / "oftree", "dummy-entry")
    (d / "initrd").write_bytes(initrd)
    extra = barebox.fw_cfg_env(f"boot/{ENTRY}", d / "entry")
    for part in ("image", "oftree", "initrd"):
        extra += barebox.fw_cfg_env(f"data/{ENTRY}-{part}", d / part)
    return extra


def rewrite_board(lab: BareboxLab, ready: Callable[[str], bool], **fields: Any) -> str:
    """Write the board file again with ``fields`` (renamed into place, as an editor saving
    it would) and wait until the served devboot script satisfies ``ready``; return it."""
    staging = lab.root / "board-next"
    staging.mkdir(exist_ok=True)
    written = write_board(staging, lab.parts, **fields)
    os.replace(written, lab.served.boards / written.name)

    def script() -> str | None:
        try:
            text = lab.served.http_get(f"/{SCRIPT}").decode()
        except FileNotFoundError:
            return None
        return text if ready(text) else None

    found: str = lab.served.wait_for(script, timeout=120, what=f"{SCRIPT} for {fields}")
    return found


def write_kernel_only_build(builds: Path, name: str, kp: KernelParts) -> Path:
    """A build folder as ``make Image modules-cpio-pkg`` leaves one: ``arch/arm64/boot/Image``
    and ``modules-<release>-arm64.cpio``, no DTB; renamed into place whole."""
    tmp = builds / f".{name}.tmp"
    (tmp / "arch" / "arm64" / "boot").mkdir(parents=True)
    shutil.copy(kp.image, tmp / "arch" / "arm64" / "boot" / "Image")
    shutil.copy(kp.modules_a, tmp / f"modules-{kp.release}-arm64.cpio")
    final = builds / name
    tmp.rename(final)
    return final


def marker_line(bb: Barebox, what: str) -> str | None:
    """The value of the init's ``<marker> <what>`` line in the serial log, if it printed one."""
    m = re.search(rf"{parts.MARKER} {re.escape(what)}(\S*)\r?\n", bb.log)
    return m.group(1) if m else None


# --- where the images come from -------------------------------------------------------------


def test_images_are_found_beside_the_checkout_or_where_the_variable_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``../shared/barebox/`` from the repository root, or ``$OVERRIDED_BAREBOX_DIR`` (a
    relative value from the repository root too); a missing image's reason says how to make it."""
    monkeypatch.delenv(barebox.DIR_VAR, raising=False)
    assert barebox.images().folder == (REPO.parent / "shared" / "barebox").resolve()

    monkeypatch.setenv(barebox.DIR_VAR, os.path.relpath(tmp_path, REPO))
    found = barebox.images()
    assert found.folder == tmp_path.resolve()
    for name in (barebox.IMAGE, barebox.IMAGE_WINDOW16):
        reason = found.missing(name)
        assert reason is not None and name in reason, reason
        assert "multi_v8_defconfig" in reason and barebox.DIR_VAR in reason, reason
    assert "FS_TFTP_MAX_WINDOW_SIZE=16" in (found.missing(barebox.IMAGE_WINDOW16) or "")

    monkeypatch.setenv(barebox.DIR_VAR, str(tmp_path))
    (tmp_path / barebox.IMAGE).write_bytes(b"")
    assert barebox.images().missing(barebox.IMAGE) is None


@pytest.mark.parametrize(
    ("value", "required"), [(None, False), ("", False), ("0", False), ("1", True)]
)
def test_ci_requires_the_images(
    value: str | None, required: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``.ci/run`` sets ``OVERRIDED_REQUIRE_BAREBOX=1``: a missing image fails, never skips."""
    if value is None:
        monkeypatch.delenv(barebox.REQUIRE_VAR, raising=False)
    else:
        monkeypatch.setenv(barebox.REQUIRE_VAR, value)
    assert barebox.required() is required


# --- flows ----------------------------------------------------------------------------------


def test_devboot_net_boots_our_initrd_and_reads_the_fit_once(bb_lab: BareboxLab) -> None:
    """``devboot net``: the ``net`` entry opens ``none-linux-virt64`` (the FIT), the script
    names that same file, so barebox reads the FIT in full once; kernel and DTB come from it,
    the initrd from the script's versioned name.
    """
    art = bb_lab.artifacts()
    with bb_lab.barebox("devboot-net", bb_lab.images.path(barebox.IMAGE)) as bb:
        net_up(bb)
        booted = devboot(bb, "net", "build-A")
    _report("devboot net (window 1)", booted.seconds)
    assert booted.boot == f"boot -o bootm.image={LINUX} -o bootm.initrd={art['initrd']} net"
    assert booted.entry == "net", booted
    assert booted.overrides == fit_overrides(bb_lab, art["initrd"]), booted
    fit, _ = read_once(bb_lab, art)
    assert "windowsize" not in fit["options"], fit  # barebox's default: lockstep


def test_devboot_replaces_all_of_an_entry_injected_by_fw_cfg(bb_lab: BareboxLab) -> None:
    """``devboot ovd-entry``, an entry QEMU adds to barebox's environment (fw_cfg) whose image,
    DTB and initrd are dummies: the override replaces all three; the entry's bootargs stay.

    The dummy image is an arm64 ``Image`` header with no kernel, the DTB names ``dummy-entry``
    in ``/chosen``, the initrd is no archive: a boot that reaches our init with ``dt=build-A``
    took nothing of them. The entry never opens the FIT; the image override reads it, once.
    """
    art = bb_lab.artifacts()
    extra = fw_cfg_entry(bb_lab, b"not an initrd\n" * 64)

    with bb_lab.barebox("devboot-entry", bb_lab.images.path(barebox.IMAGE), extra) as bb:
        net_up(bb)
        booted = devboot(bb, ENTRY, "build-A")  # dt=build-A: the FIT's DTB, not the entry's
    _report(f"devboot {ENTRY} (fw_cfg entry, window 1)", booted.seconds)
    assert booted.entry == ENTRY, booted
    assert booted.overrides == fit_overrides(bb_lab, art["initrd"]), booted
    assert f"ovd.entry={ENTRY}" in booted.commandline, booted
    assert BOOTARGS["console"] in booted.commandline, booted  # the board file's bootargs
    read_once(bb_lab, art)


def test_window16_image_is_granted_windowsize_8(window16: Path, bb_lab: BareboxLab) -> None:
    """The barebox built with a TFTP window of 16 asks ``windowsize 8``; overrided grants it
    (RFC 7440 §3), and plain ``devboot`` (the default boot order, ending with ``net``) boots."""
    art = bb_lab.artifacts()
    with bb_lab.barebox("devboot-window16", window16) as bb:
        net_up(bb)
        assert bb.check("echo ${global.tftp.windowsize}") == "8", bb.log
        booted = devboot(bb, "", "build-A")
    _report("devboot (default boot order, window 8)", booted.seconds)
    assert booted.entry == "net", booted
    assert booted.overrides == fit_overrides(bb_lab, art["initrd"]), booted
    fit, initrd = read_once(bb_lab, art)
    assert fit["options"].get("windowsize") == "8", fit
    assert initrd["options"].get("windowsize") == "8", initrd
    # the service's own transfer log line says so too
    granted = rf"name='{LINUX}' .*options=\S*windowsize=8\S* .*outcome=ok"
    assert re.search(granted, bb_lab.served.log()), bb_lab.served.log()[-6000:]


def test_kernel_only_build_boots_with_barebox_own_device_tree(bb_lab: BareboxLab) -> None:
    """A build of ``Image`` and the modules CPIO alone, a board with ``image = "kernel"`` and
    ``oftree = "board"``: barebox boots the plain kernel with the device tree it runs on
    (``devboot_oftree=""`` drops the entry's), and our initrd."""
    write_kernel_only_build(bb_lab.served.builds, "k1", bb_lab.parts)
    script = rewrite_board(
        bb_lab,
        lambda s: "build k1" in s and 'devboot_oftree=""' in s,
        build="k1",
        image="kernel",
        oftree="board",
    )
    info = bb_lab.served.board()
    assert info["build"] == "k1" and "kernel-only" in info["reason"], info
    art = bb_lab.artifacts()
    assert "oftree" not in art, art
    assert f'devboot_image="{LINUX}"' in script and f"{LINUX} is {art['kernel']}" in script
    with bb_lab.barebox("devboot-kernel-only", bb_lab.images.path(barebox.IMAGE)) as bb:
        net_up(bb)
        booted = devboot(bb, "net", "build-A", dt="")  # barebox's own DT names no build
        removed_fdt = "[bootm override active] removed FDT" in bb.log
    _report("devboot net (kernel-only build, oftree board, window 1)", booted.seconds)
    assert booted.entry == "net", booted
    assert removed_fdt, booted
    assert "FIT(" not in booted.overrides.get("OS", "FIT("), booted  # the plain kernel
    assert LINUX in booted.overrides["OS"], booted
    assert booted.overrides["initrd"] == f"File({art['initrd']})", booted


def test_append_boots_the_entrys_initrd_and_ours(bb_lab: BareboxLab) -> None:
    """``initrd = "append"`` onto an entry whose initrd is an archive of its own: barebox takes
    the FIT's kernel and DTB (the FIT has no ramdisk, so the entry's initrd stays) and chains
    ours after it (the leading colon). Linux unpacks both: our init runs, and the file from the
    entry's archive is there."""
    script = rewrite_board(bb_lab, lambda s: 'devboot_initrd=":' in s, initrd="append")
    art = bb_lab.artifacts()
    assert f'devboot_initrd=":{art["initrd"]}"' in script, script
    tree = bb_lab.root / "entry-initrd"
    (tree / parts.EXTRA_DIR).mkdir(parents=True)
    (tree / parts.EXTRA_DIR / "entry-initrd").write_text("from-entry")
    entry_initrd = parts.newc(tree, bb_lab.root / "entry-initrd.cpio").read_bytes()
    extra = fw_cfg_entry(bb_lab, entry_initrd)
    with bb_lab.barebox("devboot-append", bb_lab.images.path(barebox.IMAGE), extra) as bb:
        net_up(bb)
        booted = devboot(bb, ENTRY, "build-A")
        from_entry = marker_line(bb, "extra entry-initrd=")
    _report(f"devboot {ENTRY} (initrd append, window 1)", booted.seconds)
    assert booted.entry == ENTRY, booted
    assert from_entry == "from-entry", from_entry
    # The entry's initrd first, then ours.
    chain = booted.overrides["initrd"]
    assert chain == f"File(/env/data/{ENTRY}-initrd), File({art['initrd']})", booted
    fit = fit_overrides(bb_lab, art["initrd"])
    assert booted.overrides["OS"] == fit["OS"] and booted.overrides["FDT"] == fit["FDT"]


OVERLAY_DTS = f"""/dts-v1/;
/plugin/;
&{{/}} {{ {parts.OVERLAY_NODE} {{ source = "board-file"; }}; }};
"""


def test_board_file_overlay_is_applied_by_barebox(bb_lab: BareboxLab) -> None:
    """``oftree = ["virt-marker.dtbo"]`` (compiled by ``dtc -@``): the script keeps the FIT's DTB
    and names the overlay after a leading colon; barebox applies it, and Linux sees its node in
    ``/proc/device-tree``."""
    source = bb_lab.root / "virt-marker.dtso"
    source.write_text(OVERLAY_DTS)
    overlay = bb_lab.served.boards / "virt-marker.dtbo"
    parts.run(["dtc", "-q", "-@", "-I", "dts", "-O", "dtb", "-o", overlay, source])
    script = rewrite_board(bb_lab, lambda s: 'devboot_oftree=":' in s, oftree=["virt-marker.dtbo"])
    art = bb_lab.artifacts()
    assert f'devboot_oftree=":{art["overlay"]}"' in script, script
    with bb_lab.barebox("devboot-overlay", bb_lab.images.path(barebox.IMAGE)) as bb:
        net_up(bb)
        booted = devboot(bb, "net", "build-A")  # the FIT's DT is still the base
        source_seen = marker_line(bb, "overlay source=")
    _report("devboot net (board-file overlay, window 1)", booted.seconds)
    assert source_seen == "board-file", source_seen
    fit = fit_overrides(bb_lab, art["initrd"])
    assert booted.overrides["FDT"] == f"{fit['FDT']}, File({art['overlay']})", booted
