"""newc CPIO reading and initrd concatenation under fuzzing.

Readers (`inspect`, `entries`, `check_part`, `decompressed`) get arbitrary files, archives
GNU cpio and our writer made with header fields, names and data damaged (before or after
compression), and damaged compressed streams of every kind the kernel unpacks. They answer
with a `CpioError` naming the file, or with entries. `concat` of valid parts, raw and
compressed, gives an initrd whose members read back as the parts' members, in order.

The regular tests at the top pin what fuzzing found.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import lzma
import os
import re
import stat
import subprocess
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overrided.cpio import (
    HEADER_SIZE,
    TRAILER,
    CpioError,
    Entry,
    check_part,
    concat,
    decompressed,
    entries,
    init_cpio_from_dir,
    inspect,
    layout,
    newc_header,
    pad4,
)
from tests.support.fuzz import FUZZ, Mutation, mutate, mutations, only, scaled

pytestmark = pytest.mark.fuzz

KINDS = ("gzip", "xz", "lzma", "bzip2", "zstd", "lz4", "lzo")
# What kbuild's scripts/Makefile.lib runs for the formats Python has no encoder for.
TOOLS = {
    "zstd": ["zstd", "-q", "-c"],
    "lz4": ["lz4", "-q", "-l", "-c"],
    "lzo": ["lzop", "-q", "-c"],
}


def compress(data: bytes, kind: str | None) -> bytes:
    """`data` as one `kind` stream (None: as it is)."""
    if kind is None:
        return data
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "xz":
        return lzma.compress(data, check=lzma.CHECK_CRC32)
    if kind == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE)
    if kind == "bzip2":
        return bz2.compress(data)
    run = subprocess.run(TOOLS[kind], input=data, capture_output=True, check=True, timeout=60)
    return run.stdout


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-cpio")


class _Written:
    """``with _Written(folder, data) as path``: `data` in a fresh file, removed afterwards."""

    def __init__(self, folder: Path, data: bytes, suffix: str = ".cpio") -> None:
        fd, name = tempfile.mkstemp(dir=folder, suffix=suffix)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self.path = Path(name)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def read_everything(path: Path) -> list[Entry] | None:
    """What the service and the CLI do with an initrd part they were handed; only CpioError,
    each naming the file. The entries, or None when the file was refused."""
    where = str(path)
    with only(CpioError, starts=where, label="check_part"):
        check_part(path)
    with only(CpioError, starts=where):
        for _ in decompressed(path):
            pass
    listed: list[Entry] | None = None
    with only(CpioError, starts=where, label="entries"):
        listed = list(entries(path))
    with only(CpioError, starts=where, label="inspect") as caught:
        parts = inspect(path)
        assert [e for p in parts for e in p.entries] == listed
        # Parts follow each other without overlapping (NULs between them aside).
        assert all(p.size > 0 for p in parts)
        assert all(a.offset + a.size <= b.offset for a, b in itertools.pairwise(parts))
    # Both walk the file the same way: refused by one, refused by the other.
    assert (caught.error is None) == (listed is not None)
    return listed


# --------------------------------------------------------------------------------------------
# Found by fuzzing, pinned


def _header(namesize: int, filesize: int, mode: int = stat.S_IFREG | 0o644) -> bytes:
    fields = (1, mode, 0, 0, 1, 0, filesize, 0, 0, 0, 0, namesize, 0)
    return b"070701" + b"".join(b"%08X" % v for v in fields)


def _zeros_gzip(head: bytes, mib: int) -> bytes:
    """`head` and `mib` MiB of NULs as one gzip stream (a few hundred bytes per MiB)."""
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = gz.compress(head)
    zeros = bytes(1 << 20)
    for _ in range(mib):
        out += gz.compress(zeros)
    return out + gz.flush()


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (_header(0xFFFFFFFF, 0), r"namesize 4294967295 is longer than PATH_MAX \(4096\)"),
        (_header(4097, 0), r"namesize 4097 is longer than PATH_MAX \(4096\)"),
        (
            _header(2, 0xFFFFFFF0, stat.S_IFLNK | 0o777) + b"a\0",
            r"'a': symlink target of 4294967280 bytes is longer than PATH_MAX \(4096\)",
        ),
    ],
)
def test_huge_names_in_a_compressed_stream_are_refused_at_once(
    head: bytes, message: str, tmp_path: Path
) -> None:
    """A name size of 4 GiB made the reader collect the whole decompressed stream in memory,
    by copying its buffer again for every MiB: 128 MiB of NULs (600 kB of gzip) took 13 s,
    1 GiB most of an hour. The kernel never reads such a name (init/initramfs.c do_header:
    ``name_len > PATH_MAX`` skips the entry), nor a symlink target longer than PATH_MAX."""
    path = tmp_path / "bomb.cpio.gz"
    path.write_bytes(_zeros_gzip(head, 64))
    at = re.escape(f"{path}: offset 0 (gzip stream), decompressed offset 0: ")
    with pytest.raises(CpioError, match=f"^{at}{message}"):
        inspect(path)


def test_a_name_of_path_max_bytes_is_read(tmp_path: Path) -> None:
    name = "d/" + "n" * 4093  # 4095 bytes and the NUL: exactly PATH_MAX
    raw = newc_header(name, ino=1, mode=stat.S_IFREG | 0o644) + newc_header(TRAILER, ino=0, mode=0)
    path = tmp_path / "long.cpio"
    path.write_bytes(raw)
    assert [e.name for e in entries(path)] == [name]


# --------------------------------------------------------------------------------------------
# Arbitrary and damaged inputs: CpioError and nothing else


@pytest.fixture(scope="module")
def tree(scratch: Path) -> Path:
    """A small root: folders, files of awkward sizes, a symlink, hard links, a FIFO."""
    root = scratch / "tree"
    (root / "bin").mkdir(parents=True)
    (root / "etc" / "deep" / "er").mkdir(parents=True)
    (root / "init").write_bytes(b"#!/bin/sh\nexec sh\n")
    (root / "init").chmod(0o755)
    (root / "empty").write_bytes(b"")
    for size in (1, 3, 511, 513):
        (root / "etc" / f"f{size}").write_bytes(
            bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        )
    (root / "etc" / "deep" / "er" / "name with spaces é").write_text("ü")
    os.link(root / "etc" / "f3", root / "bin" / "hard")
    (root / "bin" / "sh").symlink_to("../init")
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture(scope="module")
def archives(tree: Path, scratch: Path) -> dict[str, bytes]:
    """Raw archives of `tree` as GNU cpio (newc and crc) and our writer make them."""
    names = subprocess.run(
        ["find", "."], cwd=tree, capture_output=True, check=True, text=True
    ).stdout
    out = {}
    for fmt in ("newc", "crc"):
        out[fmt] = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", fmt],
            cwd=tree,
            input=names.encode(),
            capture_output=True,
            check=True,
        ).stdout
    ours = scratch / "ours.cpio"
    init_cpio_from_dir(tree, ours, source_date_epoch=0)
    out["ours"] = ours.read_bytes()
    return out


def cpio_regions(blob: bytes) -> list[tuple[int, int]]:
    """Headers (name included) of the first members, then the whole file."""
    regions: list[tuple[int, int]] = []
    at = blob.find(b"07070")
    while at >= 0 and len(regions) < 12:
        regions.append((at, at + HEADER_SIZE + 16))
        at = blob.find(b"07070", at + 6)
    return [*regions, (0, len(blob))]


def cpio_resize(out: bytearray, pos: int, delta: int) -> None:
    """Grow or shrink the namesize or filesize of the member whose name or data holds `pos`."""
    head = out.rfind(b"07070", 0, pos + 1)
    if head < 0 or head + HEADER_SIZE > len(out):
        return
    try:
        namesize = int(out[head + 94 : head + 102], 16)
        filesize = int(out[head + 54 : head + 62], 16)
    except ValueError:
        return
    data = head + HEADER_SIZE + namesize + pad4(HEADER_SIZE + namesize)
    field, value = (94, namesize + delta) if pos < data else (54, filesize + delta)
    if 0 <= value <= 0xFFFFFFFF:
        out[head + field : head + field + 8] = b"%08X" % value


# Header fields as ASCII hex (offset 6 + 8 * field), with values at every edge.
_hex = st.sampled_from(
    [b"FFFFFFFF", b"00000000", b"00001000", b"00001001", b"7FFFFFFF", b"0000000g", b"-0000001",
     b" 0000001", b"0x000001", b"000000+1", b"000041ED", b"0000A1FF", b"00008180", b"000021B6"]
) | st.integers(0, 0xFFFFFFFF).map(lambda v: b"%08X" % v)  # fmt: skip
HEADER_FIELD = st.builds(
    Mutation, st.just("overwrite"), st.integers(0, 11), st.integers(0, 12).map(lambda j: 6 + 8 * j),
    data=_hex,
)  # fmt: skip
CPIO_INSERTS = (
    b"070701",
    b"070702",
    b"070707",
    b"TRAILER!!!\0",
    b"\0\0\0\0",
    b"\x1f\x8b\x08",
    b"\xfd7zXZ\0",
    b"\x28\xb5\x2f\xfd",
    b"\x02\x21\x4c\x18",
    b"\x89LZO\0\r\n\x1a\n",
    b"BZh",
    b"\x5d\0\0",
)
_kind = st.none() | st.sampled_from(KINDS)


@FUZZ
@given(
    blob=st.binary(max_size=1500)
    | st.builds(lambda m, b: m + b, st.sampled_from(CPIO_INSERTS), st.binary(max_size=600))
)
def test_arbitrary_files_raise_only_cpio_error(scratch: Path, blob: bytes) -> None:
    with _Written(scratch, blob) as path:
        read_everything(path)


@FUZZ
@given(data=st.data())
def test_damaged_archives_raise_only_cpio_error(
    archives: dict[str, bytes], scratch: Path, data: st.DataObject
) -> None:
    """Damage the archive, then maybe compress it: the decompressed data is what is bad."""
    name = data.draw(st.sampled_from(sorted(archives)), label="archive")
    edits = data.draw(mutations(CPIO_INSERTS, [HEADER_FIELD]), label="mutations")
    kind = data.draw(_kind, label="compression")
    blob = compress(mutate(archives[name], edits, cpio_regions, cpio_resize), kind)
    with _Written(scratch, blob) as path:
        read_everything(path)


@FUZZ
@given(data=st.data())
def test_damaged_compressed_streams_raise_only_cpio_error(
    archives: dict[str, bytes], scratch: Path, data: st.DataObject
) -> None:
    """Compress the archive, then damage the stream (and what may follow it)."""
    name = data.draw(st.sampled_from(sorted(archives)), label="archive")
    kind = data.draw(st.sampled_from(KINDS), label="compression")
    tail = data.draw(st.sampled_from([b"", b"\0\0\0\0", archives["newc"], b"junk"]), label="tail")
    stream = compress(archives[name], kind) + tail
    edits = data.draw(mutations(CPIO_INSERTS), label="mutations")
    whole = [(0, len(stream)), (0, min(len(stream), 32))]  # anywhere, or in the header
    with _Written(scratch, mutate(stream, edits, lambda b: whole)) as path:
        read_everything(path)


# --------------------------------------------------------------------------------------------
# Concatenation of valid parts


@dataclass(frozen=True)
class Member:
    name: str
    mode: int
    data: bytes  # file data, or the symlink target
    uid: int
    gid: int
    mtime: int
    ino: int

    def encode(self) -> bytes:
        size = len(self.data) if stat.S_ISREG(self.mode) or stat.S_ISLNK(self.mode) else 0
        head = newc_header(
            self.name,
            ino=self.ino,
            mode=self.mode,
            uid=self.uid,
            gid=self.gid,
            mtime=self.mtime,
            filesize=size,
        )
        body = self.data[:size]
        return head + body + b"\0" * pad4(size)

    def seen(self) -> tuple[object, ...]:
        """What `entries` must report for this member."""
        data_member = stat.S_ISREG(self.mode) or stat.S_ISLNK(self.mode)
        size = len(self.data) if data_member else 0
        target = self.data.decode() if stat.S_ISLNK(self.mode) else None
        return (self.name, self.mode, self.uid, self.gid, self.mtime, self.ino, size, target)


def seen(entry: Entry) -> tuple[object, ...]:
    return (entry.name, entry.mode, entry.uid, entry.gid, entry.mtime, entry.ino, entry.size,
            entry.target)  # fmt: skip


_u32 = st.integers(0, 0xFFFFFFFF)
_name = st.text(
    st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=40
).filter(lambda n: n != TRAILER)


@st.composite
def members(draw: st.DrawFn) -> Member:
    kind = draw(
        st.sampled_from([stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFIFO])
    )
    if kind == stat.S_IFLNK:
        data = draw(st.from_regex(r"[a-z./]{1,50}", fullmatch=True)).encode()
    elif kind == stat.S_IFREG:
        data = draw(st.binary(max_size=1500))
    else:
        data = b""
    perm = draw(st.integers(0, 0o7777))
    return Member(draw(_name), kind | perm, data, draw(_u32), draw(_u32), draw(_u32), draw(_u32))


@dataclass(frozen=True)
class PartSpec:
    members: tuple[Member, ...]
    kind: str | None
    leading_nuls: int  # a multiple of 4 before a raw archive, as check_part allows
    pad512: bool  # the trailer padded to 512 bytes, as GNU cpio does

    def encode(self) -> bytes:
        raw = b"".join(m.encode() for m in self.members) + newc_header(TRAILER, ino=0, mode=0)
        if self.pad512:
            raw += b"\0" * (-len(raw) % 512)
        return b"\0" * self.leading_nuls + compress(raw, self.kind)


parts_specs = st.lists(
    st.builds(
        PartSpec,
        st.lists(members(), max_size=5).map(tuple),
        _kind,
        st.sampled_from([0, 0, 4, 8]),
        st.booleans(),
    ),
    min_size=1,
    max_size=4,
)


@settings(FUZZ, max_examples=scaled(100))
@given(specs=parts_specs)
def test_concat_reads_back_as_its_parts(scratch: Path, specs: list[PartSpec]) -> None:
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        folder = Path(tmp)
        paths = []
        for i, spec in enumerate(specs):
            path = folder / f"part{i}"
            path.write_bytes(spec.encode())
            paths.append(path)
        out = folder / "initrd"
        placed = concat(paths, out)
        memory = io.BytesIO()
        assert concat(paths, memory) == placed
        blob = out.read_bytes()
        assert memory.getvalue() == blob
        assert [seen(e) for e in entries(out)] == [m.seen() for s in specs for m in s.members]
        assert len(inspect(out)) == len(specs)
        for part, path, spec in zip(placed, paths, specs, strict=True):
            assert blob[part.offset : part.offset + part.size] == path.read_bytes()
            assert blob[part.offset + part.size : part.offset + part.size + part.padding] == bytes(
                part.padding
            )
            assert part.compression == spec.kind


@FUZZ
@given(
    parts=st.lists(
        st.tuples(st.integers(1, 1 << 40), st.none() | st.sampled_from(KINDS)),
        min_size=1,
        max_size=8,
    )
)
def test_layout(parts: Sequence[tuple[int, str | None]]) -> None:
    """Every part starts 4-byte aligned right after the previous one and its padding; an lz4
    stream followed by anything ends with the 4 NULs that stop unlz4."""
    placed = layout([(Path(f"p{i}"), size, kind) for i, (size, kind) in enumerate(parts)])
    offset = 0
    for i, (part, (size, kind)) in enumerate(zip(placed, parts, strict=True)):
        assert (part.offset, part.size, part.compression) == (offset, size, kind)
        assert part.offset % 4 == 0
        lz4_stop = 4 if kind == "lz4" and i + 1 < len(parts) else 0
        assert part.padding == pad4(size) + lz4_stop
        offset += size + part.padding
