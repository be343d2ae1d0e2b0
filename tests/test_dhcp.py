"""Board-file network fields (``mac``, ``ip``, ``nfsroot``) and the DHCP entries made of them.

The dnsmasq configuration is checked by dnsmasq itself (``--test``) where it matters; the
running dnsmasq with real clients is in ``test_dhcp_functional.py`` and ``e2e/test_dhcp.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from overrided import dhcp
from overrided.cli import main
from overrided.clients import Artifacts, barebox, ipxe, uboot
from overrided.config import Board, BoardError, load_board, load_boards

SERVER = IPv4Address("192.0.2.4")
NET = IPv4Network("192.0.2.0/24")


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def board(**kw: object) -> Board:
    return Board.model_validate({"name": "b", "compatible": ["v,b"], **kw})


# --- board fields ----------------------------------------------------------------------------


def test_mac_is_one_address_or_a_list_normalised(tmp_path: Path) -> None:
    one = load_board(
        write(tmp_path / "boards", "a.toml", 'compatible = ["v,a"]\nmac = "52-54-00-AB-CD-01"\n')
    )
    assert one.mac == ("52:54:00:ab:cd:01",)
    two = load_board(
        write(
            tmp_path / "boards",
            "b.toml",
            'compatible = ["v,b"]\nmac = ["52:54:00:00:00:01", "52:54:00:00:00:02"]\n',
        )
    )
    assert two.mac == ("52:54:00:00:00:01", "52:54:00:00:00:02")
    assert load_board(write(tmp_path / "boards", "c.toml", 'compatible = ["v,c"]\n')).mac == ()


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (
            'mac = "52:54:00:12:34"',
            "boards/x.toml: mac: '52:54:00:12:34' is not a MAC address like 52:54:00:12:34:56",
        ),
        (
            'mac = "52:54:00:12:34:5g"',
            "boards/x.toml: mac: '52:54:00:12:34:5g' is not a MAC address",
        ),
        ('mac = ["52:54:00:12:34:56", 7]', "boards/x.toml: mac: 7 is not a MAC address"),
        (
            'mac = "01:00:5e:00:00:01"',
            "boards/x.toml: mac: '01:00:5e:00:00:01' is a multicast address",
        ),
        (
            'mac = ["52:54:00:12:34:56", "52-54-00-12-34-56"]',
            "boards/x.toml: mac: '52-54-00-12-34-56' is listed twice",
        ),
        ("mac = 5", "boards/x.toml: mac: "),
        (
            'ip = "192.0.2.300"',
            "boards/x.toml: ip: '192.0.2.300' is not an IPv4 address like 192.0.2.10",
        ),
        ('ip = "2001:db8::1"', "boards/x.toml: ip: '2001:db8::1' is not an IPv4 address"),
        ('ip = "0.0.0.0"', "boards/x.toml: ip: '0.0.0.0' cannot be a board's address"),
        (
            'nfsroot = "/srv/nfs/x"',
            "boards/x.toml: nfsroot: '/srv/nfs/x' is not '<server IPv4>:/<export path>",
        ),
        (
            'nfsroot = "nfs.lab:/srv/x"',
            "boards/x.toml: nfsroot: 'nfs.lab:/srv/x' is not '<server IPv4>:",
        ),
        ('nfsroot = "192.0.2.4:srv"', "boards/x.toml: nfsroot: '192.0.2.4:srv' is not"),
        ('nfsroot = "192.0.2.4:/srv/$x"', "boards/x.toml: nfsroot: must not contain '$'"),
        ('nfsroot = "192.0.2.4:/srv/a b"', "boards/x.toml: nfsroot: '192.0.2.4:/srv/a b' is not"),
        (
            'nfsroot = "192.0.2.4:/srv/x"\n[bootargs]\nnfsroot = "root=/dev/sda"',
            "boards/x.toml: bootargs.nfsroot: is set by nfsroot; keep one of them",
        ),
    ],
)
def test_bad_network_fields_are_one_line_naming_file_and_field(
    tmp_path: Path, line: str, error: str
) -> None:
    path = write(tmp_path / "boards", "x.toml", f'compatible = ["v,x"]\n{line}\n')
    with pytest.raises(BoardError) as exc:
        load_board(path)
    assert str(exc.value).startswith(error), str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_duplicate_mac_or_ip_refuses_the_later_file_and_keeps_the_others(tmp_path: Path) -> None:
    d = tmp_path / "boards"
    write(d, "a.toml", 'compatible = ["v,a"]\nmac = "52:54:00:00:00:01"\nip = "192.0.2.10"\n')
    write(d, "b.toml", 'compatible = ["v,b"]\nmac = ["52:54:00:00:00:02", "52:54:00:00:00:01"]\n')
    write(d, "c.toml", 'compatible = ["v,c"]\nmac = "52:54:00:00:00:03"\nip = "192.0.2.10"\n')
    write(d, "d.toml", 'compatible = ["v,d"]\nmac = "52:54:00:00:00:04"\nip = "192.0.2.11"\n')
    write(d, "e.toml", 'compatible = ["v,e"]\nmac = "nonsense"\n')
    boards, errors = load_boards(d)
    assert [b.name for b in boards] == ["a", "d"]
    assert errors == {
        "boards/b.toml": "boards/b.toml: mac: 52:54:00:00:00:01 is already used by boards/a.toml",
        "boards/c.toml": "boards/c.toml: ip: 192.0.2.10 is already used by boards/a.toml",
        "boards/e.toml": (
            "boards/e.toml: mac: 'nonsense' is not a MAC address like 52:54:00:12:34:56"
        ),
    }


def test_boards_check_reports_duplicates_and_addresses_outside_the_subnet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "boards"
    write(d, "a.toml", 'compatible = ["v,a"]\nmac = "52:54:00:00:00:01"\nip = "192.0.2.10"\n')
    write(d, "b.toml", 'compatible = ["v,b"]\nmac = "52:54:00:00:00:01"\n')
    write(d, "c.toml", 'compatible = ["v,c"]\nmac = "52:54:00:00:00:03"\nip = "198.51.100.7"\n')
    assert main(["boards", "check", "--boards", str(d), "--subnet", "192.0.2.0/24"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "boards/b.toml: mac: 52:54:00:00:00:01 is already used by boards/a.toml" in out
    assert "boards/c.toml: ip: 198.51.100.7 is outside the served subnet 192.0.2.0/24" in out
    assert main(["boards", "check", "--boards", str(d)]) == 1  # without --subnet: b only
    out = capsys.readouterr().out
    assert "198.51.100.7" not in out and "1 invalid" in out


# --- NFS root in every format ----------------------------------------------------------------


def test_nfsroot_renders_its_kernel_arguments_into_every_format() -> None:
    b = board(nfsroot="192.0.2.4:/srv/nfs/b,vers=3", bootargs={"console": "console=ttyAMA0"})
    want = "root=/dev/nfs nfsroot=192.0.2.4:/srv/nfs/b,vers=3 ip=dhcp rw"
    assert b.kernel_args == {"console": "console=ttyAMA0", "nfsroot": want}
    a = Artifacts(
        board="b", hostname="b", user="none", arch="arm64", provenance="p",
        fit="none-fit-b-1", configuration="conf-1", kernel="none-kernel-b-1",
        initrd="none-initrd-b-1", bootargs=b.kernel_args, http_base="http://192.0.2.4:8080/",
    )  # fmt: skip
    script = barebox.devboot_script(a)
    assert f'global linux.bootargs.dyn.nfsroot="{want}"' in script
    assert f"append console=ttyAMA0 {want}\n" in uboot.pxe_entry(a)
    assert f"setenv bootargs 'console=ttyAMA0 {want}'" in uboot.boot_script(a)
    assert f"initrd=initrd console=ttyAMA0 {want}\n" in ipxe.script(a)
    assert board().kernel_args == {}


# --- DHCP entries ----------------------------------------------------------------------------


def test_each_board_with_a_mac_gets_hostname_server_and_its_formats_boot_file() -> None:
    boards = [
        board(name="bb", hostname="lab-bb", mac="52:54:00:00:00:01", ip="192.0.2.10"),
        board(
            name="ub", mac=["52:54:00:00:00:02", "52:54:00:00:00:12"], formats=["bootscr", "ipxe"]
        ),
        board(name="px", mac="52:54:00:00:00:03", ip="192.0.2.13", formats=["pxe"]),
        board(name="nomac"),
    ]
    entries, problems = dhcp.host_entries(
        boards, SERVER, http_base="http://192.0.2.4:8080/", network=NET
    )
    assert problems == {}
    assert [(e.board, e.hostname, e.boot_file, e.ipxe_url, e.pxelinux_config) for e in entries] == [
        ("bb", "lab-bb", None, None, None),
        ("ub", "b", "ub.scr", "http://192.0.2.4:8080/boot/ub.ipxe", None),
        ("px", "b", None, None, "pxelinux.cfg/01-52-54-00-00-00-03"),
    ]
    assert dhcp.dnsmasq_hosts(entries) == (
        "52:54:00:00:00:01,set:ovd-bb,192.0.2.10\n"
        "52:54:00:00:00:02,52:54:00:00:00:12,set:ovd-ub\n"
        "52:54:00:00:00:03,set:ovd-px,192.0.2.13\n"
    )
    assert dhcp.dnsmasq_opts(entries, SERVER).splitlines() == [
        "option:tftp-server,192.0.2.4",
        "option:server-ip-address,192.0.2.4",
        'tag:ovd-bb,12,"lab-bb"',
        'tag:ovd-ub,12,"b"',
        'tag:ovd-ub,tag:!ipxe,option:bootfile-name,"ub.scr"',
        'tag:ovd-ub,tag:ipxe,option:bootfile-name,"http://192.0.2.4:8080/boot/ub.ipxe"',
        'tag:ovd-px,12,"b"',
        'tag:ovd-px,209,"pxelinux.cfg/01-52-54-00-00-00-03"',
    ]


def test_boards_dhcp_cannot_serve_are_reported_not_written() -> None:
    boards = [
        board(name="out", mac="52:54:00:00:00:01", ip="198.51.100.7"),
        board(name="me", mac="52:54:00:00:00:02", ip="192.0.2.4"),
        board(name="noip", mac="52:54:00:00:00:03"),
        board(name="bcast", mac="52:54:00:00:00:04", ip="192.0.2.255"),
    ]
    entries, problems = dhcp.host_entries(boards, SERVER, network=NET, has_range=False)
    assert entries == []
    assert problems == {
        "out": "ip: 198.51.100.7 is outside the served subnet 192.0.2.0/24",
        "me": "ip: 192.0.2.4 is this server's own address",
        "noip": "ip: none set, and no --dhcp-range to take one from",
        "bcast": "ip: 192.0.2.255 is the subnet's own address, not a host's",
    }


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("192.0.2.100", "--dhcp-range '192.0.2.100': give START,END like 192.0.2.100,192.0.2.199"),
        ("192.0.2.9,192.0.2.2", "--dhcp-range '192.0.2.9,192.0.2.2': 192.0.2.9 is above 192.0.2.2"),
        ("a,b", "--dhcp-range 'a,b': give START,END"),
    ],
)
def test_a_bad_range_is_one_line(text: str, error: str) -> None:
    with pytest.raises(dhcp.DhcpError, match="^" + error.replace("(", r"\(").replace("+", r"\+")):
        dhcp.parse_range(text)
    assert dhcp.parse_range(" 192.0.2.100, 192.0.2.199") == (
        IPv4Address("192.0.2.100"),
        IPv4Address("192.0.2.199"),
    )


needs_dnsmasq = pytest.mark.skipif(
    shutil.which("dnsmasq") is None,
    reason="dnsmasq-base is not installed",
)


@needs_dnsmasq
@pytest.mark.parametrize(
    "settings",
    [
        dhcp.DhcpSettings("eth0"),
        dhcp.DhcpSettings("eth0", (IPv4Address("192.0.2.100"), IPv4Address("192.0.2.199"))),
        dhcp.DhcpSettings("eth0", proxy=True),
    ],
    ids=["static", "range", "proxy"],
)
def test_dnsmasq_accepts_the_configuration_it_is_given(
    tmp_path: Path, settings: dhcp.DhcpSettings
) -> None:
    paths = dhcp.Paths(tmp_path)
    boards = [
        board(name="bb", hostname="lab-bb", mac="52:54:00:00:00:01", ip="192.0.2.10"),
        board(
            name="ub", mac="52:54:00:00:00:02", ip="192.0.2.11", formats=["bootscr", "ipxe", "pxe"]
        ),
    ]
    entries, _ = dhcp.host_entries(boards, SERVER, http_base="http://192.0.2.4:8080/")
    paths.hosts.write_text(dhcp.dnsmasq_hosts(entries))
    paths.opts.write_text(dhcp.dnsmasq_opts(entries, SERVER))
    conf = dhcp.dnsmasq_conf(settings, IPv4Interface("192.0.2.4/24"), paths, entries=entries)
    pxe = 'pxe-service=tag:ovd-ub,ARM64_EFI,"overrided ub",ub.scr,192.0.2.4\n'
    assert (pxe in conf) == settings.proxy
    assert ("dhcp-authoritative" in conf) != settings.proxy
    assert "port=0\n" in conf and "interface=eth0\nbind-interfaces\n" in conf
    assert f"dhcp-leasefile={paths.leases}\n" in conf
    assert "enable-tftp" not in conf
    paths.conf.write_text(conf)
    program = dhcp.find_program()
    proc = subprocess.run(
        [program, "--test", f"--conf-file={paths.conf}"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "syntax check OK" in proc.stdout + proc.stderr


def test_a_missing_dnsmasq_names_the_package_to_install(tmp_path: Path) -> None:
    with pytest.raises(dhcp.DhcpError) as exc:
        dhcp.find_program(path=str(tmp_path))
    assert str(exc.value) == (
        "--dhcp needs dnsmasq, which is not on PATH: apt-get install dnsmasq-base "
        "(it installs /usr/sbin/dnsmasq)"
    )


@needs_dnsmasq
@pytest.mark.parametrize("fmt", ["dnsmasq", "isc", "kea"])
def test_dhcp_export_prints_each_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    d = tmp_path / "boards"
    write(
        d,
        "a.toml",
        'compatible = ["v,a"]\nhostname = "lab-a"\nmac = "52:54:00:00:00:01"\n'
        'ip = "192.0.2.10"\nformats = ["barebox", "bootscr"]\n',
    )
    write(d, "b.toml", 'compatible = ["v,b"]\n')  # no mac: not exported
    write(d, "c.toml", 'compatible = ["v,c"]\nmac = "bad"\n')  # reported on stderr
    status = main(["dhcp", "export", "--boards", str(d), "--server", "192.0.2.4", "--format", fmt])
    out, err = capsys.readouterr()
    assert status == 0
    assert "boards/c.toml: mac: 'bad' is not a MAC address" in err
    if fmt == "kea":
        assert json.loads(out) == {
            "reservations": [
                {
                    "hw-address": "52:54:00:00:00:01",
                    "hostname": "lab-a",
                    "ip-address": "192.0.2.10",
                    "next-server": "192.0.2.4",
                    "boot-file-name": "a.scr",
                    "option-data": [
                        {"name": "tftp-server-name", "data": "192.0.2.4"},
                        {"name": "boot-file-name", "data": "a.scr"},
                    ],
                }
            ]
        }
    elif fmt == "isc":
        assert (
            "host a {\n  hardware ethernet 52:54:00:00:00:01;\n  fixed-address 192.0.2.10;\n" in out
        )
        assert 'option host-name "lab-a";' in out and "next-server 192.0.2.4;" in out
        assert 'filename "a.scr";' in out
    else:
        assert "dhcp-host=52:54:00:00:00:01,set:ovd-a,192.0.2.10\n" in out
        assert 'dhcp-option=tag:ovd-a,12,"lab-a"\n' in out
        assert 'dhcp-option=tag:ovd-a,option:bootfile-name,"a.scr"\n' in out
        # What it prints is a configuration dnsmasq takes.
        conf = write(tmp_path, "lab.conf", "port=0\ndhcp-range=192.0.2.0,static\n" + out)
        proc = subprocess.run(
            [dhcp.find_program(), "--test", f"--conf-file={conf}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "52:54:00:00:00:02" not in out


def test_leases_come_from_the_lease_file_and_the_log() -> None:
    seen = dhcp.Seen()
    seen.log_line("dnsmasq-dhcp[7]: DHCPDISCOVER(eth0) 52:54:00:00:00:01", now=1000.0)
    seen.log_line("dnsmasq-dhcp[7]: DHCPACK(eth0) 192.0.2.10 52:54:00:00:00:01 lab-bb", now=1001.0)
    seen.log_line("dnsmasq-dhcp[7]: PXE(eth0) 52:54:00:00:00:09 proxy", now=1002.0)
    seen.log_line("dnsmasq: started, version 2.90 DNS disabled", now=1003.0)
    seen.merge_file(
        dhcp.parse_leases(
            "4600 52:54:00:00:00:01 192.0.2.10 lab-bb 01:52:54:00:00:00:01\n"
            "4700 52:54:00:00:00:05 192.0.2.150 * *\nduid 00:01\n"
        )
    )
    leases = seen.of([board(name="bb", mac="52:54:00:00:00:01")])
    got = [(x.mac, x.ip, x.board, x.last_seen.timestamp() if x.last_seen else None) for x in leases]
    assert got == [
        ("52:54:00:00:00:09", None, None, 1002.0),
        ("52:54:00:00:00:01", "192.0.2.10", "bb", 1001.0),
        ("52:54:00:00:00:05", "192.0.2.150", None, None),
    ]
    assert leases[1].expires is not None and leases[1].expires.timestamp() == 4600


@pytest.mark.skipif(
    shutil.which("dhcpd") is None or shutil.which("kea-dhcp4") is None,
    reason="needs isc-dhcp-server and kea-dhcp4-server",
)
def test_isc_and_kea_exports_are_configurations_their_servers_accept(tmp_path: Path) -> None:
    d = tmp_path / "boards"
    write(d, "a.toml", 'compatible = ["v,a"]\nmac = "52:54:00:00:00:01"\nip = "192.0.2.10"\n')
    write(
        d,
        "b.toml",
        'compatible = ["v,b"]\nmac = ["52:54:00:00:00:02", "52:54:00:00:00:03"]\n'
        'formats = ["bootscr", "ipxe"]\n',
    )
    args = ["dhcp", "export", "--boards", str(d), "--server", "192.0.2.4"]
    args += ["--public-url", "http://192.0.2.4:8080/"]

    def export(fmt: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "overrided", *args, "--format", fmt],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return proc.stdout

    isc = export("isc")
    assert isc.count("host ") == 3 and "hardware ethernet 52:54:00:00:00:03;" in isc
    dhcpd_conf = write(
        tmp_path, "dhcpd.conf", "subnet 192.0.2.0 netmask 255.255.255.0 {\n}\n" + isc
    )
    checked = subprocess.run(
        ["dhcpd", "-t", "-cf", str(dhcpd_conf)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    # The check can fail: a broken host block is refused.
    broken = write(tmp_path, "broken.conf", dhcpd_conf.read_text().replace(";", "", 1))
    assert subprocess.run(["dhcpd", "-t", "-cf", str(broken)], capture_output=True).returncode

    reservations = json.loads(export("kea"))["reservations"]
    assert len(reservations) == 3
    conf = {
        "Dhcp4": {
            "interfaces-config": {"interfaces": []},
            "subnet4": [{"id": 1, "subnet": "192.0.2.0/24", "reservations": reservations}],
        }
    }
    kea_conf = write(tmp_path, "kea.json", json.dumps(conf))
    checked = subprocess.run(
        ["kea-dhcp4", "-t", str(kea_conf)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    reservations[0]["hw-address"] = "not a MAC"
    kea_conf.write_text(json.dumps(conf))
    assert subprocess.run(["kea-dhcp4", "-t", str(kea_conf)], capture_output=True).returncode


def test_leases_remembered_are_bounded_newest_kept() -> None:
    seen = dhcp.Seen(limit=3)
    for i in range(5):
        seen.log_line(f"DHCPDISCOVER(eth0) 52:54:00:00:00:0{i}", now=1000.0 + i)
    seen.log_line("DHCPDISCOVER(eth0) 52:54:00:00:00:02", now=2000.0)  # heard again: kept
    seen.log_line("DHCPDISCOVER(eth0) 52:54:00:00:00:09", now=2001.0)
    assert [x.mac[-2:] for x in seen.of([])] == ["09", "02", "04"]
