"""Building a FIT from a kernel and DTBs (like `make image.fit`, plus default and hashes),
checked with dumpimage and by re-parsing; compressed payloads checked by the real tools."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import subprocess
from pathlib import Path

import pytest

from overrided.fit import Fit, FitError, build_fit, find_dtbs, match
from tests.support.fits import board_dtb, compile_dts, dumpimage_list, payload


@pytest.fixture
def dtb_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dts"
    board_dtb(folder / "vendor-b" / "b-board.dtb", ["vb,board", "vb,soc"], model="VB Board")
    board_dtb(folder / "vendor-a" / "a-board.dtb", ["va,board", "va,soc"], model="VA Board")
    board_dtb(folder / "vendor-a" / "a-nomodel.dtb", ["va,nomodel"])
    (folder / "vendor-a" / "overlay.dtbo").write_bytes(b"not a board")
    (folder / "README").write_text("not a dtb")
    return folder


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    image = tmp_path / "Image"
    image.write_bytes(payload(200_000, 9))
    return image


def test_find_dtbs_recurses_in_sorted_order(dtb_folder: Path) -> None:
    assert [p.relative_to(dtb_folder).as_posix() for p in find_dtbs(dtb_folder)] == [
        "vendor-a/a-board.dtb",
        "vendor-a/a-nomodel.dtb",
        "vendor-b/b-board.dtb",
    ]


def test_build(dtb_folder: Path, kernel: Path, tmp_path: Path) -> None:
    dtbs = find_dtbs(dtb_folder)
    out = tmp_path / "image.fit"
    build_fit(kernel, dtbs, out, description="test kernel")
    listing = dumpimage_list(out)
    assert "FIT description: test kernel" in listing
    assert "Default Configuration: 'conf-1'" in listing
    assert listing.count("Hash algo:    sha256") == 4
    with Fit.open(out) as fit:
        assert fit.default == "conf-1"
        assert fit.timestamp is not None
        k = fit.images["kernel"]
        assert (k.type, k.arch, k.os, k.compression, k.load, k.entry) == (
            "kernel_noload",
            "arm64",
            "linux",
            "none",
            0,
            0,
        )
        assert bytes(k.data()) == kernel.read_bytes()
        for n, dtb in enumerate(dtbs, 1):
            image = fit.images[f"fdt-{n}"]
            assert bytes(image.data()) == dtb.read_bytes()
            assert image.hashes == [("hash-1", "sha256", hashlib.sha256(dtb.read_bytes()).digest())]
            conf = fit.configurations[f"conf-{n}"]
            assert conf.kernel == "kernel"
            assert conf.fdt == [f"fdt-{n}"]
        confs = list(fit.configurations.values())
        assert [c.compatible for c in confs] == [
            ["va,board", "va,soc"],
            ["va,nomodel"],
            ["vb,board", "vb,soc"],
        ]
        # description: the DTB's model, else its file name
        assert [c.description for c in confs] == ["VA Board", "a-nomodel.dtb", "VB Board"]
        assert match(fit, ["vb,board"], "u-boot").config == "conf-3"


def test_compressed_kernel_is_stored_as_is(dtb_folder: Path, kernel: Path, tmp_path: Path) -> None:
    gz = tmp_path / "Image.gz"
    gz.write_bytes(gzip.compress(kernel.read_bytes()))
    out = tmp_path / "gz.fit"
    build_fit(gz, find_dtbs(dtb_folder), out)
    with Fit.open(out) as fit:
        assert fit.images["kernel"].compression == "gzip"
        assert bytes(fit.images["kernel"].data()) == gz.read_bytes()
        assert fit.images["fdt-1"].compression == "none"
    assert "gzip compressed" in dumpimage_list(out)


DECOMPRESS = {
    "gzip": gzip.decompress,
    "bzip2": bz2.decompress,
    "lzma": lzma.decompress,
    "zstd": lambda b: subprocess.run(["zstd", "-dc"], input=b, capture_output=True).stdout,
    "lz4": lambda b: subprocess.run(["lz4", "-dc"], input=b, capture_output=True).stdout,
    "lzo": lambda b: subprocess.run(["lzop", "-dc"], input=b, capture_output=True).stdout,
}


@pytest.mark.parametrize("method", list(DECOMPRESS))
def test_compression(method: str, dtb_folder: Path, kernel: Path, tmp_path: Path) -> None:
    out = tmp_path / f"{method}.fit"
    dtbs = find_dtbs(dtb_folder)
    build_fit(kernel, dtbs, out, compression=method)
    dumpimage_list(out)
    with Fit.open(out) as fit:
        k = fit.images["kernel"]
        assert k.compression == method
        assert DECOMPRESS[method](bytes(k.data())) == kernel.read_bytes()
        assert DECOMPRESS[method](bytes(fit.images["fdt-1"].data())) == dtbs[0].read_bytes()
        # Compressed fdts are skipped by both bootloaders, but the copied compatible works.
        assert match(fit, ["va,board"], "barebox").config == "conf-1"


def test_dtb_without_compatible(kernel: Path, tmp_path: Path) -> None:
    bare = board_dtb(tmp_path / "bare.dtb", None, model="no compatible")
    with pytest.raises(FitError, match=r"^\S*bare.dtb: DTB has no root compatible$"):
        build_fit(kernel, [bare], tmp_path / "x.fit")
    assert not (tmp_path / "x.fit").exists()


def test_not_a_dtb(kernel: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.dtb"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(FitError, match=r"junk.dtb: not a DTB"):
        build_fit(kernel, [junk], tmp_path / "x.fit")


def test_compatible_copied_byte_for_byte(kernel: Path, tmp_path: Path) -> None:
    """Odd bytes in a root compatible (an empty string in the list) survive unchanged."""
    dtb = compile_dts('/dts-v1/;\n/ { compatible = "v,odd", "", "v,soc"; };\n', tmp_path / "o.dtb")
    out = tmp_path / "o.fit"
    build_fit(kernel, [dtb], out)
    with Fit.open(out) as fit:
        raw = fit.value(fit.nodes["/configurations/conf-1"].props["compatible"])
    assert raw == b"v,odd\0\0v,soc\0"


def test_unknown_compression(kernel: Path, dtb_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FitError, match="unknown compression 'rar'"):
        build_fit(kernel, find_dtbs(dtb_folder), tmp_path / "x.fit", compression="rar")
