"""Pure parts of the HTTP side, as tables: ranges, what to answer, entity tags, names, tokens,
metric labels."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from overrided.http.errors import RequestError
from overrided.http.files import (
    ByteRange,
    Plan,
    Unsatisfiable,
    etag_in,
    etag_of,
    parse_range,
    plan,
)
from overrided.http.metrics import reason_label
from overrided.http.token import TokenError, bearer_matches, load_or_create_token
from overrided.http.uploads import check_artifact_path, check_build_name
from overrided.served import Piece, View

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


TAG = '"abc"'
DATE = "Sun, 06 Nov 2094 08:49:37 GMT"  # later than any file: a 304 if it were compared


@pytest.mark.parametrize(
    ("method", "headers", "answer"),
    [
        ("GET", {}, Plan(200, 0, SIZE)),
        ("HEAD", {}, Plan(200, 0, SIZE)),
        ("GET", {"If-None-Match": TAG}, Plan(304)),
        ("HEAD", {"If-None-Match": TAG}, Plan(304)),
        ("GET", {"If-None-Match": 'W/"abc"'}, Plan(304)),  # weak comparison (RFC 9110 §13.1.2)
        ("GET", {"If-None-Match": '"x", *'}, Plan(304)),
        ("GET", {"If-None-Match": '"old"'}, Plan(200, 0, SIZE)),
        # No Last-Modified, so If-Modified-Since is ignored (§13.1.3), alone or not.
        ("GET", {"If-Modified-Since": DATE}, Plan(200, 0, SIZE)),
        ("GET", {"If-None-Match": '"old"', "If-Modified-Since": DATE}, Plan(200, 0, SIZE)),
        ("GET", {"Range": "bytes=0-99"}, Plan(206, 0, 100, ByteRange(0, 99))),
        ("GET", {"Range": "bytes=-10"}, Plan(206, 990, 10, ByteRange(990, 999))),
        ("HEAD", {"Range": "bytes=0-99"}, Plan(200, 0, SIZE)),  # ranges are for GET (§14.2)
        ("GET", {"Range": "bytes=2000-"}, Plan(416)),
        ("HEAD", {"Range": "bytes=2000-"}, Plan(200, 0, SIZE)),
        ("GET", {"Range": "bytes=0-1,5-6"}, Plan(200, 0, SIZE)),  # several: the whole
        ("GET", {"Range": "items=0-1"}, Plan(200, 0, SIZE)),
        ("GET", {"Range": "bytes=5-1"}, Plan(200, 0, SIZE)),  # invalid: ignored (§14.2)
        ("GET", {"Range": "bytes=1-2", "If-Range": TAG}, Plan(206, 1, 2, ByteRange(1, 2))),
        ("GET", {"Range": "bytes=1-2", "If-Range": 'W/"abc"'}, Plan(200, 0, SIZE)),  # §13.1.5
        ("GET", {"Range": "bytes=1-2", "If-Range": '"old"'}, Plan(200, 0, SIZE)),
        ("GET", {"Range": "bytes=1-2", "If-Range": DATE}, Plan(200, 0, SIZE)),  # no date to match
        ("GET", {"Range": "bytes=2000-", "If-Range": '"old"'}, Plan(200, 0, SIZE)),
        ("GET", {"If-Range": '"old"'}, Plan(200, 0, SIZE)),  # If-Range without Range: ignored
        # If-None-Match is evaluated before the range (§13.2.2).
        ("GET", {"If-None-Match": TAG, "Range": "bytes=2000-"}, Plan(304)),
        ("GET", {"If-None-Match": '"old"', "Range": "bytes=0-0"}, Plan(206, 0, 1, ByteRange(0, 0))),
    ],
)
def test_plan(method: str, headers: dict[str, str], answer: Plan) -> None:
    assert plan(method, headers, TAG, SIZE) == answer


def test_plan_of_an_empty_view() -> None:
    assert plan("GET", {}, TAG, 0) == Plan(200, 0, 0)
    assert plan("GET", {"Range": "bytes=0-"}, TAG, 0) == Plan(416)


def tag(view: View) -> str:
    with view.open() as opened:
        return etag_of(view, opened)


def test_etag_of_a_store_blob_is_its_content_hash(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 10)
    assert tag(View.of_file(tmp_path / "f", 10, "cd" * 32)) == '"' + "cd" * 16 + '"'


def test_etag_names_the_pieces(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(os.urandom(1000))
    b.write_bytes(os.urandom(1000))
    da, db = hashlib.sha256(a.read_bytes()).hexdigest(), hashlib.sha256(b.read_bytes()).hexdigest()

    base = (Piece.literal(b"hdr"), Piece(100, a, 10, digest=da), Piece(50, b, 0, digest=db))
    tags = {
        "same": tag(View(base)),
        "same, built again": tag(View((Piece.literal(b"hdr"), *base[1:]))),
        "other literal": tag(View((Piece.literal(b"hdR"), *base[1:]))),
        "other offset": tag(View((base[0], Piece(100, a, 11, digest=da), base[2]))),
        "other length": tag(View((base[0], Piece(99, a, 10, digest=da), base[2]))),
        "other file": tag(View((base[0], Piece(100, b, 10, digest=db), base[2]))),
        "other order": tag(View((base[0], base[2], base[1]))),
    }
    assert tags["same"] == tags["same, built again"]
    others = [v for k, v in tags.items() if not k.startswith("same")]
    assert tags["same"] not in others and len(set(others)) == len(others)
    assert all(len(t) == 34 and t[0] == t[-1] == '"' for t in tags.values())  # strong, quoted


def test_etag_of_a_plain_file_follows_its_rewrites(tmp_path: Path) -> None:
    # A folder's file has no content hash and may be rewritten in place with the same size:
    # the path alone would keep the tag, so the identity of the file on disk is in it too.
    f = tmp_path / "boot.scr"
    f.write_bytes(b"one" * 10)
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    view = View((Piece.literal(b"#"), Piece(30, f)))
    before = tag(view)
    assert tag(view) == before  # stable while the file is
    f.write_bytes(b"two" * 10)
    os.utime(f, ns=(2_000_000_000, 2_000_000_000))
    assert tag(view) != before


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
