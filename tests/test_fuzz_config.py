"""Board files under fuzzing: whatever text (or bytes) sits in ``boards/*.toml``, loading it
gives a `Board` or one `BoardError` line that starts with the file's name, and one bad file
never stops `load_boards` from loading the others.

Inputs: arbitrary text and bytes, TOML documents built from board fields and values of every
TOML type (numbers thousands of digits long, arrays nested hundreds deep, keys holding
newlines), and the repository's own board files with characters inserted, deleted or swapped.

The regular tests at the top pin what fuzzing found.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overrided.config import Board, BoardError, display_path, load_board, load_boards
from tests.support.fuzz import FUZZ, check_message, only

pytestmark = pytest.mark.fuzz

REPO = Path(__file__).resolve().parents[1]
BOARD_FILES = sorted((REPO / "boards").glob("*.toml"))


def _board(folder: Path, text: str | bytes, name: str = "fuzz.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


# --------------------------------------------------------------------------------------------
# Found by fuzzing, pinned


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # tomllib turns the digits into an int: ValueError past 4300 digits (CVE-2020-10735).
        ("compatible = ['a,b']\nuser = " + "1" * 5000, "not valid TOML: a value cannot be read"),
        # tomllib recurses once per nesting level: RecursionError.
        (
            "compatible = " + "[" * 5000 + "]" * 5000,
            "not valid TOML: arrays or inline tables nested too deeply",
        ),
        (
            "bootargs = " + "{a = " * 3000 + "1" + "}" * 3000,
            "not valid TOML: arrays or inline tables nested too deeply",
        ),
        # A key holding a newline made a two-line message (log lines can be forged that way).
        ('compatible = ["a,b"]\n"x\\ny" = 1', "'x\\ny': is not a board field"),
        ('compatible = ["a,b"]\n[bootargs]\n"x\\u2028" = 1', "bootargs.'x\\u2028': Input should"),
    ],
)
def test_board_files_that_crashed_the_loader(tmp_path: Path, text: str, message: str) -> None:
    path = _board(tmp_path / "boards", text)
    with pytest.raises(BoardError) as err:
        load_board(path)
    check_message(str(err.value), starts="boards/fuzz.toml: ")
    assert message in str(err.value)


# --------------------------------------------------------------------------------------------
# Generated board files


FIELDS = (*Board.model_fields, "nope", "", "bootargs.console", "a b")


def _basic_string(text: str) -> str:
    """`text` as a TOML basic string (every control character escaped)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_text = st.text(st.characters(codec="utf-8"), max_size=30)
_key = st.sampled_from(FIELDS) | st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
_toml_key = _key.map(
    lambda k: k if k and all(c.isalnum() or c in "_-" for c in k) else _basic_string(k)
)
_scalar = st.one_of(
    _text.map(_basic_string),
    st.sampled_from(['"none"', '"fit"', '"kernel"', '"barebox"', '"u-boot"', '"keep"', '"board"',
                     '"52:54:00:12:34:56"', "'lit'", '"""multi\nline"""', "true", "false", "inf",
                     "-nan", "1979-05-27T07:32:00Z", "07:32:00", "1e400", "0b101", "0o17"]),
    st.integers(-(2**70), 2**70).map(str),
    st.integers(1, 6000).map(lambda n: "9" * n),  # past tomllib's int conversion limit
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)  # fmt: skip


def _nest(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(inner, max_size=4).map(lambda v: "[" + ", ".join(v) + "]"),
        st.lists(st.tuples(_toml_key, inner), max_size=3).map(
            lambda kv: "{" + ", ".join(f"{k} = {v}" for k, v in kv) + "}"
        ),
    )


_value = st.recursive(_scalar, _nest, max_leaves=12)
# Arrays or inline tables nested up to thousands deep.
_deep = st.builds(
    lambda depth, brackets, leaf: brackets[0] * depth + leaf + brackets[1] * depth,
    st.integers(1, 3000),
    st.sampled_from([("[", "]"), ("{a = ", "}")]),
    _scalar,
)


@st.composite
def documents(draw: st.DrawFn) -> str:
    """A TOML document of board fields, usually with a valid ``compatible``."""
    lines = []
    if draw(st.booleans()):
        compatible = draw(st.sampled_from(['["v,board"]', '["a,b", "c"]']))
        lines.append(f"compatible = {compatible}")
    for _ in range(draw(st.integers(0, 6))):
        lines.append(f"{draw(_toml_key)} = {draw(_value | _deep)}")
    if draw(st.booleans()):
        lines.append(f"[{draw(st.sampled_from(['bootargs', 'x', 'compatible']))}]")
        for _ in range(draw(st.integers(0, 3))):
            lines.append(f"{draw(_toml_key)} = {draw(_value)}")
    return "\n".join(lines) + "\n"


@st.composite
def edited_boards(draw: st.DrawFn) -> str:
    """One of the repository's board files with a few characters inserted, deleted or swapped."""
    text = BOARD_FILES[draw(st.integers(0, len(BOARD_FILES) - 1))].read_text()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "swap"]))
        if edit == "insert":
            text = (
                text[:at]
                + draw(st.sampled_from(['"', "[", "]", "=", "\n", "\\", "#", "{", "'"]) | _text)
                + text[at:]
            )
        elif edit == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 8)) :]
        else:
            text = text[:at] + text[at + 1 : at + 2] + text[at : at + 1] + text[at + 2 :]
    return text


board_texts = st.one_of(st.text(), st.binary(), documents(), edited_boards())


@FUZZ
@given(text=board_texts)
def test_any_board_file_loads_or_is_one_board_error(
    text: str | bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as tmp:
        path = _board(Path(tmp) / "boards", text)
        with only(BoardError, starts=f"{display_path(path)}: ", label="load_board") as caught:
            board = load_board(path)
        if caught.error is None:
            assert board.name == "fuzz" and board.compatible and board.hostname


@FUZZ
@given(texts=st.lists(board_texts, min_size=1, max_size=4))
def test_load_boards_keeps_going_past_bad_files(
    texts: list[str | bytes], tmp_path_factory: pytest.TempPathFactory
) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as tmp:
        folder = Path(tmp) / "boards"
        paths = [_board(folder, text, f"b{i}.toml") for i, text in enumerate(texts)]
        boards, errors = load_boards(folder)
        assert len(boards) + len(errors) == len(paths)
        for shown, message in errors.items():
            check_message(message, starts=f"{shown}: ")
        assert {b.name for b in boards}.isdisjoint(Path(shown).stem for shown in errors)
