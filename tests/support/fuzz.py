"""Property-based fuzzing with hypothesis: one settings profile, byte mutations, error checks.

Every ``tests/test_fuzz_*.py`` decorates its properties with `FUZZ`, so one environment
variable sets the budget of all of them::

    pytest tests/test_fuzz_*.py                                # ~150 examples a property
    OVERRIDED_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_*.py  # what `make fuzz` runs

Failing examples are kept in ``.hypothesis/`` at the repository root (ignored by git) and
replayed first on the next run. Mutations are data, drawn from `mutations()` and applied by
`mutate()` to whatever real file a test made, so a shrunk failure reads as a short list of
edits (`Mutation`: which region, where in it, what was done)::

    blob = mutate(sample_bytes, data.draw(mutations()), fdt_regions, fdt_resize)
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

REPO = Path(__file__).resolve().parents[2]
# The quick budget keeps the whole fuzz set near a minute on two cores.
QUICK_EXAMPLES = 150
EXAMPLES = int(os.environ.get("OVERRIDED_FUZZ_EXAMPLES", QUICK_EXAMPLES))

settings.register_profile(
    "overrided-fuzz",
    max_examples=EXAMPLES,
    # Parsers run mkimage, gzip and libfdt: timing varies, and a slow example is no failure.
    deadline=None,
    database=DirectoryBasedExampleDatabase(REPO / ".hypothesis" / "examples"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
# Used as a decorator (``@FUZZ``); the profile is not loaded globally, so hypothesis tests
# outside the fuzz set keep their own settings.
FUZZ = settings.get_profile("overrided-fuzz")


def scaled(n: int) -> int:
    """`n` examples at the quick budget, scaled with `EXAMPLES` (for slow properties that
    should run fewer examples than the rest, e.g. one mkimage call each)."""
    return max(10, n * EXAMPLES // QUICK_EXAMPLES)


# --------------------------------------------------------------------------------------------
# Mutations of real files


@dataclass(frozen=True)
class Mutation:
    """One edit of a byte string, placed by region rather than absolute offset.

    `region` picks one of the regions the test names for the current bytes (modulo their
    number), `at` a position inside it (modulo its length). `resize` asks the test's fix-up
    to keep the format's own size fields consistent with an insertion or deletion, so the
    parser gets past its first size check and meets the damage itself.
    """

    kind: str  # flip | truncate | insert | delete | overwrite | set32 | add32
    region: int
    at: int
    bit: int = 0
    data: bytes = b""
    value: int = 0
    resize: bool = False

    def __str__(self) -> str:
        extra = {
            "flip": f" bit {self.bit}",
            "insert": f" {self.data.hex()}",
            "overwrite": f" {self.data!r}",
            "delete": f" {self.value} bytes",
            "set32": f" {self.value:#x}",
            "add32": f" {self.value:+d}",
        }.get(self.kind, "")
        fix = " (sizes fixed)" if self.resize else ""
        return f"{self.kind} region {self.region} at {self.at}{extra}{fix}"


# Big-endian words a parser treats specially: FDT tokens and magic, 0, -1, sign edges.
INTERESTING_WORDS = (
    0, 1, 2, 3, 4, 8, 9, 16, 17, 40, 0x7F, 0x80, 0xFF, 0x100, 0x1000, 0xFFFF, 0x10000,
    0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFC, 0xFFFFFFFF, 0xD00DFEED,
)  # fmt: skip

_word = st.sampled_from(INTERESTING_WORDS) | st.integers(0, 0xFFFFFFFF)
_region = st.integers(0, 15)
_at = st.integers(0, 1 << 24)


def mutation(
    inserts: Sequence[bytes] = (), extra: Sequence[st.SearchStrategy[Mutation]] = ()
) -> st.SearchStrategy[Mutation]:
    """One `Mutation`; `inserts` are format-specific byte strings worth inserting or writing
    over what is there (tokens, magics), tried besides random bytes; `extra` are further
    format-specific mutation strategies."""
    pieces = st.binary(min_size=1, max_size=16)
    if inserts:
        pieces = st.sampled_from(list(inserts)) | pieces
    return st.one_of(
        *extra,
        st.builds(Mutation, st.just("overwrite"), _region, _at, data=pieces),
        st.builds(Mutation, st.just("flip"), _region, _at, bit=st.integers(0, 7)),
        st.builds(Mutation, st.just("truncate"), _region, _at),
        st.builds(Mutation, st.just("insert"), _region, _at, data=pieces, resize=st.booleans()),
        st.builds(
            Mutation,
            st.just("delete"),
            _region,
            _at,
            value=st.sampled_from([1, 2, 3, 4, 8, 12, 16, 32]),
            resize=st.booleans(),
        ),
        st.builds(Mutation, st.just("set32"), _region, _at, value=_word),
        st.builds(Mutation, st.just("add32"), _region, _at, value=st.integers(-64, 64)),
    )


def mutations(
    inserts: Sequence[bytes] = (),
    extra: Sequence[st.SearchStrategy[Mutation]] = (),
    max_size: int = 4,
) -> st.SearchStrategy[list[Mutation]]:
    """One to `max_size` mutations (see `mutation`), applied in order."""
    return st.lists(mutation(inserts, extra), min_size=1, max_size=max_size)


Regions = Callable[[bytes], Sequence[tuple[int, int]]]
Resize = Callable[[bytearray, int, int], None]  # (bytes, offset, +inserted/-deleted bytes)


def mutate(
    blob: bytes, edits: Sequence[Mutation], regions: Regions, resize: Resize | None = None
) -> bytes:
    """`blob` with `edits` applied in order. `regions(current)` lists ``(start, end)`` ranges
    the edits are placed in (recomputed after each edit, as headers move); `resize` fixes the
    format's size fields after an insertion or deletion that asks for it."""
    out = bytearray(blob)
    for edit in edits:
        if not out:
            break
        spans = [(s, e) for s, e in regions(bytes(out)) if 0 <= s < e <= len(out)] or [
            (0, len(out))
        ]
        start, end = spans[edit.region % len(spans)]
        pos = start + edit.at % (end - start)
        if edit.kind == "flip":
            out[pos] ^= 1 << edit.bit
        elif edit.kind == "truncate":
            del out[pos:]
        elif edit.kind == "insert":
            out[pos:pos] = edit.data
            if edit.resize and resize is not None:
                resize(out, pos, len(edit.data))
        elif edit.kind == "overwrite":
            out[pos : pos + len(edit.data)] = edit.data[: len(out) - pos]
        elif edit.kind == "delete":
            gone = len(out[pos : pos + edit.value])
            del out[pos : pos + edit.value]
            if edit.resize and resize is not None:
                resize(out, pos, -gone)
        elif edit.kind in ("set32", "add32"):
            pos &= ~3  # words of the formats fuzzed here are 4-byte aligned
            if pos + 4 > len(out):
                continue
            old = struct.unpack_from(">I", out, pos)[0]
            new = edit.value if edit.kind == "set32" else old + edit.value
            struct.pack_into(">I", out, pos, new & 0xFFFFFFFF)
        else:
            raise ValueError(f"unknown mutation {edit.kind!r}")
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Checks on errors


@dataclass
class Caught:
    """What `only` let pass: the error, or None when the block ran through."""

    error: Exception | None = None


@contextmanager
def only(
    error: type[Exception] | tuple[type[Exception], ...], *, starts: str = "", label: str = ""
) -> Iterator[Caught]:
    """Let `error` (the module's own error type) pass and check it is a user-facing message:
    one printable line, starting with `starts` (the file it names) when given. Anything else
    propagates and fails the property. With `label`, the outcome is counted as a hypothesis
    event (``--hypothesis-show-statistics`` shows how deep the inputs got)."""
    caught = Caught()
    try:
        yield caught
    except error as err:
        caught.error = err
        check_message(str(err), starts=starts)
    if label:
        event(f"{label}: {'error' if caught.error else 'ok'}")


def check_message(text: str, *, starts: str = "") -> None:
    """Assert `text` is one line a terminal can print (no lone surrogates) naming `starts`."""
    assert text, "empty error message"
    assert "\n" not in text, f"multi-line error message: {text!r}"
    text.encode("utf-8")  # raises on lone surrogates, which `print` would choke on
    if starts:
        assert text.startswith(starts), f"error message does not start with {starts!r}: {text!r}"
