"""newc read/write and initrd concatenation, cross-checked with GNU cpio and Debian's compressors.

The kernel's rules (docs/formats.md, "How Linux reads the sequence", and init/initramfs.c) these
tests pin down: a raw archive must start 4-byte aligned from the start of the whole initrd, NULs
between parts are skipped, a compressed part is exactly one stream of a format the kernel knows by
its magic, and a later part's file replaces an earlier one's.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from overrided import cpio
from overrided.cpio import CpioError

# --------------------------------------------------------------------------------------------
# Fixtures: a small root with every entry type, archived by us and by GNU cpio


def make_tree(root: Path) -> Path:
    """A folder with a dir, files (one executable), a symlink, a hard link pair, odd names."""
    (root / "etc" / "conf.d").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "etc" / "hostname").write_text("board\n")
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "etc" / "conf.d" / "a b@c=ü.conf").write_bytes(b"x" * 4097)  # odd name, odd size
    (root / "etc" / "empty").write_bytes(b"")
    (root / "bin" / "sh").symlink_to("tool")
    os.link(root / "etc" / "hostname", root / "etc" / "hostname.hard")
    (root / ("d" * 200)).write_bytes(b"long name")
    return root


def gnu_list(archive: Path, *extra: str) -> list[str]:
    """Names as GNU ``cpio -t`` lists them (first archive only)."""
    out = subprocess.run(
        ["cpio", "-t", "--quiet", *extra], stdin=archive.open("rb"), capture_output=True, check=True
    ).stdout
    return [os.fsdecode(line) for line in out.splitlines()]


def gnu_extract(archive: Path, dest: Path) -> None:
    dest.mkdir()
    subprocess.run(
        ["cpio", "-i", "-d", "-m", "--quiet", "--no-absolute-filenames"],
        stdin=archive.open("rb"),
        cwd=dest,
        check=True,
    )


def gnu_archive(tree: Path, out: Path, fmt: str = "newc") -> Path:
    names = subprocess.run(
        ["find", "."], cwd=tree, capture_output=True, check=True
    ).stdout.splitlines()
    names = sorted(n for n in names if n != b".")
    with out.open("wb") as f:
        subprocess.run(
            ["cpio", "-o", "-H", fmt, "--quiet"],
            input=b"\n".join(names) + b"\n",
            cwd=tree,
            stdout=f,
            check=True,
        )
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree")


@pytest.fixture
def ours(tree: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ours.cpio"
    cpio.init_cpio_from_dir(tree, out)
    return out


def names(path: Path) -> list[str]:
    return [e.name for e in cpio.entries(path)]


# --------------------------------------------------------------------------------------------
# Pure format functions


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"070701" + b"0" * 10, None),
        (b"070702" + b"0" * 10, None),
        (b"\x1f\x8b\x08\x00", "gzip"),
        (b"\x1f\x9e\x00", "gzip"),
        (b"BZh91AY&SY", "bzip2"),
        (b"\x5d\x00\x00\x80\x00", "lzma"),
        (b"\xfd7zXZ\x00\x00\x01", "xz"),
        (b"\x89LZO\x00\r\n\x1a\n\x10", "lzo"),
        (b"\x02\x21\x4c\x18\x00", "lz4"),
        (b"\x28\xb5\x2f\xfd\x04", "zstd"),
    ],
)
def test_compression_of_knows_the_kernels_magics(head: bytes, kind: str | None) -> None:
    assert cpio.compression_of(head) == kind


@pytest.mark.parametrize(
    "head",
    [
        b"070707" + b"0" * 10,  # old portable ASCII format: the kernel only takes newc
        b"\x04\x22\x4d\x18",  # lz4 *frame* format: the kernel only has the legacy decoder
        b"\xc7\x71",  # binary cpio
        b"\x1f\x8b\x07",  # gzip magic with a method other than deflate
        b"PK\x03\x04",
        b"",
    ],
)
def test_compression_of_rejects_what_the_kernel_cannot_unpack(head: bytes) -> None:
    with pytest.raises(CpioError, match="unknown format"):
        cpio.compression_of(head)


def valid_header(**fields: int) -> bytes:
    return cpio.newc_header("x", ino=1, mode=0o100644, **fields)[:110]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (valid_header()[:60], r"truncated header \(60 of 110 bytes\)"),
        (b"070703" + valid_header()[6:], "bad magic"),
        (valid_header()[:14] + b"0000z644" + valid_header()[22:], "field mode is not 8 hex"),
        (valid_header()[:94] + b"00000000" + valid_header()[102:], "namesize is 0"),
    ],
)
def test_parse_header_names_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cpio.parse_header(raw)


def test_newc_header_layout_matches_the_format() -> None:
    raw = cpio.newc_header("ab", ino=721, mode=0o40755, nlink=2, mtime=0x5F5E100)
    assert raw[:6] == b"070701"
    assert raw[6:14] == b"000002D1"  # ino
    assert raw[14:22] == b"000041ED"  # mode
    assert raw[94:102] == b"00000003"  # namesize counts the NUL
    assert raw[110:113] == b"ab\0"
    assert len(raw) == 116 and len(raw) % 4 == 0


def test_newc_header_rejects_values_beyond_32_bits() -> None:
    with pytest.raises(CpioError, match="does not fit"):
        cpio.newc_header("big", ino=1, mode=0o100644, filesize=1 << 32)


# --------------------------------------------------------------------------------------------
# Cross-checks with GNU cpio, both ways


def test_gnu_cpio_lists_and_extracts_what_we_write(tree: Path, ours: Path, tmp_path: Path) -> None:
    expected = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*"))
    assert gnu_list(ours) == expected  # C sort order: parents before children
    dest = tmp_path / "x"
    gnu_extract(ours, dest)
    for p in tree.rglob("*"):
        q = dest / p.relative_to(tree)
        assert stat.S_IFMT(q.lstat().st_mode) == stat.S_IFMT(p.lstat().st_mode), p
        assert stat.S_IMODE(q.lstat().st_mode) == stat.S_IMODE(p.lstat().st_mode), p
        if p.is_symlink():
            assert os.readlink(q) == os.readlink(p)
        elif p.is_file():
            assert q.read_bytes() == p.read_bytes(), p
    # The hard link pair stays one file; the data travels with the last name, as GNU cpio does.
    assert (dest / "etc/hostname").stat().st_ino == (dest / "etc/hostname.hard").stat().st_ino
    hard = {e.name: e for e in cpio.entries(ours) if e.name.startswith("etc/hostname")}
    assert hard["etc/hostname"].nlink == hard["etc/hostname.hard"].nlink == 2
    assert hard["etc/hostname"].ino == hard["etc/hostname.hard"].ino
    assert (hard["etc/hostname"].size, hard["etc/hostname.hard"].size) == (0, 6)


def test_our_archive_has_uid_gid_0_and_gen_init_cpio_numbering(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    os.chown(tree / "etc" / "hostname", 1234, 5678)
    out = tmp_path / "o.cpio"
    cpio.init_cpio_from_dir(tree, out)
    listed = list(cpio.entries(out))
    assert {(e.uid, e.gid) for e in listed} == {(0, 0)}
    assert {(e.devmajor, e.devminor) for e in listed} == {(3, 1)}
    assert min(e.ino for e in listed) == 721
    assert out.stat().st_size % 512 == 0  # trailer padded like gen_init_cpio and GNU cpio


@pytest.mark.parametrize("fmt", ["newc", "crc"])
def test_we_read_what_gnu_cpio_writes(tree: Path, tmp_path: Path, fmt: str) -> None:
    archive = gnu_archive(tree, tmp_path / f"gnu.{fmt}", fmt)
    listed = list(cpio.entries(archive))
    assert [e.name for e in listed] == gnu_list(archive)
    by_name = {e.name: e for e in listed}
    assert by_name["bin/sh"].target == "tool"
    assert stat.S_ISLNK(by_name["bin/sh"].mode)
    assert by_name["etc/conf.d/a b@c=ü.conf"].size == 4097
    assert stat.S_IMODE(by_name["bin/tool"].mode) == 0o755
    (part,) = cpio.inspect(archive)
    assert part.compression is None and part.offset == 0


def test_a_raw_archive_is_listed_without_reading_its_file_data(tmp_path: Path) -> None:
    """A modules CPIO is hundreds of MB between a few thousand headers: listing it (for the
    initrd warnings, at every build) reads the headers and names, and seeks past the data."""
    tree = tmp_path / "tree"
    (tree / "lib" / "modules").mkdir(parents=True)
    for i in range(8):
        (tree / "lib" / "modules" / f"m{i}.ko").write_bytes(os.urandom(4 << 20))
    archive = tmp_path / "modules.cpio"
    subprocess.run(
        f"find . | LC_ALL=C sort | cpio -o -H newc --quiet > {archive}",
        shell=True,
        cwd=tree,
        check=True,
    )

    def read_so_far() -> int:  # bytes this process got from read(2)/pread(2), page cache or not
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("rchar:")).split()[1])

    before = read_so_far()
    (part,) = cpio.inspect(archive)
    read = read_so_far() - before
    names = sorted(e.name for e in part.entries)
    assert names == sorted(gnu_list(archive)) and len(names) == 11
    assert [e.size for e in part.entries if e.name.endswith(".ko")] == [4 << 20] * 8
    assert read < 256 << 10, f"read {read} bytes of a {archive.stat().st_size}-byte archive"


def test_we_read_the_kernels_gen_init_cpio_layout(tmp_path: Path) -> None:
    """Bytes laid out by hand the way usr/gen_init_cpio.c writes them for a default_cpio_list.

    (dir /dev 0755, nod /dev/console 0600 c 5 1, dir /root 0700, then a file and a symlink;
    inodes from 721, devmajor 3 / devminor 1, trailer padded to 512.)
    """

    def hdr(name: str, ino: int, mode: int, size: int, nlink: int, rdev: tuple[int, int]) -> bytes:
        fields = [ino, mode, 0, 0, nlink, 0, size, 3, 1, rdev[0], rdev[1], len(name) + 1, 0]
        raw = b"070701" + b"".join(b"%08X" % v for v in fields) + name.encode() + b"\0"
        return raw + b"\0" * (-len(raw) % 4)

    blob = b"".join(
        [
            hdr("dev", 721, 0o40755, 0, 2, (0, 0)),
            hdr("dev/console", 722, 0o20600, 0, 1, (5, 1)),
            hdr("root", 723, 0o40700, 0, 2, (0, 0)),
            hdr("init", 724, 0o100755, 5, 1, (0, 0)) + b"hello\0\0\0",
            hdr("sh", 725, 0o120777, 4, 1, (0, 0)) + b"init",
            hdr("TRAILER!!!", 0, 0, 0, 1, (0, 0)),
        ]
    )
    archive = tmp_path / "gen_init_cpio.cpio"
    archive.write_bytes(blob + b"\0" * (-len(blob) % 512))
    listed = list(cpio.entries(archive))
    assert (
        [e.name for e in listed]
        == gnu_list(archive)
        == ["dev", "dev/console", "root", "init", "sh"]
    )
    console = listed[1]
    assert stat.S_ISCHR(console.mode) and (console.rdevmajor, console.rdevminor) == (5, 1)
    assert listed[4].target == "init"


def test_device_nodes_and_fifos_survive_a_round_trip_through_gnu_cpio(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    os.mknod(root / "dev" / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    os.mknod(root / "dev" / "vda", 0o660 | stat.S_IFBLK, os.makedev(254, 0))
    os.mkfifo(root / "dev" / "fifo", 0o644)
    out = tmp_path / "dev.cpio"
    cpio.init_cpio_from_dir(root, out)
    dest = tmp_path / "x"
    gnu_extract(out, dest)
    assert os.major((dest / "dev/console").lstat().st_rdev) == 5
    assert stat.S_ISBLK((dest / "dev/vda").lstat().st_mode)
    assert os.minor((dest / "dev/vda").lstat().st_rdev) == 0
    assert stat.S_ISFIFO((dest / "dev/fifo").lstat().st_mode)


# --------------------------------------------------------------------------------------------
# Compressed parts: written by us, read by the real tools, and the other way round

TOOL_DECODE = {
    "gzip": ["gzip", "-dc"],
    "bzip2": ["bzip2", "-dc"],
    "xz": ["xz", "-dc"],
    "lzma": ["xz", "--format=lzma", "-dc"],
    "lzo": ["lzop", "-dc"],
    "lz4": ["lz4", "-dc"],
    "zstd": ["zstd", "-dc"],
}
TOOL_ENCODE = {
    "gzip": ["gzip", "-9n"],
    "bzip2": ["bzip2", "-9"],
    "xz": ["xz", "--check=crc32", "--lzma2=dict=1MiB"],  # as kbuild's cmd_xzkern
    "lzma": ["xz", "--format=lzma", "-9"],
    "lzo": ["lzop", "-9"],
    "lz4": ["lz4", "-l", "-9"],  # legacy frame, as kbuild's cmd_lz4
    "zstd": ["zstd", "-19"],
}


@pytest.mark.parametrize("kind", cpio.COMPRESSIONS)
def test_compressed_archive_decodes_with_the_real_tool(
    kind: str, tree: Path, ours: Path, tmp_path: Path
) -> None:
    out = tmp_path / f"ours.{kind}"
    cpio.init_cpio_from_dir(tree, out, compress=kind)
    plain = subprocess.run(
        TOOL_DECODE[kind], stdin=out.open("rb"), capture_output=True, check=True
    ).stdout
    assert plain == ours.read_bytes()
    (part,) = cpio.inspect(out)
    assert part.compression == kind and part.size == out.stat().st_size
    assert [e.name for e in part.entries] == names(ours)


@pytest.mark.parametrize("kind", cpio.COMPRESSIONS)
def test_we_decode_what_the_real_tool_compresses(kind: str, ours: Path, tmp_path: Path) -> None:
    out = tmp_path / f"tool.{kind}"
    with out.open("wb") as f:
        subprocess.run(TOOL_ENCODE[kind], stdin=ours.open("rb"), stdout=f, check=True)
    (part,) = cpio.inspect(out)
    assert part.compression == kind
    assert [e.name for e in part.entries] == names(ours)


def test_compressed_output_is_reproducible(tree: Path, tmp_path: Path) -> None:
    for kind in cpio.COMPRESSIONS:
        a, b = tmp_path / f"a.{kind}", tmp_path / f"b.{kind}"
        cpio.init_cpio_from_dir(tree, a, compress=kind, source_date_epoch=1)
        cpio.init_cpio_from_dir(tree, b, compress=kind, source_date_epoch=1)
        assert a.read_bytes() == b.read_bytes(), kind


def test_a_compressed_stream_may_hold_several_archives_separated_by_nuls(
    ours: Path, tmp_path: Path
) -> None:
    # What `cat a.cpio b.cpio | gzip` gives; the kernel unpacks both archives of the stream.
    out = tmp_path / "two.gz"
    out.write_bytes(gzip.compress(ours.read_bytes() + b"\0" * 8 + ours.read_bytes(), mtime=0))
    (part,) = cpio.inspect(out)
    assert part.archives == 2
    assert [e.name for e in part.entries] == names(ours) * 2


# --------------------------------------------------------------------------------------------
# Concatenation


def compressed(ours: Path, tmp_path: Path, kind: str, tag: str = "") -> Path:
    out = tmp_path / f"part{tag}.{kind}"
    with out.open("wb") as f:
        subprocess.run(TOOL_ENCODE[kind], stdin=ours.open("rb"), stdout=f, check=True)
    return out


def gzip_with_length_mod4(data: bytes, residue: int, out: Path) -> Path:
    """A gzip member of a chosen length modulo 4 (the FNAME header field absorbs the slack)."""
    base = len(gzip.compress(data, mtime=0))
    name_len = (residue - base - 1) % 4 + 4  # FNAME adds name_len + 1 bytes
    buf = io.BytesIO()
    with gzip.GzipFile(filename="n" * name_len, mode="wb", fileobj=buf, mtime=0) as g:
        g.write(data)
    out.write_bytes(buf.getvalue())
    assert out.stat().st_size % 4 == residue
    return out


@pytest.mark.parametrize(
    "kinds",
    [
        ("raw", "gzip"),
        ("gzip", "raw"),
        ("zstd", "raw"),
        ("raw", "raw"),
        ("xz", "bzip2", "raw"),
        ("lz4", "raw"),  # lz4 legacy has no end mark: needs a zero word after it
        ("lzo", "lzma", "lz4"),
        ("raw", "lz4", "zstd", "gzip", "raw"),
    ],
)
def test_concat_places_every_part_where_the_kernel_finds_it(
    kinds: tuple[str, ...], ours: Path, tmp_path: Path
) -> None:
    parts = [
        ours if k == "raw" else compressed(ours, tmp_path, k, str(i)) for i, k in enumerate(kinds)
    ]
    out = tmp_path / "initrd"
    placed = cpio.concat(parts, out)
    assert [p.compression or "raw" for p in placed] == list(kinds)
    assert all(p.offset % 4 == 0 for p in placed)
    assert out.stat().st_size == sum(p.size + p.padding for p in placed)
    found = cpio.inspect(out)
    assert [(p.offset, p.compression) for p in found] == [(p.offset, p.compression) for p in placed]
    for part in found:
        assert [e.name for e in part.entries] == names(ours)


@pytest.mark.parametrize(
    ("parts", "placed"),
    [
        ([(100, None)], [(0, 0)]),
        ([(101, "gzip"), (100, None)], [(0, 3), (104, 0)]),  # the raw archive starts aligned
        ([(104, "zstd"), (100, None)], [(0, 0), (104, 0)]),
        ([(102, "lz4"), (8, None)], [(0, 2 + 4), (108, 0)]),  # lz4 legacy: and a zero word
        ([(104, "lz4"), (8, "gzip")], [(0, 4), (108, 0)]),
        ([(8, None), (103, "lz4")], [(0, 0), (8, 1)]),  # the last part needs no end mark
        ([(9, "xz"), (7, "lz4"), (5, "lz4"), (3, None)], [(0, 3), (12, 5), (24, 7), (36, 1)]),
    ],
)
def test_layout_places_each_part_and_its_padding(
    parts: list[tuple[int, str | None]], placed: list[tuple[int, int]]
) -> None:
    paths = [Path(f"part{i}") for i in range(len(parts))]
    got = cpio.layout([(p, size, kind) for p, (size, kind) in zip(paths, parts, strict=True)])
    assert [(g.offset, g.padding) for g in got] == placed
    assert [(g.path, g.size, g.compression) for g in got] == [
        (p, size, kind) for p, (size, kind) in zip(paths, parts, strict=True)
    ]


def test_concat_pads_an_odd_length_gzip_so_the_raw_archive_after_it_is_aligned(
    ours: Path, tmp_path: Path
) -> None:
    odd = gzip_with_length_mod4(ours.read_bytes(), 2, tmp_path / "odd.gz")
    out = tmp_path / "initrd"
    placed = cpio.concat([odd, ours], out)
    assert placed[0].padding == 2 and placed[1].offset == odd.stat().st_size + 2
    assert [p.compression for p in cpio.inspect(out)] == ["gzip", None]


def test_plain_cat_of_an_odd_gzip_and_a_raw_archive_fails_like_the_kernel(
    ours: Path, tmp_path: Path
) -> None:
    # docs/formats.md, "How Linux reads the sequence": the kernel then reports "invalid magic at
    # start of compressed archive".
    odd = gzip_with_length_mod4(ours.read_bytes(), 2, tmp_path / "odd.gz")
    bad = tmp_path / "cat"
    bad.write_bytes(odd.read_bytes() + ours.read_bytes())
    at = odd.stat().st_size
    with pytest.raises(
        CpioError, match=rf"offset {at}: raw archive starts at an offset not a multiple of 4"
    ):
        cpio.inspect(bad)


def test_plain_cat_of_lz4_and_a_raw_archive_runs_the_raw_archive_into_the_lz4_stream(
    ours: Path, tmp_path: Path
) -> None:
    lz4 = compressed(ours, tmp_path, "lz4")
    bad = tmp_path / "cat"
    bad.write_bytes(lz4.read_bytes() + b"\0" * (-lz4.stat().st_size % 4) + ours.read_bytes())
    with pytest.raises(CpioError, match=r"must start with 4 NUL bytes|corrupt lz4"):
        cpio.inspect(bad)


def test_concat_into_an_open_file_and_into_memory(ours: Path, tmp_path: Path) -> None:
    parts = [compressed(ours, tmp_path, "gzip"), ours]
    expected = tmp_path / "by-path"
    cpio.concat(parts, expected)
    with (tmp_path / "by-file").open("wb") as f:
        f.write(b"")  # a file object with a descriptor takes the copy_file_range path
        cpio.concat(parts, f)
    buf = io.BytesIO()
    cpio.concat(parts, buf)
    assert (tmp_path / "by-file").read_bytes() == expected.read_bytes() == buf.getvalue()


def test_concat_rejects_a_bad_part_and_leaves_no_output(ours: Path, tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not an archive\n")
    out = tmp_path / "out" / "initrd"
    out.parent.mkdir()
    with pytest.raises(CpioError, match=rf"{re.escape(str(junk))}: offset 0: not a CPIO archive"):
        cpio.concat([ours, junk], out)
    assert list(out.parent.iterdir()) == []


def test_concat_keeps_an_existing_output_when_a_part_is_bad(ours: Path, tmp_path: Path) -> None:
    out = tmp_path / "initrd"
    out.write_bytes(b"previous")
    with pytest.raises(CpioError):
        cpio.concat([ours, tmp_path / "missing.cpio"], out)
    assert out.read_bytes() == b"previous"


def test_concat_accepts_leading_nuls_and_needs_parts() -> None:
    with pytest.raises(CpioError, match="no parts"):
        cpio.concat([], io.BytesIO())


# --------------------------------------------------------------------------------------------
# Malformed input: every error names the file and the byte offset


def corrupt(ours: Path, tmp_path: Path, case: str) -> tuple[Path, str]:
    data = bytearray(ours.read_bytes())
    first = cpio.parse_header(bytes(data[:110]))
    name_end = 110 + first.namesize - 1
    out = tmp_path / f"bad-{case}"
    entries = list(cpio.entries(ours))
    file_entry = next(e for e in entries if e.name == "etc/conf.d/a b@c=ü.conf")
    if case == "not a cpio":
        out.write_bytes(b"#!/bin/sh\necho hi\n")
        return out, r"offset 0: not a CPIO archive: unknown format"
    if case == "empty":
        out.write_bytes(b"")
        return out, "empty file"
    if case == "truncated header":
        out.write_bytes(bytes(data[:60]))
        return out, r"offset 0: truncated header \(60 of 110 bytes\)"
    if case == "name without NUL":
        data[name_end] = ord("X")
        out.write_bytes(bytes(data))
        return out, rf"offset 0: name of {first.namesize} bytes is not NUL-terminated"
    if case == "size beyond the file":
        at = file_entry.offset
        data[at + 54 : at + 62] = b"7FFFFFFF"
        out.write_bytes(bytes(data))
        return out, rf"offset {at}: 'etc/conf.d/a b@c=ü.conf' claims 2147483647 bytes of data"
    if case in ("bad hex", "bad hex in a later entry"):
        at = entries[0 if case == "bad hex" else 1].offset
        data[at + 14 : at + 22] = b"0000G1ED"
        out.write_bytes(bytes(data))
        return out, rf"offset {at}: field mode is not 8 hex digits"
    if case == "unknown compression after an archive":
        out.write_bytes(bytes(data) + b"\x42\x43\x44\x45junk")
        return out, rf"offset {len(data)}: junk after the last archive: unknown format"
    if case == "missing trailer":
        trailer_at = len(data) - len(bytes(data).rstrip(b"\0"))
        cut = bytes(data).rfind(b"070701")
        out.write_bytes(bytes(data[:cut]))
        assert trailer_at >= 0
        return out, rf"offset {cut}: truncated header \(0 of 110 bytes\)"
    if case == "truncated gzip":
        whole = gzip.compress(bytes(data), mtime=0)
        out.write_bytes(whole[: len(whole) // 2])
        return out, r"offset 0: gzip stream is truncated"
    if case == "corrupt xz":
        xz = subprocess.run(["xz", "-c"], input=bytes(data), capture_output=True).stdout
        broken = bytearray(xz)
        broken[len(xz) // 2] ^= 0xFF
        out.write_bytes(bytes(broken))
        return out, r"offset 0: corrupt xz data"
    if case == "truncated zstd":
        z = subprocess.run(["zstd", "-c"], input=bytes(data), capture_output=True).stdout
        out.write_bytes(z[:-10])
        return out, r"offset 0: zstd stream is truncated|offset 0: zstd block header"
    if case == "gzip of junk":
        out.write_bytes(gzip.compress(b"this is not a cpio archive at all", mtime=0))
        return out, r"offset 0 \(gzip stream\), decompressed offset 0: junk within compressed"
    raise AssertionError(case)


MALFORMED = [
    "not a cpio",
    "empty",
    "truncated header",
    "name without NUL",
    "size beyond the file",
    "bad hex",
    "bad hex in a later entry",
    "unknown compression after an archive",
    "missing trailer",
    "truncated gzip",
    "corrupt xz",
    "truncated zstd",
    "gzip of junk",
]


@pytest.mark.parametrize("case", MALFORMED)
def test_inspect_names_file_and_offset_of_malformed_input(
    case: str, ours: Path, tmp_path: Path
) -> None:
    bad, message = corrupt(ours, tmp_path, case)
    with pytest.raises(CpioError, match=rf"^{re.escape(str(bad))}: {message}"):
        cpio.inspect(bad)


@pytest.mark.parametrize(
    "case", ["not a cpio", "empty", "truncated header", "name without NUL", "bad hex"]
)
def test_concat_refuses_a_part_whose_start_is_malformed(
    case: str, ours: Path, tmp_path: Path
) -> None:
    bad, message = corrupt(ours, tmp_path, case)
    with pytest.raises(CpioError, match=rf"^{re.escape(str(bad))}: {message}"):
        cpio.concat([ours, bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_raw_archive_at_an_unaligned_offset_is_refused(ours: Path, tmp_path: Path) -> None:
    bad = tmp_path / "unaligned"
    bad.write_bytes(b"\0\0" + ours.read_bytes())
    with pytest.raises(
        CpioError, match=rf"^{re.escape(str(bad))}: offset 2: raw archive starts at an offset"
    ):
        cpio.inspect(bad)
    with pytest.raises(
        CpioError, match=rf"^{re.escape(str(bad))}: offset 2: data after leading NULs"
    ):
        cpio.concat([bad], tmp_path / "out")


def test_an_unwritable_output_is_a_cpio_error(ours: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "initrd"
    with pytest.raises(CpioError, match=rf"^{re.escape(str(missing))}: cannot write"):
        cpio.concat([ours], missing)
    with pytest.raises(CpioError, match=rf"^{re.escape(str(missing))}: cannot write"):
        cpio.init_cpio_from_dir(tmp_path, missing)


def test_the_crc_variants_data_checksum_is_checked_like_the_kernel_does(
    tree: Path, tmp_path: Path
) -> None:
    archive = gnu_archive(tree, tmp_path / "gnu.crc", "crc")
    data = bytearray(archive.read_bytes())
    entry = next(e for e in cpio.entries(archive) if e.name == "etc/conf.d/a b@c=ü.conf")
    data[data.index(b"x" * 4097)] = ord("y")  # one byte of that file's data
    bad = tmp_path / "bad.crc"
    bad.write_bytes(bytes(data))
    with pytest.raises(CpioError, match=rf"offset {entry.offset}: .*: bad data checksum"):
        cpio.inspect(bad)
