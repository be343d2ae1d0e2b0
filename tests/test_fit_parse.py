"""Parsing FITs that mkimage made: embedded data, `-E` (data-offset), `-E -p` (data-position),
and the bad inputs users will hand us (each a one-line FitError naming file and problem)."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import pytest

from overrided.fit import Fit, FitError, add_missing_hashes, digest
from tests.support.fits import (
    ItsConfig,
    ItsImage,
    SampleFit,
    board_dtb,
    dumpimage_extract,
    dumpimage_list,
    its_source,
    mkimage_fit,
    payload,
    sample_fit,
)

LAYOUTS = {
    "embedded": {},
    "data-offset": {"external": True},
    "data-position": {"external": True, "position": 0x2000},
}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout_sample(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, SampleFit]:
    """(layout name, the sample FIT mkimage made in that layout)."""
    layout = request.param
    return layout, sample_fit(tmp_path_factory.mktemp("sample"), **LAYOUTS[layout])


@pytest.fixture
def sample(layout_sample: tuple[str, SampleFit]) -> SampleFit:
    return layout_sample[1]


def test_images_and_their_data(layout_sample: tuple[str, SampleFit]) -> None:
    expected_location, sample = layout_sample
    with Fit.open(sample.fit) as fit:
        assert list(fit.images) == ["kernel", "fdt-a", "fdt-b", "fdt-c", "ramdisk", "firmware"]
        kernel = fit.images["kernel"]
        assert (kernel.type, kernel.arch, kernel.os, kernel.compression) == (
            "kernel",
            "arm64",
            "linux",
            "none",
        )
        assert (kernel.load, kernel.entry, kernel.description) == (0x40080000, 0x40080000, "Linux")
        files = {"kernel": sample.kernel, "ramdisk": sample.ramdisk, "firmware": sample.firmware}
        files.update(sample.dtbs)
        for name, path in files.items():
            image = fit.images[name]
            assert image.data_location == expected_location
            assert image.size == path.stat().st_size
            assert bytes(image.data()) == path.read_bytes()
            # mkimage computed these hash values; ours must agree with them and with hashlib.
            assert image.hashes == [
                ("hash-1", "sha256", hashlib.sha256(path.read_bytes()).digest())
            ]
        assert fit.images["firmware"].load == 0x1000
        assert fit.images["ramdisk"].load is None


def test_configurations(sample: SampleFit) -> None:
    with Fit.open(sample.fit) as fit:
        assert fit.description == "test FIT"
        assert fit.default == "conf-b"
        assert list(fit.configurations) == ["conf-a", "conf-b", "conf-c", "conf-soc"]
        a, b, c = (fit.configurations[n] for n in ("conf-a", "conf-b", "conf-c"))
        assert (a.kernel, a.fdt, a.ramdisk, a.loadables) == ("kernel", ["fdt-a"], ["ramdisk"], [])
        assert a.compatible == ["v,board-a", "v,soc"]
        assert a.description == "Board A"
        assert a.references() == ["kernel", "fdt-a", "ramdisk"]
        assert b.loadables == ["firmware"]
        assert b.references() == ["kernel", "fdt-b", "firmware"]
        # No own compatible: the root compatible of its first fdt counts.
        assert c.compatible == []
        assert c.effective_compatible(fit) == ["v,board-c", "v,soc-c"]
        assert a.effective_compatible(fit) == a.compatible
        assert a.signatures == []


def test_dumpimage_agrees_on_names(sample: SampleFit) -> None:
    listing = dumpimage_list(sample.fit)
    with Fit.open(sample.fit) as fit:
        for i, name in enumerate(fit.images):
            assert f"Image {i} ({name})" in listing
        for i, name in enumerate(fit.configurations):
            assert f"Configuration {i} ({name})" in listing


def test_references_follow_property_order(tmp_path: Path) -> None:
    """docs/formats.md, "Signed bytes": every property except description/compatible/default names
    images, in property order; unusual ones (`fpga`, `setup`) included, duplicates once."""
    blob = tmp_path / "k"
    blob.write_bytes(b"k" * 64)
    images = [ItsImage(n, blob, "firmware") for n in ("k", "fw", "fp", "dt")]
    conf = ItsConfig(
        "conf-1",
        None,
        fdt=["dt"],
        loadables=["fw", "k"],
        compatible=["x,y"],
        description="odd",
        extra='fpga = "fp"; kernel = "k";',
    )
    fit = Fit.open(mkimage_fit(its_source(images, [conf]), tmp_path / "r.itb"))
    got = fit.configurations["conf-1"]
    assert [p for p, _ in got.reference_props] == ["fdt", "loadables", "fpga", "kernel"]
    assert got.references() == ["dt", "fw", "k", "fp"]


def test_compressed_fdt_gives_no_fallback_compatible(tmp_path: Path) -> None:
    dtb = board_dtb(tmp_path / "b.dtb", ["v,gz"])
    gz = tmp_path / "b.dtb.gz"
    gz.write_bytes(gzip.compress(dtb.read_bytes()))
    k = tmp_path / "k"
    k.write_bytes(b"k" * 16)
    its = its_source(
        [ItsImage("k", k, "kernel"), ItsImage("dt", gz, "flat_dt", compression="gzip")],
        [ItsConfig("conf-1", "k", fdt=["dt"])],
    )
    fit = Fit.open(mkimage_fit(its, tmp_path / "gz.itb"))
    assert fit.configurations["conf-1"].effective_compatible(fit) == []


def _fit_bytes(sample: SampleFit) -> bytes:
    return sample.fit.read_bytes()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> SampleFit:
    return sample_fit(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> SampleFit:
    return sample_fit(tmp_path_factory.mktemp("ext"), external=True)


def _patch(blob: bytes, offset: int, value: int) -> bytes:
    return blob[:offset] + struct.pack(">I", value) + blob[offset + 4 :]


# (case, how to damage the sample's bytes, what the message must say)
BAD_INPUTS = [
    ("empty file", lambda b: b"", "the file is empty"),
    ("short", lambda b: b[:20], "too short for an FDT header"),
    ("not a FIT", lambda b: b"\x7fELF" + b[4:], "not a FIT: magic 0x7f454c46"),
    ("truncated", lambda b: b[: len(b) // 2], "truncated: header totalsize"),
    ("bad version", lambda b: _patch(b, 20, 1), "malformed FDT"),
    ("struct past end", lambda b: _patch(b, 36, len(b) * 2), "malformed FDT"),
    (
        "old version",
        lambda b: _patch(_patch(b, 24, 15), 20, 15),
        "malformed FDT: version 15, want 16 or later",
    ),
    # The root's first property: after its FDT_BEGIN_NODE and empty name, tag then length.
    (
        "property past the struct",
        lambda b: _root_prop_length(b, 0x7FFFFFF0),
        "run past the structure block",
    ),
    ("no FDT_END", lambda b: _struct_last_tag(b, 5), "malformed FDT: tag 0x5 after the root node"),
]


def _root_prop_length(blob: bytes, length: int) -> bytes:
    off_struct = struct.unpack_from(">I", blob, 8)[0]
    assert struct.unpack_from(">I", blob, off_struct + 8)[0] == 3  # FDT_PROP
    return _patch(blob, off_struct + 12, length)


def _struct_last_tag(blob: bytes, tag: int) -> bytes:
    off_struct, size_struct = (
        struct.unpack_from(">I", blob, 8)[0],
        struct.unpack_from(">I", blob, 36)[0],
    )
    end = off_struct + size_struct - 4
    assert struct.unpack_from(">I", blob, end)[0] == 9  # FDT_END
    return _patch(blob, end, tag)


@pytest.mark.parametrize(("case", "damage", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_error(
    case: str, damage: object, message: str, plain: SampleFit, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.itb"
    bad.write_bytes(damage(_fit_bytes(plain)))  # type: ignore[operator]
    with pytest.raises(FitError) as err:
        Fit.open(bad)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(str(bad))
    assert message in text


def test_truncated_external_data(external: SampleFit, tmp_path: Path) -> None:
    blob = external.fit.read_bytes()
    bad = tmp_path / "cut.itb"
    bad.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(FitError, match=r"cut.itb: /images/\S+: truncated: external data"):
        Fit.open(bad)


def test_a_dtb_is_not_a_fit(tmp_path: Path) -> None:
    dtb = board_dtb(tmp_path / "b.dtb", ["v,b"])
    with pytest.raises(FitError, match=r"b.dtb: not a FIT: no /images node"):
        Fit.open(dtb)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FitError, match=r"nope.itb: cannot open"):
        Fit.open(tmp_path / "nope.itb")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_add_missing_hashes(layout: str, tmp_path: Path) -> None:
    """Images without hash nodes get sha256 hash-1; dumpimage still extracts the same bytes,
    external data included, and mkimage's listing shows the new hashes."""
    sample = sample_fit(tmp_path, hashes=(), **LAYOUTS[layout])
    before = Fit.from_bytes(sample.fit.read_bytes())
    assert all(not image.hashes for image in before.images.values())
    out = tmp_path / "hashed.itb"
    out.write_bytes(add_missing_hashes(sample.fit.read_bytes()))
    after = Fit.open(out)
    assert dumpimage_list(out).count("Hash algo:    sha256") == len(after.images)
    for index, (name, image) in enumerate(after.images.items()):
        original = bytes(before.images[name].data())
        assert image.hashes == [("hash-1", "sha256", hashlib.sha256(original).digest())]
        assert dumpimage_extract(out, index, tmp_path / f"x{index}") == original


def test_add_missing_hashes_keeps_existing(plain: SampleFit) -> None:
    blob = plain.fit.read_bytes()
    assert add_missing_hashes(blob) is blob


@pytest.mark.parametrize(
    ("algo", "data", "value"),
    [
        ("crc32", b"123456789", bytes.fromhex("cbf43926")),  # the CRC-32 check value
        ("sha1", b"abc", bytes.fromhex("a9993e364706816aba3e25717850c26c9cd0d89d")),
        ("sha256", b"", hashlib.sha256(b"").digest()),
        ("md5", b"", hashlib.md5(b"").digest()),
    ],
)
def test_digest(algo: str, data: bytes, value: bytes) -> None:
    assert digest(algo, data) == value


def test_unknown_hash_algo() -> None:
    with pytest.raises(FitError, match="unknown hash algo 'sha3'"):
        digest("sha3", b"")


def test_a_parse_reads_the_mapped_file_without_copying_it(tmp_path: Path) -> None:
    # A distribution kernel's FIT is 60 MB, its images embedded: the index records offsets
    # into the file mapping; neither it nor libfdt (whose Python binding copies whatever it is
    # given) copy the blob.
    import tracemalloc

    kernel = tmp_path / "Image"
    kernel.write_bytes(payload(8 << 20, 7))
    dtb = board_dtb(tmp_path / "a.dtb", ["vendor,a"])
    its = its_source(
        [ItsImage("kernel", kernel, "kernel", os="linux"), ItsImage("fdt-a", dtb, "flat_dt")],
        [ItsConfig("conf-a", kernel="kernel", fdt=["fdt-a"], compatible=["vendor,a"])],
        default="conf-a",
    )
    fit_path = mkimage_fit(its, tmp_path / "big.itb")
    tracemalloc.start()
    try:
        with Fit.open(fit_path) as fit:
            _, peak = tracemalloc.get_traced_memory()
            assert fit.images["kernel"].size == 8 << 20 and list(fit.configurations) == ["conf-a"]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated to parse a {fit_path.stat().st_size}-byte FIT"
