"""A small, fast TFTP read client that speaks windowsize (RFC 7440), for the benchmark.

curl and tftp-hpa cannot ask for a window and atftp is slow at high packet rates, so the
benchmark drives windows with this. It follows RFC 7440's receiver rules: ACK the last block
of each window (or the final block), and on a gap or a timeout ACK the last block received in
order so the sender restarts from there.

    python bench/tftpclient.py HOST PORT NAME [--blksize N] [--windowsize N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
import zlib
from dataclasses import asdict, dataclass


@dataclass
class Fetched:
    """What one read produced."""

    size: int
    crc32: int
    seconds: float
    acks_resent: int
    options: dict[str, str]


class FetchError(RuntimeError):
    """The server answered with ERROR or went silent."""


def _request(name: str, options: dict[str, str]) -> bytes:
    parts = [name, "octet"] + [x for kv in options.items() for x in kv]
    return b"\x00\x01" + b"".join(p.encode() + b"\x00" for p in parts)


def _oack(packet: bytes) -> dict[str, str]:
    fields = packet[2:].split(b"\x00")[:-1]
    return {
        fields[i].decode().lower(): fields[i + 1].decode() for i in range(0, len(fields) - 1, 2)
    }


def fetch(
    host: str,
    port: int,
    name: str,
    *,
    blksize: int = 512,
    windowsize: int = 1,
    tsize: bool = False,
    timeout: float = 1.0,
    retries: int = 10,
    out: str | None = None,
    turnaround: float = 0.0,
) -> Fetched:
    """Read ``name`` and return its size, CRC-32 and the time taken (request to last ACK).

    ``turnaround`` seconds are spent before each ACK: a board's round trip (link latency plus a
    bootloader polling its NIC) that loopback lacks. This kernel has no netem to add real
    latency; the cost lands once per round trip either way, which is what a window amortises.
    """
    options: dict[str, str] = {}
    if blksize != 512:
        options["blksize"] = str(blksize)
    if windowsize > 1:
        options["windowsize"] = str(windowsize)
    if tsize:
        options["tsize"] = "0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # Room for several windows so a burst is not dropped by our own receive buffer.
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (root)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.settimeout(timeout)
    sink = open(out, "wb") if out else None  # noqa: SIM115 - closed in finally
    buf = bytearray(blksize + 4 + 64)
    view = memoryview(buf)
    crc, size, resent = 0, 0, 0
    started = time.perf_counter()
    try:
        request = _request(name, options)
        sock.sendto(request, (host, port))
        peer = None
        granted: dict[str, str] = {}
        expected, in_window, tries = 1, 0, 0
        last_ack = b""
        while True:
            try:
                n, addr = sock.recvfrom_into(buf)
            except TimeoutError:
                tries += 1
                if tries > retries:
                    raise FetchError(f"timed out after block {expected - 1}") from None
                if peer is None:
                    sock.sendto(request, (host, port))
                else:
                    sock.sendto(last_ack, peer)
                    resent += 1
                in_window = 0
                continue
            if peer is None:
                peer = addr
            elif addr != peer:
                continue
            op = buf[1]
            if op == 6 and expected == 1 and not granted:  # OACK
                granted = _oack(bytes(view[:n]))
                blksize = int(granted.get("blksize", 512))
                windowsize = int(granted.get("windowsize", 1))
                last_ack = b"\x00\x04\x00\x00"
                if turnaround:
                    time.sleep(turnaround)
                sock.sendto(last_ack, peer)
                continue
            if op == 5:
                code = struct.unpack("!H", view[2:4])[0]
                message = bytes(view[4:n]).split(b"\x00")[0].decode("utf-8", "replace")
                raise FetchError(f"ERROR {code}: {message}")
            if op != 3:
                continue
            if not granted and expected == 1 and options:
                blksize, windowsize = 512, 1  # options ignored: plain RFC 1350
            block = (buf[2] << 8) | buf[3]
            if block != expected & 0xFFFF:
                # A gap (RFC 7440 section 4): ACK what arrived in order, once per window.
                if in_window:
                    sock.sendto(last_ack, peer)
                    resent += 1
                    in_window = 0
                continue
            tries = 0
            payload = view[4:n]
            crc = zlib.crc32(payload, crc)
            size += n - 4
            if sink:
                sink.write(payload)
            in_window += 1
            last = n - 4 < blksize
            if last or in_window >= windowsize:
                last_ack = struct.pack("!HH", 4, expected & 0xFFFF)
                if turnaround:
                    time.sleep(turnaround)
                sock.sendto(last_ack, peer)
                in_window = 0
            expected += 1
            if last:
                break
    finally:
        sock.close()
        if sink:
            sink.close()
    return Fetched(size, crc, time.perf_counter() - started, resent, granted)


def main() -> int:
    """Command line: fetch one file and print a JSON line with the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("name")
    parser.add_argument("--blksize", type=int, default=512)
    parser.add_argument("--windowsize", type=int, default=1)
    parser.add_argument("--tsize", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--turnaround-ms", type=float, default=0.0)
    args = parser.parse_args()
    try:
        got = fetch(
            args.host,
            args.port,
            args.name,
            blksize=args.blksize,
            windowsize=args.windowsize,
            tsize=args.tsize,
            out=args.out,
            turnaround=args.turnaround_ms / 1000,
        )
    except (FetchError, OSError) as err:
        print(f"tftpclient: {err}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(got)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
