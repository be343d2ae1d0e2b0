"""TFTP packet code under fuzzing: any datagram is a `PacketError` at worst, requests survive
encoding and parsing unchanged, and negotiation never grants more than a client asked.

The rules checked are the ones overrided/tftp/packets.py cites: RFC 1350 (packets), RFC 2347
(options: case-insensitive names, OACK only with options asked for, 512-octet requests),
RFC 2348 (blksize 8..65464, the server may lower it), RFC 2349 (timeout echoed or ignored,
tsize answered with the size), RFC 7440 (windowsize 1..65535, the server may lower it).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overrided.tftp.packets import (
    DEFAULT_BLKSIZE,
    MAX_BLKSIZE,
    MAX_REQUEST,
    MAX_TIMEOUT,
    MAX_WINDOWSIZE,
    MIN_BLKSIZE,
    MIN_TIMEOUT,
    ErrorCode,
    Opcode,
    PacketError,
    block_count,
    encode_ack,
    encode_data,
    encode_error,
    encode_oack,
    encode_request,
    negotiate,
    netascii_encode,
    opcode_of,
    parse_error,
    parse_oack,
    parse_request,
)
from tests.support.fuzz import FUZZ, only

pytestmark = pytest.mark.fuzz

# Text that can travel in a NUL-terminated field: no NUL, no lone surrogates.
_field = st.text(st.characters(codec="utf-8", exclude_characters="\0"))
_ascii_field = st.text(st.characters(min_codepoint=1, max_codepoint=127))
OPTION_NAMES = ("blksize", "BlkSize", "windowsize", "timeout", "tsize", "multicast", "x-vendor")
_numbers = st.integers(-10, 1 << 70).map(str) | st.sampled_from(
    ["0", "7", "8", "512", "1468", "65464", "65465", "65535", "65536", "255", "256", "", " 8",
     "+8", "0x10", "١٢", "²", "08", "1e3", "9" * 25]
)  # fmt: skip
_values = _numbers | _field


def _packets() -> st.SearchStrategy[bytes]:
    """Arbitrary datagrams, and requests (most well-formed) that may then be cut short or
    have a stray field appended."""
    text = _field.map(str.encode)
    odd = text | st.binary(max_size=40).map(lambda b: b.replace(b"\0", b""))
    mode = st.sampled_from([b"octet", b"NetAscii", b"mail", b""]) | odd
    options = st.lists(
        st.tuples(
            st.sampled_from([o.encode() for o in OPTION_NAMES]) | odd,
            _numbers.map(str.encode) | odd,
        ),
        max_size=4,
    )
    request = st.builds(
        lambda op, name, mode, opts, tail: (
            op
            + b"".join(f + b"\0" for f in (name, mode, *(x for pair in opts for x in pair)))
            + tail
        ),
        st.sampled_from([b"\x00\x01", b"\x00\x02", b"\x00\x01", b"\x00\x05", b"\x01\x01"]),
        st.sampled_from([b"f", b"/a/b"]) | odd,
        mode,
        options,
        st.sampled_from([b"", b"", b"", b"x", b"x\0"]),
    )
    cut = st.builds(lambda p, n: p[:n], request, st.integers(0, 600))
    # one_of draws its branches evenly: requests get most of the examples.
    return st.one_of(request, request, request, cut, st.binary(max_size=700))


@FUZZ
@given(packet=_packets())
def test_any_datagram_is_at_worst_a_packet_error(packet: bytes) -> None:
    assert -1 <= opcode_of(packet) <= 0xFFFF
    with only(PacketError, label="parse_request"):
        request = parse_request(packet)
        assert request.opcode in (Opcode.RRQ, Opcode.WRQ)
        assert request.filename and request.mode == request.mode.lower()
        assert len(packet) <= MAX_REQUEST
    with only(PacketError, label="parse_oack"):
        parse_oack(packet)
    code, message = parse_error(packet)  # tolerant by design: never raises
    assert 0 <= code <= 0xFFFF and "\0" not in message


@FUZZ
@given(
    opcode=st.sampled_from([Opcode.RRQ, Opcode.WRQ]),
    filename=_field.filter(bool),
    mode=_ascii_field.filter(bool),
    options=st.lists(st.tuples(st.sampled_from(OPTION_NAMES) | _field, _values), max_size=6),
)
def test_requests_round_trip(
    opcode: Opcode, filename: str, mode: str, options: list[tuple[str, str]]
) -> None:
    """What a client encodes is what the server parses: names lower-cased, first one wins."""
    packet = encode_request(opcode, filename, mode, dict(options))
    expected: dict[str, str] = {}
    for name, value in dict(options).items():
        expected.setdefault(name.lower(), value)
    if len(packet) > MAX_REQUEST:
        with pytest.raises(PacketError, match="exceeds 512"):
            parse_request(packet)
        return
    request = parse_request(packet)
    assert (request.opcode, request.filename, request.mode) == (opcode, filename, mode.lower())
    assert request.options == expected


@FUZZ
@given(
    options=st.dictionaries(st.sampled_from(OPTION_NAMES).map(str.lower) | _field, _values),
    size=st.none() | st.integers(0, 1 << 40),
    max_blksize=st.integers(MIN_BLKSIZE, MAX_BLKSIZE),
    max_windowsize=st.integers(1, MAX_WINDOWSIZE),
)
def test_negotiation_never_grants_more_than_asked(
    options: dict[str, str], size: int | None, max_blksize: int, max_windowsize: int
) -> None:
    granted = negotiate(options, size, max_blksize=max_blksize, max_windowsize=max_windowsize)
    oack = granted.oack
    # RFC 2347: the OACK carries only options the client asked for, in its order.
    assert list(oack) == [name for name in options if name in oack]
    assert all(re.fullmatch(r"[0-9]+", value) for value in oack.values())
    if "blksize" in oack:
        # RFC 2348: 8..65464, and a server may only lower the value asked for.
        asked = int(options["blksize"])
        assert int(oack["blksize"]) == granted.blksize
        assert MIN_BLKSIZE <= granted.blksize <= min(asked, max_blksize, MAX_BLKSIZE)
    else:
        assert granted.blksize == DEFAULT_BLKSIZE
    if "windowsize" in oack:
        # RFC 7440 §3: 1..65535, the server may lower it.
        asked = int(options["windowsize"])
        assert int(oack["windowsize"]) == granted.windowsize
        assert 1 <= granted.windowsize <= min(asked, max_windowsize)
    else:
        assert granted.windowsize == 1
    if "timeout" in oack:
        # RFC 2349: the server echoes the value (1..255) or ignores the option. The echo is
        # the number, written plainly: "08" is answered "8".
        assert int(oack["timeout"]) == int(options["timeout"])
        assert granted.timeout == float(options["timeout"])
        assert MIN_TIMEOUT <= granted.timeout <= MAX_TIMEOUT
    else:
        assert granted.timeout is None
    if "tsize" in oack:
        # RFC 2349: answered with the size in octets (an empty file's size is left out).
        assert size and oack["tsize"] == str(size) and granted.tsize
    else:
        assert not granted.tsize


@FUZZ
@given(options=st.dictionaries(_field.map(str.lower), _field, max_size=8))
def test_oack_round_trip(options: dict[str, str]) -> None:
    packet = encode_oack(options)
    assert opcode_of(packet) == Opcode.OACK
    if all(name == name.lower() for name in options):
        assert parse_oack(packet) == options


@FUZZ
@given(code=st.sampled_from(list(ErrorCode)), message=st.text())
def test_error_packets(code: ErrorCode, message: str) -> None:
    packet = encode_error(code, message)
    assert opcode_of(packet) == Opcode.ERROR and packet.endswith(b"\0")
    assert len(packet) <= 4 + 200 + 1
    got_code, got = parse_error(packet)
    assert got_code == code
    if message.isascii() and "\0" not in message and len(message) <= 200:
        assert got == message


def _netascii_decode(wire: bytes) -> bytes:
    return re.sub(rb"\r([\n\0])", lambda m: b"\n" if m.group(1) == b"\n" else b"\r", wire)


@FUZZ
@given(data=st.binary(max_size=300), cut=st.integers(0, 300))
def test_netascii(data: bytes, cut: int) -> None:
    """RFC 1350/764: every CR on the wire is followed by LF or NUL, and decoding gives the
    file back; chunks translate independently."""
    wire = netascii_encode(data)
    assert re.search(rb"\r(?![\n\0])|(?<!\r)\n", wire) is None
    assert _netascii_decode(wire) == data
    assert netascii_encode(data[:cut]) + netascii_encode(data[cut:]) == wire


@FUZZ
@given(
    size=st.integers(0, 1 << 40),
    blksize=st.integers(MIN_BLKSIZE, MAX_BLKSIZE),
    block=st.integers(0, 1 << 20),
)
def test_blocks(size: int, blksize: int, block: int) -> None:
    # RFC 1350: full blocks, then one short (possibly empty) block ends the transfer.
    blocks = block_count(size, blksize)
    assert (blocks - 1) * blksize <= size < blocks * blksize
    assert encode_data(block, b"x")[2:4] == encode_ack(block)[2:4] == (block % 65536).to_bytes(2)
