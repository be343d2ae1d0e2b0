"""TFTP packet rules as tables: request parsing, option negotiation, encodings, netascii."""

from __future__ import annotations

import pytest

from overrided.tftp.packets import (
    DATA_HEADERS,
    ErrorCode,
    Opcode,
    PacketError,
    block_count,
    encode_error,
    encode_oack,
    negotiate,
    netascii_encode,
    parse_error,
    parse_oack,
    parse_request,
)


@pytest.mark.parametrize(
    ("packet", "name", "mode", "options"),
    [
        (b"\x00\x01f\x00octet\x00", "f", "octet", {}),
        (b"\x00\x01/a/b\x00OCTET\x00", "/a/b", "octet", {}),
        (b"\x00\x02f\x00netascii\x00", "f", "netascii", {}),
        # barebox's probe: blksize 512 and tsize 0 (docs/design.md, "barebox")
        (
            b"\x00\x01none-linux-rock3a\x00octet\x00blksize\x00512\x00tsize\x000\x00",
            "none-linux-rock3a",
            "octet",
            {"blksize": "512", "tsize": "0"},
        ),
        # RFC 2347: option names are case-insensitive; the first of a repeated one wins
        (
            b"\x00\x01f\x00octet\x00BlkSize\x001432\x00blksize\x00512\x00",
            "f",
            "octet",
            {"blksize": "1432"},
        ),
        (b"\x00\x01f\x00octet\x00x-vendor\x00\x00", "f", "octet", {"x-vendor": ""}),
    ],
)
def test_parse_request(packet: bytes, name: str, mode: str, options: dict[str, str]) -> None:
    req = parse_request(packet)
    assert (req.filename, req.mode, req.options) == (name, mode, options)


@pytest.mark.parametrize(
    ("packet", "why"),
    [
        (b"", "opcode -1"),
        (b"\x00", "opcode -1"),
        (b"\x00\x03\x00\x01", "opcode 3"),
        (b"\x00\x01", "no NUL after the filename"),
        (b"\x00\x01f", "no NUL after the filename"),
        (b"\x00\x01f\x00octet", "no NUL after the last field"),
        (b"\x00\x01\x00octet\x00", "empty filename at offset 2"),
        (b"\x00\x01f\x00\x00", "empty mode at offset 4"),
        (b"\x00\x01f\x00octet\x00blksize\x00", "option 'blksize' has no value"),
        (b"\x00\x01f\x00octet\x00blksize\x00512", "no NUL after the last field"),
        (b"\x00\x01\xff\xfe\x00octet\x00", "not UTF-8"),
        (b"\x00\x01" + b"a" * 600 + b"\x00octet\x00", "exceeds 512"),
    ],
)
def test_parse_request_refuses(packet: bytes, why: str) -> None:
    with pytest.raises(PacketError, match=why):
        parse_request(packet)


CAPS = {"max_blksize": 8192, "max_windowsize": 16}


@pytest.mark.parametrize(
    ("asked", "size", "oack", "blksize", "window"),
    [
        ({}, 100, {}, 512, 1),
        # barebox probe: tsize answered with the size, blksize granted as asked
        ({"blksize": "512", "tsize": "0"}, 4321, {"blksize": "512", "tsize": "4321"}, 512, 1),
        # barebox full read: never more than asked, nothing it did not ask
        (
            {"timeout": "5", "blksize": "1432", "tsize": "0"},
            9,
            {"timeout": "5", "blksize": "1432", "tsize": "9"},
            1432,
            1,
        ),
        # U-Boot: blksize 1468, timeout, windowsize only when > 1, no tsize
        ({"blksize": "1468", "timeout": "1"}, 9, {"blksize": "1468", "timeout": "1"}, 1468, 1),
        (
            {"blksize": "1468", "windowsize": "4"},
            9,
            {"blksize": "1468", "windowsize": "4"},
            1468,
            4,
        ),
        # server caps lower a request, never raise one
        ({"blksize": "65464"}, 9, {"blksize": "8192"}, 8192, 1),
        ({"blksize": "999999999999"}, 9, {"blksize": "8192"}, 8192, 1),
        ({"windowsize": "65535"}, 9, {"windowsize": "16"}, 512, 16),
        ({"blksize": "8"}, 9, {"blksize": "8"}, 8, 1),
        # unusable values are ignored like unknown options (RFC 2347), not refused
        ({"blksize": "7"}, 9, {}, 512, 1),
        ({"blksize": "0"}, 9, {}, 512, 1),
        ({"blksize": "-1432"}, 9, {}, 512, 1),
        ({"blksize": "+1432"}, 9, {}, 512, 1),
        ({"blksize": "0x400"}, 9, {}, 512, 1),
        ({"blksize": " 512"}, 9, {}, 512, 1),
        ({"blksize": ""}, 9, {}, 512, 1),
        ({"blksize": "1" * 30}, 9, {}, 512, 1),
        ({"windowsize": "0"}, 9, {}, 512, 1),
        ({"windowsize": "65536"}, 9, {}, 512, 1),
        ({"timeout": "0"}, 9, {}, 512, 1),
        ({"timeout": "256"}, 9, {}, 512, 1),
        ({"tsize": "abc"}, 9, {}, 512, 1),
        ({"multicast": "", "x-foo": "1"}, 9, {}, 512, 1),
        # a non-zero tsize in a read request is answered with the real size
        ({"tsize": "77"}, 5, {"tsize": "5"}, 512, 1),
        # an empty file's size is not reported: curl refuses an OACK with "tsize 0"
        ({"tsize": "0", "blksize": "1432"}, 0, {"blksize": "1432"}, 1432, 1),
    ],
)
def test_negotiate(
    asked: dict[str, str], size: int, oack: dict[str, str], blksize: int, window: int
) -> None:
    granted = negotiate(asked, size, **CAPS)
    assert granted.oack == oack
    assert (granted.blksize, granted.windowsize) == (blksize, window)
    # RFC 2347 and barebox: the OACK names only options the client asked for, in its order
    assert list(granted.oack) == [k for k in asked if k in granted.oack]
    for key in ("blksize", "windowsize", "timeout"):
        if key in granted.oack:
            assert int(granted.oack[key]) <= int(asked[key])


def test_oack_and_error_encodings_round_trip() -> None:
    packet = encode_oack({"blksize": "1432", "tsize": "123"})
    assert packet == b"\x00\x06blksize\x001432\x00tsize\x00123\x00"
    assert parse_oack(packet) == {"blksize": "1432", "tsize": "123"}
    err = encode_error(ErrorCode.FILE_NOT_FOUND, "file not found")
    assert err == b"\x00\x05\x00\x01file not found\x00"
    assert parse_error(err) == (1, "file not found")
    assert parse_error(b"\x00\x05\x00\x00\x00") == (0, "")  # barebox's abort


@pytest.mark.parametrize(
    ("block", "header"),
    [(1, b"\x00\x03\x00\x01"), (65535, b"\x00\x03\xff\xff"), (65536, b"\x00\x03\x00\x00")],
)
def test_data_headers_roll_over(block: int, header: bytes) -> None:
    assert DATA_HEADERS[block & 0xFFFF] == header
    assert header[1] == Opcode.DATA


@pytest.mark.parametrize(
    ("size", "blksize", "blocks"),
    [(0, 512, 1), (1, 512, 1), (511, 512, 1), (512, 512, 2), (513, 512, 2), (40 << 20, 512, 81921)],
)
def test_block_count(size: int, blksize: int, blocks: int) -> None:
    # RFC 1350: a block shorter than blksize (possibly empty) ends the transfer
    assert block_count(size, blksize) == blocks


@pytest.mark.parametrize(
    ("local", "wire"),
    [
        (b"", b""),
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\rb", b"a\r\x00b"),
        (b"dos\r\n", b"dos\r\x00\r\n"),
        (b"\n\n", b"\r\n\r\n"),
    ],
)
def test_netascii_encode(local: bytes, wire: bytes) -> None:
    assert netascii_encode(local) == wire
