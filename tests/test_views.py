"""Views are what the materialising functions would have written: byte for byte.

A board's trimmed FIT, signed FIT and initrd are served as views over the build's ingested
blobs (``served.View``): ranges of immutable files and literal bytes. Each view's bytes are
checked here against what ``fit.trim.trim``, ``fit.sign.sign_configuration`` and
``cpio.concat`` write for the same inputs, and with U-Boot's ``dumpimage``. Then the view
itself: its identity, reads at and across piece boundaries, the descriptor table another
process receives, and that rewriting a build's files in place changes no served byte.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overrided import cpio
from overrided.builds import Build, index_build
from overrided.fit import Fit
from overrided.fit.sign import sign_configuration
from overrided.fit.trim import trim
from overrided.fit.verify import verify
from overrided.keys import key_algo, load_signing_key, new_key, public_key_of
from overrided.render import BuildParts, RenderContext, initrd_view
from overrided.served import TABLE_ROW, OpenView, Piece, View
from overrided.store import Blob, Store
from tests.support.builds import (
    RELEASE,
    build_folder,
    init_cpio,
    modules_cpio,
    rewrite_in_place,
)
from tests.support.fits import (
    SampleFit,
    board_dtb,
    dumpimage_list,
    mkimage_fit,
    payload,
    sample_fit,
)

# FIT layouts (mkimage options) and hash nodes: with ``hashes=()`` the trim inserts ``hash-1``.
LAYOUTS: dict[str, dict[str, Any]] = {
    "embedded": {},
    "embedded-no-hashes": {"hashes": ()},
    "external": {"external": True},  # mkimage -E: data-offset after the structure
    "external-no-hashes": {"external": True, "hashes": ()},
    "position": {"external": True, "position": 0x2000},  # mkimage -E -p: data-position
}
CONFIGS = ["conf-a", "conf-b", "conf-c", "conf-soc"]
KEY = "lab"


@dataclass
class Indexed:
    """A sample FIT (as mkimage made it) and the build that holds a copy of it."""

    sample: SampleFit
    build: Build
    store: Store


@pytest.fixture(scope="module", params=list(LAYOUTS))
def indexed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Indexed:
    root = tmp_path_factory.mktemp(request.param)
    sample = sample_fit(root / "sample", **LAYOUTS[request.param])
    store = Store(root / "store")
    build = index_build(build_folder(root / "kernel-builds", "b1", sample.fit), store)
    assert build.usable, build.error
    return Indexed(sample, build, store)


@pytest.fixture
def parts(indexed: Indexed, tmp_path: Path) -> Iterator[BuildParts]:
    """The build's shared parts, as a fresh render context opens them."""
    ctx = RenderContext(store=indexed.store, boards_dir=tmp_path, keys_dir=tmp_path / "keys")
    yield ctx.parts_of(indexed.build)
    ctx.retire(set())


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys") / "keys"
    new_key(folder, KEY)
    return folder


def configurations_listed(fit: Path) -> tuple[list[str], list[str], str | None]:
    """The configurations, images and default that ``dumpimage -l`` lists for ``fit``."""
    listing = dumpimage_list(fit)
    configs = re.findall(r"^ Configuration \d+ \((.+)\)$", listing, re.MULTILINE)
    images = re.findall(r"^ Image \d+ \((.+)\)$", listing, re.MULTILINE)
    default = re.search(r"^ Default Configuration: '(.+)'$", listing, re.MULTILINE)
    return configs, images, default.group(1) if default else None


def literal_bytes(view: View) -> int:
    """How many of the view's bytes are literal (held in memory rather than read from files)."""
    return sum(p.length for p in view.pieces if p.path is None)


# --- trimmed FITs ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_a_trim_view_is_what_trim_writes(
    indexed: Indexed, parts: BuildParts, config: str, tmp_path: Path
) -> None:
    written = tmp_path / "trim.itb"
    with Fit.open(indexed.sample.fit) as fit:  # the build's file, as mkimage wrote it
        size = trim(fit, config, written, add_hashes=True)
        refs = fit.configurations[config].references()
        order = [name for name in fit.images if name in refs]
    view = parts.trimmed(config)
    got = view.read()
    assert got == written.read_bytes()
    assert view.size == size == len(got)
    served = tmp_path / "view.itb"
    served.write_bytes(got)
    assert configurations_listed(served) == ([config], order, config)
    # Ranges of the build's FIT blob, not copies: what is literal is the new header, the
    # structure around the images, hash nodes and the strings.
    assert indexed.build.fit_blob is not None
    assert view.files() == {indexed.build.fit_blob.digest}
    assert literal_bytes(view) < 4096 < view.size - literal_bytes(view)
    assert parts.trimmed(config) is view  # once per build and configuration


@pytest.mark.parametrize("config", ["conf-a", "conf-c"])
def test_a_signed_trim_view_is_what_signing_the_trim_gives(
    indexed: Indexed, parts: BuildParts, keys: Path, config: str, tmp_path: Path
) -> None:
    key = load_signing_key(keys, KEY)
    with Fit.open(indexed.sample.fit) as fit:
        stamp = fit.timestamp  # mkimage's; the signature carries the build's own time
    assert stamp is not None
    plain = parts.trimmed(config)
    expected = sign_configuration(
        plain.read(),
        config,
        key,
        key_name=KEY,
        algo=f"sha256,{key_algo(key)}",
        timestamp=stamp,
    )
    signed = parts.signed(config, KEY, keys)
    assert signed.read() == expected
    assert verify(expected, public_key_of(keys, KEY), config=config).ok
    served = tmp_path / "signed.itb"
    served.write_bytes(expected)
    assert configurations_listed(served)[0] == [config]
    # The signature moves no image: the big ranges of the plain trim are read as they are.
    reused = [p for p in signed.pieces if p.path is not None]
    assert reused and set(reused) <= set(plain.pieces)
    kernel = indexed.sample.kernel.stat().st_size
    assert any(p.length >= kernel for p in reused)  # the kernel's data among them
    assert signed.digest != plain.digest
    assert parts.signed(config, KEY, keys) is signed  # signed once per key file


def configurations_first(sample: SampleFit, out: Path) -> Path:
    """The sample's .its with ``/configurations`` before ``/images``, assembled by mkimage:
    a signature node added to a configuration then moves every image's data."""
    head, rest = sample.its.split("  images {\n", 1)
    images, configs = rest.split("  configurations {\n", 1)
    assert configs.endswith("  };\n};\n")
    its = head + "  configurations {\n" + configs[: -len("};\n")] + "  images {\n" + images + "};\n"
    return mkimage_fit(its, out)


def test_a_signature_that_moves_the_images_is_served_as_signed(tmp_path: Path, keys: Path) -> None:
    sample = sample_fit(tmp_path / "sample")
    fit_path = configurations_first(sample, tmp_path / "sample" / "configs-first.itb")
    with Fit.open(fit_path) as fit:
        assert fit.nodes["/configurations"].begin < fit.nodes["/images"].begin
        stamp = fit.timestamp
    store = Store(tmp_path / "store")
    build = index_build(build_folder(tmp_path / "kernel-builds", "b1", fit_path), store)
    assert build.usable, build.error
    ctx = RenderContext(store=store, boards_dir=tmp_path, keys_dir=keys)
    try:
        parts = ctx.parts_of(build)
        plain = parts.trimmed("conf-a")
        key = load_signing_key(keys, KEY)
        expected = sign_configuration(
            plain.read(), "conf-a", key, key_name=KEY, algo="sha256,rsa2048", timestamp=stamp
        )
        signed = parts.signed("conf-a", KEY, keys)
        # The plain trim's ranges are no longer where the signed FIT has its images.
        assert signed.read() == expected
        assert verify(expected, public_key_of(keys, KEY), config="conf-a").ok
    finally:
        ctx.retire(set())


# --- initrds --------------------------------------------------------------------------------


def gzip_part(raw: Path, out: Path, residue: int | None = None) -> Path:
    """``raw`` gzipped: by the gzip tool, or (``residue``) by Python's gzip with a file name
    long enough to give the member a length of that residue modulo 4."""
    if residue is None:
        with out.open("wb") as f:
            subprocess.run(["gzip", "-9n", "-c", raw], stdout=f, check=True)
        return out
    for name_len in range(1, 5):  # the FNAME field takes name_len + 1 bytes
        buf = io.BytesIO()
        with gzip.GzipFile(filename="n" * name_len, mode="wb", fileobj=buf, mtime=0) as g:
            g.write(raw.read_bytes())
        if len(buf.getvalue()) % 4 == residue:
            out.write_bytes(buf.getvalue())
            return out
    raise AssertionError(f"no gzip member of length {residue} modulo 4")


def lz4_part(raw: Path, out: Path) -> Path:
    """``raw`` compressed by the lz4 tool in the legacy frame, as kbuild's ``cmd_lz4``."""
    with out.open("wb") as f:
        subprocess.run(["lz4", "-l", "-9", "-c", raw], stdout=f, check=True)
    return out


# The compression of each kind of part in ``initrd_parts`` (``None``: a raw archive).
COMPRESSION: dict[str, str | None] = {
    "raw": None,
    "init": None,
    "gzip": "gzip",
    "gzip-1": "gzip",
    "gzip-3": "gzip",
    "lz4": "lz4",
}


@pytest.fixture(scope="module")
def initrd_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Parts of every kind: a modules CPIO raw, gzipped (by the tool, and at lengths of 1 and
    3 modulo 4) and lz4-compressed, and a board's init CPIO."""
    folder = tmp_path_factory.mktemp("parts")
    raw = modules_cpio(folder / f"modules-{RELEASE}-arm64.cpio", RELEASE)
    return {
        "raw": raw,
        "init": init_cpio(folder / "init.cpio", {"init": b"#!/bin/sh\nexec sh\n"}),
        "gzip": gzip_part(raw, folder / "m.cpio.gz"),
        "gzip-1": gzip_part(raw, folder / "m1.cpio.gz", residue=1),
        "gzip-3": gzip_part(raw, folder / "m3.cpio.gz", residue=3),
        "lz4": lz4_part(raw, folder / "m.cpio.lz4"),
    }


@pytest.mark.parametrize(
    "kinds",
    [
        ("raw",),
        ("raw", "init"),
        ("gzip", "init"),
        ("gzip-1", "init"),  # 3 NULs so that the raw archive after it starts aligned
        ("gzip-3", "gzip-1", "init"),
        ("lz4", "init"),  # the legacy lz4 stream ends only at a zero word: 4 more NULs
        ("init", "lz4"),  # ... unless it is the last part
        ("lz4", "gzip-3", "lz4", "raw", "init"),
    ],
)
def test_an_initrd_view_is_what_concat_writes(
    initrd_parts: dict[str, Path], kinds: Sequence[str], tmp_path: Path
) -> None:
    paths = [initrd_parts[k] for k in kinds]
    written = tmp_path / "initrd"
    placed = cpio.concat(paths, written)
    store = Store(tmp_path / "store")
    blobs = [store.ingest(p) for p in paths]
    ctx = RenderContext(store=store, boards_dir=tmp_path, keys_dir=tmp_path / "keys")
    view, _ = initrd_view(blobs, RELEASE, ctx)
    assert view.read() == written.read_bytes()
    assert view.size == written.stat().st_size
    # Read back as the kernel would: every part found, where it was placed, in order.
    served = tmp_path / "served"
    served.write_bytes(view.read())
    found = [(p.offset, p.compression) for p in cpio.inspect(served)]
    assert found == [(p.offset, p.compression) for p in placed]
    assert [c for _, c in found] == [COMPRESSION[k] for k in kinds]
    # Each part is one range of its blob; each padding is one literal run of NULs.
    paddings = sum(1 for p in placed if p.padding)
    assert len(view.pieces) <= len(paths) + paddings
    assert view.files() == {b.digest for b in blobs}
    assert literal_bytes(view) == sum(p.padding for p in placed)
    assert all(p.data.count(0) == p.length for p in view.pieces if p.path is None)
    # Made once per refresh for the same parts.
    assert initrd_view(blobs, RELEASE, ctx)[0] is view


def test_equal_initrd_parts_give_equal_views(initrd_parts: dict[str, Path], tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    one = [store.ingest(initrd_parts[k]) for k in ("gzip-1", "raw")]
    ctx = RenderContext(store=store, boards_dir=tmp_path, keys_dir=tmp_path / "keys")
    fresh = RenderContext(store=store, boards_dir=tmp_path, keys_dir=tmp_path / "keys")
    first = initrd_view(one, RELEASE, ctx)[0]
    assert initrd_view(one, RELEASE, fresh)[0] == first  # another refresh, same view
    swapped = initrd_view(list(reversed(one)), RELEASE, fresh)[0]
    assert swapped.digest != first.digest and swapped.size == first.size


# --- identity -------------------------------------------------------------------------------


@pytest.fixture
def blobs(tmp_path: Path) -> tuple[Blob, Blob]:
    store = Store(tmp_path / "store")
    return store.put_bytes(bytes(range(64))), store.put_bytes(bytes(range(64, 128)))


def base(a: Blob, b: Blob) -> list[Piece]:
    """The pieces the identity table changes one at a time."""
    return [a.range(0, 10), Piece.literal(b"head"), b.range(20, 5)]


CHANGES: dict[str, Callable[[Blob, Blob], list[Piece]]] = {
    "range-offset": lambda a, b: [a.range(1, 10), Piece.literal(b"head"), b.range(20, 5)],
    "range-length": lambda a, b: [a.range(0, 9), Piece.literal(b"head"), b.range(20, 5)],
    "range-of-other-blob": lambda a, b: [b.range(0, 10), Piece.literal(b"head"), b.range(20, 5)],
    "literal-bytes": lambda a, b: [a.range(0, 10), Piece.literal(b"HEAD"), b.range(20, 5)],
    "literal-length": lambda a, b: [a.range(0, 10), Piece.literal(b"head!"), b.range(20, 5)],
    "order": lambda a, b: [Piece.literal(b"head"), a.range(0, 10), b.range(20, 5)],
    "piece-dropped": lambda a, b: [a.range(0, 10), Piece.literal(b"head")],
    "piece-added": lambda a, b: [*base(a, b), Piece.literal(b"\0")],
}


def test_equal_pieces_give_the_same_identity(blobs: tuple[Blob, Blob]) -> None:
    one, two = View(tuple(base(*blobs))), View(tuple(base(*blobs)))
    assert one == two and one.digest == two.digest and len(one.digest) == 64
    assert one.read() == two.read() == bytes(range(10)) + b"head" + bytes(range(84, 89))
    # Empty pieces are no pieces.
    padded = View((Piece.literal(b""), *base(*blobs), blobs[0].range(3, 0)))
    assert padded == one


@pytest.mark.parametrize("change", list(CHANGES))
def test_any_changed_piece_changes_the_identity(blobs: tuple[Blob, Blob], change: str) -> None:
    assert View(tuple(CHANGES[change](*blobs))).digest != View(tuple(base(*blobs))).digest


def test_whole_files_and_literal_bytes_are_named_by_their_content(
    blobs: tuple[Blob, Blob],
) -> None:
    a, _ = blobs
    assert View.of_file(a.path, a.size, a.digest).digest == a.digest
    assert a.view().read() == a.path.read_bytes()
    assert View.of_bytes(b"script").digest == hashlib.sha256(b"script").hexdigest()
    assert View.of_bytes(b"script").files() == frozenset()  # keeps no blob alive


def test_a_piece_must_be_what_it_says() -> None:
    with pytest.raises(ValueError, match="literal piece of 2 bytes claims 3"):
        View((Piece(3, data=b"ab"),))
    with pytest.raises(ValueError, match="starts at -1"):
        View((Piece(3, Path("f"), -1),))


# --- reads by offset ------------------------------------------------------------------------


def sample_view(folder: Path, shape: str) -> tuple[View, bytes]:
    """A view of one of three shapes over two files and literal bytes, and the bytes it stands
    for, joined by hand: ``pieced`` (ranges of both files at offsets inside them, literals
    between, one of one byte), ``range`` (one range inside a file) and ``whole`` (a whole
    file: the one-``preadv`` shortcut)."""
    a, b = folder / "a", folder / "b"
    a.write_bytes(payload(100, 5))
    b.write_bytes(payload(31, 6))
    if shape == "whole":
        return View.of_file(b, 31), payload(31, 6)
    if shape == "range":
        return View((Piece(31, a, 40),)), payload(100, 5)[40:71]
    pieces = (
        Piece(7, a, 3),
        Piece.literal(b"LITER"),
        Piece(10, b, 20),
        Piece.literal(b"!"),
        Piece(8, a, 90),
    )
    joined = payload(100, 5)[3:10] + b"LITER" + payload(31, 6)[20:30] + b"!"
    return View(pieces), joined + payload(100, 5)[90:98]


SHAPES = ["pieced", "range", "whole"]


def boundary_offsets(view: View) -> list[int]:
    """0, and each piece boundary minus one, itself and plus one (the last one is the end)."""
    ends = [sum(p.length for p in view.pieces[: i + 1]) for i in range(len(view.pieces))]
    return sorted({0, *(e + d for e in ends for d in (-1, 0, 1))})


# Buffer sets: empty, one byte, sizes meeting piece lengths, more than the whole view.
BUFFERS: list[tuple[int, ...]] = [
    (0,),
    (1,),
    (3,),
    (5,),
    (7, 5),
    (2, 0, 9),
    (1,) * 12,
    (31,),
    (64,),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sizes", BUFFERS, ids=lambda s: "+".join(map(str, s)))
def test_readinto_across_piece_boundaries(
    tmp_path: Path, shape: str, sizes: tuple[int, ...]
) -> None:
    view, joined = sample_view(tmp_path, shape)
    assert view.size == len(joined) == 31
    with view.open() as opened:
        for offset in boundary_offsets(view):
            bufs = [bytearray(n) for n in sizes]
            got = opened.readinto([memoryview(b) for b in bufs], offset)
            want = joined[offset : offset + sum(sizes)]
            assert got == len(want), (offset, sizes)
            assert b"".join(bufs)[:got] == want, (offset, sizes)
            assert opened.read_at(offset, sum(sizes)) == want, (offset, sizes)


@pytest.mark.parametrize("shape", SHAPES)
def test_pieces_of_a_range_are_the_ranges_it_spans(tmp_path: Path, shape: str) -> None:
    view, joined = sample_view(tmp_path, shape)
    with view.open() as opened:
        for first in boundary_offsets(view):
            for count in (0, 1, 6, 11, 64):
                out = b""
                for part in opened.pieces(first, count):
                    if isinstance(part, bytes):
                        out += part
                    else:
                        fd, offset, length = part
                        assert length > 0
                        out += os.pread(fd, length, offset)
                assert out == joined[first : first + count], (first, count)


def test_readinto_stops_at_the_end_of_a_view_of_a_files_first_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(payload(100, 7))
    view = View((Piece(10, path, 0),))
    with view.open() as opened:
        buf = bytearray(50)
        assert opened.readinto([memoryview(buf)], 0) == 10
        assert opened.readinto([memoryview(buf)], 20) == 0


def test_a_view_handed_to_another_process_reads_the_same(tmp_path: Path) -> None:
    view, joined = sample_view(tmp_path, "pieced")
    opened = view.open()
    with pytest.raises(ValueError, match="literal piece"):
        opened.table()  # literal bytes have no descriptor yet
    handed = opened.handoff()
    table = handed.table()
    assert len(table) == TABLE_ROW.size * len(view.pieces)
    # Descriptors and table over a Unix socket, as the TFTP launcher sends them.
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right, handed:
        socket.send_fds(left, [table], handed.fds)
        data, fds, _, _ = socket.recv_fds(right, len(table), len(handed.fds))
        assert data == table
    with OpenView.from_table(fds, data) as received:
        assert received.size == len(joined)
        assert received.read_at(0, received.size) == joined
        for offset in boundary_offsets(view):
            assert received.read_at(offset, 9) == joined[offset : offset + 9]


def test_a_view_of_files_only_is_handed_off_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(payload(64, 8))
    opened = View((Piece(10, path, 5), Piece(20, path, 30))).open()
    with opened:
        assert opened.handoff() is opened
        rows = list(TABLE_ROW.iter_unpack(opened.table()))
        assert rows == [(0, 10, 0, 5), (10, 20, 0, 30)]  # one descriptor for both ranges


@pytest.mark.parametrize(
    "rows",
    [
        [(0, 10, 0, 0), (11, 5, 0, 0)],  # a gap
        [(0, 10, 0, 0), (9, 5, 0, 0)],  # an overlap
        [(5, 10, 0, 0)],  # not from the start
        [(0, 0, 0, 0)],  # empty
        [(0, 10, 1, 0)],  # no such descriptor
        [(0, 10, -1, 0)],
        [(0, 10, 0, -4)],  # before the file's start
    ],
)
def test_a_table_that_does_not_follow_on_is_refused(
    tmp_path: Path, rows: list[tuple[int, int, int, int]]
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 64)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match="does not follow on"):
            OpenView.from_table([fd], b"".join(TABLE_ROW.pack(*r) for r in rows))
    finally:
        os.close(fd)


# --- builds rewritten in place --------------------------------------------------------------


def test_rewriting_a_builds_files_in_place_changes_no_served_byte(
    tmp_path: Path, initrd_parts: dict[str, Path]
) -> None:
    sample = sample_fit(tmp_path / "sample")
    store = Store(tmp_path / "store")
    folder = build_folder(tmp_path / "kernel-builds", "b1", sample.fit)
    build = index_build(folder, store)
    assert build.usable, build.error
    kernel_build = tmp_path / "kernel-builds" / "img"
    (kernel_build / "dts").mkdir(parents=True)
    (kernel_build / "Image").write_bytes(payload(8192, 9))
    board_dtb(kernel_build / "dts" / "board.dtb", ["v,board-k"])
    plain = index_build(kernel_build, store)
    assert plain.usable and plain.kernel_blob is not None, plain.error
    ctx = RenderContext(store=store, boards_dir=tmp_path, keys_dir=tmp_path / "keys")
    parts = ctx.parts_of(build)
    views = {
        "trim": parts.trimmed("conf-a"),
        "dtb": parts.image("fdt-a"),
        "initrd": initrd_view(list(build.module_blobs), RELEASE, ctx)[0],
        "kernel": plain.kernel_blob.view(),
    }
    before = {name: view.read() for name, view in views.items()}
    opened = {name: view.open() for name, view in views.items()}
    try:
        # What the next `make` does: the same files opened with O_TRUNC and written again.
        rewrite_in_place(folder / "image.fit", b"\xd0\x0d\xfe\xed" + b"\0" * 200)
        rewrite_in_place(build.modules[0], initrd_parts["gzip"].read_bytes())
        rewrite_in_place(kernel_build / "Image", b"\0" * 50)
        for name, view in views.items():
            assert view.read() == before[name], name
            assert opened[name].read_at(0, view.size) == before[name], name
    finally:
        for o in opened.values():
            o.close()
        ctx.retire(set())
    # The blobs are untouched: each still holds the bytes its name says.
    for view in views.values():
        for digest in view.files():
            assert hashlib.sha256(store.path_of(digest).read_bytes()).hexdigest() == digest
