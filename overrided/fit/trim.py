"""Trim a FIT to one configuration and the images it references, from slices of the source.

The output is assembled, not re-encoded (docs/formats.md, "Trimming keeps signatures"): the
structure block is the source's with whole subtrees skipped (other configurations, unreferenced
images), the strings block is copied verbatim (new names only ever appended), and payloads are
written straight from the source file. So every byte a configuration signature hashes
(docs/formats.md, "Signed bytes") is the same before
and after, and the signature stays valid. The edits and whether they touch hashed bytes:

* deleting other configurations and unreferenced images: not hashed (want level 0);
* setting or inserting ``/configurations/default``: ``/configurations`` is only an ancestor
  of the signed node, so its properties are not hashed;
* external data (``data-size`` + ``data-offset``/``data-position``) becomes an embedded
  ``data`` property in the same place: U-Boot excludes all four names from the hash, barebox
  reads only embedded data and excludes ``data``;
* ``add_hashes`` inserts ``hash-1`` nodes into images that have no hash node. That changes
  hashed bytes, but mkimage refuses to sign a configuration whose images lack hash nodes, so
  signed configurations never need it.
"""

from __future__ import annotations

import os
import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from overrided.fit.hashes import digest
from overrided.fit.model import (
    FDT_BEGIN_NODE,
    FDT_END,
    FDT_END_NODE,
    HEADER,
    PROP_HEADER,
    Fit,
    FitError,
    FitImage,
    NodeRecord,
    align4,
    reservation_map,
)

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

# A piece of output: literal bytes, or (file offset, length) of a range of the source.
Segment = bytes | tuple[int, int]

_EXTERNAL_PROPS = ("data-size", "data-offset", "data-position")
_BIG = 1 << 20  # ranges from this size on go through copy_file_range/sendfile


@dataclass(frozen=True)
class _Edit:
    start: int  # source file offsets; start == end inserts
    end: int
    replacement: tuple[Segment, ...]


class _Strings:
    """The source strings block, verbatim, plus names appended at its end when missing."""

    def __init__(self, block: bytes) -> None:
        self.block = block
        self.extra = bytearray()

    def offset(self, name: str) -> int:
        key = name.encode() + b"\0"
        # libfdt's own lookup accepts any position where the name is followed by a NUL.
        found = self.block.find(key)
        if found >= 0:
            return found
        found = self.extra.find(key)
        if found < 0:
            found = len(self.extra)
            self.extra += key
        return len(self.block) + found

    def data(self) -> bytes:
        return self.block + bytes(self.extra)


def _prop(strings: _Strings, name: str, value: bytes) -> bytes:
    """One FDT_PROP tag with its padded value."""
    head = PROP_HEADER.pack(3, len(value), strings.offset(name))
    return head + value + bytes(align4(len(value)) - len(value))


def _node_begin(name: str) -> bytes:
    raw = name.encode() + b"\0"
    return struct.pack(">I", FDT_BEGIN_NODE) + raw + bytes(align4(len(raw)) - len(raw))


def _embed(image: FitImage, rec: NodeRecord, strings: _Strings) -> list[_Edit]:
    """Replace external-data properties by an embedded ``data`` at the first one's place."""
    props = sorted(
        (rec.props[n] for n in _EXTERNAL_PROPS if n in rec.props), key=lambda p: p.offset
    )
    head = PROP_HEADER.pack(3, image.size, strings.offset("data"))
    pad = bytes(align4(image.size) - image.size)
    edits = [_Edit(props[0].offset, props[0].end, (head, (image.data_start, image.size), pad))]
    edits += [_Edit(p.offset, p.end, ()) for p in props[1:]]
    return edits


def _hash_node(fit: Fit, image: FitImage, strings: _Strings, algo: str) -> bytes:
    key = (image.name, algo)
    if key not in fit.digests:
        fit.digests[key] = digest(algo, image.data())
    return (
        _node_begin("hash-1")
        + _prop(strings, "algo", algo.encode() + b"\0")
        + _prop(strings, "value", fit.digests[key])
        + struct.pack(">I", FDT_END_NODE)
    )


# Each parsed FIT's children order per parent node: a trim keeps a few of hundreds of images,
# and finds them by looking up, not by walking every child (a lab trims every configuration).
_ORDER: weakref.WeakKeyDictionary[Fit, dict[str, dict[str, int]]] = weakref.WeakKeyDictionary()


def _in_order(fit: Fit, parent: str, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that are children of ``parent``, in the tree's order."""
    orders = _ORDER.setdefault(fit, {})
    order = orders.get(parent)
    if order is None:
        order = orders[parent] = {n: i for i, n in enumerate(fit.nodes[parent].children)}
    return sorted({n for n in names if n in order}, key=order.__getitem__)


def _drop_children_except(fit: Fit, parent: str, keep: Sequence[str]) -> list[_Edit]:
    """Deletions of every child subtree of `parent` not in `keep`, as few contiguous runs.

    Sibling subtrees lie back to back (NOPs between them belong to no node), so the runs
    between kept children go whole: one edit per gap, however many nodes it spans.
    """
    children = fit.nodes[parent].children
    if not children:
        return []
    edits = []
    pos = fit.nodes[f"{parent}/{children[0]}"].begin
    for name in _in_order(fit, parent, keep):
        rec = fit.nodes[f"{parent}/{name}"]
        if rec.begin > pos:
            edits.append(_Edit(pos, rec.begin, ()))
        pos = rec.end
    end = fit.nodes[f"{parent}/{children[-1]}"].end
    if end > pos:
        edits.append(_Edit(pos, end, ()))
    return edits


def plan(fit: Fit, config: str, *, add_hashes: bool = False) -> list[Segment]:
    """The output FIT as a list of segments (see `Segment`); pure, nothing is written."""
    where = f"{fit.path}"
    if config not in fit.configurations:
        names = list(fit.configurations)
        have = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
        raise FitError(f"{where}: no configuration {config!r} (have: {have or 'none'})")
    conf = fit.configurations[config]
    keep = conf.references()
    missing = [u for u in keep if u not in fit.images]
    if missing:
        raise FitError(
            f"{where}: /configurations/{config} names image {missing[0]!r}, "
            "which /images does not have"
        )
    strings = _Strings(fit.strings)
    edits: list[_Edit] = []
    edits += _drop_children_except(fit, "/images", keep)
    for name in _in_order(fit, "/images", keep):
        rec = fit.nodes[f"/images/{name}"]
        image = fit.images[name]
        if image.data_location == "missing":
            raise FitError(f"{where}: /images/{name} has no data")
        if image.data_location != "embedded":
            edits += _embed(image, rec, strings)
        if add_hashes and not image.hashes:
            edits.append(
                _Edit(rec.end - 4, rec.end - 4, (_hash_node(fit, image, strings, "sha256"),))
            )
    confs = fit.nodes["/configurations"]
    edits += _drop_children_except(fit, "/configurations", [config])
    default = _prop(strings, "default", config.encode() + b"\0")
    if "default" in confs.props:
        old = confs.props["default"]
        edits.append(_Edit(old.offset, old.end, (default,)))
    else:
        edits.append(_Edit(confs.body, confs.body, (default,)))
    edits.sort(key=lambda e: (e.start, e.end))

    root = fit.nodes["/"]
    body: list[Segment] = []
    pos = root.begin
    for edit in edits:
        if edit.start > pos:
            body.append((pos, edit.start - pos))
        body.extend(edit.replacement)
        pos = max(pos, edit.end)
    body.append((pos, root.end - pos))
    body.append(struct.pack(">I", FDT_END))
    struct_size = sum(len(s) if isinstance(s, bytes) else s[1] for s in body)

    hdr = fit.header
    rsvmap = _rsvmap(fit)
    strings_block = strings.data()
    off_struct = HEADER.size + len(rsvmap)
    off_strings = off_struct + struct_size
    total = off_strings + len(strings_block)
    header = HEADER.pack(
        hdr.magic, total, off_struct, off_strings, HEADER.size, 17, 16,
        hdr.boot_cpuid_phys, len(strings_block), struct_size,
    )  # fmt: skip
    return [header + rsvmap, *body, strings_block]


def _rsvmap(fit: Fit) -> bytes:
    """The memory reservation block, up to and including its all-zero terminator."""
    return reservation_map(fit.buffer, fit.header, str(fit.path))


def trim(
    fit: Fit,
    config: str,
    out: Path | BinaryIO,
    *,
    add_hashes: bool = False,
    sha256: Hash | None = None,
) -> int:
    """Write a FIT holding only `config` (made default) and its images to `out`; return its size.

    With `add_hashes`, images without a hash node get ``hash-1`` (sha256); see the module
    docstring for which edits keep an existing configuration signature valid. `sha256`, if
    given, is updated with every byte written, from the same buffers (no reading back).
    """
    segments = plan(fit, config, add_hashes=add_hashes)
    if isinstance(out, Path):
        if out.exists() and fit.path.exists() and os.path.samefile(out, fit.path):
            # Truncating the file we read from would pull the data out from under the mapping.
            raise FitError(f"{out}: cannot trim a FIT onto itself")
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as err:
            raise FitError(f"{out}: cannot write: {err.strerror}") from None
        try:
            return write_segments(fit, segments, fd, sha256=sha256)
        finally:
            os.close(fd)
    view = memoryview(fit.buffer)
    total = 0
    for seg in segments:
        chunk = seg if isinstance(seg, bytes) else view[seg[0] : seg[0] + seg[1]]
        out.write(chunk)
        if sha256 is not None:
            sha256.update(chunk)
        total += len(chunk)
    return total


def trim_bytes(fit: Fit, config: str, *, add_hashes: bool = False) -> bytes:
    """`trim` into memory."""
    view = memoryview(fit.buffer)
    return b"".join(
        seg if isinstance(seg, bytes) else view[seg[0] : seg[0] + seg[1]]
        for seg in plan(fit, config, add_hashes=add_hashes)
    )


def write_segments(
    fit: Fit, segments: Sequence[Segment], fd: int, *, sha256: Hash | None = None
) -> int:
    """Write `segments` to file descriptor `fd`: small pieces gathered into writev calls,
    big source ranges copied in the kernel (copy_file_range, else sendfile). `sha256`, if
    given, is updated with the segments in order."""
    view = memoryview(fit.buffer)
    src = fit.fileno()
    pending: list[bytes | memoryview] = []
    total = 0

    def flush() -> None:
        while pending:
            batch = pending[:512]
            done = os.writev(fd, batch)
            # A short write leaves the rest of the batch for the next round.
            while done:
                first = pending[0]
                if done >= len(first):
                    done -= len(first)
                    pending.pop(0)
                else:
                    pending[0] = memoryview(first)[done:]
                    done = 0

    for seg in segments:
        if sha256 is not None:
            # The source is immutable (bytes, or a read-only store blob): what is hashed here
            # is what gets written.
            sha256.update(seg if isinstance(seg, bytes) else view[seg[0] : seg[0] + seg[1]])
        if isinstance(seg, bytes):
            pending.append(seg)
            total += len(seg)
            continue
        offset, length = seg
        total += length
        if src is None or length < _BIG:
            pending.append(view[offset : offset + length])
            continue
        flush()
        _copy_range(src, fd, offset, length, view)
    flush()
    return total


def _copy_range(src: int, dst: int, offset: int, length: int, view: memoryview) -> None:
    """Copy source bytes [offset, offset+length) to `dst` at its position, in the kernel."""
    end = offset + length
    try:
        while offset < end:
            n = os.copy_file_range(src, dst, end - offset, offset)
            if n == 0:
                break
            offset += n
    except OSError:
        pass  # e.g. EXDEV on old kernels or a pipe as dst: try sendfile
    try:
        while offset < end:
            n = os.sendfile(dst, src, offset, end - offset)
            if n == 0:
                break
            offset += n
    except OSError:
        pass
    while offset < end:
        offset += os.write(dst, view[offset:end])
