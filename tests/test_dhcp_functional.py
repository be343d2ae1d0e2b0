"""``overrided serve --dhcp`` with the real dnsmasq, on a layer-2 segment of the test's own.

The segment (``tests/support/segment.py``) is a bridge in one network namespace and the
service's ``eth0`` (192.0.2.4/24) in another; clients are veth ends on the bridge. The client is
``tests/support/dhcp_probe.py`` (it shows every field of an answer, and sets options 60 and 93
when told), and busybox ``udhcpc``. Firmware clients (U-Boot, barebox) are in ``e2e/test_dhcp.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import NetnsServed
from tests.support.builds import build_folder
from tests.support.fits import sample_fit
from tests.support.segment import SERVER_IFACE, SERVER_IP, Segment

MAC_A = "52:54:00:d0:00:0a"
MAC_B = "52:54:00:d0:00:0b"
MAC_C = "52:54:00:d0:00:0c"
UNKNOWN = "52:54:00:d0:00:99"
DYNAMIC = 20.0  # seconds a probe waits for an address from the range

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="needs dnsmasq (dnsmasq-base)"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox (udhcpc)"),
]


def board_a() -> str:
    return (
        'compatible = ["v,board-a"]\nhostname = "lab-a"\n'
        f'mac = "{MAC_A}"\nip = "192.0.2.10"\nformats = ["barebox", "bootscr"]\n'
    )


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_fit(tmp_path_factory.mktemp("fit")).fit


@pytest.fixture
def segment() -> Iterator[Segment]:
    with Segment() as seg:
        yield seg


def serve(seg: Segment, root: Path, fit: Path, *extra: str, **env: str) -> NetnsServed:
    """``overrided serve --dhcp eth0 …`` in the segment's server namespace, build b1, board a."""
    served = NetnsServed(root, seg.server)
    served.extra = ["--dhcp", SERVER_IFACE, *extra]
    served.env = env
    (served.boards / "a.toml").write_text(board_a())
    build_folder(served.builds, "b1", fit)
    return served


def dhcp_info(served: NetnsServed) -> dict[str, Any]:
    info: dict[str, Any] = served.api("/api/dhcp")
    return info


def boot_file(answer: dict[str, Any]) -> str:
    """Option 67, or the BOOTP file field when dnsmasq put it there."""
    return str(answer["options"].get("67") or answer["file"])


def test_boards_get_their_address_hostname_server_and_boot_file_and_edits_are_served(
    segment: Segment, tmp_path: Path, fit: Path
) -> None:
    served = serve(segment, tmp_path, fit)
    with served:
        served.wait_for(lambda: dhcp_info(served)["running"], timeout=30, what="dnsmasq")
        pid = dhcp_info(served)["pid"]
        probe = segment.probe_iface()

        got = segment.probe(probe, MAC_A, request=True)
        ack = got["ack"]
        assert ack is not None, served.log()[-3000:]
        assert ack["yiaddr"] == "192.0.2.10"
        assert ack["siaddr"] == SERVER_IP
        assert ack["options"]["12"] == "lab-a"  # barebox: global.hostname
        assert ack["options"]["66"] == SERVER_IP  # barebox: global.net.server
        assert boot_file(ack) == "a.scr"  # U-Boot: $bootfile
        assert "3" not in ack["options"]  # no router on a boot link
        assert served.tftp_get("a.scr")[:4] == bytes.fromhex("27051956")  # what 67 names

        # Known boards only: an unknown client gets nothing.
        assert segment.probe(probe, UNKNOWN, timeout=3)["offer"] is None

        # A new board, and one claiming a's MAC: one error, the others served, no restart.
        (served.boards / "c.toml").write_text(
            f'compatible = ["v,board-c"]\nhostname = "lab-c"\nmac = "{MAC_C}"\nip = "192.0.2.12"\n'
        )
        (served.boards / "d.toml").write_text(
            f'compatible = ["v,board-b"]\nhostname = "lab-d"\nmac = "{MAC_A.upper()}"\n'
        )
        served.wait_for(
            lambda: "c" in (i := dhcp_info(served))["boards"] and i["running"] and i["pid"] != pid,
            timeout=30,
            what="board c served",
        )
        boards = {b["name"]: b for b in served.api("/api/boards")}
        assert boards["d"]["error"] == (
            f"boards/d.toml: mac: {MAC_A} is already used by boards/a.toml"
        )
        got_c = segment.probe(probe, MAC_C, request=True)["ack"]
        assert got_c is not None and got_c["yiaddr"] == "192.0.2.12"
        assert got_c["options"]["12"] == "lab-c" and "67" not in got_c["options"]  # barebox only
        again = segment.probe(probe, MAC_A, request=True)["ack"]
        assert again is not None and again["options"]["12"] == "lab-a"
        info = dhcp_info(served)
        # Restarted with the new entries (dnsmasq.py: not SIGHUP, which crashes 2.90 here).
        assert info["pid"] != pid and info["running"] and info["error"] is None
        assert "board entries changed (2 boards): restarting dnsmasq" in served.log()

        # Leases, with the board of each MAC, in /api/dhcp and /api/boards.
        leases = {x["mac"]: x for x in info["leases"]}
        assert leases[MAC_A]["ip"] == "192.0.2.10" and leases[MAC_A]["board"] == "a"
        assert leases[MAC_A]["last_seen"] is not None and leases[MAC_A]["expires"] is not None
        assert leases[MAC_C]["board"] == "c" and leases[UNKNOWN]["board"] is None
        boards = {b["name"]: b for b in served.api("/api/boards")}
        assert [x["ip"] for x in boards["a"]["leases"]] == ["192.0.2.10"]
        assert (served.store / "dhcp" / "leases").read_text().count(MAC_A) == 1
    # Stopped with the service.
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0


def test_a_range_serves_unknown_clients_and_boards_without_an_ip_stably(
    segment: Segment, tmp_path: Path, fit: Path
) -> None:
    served = serve(segment, tmp_path, fit, "--dhcp-range", "192.0.2.100,192.0.2.110")
    (served.boards / "b.toml").write_text(
        f'compatible = ["v,board-b"]\nhostname = "lab-b"\nmac = "{MAC_B}"\n'
    )
    with served:
        served.wait_for(lambda: dhcp_info(served)["running"], timeout=30, what="dnsmasq")
        probe = segment.probe_iface()
        # dnsmasq pings an address from the range before it offers it (up to 3 s, and it
        # answers nothing else meanwhile): the probes wait longer here.
        first = segment.probe(probe, UNKNOWN, request=True, timeout=DYNAMIC)["ack"]
        assert first is not None
        assert 100 <= int(first["yiaddr"].rsplit(".", 1)[1]) <= 110
        assert first["siaddr"] == SERVER_IP and "12" not in first["options"]
        assert (
            segment.probe(probe, UNKNOWN, request=True, timeout=DYNAMIC)["ack"]["yiaddr"]
            == first["yiaddr"]
        )
        b = segment.probe(probe, MAC_B, request=True, timeout=DYNAMIC)["ack"]
        assert b is not None and b["options"]["12"] == "lab-b"
        assert 100 <= int(b["yiaddr"].rsplit(".", 1)[1]) <= 110 and b["yiaddr"] != first["yiaddr"]
        assert (
            segment.probe(probe, MAC_A, request=True, timeout=DYNAMIC)["ack"]["yiaddr"]
            == "192.0.2.10"
        )


def test_proxy_answers_pxe_clients_only_and_hands_out_no_address(
    segment: Segment, tmp_path: Path, fit: Path
) -> None:
    served = serve(segment, tmp_path, fit, "--dhcp-proxy")
    with served:
        served.wait_for(lambda: dhcp_info(served)["running"], timeout=30, what="dnsmasq")
        assert dhcp_info(served)["mode"] == "proxy"
        probe = segment.probe_iface()
        # What U-Boot's dhcp sends on arm64: option 60 and option 93 (RFC 4578) = 22.
        vendor = "PXEClient:Arch:00022:UNDI:003000"
        pxe = segment.probe(probe, MAC_A, vendor=vendor, arch=22)["offer"]
        assert pxe is not None, served.log()[-3000:]
        assert pxe["yiaddr"] == "0.0.0.0"  # the lab's own DHCP server gives the address
        assert pxe["options"]["60"] == "PXEClient"
        assert pxe["siaddr"] == SERVER_IP
        assert "PXE(eth0) " + MAC_A + " proxy" in served.log()
        assert segment.probe(probe, MAC_A, timeout=3)["offer"] is None  # not a PXE client
        assert segment.probe(probe, UNKNOWN, timeout=3)["offer"] is None
        conf = (served.store / "dhcp" / "dnsmasq.conf").read_text()
        assert 'pxe-service=tag:ovd-a,22,"overrided a",a.scr,192.0.2.4\n' in conf

        # busybox udhcpc as a PXE client: offered 0.0.0.0 by this server, so it asks for that
        # and gets no lease; without "PXEClient" it hears nothing at all.
        segment.lab.ip("link", "set", probe, "address", MAC_A)
        pxe_args = ["-V", vendor, "-x", "0x5d:0016"]  # option 93 = 22, as U-Boot on arm64
        udhcpc = ["busybox", "udhcpc", "-i", probe, "-f", "-q", "-n", "-t", "2", "-T", "1"]
        udhcpc += ["-s", "/bin/true"]
        as_pxe = segment.lab.run([*udhcpc, *pxe_args], check=False)
        assert f"select for 0.0.0.0, server {SERVER_IP}" in as_pxe.stderr, as_pxe.stderr
        plain = segment.lab.run(udhcpc, check=False)
        assert plain.returncode != 0 and "select for" not in plain.stderr, plain.stderr


def test_without_dnsmasq_the_error_names_the_package_and_tftp_and_http_serve_on(
    segment: Segment, tmp_path: Path, fit: Path
) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with `ip` (to enter the namespace), without dnsmasq
    bin_dir.mkdir()
    (bin_dir / "ip").symlink_to(shutil.which("ip") or "/usr/sbin/ip")
    served = serve(segment, tmp_path, fit, PATH=str(bin_dir))
    with served:
        served.wait_for(lambda: dhcp_info(served)["error"], timeout=30, what="the error")
        info = dhcp_info(served)
        assert info["error"] == (
            "--dhcp needs dnsmasq, which is not on PATH: apt-get install dnsmasq-base "
            "(it installs /usr/sbin/dnsmasq)"
        )
        assert info["enabled"] and not info["running"]
        assert "apt-get install dnsmasq-base" in served.log()
        assert served.tftp_get("a.scr")[:4] == bytes.fromhex("27051956")
        assert served.http_get("/a.scr")[:4] == bytes.fromhex("27051956")


def test_a_dnsmasq_that_cannot_start_is_reported_and_started_again_once_it_can(
    segment: Segment, tmp_path: Path, fit: Path
) -> None:
    served = serve(segment, tmp_path, fit)
    blocker = served.store / "dhcp" / "leases"
    blocker.mkdir(parents=True)  # the lease file's place is taken: dnsmasq exits at start
    with served:
        served.wait_for(lambda: dhcp_info(served)["error"], timeout=30, what="the error")
        error = dhcp_info(served)["error"]
        assert error.startswith("dnsmasq exited with status "), error
        assert "lease" in error, error
        assert served.tftp_get("a.scr")[:4] == bytes.fromhex("27051956")
        blocker.rmdir()
        served.wait_for(lambda: dhcp_info(served)["running"], timeout=60, what="restart")
        assert dhcp_info(served)["error"] is None
        probe = segment.probe_iface()
        ack = segment.probe(probe, MAC_A, request=True)["ack"]
        assert ack is not None and ack["yiaddr"] == "192.0.2.10"
