"""The compressions overrided reads and writes, in one table.

Each codec says how it is named (the FIT ``compression`` value and our command-line choice), how
files holding it end (``modules-6.1.0-arm64.cpio.zst``), which magics start its streams, and how
to compress and decompress it: with the standard library where it can, else with a Debian tool
(``zstd``, ``lz4``, ``lzop``), whose streams are then measured from their framing so that exactly
one stream's bytes go through the tool. CPIO reading and writing (``cpio.py``), FIT building
(``fit/build.py``), build discovery (``discovery.py``), upload validation (``http/uploads.py``) and
the OpenAPI patterns all derive what they accept from ``CODECS``: adding a compression is one
entry here.

Two contexts differ and each codec says what it does in both:

* an **initramfs** part is decoded by the kernel (``lib/decompress.c`` picks the decoder from
  the first two bytes); ``magics`` lists the full magics we require, each beginning with the
  kernel's two bytes. lz4 there is the legacy frame (``lz4 -l``): the kernel has no decoder for
  the lz4 frame format.
* a **FIT** payload is decoded by the bootloader by the image's ``compression`` property;
  ``payload_magics`` recognise a kernel that comes compressed already (``Image.gz``), which is
  stored as it is. U-Boot has no xz for FIT images, so xz is initramfs-only.
"""

from __future__ import annotations

import bz2
import lzma
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol

from overrided.errors import OverridedError

Purpose = Literal["initramfs", "fit"]


class CodecError(OverridedError):
    """A compressed stream whose framing is broken; names where."""


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


class Decoder(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Tool:
    """A Debian program that does a codec the standard library lacks."""

    package: str
    compress: dict[Purpose, tuple[str, ...]]  # argv per context, reading stdin, writing stdout
    decompress: tuple[str, ...]


@dataclass(frozen=True)
class Codec:
    name: str  # FIT ``compression`` value, and what ``--compress`` takes
    suffix: str  # file name suffix without the dot
    magics: tuple[bytes, ...]  # initramfs streams; () where the kernel cannot decode it there
    payload_magics: tuple[bytes, ...]  # an already compressed kernel payload
    in_fit: bool  # a FIT ``compression`` value the bootloaders decode
    # Standard library: a compressor per level, and an incremental decoder.
    compressor: Callable[[int], Compressor] | None = None
    decoder: Callable[[], Decoder] | None = None
    levels: tuple[int, int] = (9, 9)  # (initramfs, fit) for the standard library compressors
    tool: Tool | None = None
    # For a tool codec: the length of the one stream at ``start`` from its framing, so exactly
    # that many bytes go through the tool. (file, start, file size, where) -> length.
    extent: Callable[[BinaryIO, int, int, str], int] | None = None

    def compress(self, data: bytes, purpose: Purpose) -> bytes:
        """``data`` compressed whole, for ``purpose``; tools run as child processes."""
        if self.compressor is not None:
            c = self.compressor(self.levels[0 if purpose == "initramfs" else 1])
            return c.compress(data) + c.flush()
        import subprocess

        assert self.tool is not None
        argv = self.tool.compress[purpose]
        try:
            run = subprocess.run(argv, input=data, capture_output=True, check=True)
        except FileNotFoundError:
            raise CodecError(self.missing_tool()) from None
        except subprocess.CalledProcessError as err:
            raise CodecError(f"{self.name}: {argv[0]} failed: {err.stderr.decode()}") from None
        return run.stdout

    def missing_tool(self) -> str:
        assert self.tool is not None
        return f"{self.name} needs the {self.tool.compress['initramfs'][0]} tool " + (
            f"(Debian package {self.tool.package}), which is not installed"
        )


class _GzipDecoder:
    """zlib's decompressobj with the interface of lzma's and bz2's decompressors.

    zlib hands back input it did not get to (``unconsumed_tail``) where the others keep it.
    """

    def __init__(self) -> None:
        self._obj = zlib.decompressobj(wbits=31)  # 16 + 15: one gzip member, like gunzip()
        self._full = False

    @property
    def eof(self) -> bool:
        return self._obj.eof

    @property
    def needs_input(self) -> bool:
        return not self._obj.unconsumed_tail and not self._full

    @property
    def unused_data(self) -> bytes:
        return self._obj.unused_data

    def decompress(self, data: bytes, max_length: int = -1, /) -> bytes:
        out = self._obj.decompress(self._obj.unconsumed_tail + data, max(max_length, 0))
        self._full = max_length > 0 and len(out) == max_length
        return out


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) < n:
        raise CodecError(f"{what} is truncated")
    return data


def _zstd_extent(f: BinaryIO, start: int, end: int, where: str) -> int:
    """Length of the one zstd frame at ``start`` (RFC 8878 §3.1.1), the unit the kernel decodes."""
    f.seek(start + 4)
    (fhd,) = _read_exact(f, 1, f"{where}: zstd frame header")
    fcs_flag, single, checksum, did_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
    if fhd & 0x08:
        raise CodecError(f"{where}: zstd frame header has its reserved bit set")
    pos = start + 5 + (0 if single else 1) + (0, 1, 2, 4)[did_flag]
    pos += (1 if single else 0, 2, 4, 8)[fcs_flag]
    while True:
        f.seek(pos)
        (b0, b1, b2) = _read_exact(f, 3, f"{where}: zstd block header at {pos}")
        block = b0 | b1 << 8 | b2 << 16
        last, kind, size = block & 1, (block >> 1) & 3, block >> 3
        if kind == 3:
            raise CodecError(f"{where}: zstd block at offset {pos} has the reserved type")
        pos += 3 + (1 if kind == 1 else size)
        if last:
            return pos + (4 if checksum else 0) - start


def _lz4_extent(f: BinaryIO, start: int, end: int, where: str) -> int:
    """Length of the lz4 legacy stream at ``start`` as ``unlz4`` (lib/decompress_unlz4.c) reads it.

    The legacy frame has no end mark: the kernel reads chunk after chunk until fewer than 4 bytes
    remain or it meets a zero chunk size; a repeated magic is skipped. So whatever follows an lz4
    stream in an initrd must begin with 4 NUL bytes.
    """
    pos = start + 4
    while end - pos >= 4:
        f.seek(pos)
        (word,) = struct.unpack("<I", f.read(4))
        if word == 0x184C2102:
            pos += 4
            continue
        if word == 0:
            break
        if pos + 4 + word > end:
            raise CodecError(
                f"{where}: lz4 chunk at offset {pos} claims {word} bytes but the file ends at "
                f"{end} (data after an lz4 stream must start with 4 NUL bytes)"
            )
        pos += 4 + word
    return pos - start


# lzop header flags (lzop's conf.h), which decide which optional fields are present.
_F_ADLER32_D, _F_ADLER32_C, _F_H_EXTRA_FIELD = 0x1, 0x2, 0x40
_F_CRC32_D, _F_CRC32_C, _F_H_FILTER = 0x100, 0x200, 0x800


def _lzo_extent(f: BinaryIO, start: int, end: int, where: str) -> int:
    """Length of the lzop stream at ``start``: header, blocks, and the zero end-of-stream word."""
    f.seek(start + 9)
    (version, _lib) = struct.unpack(">HH", _read_exact(f, 4, f"{where}: lzop header"))
    pos = start + 13
    if version >= 0x0940:
        pos += 2 + 2  # version needed to extract; method and level
    else:
        pos += 1  # method
    f.seek(pos)
    (flags,) = struct.unpack(">I", _read_exact(f, 4, f"{where}: lzop header"))
    if flags & _F_H_EXTRA_FIELD:
        raise CodecError(f"{where}: lzop header extra fields are not supported by the kernel")
    pos += 4 + (4 if flags & _F_H_FILTER else 0) + 4 + 4 + (4 if version >= 0x0940 else 0)
    f.seek(pos)
    (name_len,) = _read_exact(f, 1, f"{where}: lzop header")
    pos += 1 + name_len + 4  # name, header checksum
    d_sum = 4 if flags & (_F_ADLER32_D | _F_CRC32_D) else 0
    c_sum = 4 if flags & (_F_ADLER32_C | _F_CRC32_C) else 0
    while True:
        f.seek(pos)
        (dst_len,) = struct.unpack(">I", _read_exact(f, 4, f"{where}: lzo block at {pos}"))
        pos += 4
        if dst_len == 0:
            return pos - start
        (src_len,) = struct.unpack(">I", _read_exact(f, 4, f"{where}: lzo block at {pos}"))
        pos += 4 + d_sum + (c_sum if src_len < dst_len else 0) + src_len


# Levels: a service packs ~300 MB of modules per build, so initramfs parts get gzip 6 and zstd -9
# (zstd -19 takes minutes there for 13% less); a FIT's kernel is small and gets the highest.
# Names, modes and times are left out of lzop headers and gzip's so that output is reproducible.
CODECS: tuple[Codec, ...] = (
    Codec(
        "gzip",
        "gz",
        magics=(b"\x1f\x8b\x08", b"\x1f\x9e"),  # "old" gzip magic too, as lib/decompress.c
        payload_magics=(b"\x1f\x8b",),
        in_fit=True,
        compressor=lambda level: zlib.compressobj(level, zlib.DEFLATED, 31),
        decoder=_GzipDecoder,
        levels=(6, 9),
    ),
    Codec(
        "bzip2",
        "bz2",
        magics=(b"BZh",),
        payload_magics=(b"BZh",),
        in_fit=True,
        compressor=bz2.BZ2Compressor,
        decoder=bz2.BZ2Decompressor,
    ),
    Codec(
        "lzma",
        "lzma",
        magics=(b"\x5d\x00\x00",),
        payload_magics=(),  # the legacy .lzma header has no reliable magic for a payload
        in_fit=True,
        compressor=lambda _level: lzma.LZMACompressor(lzma.FORMAT_ALONE),
        decoder=lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE),
    ),
    Codec(
        "xz",
        "xz",
        magics=(b"\xfd7zXZ\x00",),
        payload_magics=(),
        in_fit=False,
        # The kernel's xz decoder knows CRC32 but not every check; kbuild uses --check=crc32.
        compressor=lambda _level: lzma.LZMACompressor(lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
        decoder=lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ),
    ),
    Codec(
        "lzo",
        "lzo",
        magics=(b"\x89LZO\x00\r\n\x1a\n",),
        payload_magics=(b"\x89LZO",),
        in_fit=True,
        tool=Tool(
            "lzop",
            compress=dict.fromkeys(
                ("initramfs", "fit"),
                ("lzop", "-q", "-9", "-c", "--no-name", "--no-mode", "--no-time"),
            ),
            decompress=("lzop", "-q", "-d", "-c"),
        ),
        extent=_lzo_extent,
    ),
    Codec(
        "lz4",
        "lz4",
        magics=(b"\x02\x21\x4c\x18",),  # legacy frame (`lz4 -l`): the kernel decodes no other
        payload_magics=(b"\x04\x22\x4d\x18",),  # the lz4 frame format U-Boot decodes
        in_fit=True,
        tool=Tool(
            "lz4",
            compress={
                "initramfs": ("lz4", "-q", "-l", "-9", "-c"),
                "fit": ("lz4", "-q", "-9", "-c"),
            },
            decompress=("lz4", "-q", "-d", "-c"),
        ),
        extent=_lz4_extent,
    ),
    Codec(
        "zstd",
        "zst",
        magics=(b"\x28\xb5\x2f\xfd",),
        payload_magics=(b"\x28\xb5\x2f\xfd",),
        in_fit=True,
        tool=Tool(
            "zstd",
            compress={
                "initramfs": ("zstd", "-q", "-c", "-9", "-T0"),
                "fit": ("zstd", "-q", "-c", "-19"),
            },
            decompress=("zstd", "-q", "-d", "-c"),
        ),
        extent=_zstd_extent,
    ),
)

BY_NAME: dict[str, Codec] = {c.name: c for c in CODECS}
BY_SUFFIX: dict[str, Codec] = {c.suffix: c for c in CODECS}
# What an initramfs part may be compressed with, and what a FIT image may say.
INITRAMFS: tuple[str, ...] = tuple(c.name for c in CODECS if c.magics)
FIT: tuple[str, ...] = tuple(c.name for c in CODECS if c.in_fit)
# ``gz|bz2|lzma|xz|lzo|lz4|zst``: the suffixes, for file name patterns.
SUFFIX_ALTERNATION = "|".join(re.escape(c.suffix) for c in CODECS)


def of_stream(head: bytes) -> Codec | None:
    """The codec of an initramfs stream starting with ``head``, if any magic matches."""
    for c in CODECS:
        if any(head.startswith(m) for m in c.magics):
            return c
    return None


def of_payload(head: bytes) -> Codec | None:
    """The codec a kernel payload (``Image.gz``...) is compressed with already, if known."""
    for c in CODECS:
        if any(head.startswith(m) for m in c.payload_magics):
            return c
    return None


def suffixes_text() -> str:
    """``.gz|.bz2|…`` for messages."""
    return "|".join(f".{c.suffix}" for c in CODECS)
