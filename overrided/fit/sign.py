"""Sign FIT configurations the way mkimage does, covering every image they reference.

The written ``signature-1`` node matches ``mkimage -F -k`` (tools/image-host.c,
``fit_image_write_sig``): for the same FIT and RSA key, ``value``, ``hashed-nodes`` and
``hashed-strings`` are byte-identical. The one deliberate difference is the node list, which
is rebuilt from *all* image references of the configuration (docs/formats.md, "Node lists are
rebuilt, never read"): ``sign-images`` is written to name every referencing property, so mkimage
re-signing our output agrees with us.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass

import libfdt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from overrided import __version__
from overrided.fit.hashes import add_missing_hashes
from overrided.fit.model import FitError
from overrided.fit.regions import (
    check_structure,
    config_names,
    config_offset,
    header,
    open_fdt,
    reference_properties,
    signed_bytes,
    signed_node_paths,
    unit_address_nodes,
)
from overrided.keys import PublicKey, SigningKey, key_algo

SIGNATURE_NODE = "signature-1"

# docs/formats.md, "Algorithms and keys": U-Boot knows these hashes; barebox only sha1 and sha256.
SIGN_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
SIGN_CRYPTOS: tuple[str, ...] = ("rsa2048", "rsa3072", "rsa4096", "ecdsa256", "ecdsa384")
PADDINGS: tuple[str, ...] = ("pkcs-1.5", "pss")
BAREBOX_HASHES = frozenset({"sha1", "sha256"})

_NOTFOUND = (libfdt.NOTFOUND,)


@dataclass(frozen=True)
class SignAlgo:
    """A parsed FIT signature ``algo`` such as ``sha256,rsa2048``."""

    hash_name: str
    crypto: str

    def hash(self) -> hashes.HashAlgorithm:
        """A fresh hash object of this algo's digest."""
        return SIGN_HASHES[self.hash_name]()

    def __str__(self) -> str:
        return f"{self.hash_name},{self.crypto}"


def parse_algo(algo: str) -> SignAlgo:
    """Split and check a signature ``algo`` string."""
    hash_name, _, crypto = algo.partition(",")
    if hash_name not in SIGN_HASHES or crypto not in SIGN_CRYPTOS:
        raise FitError(
            f"unsupported signature algo {algo!r}: want <{'|'.join(SIGN_HASHES)}>,"
            f"<{'|'.join(SIGN_CRYPTOS)}>"
        )
    return SignAlgo(hash_name, crypto)


def check_key_fits(algo: SignAlgo, key: SigningKey | PublicKey, pad: str) -> None:
    """Refuse a key whose type or size does not match the ``algo`` the signature announces."""
    have = key_algo(key)
    if have != algo.crypto:
        raise FitError(f"algo {algo} needs an {algo.crypto} key, but the key is {have}")
    if pad not in PADDINGS:
        raise FitError(f"unknown padding {pad!r} (known: {', '.join(PADDINGS)})")
    if pad == "pss" and not algo.crypto.startswith("rsa"):
        raise FitError(f"padding pss applies to RSA only, not {algo.crypto}")


def bootloader_warnings(algo: str, pad: str = "pkcs-1.5") -> list[str]:
    """Why a signature with `algo`/`pad` would not verify on some bootloader (docs/formats.md,
    "Algorithms and keys")."""
    parsed = parse_algo(algo)
    warnings = []
    if parsed.hash_name not in BAREBOX_HASHES:
        warnings.append(f"barebox refuses {parsed.hash_name}: it accepts only sha1 and sha256")
    if pad == "pss":
        warnings.append("barebox verifies PKCS#1 v1.5 only; U-Boot needs CONFIG_FIT_RSASSA_PSS")
    if parsed.crypto == "ecdsa384":
        warnings.append("barebox verifies ECDSA on P-256 only")
    if parsed.crypto.startswith("ecdsa"):
        warnings.append("U-Boot verifies ECDSA only with an ECDSA driver (UCLASS_ECDSA)")
    return warnings


def raw_signature(key: SigningKey, algo: SignAlgo, pad: str, data: bytes) -> bytes:
    """Sign `data` as U-Boot expects the ``value``: RSA modulus-sized, ECDSA ``r‖s``."""
    if isinstance(key, rsa.RSAPrivateKey):
        if pad == "pss":
            # U-Boot's signer sets the salt length to the digest length (lib/rsa/rsa-sign.c).
            scheme: padding.AsymmetricPadding = padding.PSS(
                mgf=padding.MGF1(algo.hash()), salt_length=algo.hash().digest_size
            )
        else:
            scheme = padding.PKCS1v15()
        return key.sign(data, scheme, algo.hash())
    der = key.sign(data, ec.ECDSA(algo.hash()))
    r, s = utils.decode_dss_signature(der)
    size = (key.curve.key_size + 7) // 8
    # lib/ecdsa/ecdsa-libcrypto.c: the raw pair, each zero-padded to the curve size.
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def _stringlist(items: list[str]) -> bytes:
    return b"".join(s.encode() + b"\0" for s in items)


def _default_timestamp() -> int:
    # Like mkimage (imagetool_get_source_date): SOURCE_DATE_EPOCH makes output reproducible.
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is not None:
        try:
            return int(env)
        except ValueError:
            raise FitError(f"SOURCE_DATE_EPOCH={env!r} is not a number of seconds") from None
    return int(time.time())


def _aligned(n: int) -> int:
    return (n + 3) & ~3


def sign_configuration(
    blob: bytes,
    config: str,
    key: SigningKey,
    *,
    key_name: str,
    algo: str = "sha256,rsa2048",
    padding: str = "pkcs-1.5",
    signer_name: str = "overrided",
    timestamp: int | None = None,
) -> bytes:
    """Return `blob` with ``/configurations/<config>/signature-1`` signed by `key`.

    Images without a hash node first get ``hash-1`` (sha256). The node list covers every
    image the configuration references; ``sign-images`` names every referencing property.
    An existing ``signature-1`` is re-signed in place, as ``mkimage -F`` does.
    """
    parsed = parse_algo(algo)
    check_key_fits(parsed, key, padding)
    check_structure(blob)
    at_nodes = unit_address_nodes(blob)
    if at_nodes:
        raise FitError(
            f"node {at_nodes[0]}: '@' in FIT node names makes signatures ambiguous and U-Boot"
            " refuses such FITs; rename the nodes (e.g. hash-1, kernel-1)"
        )
    blob = add_missing_hashes(blob, "sha256")
    head = header(blob)
    tail = blob[_aligned(head.totalsize) :]  # external data (mkimage -E) stays after the FDT

    fdt = libfdt.Fdt(bytearray(blob[: head.totalsize]))
    paths = signed_node_paths(fdt, config)
    sign_images = [prop for prop, units in reference_properties(fdt, config) if units]
    value_size = 2 * ((key.key_size + 7) // 8)
    fdt.resize(head.totalsize + 2048 + value_size + len(_stringlist(paths)))

    conf = config_offset(fdt, config)
    sig = fdt.subnode_offset(conf, SIGNATURE_NODE, quiet=_NOTFOUND)
    if sig < 0:
        sig = fdt.add_subnode(conf, SIGNATURE_NODE)
    # What an .its author writes; mkimage finds these in place before it signs.
    fdt.setprop_str(sig, "algo", str(parsed))
    fdt.setprop_str(sig, "key-name-hint", key_name)
    if padding != "pkcs-1.5":
        fdt.setprop_str(sig, "padding", padding)
    elif isinstance(fdt.getprop(sig, "padding", quiet=_NOTFOUND), bytes | bytearray):
        fdt.delprop(sig, "padding")
    fdt.setprop(sig, "sign-images", _stringlist(sign_images))

    # docs/formats.md, "Signed bytes", step 3: the whole strings block as it stands now is hashed,
    # and its size recorded; names added below land after that prefix.
    strings_size = fdt.size_dt_strings()
    data = signed_bytes(fdt.as_bytearray(), paths, strings_size)
    value = raw_signature(key, parsed, padding, data)

    # mkimage's order (fit_image_write_sig): value, signer-name, signer-version, timestamp,
    # hashed-nodes, hashed-strings. None of these is hashed: they sit one level below the
    # configuration node (docs/formats.md, "Signed bytes", step 2).
    fdt.setprop(sig, "value", value)
    fdt.setprop_str(sig, "signer-name", signer_name)
    fdt.setprop_str(sig, "signer-version", __version__)
    stamp = _default_timestamp() if timestamp is None else timestamp
    fdt.setprop_u32(sig, "timestamp", stamp & 0xFFFFFFFF)
    fdt.setprop(sig, "hashed-nodes", _stringlist(paths))
    # The first cell is a legacy offset that must stay 0.
    fdt.setprop(sig, "hashed-strings", struct.pack(">II", 0, strings_size))
    fdt.pack()
    out = bytes(fdt.as_bytearray())
    if not tail:
        return out
    return _reattach_external(fdt, head.totalsize, tail)


def _reattach_external(fdt: libfdt.Fdt, old_totalsize: int, tail: bytes) -> bytes:
    """Append external data again; absolute ``data-position`` values move with the FDT's growth.

    ``data-position`` is excluded from the hashed regions, so this keeps the signature valid.
    """
    shift = _aligned(fdt.totalsize()) - _aligned(old_totalsize)
    images = fdt.path_offset("/images", quiet=_NOTFOUND)
    node = fdt.first_subnode(images, quiet=_NOTFOUND) if images >= 0 else -1
    while node >= 0:
        position = fdt.getprop(node, "data-position", quiet=_NOTFOUND)
        if not isinstance(position, int):
            fdt.setprop_u32(node, "data-position", position.as_uint32() + shift)
        node = fdt.next_subnode(node, quiet=_NOTFOUND)
    head = bytes(fdt.as_bytearray())
    return head + bytes(_aligned(len(head)) - len(head)) + tail


def sign_all(
    blob: bytes,
    key: SigningKey,
    *,
    key_name: str,
    algo: str = "sha256,rsa2048",
    padding: str = "pkcs-1.5",
    signer_name: str = "overrided",
    timestamp: int | None = None,
) -> bytes:
    """Sign every configuration of `blob` (in node order, as mkimage does)."""
    fdt = open_fdt(blob)
    stamp = _default_timestamp() if timestamp is None else timestamp
    for config in config_names(fdt):
        blob = sign_configuration(
            blob,
            config,
            key,
            key_name=key_name,
            algo=algo,
            padding=padding,
            signer_name=signer_name,
            timestamp=stamp,
        )
    return blob
