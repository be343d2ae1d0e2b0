"""Pure parts of the HTTP side, as tables: ranges, entity tags, names, tokens, metric labels."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from overrided.http.errors import RequestError
from overrided.http.files import ByteRange, Unsatisfiable, etag_in, parse_range
from overrided.http.metrics import reason_label
from overrided.http.token import TokenError, bearer_matches, load_or_create_token
from overrided.http.uploads import check_artifact_path, check_build_name

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "ranges"),
    [
        ("bytes=0-99", [ByteRange(0, 99)]),
        ("bytes=900-", [ByteRange(900, 999)]),
        ("bytes=-100", [ByteRange(900, 999)]),
        ("bytes=-5000", [ByteRange(0, 999)]),  # suffix longer than the file: all of it
        ("bytes=990-5000", [ByteRange(990, 999)]),  # last-pos clipped (RFC 9110 §14.1.2)
        ("BYTES=0-0", [ByteRange(0, 0)]),  # the unit is case-insensitive
        ("bytes= 1 - 2 ", [ByteRange(1, 2)]),
        ("bytes=0-1,5-6", [ByteRange(0, 1), ByteRange(5, 6)]),
        ("bytes=0-1,,", [ByteRange(0, 1)]),  # empty list elements are ignored
        ("bytes=2000-3000,0-1", [ByteRange(0, 1)]),  # unsatisfiable members are dropped
        ("items=0-1", None),  # unknown unit: ignore the field
        ("bytes", None),
        ("bytes=5-1", None),  # last < first: invalid, ignore
        ("bytes=-", None),
        ("bytes=a-b", None),
        ("bytes=1-2-3", None),
    ],
)
def test_parse_range(header: str, ranges: list[ByteRange] | None) -> None:
    assert parse_range(header, SIZE) == ranges


@pytest.mark.parametrize(
    "header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=1000-,2000-"]
)
def test_parse_range_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, SIZE)


def test_empty_file_has_no_satisfiable_range() -> None:
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=-1", 0)


def test_content_range() -> None:
    assert ByteRange(10, 19).content_range(100) == "bytes 10-19/100"


@pytest.mark.parametrize(
    ("header", "weak", "match"),
    [
        ('"abc"', True, True),
        ('"abc"', False, True),
        ('W/"abc"', True, True),  # If-None-Match compares weakly (RFC 9110 §13.1.2)
        ('W/"abc"', False, False),  # If-Range needs a strong match (§13.1.5)
        ('"x", "abc"', True, True),
        ('"x" ,W/"y"', True, False),
        ("*", True, True),
        ('"abcd"', True, False),
        ("abc", True, False),  # unquoted is not our tag
    ],
)
def test_etag_in(header: str, weak: bool, match: bool) -> None:
    assert etag_in(header, '"abc"', weak=weak) is match


@pytest.mark.parametrize("name", ["k1", "6.1.0-rc3", "next-20260101", "a+b_c.d", "A" * 128])
def test_build_name_ok(name: str) -> None:
    assert check_build_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".hidden", "..", "a..b", "a/b", "a b", "-x", "A" * 129, "é", "a\x00"]
)
def test_build_name_refused(name: str) -> None:
    with pytest.raises(RequestError, match="not allowed") as err:
        check_build_name(name)
    assert err.value.status == 400


@pytest.mark.parametrize(
    "path",
    [
        "image.fit",
        "modules-6.1.0-56-arm64.cpio",
        "modules-6.1.0-56-arm64.cpio.zst",
        "Image",
        "Image.gz",
        "zImage",
        "rk3568-rock-3a.dtb",
        "rockchip/rk3568-rock-3a.dtb",
        "dts/rockchip/rk3568-rock-3a.dtb",
        "board@1.dtb",
    ],
)
def test_artifact_path_ok(path: str) -> None:
    assert check_artifact_path(path) == path


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../image.fit", "not allowed"),
        ("a/../image.fit", "not allowed"),
        (".image.fit", "not allowed"),
        ("rockchip/.x.dtb", "not allowed"),
        ("vmlinux", "not a build artifact"),
        ("image.fit.bak", "not a build artifact"),
        ("modules.cpio", "not a build artifact"),
        ("private.pem", "not a build artifact"),
        ("sub/image.fit", "only DTBs"),
        ("a/b/c/x.dtb", "too deep"),
        ("a//x.dtb", "not allowed"),
        ("x dtb.dtb", "not allowed"),
    ],
)
def test_artifact_path_refused(path: str, why: str) -> None:
    with pytest.raises(RequestError, match=why):
        check_artifact_path(path)


def test_token_created_once_with_mode_0600(tmp_path: Path) -> None:
    token, created = load_or_create_token(tmp_path / "state")
    assert created and len(token) >= 32
    mode = stat.S_IMODE((tmp_path / "state" / "token").stat().st_mode)
    assert mode == 0o600
    assert load_or_create_token(tmp_path / "state") == (token, False)


def test_empty_token_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    with pytest.raises(TokenError, match="empty"):
        load_or_create_token(tmp_path)


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),  # the scheme is case-insensitive
        ("Bearer  s3cret ", True),
        ("Bearer s3cre", False),
        ("Bearer s3cret2", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        ("", False),
        (None, False),
    ],
)
def test_bearer_matches(header: str | None, ok: bool) -> None:
    assert bearer_matches(header, "s3cret") is ok


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("name 'none-devboot-x' is not in the catalog", "name … is not in the catalog"),
        ("timeout after 15 s at block 1234", "timeout after N s at block N"),
        ("", "failed"),
        ("x" * 100, "x" * 60),
    ],
)
def test_reason_label_is_bounded(reason: str, label: str) -> None:
    assert reason_label("failed", reason) == label
