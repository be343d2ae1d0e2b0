"""FIT/DTB parsing, matching, trimming and hash insertion under fuzzing.

Inputs are real FITs made by mkimage (tests/support/fits.py), then damaged the ways files get
damaged or crafted: bit flips, truncation, bytes inserted into or cut out of the structure
block (with and without the header's sizes fixed up), header fields and 32-bit words set to
edge values. Whatever comes in, the FIT code answers with a `FitError` naming the file, never
another exception. Undamaged FITs, generated from random .its sources, trim to a FIT libfdt
accepts that holds exactly the chosen configuration and its images, byte for byte.

The regular tests at the top pin the crashes fuzzing found.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libfdt
import pytest
from hypothesis import event, given, reject, settings
from hypothesis import strategies as st

from overrided.fit import HASH_ALGOS, RULES, Fit, FitError, add_missing_hashes, match, trim_bytes
from overrided.fit.model import FDT_MAGIC, HEADER, Header
from tests.support.fits import (
    ItsConfig,
    ItsImage,
    SampleFit,
    board_dtb,
    compile_dts,
    its_source,
    mkimage_fit,
    sample_fit,
    signed_sample_fit,
)
from tests.support.fuzz import FUZZ, check_message, mutate, mutations, only, scaled

pytestmark = pytest.mark.fuzz

WHERE = "fuzz.itb"  # the name messages must start with


def _flip_node_name(blob: bytes, name: bytes, new: bytes) -> bytes:
    """`blob` with the first node name `name` (NUL-terminated, after FDT_BEGIN_NODE) replaced
    by `new` of the same length."""
    assert len(name) == len(new)
    at = blob.index(struct.pack(">I", 1) + name + b"\0") + 4
    return blob[:at] + new + blob[at + len(name) :]


def _overrided(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overrided", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> SampleFit:
    return sample_fit(tmp_path_factory.mktemp("plain"))


# --------------------------------------------------------------------------------------------
# Crashes fuzzing found, pinned


def test_non_utf8_node_name_is_a_fit_error(plain: SampleFit, tmp_path: Path) -> None:
    """An image node named ``k\\xe9rnel`` (one byte flipped) was a KeyError: the index keyed
    nodes by one decoding of the name and looked them up by another."""
    bad = tmp_path / "bad.itb"
    bad.write_bytes(_flip_node_name(plain.fit.read_bytes(), b"kernel", b"k\xe9rnel"))
    with pytest.raises(FitError) as err:
        Fit.open(bad)
    text = str(err.value)
    check_message(text, starts=str(bad))
    assert "node name at offset 0x" in text
    assert "(in /images) is not UTF-8: byte 0xe9" in text
    commands: list[list[str | Path]] = [
        ["ls", bad],
        ["trim", bad, "--config", "conf-a", "-o", tmp_path / "out.itb"],
    ]
    for cmd in commands:
        r = _overrided("fit", *cmd)
        assert r.returncode == 1
        assert "Traceback" not in r.stderr
        assert r.stderr.startswith(f"overrided: error: {bad}: malformed FDT: node name at")


def test_non_utf8_names_deeper_down(plain: SampleFit) -> None:
    blob = plain.fit.read_bytes()
    for name, new, parent in [
        (b"hash-1", b"hash-\xff", "/images/kernel"),
        (b"conf-a", b"conf-\xc3", "/configurations"),
        (b"images", b"im\x80ges", "/"),
    ]:
        with pytest.raises(FitError, match=rf"^{WHERE}: malformed FDT: .* \(in {parent}\) is not"):
            Fit.from_bytes(_flip_node_name(blob, name, new), Path(WHERE))


@pytest.mark.parametrize(
    ("name", "new", "message"),
    [
        (b"fdt-b", b"fdt-a", r"second node /images/fdt-a at offset 0x[0-9a-f]+ \(the first is at"),
        (b"conf-b", b"conf/b", r"node name at offset 0x[0-9a-f]+ \(in /configurations\) is 'c"),
    ],
)
def test_node_names_that_break_paths(
    plain: SampleFit, name: bytes, new: bytes, message: str
) -> None:
    """A second sibling of the same name, or a ``/`` in a name, would index two nodes under
    one path (libfdt and the bootloaders see only the first of them)."""
    with pytest.raises(FitError, match=message):
        Fit.from_bytes(_flip_node_name(plain.fit.read_bytes(), name, new), Path(WHERE))


def test_deep_nesting_is_a_fit_error(tmp_path: Path) -> None:
    """A structure block nested thousands of levels deep was a RecursionError."""
    depth = 3000
    dts = "/dts-v1/;\n/ { images { " + "n { " * depth + "}; " * depth + "}; };\n"
    blob = compile_dts(dts, tmp_path / "deep.dtb").read_bytes()
    with pytest.raises(FitError, match=r"/images/n/n/.* is nested more than 64 levels deep"):
        Fit.from_bytes(blob, Path(WHERE))


def _set_header(blob: bytes, **fields: int) -> bytes:
    header = dataclasses.replace(Header(*HEADER.unpack_from(blob, 0)), **fields)
    return HEADER.pack(*dataclasses.astuple(header)) + blob[HEADER.size :]


def test_add_missing_hashes_with_unterminated_reservation_map(tmp_path: Path) -> None:
    """``off_mem_rsvmap`` at the very end (no terminator inside ``totalsize``) made libfdt's
    resize copy a negative length: "double free or corruption", the process aborted."""
    blob = sample_fit(tmp_path, hashes=()).fit.read_bytes()
    totalsize = HEADER.unpack_from(blob, 0)[1]
    bad = _set_header(blob, off_mem_rsvmap=totalsize)
    with pytest.raises(FitError, match=r"memory reservation map at offset .* has no end"):
        add_missing_hashes(bad)


def test_add_missing_hashes_with_totalsize_past_the_end(tmp_path: Path) -> None:
    """A header ``totalsize`` beyond the blob sent libfdt reading past its buffer (SIGSEGV)."""
    blob = sample_fit(tmp_path, hashes=()).fit.read_bytes()
    with pytest.raises(FitError, match=r"^truncated: header totalsize is 1470267014 bytes"):
        add_missing_hashes(_set_header(blob, totalsize=1470267014))


def test_add_missing_hashes_with_non_utf8_image_name(tmp_path: Path) -> None:
    """pylibfdt hands a non-UTF-8 name back with lone surrogates, which its own path lookup
    refused with a TypeError."""
    blob = sample_fit(tmp_path, hashes=()).fit.read_bytes()
    with pytest.raises(FitError, match=r"node at structure offset .* is not UTF-8: 'fdt-\\udc8b'"):
        add_missing_hashes(_flip_node_name(blob, b"fdt-a", b"fdt-\x8b"))


def test_add_missing_hashes_takes_names_exactly(tmp_path: Path) -> None:
    """libfdt's path lookup takes ``k`` for an earlier ``k@1``: both lacked a hash, and the
    second ``hash-1`` went into ``k@1`` again (FDT_ERR_EXISTS)."""
    blob = tmp_path / "k"
    blob.write_bytes(b"k" * 64)
    images = [ItsImage(n, blob, "firmware", hashes=()) for n in ("k@1", "k")]
    fit = mkimage_fit(
        its_source(images, [ItsConfig("c", None, loadables=["k"])]), tmp_path / "a.itb"
    )
    hashed = Fit.from_bytes(add_missing_hashes(fit.read_bytes()))
    digest = hashlib.sha256(b"k" * 64).digest()
    assert [i.hashes for i in hashed.images.values()] == [[("hash-1", "sha256", digest)]] * 2


def test_embedded_dtb_with_totalsize_past_its_end(tmp_path: Path) -> None:
    """The root compatible of an ``fdt`` image whose header claims more bytes than the image
    holds: libfdt would read past the buffer; the configuration simply has no fallback."""
    dtb = board_dtb(tmp_path / "b.dtb", ["v,b"])
    lying = tmp_path / "lying.dtb"
    lying.write_bytes(_set_header(dtb.read_bytes(), totalsize=0x7FFF0000, off_dt_struct=0x7FFE0000))
    its = its_source(
        [ItsImage("k", dtb, "kernel"), ItsImage("dt", lying, "flat_dt")],
        [ItsConfig("conf-1", "k", fdt=["dt"])],
    )
    fit = Fit.open(mkimage_fit(its, tmp_path / "f.itb"))
    assert fit.configurations["conf-1"].effective_compatible(fit) == []


# --------------------------------------------------------------------------------------------
# Mutated FITs: FitError and nothing else


def fdt_regions(blob: bytes) -> list[tuple[int, int]]:
    """Where FDT mutations land: header, reservation map, structure block (three times, as
    most damage worth finding is there), strings, data after the FDT, embedded DTB headers,
    and the whole file."""
    n = len(blob)
    if n < HEADER.size:
        return [(0, n)]
    _, total, off_struct, off_strings, off_rsv, *_, size_strings, size_struct = HEADER.unpack_from(
        blob, 0
    )
    struct_block = (off_struct, off_struct + size_struct)
    regions = [
        (0, HEADER.size),
        (off_rsv, off_rsv + 16),
        struct_block,
        struct_block,
        struct_block,
        (off_strings, off_strings + size_strings),
        (total, n),
        (0, n),
    ]
    magic = struct.pack(">I", FDT_MAGIC)
    at = blob.find(magic, 4)
    while at >= 0 and len(regions) < 16:
        regions.append((at, at + HEADER.size))
        at = blob.find(magic, at + 4)
    return regions


def fdt_resize(out: bytearray, pos: int, delta: int) -> None:
    """Move the header's offsets and sizes by an insertion (delta > 0) or deletion at `pos`."""
    if len(out) < HEADER.size or pos < HEADER.size:
        return
    magic, total, off_struct, off_strings, off_rsv, ver, last, cpu, size_strings, size_struct = (
        HEADER.unpack_from(out, 0)
    )
    if off_struct <= pos <= off_struct + size_struct:
        size_struct += delta
    elif off_strings <= pos <= off_strings + size_strings:
        size_strings += delta
    off_struct += delta if pos < off_struct else 0
    off_strings += delta if pos < off_strings else 0
    off_rsv += delta if pos < off_rsv else 0
    total += delta if pos <= total else 0
    fields = (magic, total, off_struct, off_strings, off_rsv, ver, last, cpu)
    HEADER.pack_into(out, 0, *(v & 0xFFFFFFFF for v in (*fields, size_strings, size_struct)))


def _token(t: int) -> bytes:
    return struct.pack(">I", t)


# FDT tokens (§5.4.1), whole little nodes and properties, and bytes names must not hold.
FDT_INSERTS = (
    _token(1),
    _token(2),
    _token(3),
    _token(4),
    _token(9),
    _token(1) + b"abc\0",
    _token(1) + b"x\0\0\0" + _token(2),
    _token(3) + struct.pack(">II", 4, 0) + b"\0\0\0\x01",
    _token(3) + struct.pack(">II", 0xFFFFFFF0, 0),
    _token(2) + _token(2),
    b"\xe9",
    b"\0",
    b"/",
    b"@",
    _token(FDT_MAGIC),
)

BOARDS = (["v,board-a", "v,soc"], ["v,board-c"], ["V,SOC"], ["x,none"])


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The sample FIT in every layout mkimage writes, with and without hash nodes, signed."""
    base = tmp_path_factory.mktemp("fuzz-fits")
    layouts: dict[str, dict[str, Any]] = {
        "embedded": {},
        "data-offset": {"external": True},
        "data-position": {"external": True, "position": 0x2000},
        "no-hashes": {"hashes": ()},
        "no-hashes-external": {"hashes": (), "external": True},
        "crc32-sha1": {"hashes": ("crc32", "sha1")},
    }
    out = {name: sample_fit(base / name, **kw).fit.read_bytes() for name, kw in layouts.items()}
    signed, _ = signed_sample_fit(base / "signed")
    out["signed"] = signed.fit.read_bytes()
    return out


def exercise(blob: bytes) -> None:
    """Everything the service and the CLI do with a FIT they were handed; only FitError."""
    with only(FitError, starts=WHERE, label="parse"):
        fit = Fit.from_bytes(blob, Path(WHERE))
        for conf in fit.configurations.values():
            conf.effective_compatible(fit)
            fit.missing_references(conf.name)
        for rule in RULES:
            for board in (*BOARDS, *(c.compatible for c in fit.configurations.values())):
                match(fit, board, rule)
        for config in fit.configurations:
            for add_hashes in (False, True):
                with only(FitError, starts=WHERE, label="trim"):
                    out = trim_bytes(fit, config, add_hashes=add_hashes)
                    # Garbage in may give garbage out, but never a crash on reading it back.
                    with only(FitError, starts="trimmed.itb"):
                        Fit.from_bytes(out, Path("trimmed.itb"))
    with only(FitError, label="add_missing_hashes"):
        hashed = add_missing_hashes(blob)
        with only(FitError, starts="hashed.itb"):
            Fit.from_bytes(hashed, Path("hashed.itb"))


@FUZZ
@given(data=st.data())
def test_mutated_fits_raise_only_fit_error(
    originals: dict[str, bytes], data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(sorted(originals)), label="original")
    edits = data.draw(mutations(FDT_INSERTS), label="mutations")
    exercise(mutate(originals[name], edits, fdt_regions, fdt_resize))


@FUZZ
@given(data=st.data())
def test_truncated_fits_raise_only_fit_error(
    originals: dict[str, bytes], data: st.DataObject
) -> None:
    """Every cut of a FIT (the upload that stopped half-way) is a FitError or still a FIT."""
    blob = originals[data.draw(st.sampled_from(sorted(originals)), label="original")]
    exercise(blob[: data.draw(st.integers(0, len(blob)), label="length")])


@FUZZ
@given(blob=st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_fit_error(blob: bytes) -> None:
    exercise(blob)
    exercise(_token(FDT_MAGIC) + blob)


# --------------------------------------------------------------------------------------------
# Generated FITs: trims are valid and hold exactly the chosen configuration


@dataclass(frozen=True)
class ImageSpec:
    name: str
    type: str
    payload: bytes | int  # bytes, or the index of a board DTB
    hashes: tuple[str, ...]
    compression: str


@dataclass(frozen=True)
class ConfigSpec:
    name: str
    kernel: str | None
    fdt: tuple[str, ...]
    ramdisk: tuple[str, ...]
    loadables: tuple[str, ...]
    compatible: tuple[str, ...] | None


@dataclass(frozen=True)
class FitSpec:
    images: tuple[ImageSpec, ...]
    configs: tuple[ConfigSpec, ...]
    default: str | None
    layout: str


# Node names as dtc takes them, with the `@unit` suffix old FITs use.
_node_name = st.from_regex(r"[a-z][a-z0-9,._+-]{0,8}(@[0-9a-f]{1,2})?", fullmatch=True)
_compatible = st.from_regex(r"[a-z]{1,4},[a-z0-9-]{1,8}", fullmatch=True)
BOARD_DTBS = (["g,board-1", "g,soc"], ["g,board-2"], ["G,Board-3", "g,soc"])


@st.composite
def fit_specs(draw: st.DrawFn) -> FitSpec:
    names = draw(st.lists(_node_name, min_size=1, max_size=5, unique=True))
    images = []
    for name in names:
        kind = draw(st.sampled_from(["kernel", "flat_dt", "ramdisk", "firmware", "fpga"]))
        payload: bytes | int = (
            draw(st.integers(0, len(BOARD_DTBS) - 1))
            if kind == "flat_dt" and draw(st.booleans())
            else draw(st.binary(min_size=1, max_size=3000))
        )
        hashes = tuple(draw(st.lists(st.sampled_from(HASH_ALGOS), max_size=2, unique=True)))
        compression = draw(st.sampled_from(["none", "none", "gzip"]))
        images.append(ImageSpec(name, kind, payload, hashes, compression))
    refs = st.lists(st.sampled_from(names), max_size=2, unique=True).map(tuple)
    config_names = draw(st.lists(_node_name, min_size=1, max_size=4, unique=True))
    configs = tuple(
        ConfigSpec(
            name,
            draw(st.none() | st.sampled_from(names)),
            draw(refs),
            draw(refs),
            draw(refs),
            draw(st.none() | st.lists(_compatible, min_size=1, max_size=3).map(tuple)),
        )
        for name in config_names
    )
    default = draw(st.none() | st.sampled_from(config_names) | _node_name)
    layout = draw(st.sampled_from(["embedded", "data-offset", "data-position"]))
    return FitSpec(tuple(images), configs, default, layout)


@pytest.fixture(scope="module")
def dtbs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("fuzz-dtbs")
    return [board_dtb(base / f"b{i}.dtb", c) for i, c in enumerate(BOARD_DTBS)]


def build(spec: FitSpec, folder: Path, dtbs: Sequence[Path]) -> bytes:
    """The FIT mkimage makes from `spec`."""
    images = []
    for i, image in enumerate(spec.images):
        if isinstance(image.payload, int):
            data = dtbs[image.payload]
        else:
            data = folder / f"payload{i}"
            data.write_bytes(image.payload)
        images.append(
            ItsImage(
                image.name,
                data,
                image.type,
                os="linux" if image.type == "kernel" else None,
                compression=image.compression,
                hashes=image.hashes,
            )
        )
    configs = [
        ItsConfig(c.name, c.kernel, c.fdt, c.ramdisk, c.loadables, c.compatible)
        for c in spec.configs
    ]
    its = its_source(images, configs, default=spec.default)
    external = spec.layout != "embedded"
    position = 0x3000 if spec.layout == "data-position" else None
    return mkimage_fit(its, folder / "gen.itb", external=external, position=position).read_bytes()


def libfdt_accepts(blob: bytes) -> None:
    """libfdt's full check (header, every tag, names, strings) and a walk of every node."""
    assert libfdt.fdt_check_full(bytearray(blob), len(blob)) == 0
    fdt = libfdt.FdtRo(blob)
    node, depth = 0, 0
    while node >= 0 and depth >= 0:  # past the root's end, libfdt gives depth -1
        prop = fdt.first_property_offset(node, quiet=(libfdt.NOTFOUND,))
        while prop >= 0:
            fdt.get_property_by_offset(prop)
            prop = fdt.next_property_offset(prop, quiet=(libfdt.NOTFOUND,))
        node, depth = fdt.next_node(node, depth, quiet=(libfdt.NOTFOUND,))


def check_trim(fit: Fit, config: str, out: bytes, add_hashes: bool) -> None:
    """`out` is `fit` trimmed to `config`: valid, that configuration alone and made default,
    its images with the same data and properties, the configuration node byte for byte."""
    libfdt_accepts(out)
    trimmed = Fit.from_bytes(out, Path("trimmed.itb"))
    conf = fit.configurations[config]
    assert list(trimmed.configurations) == [config]
    assert trimmed.default == config
    assert list(trimmed.images) == [u for u in fit.images if u in conf.references()]
    for unit, image in trimmed.images.items():
        source = fit.images[unit]
        assert image.data_location == "embedded"
        assert bytes(image.data()) == bytes(source.data())
        assert (image.type, image.arch, image.os, image.compression, image.load) == (
            source.type,
            source.arch,
            source.os,
            source.compression,
            source.load,
        )
        if source.hashes or not add_hashes:
            assert image.hashes == source.hashes
        else:
            assert image.hashes == [("hash-1", "sha256", hashlib.sha256(source.data()).digest())]
    # What a configuration signature hashes stays as it was (docs/formats.md, "Signed bytes").
    before, after = (
        fit.nodes[f"/configurations/{config}"],
        trimmed.nodes[f"/configurations/{config}"],
    )
    assert bytes(fit.buffer[before.begin : before.end]) == out[after.begin : after.end]
    assert trimmed.configurations[config] == conf


@settings(FUZZ, max_examples=scaled(100))
@given(spec=fit_specs())
def test_trims_of_generated_fits(
    spec: FitSpec, dtbs: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as tmp:
        try:
            blob = build(spec, Path(tmp), dtbs)
        except RuntimeError as err:
            event(f"mkimage refused: {str(err).splitlines()[-1][:60]}")
            reject()  # not what is tested here
    fit = Fit.from_bytes(blob, Path("gen.itb"))
    assert list(fit.configurations) == [c.name for c in spec.configs]
    assert list(fit.images) == [i.name for i in spec.images]
    for config in fit.configurations:
        for add_hashes in (False, True):
            check_trim(fit, config, trim_bytes(fit, config, add_hashes=add_hashes), add_hashes)
    for rule in RULES:
        for board in BOARD_DTBS:
            chosen = match(fit, board, rule).config
            assert chosen is None or chosen in fit.configurations
    hashed = Fit.from_bytes(add_missing_hashes(blob))
    assert all(image.hashes for image in hashed.images.values())
    for unit, image in hashed.images.items():
        assert bytes(image.data()) == bytes(fit.images[unit].data())


@pytest.mark.parametrize("totalsize", [10**6, 41])
def test_a_dtb_whose_header_lies_is_an_error_not_a_crash(tmp_path: Path, totalsize: int) -> None:
    """``fit match --dtb``, public keys read from a DTB and U-Boot key DTBs built on a base all
    hand a user's DTB to libfdt, which reads past the buffer when its header lies."""
    from overrided.fit.build import read_dtb
    from overrided.keys import (
        KeyStoreError,
        _public_from_dtb,
        export_uboot_dtb,
        load_signing_key,
        new_key,
    )

    dtb = board_dtb(tmp_path / "a.dtb", ["v,board"])
    raw = bytearray(dtb.read_bytes())
    struct.pack_into(">I", raw, 4, totalsize)  # totalsize: past the end, or inside the header
    lying = tmp_path / "lying.dtb"
    lying.write_bytes(bytes(raw))
    with pytest.raises(FitError, match=r"lying\.dtb: not a DTB"):
        read_dtb(lying)
    with pytest.raises(KeyStoreError, match=r"lying\.dtb: not a DTB"):
        _public_from_dtb(bytes(raw), lying)
    new_key(tmp_path / "keys", "k")
    public = load_signing_key(tmp_path / "keys", "k").public_key()
    with pytest.raises(KeyStoreError, match=r"lying\.dtb: cannot use as a DTB"):
        export_uboot_dtb(public, "k", tmp_path / "out.dtb", base_dtb=lying)
