"""Signing keys: the keys folder, safe loading, and public-key export for U-Boot and barebox.

A keys folder holds ``<name>.key`` (PEM private key, mode 0600) and ``<name>.crt`` (a
self-signed certificate), the layout ``mkimage -k <folder>`` expects for ``key-name-hint =
"<name>"``. The folder must lie outside every served root; private key bytes are never logged,
served or echoed in an error message.
"""

from __future__ import annotations

import datetime
import os
import re
import stat
from pathlib import Path

import libfdt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from overrided.errors import OverridedError
from overrided.fit.model import FitError, dtb_view, read_header, reservation_map

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

# `overrided keys new --algo`: the key types both bootloaders can verify (docs/formats.md,
# "Algorithms and keys").
KEY_ALGOS: tuple[str, ...] = ("rsa2048", "rsa3072", "rsa4096", "ecdsa256")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NOTFOUND = (libfdt.NOTFOUND,)


class KeyStoreError(OverridedError):
    """A key file is missing, unsafe, malformed, or of a kind the bootloaders cannot use."""


def check_key_name(name: str) -> str:
    """Return `name` if it is a usable key name (it becomes a file name and a DT node name)."""
    if not _NAME.fullmatch(name):
        raise KeyStoreError(
            f"bad key name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)"
        )
    return name


def private_key_path(keys_dir: Path, name: str) -> Path:
    """Where the private key `name` lives: ``<keys_dir>/<name>.key`` (mkimage's layout)."""
    return keys_dir / f"{check_key_name(name)}.key"


def certificate_path(keys_dir: Path, name: str) -> Path:
    """Where the certificate of key `name` lives: ``<keys_dir>/<name>.crt``."""
    return keys_dir / f"{check_key_name(name)}.crt"


def key_algo(key: SigningKey | PublicKey) -> str:
    """The crypto half of a FIT ``algo`` for `key`: ``rsa2048``… or ``ecdsa256``."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"rsa{key.key_size}"
    if isinstance(key.curve, ec.SECP256R1):
        return "ecdsa256"
    if isinstance(key.curve, ec.SECP384R1):
        return "ecdsa384"
    raise KeyStoreError(f"unsupported elliptic curve {key.curve.name} (use P-256)")


def generate_key(algo: str) -> SigningKey:
    """A fresh private key of kind `algo` (one of KEY_ALGOS)."""
    if algo == "ecdsa256":
        return ec.generate_private_key(ec.SECP256R1())
    if algo in ("rsa2048", "rsa3072", "rsa4096"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(algo[3:]))
    raise KeyStoreError(f"unknown key algo {algo!r} (known: {', '.join(KEY_ALGOS)})")


def self_signed_certificate(key: SigningKey, name: str) -> x509.Certificate:
    """A self-signed certificate for `key` (mkimage reads the public key of ``-K`` from it)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )


def new_key(keys_dir: Path, name: str, algo: str = "rsa2048") -> Path:
    """Create ``<name>.key`` (0600) and ``<name>.crt`` in `keys_dir`; never overwrite a key."""
    key_path = private_key_path(keys_dir, name)
    key = generate_key(algo)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # O_EXCL: an existing key is somebody's signing identity; O_CREAT with 0600 means the
        # file is never readable by others, not even for an instant.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyStoreError(f"{key_path}: exists already; not overwriting a key") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    cert = self_signed_certificate(key, name)
    certificate_path(keys_dir, name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path


def _check_private_mode(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyStoreError(f"{path}: no such key file") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyStoreError(f"{path}: not a regular file")
    if st.st_mode & 0o077:
        raise KeyStoreError(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others read a private key;"
            f" run chmod 600 {path}"
        )


def load_private_key_file(path: Path) -> SigningKey:
    """Load an unencrypted PEM private key, refusing files that group or others can read."""
    _check_private_mode(path)
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # The library's message is dropped on purpose: nothing derived from key bytes is shown.
        raise KeyStoreError(
            f"{path}: not an unencrypted PEM private key (RSA or EC P-256)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyStoreError(f"{path}: a {type(key).__name__}; FIT signing needs RSA or ECDSA")
    key_algo(key)  # rejects curves the bootloaders do not verify
    return key


def load_signing_key(keys_dir: Path, name: str) -> SigningKey:
    """Load the private key `name` from `keys_dir` (``<name>.key``, mode 0600 or stricter)."""
    return load_private_key_file(private_key_path(keys_dir, name))


def _public_from_dtb(data: bytes, path: Path) -> dict[str, PublicKey]:
    try:
        fdt = dtb_view(data, f"{path}: not a DTB")  # a lying header is an error, not a crash
    except FitError as err:
        raise KeyStoreError(str(err)) from None
    parent = fdt.path_offset("/signature", quiet=_NOTFOUND)
    if parent < 0:
        raise KeyStoreError(f"{path}: no /signature node with public keys")
    keys: dict[str, PublicKey] = {}
    node = fdt.first_subnode(parent, quiet=_NOTFOUND)
    while node >= 0:
        name = fdt.get_name(node)
        hint = fdt.getprop(node, "key-name-hint", quiet=_NOTFOUND)
        keys[hint.as_str() if not isinstance(hint, int) else name] = public_key_from_node(
            fdt, node, f"{path}:/signature/{name}"
        )
        node = fdt.next_subnode(node, quiet=_NOTFOUND)
    if not keys:
        raise KeyStoreError(f"{path}: /signature holds no key nodes")
    return keys


def public_key_from_node(fdt: libfdt.FdtRo, node: int, where: str) -> PublicKey:
    """Rebuild a public key from a U-Boot ``/signature/key-*`` node."""

    def prop(name: str) -> bytes:
        value = fdt.getprop(node, name, quiet=_NOTFOUND)
        if isinstance(value, int):
            raise KeyStoreError(f"{where}: missing {name}")
        return bytes(value)

    if not isinstance(fdt.getprop(node, "rsa,modulus", quiet=_NOTFOUND), int):
        modulus = int.from_bytes(prop("rsa,modulus"), "big")
        exponent_raw = fdt.getprop(node, "rsa,exponent", quiet=_NOTFOUND)
        # U-Boot treats a missing rsa,exponent as 65537 (lib/rsa/rsa-verify.c).
        exponent = 65537 if isinstance(exponent_raw, int) else int.from_bytes(exponent_raw, "big")
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    curve_name = prop("ecdsa,curve").rstrip(b"\0").decode()
    curves: dict[str, ec.EllipticCurve] = {
        "prime256v1": ec.SECP256R1(),
        "secp384r1": ec.SECP384R1(),
    }
    if curve_name not in curves:
        raise KeyStoreError(f"{where}: unsupported ecdsa,curve {curve_name!r}")
    x = int.from_bytes(prop("ecdsa,x-point"), "big")
    y = int.from_bytes(prop("ecdsa,y-point"), "big")
    return ec.EllipticCurvePublicNumbers(x, y, curves[curve_name]).public_key()


def load_public_keys(path: Path) -> dict[str, PublicKey]:
    """Public keys from a file, by name: PEM public key, certificate, private key, or key DTB.

    A PEM or certificate yields one key named after the file stem; a U-Boot key DTB yields
    every ``/signature`` key by its ``key-name-hint``. A private key file is mode-checked.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise KeyStoreError(f"{path}: {err.strerror}") from None
    if data[:4] == b"\xd0\x0d\xfe\xed":
        return _public_from_dtb(data, path)
    key: object
    if b"PRIVATE KEY-----" in data:
        key = load_private_key_file(path).public_key()
    elif b"-----BEGIN CERTIFICATE-----" in data:
        key = x509.load_pem_x509_certificate(data).public_key()
    else:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            raise KeyStoreError(
                f"{path}: not a PEM public key, certificate, private key or key DTB"
            ) from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise KeyStoreError(f"{path}: a {type(key).__name__}; FIT signatures use RSA or ECDSA")
    return {path.stem: key}


def public_key_of(keys_dir: Path, name: str) -> PublicKey:
    """The public key of `name`: from ``<name>.crt`` if present, else from the private key."""
    cert = certificate_path(keys_dir, name)
    if cert.exists():
        key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
        if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            return key
    return load_signing_key(keys_dir, name).public_key()


def _bignum(value: int, bits: int) -> bytes:
    # fdt_add_bignum: bits/32 big-endian 32-bit words, most significant word first.
    return value.to_bytes(bits // 32 * 4, "big")


def uboot_key_properties(
    key: PublicKey, name: str, *, algo: str | None = None, required: str | None = None
) -> list[tuple[str, bytes]]:
    """The properties of ``/signature/key-<name>`` in mkimage ``-K`` order, as raw values.

    RSA (lib/rsa/rsa-sign.c ``rsa_add_verify_data``): ``key-name-hint``, ``rsa,num-bits``,
    ``rsa,n0-inverse`` (−n⁻¹ mod 2³², for Montgomery multiplication), ``rsa,exponent`` (u64),
    ``rsa,modulus``, ``rsa,r-squared`` (2^(2·bits) mod n), ``algo``, then ``required``.
    ECDSA (lib/ecdsa/ecdsa-libcrypto.c): ``key-name-hint``, ``ecdsa,curve``, ``ecdsa,x-point``,
    ``ecdsa,y-point``, ``algo``, ``required``.
    """
    check_key_name(name)
    if required not in (None, "conf", "image"):
        raise KeyStoreError(f"required must be 'conf' or 'image', not {required!r}")
    algo = algo or f"sha256,{key_algo(key)}"

    def text(s: str) -> bytes:
        return s.encode() + b"\0"

    props: list[tuple[str, bytes]] = [("key-name-hint", text(name))]
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        n, bits = numbers.n, numbers.n.bit_length()
        n0_inverse = (-pow(n, -1, 1 << 32)) % (1 << 32)
        props += [
            ("rsa,num-bits", bits.to_bytes(4, "big")),
            ("rsa,n0-inverse", n0_inverse.to_bytes(4, "big")),
            ("rsa,exponent", numbers.e.to_bytes(8, "big")),
            ("rsa,modulus", _bignum(n, bits)),
            ("rsa,r-squared", _bignum(pow(2, 2 * bits, n), bits)),
        ]
    else:
        curve = {"ecdsa256": "prime256v1", "ecdsa384": "secp384r1"}[key_algo(key)]
        point = key.public_numbers()
        bits = key.curve.key_size
        props += [
            ("ecdsa,curve", text(curve)),
            ("ecdsa,x-point", _bignum(point.x, bits)),
            ("ecdsa,y-point", _bignum(point.y, bits)),
        ]
    props.append(("algo", text(algo)))
    if required:
        props.append(("required", text(required)))
    return props


def uboot_key_node(
    fdt: libfdt.Fdt,
    key: PublicKey,
    name: str,
    *,
    algo: str | None = None,
    required: str | None = None,
) -> int:
    """Write (or overwrite) ``/signature/key-<name>`` into `fdt`; the caller sizes the tree.

    mkimage names ECDSA key nodes after the bare hint; we use ``key-<name>`` for both kinds:
    U-Boot finds required keys by walking ``/signature`` and RSA keys by ``key-<hint>``.
    """
    parent = fdt.path_offset("/signature", quiet=_NOTFOUND)
    if parent < 0:
        parent = fdt.add_subnode(0, "signature")
    node_name = f"key-{name}"
    node: int = fdt.subnode_offset(parent, node_name, quiet=_NOTFOUND)
    if node < 0:
        node = fdt.add_subnode(parent, node_name)
    for prop, value in uboot_key_properties(key, name, algo=algo, required=required):
        fdt.setprop(node, prop, value)
    return node


def export_uboot_dtb(
    key: PublicKey,
    name: str,
    out: Path,
    *,
    algo: str | None = None,
    required: str | None = None,
    base_dtb: Path | None = None,
) -> Path:
    """Write a DTB holding ``/signature/key-<name>``: into a copy of `base_dtb`, or a new one.

    Give U-Boot's control DT as `base_dtb` to build it into U-Boot (``EXT_DTB``), or load the
    key-only DTB and point ``fdt checksign`` at it.
    """
    if base_dtb is not None:
        try:
            raw = base_dtb.read_bytes()
            # libfdt trusts the header's sizes and the reservation map when it edits a tree.
            head = read_header(raw, "")
            reservation_map(raw, head, "")
            fdt = libfdt.Fdt(bytearray(raw[: head.totalsize]))
        except (OSError, libfdt.FdtException, FitError) as err:
            raise KeyStoreError(f"{base_dtb}: cannot use as a DTB: {err}") from None
    else:
        fdt = libfdt.Fdt.create_empty_tree(256)
    fdt.resize(fdt.totalsize() + 4096)
    uboot_key_node(fdt, key, name, algo=algo, required=required)
    fdt.pack()
    out.write_bytes(bytes(fdt.as_bytearray()))
    return out


def public_pem(key: PublicKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of `key`."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def export_pem(key: PublicKey, out: Path) -> Path:
    """Write `key` as a PEM public key, the form barebox's ``CONFIG_CRYPTO_PUBLIC_KEYS`` takes.

    barebox (docs/formats.md, "Algorithms and keys"): list it as
    ``keyring=fit,fit-hint=<name>:<path>.pem``; it verifies RSA with PKCS#1 v1.5 and ECDSA on P-256
    only.
    """
    out.write_bytes(public_pem(key))
    return out
