"""A DHCP client for tests: one DISCOVER (and REQUEST) on an interface, the answers as JSON.

It stands for a board's firmware where a test needs to look at every field of an answer or
to send what no packaged client sends at will (a chosen ``chaddr``; option 60 ``PXEClient``
for a proxy DHCP server). The server it talks to is always the real one. Run inside a
namespace::

    ip netns exec NS python -m tests.support.dhcp_probe --iface p0 --mac 52:54:00:00:00:01 \
        [--vendor PXEClient] [--request]

prints ``{"offer": {...} | null, "ack": {...} | null}``; each answer holds ``yiaddr``,
``siaddr``, ``file`` and ``options`` (number → text, or hex when not printable).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from typing import Any

MAGIC = b"\x63\x82\x53\x63"  # RFC 2131 section 3: the options' magic cookie
DISCOVER, OFFER, REQUEST, ACK = 1, 2, 3, 5


def packet(
    mac: str,
    xid: int,
    kind: int,
    *,
    vendor: str | None,
    arch: int | None = None,
    want: str | None = None,
    server: str | None = None,
) -> bytes:
    """A BOOTREQUEST (RFC 2131 section 2) with the broadcast flag, so answers come broadcast."""
    chaddr = bytes.fromhex(mac.replace(":", "")).ljust(16, b"\0")
    head = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1,
        1,
        6,
        0,
        xid,
        0,
        0x8000,
        b"\0" * 4,
        b"\0" * 4,
        b"\0" * 4,
        b"\0" * 4,
        chaddr,
        b"",
        b"",
    )
    opts = bytes([53, 1, kind])
    if vendor:
        opts += bytes([60, len(vendor)]) + vendor.encode()
    if arch is not None:
        # RFC 4578: client system architecture (93), network interface (94), machine UUID (97),
        # as PXE firmware sends them.
        opts += bytes([93, 2]) + arch.to_bytes(2, "big") + bytes([94, 3, 1, 3, 0])
        opts += bytes([97, 17, 0]) + bytes.fromhex(mac.replace(":", "")).rjust(16, b"\0")
    if want:
        opts += bytes([50, 4]) + socket.inet_aton(want)
    if server:
        opts += bytes([54, 4]) + socket.inet_aton(server)
    opts += bytes([55, 6, 1, 3, 12, 66, 67, 209])  # parameter request list
    return head + MAGIC + opts + b"\xff"


def parse(data: bytes) -> dict[str, Any] | None:
    """The fields of a BOOTREPLY, or None if it is not one."""
    if len(data) < 240 or data[0] != 2 or data[236:240] != MAGIC:
        return None
    xid = struct.unpack("!I", data[4:8])[0]
    out: dict[str, Any] = {
        "xid": xid,
        "yiaddr": socket.inet_ntoa(data[16:20]),
        "siaddr": socket.inet_ntoa(data[20:24]),
        "chaddr": data[28:34].hex(":"),
        "file": data[108:236].split(b"\0", 1)[0].decode(errors="replace"),
        "options": {},
    }
    i = 240
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        code, n = data[i], data[i + 1]
        value = data[i + 2 : i + 2 + n]
        text = value.rstrip(b"\0").decode("ascii", errors="replace")
        printable = text.isprintable() and "\ufffd" not in text and text
        out["options"][str(code)] = text if printable else value.hex()
        i += 2 + n
    if "54" in out["options"] and len(bytes.fromhex(out["options"]["54"])) == 4:
        out["server_id"] = socket.inet_ntoa(bytes.fromhex(out["options"]["54"]))
    if "53" in out["options"]:
        out["type"] = int(out["options"]["53"], 16)
    return out


def exchange(
    sock: socket.socket, mac: str, xid: int, msg: bytes, want: int, timeout: float
) -> dict[str, Any] | None:
    """Send ``msg`` (again each second) until an answer of type ``want`` comes; None if not."""
    deadline = time.monotonic() + timeout
    sent = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() - sent > 1.0:
            sock.sendto(msg, ("255.255.255.255", 67))
            sent = time.monotonic()
        sock.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        reply = parse(data)
        if reply and reply["xid"] == xid and reply["chaddr"] == mac and reply.get("type") == want:
            return reply
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one exchange and print the answers as JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--iface", required=True)
    p.add_argument("--mac", required=True)
    p.add_argument("--vendor")
    p.add_argument("--arch", type=int, help="option 93, e.g. 11 (ARM64 UEFI), 22 (ARM64 U-Boot)")
    p.add_argument("--request", action="store_true", help="also REQUEST the offered address")
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    mac = args.mac.lower()
    xid = int.from_bytes(os.urandom(4), "big")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
        s.bind(("0.0.0.0", 68))
        offer = exchange(
            s,
            mac,
            xid,
            packet(mac, xid, DISCOVER, vendor=args.vendor, arch=args.arch),
            OFFER,
            args.timeout,
        )
        ack = None
        if offer is not None and args.request:
            req = packet(
                mac,
                xid,
                REQUEST,
                vendor=args.vendor,
                arch=args.arch,
                want=offer["yiaddr"],
                server=offer.get("server_id"),
            )
            ack = exchange(s, mac, xid, req, ACK, args.timeout)
    json.dump({"offer": offer, "ack": ack}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
