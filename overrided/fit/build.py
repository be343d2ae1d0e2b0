"""Build a FIT from a kernel image and DTBs, like Linux's ``make image.fit`` (fit.md §4).

Differences from make_fit.py, on purpose: ``/configurations/default`` is set (U-Boot without
FIT_BEST_MATCH needs it) and every image has a sha256 ``hash-1`` (barebox refuses crc32, and
signing needs hash nodes). Layout otherwise follows the newer make_fit.py: ``/images/kernel``
(``kernel_noload``, load = entry = 0), ``/images/fdt-N`` (description = file name), and
``/configurations/conf-N`` with ``compatible`` copied byte for byte from the DTB's root and
``description`` from its ``model``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import libfdt

from overrided import codecs
from overrided.fit.hashes import digest
from overrided.fit.model import FitError, dtb_view

# What `build --compression` can write: make_fit.py's -c choices (``codecs.py`` has them).
COMPRESSIONS: tuple[str, ...] = ("none", *codecs.FIT)


def detect_compression(data: bytes) -> str:
    """The compression a payload already has, judged by its magic; "none" if unknown."""
    codec = codecs.of_payload(data)
    return codec.name if codec is not None else "none"


def compress(data: bytes, method: str) -> bytes:
    """`data` compressed as FIT ``compression = method`` expects it."""
    if method == "none":
        return data
    if method not in COMPRESSIONS:
        raise FitError(f"unknown compression {method!r} (known: {', '.join(COMPRESSIONS)})")
    try:
        return codecs.BY_NAME[method].compress(data, "fit")
    except codecs.CodecError as err:
        raise FitError(f"compression {err}") from None


def find_dtbs(folder: Path) -> list[Path]:
    """Every ``*.dtb`` below `folder` (vendor subfolders included), sorted by relative path."""
    if not folder.is_dir():
        raise FitError(f"{folder}: not a folder")
    return sorted(folder.rglob("*.dtb"), key=lambda p: p.relative_to(folder).as_posix())


@dataclass(frozen=True)
class BoardDtb:
    """A DTB going into the FIT, with what its configuration copies from its root node."""

    path: Path
    data: bytes
    compatible: bytes  # raw property value, NULs included
    model: str | None


def read_dtb(path: Path) -> BoardDtb:
    """Read a DTB and its root ``compatible``/``model``; FitError if it is not a DTB or has no
    compatible (a configuration without one can only be chosen by name)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FitError(f"{path}: cannot read: {err.strerror}") from None
    try:
        fdt = dtb_view(data, f"{path}: not a DTB")  # a lying header is an error, not a crash
        compat = fdt.getprop(0, "compatible", quiet=(libfdt.NOTFOUND,))
        model = fdt.getprop(0, "model", quiet=(libfdt.NOTFOUND,))
    except libfdt.FdtException as err:
        raise FitError(f"{path}: not a DTB: {err}") from None
    if isinstance(compat, int) or not bytes(compat).strip(b"\0"):
        raise FitError(f"{path}: DTB has no root compatible")
    return BoardDtb(
        path=path,
        data=data,
        compatible=bytes(compat),
        model=None if isinstance(model, int) else model.as_str(),
    )


def _timestamp() -> int:
    # Reproducible builds: honour SOURCE_DATE_EPOCH like other build tools do.
    return int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))


def build_fit(
    kernel: Path,
    dtbs: Sequence[Path],
    out: Path,
    *,
    arch: str = "arm64",
    os_name: str = "linux",
    compression: str = "none",
    description: str | None = None,
) -> None:
    """Write a FIT with `kernel`, one ``fdt-N`` per DTB and one ``conf-N`` per DTB to `out`.

    A kernel that is already compressed (``Image.gz``...) is stored as it is and labelled with
    its format; otherwise kernel and DTBs are compressed with `compression`, as make_fit.py -c.
    """
    if compression not in COMPRESSIONS:
        raise FitError(f"unknown compression {compression!r} (known: {', '.join(COMPRESSIONS)})")
    if not dtbs:
        raise FitError("no DTBs to build a FIT from")
    try:
        raw_kernel = kernel.read_bytes()
    except OSError as err:
        raise FitError(f"{kernel}: cannot read: {err.strerror}") from None
    boards = [read_dtb(p) for p in dtbs]
    kernel_comp = detect_compression(raw_kernel)
    kernel_data = raw_kernel if kernel_comp != "none" else compress(raw_kernel, compression)
    if kernel_comp == "none":
        kernel_comp = compression
    fdts = [compress(b.data, compression) for b in boards]

    # One allocation big enough for everything: FdtSw then never grows (make_fit.py's
    # 64 KiB growth steps made this quadratic, fit.md §4).
    size = len(kernel_data) + sum(
        len(d) + len(b.compatible) + 1024 for d, b in zip(fdts, boards, strict=True)
    )
    sw = libfdt.FdtSw(size + 65536)
    sw.finish_reservemap()
    with sw.add_node(""):
        sw.property_string("description", description or f"{kernel.name} with devicetree set")
        sw.property_u32("timestamp", _timestamp())
        sw.property_u32("#address-cells", 1)
        with sw.add_node("images"):
            with sw.add_node("kernel"):
                sw.property_string("description", kernel.name)
                sw.property_string("type", "kernel_noload")
                sw.property_string("arch", arch)
                sw.property_string("os", os_name)
                sw.property_string("compression", kernel_comp)
                sw.property_u32("load", 0)
                sw.property_u32("entry", 0)
                sw.property("data", kernel_data)
                _hash(sw, kernel_data)
            for n, (board, data) in enumerate(zip(boards, fdts, strict=True), 1):
                with sw.add_node(f"fdt-{n}"):
                    sw.property_string("description", board.path.name)
                    sw.property_string("type", "flat_dt")
                    sw.property_string("arch", arch)
                    sw.property_string("compression", compression)
                    sw.property("data", data)
                    _hash(sw, data)
        with sw.add_node("configurations"):
            sw.property_string("default", "conf-1")
            for n, board in enumerate(boards, 1):
                with sw.add_node(f"conf-{n}"):
                    sw.property("compatible", board.compatible)
                    sw.property_string("description", board.model or board.path.name)
                    sw.property_string("fdt", f"fdt-{n}")
                    sw.property_string("kernel", "kernel")
    fdt = sw.as_fdt()
    fdt.pack()
    try:
        with out.open("wb") as f:
            f.write(fdt.as_bytearray())
    except OSError as err:
        raise FitError(f"{out}: cannot write: {err.strerror}") from None


def _hash(sw: libfdt.FdtSw, data: bytes) -> None:
    with sw.add_node("hash-1"):
        sw.property_string("algo", "sha256")
        sw.property("value", digest("sha256", data))
