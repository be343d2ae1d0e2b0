"""Verify FIT configuration signatures and image hashes, naming exactly what fails.

A configuration signature covers metadata and the hash values, never ``data``
(docs/formats.md, "Signed bytes"), so a verifier must do both steps: check the signature over
the rebuilt regions, then check every hash of every referenced image against its data. The node
list is rebuilt from the configuration's references, as barebox and current U-Boot do;
``hashed-nodes`` is only compared afterwards to explain a failure (docs/formats.md, "Node lists
are rebuilt, never read").
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import libfdt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from overrided.fit.hashes import digest
from overrided.fit.model import FitError
from overrided.fit.regions import (
    config_names,
    header,
    open_fdt,
    reference_properties,
    signed_bytes,
    signed_node_paths,
    unit_address_nodes,
)
from overrided.fit.sign import SignAlgo, parse_algo
from overrided.keys import KeyStoreError, PublicKey, key_algo

_NOTFOUND = (libfdt.NOTFOUND,)


@dataclass(frozen=True)
class Finding:
    """One check: a signature node or an image hash node, and whether it holds."""

    config: str
    node: str
    ok: bool
    message: str
    checked: bool = True  # False: nothing to check it with, or not asked for (never a failure)

    def __str__(self) -> str:
        status = "FAIL" if not self.ok else "OK  " if self.checked else "SKIP"
        return f"{status} {self.node}: {self.message}"


@dataclass
class VerifyReport:
    """Every check made, in order: per configuration its signatures, then its image hashes."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when something was checked and nothing failed."""
        return any(f.checked for f in self.findings) and all(f.ok for f in self.findings)

    def skipped(self) -> list[Finding]:
        """The checks not made (a signature without a key, an unsigned configuration)."""
        return [f for f in self.findings if not f.checked]

    def failures(self) -> list[Finding]:
        """The failed checks only."""
        return [f for f in self.findings if not f.ok]

    def failed(self, node: str) -> bool:
        """Whether a check of `node` (a full node path) failed."""
        return any(f.node == node and not f.ok for f in self.findings)

    def lines(self) -> list[str]:
        """One line per check, for people."""
        return [str(f) for f in self.findings]


def _subnodes(fdt: libfdt.FdtRo, node: int) -> Iterator[int]:
    child = fdt.first_subnode(node, quiet=_NOTFOUND)
    while child >= 0:
        yield child
        child = fdt.next_subnode(child, quiet=_NOTFOUND)


def _prop(fdt: libfdt.FdtRo, node: int, name: str) -> bytes | None:
    value = fdt.getprop(node, name, quiet=_NOTFOUND)
    return None if isinstance(value, int) else bytes(value)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.rstrip(b"\0").decode("utf-8", "replace")


def check_signature(key: PublicKey, algo: SignAlgo, pad: str, data: bytes, value: bytes) -> bool:
    """Whether `value` is a valid signature of `data` by `key` under `algo`/`pad`."""
    try:
        if isinstance(key, rsa.RSAPublicKey):
            scheme: padding.AsymmetricPadding = padding.PKCS1v15()
            if pad == "pss":
                # Accept any salt length: U-Boot 2023.01's mkimage left it to OpenSSL (maximum),
                # newer ones use the digest length.
                scheme = padding.PSS(mgf=padding.MGF1(algo.hash()), salt_length=padding.PSS.AUTO)
            key.verify(value, data, scheme, algo.hash())
        else:
            size = (key.curve.key_size + 7) // 8
            if len(value) != 2 * size:
                return False
            der = utils.encode_dss_signature(
                int.from_bytes(value[:size], "big"), int.from_bytes(value[size:], "big")
            )
            key.verify(der, data, ec.ECDSA(algo.hash()))
    except InvalidSignature:
        return False
    return True


def _candidate_keys(
    keys: PublicKey | Mapping[str, PublicKey], hint: str | None
) -> list[tuple[str, PublicKey]]:
    if not isinstance(keys, Mapping):
        return [(hint or "key", keys)]
    # Like both bootloaders: the hinted key first, then every other key.
    ordered = sorted(keys.items(), key=lambda item: item[0] != hint)
    return list(ordered)


def _check_config_signature(
    blob: bytes,
    fdt: libfdt.FdtRo,
    config: str,
    sig: int,
    keys: PublicKey | Mapping[str, PublicKey],
) -> Finding:
    where = f"/configurations/{config}/{fdt.get_name(sig)}"

    def fail(message: str) -> Finding:
        return Finding(config, where, False, message)

    try:
        algo = parse_algo(_text(_prop(fdt, sig, "algo")) or "")
    except FitError as err:
        return fail(str(err))
    pad = _text(_prop(fdt, sig, "padding")) or "pkcs-1.5"
    value = _prop(fdt, sig, "value")
    if value is None:
        return fail("no value: the signature was never written")
    strings = _prop(fdt, sig, "hashed-strings")
    if strings is None or len(strings) != 8:
        return fail("hashed-strings missing or not <0 size>")
    legacy, strings_size = struct.unpack(">II", strings)
    if legacy != 0:
        return fail(f"hashed-strings first cell is {legacy:#x}, must be 0")
    try:
        paths = signed_node_paths(fdt, config)
        data = signed_bytes(blob, paths, strings_size)
    except FitError as err:
        return fail(str(err))

    hint = _text(_prop(fdt, sig, "key-name-hint"))
    tried = []
    for name, key in _candidate_keys(keys, hint):
        try:
            if key_algo(key) != algo.crypto:
                tried.append(f"{name} ({key_algo(key)})")
                continue
        except KeyStoreError:
            continue
        if check_signature(key, algo, pad, data, value):
            return Finding(config, where, True, f"{algo} signature verifies with key {name!r}")
        tried.append(name)

    message = f"{algo} signature does not verify (tried {', '.join(tried) or 'no key'})"
    stored = _text(_prop(fdt, sig, "hashed-nodes"))
    stored_paths = set((_prop(fdt, sig, "hashed-nodes") or b"").rstrip(b"\0").split(b"\0"))
    uncovered = [p for p in dict.fromkeys(paths) if p.encode() not in stored_paths]
    if stored is not None and uncovered:
        # barebox's hint (common/image-fit.c): the signer chose a narrower node list.
        message += f"; the signer did not cover {', '.join(uncovered)} (hashed-nodes lacks them)"
    return fail(message)


def _image_data(blob: bytes, fdt: libfdt.FdtRo, image: int, where: str) -> bytes:
    data = _prop(fdt, image, "data")
    if data is not None:
        return data
    size = _prop(fdt, image, "data-size")
    offset = _prop(fdt, image, "data-offset")
    position = _prop(fdt, image, "data-position")
    if size is None or (offset is None and position is None):
        raise FitError(f"{where}: no data, data-offset or data-position")
    if offset is not None:
        # docs/formats.md, "Image nodes": data-offset counts from the first 4-byte-aligned byte
        # after the FDT.
        start = ((fdt.totalsize() + 3) & ~3) + int.from_bytes(offset[:4], "big")
    else:
        start = int.from_bytes((position or b"")[:4], "big")
    length = int.from_bytes(size[:4], "big")
    if start + length > len(blob):
        raise FitError(f"{where}: external data {start:#x}+{length:#x} lies beyond the file end")
    return blob[start : start + length]


def _check_image_hashes(blob: bytes, fdt: libfdt.FdtRo, config: str) -> list[Finding]:
    findings = []
    seen: set[str] = set()
    for prop, units in reference_properties(fdt, config):
        for unit in units:
            path = f"/images/{unit}"
            if unit in seen:
                continue
            seen.add(unit)
            image = fdt.path_offset(path, quiet=_NOTFOUND) if "/" not in unit else -1
            if image < 0:
                findings.append(
                    Finding(config, path, False, f"referenced by {prop} but does not exist")
                )
                continue
            hash_nodes = [n for n in _subnodes(fdt, image) if fdt.get_name(n).startswith("hash")]
            if not hash_nodes:
                findings.append(Finding(config, path, False, "no hash node: data is unprotected"))
                continue
            try:
                data = _image_data(blob, fdt, image, path)
            except FitError as err:
                findings.append(Finding(config, path, False, str(err)))
                continue
            for node in hash_nodes:
                findings.append(
                    _check_hash(fdt, config, f"{path}/{fdt.get_name(node)}", node, data)
                )
    return findings


def _check_hash(fdt: libfdt.FdtRo, config: str, where: str, node: int, data: bytes) -> Finding:
    algo = _text(_prop(fdt, node, "algo"))
    value = _prop(fdt, node, "value")
    if algo is None or value is None:
        return Finding(config, where, False, "hash node lacks algo or value")
    try:
        actual = digest(algo, data)
    except FitError as err:
        return Finding(config, where, False, str(err))
    if actual != value:
        return Finding(
            config, where, False, f"{algo} mismatch: stored {value.hex()}, data has {actual.hex()}"
        )
    return Finding(config, where, True, f"{algo} matches")


def verify(
    blob: bytes,
    public_key: PublicKey | Mapping[str, PublicKey] | None,
    *,
    config: str | None = None,
    require_signature: bool = True,
) -> VerifyReport:
    """Check the signatures of `config` (default: every configuration), then its image hashes.

    `public_key` is one key, or keys by name (tried hint first, like the bootloaders), or
    ``None``: signatures are then reported as not checked. With `require_signature` a
    configuration passes only when it has at least one ``signature*`` node and every such node
    verifies (barebox ``verify=signature``); without it, an unsigned configuration is checked by
    its hashes alone (barebox ``verify=available``). Every hash of every referenced image must
    match either way.
    """
    header(blob)
    fdt = open_fdt(blob)
    report = VerifyReport()
    at_nodes = unit_address_nodes(blob)
    for name in [config] if config is not None else config_names(fdt):
        conf = fdt.path_offset(f"/configurations/{name}", quiet=_NOTFOUND)
        if conf < 0:
            raise FitError(f"no configuration /configurations/{name}")
        where = f"/configurations/{name}"
        sigs = [n for n in _subnodes(fdt, conf) if fdt.get_name(n).startswith("signature")]
        if at_nodes and (sigs or require_signature):
            report.findings.append(
                Finding(
                    name,
                    at_nodes[0],
                    False,
                    "'@' in a node name: libfdt matches 'x@1' for 'x', so what is signed is"
                    " ambiguous; U-Boot refuses the FIT",
                )
            )
        if not sigs:
            if require_signature:
                report.findings.append(Finding(name, where, False, "no signature node"))
            else:
                report.findings.append(
                    Finding(name, where, True, "unsigned: its hashes only", checked=False)
                )
        for sig in sigs:
            if public_key is None:
                node = f"{where}/{fdt.get_name(sig)}"
                if require_signature:
                    report.findings.append(Finding(name, node, False, "no key to check it with"))
                else:
                    report.findings.append(
                        Finding(name, node, True, "not checked: no key given", checked=False)
                    )
                continue
            report.findings.append(_check_config_signature(blob, fdt, name, sig, public_key))
        report.findings.extend(_check_image_hashes(blob, fdt, name))
    return report
