"""The realistic case: Debian's arm64 kernel (32 MB Image, ~580 DTBs) built into one FIT,
real boards matched under both rules, trimmed, and the payload bytes compared with the
package's own files. dumpimage checks every FIT we write."""

from __future__ import annotations

from pathlib import Path

import libfdt
import pytest

from overrided.fit import Fit, build_fit, find_dtbs, match, trim
from overrided.fit.model import decode_list
from tests.support import debian
from tests.support.fits import dumpimage_list


@pytest.fixture(scope="session")
def kernel() -> debian.Kernel:
    return debian.kernel()


@pytest.fixture(scope="session")
def debian_fit(kernel: debian.Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("debian") / "image.fit"
    build_fit(kernel.image, find_dtbs(kernel.dtbs), out)
    return out


def _root_compatible(dtb: Path) -> bytes:
    return bytes(libfdt.FdtRo(dtb.read_bytes()).getprop(0, "compatible"))


def test_every_dtb_becomes_a_configuration(kernel: debian.Kernel, debian_fit: Path) -> None:
    dtbs = find_dtbs(kernel.dtbs)
    assert len(dtbs) > 500
    listing = dumpimage_list(debian_fit)
    assert f"Configuration {len(dtbs) - 1} (conf-{len(dtbs)})" in listing
    assert "Default Configuration: 'conf-1'" in listing
    with Fit.open(debian_fit) as fit:
        assert len(fit.configurations) == len(dtbs)
        assert fit.images["kernel"].size == kernel.image.stat().st_size
        assert fit.images["kernel"].type == "kernel_noload"
        for n, dtb in enumerate(dtbs, 1):
            conf = fit.configurations[f"conf-{n}"]
            raw = fit.value(fit.nodes[f"/configurations/conf-{n}"].props["compatible"])
            assert raw == _root_compatible(dtb)  # byte for byte, as make_fit.py copies it
            assert conf.fdt == [f"fdt-{n}"]
            assert fit.images[f"fdt-{n}"].description == dtb.name
            assert [h[:2] for h in fit.images[f"fdt-{n}"].hashes] == [("hash-1", "sha256")]


BOARDS = [
    ("rockchip/rk3568-rock-3a.dtb", "radxa,rock3a"),
    ("freescale/imx8mm-evk.dtb", "fsl,imx8mm-evk"),
    ("rockchip/rk3399-rockpro64-v2.dtb", "pine64,rockpro64-v2.0"),
]


@pytest.mark.parametrize(("dtb_name", "first"), BOARDS, ids=[b[1] for b in BOARDS])
def test_real_board_matches_and_trims(
    kernel: debian.Kernel, debian_fit: Path, dtb_name: str, first: str, tmp_path: Path
) -> None:
    dtb = kernel.dtbs / dtb_name
    board = decode_list(_root_compatible(dtb))  # the board's own DT root compatible
    assert board[0] == first
    with Fit.open(debian_fit) as fit:
        chosen = {rule: match(fit, board, rule).config for rule in ("barebox", "u-boot")}
        assert chosen["barebox"] == chosen["u-boot"]
        config = chosen["barebox"]
        assert config is not None
        out = tmp_path / "board.fit"
        trim(fit, config, out)
    trimmed = Fit.open(out)
    assert list(trimmed.configurations) == [config]
    assert trimmed.default == config
    (fdt,) = trimmed.configurations[config].fdt
    assert bytes(trimmed.images[fdt].data()) == dtb.read_bytes()
    assert bytes(trimmed.images["kernel"].data()) == kernel.image.read_bytes()
    assert list(trimmed.images) == ["kernel", fdt]
    assert f"Default Configuration: '{config}'" in dumpimage_list(out)


def test_rockpro64_v2_by_short_name(debian_fit: Path) -> None:
    """`pine64,rockpro64-v2` is not what the v2 DTB says (it says `...-v2.0`): barebox falls
    back to default (conf-1, some other board!), U-Boot finds nothing and we name the near
    misses."""
    with Fit.open(debian_fit) as fit:
        barebox = match(fit, ["pine64,rockpro64-v2"], "barebox")
        assert barebox.config == "conf-1"
        assert "falls back to /configurations/default (closest: " in barebox.reason
        uboot = match(fit, ["pine64,rockpro64-v2"], "u-boot")
        assert uboot.config is None
        near = {c.config for c in uboot.candidates}
        v2 = match(fit, ["pine64,rockpro64-v2.0"], "u-boot").config
        assert v2 in near
        assert v2 in {c.config for c in barebox.candidates}
        assert "closest:" in uboot.reason


def test_generic_soc_string(debian_fit: Path) -> None:
    """A board whose DT only says `rockchip,rk3568`: U-Boot takes the first rk3568 board,
    barebox finds the string at index 1 of each and also takes the earliest."""
    with Fit.open(debian_fit) as fit:
        uboot = match(fit, ["rockchip,rk3568"], "u-boot")
        barebox = match(fit, ["rockchip,rk3568"], "barebox")
        assert uboot.config == barebox.config
        assert uboot.config is not None
        assert "rockchip,rk3568" in fit.configurations[uboot.config].compatible
        first = next(c for c in fit.configurations.values() if "rockchip,rk3568" in c.compatible)
        assert uboot.config == first.name
