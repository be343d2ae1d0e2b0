"""What a build folder holds: its FIT, or kernel and DTBs, and its modules CPIOs, found by name
before anything is parsed, and the kernel release their names and contents give.

A build folder may be a whole kernel build tree or just the dropped artifacts. Files and folders
whose name starts with ``.`` are never inputs: an upload is written under a dot-name and renamed
into place when complete. ``modules-*.cpio*`` files (``make modules-cpio-pkg`` names them
``modules-<release>-<arch>.cpio``, maybe compressed; ``codecs.py`` lists the suffixes) are a
build's modules.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from overrided import codecs
from overrided.store import fingerprint

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


KERNEL_NAMES = ("Image", "Image.gz", "zImage")


# ``modules-<release>[-<arch>].cpio``, optionally compressed (``codecs.py`` lists the suffixes).
MODULES_NAME = re.compile(rf"modules-(?P<rest>.+?)\.cpio(?:\.(?:{codecs.SUFFIX_ALTERNATION}))?")


# Architectures as kbuild names them; `modules-<release>-<arch>.cpio` carries one at the end.
_ARCHES = ("arm64", "arm", "riscv", "x86", "x86_64", "powerpc", "mips", "loongarch")


KERNEL_ARCH = {"Image": "arm64", "Image.gz": "arm64", "zImage": "arm"}


def is_hidden(path: Path, root: Path) -> bool:
    """True for a dot-file or anything inside a dot-folder below ``root`` (temp uploads)."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return True
    return any(p.startswith(".") for p in parts)


def release_of_modules_name(name: str) -> str | None:
    """The kernel release in ``modules-<release>[-<arch>].cpio[.gz|…]``.

    kbuild's ``modules-cpio-pkg`` names its output ``modules-<KERNELRELEASE>-<ARCH>.cpio``; a
    release may itself end in an arch-like word (Debian's ``6.1.0-56-arm64``), so exactly one
    trailing arch is dropped only when another arch-like word or version part remains before it.
    """
    m = MODULES_NAME.fullmatch(name)
    if not m:
        return None
    rest = m.group("rest")
    for arch in _ARCHES:
        if rest.endswith(f"-{arch}"):
            head = rest[: -len(arch) - 1]
            # "6.1.0-56-arm64-arm64" → "6.1.0-56-arm64"; "6.19.0-arm64" → "6.19.0"
            return head if head else rest
    return rest


_MODULES_DIR = re.compile(r"^(?:\./)?(?:usr/)?lib/modules/([^/\n]+)(?:/|\Z)")


_RELEASES: dict[str, str | None] = {}  # fingerprint → release: a re-index costs a stat


def release_in_modules_cpio(path: Path, *, look: int = 64) -> str | None:
    """The release a modules CPIO holds modules for: ``lib/modules/<release>/`` in its first
    entries (``usr/lib/modules`` too). Reading stops after ``look`` entries."""
    try:
        key = fingerprint(path)
    except OSError:
        return None
    if key not in _RELEASES:
        if len(_RELEASES) > 1024:
            _RELEASES.clear()
        _RELEASES[key] = _read_release(path, look)
    return _RELEASES[key]


def _read_release(path: Path, look: int) -> str | None:
    from overrided.cpio import CpioError, entries

    try:
        for i, entry in enumerate(entries(path)):
            m = _MODULES_DIR.match(entry.name)
            if m:
                return m.group(1)
            if i >= look:
                break
    except (CpioError, OSError):
        return None
    return None


def newest_mtime(paths: Iterable[Path]) -> float:
    """The latest modification time of ``paths`` (0 for none)."""
    return max((p.stat().st_mtime for p in paths), default=0.0)


def _walk(root: Path) -> Iterable[Path]:
    """Every regular file below ``root``, skipping dot-files and dot-folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                yield Path(dirpath) / f


@dataclass
class Inputs:
    """The files of a build folder that matter, before any of them is parsed."""

    fit: Path | None = None
    kernel: Path | None = None
    dtbs: list[Path] = field(default_factory=list)
    modules: list[Path] = field(default_factory=list)

    def files(self) -> list[Path]:
        """Every input file."""
        out = [p for p in (self.fit, self.kernel) if p is not None]
        return out + self.dtbs + self.modules


def find_inputs(root: Path) -> Inputs:
    """Locate the FIT or kernel + DTBs, and the modules CPIOs, below ``root``."""
    found = Inputs()
    fits: list[Path] = []
    kernels: list[Path] = []
    for path in _walk(root):
        name = path.name
        if name == "image.fit":
            fits.append(path)
        elif name in KERNEL_NAMES:
            kernels.append(path)
        elif name.endswith(".dtb"):
            found.dtbs.append(path)
        elif MODULES_NAME.fullmatch(name):
            found.modules.append(path)

    def newest(paths: list[Path]) -> Path:
        # Several candidates (stale outputs in a build tree): the most recently written wins.
        return max(paths, key=lambda p: (p.stat().st_mtime, -len(p.parts)))

    if fits:
        found.fit = newest(fits)
        found.dtbs = []
    elif kernels:
        # Prefer the uncompressed Image: it is what arm64 `make` produces first.
        by_kind = sorted(kernels, key=lambda p: KERNEL_NAMES.index(p.name))
        found.kernel = newest([k for k in by_kind if k.name == by_kind[0].name])
    return found


def build_folders(builds_dir: Path) -> list[Path]:
    """The build folders below ``builds_dir`` (dot-folders are uploads in progress)."""
    if not builds_dir.is_dir():
        return []
    return sorted(p for p in builds_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def display(path: Path) -> str:
    """A folder's name for messages: relative to the working folder when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
