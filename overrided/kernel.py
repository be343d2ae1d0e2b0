"""Facts about kernel images: the release a kernel reports as ``uname -r``.

Every Linux image carries the banner ``Linux version <release> (<builder>) ...`` (``linux_banner``
in ``init/version.c``). An arm64 ``Image`` (Debian ships it uncompressed, with an EFI stub) has it
in plain bytes; ``Image.gz`` and friends hold it after decompression; an arm ``zImage`` and an
EFI zboot image wrap a compressed kernel behind a small decompressor, so we look for the first
compressed stream inside them that yields the banner.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from overrided import codecs
from overrided.cpio import CpioError, compression_of, decompressed

BANNER = b"Linux version "
# The release is one word of printable ASCII (UTS_RELEASE), at most 64 characters (__NEW_UTS_LEN).
_RELEASE = re.compile(rb"Linux version ([\x21-\x7e]{1,64}) ")
_SCAN = 1 << 20
# How far into a zImage-like wrapper we look for the compressed payload, and how many candidate
# magics we try: the payload starts within the first few hundred KiB of the decompressor.
_WRAPPER_SCAN = 4 << 20
_MAX_CANDIDATES = 32


def _release_in(chunks: Iterator[bytes]) -> str | None:
    """The release from the first banner in a stream of chunks (the banner may span two)."""
    tail = b""
    for chunk in chunks:
        window = tail + chunk
        for m in _RELEASE.finditer(window):
            return m.group(1).decode("ascii")
        tail = window[-(len(BANNER) + 66) :]
    return None


def _candidates(path: Path) -> list[int]:
    """Offsets of compression magics near the start of ``path`` (a zImage's payload)."""
    with open(path, "rb") as f:
        head = f.read(_WRAPPER_SCAN)
    found: set[int] = set()
    for magic in (m for c in codecs.CODECS for m in c.magics):
        start = 0
        while (at := head.find(magic, start)) >= 0:
            found.add(at)
            start = at + 1
    return sorted(found)[:_MAX_CANDIDATES]


def release_of_image(path: Path) -> str | None:
    """The kernel release (``uname -r``) of an ``Image``, ``Image.gz`` (etc.) or ``zImage``.

    ``None`` when no banner can be found.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    try:
        outer = compression_of(head)
    except CpioError:
        outer = None
    try:
        release = _release_in(decompressed(path) if outer else _plain(path))
    except CpioError:
        release = None
    if release is not None or outer is not None:
        return release
    for offset in _candidates(path):
        try:
            release = _release_in(decompressed(path, offset))
        except CpioError:
            continue
        if release is not None:
            return release
    return None


def _plain(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_SCAN):
            yield chunk
