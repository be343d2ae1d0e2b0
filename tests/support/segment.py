"""A layer-2 segment for DHCP tests, built of network namespaces the test owns.

Two namespaces: the *server* side, where ``overrided serve --dhcp eth0`` runs with
``192.0.2.4/24`` on ``eth0``, and the *lab* side, holding the bridge ``br0`` that ``eth0``'s veth
peer is plugged into. Boards join the bridge as QEMU ``-netdev tap`` devices (``tap_args``),
test clients as veth ends in the lab namespace (``probe_iface``). Only documentation addresses
(RFC 5737) are used; namespace names carry the pid (``tests/support/netns.py``), interface
names live inside them, so parallel runs never meet. ``close`` deletes both namespaces, which
removes every interface in them.
"""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any

from tests.support.netns import Netns
from tests.support.serve import REPO

SERVER_IP = "192.0.2.4"
PREFIX = 24
SERVER_IFACE = "eth0"


class Segment:
    """The server namespace, the lab namespace and the bridge between them."""

    def __init__(self) -> None:
        self.server = Netns(prefix="ovds")
        self.lab = Netns(prefix="ovdl")
        self._taps = itertools.count()
        self._probes = itertools.count()

    def __enter__(self) -> Segment:
        try:
            self.server.create()
            self.lab.create()
            self.lab.ip("link", "add", "br0", "type", "bridge")
            self.lab.ip("link", "set", "br0", "up")
            self.lab.ip(
                "link", "add", "vsrv", "type", "veth", "peer", "name", SERVER_IFACE,
                "netns", self.server.name,
            )  # fmt: skip
            self.lab.ip("link", "set", "vsrv", "master", "br0", "up")
            self.server.ip("addr", "add", f"{SERVER_IP}/{PREFIX}", "dev", SERVER_IFACE)
            self.server.ip("link", "set", SERVER_IFACE, "up")
        except Exception:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete both namespaces (and with them every interface)."""
        self.lab.close()
        self.server.close()

    def tap(self) -> str:
        """A new tap device on the bridge, for one QEMU's ``-netdev tap,ifname=…``."""
        name = f"tap{next(self._taps)}"
        self.lab.ip("tuntap", "add", "dev", name, "mode", "tap")
        self.lab.ip("link", "set", name, "master", "br0", "up")
        return name

    def tap_args(self, mac: str, device: str = "virtio-net-device") -> list[str]:
        """QEMU options for a NIC with ``mac`` on a new tap of the bridge."""
        name = self.tap()
        return [
            "-netdev",
            f"tap,id=n0,ifname={name},script=no,downscript=no",
            "-device",
            f"{device},netdev=n0,mac={mac}",
        ]

    def probe_iface(self) -> str:
        """A new veth end on the bridge, without address, for ``dhcp_probe`` or ``udhcpc``."""
        n = next(self._probes)
        self.lab.ip("link", "add", f"p{n}", "type", "veth", "peer", "name", f"pb{n}")
        self.lab.ip("link", "set", f"pb{n}", "master", "br0", "up")
        self.lab.ip("link", "set", f"p{n}", "up")
        return f"p{n}"

    def probe(
        self, iface: str, mac: str, *, vendor: str | None = None, arch: int | None = None,
        request: bool = False, timeout: float = 10.0,
    ) -> dict[str, Any]:  # fmt: skip
        """Run ``tests/support/dhcp_probe.py`` on ``iface``: ``{"offer": …, "ack": …}``."""
        argv = [sys.executable, "-m", "tests.support.dhcp_probe", "--iface", iface, "--mac", mac]
        argv += ["--timeout", str(timeout)]
        if vendor:
            argv += ["--vendor", vendor]
        if arch is not None:
            argv += ["--arch", str(arch)]
        if request:
            argv.append("--request")
        out = self.lab.run(argv, cwd=REPO, timeout=timeout * 2 + 30)
        result: dict[str, Any] = json.loads(out.stdout)
        return result
