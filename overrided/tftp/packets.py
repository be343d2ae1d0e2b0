"""TFTP packets: pure parsing and encoding, no sockets (RFC 1350, 2347, 2348, 2349, 7440).

Everything here is a small function over bytes so the rules can be tested with tables of
packets; the server (``server.py``) and each transfer (``transfer.py``) only call into it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum


class Opcode(IntEnum):
    """RFC 1350 section 5 opcodes, plus OACK from RFC 2347."""

    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(IntEnum):
    """RFC 1350 appendix error codes, plus 8 from RFC 2347."""

    UNDEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


# RFC 2347 section "Packet Formats": a request with options must not exceed 512 octets.
MAX_REQUEST = 512
# RFC 1350: the block size without the blksize option.
DEFAULT_BLKSIZE = 512
# RFC 2348: valid blksize values are 8 to 65464 octets inclusive.
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464
# RFC 7440 section 3: windowsize is 1 to 65535 blocks.
MAX_WINDOWSIZE = 65535
# RFC 2349 section "Timeout Interval Option": 1 to 255 seconds.
MIN_TIMEOUT = 1
MAX_TIMEOUT = 255

# Every DATA header, built once: sending a block costs no struct.pack.
DATA_HEADERS: tuple[bytes, ...] = tuple(struct.pack("!HH", Opcode.DATA, n) for n in range(65536))


class PacketError(ValueError):
    """A malformed packet; ``str()`` says what is wrong and where (offset or field)."""


@dataclass(frozen=True)
class Request:
    """A parsed RRQ or WRQ (RFC 1350 section 5, options per RFC 2347)."""

    opcode: Opcode
    filename: str
    mode: str  # lower-cased: "octet" or "netascii" ("mail" is refused later)
    options: dict[str, str] = field(default_factory=dict)  # lower-cased names, first one wins


@dataclass(frozen=True)
class Negotiated:
    """What the server grants: the values it will use and the OACK options to send."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float | None = None  # seconds asked by the client (RFC 2349), None if not asked
    tsize: bool = False  # whether to report the size (RFC 2349)
    oack: dict[str, str] = field(default_factory=dict)  # in the client's order


def opcode_of(packet: bytes) -> int:
    """The opcode of a packet, or -1 when it is shorter than two bytes."""
    if len(packet) < 2:
        return -1
    return (packet[0] << 8) | packet[1]


def parse_request(packet: bytes) -> Request:
    """Parse an RRQ/WRQ: opcode, NUL-terminated filename and mode, then name/value pairs.

    Raises ``PacketError`` naming the offset of the problem. Option names are matched without
    case (RFC 2347: "case in-sensitive"); a repeated option keeps its first value.
    """
    if len(packet) > MAX_REQUEST:
        raise PacketError(f"request of {len(packet)} bytes exceeds {MAX_REQUEST} (RFC 2347)")
    op = opcode_of(packet)
    if op not in (Opcode.RRQ, Opcode.WRQ):
        raise PacketError(f"opcode {op} at offset 0 is not a request")
    fields = packet[2:].split(b"\x00")
    # A well-formed request ends with NUL, so the split leaves one empty tail element.
    if len(fields) < 3 or fields[-1] != b"":
        where = "filename" if len(fields) < 2 else "last field"
        raise PacketError(f"request has no NUL after the {where} (offset {len(packet)})")
    fields.pop()
    raw_name, raw_mode, *rest = fields
    if not raw_name:
        raise PacketError("empty filename at offset 2")
    try:
        filename = raw_name.decode("utf-8")
        mode = raw_mode.decode("ascii").lower()
        texts = [f.decode("utf-8") for f in rest]
    except UnicodeDecodeError as err:
        raise PacketError(f"request field is not UTF-8 text: {err.reason}") from None
    if not mode:
        raise PacketError(f"empty mode at offset {3 + len(raw_name)}")
    if len(texts) % 2:
        raise PacketError(f"option {texts[-1]!r} has no value")
    options: dict[str, str] = {}
    for name, value in zip(texts[::2], texts[1::2], strict=True):
        options.setdefault(name.lower(), value)
    return Request(Opcode(op), filename, mode, options)


def _integer(value: str) -> int | None:
    """A plain decimal option value; None for anything else (signs, spaces, hex, empty)."""
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        return None
    return int(value)


def negotiate(
    options: dict[str, str], size: int | None, *, max_blksize: int, max_windowsize: int
) -> Negotiated:
    """Decide the granted options for a read request.

    RFC 2347: unknown options are ignored and left out of the OACK, and the OACK carries only
    options the client asked for. An option whose value is unusable (not a number, out of the
    RFC's range) is ignored the same way rather than failing the request. A value above the
    server's cap is lowered to the cap, never raised: barebox drops an OACK that grants more
    than it asked for.
    """
    blksize, windowsize, timeout, tsize = DEFAULT_BLKSIZE, 1, None, False
    oack: dict[str, str] = {}
    for name, value in options.items():
        number = _integer(value)
        if name == "blksize":
            # RFC 2348: 8..65464; the server may answer with a smaller value.
            if number is None or number < MIN_BLKSIZE:
                continue
            blksize = min(number, max_blksize, MAX_BLKSIZE)
            oack[name] = str(blksize)
        elif name == "windowsize":
            # RFC 7440 section 3: 1..65535; the server may answer with a smaller value.
            if number is None or not 1 <= number <= MAX_WINDOWSIZE:
                continue
            windowsize = min(number, max_windowsize)
            oack[name] = str(windowsize)
        elif name == "timeout":
            # RFC 2349: 1..255 seconds; the server must echo the value or ignore the option.
            if number is None or not MIN_TIMEOUT <= number <= MAX_TIMEOUT:
                continue
            timeout = float(number)
            oack[name] = str(number)
        elif name == "tsize":
            # RFC 2349: a reading client sends 0; the server answers with the size in octets.
            # An empty file's size is left out (the option ignored): curl rejects "tsize 0".
            if number is None or not size:
                continue
            tsize = True
            oack[name] = str(size)
    return Negotiated(blksize, windowsize, timeout, tsize, oack)


def encode_oack(options: dict[str, str]) -> bytes:
    """An OACK packet (RFC 2347): opcode 6 then name/value pairs, each NUL-terminated."""
    body = b"".join(f"{k}\x00{v}\x00".encode() for k, v in options.items())
    return struct.pack("!H", Opcode.OACK) + body


def encode_error(code: ErrorCode, message: str) -> bytes:
    """An ERROR packet (RFC 1350): code and a NUL-terminated message (kept short)."""
    text = message.encode("utf-8", "replace")[:200]
    return struct.pack("!HH", Opcode.ERROR, code) + text + b"\x00"


def encode_data(block: int, payload: bytes) -> bytes:
    """A DATA packet for a (wire) block number, which wraps past 65535."""
    return DATA_HEADERS[block & 0xFFFF] + payload


def encode_ack(block: int) -> bytes:
    """An ACK packet for a (wire) block number."""
    return struct.pack("!HH", Opcode.ACK, block & 0xFFFF)


def encode_request(
    opcode: Opcode, filename: str, mode: str = "octet", options: dict[str, str] | None = None
) -> bytes:
    """An RRQ/WRQ packet with options (for clients and tests)."""
    parts = [filename, mode]
    for k, v in (options or {}).items():
        parts += [k, v]
    return struct.pack("!H", opcode) + b"".join(p.encode() + b"\x00" for p in parts)


def parse_error(packet: bytes) -> tuple[int, str]:
    """Code and message of an ERROR packet; a missing NUL or bad text is tolerated."""
    code = (packet[2] << 8) | packet[3] if len(packet) >= 4 else 0
    message = packet[4:].split(b"\x00", 1)[0].decode("utf-8", "replace")
    return code, message


def parse_oack(packet: bytes) -> dict[str, str]:
    """The options of an OACK packet (for clients and tests)."""
    fields = packet[2:].split(b"\x00")
    if fields and fields[-1] == b"":
        fields.pop()
    texts = [f.decode("utf-8", "replace") for f in fields]
    if len(texts) % 2:
        raise PacketError(f"OACK option {texts[-1]!r} has no value")
    return {k.lower(): v for k, v in zip(texts[::2], texts[1::2], strict=True)}


def block_count(size: int, blksize: int) -> int:
    """Number of DATA blocks for ``size`` bytes: the last one is short, possibly empty."""
    return size // blksize + 1


def netascii_encode(data: bytes) -> bytes:
    """Translate local (Unix) text to netascii (RFC 1350 via RFC 764): LF → CR LF, CR → CR NUL.

    Each byte translates on its own, so chunks can be translated independently.
    """
    return data.replace(b"\r", b"\r\x00").replace(b"\n", b"\r\n")
