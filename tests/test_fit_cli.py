"""`overrided fit …` as a user runs it: output, exit status, one-line errors without traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from overrided.commands.fit import parse_compatible
from overrided.fit import Fit
from tests.support.fits import (
    ItsConfig,
    ItsImage,
    SampleFit,
    board_dtb,
    dumpimage_list,
    its_source,
    mkimage_fit,
    sample_fit,
)


def overrided(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overrided", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleFit:
    return sample_fit(tmp_path_factory.mktemp("cli"), external=True)


def test_ls(sample: SampleFit) -> None:
    r = overrided("fit", "ls", sample.fit)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{sample.fit}: test FIT; 4 configurations, 6 images, default conf-b"
    assert lines[1].split() == ["CONFIGURATION", "COMPATIBLE", "DESCRIPTION", "IMAGES", "SIZE"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {"conf-a", "conf-b", "conf-c", "conf-soc"}
    assert "kernel fdt-a ramdisk" in rows["conf-a"]
    assert rows["conf-b"].startswith("conf-b *")  # the default
    assert "v,board-c, v,soc-c (from fdt-c)" in rows["conf-c"]


@pytest.mark.parametrize(
    ("args", "config"),
    [
        (["--compatible", "v,board-x v,soc", "--rule", "u-boot"], "conf-a"),
        (["--compatible", "v,board-x", "--compatible", "v,soc", "--rule", "u-boot"], "conf-a"),
        (["--compatible", '"v,board-x", "v,soc"'], "conf-b"),  # barebox: default
        (["--compatible", "V,BOARD-A"], "conf-a"),
    ],
)
def test_match(sample: SampleFit, args: list[str], config: str) -> None:
    r = overrided("fit", "match", sample.fit, *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == config


def test_match_by_dtb(sample: SampleFit) -> None:
    r = overrided("fit", "match", sample.fit, "--dtb", sample.dtbs["fdt-c"], "--rule", "u-boot")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "conf-c"
    assert "fdt fdt-c" in r.stdout


def test_trim_by_compatible(sample: SampleFit, tmp_path: Path) -> None:
    out = tmp_path / "a.itb"
    r = overrided("fit", "trim", sample.fit, "--compatible", "v,board-a", "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{out}: conf-a (kernel fdt-a ramdisk), {out.stat().st_size} bytes"
    assert "Default Configuration: 'conf-a'" in dumpimage_list(out)
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_trim_by_name_with_hashes(tmp_path: Path) -> None:
    sample = sample_fit(tmp_path / "in", hashes=())
    out = tmp_path / "b.itb"
    r = overrided("fit", "trim", sample.fit, "--config", "conf-b", "-o", out, "--add-hashes")
    assert r.returncode == 0, r.stderr
    assert all(i.hashes for i in Fit.open(out).images.values())


def test_build(sample: SampleFit, tmp_path: Path) -> None:
    out = tmp_path / "built.fit"
    folder = sample.dtbs["fdt-a"].parent
    r = overrided("fit", "build", "--kernel", sample.kernel, "--dtbs", folder, "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{out}: 3 configurations")
    assert "Default Configuration: 'conf-1'" in dumpimage_list(out)


def _errors(tmp: Path, sample: SampleFit) -> list[tuple[str, list[str | Path], str]]:
    junk = tmp / "junk.itb"
    junk.write_bytes(b"hello, I am not a FIT" * 4)
    truncated = tmp / "cut.itb"
    truncated.write_bytes(sample.fit.read_bytes()[:300])
    bare = board_dtb(tmp / "bare.dtb", None)
    missing = tmp / "missing.itb"
    return [
        ("not a FIT", ["fit", "ls", junk], f"{junk}: not a FIT: magic"),
        ("truncated", ["fit", "ls", truncated], f"{truncated}: truncated: header totalsize"),
        ("no such file", ["fit", "ls", missing], f"{missing}: cannot open"),
        (
            "unknown configuration",
            ["fit", "trim", sample.fit, "--config", "conf-9", "-o", tmp / "o"],
            f"{sample.fit}: no configuration 'conf-9'",
        ),
        (
            "no match",
            ["fit", "match", sample.fit, "--compatible", "x,y", "--rule", "u-boot"],
            f"{sample.fit}: no match: no board string is in any configuration",
        ),
        (
            "DTB without compatible",
            ["fit", "build", "--kernel", sample.kernel, "--dtbs", bare, "-o", tmp / "o"],
            f"{bare}: DTB has no root compatible",
        ),
        (
            "match by DTB without compatible",
            ["fit", "match", sample.fit, "--dtb", bare],
            f"{bare}: DTB has no root compatible",
        ),
        (
            "trim without a choice",
            ["fit", "trim", sample.fit, "-o", tmp / "o"],
            "trim: give --config",
        ),
    ]


def test_errors_are_one_line(sample: SampleFit, tmp_path: Path) -> None:
    for case, args, message in _errors(tmp_path, sample):
        r = overrided(*args)
        assert r.returncode == 1, case
        assert r.stdout == "", case
        assert r.stderr.count("\n") == 1, (case, r.stderr)
        assert r.stderr.startswith(f"overrided: error: {message}"), (case, r.stderr)
        assert "Traceback" not in r.stderr


def test_trim_missing_image_reference(tmp_path: Path) -> None:
    k = tmp_path / "k"
    k.write_bytes(b"k" * 16)
    fit = mkimage_fit(
        its_source([ItsImage("kernel", k, "kernel")], [ItsConfig("c", "kernel", ramdisk=["rd"])]),
        tmp_path / "m.itb",
    )
    r = overrided("fit", "trim", fit, "--config", "c", "-o", tmp_path / "o.itb")
    assert r.returncode == 1
    assert r.stderr == (
        f"overrided: error: {fit}: /configurations/c names image 'rd', "
        "which /images does not have\n"
    )
    assert not (tmp_path / "o.itb").exists()


@pytest.mark.parametrize(
    ("values", "board"),
    [
        (["radxa,rock3a"], ["radxa,rock3a"]),
        (["radxa,rock3a rockchip,rk3568"], ["radxa,rock3a", "rockchip,rk3568"]),
        (['"radxa,rock3a", "rockchip,rk3568"'], ["radxa,rock3a", "rockchip,rk3568"]),
        (["a,b", "c,d"], ["a,b", "c,d"]),
        (["  "], []),
    ],
)
def test_parse_compatible(values: list[str], board: list[str]) -> None:
    assert parse_compatible(values) == board


def test_config_and_compatible_exclude_each_other(sample: SampleFit, tmp_path: Path) -> None:
    r = overrided(
        "fit",
        "trim",
        sample.fit,
        "--config",
        "conf-a",
        "--compatible",
        "v,board-a",
        "-o",
        tmp_path / "o",
    )
    assert r.returncode == 2
    assert "not allowed with argument" in r.stderr
