"""Build a FIT from a kernel image and DTBs, like Linux's ``make image.fit`` (docs/formats.md, "FITs
from make image.fit").

Differences from make_fit.py, on purpose: ``/configurations/default`` is set (U-Boot without
FIT_BEST_MATCH needs it) and every image has a sha256 ``hash-1`` (barebox refuses crc32, and
signing needs hash nodes). Layout otherwise follows the newer make_fit.py: ``/images/kernel``
(``kernel_noload``, load = entry = 0), ``/images/fdt-N`` (description = file name), and
``/configurations/conf-N`` with ``compatible`` copied byte for byte from the DTB's root and
``description`` from its ``model``.

The kernel's other shapes are made too: a configuration given as a base DTB and overlays
(make_fit.py ``-D``: its ``fdt`` lists the base, then the overlays, each component stored once),
a ramdisk (make_fit.py ``-r``: ``/images/ramdisk``, never compressed, named by every
configuration), and a kernel with no DTB at all (one configuration holding only the kernel, for
boards that boot with their own device tree).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

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


# One configuration's device tree: a DTB, or a base DTB followed by overlays (make_fit.py -D).
DtbSpec: TypeAlias = Path | Sequence[Path]


def _components(spec: DtbSpec) -> list[Path]:
    return [spec] if isinstance(spec, Path) else list(spec)


def build_fit(
    kernel: Path,
    dtbs: Sequence[DtbSpec],
    out: Path,
    *,
    arch: str = "arm64",
    os_name: str = "linux",
    compression: str = "none",
    description: str | None = None,
    ramdisk: Path | None = None,
    kernel_only: bool = False,
) -> None:
    """Write a FIT with `kernel`, one ``fdt-N`` per distinct DTB or overlay and one ``conf-N``
    per entry of `dtbs` to `out`.

    An entry of `dtbs` that is a sequence is a base DTB and its overlays: the configuration's
    ``fdt`` lists them in that order and its ``compatible`` is the base's. A kernel that is
    already compressed (``Image.gz``...) is stored as it is and labelled with its format;
    otherwise kernel and DTBs are compressed with `compression`, as make_fit.py -c. With no
    DTBs, `kernel_only` must be set: the FIT then has one configuration with only the kernel.
    """
    if compression not in COMPRESSIONS:
        raise FitError(f"unknown compression {compression!r} (known: {', '.join(COMPRESSIONS)})")
    if not dtbs and not kernel_only:
        raise FitError("no DTBs to build a FIT from")
    try:
        raw_kernel = kernel.read_bytes()
        ramdisk_data = ramdisk.read_bytes() if ramdisk is not None else None
    except OSError as err:
        raise FitError(f"{err.filename}: cannot read: {err.strerror}") from None
    configs = [_components(spec) for spec in dtbs]
    if any(not c for c in configs):
        raise FitError("a configuration needs a base DTB")
    # Each distinct file once, in order of first use (make_fit.py -D stores shared overlays
    # once); the base's root compatible is read, an overlay's data is taken as it is.
    units: dict[Path, str] = {}
    payloads: list[tuple[str, Path, bytes]] = []
    bases = [read_dtb(c[0]) for c in configs]
    for comps, base in zip(configs, bases, strict=True):
        for i, path in enumerate(comps):
            if path in units:
                continue
            data = base.data if i == 0 else _read_overlay(path)
            units[path] = f"fdt-{len(units) + 1}"
            payloads.append((units[path], path, compress(data, compression)))
    kernel_comp = detect_compression(raw_kernel)
    kernel_data = raw_kernel if kernel_comp != "none" else compress(raw_kernel, compression)
    if kernel_comp == "none":
        kernel_comp = compression

    # One allocation big enough for everything: FdtSw then never grows (make_fit.py's
    # 64 KiB growth steps made this quadratic, docs/formats.md, "FITs from make image.fit").
    size = len(kernel_data) + len(ramdisk_data or b"") + sum(len(d) + 512 for _, _, d in payloads)
    size += sum(len(b.compatible) + 512 for b in bases)
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
            if ramdisk is not None and ramdisk_data is not None:
                with sw.add_node("ramdisk"):
                    sw.property_string("description", ramdisk.name)
                    sw.property_string("type", "ramdisk")
                    sw.property_string("arch", arch)
                    sw.property_string("os", os_name)
                    # Never compressed: U-Boot warns and barebox passes the bytes on as they are.
                    sw.property_string("compression", "none")
                    sw.property("data", ramdisk_data)
                    _hash(sw, ramdisk_data)
            for unit, path, data in payloads:
                with sw.add_node(unit):
                    sw.property_string("description", path.name)
                    sw.property_string("type", "flat_dt")
                    sw.property_string("arch", arch)
                    sw.property_string("compression", compression)
                    sw.property("data", data)
                    _hash(sw, data)
        with sw.add_node("configurations"):
            sw.property_string("default", "conf-1")
            if not configs:
                with sw.add_node("conf-1"):
                    sw.property_string("description", f"{kernel.name} without a device tree")
                    sw.property_string("kernel", "kernel")
                    if ramdisk is not None:
                        sw.property_string("ramdisk", "ramdisk")
            for n, (comps, base) in enumerate(zip(configs, bases, strict=True), 1):
                with sw.add_node(f"conf-{n}"):
                    sw.property("compatible", base.compatible)
                    sw.property_string("description", base.model or base.path.name)
                    sw.property("fdt", b"".join(units[p].encode() + b"\0" for p in comps))
                    sw.property_string("kernel", "kernel")
                    if ramdisk is not None:
                        sw.property_string("ramdisk", "ramdisk")
    fdt = sw.as_fdt()
    fdt.pack()
    try:
        with out.open("wb") as f:
            f.write(fdt.as_bytearray())
    except OSError as err:
        raise FitError(f"{out}: cannot write: {err.strerror}") from None


def _read_overlay(path: Path) -> bytes:
    """An overlay's bytes; FitError if it is not a flattened tree."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FitError(f"{path}: cannot read: {err.strerror}") from None
    try:
        dtb_view(data, f"{path}: not a DTB overlay")
    except libfdt.FdtException as err:
        raise FitError(f"{path}: not a DTB overlay: {err}") from None
    return data


def _hash(sw: libfdt.FdtSw, data: bytes) -> None:
    with sw.add_node("hash-1"):
        sw.property_string("algo", "sha256")
        sw.property("value", digest("sha256", data))
