"""Real boots: Debian's U-Boot 2023.01 in QEMU fetches from ``overrided serve`` over TFTP and
boots Debian's arm64 kernel into an init that proves it got the right modules.

Each boot is one QEMU under TCG (several seconds), so each test combines its assertions into
as few boots as it can. Every wait is bounded; a failure message carries the serial log (and
the service log where it matters). The seconds from QEMU start to the init marker are printed
(``-s`` or the ``-rA`` report shows them); no test asserts on time.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from overrided.clients.uboot import FIT_ADDR_VAR, INITRD_ADDR_VAR
from tests.e2e import parts
from tests.e2e.conftest import (
    BOARD,
    BOOTARGS,
    FDT_ADDR,
    FIT_ADDR,
    INITRD_ADDR,
    MAC,
    NET_UP,
    Lab,
    boot_marker,
    write_build,
)
from tests.support.ipxe import parse as ipxe_parse
from tests.support.ipxe import uri as ipxe_uri

BOOTARGS_LINE = " ".join(BOOTARGS.values())
SCRIPT_ADDR = "0x4e000000"


def _report(what: str, seconds: float) -> None:
    print(f"\n{what}: QEMU start to init marker {seconds:.1f} s")


def test_tftpboot_and_bootm_the_boards_configuration(lab: Lab) -> None:
    """``dhcp``, ``tftpboot`` the FIT and initrd the API names, ``bootm <fit>#<conf>``."""
    info = lab.served.board()
    # the board asked for these formats; the API lists what each one serves
    assert info["served"]["barebox"] == ["none-devboot-virt64"]
    assert info["served"]["pxe"] == [f"pxelinux.cfg/01-{MAC.replace(':', '-')}"]
    assert info["served"]["bootscr"] == [f"{BOARD}.scr"]
    art = lab.artifacts()
    conf = info["configuration"]
    assert conf and art["fit"].startswith("none-fit-virt64-"), info

    with lab.uboot("tftpboot") as ub:
        ub.boot_to_prompt()
        ub.check(NET_UP, 30)
        out = ub.check(f"tftpboot {FIT_ADDR} {art['fit']} && iminfo {FIT_ADDR}", 120)
        # our trimmed FIT: one configuration, sha256 hashes checked by U-Boot itself
        assert f"Default Configuration: '{conf}'" in out, ub.log
        assert len(re.findall(r"^\s+Configuration \d+ \(", out, re.M)) == 1, ub.log
        assert "sha256" in out and "Bad hash" not in out, ub.log
        ub.check(f"tftpboot {INITRD_ADDR} {art['initrd']} && setenv bootargs {BOOTARGS_LINE}", 120)
        ub.send_line(f"bootm {FIT_ADDR}#{conf} {INITRD_ADDR}:${{filesize}}")
        ub.expect(f"Using '{conf}' configuration", 30)
        ub.expect(r"Verifying Hash Integrity \.\.\. sha256\+ OK", 60)
        seconds = boot_marker(ub, "build-A")
    _report("tftpboot + bootm", seconds)

    # the service saw the board fetch both, completely
    journal = lab.served.api(f"/api/boards/{BOARD}/journal")
    done = {t["name"]: t["outcome"] for t in journal if t["name"] in (art["fit"], art["initrd"])}
    assert done == {art["fit"]: "ok", art["initrd"]: "ok"}, journal


def test_pxe_get_and_pxe_boot(lab: Lab) -> None:
    """``pxe get`` finds ``pxelinux.cfg/01-<mac>``; ``pxe boot`` boots its FIT configuration."""
    with lab.uboot("pxe") as ub:
        ub.boot_to_prompt()
        ub.check(NET_UP, 30)
        env = (
            f"setenv kernel_addr_r {FIT_ADDR} && setenv ramdisk_addr_r {INITRD_ADDR} "
            f"&& setenv fdt_addr_r {FDT_ADDR} && setenv pxefile_addr_r {SCRIPT_ADDR}"
        )
        out = ub.check(f"{env} && pxe get", 60)
        assert f"Retrieving file: pxelinux.cfg/01-{MAC.replace(':', '-')}" in out, ub.log
        ub.send_line("pxe boot")
        ub.expect(rf"append: {re.escape(BOOTARGS_LINE)}", 60)
        # fdt_addr_r is set, so the entry's fdt (the board's DTB) is passed: dt=build-A says so
        seconds = boot_marker(ub, "build-A")
    _report("pxe get; pxe boot", seconds)


def test_boot_script_and_a_rebuild_during_the_boot(lab: Lab) -> None:
    """``source`` our ``boot.scr``; a rebuild after the script was fetched does not mix sets.

    Boot 1 fetches the script of build A, then build B lands and is rendered; the script's
    versioned names still give A's FIT and initrd (DT and modules both say build-A). Boot 2
    gets B's script and B's artifacts.
    """
    first = lab.artifacts()
    (script_name,) = lab.served.board()["served"]["bootscr"]
    addrs = f"setenv {FIT_ADDR_VAR} {FIT_ADDR} && setenv {INITRD_ADDR_VAR} {INITRD_ADDR}"

    with lab.uboot("bootscr-1") as ub:
        ub.boot_to_prompt()
        ub.check(NET_UP, 30)
        out = ub.check(f"{addrs} && tftpboot {SCRIPT_ADDR} {script_name} && iminfo", 60)
        assert "Verifying Checksum ... OK" in out, ub.log

        write_build(lab.served.builds, "b2", lab.parts, "B")
        lab.served.wait_for(
            lambda: lab.served.board().get("build") == "b2", timeout=120, what="build b2"
        )
        second = lab.artifacts()
        assert second["fit"] != first["fit"] and second["initrd"] != first["initrd"]

        ub.send_line(f"source {SCRIPT_ADDR}")
        ub.expect(f"overrided: {BOARD}: build b1", 30)
        seconds = boot_marker(ub, "build-A")
    _report("boot.scr (build A, rebuilt mid-boot)", seconds)

    with lab.uboot("bootscr-2") as ub:
        ub.boot_to_prompt()
        ub.check(f"{NET_UP} && {addrs} && tftpboot {SCRIPT_ADDR} {script_name}", 60)
        ub.send_line(f"source {SCRIPT_ADDR}")
        ub.expect(f"overrided: {BOARD}: build b2", 30)
        boot_marker(ub, "build-B")
    assert parts.MARKER  # both boots reached init


def test_boot_with_packet_loss(lab: Lab) -> None:
    """2 % of TFTP DATA packets are dropped on the namespace's loopback; it still boots.

    U-Boot needs a window here: lockstep, each loss costs its timeout (1 s minimum), a quarter
    of an hour for the 33 MB FIT; with ``tftpwindowsize 16`` a lost block makes the next one
    arrive out of order and U-Boot re-ACKs at once (``net/tftp.c``). Only DATA is dropped:
    U-Boot re-ACKs once per block number, so an ACK lost together with its re-ACK leaves it
    waiting for its timeout. U-Boot's ACKs after a loss land inside the server's windows; the
    server restarts a window only where blocks were lost, never for U-Boot's ACKs of resent
    copies (``tests/test_tftp_window.py``), else the resends flood U-Boot's small receive ring.
    """
    art = lab.artifacts()
    conf = lab.served.board()["configuration"]
    how = lab.ns.drop_udp(2, min_length=1000)  # TFTP DATA is 4 + 1468 bytes here
    with lab.uboot("loss") as ub:
        ub.boot_to_prompt()
        ub.check(NET_UP, 30)
        # U-Boot counts timeouts per transfer, not in a row (default limit 10).
        ub.send_line(
            "setenv tftptimeout 1000 && setenv tftptimeoutcountmax 1000 "
            f"&& setenv tftpwindowsize 16 && tftpboot {FIT_ADDR} {art['fit']} "
            f"&& tftpboot {INITRD_ADDR} {art['initrd']} && setenv bootargs {BOOTARGS_LINE}"
            "; echo @@loss$?@@"
        )
        which, m = ub.expect_any([r"@@loss(?P<rc>\d+)@@", r"(?:T ){8}"], 300)
        if which == 1:  # eight timeouts in a row: stalled
            ub.send("\x03")
            ub.expect(r"=> ", 30)
            gateway = ub.run("ping 192.0.2.2", 30)
            state = "works" if gateway.status == 0 else "is dead too"
            raise ub.fail(f"transfer stalled under loss ({how}); U-Boot's network {state}")
        assert m.group("rc") == "0", ub.fail(f"fetch failed under loss ({how})")
        ub.expect(r"=> ", 30)
        ub.send_line(f"bootm {FIT_ADDR}#{conf} {INITRD_ADDR}:${{filesize}}")
        seconds = boot_marker(ub, "build-A")
    journal = lab.served.api(f"/api/boards/{BOARD}/journal")
    fit_transfers = [t for t in journal if t["name"] == art["fit"] and t["outcome"] == "ok"]
    assert fit_transfers, (how, journal)
    resent, blocks = fit_transfers[0]["retransmits"], -(-fit_transfers[0]["size"] // 1468)
    _report(f"boot with loss ({how}), FIT {blocks} blocks, {resent} resent", seconds)
    # 2 % lost, at most one window of 16 resent per loss: about a third of the blocks at worst;
    # a window restarted for every ACK of a resent copy resends several times the file.
    assert 0 < resent < blocks // 2, (how, fit_transfers[0])


def test_ipxe_script_over_http_names_served_artifacts(lab: Lab) -> None:
    """A board with a plain kernel gets ``boot/<board>.ipxe``; every URL in it is served.

    No boot: iPXE needs PXE or EFI firmware. The script is parsed with iPXE's rules and each
    URL is fetched with curl; the kernel is the build's Image, byte for byte.
    """
    board = "qemu-virt-efi"
    (lab.served.boards / f"{board}.toml").write_text(
        'compatible = ["linux,dummy-virt"]\nhostname = "virt-efi"\nimage = "kernel"\n'
        'init = "init.cpio"\nformats = ["ipxe"]\nbootargs = { console = "console=ttyAMA0" }\n'
    )

    def rendered() -> dict[str, Any] | None:
        try:
            b: dict[str, Any] = lab.served.api(f"/api/boards/{board}")
        except FileNotFoundError:  # 404 until the watcher has loaded the board file
            return None
        return b if b.get("served") else None

    info = lab.served.wait_for(rendered, timeout=120, what=f"board {board} rendered")
    assert info["served"] == {"ipxe": [f"boot/{board}.ipxe"]}, info
    script = lab.served.http_get(f"/boot/{board}.ipxe").decode()
    commands = ipxe_parse(script)
    assert [c[0] for c in commands] == ["kernel", "initrd", "boot"], script
    kernel_url, initrd_url = ipxe_uri(commands[0]), ipxe_uri(commands[1])
    assert commands[0][2:] == ["initrd=initrd", "console=ttyAMA0"], script
    for url, role in ((kernel_url, "kernel"), (initrd_url, "initrd")):
        assert urlsplit(url).path.lstrip("/") == info["artifacts"][role], (url, info)
    kernel = lab.ns.run(["curl", "-sSf", kernel_url], text=False).stdout
    assert kernel == lab.parts.image.read_bytes()
    initrd = lab.ns.run(["curl", "-sSf", initrd_url], text=False).stdout
    assert initrd == lab.served.tftp_get(info["artifacts"]["initrd"])  # same blob both ways
