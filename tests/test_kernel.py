"""The kernel release read from images: the real Debian arm64 Image, compressed, and wrapped."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from overrided.kernel import release_of_image
from tests.support import debian


@pytest.fixture(scope="session")
def kernel() -> debian.Kernel:
    return debian.kernel()


def test_release_of_debians_uncompressed_arm64_image(kernel: debian.Kernel) -> None:
    # Debian's vmlinuz for arm64 is a plain Image with an EFI stub ("MZ" header, ARM\x64 magic).
    head = kernel.image.read_bytes()[:64]
    assert head[:2] == b"MZ" and head[56:60] == b"ARM\x64"
    assert release_of_image(kernel.image) == kernel.release


@pytest.mark.parametrize(
    ("suffix", "tool"),
    [("gz", ["gzip", "-1", "-c"]), ("zst", ["zstd", "-1", "-c"]), ("lz4", ["lz4", "-l", "-c"])],
)
def test_release_of_a_compressed_image(
    kernel: debian.Kernel, tmp_path: Path, suffix: str, tool: list[str]
) -> None:
    out = tmp_path / f"Image.{suffix}"
    with out.open("wb") as f:
        subprocess.run([*tool, str(kernel.image)], stdout=f, check=True)
    assert release_of_image(out) == kernel.release


def test_release_of_a_zimage_style_wrapper(kernel: debian.Kernel, tmp_path: Path) -> None:
    """A decompressor stub followed by the gzip'd kernel, as an arm zImage is laid out.

    No arm32 kernel is at hand, so the stub is synthetic: zImage's magic 0x016f2818 at offset
    0x24 and some code-like bytes that contain no banner, then the real Image compressed.
    """
    stub = bytearray(0x4000)
    stub[0x24:0x28] = (0x016F2818).to_bytes(4, "little")
    stub[0x100:0x110] = b"\x1f\x8b\x08\0 not gzip..."  # a false magic must not stop the search
    payload = gzip.compress(kernel.image.read_bytes(), compresslevel=1, mtime=0)
    image = tmp_path / "zImage"
    image.write_bytes(bytes(stub) + payload + b"\0" * 64)
    assert release_of_image(image) == kernel.release


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\0" * 100 + b"Linux version 6.12.0-rc1+ (me@host) #1 SMP", "6.12.0-rc1+"),
        (b"Linux version 5.10.0-cip42 ", "5.10.0-cip42"),
        (b"no banner here" * 1000, None),
        (b"", None),
        (b"Linux version  (double space)", None),
    ],
)
def test_release_banner_table(tmp_path: Path, content: bytes, expected: str | None) -> None:
    image = tmp_path / "Image"
    image.write_bytes(content)
    assert release_of_image(image) == expected


def test_banner_across_a_read_boundary(tmp_path: Path) -> None:
    image = tmp_path / "Image"
    image.write_bytes(b"\0" * ((1 << 20) - 7) + b"Linux version 6.1.0-56-arm64 (x)")
    assert release_of_image(image) == "6.1.0-56-arm64"


def test_missing_file_has_no_release(tmp_path: Path) -> None:
    assert release_of_image(tmp_path / "nope") is None
