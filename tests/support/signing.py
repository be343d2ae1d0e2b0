"""Signing test helpers: RSA keys made by openssl for ``mkimage -k``, in-place tampering with a
FIT's properties and image data, and the sample configurations as a typical ``.its`` signs them.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import libfdt
import pytest

from overrided.fit.regions import FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, header, tags
from tests.support.fits import ItsConfig, run, signing_keys


def rsa_keys(folder: Path, hint: str = "dev", bits: int = 2048) -> Path:
    """An openssl-made RSA key plus certificate laid out for `mkimage -k` (``<hint>.key/.crt``)."""
    if bits == 2048:
        return signing_keys(folder, hint)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / f"{hint}.key"
    run(
        "openssl",
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        f"rsa_keygen_bits:{bits}",
        "-out",
        key,
    )
    run("openssl", "req", "-batch", "-new", "-x509", "-key", key, "-out", folder / f"{hint}.crt")
    run("chmod", "600", key)
    return folder


def prop(blob: bytes, path: str, name: str) -> bytes:
    """A property's raw value."""
    fdt = libfdt.FdtRo(blob[: struct.unpack_from(">I", blob, 4)[0]])
    return bytes(fdt.getprop(fdt.path_offset(path), name))


def set_prop(blob: bytes, path: str, name: str, value: bytes) -> bytes:
    """`blob` with one property replaced (same length: nothing else moves)."""
    assert len(value) == len(prop(blob, path, name)), "tamper in place only"
    fdt = libfdt.Fdt(bytearray(blob))
    fdt.setprop(fdt.path_offset(path), name, value)
    return bytes(fdt.as_bytearray())


def data_span(blob: bytes, unit: str) -> tuple[int, int]:
    """(offset, length) of ``/images/<unit>/data`` in `blob`, found by walking the tags."""
    path: list[str] = []
    for tag in tags(blob, header(blob)):
        if tag.kind == FDT_BEGIN_NODE:
            path.append(tag.name)
        elif tag.kind == FDT_END_NODE:
            path.pop()
        elif tag.kind == FDT_PROP and tag.name == "data" and path[1:] == ["images", unit]:
            return tag.start + 12, struct.unpack_from(">I", blob, tag.start + 4)[0]
    raise AssertionError(f"no /images/{unit}/data")


def flip_byte(blob: bytes, unit: str, at: int = 100) -> bytes:
    """`blob` with one byte of ``/images/<unit>`` data flipped."""
    start, _ = data_span(blob, unit)
    out = bytearray(blob)
    out[start + at] ^= 0xFF
    return bytes(out)


def replace_image(blob: bytes, unit: str, new: bytes) -> bytes:
    """Swap an image's data for other bytes of the same size and fix its hash-1: an attacker's
    image that is internally consistent, so only a signature can catch it."""
    start, length = data_span(blob, unit)
    assert len(new) == length
    out = blob[:start] + new + blob[start + length :]
    return set_prop(out, f"/images/{unit}/hash-1", "value", hashlib.sha256(new).digest())


def without_sign_images(configs: list[ItsConfig], hint: str) -> list[ItsConfig]:
    """The sample configurations with a ``signature-1`` like a typical .its: no sign-images,
    so mkimage signs only kernel and fdt (its default list, tools/image-host.c)."""
    for conf in configs:
        conf.sign_key = None
        conf.extra = f'signature-1 {{ algo = "sha256,rsa2048"; key-name-hint = "{hint}"; }};'
    return configs


_SHARED_KEYS: dict[int, Path] = {}


def shared_rsa_keys(factory: pytest.TempPathFactory, bits: int) -> Path:
    """A key folder (``dev.key``/``dev.crt``) per RSA size, made once per test session and
    shared by the signing modules: openssl can take many seconds to find 4096-bit primes."""
    if bits not in _SHARED_KEYS:
        _SHARED_KEYS[bits] = rsa_keys(factory.mktemp(f"rsa{bits}") / "keys", "dev", bits)
    return _SHARED_KEYS[bits]
