"""The bytes a FIT configuration signature covers (docs/formats.md, "Signed bytes"), shared by
signer and verifier.

A configuration signature never hashes the FIT file as a whole. It hashes a selection of the
structure block (chosen by a list of node paths) followed by a prefix of the strings block.
Both U-Boot (``fdt_find_regions`` in ``boot/fdt_region.c``) and barebox (``fit_digest``) walk
the structure block tag by tag; this module does the same walk in pure Python.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import libfdt

from overrided.fit.model import FitError

# Devicetree specification v0.4, §5.4.1: structure block tokens.
FDT_BEGIN_NODE = 1
FDT_END_NODE = 2
FDT_PROP = 3
FDT_NOP = 4
FDT_END = 9

_FDT_MAGIC = 0xD00DFEED
_NOTFOUND = (libfdt.NOTFOUND,)

# Configuration properties that never name images (docs/formats.md, "Configuration nodes"; U-Boot
# fit_config_get_signed_nodes and barebox skip exactly these).
NOT_IMAGE_REFERENCES = frozenset({"description", "compatible", "default"})

# Properties left out of the hashed regions: the payload is covered by the hash nodes instead.
# U-Boot >= 2023.01 excludes all four; barebox only ``data`` (it cannot read external data).
EXCLUDED_PROPERTIES = frozenset({"data", "data-size", "data-position", "data-offset"})


@dataclass(frozen=True)
class Header:
    """The FDT header fields the region walk needs (Devicetree specification §5.2)."""

    totalsize: int
    off_dt_struct: int
    off_dt_strings: int
    size_dt_strings: int
    size_dt_struct: int


def header(blob: bytes | bytearray | memoryview) -> Header:
    """Parse and sanity-check the FDT header of `blob`."""
    if len(blob) < 40:
        raise FitError(f"not a FIT: {len(blob)} bytes is shorter than an FDT header")
    magic, totalsize, off_struct, off_strings = struct.unpack_from(">4I", blob, 0)
    if magic != _FDT_MAGIC:
        raise FitError(f"not a FIT: magic {magic:#010x} at offset 0, want 0xd00dfeed")
    size_strings, size_struct = struct.unpack_from(">2I", blob, 32)
    head = Header(totalsize, off_struct, off_strings, size_strings, size_struct)
    if totalsize > len(blob):
        raise FitError(f"truncated FIT: header totalsize {totalsize} > {len(blob)} bytes")
    if off_struct + size_struct > totalsize or off_strings + size_strings > totalsize:
        raise FitError("malformed FIT: structure or strings block lies beyond totalsize")
    return head


def _subnodes(fdt: libfdt.FdtRo, node: int) -> Iterator[int]:
    child = fdt.first_subnode(node, quiet=_NOTFOUND)
    while child >= 0:
        yield child
        child = fdt.next_subnode(child, quiet=_NOTFOUND)


def _properties(fdt: libfdt.FdtRo, node: int) -> Iterator[libfdt.Property]:
    offset = fdt.first_property_offset(node, quiet=_NOTFOUND)
    while offset >= 0:
        yield fdt.get_property_by_offset(offset)
        offset = fdt.next_property_offset(offset, quiet=_NOTFOUND)


def _strings(value: bytes) -> list[str]:
    """Decode an FDT string list; an empty property is an empty list."""
    if not value:
        return []
    return [s.decode("utf-8", "replace") for s in bytes(value).rstrip(b"\0").split(b"\0")]


def check_structure(blob: bytes | bytearray) -> Header:
    """Walk the whole structure block once so libfdt never meets a malformed one later.

    Raises a FitError naming the offset of the first bad token or unbalanced node.
    """
    head = header(blob)
    depth = 0
    for tag in tags(blob, head):
        if tag.kind == FDT_BEGIN_NODE:
            depth += 1
        elif tag.kind == FDT_END_NODE:
            depth -= 1
            if depth < 0:
                raise FitError(f"malformed FIT: unbalanced end of node at offset {tag.start:#x}")
        elif tag.kind == FDT_END and depth != 0:
            raise FitError(f"malformed FIT: {depth} node(s) left open at offset {tag.start:#x}")
    return head


def unit_address_nodes(blob: bytes | bytearray) -> list[str]:
    """Paths of nodes whose name contains ``@``.

    libfdt resolves ``foo`` to ``foo@1``, so such names make signed node lists ambiguous;
    U-Boot with FIT_FULL_CHECK refuses the whole FIT ("Bad FIT image format", seen with
    Debian's 2023.01 build), docs/formats.md, "FIT layout".
    """
    found = []
    path: list[str] = []
    for tag in tags(blob, header(blob)):
        if tag.kind == FDT_BEGIN_NODE:
            path.append(tag.name)
            if "@" in tag.name:
                found.append("/" + "/".join(path[1:]))
        elif tag.kind == FDT_END_NODE and path:
            path.pop()
    return found


def open_fdt(blob: bytes | bytearray) -> libfdt.FdtRo:
    """A read-only libfdt view of `blob` with a clear error for non-FITs and malformed ones."""
    head = check_structure(blob)
    try:
        return libfdt.FdtRo(bytes(blob[: head.totalsize]))
    except libfdt.FdtException as err:
        raise FitError(f"not a FIT: {err}") from None


def config_offset(fdt: libfdt.FdtRo, config: str) -> int:
    """The node offset of ``/configurations/<config>``, or a FitError naming it."""
    if "/" in config or not config:
        raise FitError(f"bad configuration name {config!r}")
    node: int = fdt.path_offset(f"/configurations/{config}", quiet=_NOTFOUND)
    if node < 0:
        raise FitError(f"no configuration /configurations/{config}")
    return node


def config_names(fdt: libfdt.FdtRo) -> list[str]:
    """Every configuration unit name in node order."""
    confs = fdt.path_offset("/configurations", quiet=_NOTFOUND)
    if confs < 0:
        raise FitError("not a FIT: no /configurations node")
    return [fdt.get_name(n) for n in _subnodes(fdt, confs)]


def reference_properties(fdt: libfdt.FdtRo, config: str) -> list[tuple[str, list[str]]]:
    """The configuration's image-reference properties in property order, with their units."""
    node = config_offset(fdt, config)
    return [
        (prop.name, _strings(bytes(prop)))
        for prop in _properties(fdt, node)
        if prop.name not in NOT_IMAGE_REFERENCES
    ]


def signed_node_paths(fdt: libfdt.FdtRo, config: str) -> list[str]:
    """The node list a signature of `config` covers, rebuilt from its image references.

    docs/formats.md, "Signed bytes" and "Node lists are rebuilt, never read": ``/``, the
    configuration, then for every image reference (all of ``kernel``, ``fdt``, ``ramdisk``,
    ``loadables``, ...) the image and its ``hash*`` (and ``cipher``) subnodes. Never taken from
    ``sign-images`` or ``hashed-nodes``: that is the trap that lets a signer leave a ramdisk
    uncovered. A unit referenced twice is listed twice, as mkimage does; the region walk only asks
    whether a path is in the list.
    """
    paths = ["/", f"/configurations/{config}"]
    for prop, units in reference_properties(fdt, config):
        for unit in units:
            paths.extend(image_node_paths(fdt, config, prop, unit))
    if len(paths) == 2:
        raise FitError(f"/configurations/{config}: references no image, nothing to sign")
    return paths


def image_node_paths(fdt: libfdt.FdtRo, config: str, prop: str, unit: str) -> list[str]:
    """``/images/<unit>`` and its hash (and cipher) subnode paths, as mkimage lists them."""
    where = f"/configurations/{config}: {prop} = {unit!r}"
    if not unit or "/" in unit:
        raise FitError(f"{where}: not an image unit name")
    image = fdt.path_offset(f"/images/{unit}", quiet=_NOTFOUND)
    if image < 0:
        raise FitError(f"{where}: no such image /images/{unit}")
    names = [fdt.get_name(child) for child in _subnodes(fdt, image)]
    hashes = [n for n in names if n.startswith("hash")]
    if not hashes:
        # U-Boot refuses to sign or verify an image that has no hash node (docs/formats.md, "Signed
        # bytes", step 1).
        raise FitError(f"{where}: /images/{unit} has no hash node, so its data is not covered")
    paths = [f"/images/{unit}", *(f"/images/{unit}/{n}" for n in hashes)]
    if "cipher" in names:
        paths.append(f"/images/{unit}/cipher")
    return paths


@dataclass(frozen=True)
class Tag:
    """One structure-block token: its kind, where it starts and where the next one starts."""

    kind: int
    start: int
    end: int
    name: str  # node name for BEGIN_NODE, property name for PROP, else ""


def tags(blob: bytes | bytearray, head: Header) -> Iterator[Tag]:
    """Walk the structure block token by token (Devicetree specification §5.4)."""
    base = head.off_dt_struct
    limit = base + head.size_dt_struct
    strings = head.off_dt_strings
    strings_end = strings + head.size_dt_strings
    view = memoryview(blob)
    pos = base
    while pos + 4 <= limit:
        (kind,) = struct.unpack_from(">I", view, pos)
        if kind == FDT_BEGIN_NODE:
            # find() on the buffer itself: slicing first would copy the rest of the block.
            nul = blob.find(b"\0", pos + 4, limit) - (pos + 4)
            if nul < 0:
                raise FitError(f"malformed FIT: unterminated node name at offset {pos:#x}")
            name = bytes(view[pos + 4 : pos + 4 + nul]).decode("utf-8", "replace")
            end = pos + 4 + ((nul + 1 + 3) & ~3)
        elif kind == FDT_PROP:
            if pos + 12 > limit:
                raise FitError(f"malformed FIT: truncated property at offset {pos:#x}")
            length, nameoff = struct.unpack_from(">2I", view, pos + 4)
            end = pos + 12 + ((length + 3) & ~3)
            name_at = strings + nameoff
            nul = blob.find(b"\0", name_at, strings_end) - name_at
            if nameoff >= head.size_dt_strings or nul < 0:
                raise FitError(f"malformed FIT: bad property name offset at {pos:#x}")
            name = bytes(view[name_at : name_at + nul]).decode("utf-8", "replace")
        elif kind in (FDT_END_NODE, FDT_NOP, FDT_END):
            end = pos + 4
            name = ""
        else:
            raise FitError(f"malformed FIT: unknown structure token {kind:#x} at offset {pos:#x}")
        if end > limit:
            raise FitError(f"malformed FIT: token at offset {pos:#x} runs past the struct block")
        yield Tag(kind, pos, end, name)
        if kind == FDT_END:
            return
        pos = end
    raise FitError("malformed FIT: structure block has no FDT_END token")


def struct_regions(blob: bytes | bytearray, paths: Sequence[str]) -> list[tuple[int, int]]:
    """The (offset, size) byte ranges of the structure block that a signature over `paths` hashes.

    The ``want`` levels follow ``fdt_find_regions`` (docs/formats.md, "Signed bytes", step 2): a
    listed node is wanted with its properties (2); the first level below a wanted node contributes
    only its node tags (1), so a ``signature-1`` node's own properties are never hashed. ``data``
    and the external-data properties are skipped. Adjacent tags are merged into one range.
    """
    head = header(blob)
    wanted = set(paths)
    regions: list[tuple[int, int]] = []
    stack: list[int] = []
    path: list[str] = []
    want = 0
    for tag in tags(blob, head):
        if tag.kind == FDT_BEGIN_NODE:
            stack.append(want)
            path.append(tag.name)
            full = "/" + "/".join(path[1:])
            if full in wanted:
                want = 2
            elif want:
                want -= 1
            include = want > 0
        elif tag.kind == FDT_END_NODE:
            if not stack:
                raise FitError(f"malformed FIT: unbalanced end of node at offset {tag.start:#x}")
            include = want > 0
            want = stack.pop()
            path.pop()
        elif tag.kind == FDT_PROP:
            include = want >= 2 and tag.name not in EXCLUDED_PROPERTIES
        elif tag.kind == FDT_NOP:
            include = want >= 2
        else:  # FDT_END is always hashed
            include = True
        if not include:
            continue
        if regions and regions[-1][0] + regions[-1][1] == tag.start:
            start, size = regions[-1]
            regions[-1] = (start, size + tag.end - tag.start)
        else:
            regions.append((tag.start, tag.end - tag.start))
    return regions


def signed_bytes(blob: bytes | bytearray, paths: Sequence[str], strings_size: int) -> bytes:
    """The exact byte stream a configuration signature covers (docs/formats.md, "Signed bytes",
    steps 2-3)."""
    head = header(blob)
    if strings_size > head.size_dt_strings:
        raise FitError(
            f"hashed-strings size {strings_size} exceeds the strings block ({head.size_dt_strings})"
        )
    view = memoryview(blob)
    parts = [view[off : off + size] for off, size in struct_regions(blob, paths)]
    parts.append(view[head.off_dt_strings : head.off_dt_strings + strings_size])
    return b"".join(parts)
