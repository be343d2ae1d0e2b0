"""Which configuration a board boots: barebox's and U-Boot 2023.01's rules (docs/formats.md).

The FIT is made by mkimage; each row names the board's compatible list, the rule and the
configuration that bootloader would pick (None: it would fail to find one).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from overrided.fit import Fit, match
from overrided.fit.match import BAREBOX_MAX_SCORE, barebox_score, uboot_position
from tests.support.fits import ItsConfig, ItsImage, board_dtb, its_source, mkimage_fit

# Node order matters: ties go to the earliest configuration under both rules.
CONFIGS = [
    ItsConfig("conf-soc-first", "kernel", fdt=["fdt-g"], compatible=["v,soc", "v,board-x"]),
    ItsConfig("conf-x", "kernel", fdt=["fdt-g"], compatible=["v,board-x", "v,soc"]),
    ItsConfig("conf-x-dup", "kernel", fdt=["fdt-g"], compatible=["v,board-x"]),
    ItsConfig("conf-upper", "kernel", fdt=["fdt-g"], compatible=["V,Board-Y"]),
    ItsConfig("conf-fdt", "kernel", fdt=["fdt-z"]),  # no compatible: fdt-z's root counts
    ItsConfig("conf-nokernel", None, fdt=["fdt-g"], compatible=["v,board-w"]),
    ItsConfig("conf-t1", "kernel", fdt=["fdt-g"], compatible=["a,a", "v,tie"]),
    ItsConfig("conf-t2", "kernel", fdt=["fdt-g"], compatible=["b,b", "v,tie"]),
    ItsConfig("conf-b2", "kernel", fdt=["fdt-g"], compatible=["v,board-b2"]),
    ItsConfig("conf-soc-only", "kernel", fdt=["fdt-g"], compatible=["v,soc"]),
]
DEFAULT = "conf-soc-only"


def _fit(folder: Path, default: str | None) -> Fit:
    folder.mkdir(parents=True, exist_ok=True)
    kernel = folder / "Image"
    kernel.write_bytes(b"\0" * 256)
    images = [
        ItsImage("kernel", kernel, "kernel", os="linux"),
        ItsImage("fdt-g", board_dtb(folder / "g.dtb", ["v,generic"]), "flat_dt"),
        ItsImage("fdt-z", board_dtb(folder / "z.dtb", ["v,board-z", "v,soc-z"]), "flat_dt"),
    ]
    return Fit.open(mkimage_fit(its_source(images, CONFIGS, default=default), folder / "m.itb"))


@pytest.fixture(scope="module")
def with_default(tmp_path_factory: pytest.TempPathFactory) -> Fit:
    return _fit(tmp_path_factory.mktemp("d"), DEFAULT)


@pytest.fixture(scope="module")
def without_default(tmp_path_factory: pytest.TempPathFactory) -> Fit:
    return _fit(tmp_path_factory.mktemp("n"), None)


# (board compatible, barebox choice, U-Boot choice, what the row shows)
TABLE = [
    (["v,board-x", "v,soc"], "conf-x", "conf-soc-first",
     "barebox: index 0 beats an earlier index 1; U-Boot: position in the config list is ignored"),
    (["v,board-x"], "conf-x", "conf-soc-first", "one string, same split"),
    (["v,board-q", "v,soc"], DEFAULT, "conf-soc-first",
     "docs/formats.md's example: barebox never looks at the 2nd string and falls back to default"),
    (["v,board-y"], "conf-upper", None, "barebox compares case-insensitively, U-Boot exactly"),
    (["V,BOARD-X"], "conf-x", None, "upper-case board string"),
    (["v,board-z", "v,soc-z"], "conf-fdt", "conf-fdt", "no own compatible: fdt root counts"),
    (["v,soc-z"], "conf-fdt", "conf-fdt", "fdt root list, entry 1"),
    (["v,other", "v,board-z"], DEFAULT, "conf-fdt", "barebox: 1st board string only"),
    (["v,board-w"], DEFAULT, "conf-nokernel", "barebox skips configurations without kernel"),
    (["v,tie"], "conf-t1", "conf-t1", "equal scores: earliest in node order"),
    (["v,board-b2", "v,soc"], "conf-b2", "conf-b2", "U-Boot: lower board position wins"),
    (["v,soc"], "conf-soc-first", "conf-soc-first", "equal position 0: earliest"),
    (["v,nothing"], DEFAULT, None, "no match: barebox default, U-Boot none (no fallback)"),
    ([], DEFAULT, None, "board without compatible"),
]  # fmt: skip


@pytest.mark.parametrize(("board", "barebox", "uboot", "why"), TABLE, ids=[r[3] for r in TABLE])
def test_match_table(
    board: list[str], barebox: str | None, uboot: str | None, why: str, with_default: Fit
) -> None:
    assert match(with_default, board, "barebox").config == barebox
    assert match(with_default, board, "u-boot").config == uboot


@pytest.mark.parametrize(
    ("board", "barebox"),
    [(row[0], row[1]) for row in TABLE],
    ids=[row[3] for row in TABLE],
)
def test_without_default_barebox_has_nothing_to_fall_back_to(
    board: list[str], barebox: str | None, without_default: Fit
) -> None:
    result = match(without_default, board, "barebox")
    if barebox == DEFAULT:
        assert result.config is None
        assert result.reason.startswith("no match:")
        assert "no default" in result.reason
    else:
        assert result.config == barebox


def test_default_fallback_is_explained(with_default: Fit) -> None:
    result = match(with_default, ["v,board-q", "v,soc"], "barebox")
    assert "'v,board-q' is in no configuration" in result.reason
    assert "falls back to /configurations/default" in result.reason


def test_reason_names_the_position(with_default: Fit) -> None:
    assert "entry 0" in match(with_default, ["v,board-x"], "barebox").reason
    result = match(with_default, ["v,board-q", "v,soc"], "u-boot")
    assert "board string 1 'v,soc'" in result.reason
    assert [c.config for c in result.candidates][:2] == ["conf-soc-first", "conf-x"]


def test_no_match_names_closest_candidates(with_default: Fit) -> None:
    result = match(with_default, ["V,BOARD-X"], "u-boot")
    assert result.config is None
    assert result.reason.startswith("no match:")
    assert "closest: conf-soc-first" in result.reason
    assert {"conf-x", "conf-x-dup"} <= {c.config for c in result.candidates}


def test_no_match_suggests_similar_strings(with_default: Fit) -> None:
    result = match(with_default, ["v,board-xx"], "u-boot")
    assert result.config is None
    # 'v,board-x' is the nearest string; conf-soc-first is the first configuration with it.
    assert result.candidates[0].config == "conf-soc-first"


def test_barebox_ranks_all_scoring_candidates(with_default: Fit) -> None:
    # conf-x scores MAX and stops the walk; only the configurations seen before it rank.
    result = match(with_default, ["v,board-x"], "barebox")
    assert [(c.config, c.score) for c in result.candidates] == [
        ("conf-x", BAREBOX_MAX_SCORE),
        ("conf-soc-first", BAREBOX_MAX_SCORE - 4),
    ]


@pytest.mark.parametrize(
    ("machine", "compatible", "score"),
    [
        ("a,b", ["a,b"], BAREBOX_MAX_SCORE),
        ("a,b", ["x,y", "A,B"], BAREBOX_MAX_SCORE - 4),
        ("a,b", ["x", "y", "z", "a,b"], BAREBOX_MAX_SCORE - 12),
        ("a,b", ["a,bc"], 0),
        ("a,b", [], 0),
    ],
)
def test_barebox_score(machine: str, compatible: list[str], score: int) -> None:
    assert BAREBOX_MAX_SCORE == 0x3FFFFFFF  # INT_MAX / 2
    assert barebox_score(machine, compatible) == score


@pytest.mark.parametrize(
    ("board", "compatible", "position"),
    [
        (["a", "b"], ["b", "a"], 0),
        (["a", "b"], ["x", "b"], 1),
        (["a", "b"], ["A", "B"], None),
        ([], ["a"], None),
    ],
)
def test_uboot_position(board: list[str], compatible: list[str], position: int | None) -> None:
    assert uboot_position(board, compatible) == position
