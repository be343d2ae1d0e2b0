"""FIT model: parse a Flattened Image Tree once and index its images and configurations.

A FIT is an FDT blob (docs/formats.md, "FIT layout"). `Fit.open` maps the file, walks the tree once
with pylibfdt and records, for every node, where its tags lie in the file. Later work (matching,
trimming) reads small property values from that index and slices payloads straight out of the
mapping, so a 60 MB FIT is never copied or re-walked.
"""

from __future__ import annotations

import contextlib
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal

import libfdt

from overrided.errors import OverridedError


class FitError(OverridedError):
    """A FIT (or a DTB going into one) is malformed or does not hold what was asked for."""


# Devicetree specification v0.4, §5.2 (header) and §5.4.1 (structure block tokens).
FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE = 1
FDT_END_NODE = 2
FDT_PROP = 3
FDT_NOP = 4
FDT_END = 9
HEADER = struct.Struct(">10I")
# How deep the node walk goes before refusing a blob: a FIT is 3 levels deep (/images/<unit>/
# hash-1) and board DTBs rarely reach 10; 64 keeps the recursive walk far from Python's limit.
MAX_DEPTH = 64
TAG = struct.Struct(">I")
FDT_FIRST_VERSION = 16  # the oldest structure layout read here (values 4-byte aligned)
PROP_HEADER = struct.Struct(">III")  # FDT_PROP, value length, name offset in the strings block
RSV_ENTRY = struct.Struct(">QQ")  # §5.3: address and size of one reserved memory region

# docs/formats.md, "Configuration nodes", "Signed bytes": every configuration property except these
# names image units.
NON_REFERENCE_PROPS = frozenset({"description", "compatible", "default"})

DataLocation = Literal["embedded", "data-offset", "data-position", "missing"]
Buffer = bytes | mmap.mmap


def align4(n: int) -> int:
    """`n` rounded up to the next multiple of 4 (FDT tags and values are 4-byte aligned)."""
    return (n + 3) & ~3


@dataclass(frozen=True)
class Header:
    """The 40-byte FDT header (all big-endian u32)."""

    magic: int
    totalsize: int
    off_dt_struct: int
    off_dt_strings: int
    off_mem_rsvmap: int
    version: int
    last_comp_version: int
    boot_cpuid_phys: int
    size_dt_strings: int
    size_dt_struct: int

    @property
    def external_base(self) -> int:
        """Where ``data-offset`` counts from: the first 4-byte-aligned byte after the FDT."""
        return align4(self.totalsize)


@dataclass(frozen=True)
class PropRecord:
    """Where one property lies: `offset` is the file offset of its FDT_PROP tag."""

    name: str
    nameoff: int
    offset: int
    length: int

    @property
    def value_offset(self) -> int:
        """File offset of the value bytes."""
        return self.offset + PROP_HEADER.size

    @property
    def end(self) -> int:
        """File offset just past the (padded) value."""
        return self.value_offset + align4(self.length)


@dataclass
class NodeRecord:
    """Where one node lies: `begin` is its FDT_BEGIN_NODE, `body` the byte after its padded
    name (where properties start), `end` the byte after its FDT_END_NODE."""

    path: str
    name: str
    begin: int
    body: int
    end: int
    props: dict[str, PropRecord] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


@dataclass
class FitImage:
    """One ``/images/<name>`` node."""

    name: str
    type: str | None
    arch: str | None
    os: str | None
    compression: str
    load: int | None
    entry: int | None
    description: str | None
    size: int
    data_location: DataLocation
    data_start: int  # file offset of the payload's first byte
    hashes: list[tuple[str, str, bytes]]  # (node name, algo, value)
    _buffer: Buffer = field(repr=False, compare=False, default=b"")

    def data(self) -> memoryview:
        """The stored (possibly compressed) payload, without copying it."""
        return memoryview(self._buffer)[self.data_start : self.data_start + self.size]


@dataclass
class FitConfig:
    """One ``/configurations/<name>`` node."""

    name: str
    kernel: str | None
    fdt: list[str]
    ramdisk: list[str]
    loadables: list[str]
    compatible: list[str]
    description: str | None
    signatures: list[str]
    # Every image-reference property, in property order (docs/formats.md, "Configuration nodes",
    # "Signed bytes").
    reference_props: list[tuple[str, list[str]]] = field(default_factory=list)

    def references(self) -> list[str]:
        """Every image unit any property names (not description/compatible/default), in
        property order, each once: the images a configuration signature covers (docs/formats.md,
        "Signed bytes")."""
        seen: dict[str, None] = {}
        for _, units in self.reference_props:
            for unit in units:
                seen.setdefault(unit, None)
        return list(seen)

    def effective_compatible(self, fit: Fit) -> list[str]:
        """What the bootloaders match against: the configuration's own ``compatible`` or, when
        it has none, the root ``compatible`` of its first ``fdt`` image. Both bootloaders only
        look at ``fdt`` index 0 and skip it when it is compressed (docs/formats.md, "barebox's
        rule", "U-Boot's rule")."""
        if self.compatible:
            return self.compatible
        if not self.fdt:
            return []
        return fit.fdt_root_compatible(self.fdt[0])


def decode(raw: bytes) -> str:
    """A property string value (NUL-terminated) as text."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def decode_list(raw: bytes) -> list[str]:
    """A string-list property value as text strings."""
    if not raw:
        return []
    return [s.decode("utf-8", "backslashreplace") for s in raw.rstrip(b"\0").split(b"\0")]


def read_header(buf: Buffer, where: str) -> Header:
    """Parse and sanity-check the FDT header against the buffer's length (libfdt trusts
    ``totalsize`` and reads past the buffer's end when it lies). Messages start with `where`
    (none when empty)."""
    at = f"{where}: " if where else ""
    if len(buf) < HEADER.size:
        raise FitError(f"{at}not a FIT: {len(buf)} bytes is too short for an FDT header")
    hdr = Header(*HEADER.unpack_from(buf, 0))
    if hdr.magic != FDT_MAGIC:
        raise FitError(f"{at}not a FIT: magic {hdr.magic:#010x} at offset 0, want d00dfeed")
    if hdr.totalsize > len(buf):
        raise FitError(
            f"{at}truncated: header totalsize is {hdr.totalsize} bytes, file has {len(buf)}"
        )
    return hdr


def dtb_view(data: bytes, where: str) -> libfdt.FdtRo:
    """A read-only libfdt view of the DTB `data`, once its header fits in `data`: libfdt checks
    offsets against ``totalsize`` only, so a header claiming more than there is makes it read
    past the end of the buffer (a crash, not an error)."""
    hdr = read_header(data, where)
    try:
        return libfdt.FdtRo(data[: hdr.totalsize])
    except libfdt.FdtException as err:
        raise FitError(f"{where + ': ' if where else ''}malformed FDT: {err}") from None


def reservation_map(buf: Buffer, hdr: Header, where: str) -> bytes:
    """The memory reservation block (Devicetree specification §5.3) up to and including its
    all-zero terminator, which must lie inside ``totalsize``. libfdt's ``fdt_open_into`` (behind
    pylibfdt's ``resize``) trusts this block: without a terminator it copies a negative length
    and corrupts memory, so check a blob with this before handing it to libfdt for editing.
    Messages start with `where` (none when empty)."""
    off = hdr.off_mem_rsvmap
    end = off
    while True:
        if end + RSV_ENTRY.size > min(hdr.totalsize, len(buf)):
            raise FitError(
                f"{where + ': ' if where else ''}malformed FDT: the memory reservation map at "
                f"offset {off:#x} has no end before totalsize ({hdr.totalsize:#x})"
            )
        address, size = RSV_ENTRY.unpack_from(buf, end)
        end += RSV_ENTRY.size
        if address == 0 and size == 0:
            return bytes(buf[off:end])


class Fit:
    """A parsed FIT with its node index; payload bytes stay in the file mapping."""

    path: Path
    header: Header
    description: str | None
    timestamp: int | None
    address_cells: int
    default: str | None
    configurations: dict[str, FitConfig]
    images: dict[str, FitImage]

    def __init__(self, buf: Buffer, path: Path, file: BinaryIO | None = None) -> None:
        """Index `buf` (the whole file); prefer `Fit.open` or `Fit.from_bytes`."""
        self.path = path
        self._buf = buf
        self._file = file
        self._fdt_compat: dict[str, list[str]] = {}
        self.digests: dict[tuple[str, str], bytes] = {}  # (image, algo) -> computed digest
        self.header = read_header(buf, str(path))
        self.nodes, self.strings = _index(buf, self.header, str(path))
        self._load()

    @classmethod
    def open(cls, path: Path, *, shown: Path | None = None) -> Fit:
        """Map and index the FIT at `path`; messages name it `shown` (default: `path`), e.g.
        the build's file for its copy in the store."""
        name = shown or path
        try:
            f = path.open("rb")
        except OSError as err:
            raise FitError(f"{name}: cannot open: {err.strerror}") from None
        try:
            size = path.stat().st_size
            if size == 0:
                raise FitError(f"{name}: not a FIT: the file is empty")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            return cls(buf, name, f)
        except BaseException:
            f.close()
            raise

    @classmethod
    def from_bytes(cls, data: bytes, path: Path = Path("<memory>")) -> Fit:
        """Index a FIT held in memory; `path` names it in messages."""
        return cls(bytes(data), path)

    def close(self) -> None:
        """Release the mapping and the file (images' `data()` views must be gone by then)."""
        if isinstance(self._buf, mmap.mmap):
            # While views of it are alive, the mapping goes with the last of them instead.
            with contextlib.suppress(BufferError):
                self._buf.close()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> Fit:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def buffer(self) -> Buffer:
        """The whole file's bytes (a read-only mapping for opened files)."""
        return self._buf

    def fileno(self) -> int | None:
        """The source file's descriptor, for zero-copy transfers; None for in-memory FITs."""
        return self._file.fileno() if self._file is not None else None

    def value(self, prop: PropRecord) -> bytes:
        """A property's raw value (copies: use for small values only)."""
        return bytes(self._buf[prop.value_offset : prop.value_offset + prop.length])

    def node(self, path: str) -> NodeRecord:
        """The index record of the node at `path`."""
        try:
            return self.nodes[path]
        except KeyError:
            raise FitError(f"{self.path}: no node {path}") from None

    def fdt_root_compatible(self, unit: str) -> list[str]:
        """Root ``compatible`` of the DTB in image `unit`; [] if it is missing, compressed,
        not a DTB, or has no compatible (the bootloaders then skip the configuration)."""
        if unit not in self._fdt_compat:
            self._fdt_compat[unit] = self._read_fdt_compatible(unit)
        return self._fdt_compat[unit]

    def _read_fdt_compatible(self, unit: str) -> list[str]:
        image = self.images.get(unit)
        if image is None or image.compression != "none" or image.data_location == "missing":
            return []
        blob = bytes(image.data())
        try:
            prop = dtb_view(blob, "").getprop(0, "compatible", quiet=(libfdt.NOTFOUND,))
        except (FitError, libfdt.FdtException):
            return []
        return [] if isinstance(prop, int) else decode_list(bytes(prop))

    def _str(self, rec: NodeRecord, name: str) -> str | None:
        prop = rec.props.get(name)
        return None if prop is None else decode(self.value(prop))

    def _list(self, rec: NodeRecord, name: str) -> list[str]:
        prop = rec.props.get(name)
        return [] if prop is None else decode_list(self.value(prop))

    def _cells(self, rec: NodeRecord, name: str) -> int | None:
        prop = rec.props.get(name)
        if prop is None:
            return None
        raw = self.value(prop)
        if len(raw) not in (4, 8):
            raise FitError(f"{self.path}: {rec.path}/{name}: {len(raw)} bytes, want 4 or 8")
        return int.from_bytes(raw, "big")

    def _load(self) -> None:
        root = self.nodes["/"]
        self.description = self._str(root, "description")
        self.timestamp = self._cells(root, "timestamp")
        self.address_cells = self._cells(root, "#address-cells") or 1
        if "/images" not in self.nodes:
            raise FitError(f"{self.path}: not a FIT: no /images node")
        self.images = {}
        for name in self.nodes["/images"].children:
            self.images[name] = self._load_image(self.nodes[f"/images/{name}"])
        self.configurations = {}
        self.default = None
        confs = self.nodes.get("/configurations")
        if confs is None:
            return
        self.default = self._str(confs, "default")
        for name in confs.children:
            self.configurations[name] = self._load_config(self.nodes[f"/configurations/{name}"])

    def _load_image(self, rec: NodeRecord) -> FitImage:
        where = f"{self.path}: {rec.path}"
        location: DataLocation = "missing"
        start = size = 0
        if "data" in rec.props:
            location, start, size = (
                "embedded",
                rec.props["data"].value_offset,
                rec.props["data"].length,
            )
        elif "data-size" in rec.props:
            size = self._cells(rec, "data-size") or 0
            offset = self._cells(rec, "data-offset")
            position = self._cells(rec, "data-position")
            if offset is not None:
                location, start = "data-offset", self.header.external_base + offset
            elif position is not None:
                location, start = "data-position", position
            else:
                raise FitError(f"{where}: data-size without data-offset or data-position")
            if start + size > len(self._buf):
                raise FitError(
                    f"{where}: truncated: external data {start:#x}+{size:#x} ends past the file "
                    f"end ({len(self._buf):#x})"
                )
        hashes = []
        for child in rec.children:
            if child.startswith("hash"):
                h = self.nodes[f"{rec.path}/{child}"]
                hashes.append(
                    (child, self._str(h, "algo") or "", self.value(h.props["value"]))
                    if "value" in h.props
                    else (child, self._str(h, "algo") or "", b"")
                )
        return FitImage(
            name=rec.name,
            type=self._str(rec, "type"),
            arch=self._str(rec, "arch"),
            os=self._str(rec, "os"),
            compression=self._str(rec, "compression") or "none",
            load=self._cells(rec, "load"),
            entry=self._cells(rec, "entry"),
            description=self._str(rec, "description"),
            size=size,
            data_location=location,
            data_start=start,
            hashes=hashes,
            _buffer=self._buf,
        )

    def _load_config(self, rec: NodeRecord) -> FitConfig:
        refs = [
            (name, decode_list(self.value(prop)))
            for name, prop in rec.props.items()
            if name not in NON_REFERENCE_PROPS
        ]
        return FitConfig(
            name=rec.name,
            kernel=self._str(rec, "kernel"),
            fdt=self._list(rec, "fdt"),
            ramdisk=self._list(rec, "ramdisk"),
            loadables=self._list(rec, "loadables"),
            compatible=self._list(rec, "compatible"),
            description=self._str(rec, "description"),
            signatures=[c for c in rec.children if c.startswith("signature")],
            reference_props=refs,
        )

    def missing_references(self, config: str) -> list[str]:
        """Image units that configuration `config` names but ``/images`` lacks."""
        return [u for u in self.configurations[config].references() if u not in self.images]


def _index(buf: Buffer, hdr: Header, where: str) -> tuple[dict[str, NodeRecord], bytes]:
    """Walk the structure block once and record where every node and property lies.

    The header is checked by libfdt (``fdt_check_header`` reads the 40 header bytes only); the
    tags are read here, each checked to lie inside the structure block. Going through pylibfdt's
    node and property calls would first copy the whole blob (60 MB for a distribution kernel's
    FIT: most of a parse's time) and cost a call per tag.
    """
    struct_end = hdr.off_dt_struct + hdr.size_dt_struct
    strings_end = hdr.off_dt_strings + hdr.size_dt_strings
    if max(struct_end, strings_end) > hdr.totalsize:
        raise FitError(f"{where}: malformed FDT: struct or strings block ends past totalsize")
    try:
        libfdt.check_err(libfdt.fdt_check_header(bytearray(buf[: HEADER.size])))
    except libfdt.FdtException as err:
        raise FitError(f"{where}: malformed FDT: {err}") from None
    if hdr.version < FDT_FIRST_VERSION:
        # Before version 16, values of 8 bytes or more were 8-byte aligned: no FIT is that old.
        raise FitError(f"{where}: malformed FDT: version {hdr.version}, want 16 or later")
    strings = bytes(buf[hdr.off_dt_strings : strings_end])
    walker = _Walker(buf, hdr.off_dt_struct, struct_end, strings, where)
    walker.walk()
    return walker.nodes, strings


class _Walker:
    """One walk of a structure block (Devicetree specification, 5.4): a node is FDT_BEGIN_NODE
    and its name, its properties, its subnodes, FDT_END_NODE; FDT_NOPs may lie between any of
    them, and FDT_END follows the root."""

    def __init__(self, buf: Buffer, base: int, struct_end: int, strings: bytes, where: str) -> None:
        self.buf = buf
        self.base = base
        self.struct_end = struct_end
        self.strings = strings
        self.where = where
        self.names: dict[int, str] = {}
        self.nodes: dict[str, NodeRecord] = {}

    def tag(self, pos: int) -> int:
        """The tag at ``pos`` (``FitError`` past the structure block's end)."""
        if pos + 4 > self.struct_end:
            raise FitError(f"{self.where}: truncated: structure block ends early")
        tag: int = TAG.unpack_from(self.buf, pos)[0]
        return tag

    def after_nops(self, pos: int) -> tuple[int, int]:
        """The first tag at or after ``pos`` that is not FDT_NOP, and where it is."""
        tag = self.tag(pos)
        while tag == FDT_NOP:
            pos += 4
            tag = self.tag(pos)
        return tag, pos

    def walk(self) -> None:
        tag, pos = self.after_nops(self.base)
        if tag != FDT_BEGIN_NODE:
            raise FitError(f"{self.where}: malformed FDT: no root node at {pos:#x}")
        root = self.node(pos, "/", 0)
        tag, pos = self.after_nops(root.end)
        if tag != FDT_END:
            raise FitError(
                f"{self.where}: malformed FDT: tag {tag:#x} after the root node at {pos:#x}"
            )

    def prop_name(self, nameoff: int) -> str:
        if nameoff not in self.names:
            end = self.strings.find(b"\0", nameoff)
            if nameoff >= len(self.strings) or end < 0:
                raise FitError(f"{self.where}: malformed FDT: bad property name offset {nameoff}")
            self.names[nameoff] = self.strings[nameoff:end].decode("utf-8", "backslashreplace")
        return self.names[nameoff]

    def node_name(self, begin: int, name_end: int, parent: str) -> str:
        """The name of the node whose FDT_BEGIN_NODE is at `begin`, checked: UTF-8, not empty,
        no ``/``. Node paths are built from these names, so a name that does not round-trip
        (or would split into two path parts) is refused instead of indexed under a wrong path.
        """
        raw = bytes(self.buf[begin + 4 : name_end])
        at = f"node name at offset {begin:#x} (in {parent})"
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            bad = begin + 4 + err.start
            shown = repr(raw[:40]) + ("..." if len(raw) > 40 else "")
            raise FitError(
                f"{self.where}: malformed FDT: {at} is not UTF-8: byte {raw[err.start]:#04x} "
                f"at offset {bad:#x} in {shown}"
            ) from None
        if not name or "/" in name:
            shown = repr(name[:40]) + ("..." if len(name) > 40 else "")
            raise FitError(f"{self.where}: malformed FDT: {at} is {shown}")
        return name

    def node(self, begin: int, path: str, depth: int) -> NodeRecord:
        """Index the node whose FDT_BEGIN_NODE is at file offset ``begin``, and its subtree."""
        buf, struct_end, where = self.buf, self.struct_end, self.where
        if depth > MAX_DEPTH:
            # A FIT is 3 levels deep; this bound keeps the recursion far from Python's limit.
            raise FitError(
                f"{where}: malformed FDT: node at offset {begin:#x} ({path}) is nested more "
                f"than {MAX_DEPTH} levels deep"
            )
        name_end = buf.find(b"\0", begin + 4, struct_end)
        if name_end < 0:
            raise FitError(f"{where}: malformed FDT: unterminated node name at {begin:#x}")
        # The root's name is ignored (it is "" in every blob dtc and mkimage write); the others
        # were checked by `child_path`.
        name = path.rsplit("/", 1)[1]
        body = align4(name_end + 1)
        rec = NodeRecord(path=path, name=name, begin=begin, body=body, end=0)
        tag, pos = self.after_nops(body)
        while tag == FDT_PROP:
            if pos + PROP_HEADER.size > struct_end:
                raise FitError(f"{where}: truncated: structure block ends early")
            _, length, nameoff = PROP_HEADER.unpack_from(buf, pos)
            prop = PropRecord(self.prop_name(nameoff), nameoff, pos, length)
            if prop.value_offset + length > struct_end:
                raise FitError(
                    f"{where}: malformed FDT: {path}/{prop.name}: {length} bytes at "
                    f"{prop.value_offset:#x} run past the structure block ({struct_end:#x})"
                )
            rec.props.setdefault(prop.name, prop)
            tag, pos = self.after_nops(prop.end)
        while tag == FDT_BEGIN_NODE:
            sub = self.node(pos, self.child_path(path, pos), depth + 1)
            rec.children.append(sub.name)
            tag, pos = self.after_nops(sub.end)
        if tag != FDT_END_NODE:
            raise FitError(f"{where}: malformed FDT: {path} does not end at {pos:#x}")
        rec.end = pos + 4
        self.nodes[path] = rec
        return rec

    def child_path(self, parent: str, begin: int) -> str:
        """The path of the subnode whose FDT_BEGIN_NODE is at file offset `begin`, from its
        checked name; a second sibling of the same name is refused (libfdt and the bootloaders
        see only the first)."""
        name_end = self.buf.find(b"\0", begin + 4, self.struct_end)
        if name_end < 0:
            raise FitError(f"{self.where}: malformed FDT: unterminated node name at {begin:#x}")
        path = f"{parent.rstrip('/')}/{self.node_name(begin, name_end, parent)}"
        if path in self.nodes:
            raise FitError(
                f"{self.where}: malformed FDT: second node {path} at offset {begin:#x} "
                f"(the first is at {self.nodes[path].begin:#x})"
            )
        return path
