"""Image hash nodes: digests as FIT stores them, and adding ``hash-1`` where an image has none.

Linux's make_fit.py writes no hash nodes, but barebox with ``verify=hash``/``signature`` needs
``hash-1`` in every image and mkimage refuses to sign a configuration whose images lack one.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

import libfdt

from overrided.fit.model import Fit, FitError, read_header, reservation_map

# docs/formats.md, "Image nodes": the algorithms both bootloaders know for hash-N/algo.
HASH_ALGOS: tuple[str, ...] = ("crc32", "md5", "sha1", "sha256", "sha384", "sha512")

_FDT_ERR_NOSPACE = 3
_FDT_ERR_NOTFOUND = 1


def digest(algo: str, data: bytes | bytearray | memoryview) -> bytes:
    """The raw ``hash-N/value`` for `data` under `algo` (crc32 is a big-endian 32-bit cell)."""
    if algo == "crc32":
        return struct.pack(">I", zlib.crc32(data) & 0xFFFFFFFF)
    if algo not in HASH_ALGOS:
        raise FitError(f"unknown hash algo {algo!r} (known: {', '.join(HASH_ALGOS)})")
    return hashlib.new(algo, data).digest()


def _aligned_end(totalsize: int) -> int:
    # docs/formats.md, "Image nodes": external data-offset counts from the first 4-byte-aligned byte
    # after the FDT.
    return (totalsize + 3) & ~3


def _cell(fdt: libfdt.FdtRo, node: int, prop: str, where: str) -> int | None:
    """A 1- or 2-cell number property (None when absent)."""
    value = fdt.getprop(node, prop, quiet=(_FDT_ERR_NOTFOUND,))
    if isinstance(value, int):
        return None
    raw = bytes(value)
    if len(raw) not in (4, 8):
        raise FitError(f"{where}/{prop}: {len(raw)} bytes, want 4 or 8")
    return int.from_bytes(raw, "big")


def _image_data(blob: bytes, fdt: libfdt.FdtRo, node: int, where: str) -> bytes:
    """The stored bytes of an image node: embedded ``data`` or external offset/position + size."""
    data = fdt.getprop(node, "data", quiet=(_FDT_ERR_NOTFOUND,))
    if not isinstance(data, int):
        return bytes(data)
    length = _cell(fdt, node, "data-size", where)
    if length is None:
        raise FitError(f"{where}: no data, data-offset or data-position")
    offset = _cell(fdt, node, "data-offset", where)
    if offset is not None:
        start = _aligned_end(fdt.totalsize()) + offset
    else:
        position = _cell(fdt, node, "data-position", where)
        if position is None:
            raise FitError(f"{where}: data-size without data-offset or data-position")
        start = position
    if start + length > len(blob):
        raise FitError(f"{where}: external data {start:#x}+{length:#x} lies beyond the file end")
    return blob[start : start + length]


def _subnodes(fdt: libfdt.FdtRo, node: int) -> list[int]:
    out = []
    child = fdt.first_subnode(node, quiet=(_FDT_ERR_NOTFOUND,))
    while child >= 0:
        out.append(child)
        child = fdt.next_subnode(child, quiet=(_FDT_ERR_NOTFOUND,))
    return out


def _name(fdt: libfdt.FdtRo, node: int) -> str:
    """A node's name; FitError when it is not UTF-8 (pylibfdt hands such bytes back as lone
    surrogates, which no path lookup or message can carry)."""
    name: str = fdt.get_name(node)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FitError(
            f"malformed FIT: the name of the node at structure offset {node:#x} is not UTF-8: "
            f"{name!a}"
        ) from None
    return name


def _image_node(fdt: libfdt.FdtRo, name: str) -> int:
    """The offset of ``/images/<name>``, matched exactly: libfdt's path lookup would take
    ``foo`` for an earlier ``foo@1``."""
    for node in _subnodes(fdt, fdt.path_offset("/images")):
        if fdt.get_name(node) == name:
            return node
    raise FitError(f"malformed FIT: no node /images/{name}")


def images_without_hash(blob: bytes) -> list[str]:
    """Unit names of the images in `blob` that have no ``hash*`` subnode."""
    fdt = _open(blob)
    try:
        images = fdt.path_offset("/images", quiet=(_FDT_ERR_NOTFOUND,))
        if images < 0:
            return []
        return [
            _name(fdt, img)
            for img in _subnodes(fdt, images)
            if not any(_name(fdt, c).startswith("hash") for c in _subnodes(fdt, img))
        ]
    except libfdt.FdtException as err:
        raise FitError(f"malformed FIT: {err}") from None


def _open(blob: bytes) -> libfdt.Fdt:
    """`blob` as an editable libfdt tree, once the header and the reservation map are sound
    (libfdt trusts both: it reads past the buffer, or copies a negative length, otherwise)."""
    hdr = read_header(blob, "")
    reservation_map(blob, hdr, "")
    try:
        return libfdt.Fdt(blob[: hdr.totalsize])
    except libfdt.FdtException as err:
        raise FitError(f"not a FIT (bad FDT header: {err})") from None


def add_missing_hashes(blob: bytes, algo: str = "sha256") -> bytes:
    """Return `blob` with a ``hash-1 { algo; value; }`` node added to every image lacking one.

    Images that already have a hash node are left alone, so nothing changes when none is
    missing. External data (``data-offset``/``data-position``) is kept external: the bytes after
    the FDT are carried over and ``data-position`` values move by the growth of the FDT.
    Adding nodes changes the hashed bytes of any configuration that references such an image,
    so a FIT must be (re-)signed after this, never before.
    """
    digest(algo, b"")  # reject an unknown algo before touching anything
    missing = images_without_hash(blob)
    if not missing:
        return blob
    fdt = _open(blob)
    try:
        return _add_hashes(blob, fdt, missing, algo)
    except libfdt.FdtException as err:
        raise FitError(f"malformed FIT: {err}") from None


def _add_hashes(blob: bytes, fdt: libfdt.Fdt, missing: list[str], algo: str) -> bytes:
    old_end = _aligned_end(fdt.totalsize())
    values = {}
    for name in missing:
        node = _image_node(fdt, name)
        values[name] = digest(algo, _image_data(blob, fdt, node, f"/images/{name}"))
    fdt.resize(fdt.totalsize() + 256 * len(missing) + 64)
    for name, value in values.items():
        node = fdt.add_subnode(_image_node(fdt, name), "hash-1")
        fdt.setprop_str(node, "algo", algo)
        fdt.setprop(node, "value", value)
    fdt.pack()
    tail = blob[old_end:]
    if not tail:
        return bytes(fdt.as_bytearray())
    new_end = _aligned_end(fdt.totalsize())
    images = fdt.path_offset("/images")
    for img in _subnodes(fdt, images):
        where = f"/images/{_name(fdt, img)}"
        position = _cell(fdt, img, "data-position", where)
        if position is None:
            continue
        # The data after the FDT moved with its end; the property keeps its width (1 or 2 cells).
        width = len(bytes(fdt.getprop(img, "data-position")))
        moved = position + new_end - old_end
        if not 0 <= moved < 1 << (8 * width):
            raise FitError(
                f"{where}/data-position: {position:#x} cannot move with the data by "
                f"{new_end - old_end} bytes (it would be {moved:#x})"
            )
        fdt.setprop(img, "data-position", moved.to_bytes(width, "big"))
    head = bytes(fdt.as_bytearray())
    return head + bytes(new_end - len(head)) + tail


def hash_mismatches(fit: Fit) -> list[str]:
    """Every image hash node of `fit` whose value is not the digest of the image's data, as
    ``/images/<unit>/<node>: <algo> mismatch: …`` (barebox and U-Boot refuse such an image).

    Digests are remembered in ``fit.digests``, where trims that add ``hash-1`` look too.
    Algorithms neither bootloader knows are left alone.
    """
    found = []
    for unit, image in fit.images.items():
        for node, algo, value in image.hashes:
            if algo not in HASH_ALGOS or image.data_location == "missing":
                continue
            key = (unit, algo)
            if key not in fit.digests:
                fit.digests[key] = digest(algo, image.data())
            if fit.digests[key] != value:
                found.append(
                    f"/images/{unit}/{node}: {algo} mismatch: stored {value.hex()[:12]}…, "
                    f"the data has {fit.digests[key].hex()[:12]}…"
                )
    return found
