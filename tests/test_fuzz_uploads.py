"""Upload names under fuzzing (overrided/http/uploads.py): a build name or artifact path the
server accepts stays inside the builds folder and holds no control character, whatever a
client puts in the URL or a multipart filename (``/``, ``..``, NUL, newlines, look-alike
unicode dots and slashes, right-to-left marks)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from overrided.http.errors import RequestError
from overrided.http.uploads import check_artifact_path, check_build_name, temp_name
from tests.support.fuzz import FUZZ, check_message, only

pytestmark = pytest.mark.fuzz

# Characters that make names escape, split lines or look like something else.
NASTY = [
    "/", "\\", ".", "..", "\0", "\n", "\r", "\t", " ", "\x7f", "\u2028", "\u202e", "\ufeff",
    "．", "／", "∕", "%2e", "%2f", "%00", "%0a", ":", "~", "*", "?", "é",
]  # fmt: skip
_plain = st.from_regex(r"[A-Za-z0-9._+,@=-]{0,12}", fullmatch=True)
_artifact = st.sampled_from(
    ["image.fit", "Image", "Image.gz", "zImage", "b.dtb", "v/b.dtb", "v/w/b.dtb",
     "modules-6.1.cpio", "modules-6.1.cpio.zst"]
)  # fmt: skip


def _spliced(base: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """`base` with nasty characters put at its start, its end or in between."""
    return st.builds(
        lambda s, bad, at: s[:at] + bad + s[at:],
        base,
        st.lists(st.sampled_from(NASTY), min_size=1, max_size=3).map("".join),
        st.integers(0, 40),
    )


names = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from([*NASTY, "a", "b", "0"]), max_size=12).map("".join),
    _plain,
    _spliced(_plain),
    _artifact,
    _spliced(_artifact),
    st.lists(_spliced(_plain) | _plain, min_size=1, max_size=5).map("/".join),
    # vendor folders in front of a DTB, plain or spliced
    st.builds(lambda d, b: f"{d}/{b}", _plain | _spliced(_plain), _artifact | _spliced(_artifact)),
)


def _inside(base: Path, name: str) -> bool:
    target = (base / name).resolve()
    return target != base and base in target.parents


def _no_controls(name: str) -> bool:
    return all(ch.isprintable() and ch not in "\\" for ch in name)


@FUZZ
@given(name=names)
@example(name="k1\n")  # `re.match("...$")` let a final newline through
@example(name="k1\r")
@example(name="..")
def test_build_names(name: str) -> None:
    with only(RequestError, label="build name") as caught:
        assert check_build_name(name) == name
    if caught.error is not None:
        assert getattr(caught.error, "status", None) == 400
        return
    base = Path(tempfile.gettempdir()).resolve() / "builds"
    assert "/" not in name and not name.startswith(".") and ".." not in name
    assert _no_controls(name), f"accepted a build name with a control character: {name!r}"
    assert _inside(base, name) and (base / name).resolve().parent == base


@FUZZ
@given(path=names)
@example(path="Image.\n")
@example(path="image.fit\n")
@example(path="v\n/x.dtb")
@example(path="modules-6.1.cpio.gz\n")
@example(path="v/../x.dtb")
def test_artifact_paths(path: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    with only(RequestError, label="artifact path") as caught:
        assert check_artifact_path(path) == path
    if caught.error is not None:
        assert getattr(caught.error, "status", None) == 400
        return
    build = tmp_path_factory.getbasetemp().resolve() / "fuzz-builds" / "b1"
    parts = path.split("/")
    assert len(parts) <= 3 and all(p and not p.startswith(".") and p != ".." for p in parts)
    assert _no_controls(path), f"accepted an artifact path with a control character: {path!r}"
    assert _inside(build, path)
    tmp = temp_name(build, path)
    assert tmp.parent == build.parent and tmp.name.startswith(".") and "/" not in tmp.name


def test_refusals_are_one_line() -> None:
    for bad in ("a\nb", "v\n/x.dtb", "x" * 300):
        for check in (check_build_name, check_artifact_path):
            with pytest.raises(RequestError) as err:
                check(bad)
            check_message(str(err.value))
