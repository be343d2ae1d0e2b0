"""DHCP for the boards: host entries from the board files, served by dnsmasq as our child.

What a board with a ``mac`` gets (docs/network.md):

* its ``ip``, else a stable address from ``--dhcp-range`` (dnsmasq hashes the MAC);
* option 12 (host name) = its barebox ``global.hostname``, which picks the devboot script
  barebox's ``devboot`` sources (``clients/barebox.py`` names it);
* ``siaddr`` and option 66 (TFTP server) = this server: barebox sets ``global.net.server``
  from option 66, U-Boot sets ``serverip`` from ``siaddr``;
* option 67 (boot file) for U-Boot and iPXE: ``<board>.scr`` with the ``bootscr`` format (U-Boot's
  ``dhcp`` loads it, ``source`` runs it), the iPXE script's URL for iPXE clients (user class
  ``iPXE``, option 77), nothing for barebox, which names its own files. A ``pxe``-only board
  gets no boot file: U-Boot's ``pxe get`` looks for ``pxelinux.cfg/01-<mac>`` beside the boot
  file, so an empty one keeps that at the top of the TFTP tree; option 209 (RFC 5071, PXELINUX
  configuration file) names the entry too.

The protocol is Debian's dnsmasq (package ``dnsmasq-base``), run with a configuration of our own:
DNS off (``port=0``), its TFTP off (the default), bound to the one interface, leases in the
store. The per-board lines live in a hosts file and an options file (``--dhcp-hostsfile``,
``--dhcp-optsfile``), the same lines ``overrided dhcp export --format dnsmasq`` prints; the main
file holds what does not depend on the boards. When the boards' entries change, dnsmasq is
restarted rather than sent SIGHUP (``Dnsmasq._reload`` says why). Everything here but
``Dnsmasq`` is pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from pydantic import BaseModel, Field

from overrided.clients import Artifacts, ipxe, uboot
from overrided.config import Board
from overrided.errors import OverridedError
from overrided.state import BoardInfo, Lease

log = logging.getLogger("overrided.dhcp")

PROGRAM = "dnsmasq"
PACKAGE = "dnsmasq-base"  # the Debian package that carries it, without the system service
LEASE_SECONDS = 3600
# dnsmasq's option names (``dnsmasq --help dhcp``), in the options file.
OPT_HOSTNAME = "12"  # host name; dnsmasq has no name for it
OPT_TFTP_SERVER = "option:tftp-server"  # 66
OPT_BOOTFILE = "option:bootfile-name"  # 67; U-Boot's dhcp makes it $bootfile
OPT_SIADDR = "option:server-ip-address"  # the BOOTP siaddr field
OPT_PXELINUX_CONFIG = "209"  # RFC 5071
IPXE_TAG = "ipxe"  # set for clients whose user class (option 77) is "iPXE"
# Seconds before each new start of a dnsmasq that failed; the last one repeats.
RESTART_DELAYS = (1.0, 2.0, 5.0, 15.0, 60.0)


class DhcpError(OverridedError):
    """DHCP cannot be served as asked; the message says what to install or what failed."""


@dataclass(frozen=True)
class HostEntry:
    """What one board gets from DHCP."""

    board: str
    macs: tuple[str, ...]
    ip: IPv4Address | None  # None: an address from the range
    hostname: str  # option 12, barebox's global.hostname
    next_server: IPv4Address  # siaddr and option 66
    boot_file: str | None = None  # option 67 for everything but iPXE
    ipxe_url: str | None = None  # option 67 for iPXE
    pxelinux_config: str | None = None  # option 209

    @property
    def tag(self) -> str:
        """The dnsmasq tag of this board's lines (letters, digits, ``_``, ``.``, ``-``)."""
        return "ovd-" + re.sub(r"[^A-Za-z0-9_.-]", "_", self.board)


def boot_files(board: Board, http_base: str | None) -> tuple[str | None, str | None, str | None]:
    """(option 67 for U-Boot, option 67 for iPXE, option 209) as the board's formats need."""
    # The clients' modules name their files; they only need the board's name and MAC for it.
    a = Artifacts(
        board=board.name,
        hostname=board.hostname,
        user=board.user,
        arch=board.arch,
        provenance="",
        mac=board.mac[0] if board.mac else None,
    )
    formats = set(board.formats)
    plain = uboot.bootscr_name(a) if "bootscr" in formats else None
    pxelinux = uboot.pxe_name(a) if "pxe" in formats else None
    url = None
    if "ipxe" in formats and http_base:
        url = ipxe.artifact_url(http_base, ipxe.script_name(a))
    return plain, url, pxelinux


def host_entries(
    boards: Iterable[Board],
    server: IPv4Address,
    *,
    http_base: str | None = None,
    network: IPv4Network | None = None,
    has_range: bool = True,
) -> tuple[list[HostEntry], dict[str, str]]:
    """The boards' DHCP entries, and board → why it has none (only boards with a ``mac``).

    ``network`` is the served subnet, when known: an ``ip`` outside it cannot be handed out.
    Without a range, a board needs an ``ip``.
    """
    entries: list[HostEntry] = []
    problems: dict[str, str] = {}
    for b in boards:
        if not b.mac:
            continue
        if b.ip is not None and network is not None and b.ip not in network:
            problems[b.name] = f"ip: {b.ip} is outside the served subnet {network}"
            continue
        if network is not None and b.ip in (network.network_address, network.broadcast_address):
            problems[b.name] = f"ip: {b.ip} is the subnet's own address, not a host's"
            continue
        if b.ip is not None and b.ip == server:
            problems[b.name] = f"ip: {b.ip} is this server's own address"
            continue
        if b.ip is None and not has_range:
            problems[b.name] = "ip: none set, and no --dhcp-range to take one from"
            continue
        plain, url, pxelinux = boot_files(b, http_base)
        entries.append(
            HostEntry(
                board=b.name,
                macs=b.mac,
                ip=b.ip,
                hostname=b.hostname,
                next_server=server,
                boot_file=plain,
                ipxe_url=url,
                pxelinux_config=pxelinux,
            )
        )
    return entries, problems


def check_subnet(boards: Iterable[Board], network: IPv4Network) -> dict[str, str]:
    """Board → ``ip: … is outside …`` for each board whose ``ip`` the subnet does not hold."""
    return {
        b.name: f"ip: {b.ip} is outside the served subnet {network}"
        for b in boards
        if b.ip is not None and b.ip not in network
    }


# --- dnsmasq ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DhcpSettings:
    """``overrided serve --dhcp IFACE [--dhcp-range START,END] [--dhcp-proxy]``."""

    interface: str
    range: tuple[IPv4Address, IPv4Address] | None = None
    proxy: bool = False


def parse_range(text: str) -> tuple[IPv4Address, IPv4Address]:
    """``START,END`` → two addresses, START not above END; ``DhcpError`` saying why not."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        start, end = IPv4Address(parts[0].strip()), IPv4Address(parts[1].strip())
    except ValueError:
        raise DhcpError(
            f"--dhcp-range {text!r}: give START,END like 192.0.2.100,192.0.2.199"
        ) from None
    if start > end:
        raise DhcpError(f"--dhcp-range {text!r}: {start} is above {end}")
    return start, end


@dataclass(frozen=True)
class Paths:
    """dnsmasq's files, all in one folder of the store."""

    folder: Path

    @property
    def conf(self) -> Path:
        """The main configuration, read at start."""
        return self.folder / "dnsmasq.conf"

    @property
    def hosts(self) -> Path:
        """``--dhcp-hostsfile``: one ``dhcp-host`` per line."""
        return self.folder / "hosts"

    @property
    def opts(self) -> Path:
        """``--dhcp-optsfile``: one ``dhcp-option`` per line."""
        return self.folder / "options"

    @property
    def leases(self) -> Path:
        """``--dhcp-leasefile``."""
        return self.folder / "leases"


# PXE client system types (RFC 4578 option 93, dnsmasq's names) that proxy DHCP offers boards'
# boot files to: PC BIOS and UEFI, ARM UEFI, and U-Boot's own numbers for 32 and 64-bit ARM.
PXE_CLIENT_TYPES = ("x86PC", "BC_EFI", "x86-64_EFI", "ARM32_EFI", "ARM64_EFI", "21", "22")


def dnsmasq_conf(
    settings: DhcpSettings,
    iface: IPv4Interface,
    paths: Paths,
    *,
    user: str | None = None,
    entries: Sequence[HostEntry] = (),
) -> str:
    """The main dnsmasq configuration; with ``--dhcp-proxy`` it names each board's boot file
    (``pxe-service`` lines are read from here only)."""
    net = iface.network
    lines = [
        "# Written by overrided serve --dhcp; regenerated at every start.",
        "port=0",  # no DNS
        f"interface={settings.interface}",
        "bind-interfaces",
        "no-resolv",
        "no-hosts",
        f"dhcp-leasefile={paths.leases}",
        f"dhcp-hostsfile={paths.hosts}",
        f"dhcp-optsfile={paths.opts}",
        "log-dhcp",
        f"dhcp-userclass=set:{IPXE_TAG},iPXE",
        "dhcp-option=option:router",  # none: this link is for booting, not a way out
    ]
    if user:
        lines.append(f"user={user}")
    if settings.proxy:
        # Proxy DHCP: another server hands out addresses; dnsmasq answers PXE clients only.
        # PXE clients (option 60 "PXEClient" and option 93) get the boot file of their board.
        lines.append(f"dhcp-range={net.network_address},proxy,{net.netmask}")
        for e in entries:
            if e.boot_file:
                for csa in PXE_CLIENT_TYPES:
                    lines.append(
                        f'pxe-service=tag:{e.tag},{csa},"overrided {e.board}",'
                        f"{e.boot_file},{e.next_server}"
                    )
    else:
        if settings.range is not None:
            start, end = settings.range
            lines.append(f"dhcp-range={start},{end},{net.netmask},{LEASE_SECONDS}")
        else:
            # Known boards only: "static" hands out nothing but dhcp-host addresses.
            lines.append(f"dhcp-range={net.network_address},static,{net.netmask},{LEASE_SECONDS}")
        # The only DHCP server on this link: answer a client whose lease we forgot at once.
        lines.append("dhcp-authoritative")
    return "\n".join(lines) + "\n"


def dnsmasq_hosts(entries: Sequence[HostEntry]) -> str:
    """The hosts file: ``<mac>[,<mac>…],set:<tag>[,<ip>]`` per board."""
    lines = []
    for e in entries:
        fields = [*e.macs, f"set:{e.tag}"]
        if e.ip is not None:
            fields.append(str(e.ip))
        lines.append(",".join(fields))
    return "".join(line + "\n" for line in lines)


def _q(value: str) -> str:
    # dnsmasq splits option values at commas outside double quotes.
    return f'"{value}"'


def dnsmasq_opts(entries: Sequence[HostEntry], server: IPv4Address) -> str:
    """The options file: the server for every client, then each board's own options."""
    lines = [f"{OPT_TFTP_SERVER},{server}", f"{OPT_SIADDR},{server}"]
    for e in entries:
        t = f"tag:{e.tag}"
        lines.append(f"{t},{OPT_HOSTNAME},{_q(e.hostname)}")
        if e.boot_file and e.ipxe_url:
            lines.append(f"{t},tag:!{IPXE_TAG},{OPT_BOOTFILE},{_q(e.boot_file)}")
        elif e.boot_file:
            lines.append(f"{t},{OPT_BOOTFILE},{_q(e.boot_file)}")
        if e.ipxe_url:
            lines.append(f"{t},tag:{IPXE_TAG},{OPT_BOOTFILE},{_q(e.ipxe_url)}")
        if e.pxelinux_config:
            lines.append(f"{t},{OPT_PXELINUX_CONFIG},{_q(e.pxelinux_config)}")
    return "".join(line + "\n" for line in lines)


# --- exports for someone else's DHCP server --------------------------------------------------


def export_dnsmasq(entries: Sequence[HostEntry], server: IPv4Address) -> str:
    """``dhcp-host=`` and ``dhcp-option=`` lines to add to an existing dnsmasq configuration."""
    hosts = [f"dhcp-host={line}" for line in dnsmasq_hosts(entries).splitlines()]
    opts = [f"dhcp-option={line}" for line in dnsmasq_opts(entries, server).splitlines()]
    return "\n".join(["# overrided boards", *hosts, *opts]) + "\n"


def _isc_name(board: str, i: int) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "-", board)
    return f"{name}-{i}" if i else name


def export_isc(entries: Sequence[HostEntry], server: IPv4Address) -> str:
    """``host`` blocks for ISC dhcpd (dhcpd.conf(5)); one per MAC address."""
    out = ["# overrided boards"]
    for e in entries:
        for i, mac in enumerate(e.macs):
            out.append(f"host {_isc_name(e.board, i)} {{")
            out.append(f"  hardware ethernet {mac};")
            if e.ip is not None:
                out.append(f"  fixed-address {e.ip};")
            out.append(f'  option host-name "{e.hostname}";')
            out.append(f"  next-server {server};")
            out.append(f'  option tftp-server-name "{server}";')
            if e.boot_file:
                out.append(f'  filename "{e.boot_file}";')
            if e.ipxe_url:
                out.append('  if exists user-class and option user-class = "iPXE" {')
                out.append(f'    filename "{e.ipxe_url}";')
                out.append("  }")
            out.append("}")
    return "\n".join(out) + "\n"


def export_kea(entries: Sequence[HostEntry], server: IPv4Address) -> str:
    """Kea DHCPv4 ``reservations`` (JSON), one per MAC address, for a subnet's list."""
    reservations = []
    for e in entries:
        for mac in e.macs:
            r: dict[str, object] = {"hw-address": mac, "hostname": e.hostname}
            if e.ip is not None:
                r["ip-address"] = str(e.ip)
            r["next-server"] = str(server)
            options: list[dict[str, str]] = [{"name": "tftp-server-name", "data": str(server)}]
            if e.boot_file:
                r["boot-file-name"] = e.boot_file
                options.append({"name": "boot-file-name", "data": e.boot_file})
            r["option-data"] = options
            reservations.append(r)
    return json.dumps({"reservations": reservations}, indent=2) + "\n"


EXPORTS: dict[str, Callable[[Sequence[HostEntry], IPv4Address], str]] = {
    "dnsmasq": export_dnsmasq,
    "isc": export_isc,
    "kea": export_kea,
}


# --- leases ----------------------------------------------------------------------------------


class DhcpInfo(BaseModel):
    """``GET /api/dhcp``: whether DHCP is served, how, and what it handed out."""

    enabled: bool = False
    running: bool = False
    pid: int | None = None  # dnsmasq's, while it runs
    interface: str | None = None
    server: str | None = None
    subnet: str | None = None
    mode: str | None = None  # "server" or "proxy"
    range: str | None = None
    error: str | None = None
    boards: dict[str, str] = Field(default_factory=dict)  # board → boot file (or "")
    problems: dict[str, str] = Field(default_factory=dict)  # board → why it has no entry
    leases: list[Lease] = Field(default_factory=list)


def parse_leases(text: str) -> list[Lease]:
    """dnsmasq's lease file: ``<expiry> <mac> <ip> <hostname|*> <client-id|*>`` per line."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 3 or not f[0].isdigit() or ":" not in f[1]:
            continue  # the DHCPv6 "duid" line, or anything not a lease
        expiry = int(f[0])
        out.append(
            Lease(
                mac=f[1].lower(),
                ip=f[2],
                hostname=None if len(f) < 4 or f[3] == "*" else f[3],
                expires=datetime.fromtimestamp(expiry, UTC) if expiry else None,
            )
        )
    return out


# dnsmasq --log-dhcp lines: "dnsmasq-dhcp[123]: DHCPACK(veth0) 192.0.2.10 52:54:00:12:34:56 name"
# and, in proxy mode, "PXE(veth0) 52:54:00:12:34:56 proxy".
_LOG_EVENT = re.compile(
    r"(?P<kind>DHCP[A-Z]+|PXE|BOOTP)\((?P<iface>[^)]*)\)"
    r"(?: (?P<ip>\d+\.\d+\.\d+\.\d+))? (?P<mac>(?:[0-9a-f]{2}:){5}[0-9a-f]{2})\b"
)


# A --log-dhcp line about one transaction: "dnsmasq-dhcp[123]: 2910540803 …".
_TRANSACTION = re.compile(r"\]: \d+ ")


@dataclass
class Seen:
    """Leases learnt from the lease file and dnsmasq's log; at most ``limit`` clients, the ones
    heard from last (any client on the link can send DHCP with made-up MACs)."""

    leases: dict[str, Lease] = field(default_factory=dict)  # by MAC, oldest news first
    limit: int = 4096

    def _keep(self, lease: Lease) -> None:
        self.leases.pop(lease.mac, None)
        self.leases[lease.mac] = lease
        while len(self.leases) > self.limit:
            del self.leases[next(iter(self.leases))]

    def log_line(self, line: str, now: float | None = None) -> None:
        """Note the client of one dnsmasq log line, if it names one."""
        m = _LOG_EVENT.search(line)
        if m is None:
            return
        mac = m.group("mac")
        seen = datetime.fromtimestamp(time.time() if now is None else now, UTC)
        lease = self.leases.get(mac) or Lease(mac=mac)
        update: dict[str, object] = {"last_seen": seen}
        if m.group("kind") == "DHCPACK" and m.group("ip"):
            update["ip"] = m.group("ip")
        self._keep(lease.model_copy(update=update))

    def merge_file(self, leases: Iterable[Lease]) -> None:
        """Add what the lease file holds (addresses, expiry) to what the log showed."""
        for lease in leases:
            old = self.leases.get(lease.mac)
            if old is None:
                if len(self.leases) < self.limit:
                    self.leases[lease.mac] = lease
            else:
                self.leases[lease.mac] = old.model_copy(
                    update={"ip": old.ip or lease.ip, "expires": lease.expires}
                )

    def of(self, boards: Iterable[Board]) -> list[Lease]:
        """Every lease, each with the board that has its MAC (if any), newest first."""
        by_mac = {mac: b for b in boards for mac in b.mac}
        out = []
        for lease in self.leases.values():
            b = by_mac.get(lease.mac)
            if b is not None:
                lease = lease.model_copy(update={"board": b.name, "hostname": b.hostname})
            out.append(lease)
        far = datetime.min.replace(tzinfo=UTC)
        return sorted(out, key=lambda x: x.last_seen or far, reverse=True)


# --- the interface ---------------------------------------------------------------------------

_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B


def interface_address(name: str) -> IPv4Interface:
    """The first IPv4 address of interface ``name`` with its prefix; ``DhcpError`` if none."""
    if not name or len(name) >= 16 or "/" in name or any(c.isspace() for c in name):
        raise DhcpError(f"--dhcp {name!r}: not a network interface name")
    req = struct.pack("256s", name.encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            addr = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)[20:24]
            mask = fcntl.ioctl(s.fileno(), _SIOCGIFNETMASK, req)[20:24]
        except OSError as err:
            if err.errno == 19:  # ENODEV
                raise DhcpError(f"--dhcp {name}: no such network interface") from None
            raise DhcpError(f"--dhcp {name}: the interface has no IPv4 address") from None
    return IPv4Interface(f"{socket.inet_ntoa(addr)}/{socket.inet_ntoa(mask)}")


def find_program(path: str | None = None) -> str:
    """The dnsmasq executable on ``PATH``; ``DhcpError`` naming the package to install if
    there is none."""
    search = path if path is not None else os.environ.get("PATH", "")
    found = shutil.which(PROGRAM, path=search)
    if found is None:
        raise DhcpError(
            f"--dhcp needs {PROGRAM}, which is not on PATH: apt-get install {PACKAGE} "
            "(it installs /usr/sbin/dnsmasq)"
        )
    return found


# --- the running dnsmasq ---------------------------------------------------------------------


class Dnsmasq:
    """dnsmasq as a child of ``overrided serve``: configured from the boards of each snapshot,
    restarted when their entries change or it exits, stopped with the service.

    Nothing here stops the service: a failure is logged and shown in ``info()``, and TFTP and
    HTTP go on serving.
    """

    def __init__(
        self,
        settings: DhcpSettings,
        folder: Path,
        boards: Callable[[], Sequence[Board]],
        *,
        http_base: Callable[[], str | None] = lambda: None,
        tftp_port: int = 69,
    ) -> None:
        self.settings = settings
        self.paths = Paths(folder)
        self._boards = boards
        self._http_base = http_base
        self._tftp_port = tftp_port
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.iface: IPv4Interface | None = None
        self.error: str | None = None
        self.entries: list[HostEntry] = []
        self.problems: dict[str, str] = {}
        self.seen = Seen()
        self._last_boards: Sequence[Board] | None = None
        self._tail: list[str] = []  # dnsmasq's last lines, for the reason it exited
        self._reader: asyncio.Task[None] | None = None
        self._up = False  # dnsmasq came through its start and has not exited since

    # -- what the API shows --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while dnsmasq runs, once it has come through its start."""
        return self._up and self._proc is not None and self._proc.returncode is None

    def leases(self) -> list[Lease]:
        """Every client seen, with its board."""
        with contextlib.suppress(OSError):
            self.seen.merge_file(parse_leases(self.paths.leases.read_text()))
        return self.seen.of(self._last_boards or ())

    def with_leases(self, boards: list[BoardInfo]) -> list[BoardInfo]:
        """``boards`` with each one's leases (``/api/boards``)."""
        by_board: dict[str, list[Lease]] = {}
        for lease in self.leases():
            if lease.board is not None:
                by_board.setdefault(lease.board, []).append(lease)
        return [
            b.model_copy(update={"leases": by_board[b.name]}) if b.name in by_board else b
            for b in boards
        ]

    def info(self) -> DhcpInfo:
        """``/api/dhcp``."""
        s = self.settings
        return DhcpInfo(
            enabled=True,
            running=self.running,
            pid=self._proc.pid if self._proc is not None and self.running else None,
            interface=s.interface,
            server=str(self.iface.ip) if self.iface else None,
            subnet=str(self.iface.network) if self.iface else None,
            mode="proxy" if s.proxy else "server",
            range=f"{s.range[0]},{s.range[1]}" if s.range else None,
            error=self.error,
            boards={e.board: e.boot_file or e.pxelinux_config or "" for e in self.entries},
            problems=dict(self.problems),
            leases=self.leases(),
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Write the configuration and start dnsmasq; on failure log the reason, keep it for
        ``info()``, and try again later (an interface may come up later, a USB adapter be
        plugged in)."""
        try:
            await self._launch()
        except DhcpError as err:
            self._fail(str(err))
        self._task = asyncio.create_task(self._supervise(), name="dnsmasq")

    async def _launch(self) -> None:
        self.iface = interface_address(self.settings.interface)
        if self._tftp_port != 69:
            log.warning(
                "dhcp: TFTP listens on port %d; boards' firmware asks port 69", self._tftp_port
            )
        program = find_program()
        self._write_boards()
        await self._check(program)
        await self._spawn(program)

    def _fail(self, reason: str) -> None:
        if reason != self.error:  # a retry that fails the same way is not news
            log.error("dhcp: %s; TFTP and HTTP go on serving", reason)
        self.error = reason

    async def _check(self, program: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            program,
            "--test",
            f"--conf-file={self.paths.conf}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            text = " ".join(out.decode(errors="replace").split())
            raise DhcpError(f"{PROGRAM} refuses its configuration {self.paths.conf}: {text}")

    async def _spawn(self, program: str) -> None:
        self._tail = []
        self._up = False
        self._proc = await asyncio.create_subprocess_exec(
            program,
            "--keep-in-foreground",
            "--log-facility=-",  # to stderr, which we read
            "--pid-file",  # none
            f"--conf-file={self.paths.conf}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        # dnsmasq reports a configuration it cannot serve (interface gone, port 67 taken) by
        # exiting within moments: wait for that, so start() reports it.
        reader = asyncio.create_task(self._read(self._proc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._proc.wait()), 0.5)
        if self._proc.returncode is not None:
            await reader
            raise DhcpError(self._exit_reason(self._proc.returncode))
        self._reader = reader
        self.error = None
        self._up = True
        assert self.iface is not None
        log.info(
            "dhcp: %s (pid %d) serves %s on %s as %s, %d boards",
            PROGRAM,
            self._proc.pid,
            "proxy DHCP" if self.settings.proxy else "DHCP",
            self.settings.interface,
            self.iface,
            len(self.entries),
        )

    def _exit_reason(self, status: int) -> str:
        said = "; ".join([t for t in self._tail if t.strip()][-3:]) or "nothing"
        if status < 0:
            with contextlib.suppress(ValueError):
                return f"{PROGRAM} was killed by {signal.Signals(-status).name}: {said}"
        return f"{PROGRAM} exited with status {status}: {said}"

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            self._tail = [*self._tail[-9:], line.removeprefix("dnsmasq: ")]
            self.seen.log_line(line)
            # One line per DHCP message and dnsmasq's own news; the options of each answer
            # (--log-dhcp: "<xid> sent size: …", "<xid> tags: …") only with --verbose.
            detail = _TRANSACTION.search(line) and not _LOG_EVENT.search(line)
            log.log(logging.DEBUG if detail else logging.INFO, "dhcp: %s", line)

    async def _supervise(self) -> None:
        """Follow board changes while dnsmasq runs; start it again when it is not running."""
        delays = iter(RESTART_DELAYS)
        while not self._stop.is_set():
            proc = self._proc
            if proc is not None and proc.returncode is None:
                began = time.monotonic()
                waiter = asyncio.create_task(proc.wait())
                changed = asyncio.create_task(self._boards_changed())
                done, _ = await asyncio.wait({waiter, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if waiter not in done:
                    waiter.cancel()
                    if proc.returncode is None:
                        await self._reload(proc)
                        continue
                if self._stop.is_set():
                    return
                if self._reader is not None:
                    await self._reader
                self._fail(self._exit_reason(proc.returncode or 0))
                if time.monotonic() - began > RESTART_DELAYS[-1]:
                    delays = iter(RESTART_DELAYS)  # it ran a good while: start over quickly
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), next(delays, RESTART_DELAYS[-1]))
            if self._stop.is_set():
                return
            try:
                await self._launch()
            except DhcpError as err:
                self._fail(str(err))

    async def _boards_changed(self) -> None:
        """Return once the board files' entries differ from those dnsmasq was started with
        (the files are rewritten by then)."""
        # The service swaps its snapshot whole: a new boards tuple is a board-file change.
        # Comparing one reference twice a second costs nothing.
        while not self._stop.is_set():
            if self._boards() is not self._last_boards:
                try:
                    if self._write_boards():
                        return
                except DhcpError as err:
                    self._fail(str(err))  # dnsmasq serves on with the entries it has
            await asyncio.sleep(0.5)

    async def _reload(self, proc: asyncio.subprocess.Process) -> None:
        """Make dnsmasq serve the rewritten hosts and options files.

        A restart, not SIGHUP: dnsmasq 2.90 re-reads them on SIGHUP, but aborts (SIGABRT) when
        a host line that carries a tag (``set:``, which each board's options need) belongs to a
        client it has a lease for; seen here with Debian's 2.90. A restart takes well under a
        second, and the leases live on in the lease file.
        """
        log.info("dhcp: board entries changed (%d boards): restarting dnsmasq", len(self.entries))
        await self._terminate(proc)
        try:
            await self._launch()
        except DhcpError as err:
            self._fail(str(err))

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            await self._reader

    def _write_boards(self) -> bool:
        """Regenerate dnsmasq's files from the boards; True if any changed. ``DhcpError`` if
        they cannot be written."""
        try:
            return self._write_files()
        except OSError as err:
            raise DhcpError(f"cannot write dnsmasq's files in {self.paths.folder}: {err}") from None

    def _write_files(self) -> bool:
        assert self.iface is not None
        boards = self._boards()
        self._last_boards = boards
        entries, problems = host_entries(
            boards,
            self.iface.ip,
            http_base=self._http_base(),
            network=self.iface.network,
            has_range=self.settings.range is not None or self.settings.proxy,
        )
        for board, why in problems.items():
            if self.problems.get(board) != why:
                log.error("dhcp: board %s: %s", board, why)
        self.entries, self.problems = entries, problems
        changed = False
        self.paths.folder.mkdir(parents=True, exist_ok=True)
        user = pwd.getpwuid(os.getuid()).pw_name  # dnsmasq keeps our user: it reads our files
        conf = dnsmasq_conf(self.settings, self.iface, self.paths, user=user, entries=entries)
        for path, text in (
            (self.paths.hosts, dnsmasq_hosts(entries)),
            (self.paths.opts, dnsmasq_opts(entries, self.iface.ip)),
            (self.paths.conf, conf),
        ):
            with contextlib.suppress(OSError):
                if path.read_text() == text:
                    continue
            # Written aside and renamed: dnsmasq never reads half a file.
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
            changed = True
        return changed

    async def close(self) -> None:
        """Stop dnsmasq (SIGTERM, then SIGKILL after 5 s) and the supervision."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._proc is not None:
            await self._terminate(self._proc)
        log.info("dhcp: %s stopped", PROGRAM)
