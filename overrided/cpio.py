"""newc CPIO archives for initrds: read, write, concatenate, build modules and init archives.

An initrd is a sequence of newc archives, each optionally compressed, separated by NUL padding.
Linux unpacks it with ``unpack_to_rootfs`` in ``init/initramfs.c``; the reader here walks a file the
same way, so ``inspect`` reports what the kernel would see and fails where the kernel would fail:

* at a 4-byte-aligned offset (from the start of the whole initrd) a ``'0'`` starts a raw archive;
* NUL bytes are skipped one at a time;
* anything else must start a compressed stream the kernel recognises by its magic; exactly one
  stream is consumed and its output must hold whole archives (alignment inside it counts from the
  start of the decompressed data, because ``unpack_to_rootfs`` resets ``this_header`` to 0).

gzip, xz, lzma and bzip2 are decoded with the standard library. zstd, lz4 (legacy frame) and lzo
(lzop) have no decoder in Python 3.11's standard library; we find the stream's end ourselves from
its framing and pipe exactly those bytes through Debian's ``zstd``, ``lz4`` and ``lzop`` tools,
which are also what kbuild uses to write these formats (``scripts/Makefile.lib``).
"""

from __future__ import annotations

import contextlib
import lzma
import os
import re
import stat
import struct
import subprocess
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from overrided import codecs
from overrided.errors import OverridedError

HEADER_SIZE = 110
# init/initramfs.c do_header() never reads a name (NUL included) longer than PATH_MAX, nor a
# symlink target longer than that: it skips such an entry whole.
PATH_MAX = 4096
MAGIC_NEWC = b"070701"
MAGIC_CRC = b"070702"
TRAILER = "TRAILER!!!"
_CHUNK = 1 << 20

# The compressions an initramfs part may have: ``codecs.py`` holds their magics and tools.
COMPRESSIONS: tuple[str, ...] = codecs.INITRAMFS


class CpioError(OverridedError):
    """A CPIO archive or initrd part is malformed or cannot be used; names the file and offset."""


# --------------------------------------------------------------------------------------------
# Pure format functions


def compression_of(head: bytes) -> str | None:
    """The compression of a stream starting with ``head``; ``None`` for a raw newc archive.

    Raises ``CpioError`` when ``head`` is neither a newc header start nor a known magic.
    """
    if head[:6] in (MAGIC_NEWC, MAGIC_CRC):
        return None
    codec = codecs.of_stream(head)
    if codec is not None:
        return codec.name
    raise CpioError(f"unknown format (first bytes {head[:8].hex(' ')})")


def pad4(n: int) -> int:
    """Bytes of NUL padding that bring ``n`` to a multiple of 4."""
    return -n % 4


@dataclass(frozen=True)
class Header:
    """The 13 fields of a newc header plus the name, as stored."""

    magic: bytes
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    filesize: int
    devmajor: int
    devminor: int
    rdevmajor: int
    rdevminor: int
    namesize: int
    check: int


_FIELDS = (
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
)
_HEX = re.compile(rb"[0-9A-Fa-f]{8}")
_HEX_FIELDS = re.compile(rb"[0-9A-Fa-f]{%d}" % (8 * len(_FIELDS)))
_U32S = struct.Struct(f">{len(_FIELDS)}I")


def parse_header(raw: bytes) -> Header:
    """Parse a 110-byte newc header; ``ValueError`` names the bad field."""
    if len(raw) < HEADER_SIZE:
        raise ValueError(f"truncated header ({len(raw)} of {HEADER_SIZE} bytes)")
    magic = raw[:6]
    if magic not in (MAGIC_NEWC, MAGIC_CRC):
        raise ValueError(f"bad magic {magic!r} (want 070701 or 070702)")
    fields = raw[6:HEADER_SIZE]
    if not _HEX_FIELDS.fullmatch(fields):
        for i, name in enumerate(_FIELDS):
            text = fields[8 * i : 8 * i + 8]
            if not _HEX.fullmatch(text):
                raise ValueError(f"field {name} is not 8 hex digits: {text!r}")
    # All hex: 13 big-endian u32s (one conversion, not 13: a modules CPIO has thousands).
    header = Header(magic, *_U32S.unpack(bytes.fromhex(fields.decode("ascii"))))
    if header.namesize == 0:
        raise ValueError("namesize is 0 (the name needs at least its NUL)")
    if header.namesize > PATH_MAX:
        # Refused before anything is read: a reader that collected such a "name" would hold
        # up to 4 GiB of a decompressed stream in memory.
        raise ValueError(
            f"namesize {header.namesize} is longer than PATH_MAX ({PATH_MAX}); "
            "the kernel skips such an entry"
        )
    return header


def parse_name(header: Header, raw: bytes) -> str:
    """Decode the name field (``namesize`` bytes including the NUL); ``ValueError`` if malformed."""
    if len(raw) < header.namesize:
        raise ValueError(f"truncated name ({len(raw)} of {header.namesize} bytes)")
    if raw[header.namesize - 1] != 0:
        raise ValueError(f"name of {header.namesize} bytes is not NUL-terminated")
    body = raw[: header.namesize - 1]
    if 0 in body:
        raise ValueError("name has a NUL before its end")
    return os.fsdecode(body)


def newc_header(
    name: str,
    *,
    ino: int,
    mode: int,
    uid: int = 0,
    gid: int = 0,
    nlink: int = 1,
    mtime: int = 0,
    filesize: int = 0,
    devmajor: int = 0,
    devminor: int = 0,
    rdevmajor: int = 0,
    rdevminor: int = 0,
) -> bytes:
    """A 070701 header followed by the NUL-terminated name, padded to a multiple of 4."""
    encoded = os.fsencode(name) + b"\0"
    fields = (ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor)
    for value in fields:
        if not 0 <= value <= 0xFFFFFFFF:
            raise CpioError(f"{name}: value {value} does not fit a newc field")
    head = MAGIC_NEWC + b"".join(b"%08X" % v for v in (*fields, len(encoded), 0)) + encoded
    return head + b"\0" * pad4(len(head))


# --------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class Entry:
    """One archive member as listed by ``cpio -tv``, plus where it sits."""

    name: str
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    size: int
    ino: int
    devmajor: int
    devminor: int
    rdevmajor: int
    rdevminor: int
    target: str | None  # symlink target
    part_offset: int  # offset of the part (raw archive or compressed stream) in the file
    offset: int  # offset of the header in the part's (decompressed) data

    @property
    def is_dir(self) -> bool:
        """Whether the entry is a directory."""
        return stat.S_ISDIR(self.mode)


@dataclass(frozen=True)
class Part:
    """One raw archive or one compressed stream of an initrd file, as the kernel consumes it."""

    path: Path
    offset: int
    size: int
    compression: str | None
    entries: tuple[Entry, ...] = field(repr=False)
    archives: int = 1


class _Chunks:
    """A cursor over an iterator of byte chunks: exact reads, skips, and the running offset."""

    def __init__(self, chunks: Iterator[bytes], offset: int = 0) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0
        self.offset = offset

    def _fill(self, n: int) -> None:
        while len(self._buf) - self._pos < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                return
            self._buf = self._buf[self._pos :] + chunk
            self._pos = 0

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes without consuming them."""
        self._fill(n)
        return self._buf[self._pos : self._pos + n]

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end)."""
        self._fill(n)
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        self.offset += len(out)
        return out

    def skip(self, n: int) -> int:
        """Drop ``n`` bytes without keeping them; returns how many were there."""
        done = 0
        while done < n:
            avail = len(self._buf) - self._pos
            if avail == 0:
                self._fill(1)
                if len(self._buf) - self._pos == 0:
                    break
                continue
            step = min(avail, n - done)
            self._pos += step
            done += step
        self.offset += done
        return done

    def skip_nuls(self) -> None:
        """Drop NUL bytes up to the next other byte or the end."""
        while True:
            self._fill(1)
            rest = self._buf[self._pos :]
            if not rest:
                return
            stripped = len(rest) - len(rest.lstrip(b"\0"))
            self._pos += stripped
            self.offset += stripped
            if stripped < len(rest):
                return

    def drain(self) -> int:
        """Consume everything left; returns the number of bytes dropped."""
        return self.skip(1 << 62)


class _FileCursor:
    """``_Chunks``' cursor over a raw file: data a reader skips is seeked past, not read.

    A raw modules CPIO is hundreds of MB of file data between a few thousand headers; reading
    only the headers (and names, symlink targets) costs a few ms instead of reading it all.
    """

    _FILL = 4096  # bytes read at a time: a header and its name, usually with the next ones

    def __init__(self, f: BinaryIO, offset: int) -> None:
        self._fd = f.fileno()
        self._end = os.fstat(self._fd).st_size
        self._buf = b""
        self._start = offset  # file offset of self._buf[0]
        self.offset = offset

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes without consuming them."""
        at = self.offset - self._start
        if at + n > len(self._buf):
            self._buf = os.pread(self._fd, max(n, self._FILL), self.offset)
            self._start, at = self.offset, 0
        return self._buf[at : at + n]

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end)."""
        out = self.peek(n) if n <= self._FILL else os.pread(self._fd, n, self.offset)
        self.offset += len(out)
        return out

    def skip(self, n: int) -> int:
        """Move ``n`` bytes on (fewer at the end of the file); returns how many."""
        done = max(min(n, self._end - self.offset), 0)
        self.offset += done
        return done


def _read_archive(
    cur: _Chunks | _FileCursor, where: Callable[[int], str], part_offset: int, limit: int | None
) -> Iterator[Entry]:
    """Entries of one archive at the cursor, up to and excluding the trailer.

    ``where(offset)`` renders a location for messages; ``limit`` is the end of the data when known
    (a raw file), so that a size beyond it is named as such.
    """
    while True:
        at = cur.offset
        raw = cur.read(HEADER_SIZE)
        try:
            header = parse_header(raw)
            name = parse_name(header, cur.peek(header.namesize))
        except ValueError as err:
            raise CpioError(f"{where(at)}: {err}") from None
        cur.skip(header.namesize + pad4(HEADER_SIZE + header.namesize))
        data_at = cur.offset
        if limit is not None and data_at + header.filesize > limit:
            raise CpioError(
                f"{where(at)}: {name!r} claims {header.filesize} bytes of data "
                f"but only {max(limit - data_at, 0)} remain"
            )
        if name == TRAILER:
            cur.skip(header.filesize + pad4(header.filesize))
            return
        target = None
        if stat.S_ISLNK(header.mode):
            if header.filesize > PATH_MAX:
                raise CpioError(
                    f"{where(at)}: {name!r}: symlink target of {header.filesize} bytes is longer "
                    f"than PATH_MAX ({PATH_MAX}); the kernel skips such an entry"
                )
            data = cur.read(header.filesize)
            got = len(data)
            target = os.fsdecode(data.rstrip(b"\0"))
        elif header.magic == MAGIC_CRC and stat.S_ISREG(header.mode):
            # The kernel checks the "crc" variant's sum of data bytes (do_copy/do_close in
            # init/initramfs.c) and fails on a mismatch: "bad data checksum".
            got, total = 0, 0
            while got < header.filesize:
                chunk = cur.read(min(_CHUNK, header.filesize - got))
                if not chunk:
                    break
                got += len(chunk)
                total += sum(chunk)
            if got == header.filesize and total & 0xFFFFFFFF != header.check:
                raise CpioError(f"{where(at)}: {name!r}: bad data checksum")
        else:
            got = cur.skip(header.filesize)
        if got < header.filesize:
            raise CpioError(
                f"{where(at)}: {name!r} claims {header.filesize} bytes of data "
                f"but the data ends after {got}"
            )
        cur.skip(pad4(header.filesize))
        yield Entry(
            name=name,
            mode=header.mode,
            uid=header.uid,
            gid=header.gid,
            nlink=header.nlink,
            mtime=header.mtime,
            size=header.filesize,
            ino=header.ino,
            devmajor=header.devmajor,
            devminor=header.devminor,
            rdevmajor=header.rdevmajor,
            rdevminor=header.rdevminor,
            target=target,
            part_offset=part_offset,
            offset=at,
        )


def _file_chunks(f: BinaryIO, start: int, end: int | None = None) -> Iterator[bytes]:
    """Chunks of ``f`` from ``start`` to ``end`` (or the end of file)."""
    f.seek(start)
    left = None if end is None else end - start
    while left is None or left > 0:
        chunk = f.read(_CHUNK if left is None else min(_CHUNK, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


class _Consumed:
    """Filled in by a decompressing generator once its stream has ended: input bytes used."""

    value: int | None = None


def _stdlib_stream(
    f: BinaryIO, start: int, kind: str, consumed: _Consumed, where: str
) -> Iterator[bytes]:
    make = codecs.BY_NAME[kind].decoder
    assert make is not None
    decoder = make()
    used = 0
    for chunk in _file_chunks(f, start):
        try:
            # Bounded output per call keeps memory flat even for highly compressible input.
            out = decoder.decompress(chunk, _CHUNK)
            if out:
                yield out
            while not decoder.eof and not decoder.needs_input:
                out = decoder.decompress(b"", _CHUNK)
                if out:
                    yield out
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as err:
            raise CpioError(f"{where}: corrupt {kind} data: {err}") from None
        if decoder.eof:
            used += len(chunk) - len(decoder.unused_data)
            consumed.value = used
            return
        used += len(chunk)
    raise CpioError(f"{where}: {kind} stream is truncated (the file ends after {used} bytes)")


def _extent(f: BinaryIO, start: int, kind: str, size: int, where: str) -> int:
    """Length of the one ``kind`` stream at ``start``, from its framing (tool codecs)."""
    extent = codecs.BY_NAME[kind].extent
    assert extent is not None
    try:
        return extent(f, start, size, where)
    except codecs.CodecError as err:
        raise CpioError(str(err)) from None


def _tool_stream(
    f: BinaryIO, start: int, length: int, kind: str, where: str, file_size: int
) -> Iterator[bytes]:
    """Decompress ``length`` bytes at ``start`` through Debian's tool, as a bounded stream."""
    if start + length > file_size:
        raise CpioError(f"{where}: {kind} stream is truncated (the file ends at {file_size})")
    tool = codecs.BY_NAME[kind].tool
    assert tool is not None
    try:
        proc = subprocess.Popen(
            tool.decompress,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        missing = codecs.BY_NAME[kind].missing_tool()
        raise CpioError(f"{where}: reading {missing}") from None
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin = proc.stdin

    def feed() -> None:
        try:
            with open(f.name, "rb") as src:  # own handle: the caller keeps seeking ``f``
                for chunk in _file_chunks(src, start, start + length):
                    stdin.write(chunk)
        except (BrokenPipeError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        while chunk := proc.stdout.read(_CHUNK):
            yield chunk
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        status = proc.wait()
        feeder.join()
    if status != 0:
        raise CpioError(f"{where}: corrupt {kind} data: {err.splitlines()[-1] if err else status}")


def _in_stream(where: str, kind: str) -> Callable[[int], str]:
    return lambda at: f"{where} ({kind} stream), decompressed offset {at}"


def _walk(path: Path, opened: BinaryIO | None = None) -> Iterator[Entry | Part]:
    """Every entry of every part of ``path`` as it is read, each part followed by its summary
    (read from ``opened`` when given, which is then closed)."""
    try:
        f = opened or open(path, "rb")  # noqa: SIM115 - closed below; generators cannot use ``with`` early
    except OSError as err:
        raise CpioError(f"{path}: {err.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CpioError(f"{path}: empty file, not a CPIO archive")
        pos = 0
        found = False
        while pos < size:
            f.seek(pos)
            head = f.read(16)
            nuls = len(head) - len(head.lstrip(b"\0"))
            if nuls:
                pos += nuls
                continue
            where = f"{path}: offset {pos}"
            entries: list[Entry] = []
            if head[:1] == b"0" and pos % 4 == 0:
                cur = _FileCursor(f, pos)
                for entry in _read_archive(cur, lambda at: f"{path}: offset {at}", pos, size):
                    entries.append(entry)
                    yield entry
                end = cur.offset
                yield Part(path, pos, end - pos, None, tuple(entries))
                pos = end
                found = True
                continue
            try:
                kind = compression_of(head)
            except CpioError as err:
                what = "not a CPIO archive" if not found else "junk after the last archive"
                raise CpioError(f"{where}: {what}: {err}") from None
            if kind is None:
                raise CpioError(
                    f"{where}: raw archive starts at an offset not a multiple of 4; "
                    "the kernel takes it for compressed data and fails"
                )
            consumed = _Consumed()
            chunks: Iterator[bytes]
            if codecs.BY_NAME[kind].decoder is not None:
                chunks = _stdlib_stream(f, pos, kind, consumed, where)
            else:
                length = _extent(f, pos, kind, size, where)
                consumed.value = length
                chunks = _tool_stream(f, pos, length, kind, where, size)
            inner = _Chunks(chunks)
            archives = 0
            while True:
                inner.skip_nuls()
                head = inner.peek(6)
                if not head:
                    break
                dwhere = f"{where} ({kind} stream), decompressed offset {inner.offset}"
                if head[:1] != b"0" or inner.offset % 4:
                    raise CpioError(f"{dwhere}: junk within compressed archive")
                archives += 1
                for entry in _read_archive(
                    inner,
                    _in_stream(where, kind),
                    pos,
                    None,
                ):
                    entries.append(entry)
                    yield entry
            if archives == 0:
                raise CpioError(f"{where}: {kind} stream holds no CPIO archive")
            assert consumed.value is not None
            yield Part(path, pos, consumed.value, kind, tuple(entries), archives)
            pos += consumed.value
            found = True


def entries(path: Path) -> Iterator[Entry]:
    """Every member of every archive in ``path`` (trailers left out), streaming."""
    for item in _walk(path):
        if isinstance(item, Entry):
            yield item


def inspect(path: Path, opened: BinaryIO | None = None) -> list[Part]:
    """The parts of an initrd file as the kernel would unpack them, each with its members.

    ``opened``: the file, open already (it may have been renamed since), closed once read.
    """
    return [item for item in _walk(path, opened) if isinstance(item, Part)]


def decompressed(path: Path, offset: int = 0) -> Generator[bytes, None, None]:
    """The bytes of ``path`` from ``offset``, decompressed when a known magic starts there."""
    with open(path, "rb") as f:
        f.seek(offset)
        head = f.read(16)
        try:
            kind = compression_of(head)
        except CpioError:
            kind = None
        if kind is None:
            yield from _file_chunks(f, offset)
            return
        where = f"{path}: offset {offset}"
        if codecs.BY_NAME[kind].decoder is not None:
            yield from _stdlib_stream(f, offset, kind, _Consumed(), where)
            return
        size = os.fstat(f.fileno()).st_size
        length = _extent(f, offset, kind, size, where)
        yield from _tool_stream(f, offset, length, kind, where, size)


# --------------------------------------------------------------------------------------------
# Concatenation


@dataclass(frozen=True)
class PartInfo:
    """Where one input part landed in a concatenated initrd."""

    path: Path
    offset: int
    size: int
    compression: str | None
    padding: int  # NUL bytes written after the part


def check_part(path: Path) -> str | None:
    """Validate that ``path`` starts like a CPIO part; returns its compression (``None`` = raw).

    A raw part must start with a parseable newc header and name; a compressed one with a magic the
    kernel recognises. Leading NULs are allowed, since the kernel skips them.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_CHUNK)
            start = len(head) - len(head.lstrip(b"\0"))
            if start == len(head):
                raise CpioError(f"{path}: {'empty file' if size == 0 else 'only NUL bytes'}")
            if start % 4:
                raise CpioError(
                    f"{path}: offset {start}: data after leading NULs is not 4-byte aligned"
                )
            try:
                kind = compression_of(head[start : start + 16])
            except CpioError as err:
                raise CpioError(f"{path}: offset {start}: not a CPIO archive: {err}") from None
            if kind is None:
                cur = _FileCursor(f, start)
                next(_read_archive(cur, lambda at: f"{path}: offset {at}", start, size), None)
            return kind
    except OSError as err:
        raise CpioError(f"{path}: {err.strerror}") from None


def _copy(src: int, dst: int, count: int) -> None:
    """Copy ``count`` bytes between descriptors at their positions, in the kernel if possible."""
    left = count
    fast = True
    while left > 0:
        if fast:
            try:
                n = os.copy_file_range(src, dst, min(left, 1 << 30))
            except OSError:
                fast = False  # e.g. EXDEV on old kernels, or a pipe: fall back below
                continue
            if n == 0:
                raise CpioError("input file shrank while it was being copied")
            left -= n
            continue
        try:
            n = os.sendfile(dst, src, None, min(left, 1 << 30))
        except OSError:
            n = -1
        if n < 0:
            chunk = os.read(src, min(left, _CHUNK))
            if not chunk:
                raise CpioError("input file shrank while it was being copied") from None
            os.write(dst, chunk)
            n = len(chunk)
        elif n == 0:
            raise CpioError("input file shrank while it was being copied")
        left -= n


def layout(parts: Sequence[tuple[Path, int, str | None]]) -> list[PartInfo]:
    """Where each part (path, size, compression from ``check_part``) lands in the initrd, and
    the NUL padding after it: what ``concat`` writes, and what a view of the initrd reads."""
    placed: list[PartInfo] = []
    offset = 0
    for i, (path, size, kind) in enumerate(parts):
        # Every part ends on a multiple of 4, so the next one (raw or not) starts aligned
        # relative to the whole initrd, as unpack_to_rootfs requires for a raw archive.
        padding = pad4(size)
        if kind == "lz4" and i + 1 < len(parts):
            padding += 4  # unlz4 stops only at a zero chunk size (see _lz4_extent)
        placed.append(PartInfo(path, offset, size, kind, padding))
        offset += size + padding
    return placed


def _write_parts(parts: Sequence[tuple[Path, str | None]], out_fd: int) -> list[PartInfo]:
    sizes = [(path, path.stat().st_size, kind) for path, kind in parts]
    placed = layout(sizes)
    for part in placed:
        with open(part.path, "rb") as src:
            if os.fstat(src.fileno()).st_size != part.size:
                raise CpioError(f"{part.path}: changed size while the initrd was written")
            _copy(src.fileno(), out_fd, part.size)
        if part.padding:
            os.write(out_fd, b"\0" * part.padding)
    return placed


def _temp_beside(out: Path) -> tuple[int, str]:
    """A new temporary file in ``out``'s folder, to be renamed over ``out`` once complete."""
    try:
        return tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as err:
        raise CpioError(f"{out}: cannot write: {err.strerror or err}") from None


def concat(parts: Sequence[Path], out: Path | BinaryIO) -> list[PartInfo]:
    """Concatenate CPIO parts (raw or compressed) into one initrd the kernel unpacks fully.

    Every part is checked before anything is written; with a path, the output appears by an atomic
    rename only when complete, so a bad part leaves no output file.
    """
    if not parts:
        raise CpioError("no parts to concatenate")
    checked = [(Path(p), check_part(Path(p))) for p in parts]
    if isinstance(out, Path):
        fd, tmp = _temp_beside(out)
        try:
            placed = _write_parts(checked, fd)
            os.fchmod(fd, 0o644)
            os.close(fd)
            fd = -1
            os.replace(tmp, out)
        except BaseException as err:
            if fd >= 0:
                os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise CpioError(f"{out}: cannot write: {err.strerror or err}") from None
            raise
        return placed
    out.flush()
    try:
        out_fd = out.fileno()
    except (OSError, AttributeError, ValueError):
        out_fd = -1
    if out_fd >= 0:
        return _write_parts(checked, out_fd)
    # A file object without a descriptor (e.g. BytesIO): bounded chunks through Python.
    placed = layout([(path, path.stat().st_size, kind) for path, kind in checked])
    for part in placed:
        with open(part.path, "rb") as src:
            left = part.size
            while left and (chunk := src.read(min(_CHUNK, left))):
                out.write(chunk)
                left -= len(chunk)
        if left:
            raise CpioError(f"{part.path}: shrank while the initrd was written")
        out.write(b"\0" * part.padding)
    return placed


# --------------------------------------------------------------------------------------------
# Writing archives from folders


class _Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class _Compressing:
    """A writable sink that compresses into ``out`` with the stdlib or a Debian tool."""

    def __init__(self, out: BinaryIO, kind: str | None) -> None:
        self._out = out
        self._kind = kind
        self._obj: codecs.Compressor | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        self._failure: OSError | None = None  # a write error met by the pump thread
        self.written = 0
        if kind is None:
            return
        codec = codecs.BY_NAME.get(kind)
        if codec is None or kind not in COMPRESSIONS:
            raise CpioError(f"unknown compression {kind!r} (choose from {', '.join(COMPRESSIONS)})")
        if codec.compressor is not None:
            self._obj = codec.compressor(codec.levels[0])
        else:
            self._start_tool(codec)

    def _start_tool(self, codec: codecs.Codec) -> None:
        assert codec.tool is not None
        cmd = codec.tool.compress["initramfs"]
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except FileNotFoundError:
            raise CpioError(codec.missing_tool()) from None
        stdout = self._proc.stdout
        assert stdout is not None

        def pump() -> None:
            while chunk := stdout.read(_CHUNK):
                if self._failure is not None:
                    continue  # keep draining so the tool never blocks on a full pipe
                try:
                    self._out.write(chunk)
                except OSError as err:
                    self._failure = err

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()

    def write(self, data: bytes) -> None:
        """Add uncompressed bytes."""
        self.written += len(data)
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.write(data)
        elif self._obj is not None:
            self._out.write(self._obj.compress(data))
        else:
            self._out.write(data)

    def close(self) -> None:
        """Finish the compressed stream."""
        if self._proc is not None:
            assert self._proc.stdin is not None and self._pump is not None
            self._proc.stdin.close()
            self._pump.join()
            if self._failure is not None:
                raise self._failure
            if self._proc.wait() != 0:
                raise CpioError(f"{self._kind} compression failed (status {self._proc.returncode})")
        elif self._obj is not None:
            self._out.write(self._obj.flush())


@dataclass(frozen=True)
class _Member:
    name: str
    source: Path | None  # None for directories made up by us (parents of the prefix)
    mode: int
    mtime: int
    nlink: int = 1
    ino_key: tuple[int, int] | None = None  # (st_dev, st_ino) for hard-linked files
    rdev: int = 0


class NewcWriter:
    """Writes newc entries the way ``gen_init_cpio`` does: inodes from 721, devmajor 3 minor 1."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink
        self._next_ino = 721
        self._inos: dict[tuple[int, int], int] = {}
        self.size = 0

    def _put(self, data: bytes) -> None:
        self._sink.write(data)
        self.size += len(data)

    def add(self, member: _Member, *, uid: int = 0, gid: int = 0, last_link: bool = True) -> None:
        """Write one member; regular-file data is streamed from ``member.source``."""
        if member.ino_key is not None and member.ino_key in self._inos:
            ino = self._inos[member.ino_key]
        else:
            ino = self._next_ino
            self._next_ino += 1
            if member.ino_key is not None:
                self._inos[member.ino_key] = ino
        data = b""
        size = 0
        if stat.S_ISLNK(member.mode):
            assert member.source is not None
            data = os.fsencode(os.readlink(member.source))
            size = len(data)
        elif stat.S_ISREG(member.mode) and last_link:
            assert member.source is not None
            size = member.source.stat().st_size
        self._put(
            newc_header(
                member.name,
                ino=ino,
                mode=member.mode,
                uid=uid,
                gid=gid,
                nlink=member.nlink,
                mtime=member.mtime,
                filesize=size,
                devmajor=3,
                devminor=1,
                rdevmajor=os.major(member.rdev),
                rdevminor=os.minor(member.rdev),
            )
        )
        if data:
            self._put(data)
        elif size:
            assert member.source is not None
            done = 0
            with open(member.source, "rb") as src:
                while done < size and (chunk := src.read(min(_CHUNK, size - done))):
                    self._put(chunk)
                    done += len(chunk)
            if done != size:
                raise CpioError(f"{member.source}: file changed size while it was archived")
        self._put(b"\0" * pad4(size))

    def trailer(self) -> None:
        """Write the trailer and pad the archive to 512 bytes like gen_init_cpio and GNU cpio."""
        self._put(newc_header(TRAILER, ino=0, mode=0, nlink=1))
        self._put(b"\0" * (-self.size % 512))


def _tree_members(
    root: Path, prefix: str, *, normalise_modes: bool, mtime: int | None
) -> list[_Member]:
    """Members for everything under ``root``, named ``prefix/<relative path>``, in C sort order."""
    found: list[tuple[bytes, _Member, os.stat_result]] = []
    links: dict[tuple[int, int], int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in (*dirnames, *filenames):
            p = Path(dirpath) / n
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            name = f"{prefix}/{rel}" if prefix else rel
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                links[key] = links.get(key, 0) + 1
            found.append((os.fsencode(name), _Member(name, p, 0, 0), st))
    found.sort(key=lambda t: t[0])  # LANG=C sort: parents before children
    members = []
    for _, m, st in found:
        mode = st.st_mode
        if not (
            stat.S_ISREG(mode)
            or stat.S_ISDIR(mode)
            or stat.S_ISLNK(mode)
            or stat.S_ISCHR(mode)
            or stat.S_ISBLK(mode)
            or stat.S_ISFIFO(mode)
        ):
            raise CpioError(f"{m.source}: cannot archive this file type (socket?)")
        if normalise_modes:
            # Same bytes whatever the builder's umask: 0755 dirs and executables, 0644 the rest.
            perm = 0o777 if stat.S_ISLNK(mode) else 0o644
            if stat.S_ISDIR(mode) or (stat.S_ISREG(mode) and mode & 0o111):
                perm = 0o755
            mode = stat.S_IFMT(mode) | perm
        key = (st.st_dev, st.st_ino)
        nlink = links.get(key, 1) if stat.S_ISREG(mode) else (2 if stat.S_ISDIR(mode) else 1)
        members.append(
            _Member(
                name=m.name,
                source=m.source,
                mode=mode,
                mtime=int(st.st_mtime) if mtime is None else mtime,
                nlink=nlink,
                ino_key=key if nlink > 1 and stat.S_ISREG(mode) else None,
                rdev=st.st_rdev if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 0,
            )
        )
    return members


def _write_archive(members: Iterable[_Member], out: Path | BinaryIO, compress: str | None) -> None:
    """Write members as one newc archive, compressed if asked; atomically when ``out`` is a path."""
    members = list(members)
    # With hard links, the data goes with the last name, as GNU cpio and gen_init_cpio do.
    last_of: dict[tuple[int, int], str] = {}
    for m in members:
        if m.ino_key is not None:
            last_of[m.ino_key] = m.name

    def emit(stream: BinaryIO) -> None:
        sink = _Compressing(stream, compress)
        writer = NewcWriter(sink)
        for m in members:
            last = m.ino_key is None or last_of[m.ino_key] == m.name
            writer.add(m, last_link=last)
        writer.trailer()
        sink.close()

    if isinstance(out, Path):
        fd, tmp = _temp_beside(out)
        try:
            with os.fdopen(fd, "wb") as stream:
                emit(stream)
                os.fchmod(stream.fileno(), 0o644)
            os.replace(tmp, out)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise CpioError(f"{out}: cannot write: {err.strerror or err}") from None
            raise
    else:
        emit(out)


_RELEASE = re.compile(r"[0-9][^/\s]*")


def _modules_root(tree: Path) -> tuple[Path, str]:
    """The ``<release>`` folder inside ``tree`` and the archive prefix it belongs under."""
    if (tree / "modules.order").exists() or (tree / "kernel").is_dir():
        return tree, f"lib/modules/{tree.name}"
    for base in ("lib/modules", "usr/lib/modules"):
        folder = tree / base
        if folder.is_dir():
            releases = sorted(p for p in folder.iterdir() if p.is_dir())
            if len(releases) != 1:
                names = ", ".join(p.name for p in releases) or "none"
                raise CpioError(f"{folder}: want exactly one kernel release folder, found {names}")
            return releases[0], f"{base}/{releases[0].name}"
    raise CpioError(f"{tree}: no lib/modules/<release> folder (nor modules.order or kernel/ in it)")


def _extract(tar: tarfile.TarFile, dest: Path, where: Path) -> None:
    """Extract ``tar`` below ``dest`` only, with the standard library's "tar" filter where Python
    has it (3.11.4 and later). Debian 12's 3.11.2 has not: the same rules are applied here then,
    member by member: nothing written outside ``dest`` (a leading ``/`` is dropped; ``..``
    names, or a path through a link extracted before, are refused), no devices or FIFOs, no
    set-id or group/other write bits. Links may point anywhere (``lib/modules/<release>/build``
    is absolute): they are not followed.
    """
    if hasattr(tarfile, "tar_filter"):
        tar.extractall(dest, filter="tar")
        return
    root = os.path.realpath(dest)

    def inside(path: str) -> bool:
        real = os.path.realpath(os.path.join(root, path))
        return real == root or real.startswith(root + os.sep)

    for m in tar.getmembers():
        m.name = m.name.lstrip("/")  # as the "tar" filter does: an absolute name lands inside
        if not inside(m.name):
            raise CpioError(f"{where}: {m.name!r} would be written outside the folder")
        if m.islnk() and (os.path.isabs(m.linkname) or not inside(m.linkname)):
            raise CpioError(f"{where}: {m.name!r} is a hard link to outside ({m.linkname!r})")
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise CpioError(f"{where}: {m.name!r} is a device or FIFO, not a modules file")
        m.mode &= 0o755
        tar.extract(m, root, set_attrs=True)


def modules_cpio(
    tree: Path,
    out: Path | BinaryIO,
    *,
    compress: str | None = None,
    source_date_epoch: int | None = None,
) -> str:
    """Write the modules archive ``make modules-cpio-pkg`` would, reproducibly; returns the release.

    ``tree`` is a ``lib/modules/<release>`` folder, a folder holding ``lib/modules/<release>`` (or
    ``usr/lib/modules/<release>``, kept there), or a tarball of either. Differences from kbuild,
    all for reproducibility: uid/gid 0, modes normalised (0755/0644), and every mtime is
    ``source_date_epoch`` when given (kbuild stamps only directories with the build time).
    """
    if tree.is_file():
        with tempfile.TemporaryDirectory(prefix="overrided-modules-") as tmp:
            try:
                with tarfile.open(tree) as tar:
                    _extract(tar, Path(tmp), tree)
            except (tarfile.TarError, OSError) as err:
                raise CpioError(f"{tree}: not a readable modules tarball: {err}") from None
            return modules_cpio(
                Path(tmp), out, compress=compress, source_date_epoch=source_date_epoch
            )
    if not tree.is_dir():
        raise CpioError(f"{tree}: no such folder or tarball")
    root, prefix = _modules_root(tree)
    release = root.name
    if not _RELEASE.fullmatch(release):
        raise CpioError(f"{root}: {release!r} does not look like a kernel release")
    # The folders leading to the modules (lib, lib/modules, lib/modules/<release>) come first.
    mtime = int(root.stat().st_mtime) if source_date_epoch is None else source_date_epoch
    steps = prefix.split("/")
    parents = [
        _Member("/".join(steps[:i]), None, stat.S_IFDIR | 0o755, mtime, nlink=2)
        for i in range(1, len(steps) + 1)
    ]
    members = _tree_members(root, prefix, normalise_modes=True, mtime=source_date_epoch)
    _write_archive([*parents, *members], out, compress)
    return release


def init_cpio_from_dir(
    folder: Path,
    out: Path | BinaryIO,
    *,
    compress: str | None = None,
    source_date_epoch: int | None = None,
) -> None:
    """Write a newc archive of everything in ``folder`` (an init's root), uid/gid 0.

    Modes are kept as they are (``/init`` must stay executable); device nodes and symlinks are
    archived as such.
    """
    if not folder.is_dir():
        raise CpioError(f"{folder}: not a folder")
    members = _tree_members(folder, "", normalise_modes=False, mtime=source_date_epoch)
    if not members:
        raise CpioError(f"{folder}: empty folder, nothing to archive")
    _write_archive(members, out, compress)


# --------------------------------------------------------------------------------------------
# Checks


_MODULES_PATH = re.compile(r"^(usr/)?lib/modules/([^/]+)(?:/|$)")


def _clean(name: str) -> str:
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    return name


def initrd_warnings(
    parts: Sequence[Path],
    kernel_release: str | None,
    inspected: Callable[[Path], list[Part]] | None = None,
) -> list[str]:
    """Warnings about an initrd made of ``parts`` (in order) for a kernel of ``kernel_release``.

    Names modules for another release, modules only under ``usr/lib/modules`` with no ``lib``
    symlink (inits such as rsinit look only in ``/lib/modules/$(uname -r)``), and paths that
    several parts carry (the later part wins). ``inspected`` gives each file's parts (default:
    ``inspect``; a caller may remember them).
    """
    inspected = inspected or inspect
    warnings: list[str] = []
    owner: dict[str, tuple[str, bool]] = {}
    duplicates: list[str] = []
    releases: dict[str, set[str]] = {}  # release -> the prefixes it sits under
    lib_link = False
    for path in parts:
        for part in inspected(path):
            label = f"{path}" if part.offset == 0 else f"{path}@{part.offset}"
            for e in part.entries:
                name = _clean(e.name)
                if not name or name == ".":
                    continue
                m = _MODULES_PATH.match(name)
                if m:
                    releases.setdefault(m.group(2), set()).add(m.group(1) or "")
                if name == "lib" and stat.S_ISLNK(e.mode):
                    lib_link = True
                prev = owner.get(name)
                if prev is not None and prev[0] != label and not (prev[1] and e.is_dir):
                    duplicates.append(f"{name} ({prev[0]}, then {label})")
                owner[name] = (label, e.is_dir)
    if kernel_release is not None:
        for release in sorted(releases):
            if release != kernel_release:
                warnings.append(
                    f"modules are for release {release} but the kernel is {kernel_release}: "
                    f"modprobe looks in /lib/modules/{kernel_release} and will not find them"
                )
    for release, where in sorted(releases.items()):
        if where == {"usr/"} and not lib_link:
            warnings.append(
                f"modules sit under usr/lib/modules/{release} and nothing provides "
                f"lib/modules/{release} (no lib -> usr/lib symlink): inits that look only in "
                "/lib/modules, such as rsinit, will not find them"
            )
    if duplicates:
        shown = "; ".join(duplicates[:5])
        more = f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
        warnings.append(
            f"{len(duplicates)} path(s) appear in more than one part, the later part wins: "
            f"{shown}{more}"
        )
    return warnings
