"""One table of compressions (``overrided/codecs.py``) from which every reader and writer derives
what it accepts: CPIO parts, FIT payloads, build discovery, uploads and the OpenAPI patterns."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from overrided import codecs, cpio
from overrided.discovery import MODULES_NAME
from overrided.fit.build import COMPRESSIONS as FIT_COMPRESSIONS
from overrided.fit.build import compress, detect_compression
from overrided.http.errors import RequestError
from overrided.http.openapi import _ARTIFACT
from overrided.http.uploads import check_artifact_path as artifact_path

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("codec", codecs.CODECS, ids=lambda c: c.name)
def test_every_suffix_is_a_modules_cpio_everywhere(codec: codecs.Codec) -> None:
    name = f"modules-6.1.0-arm64.cpio.{codec.suffix}"
    assert MODULES_NAME.fullmatch(name)
    assert artifact_path(name) == name
    assert re.fullmatch(_ARTIFACT["schema"]["pattern"], name)


def test_an_unknown_suffix_is_refused_by_uploads_and_discovery() -> None:
    assert not MODULES_NAME.fullmatch("modules-6.1.0.cpio.rar")
    with pytest.raises(RequestError, match=r"\.zst"):
        artifact_path("modules-6.1.0.cpio.rar")


@pytest.mark.parametrize("codec", codecs.CODECS, ids=lambda c: c.name)
def test_the_initramfs_encoding_is_what_the_kernel_and_the_real_tool_read(
    codec: codecs.Codec, tmp_path: Path
) -> None:
    data = b"overrided " * 5000
    packed = codec.compress(data, "initramfs")
    assert codecs.of_stream(packed) is codec
    # Decoded by the Debian tool of that format (where the standard library did the writing,
    # the tool is the independent reader; xz and lzma by xz-utils, gzip by gzip, bzip2 by bzip2).
    tool = {"gzip": ["gzip", "-dc"], "bzip2": ["bzip2", "-dc"], "xz": ["xz", "-dc"]}.get(
        codec.name, ["xz", "--format=lzma", "-dc"] if codec.name == "lzma" else None
    ) or list(codec.tool.decompress if codec.tool else [])
    out = subprocess.run(tool, input=packed, capture_output=True, check=True).stdout
    assert out == data


@pytest.mark.parametrize("name", [n for n in FIT_COMPRESSIONS if n != "none"])
def test_a_fit_payload_compressed_by_us_is_recognised_again(name: str) -> None:
    packed = compress(b"\x00kernel" * 4000, name)
    # lzma's legacy header has no magic to tell a payload by: such a kernel gets compressed
    # again rather than mislabelled.
    assert detect_compression(packed) == ("none" if name == "lzma" else name)


def test_the_cpio_and_fit_choices_come_from_the_table() -> None:
    assert tuple(c.name for c in codecs.CODECS) == cpio.COMPRESSIONS
    assert "xz" not in FIT_COMPRESSIONS  # U-Boot has no xz for FIT images
    assert set(FIT_COMPRESSIONS) - {"none"} == {c.name for c in codecs.CODECS if c.in_fit}


def test_no_other_module_knows_a_compression_magic() -> None:
    magics = {m for c in codecs.CODECS for m in (*c.magics, *c.payload_magics)}
    spelled = {m: repr(m)[2:-1] for m in magics}
    for path in sorted((REPO / "overrided").rglob("*.py")):
        if path.name == "codecs.py":
            continue
        text = path.read_text()
        for magic, literal in spelled.items():
            assert literal not in text, f"{path.relative_to(REPO)} spells the magic {magic!r}"
