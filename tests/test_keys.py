"""Signing keys: a safe keys folder, and public keys exported the way U-Boot and barebox read them.

Peers: `openssl` makes and reads keys; `mkimage -K` writes the U-Boot key node ours must equal.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import libfdt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from overrided.fit.verify import verify
from overrided.keys import (
    KeyStoreError,
    export_pem,
    export_uboot_dtb,
    load_private_key_file,
    load_public_keys,
    load_signing_key,
    new_key,
    private_key_path,
    public_key_of,
)
from tests.support.fits import (
    ItsConfig,
    board_dtb,
    compile_dts,
    run,
    sample_configs,
    sample_fit,
)
from tests.support.signing import shared_rsa_keys


def node_properties(dtb: Path, path: str) -> list[tuple[str, bytes]]:
    """A node's properties in stored order, as (name, raw value)."""
    fdt = libfdt.FdtRo(dtb.read_bytes())
    offset = fdt.first_property_offset(fdt.path_offset(path))
    props = []
    while offset >= 0:
        p = fdt.get_property_by_offset(offset)
        props.append((p.name, bytes(p)))
        offset = fdt.next_property_offset(offset, (libfdt.NOTFOUND,))
    return props


# -- keys folder ------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["rsa2048", "ecdsa256"])
def test_new_key_is_private_and_usable_by_openssl_and_mkimage_layout(
    tmp_path: Path, algo: str
) -> None:
    keys = tmp_path / "keys"
    path = new_key(keys, "dev", algo)
    assert path == keys / "dev.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.stat().st_mode & 0o777 == 0o700
    # openssl agrees the certificate carries the key's public half (mkimage -K reads the .crt).
    from_key = run("openssl", "pkey", "-in", path, "-pubout")
    from_crt = run("openssl", "x509", "-in", keys / "dev.crt", "-noout", "-pubkey")
    assert from_key == from_crt
    assert (
        load_signing_key(keys, "dev")
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        == from_key.encode()
    )


def test_new_key_never_overwrites(tmp_path: Path) -> None:
    new_key(tmp_path, "dev", "ecdsa256")
    before = (tmp_path / "dev.key").read_bytes()
    with pytest.raises(KeyStoreError, match="exists already; not overwriting"):
        new_key(tmp_path, "dev", "ecdsa256")
    assert (tmp_path / "dev.key").read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_readable_private_key_is_refused_without_showing_it(tmp_path: Path, mode: int) -> None:
    new_key(tmp_path, "dev", "ecdsa256")
    path = tmp_path / "dev.key"
    path.chmod(mode)
    with pytest.raises(KeyStoreError) as err:
        load_signing_key(tmp_path, "dev")
    message = str(err.value)
    assert message == (
        f"{path}: mode {mode:04o} lets group or others read a private key; run chmod 600 {path}"
    )
    secret = path.read_text()
    assert not any(line in message for line in secret.splitlines()[1:-1])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an unencrypted PEM private key"),
        (
            b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
            "not an unencrypted",
        ),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            ),
            "not an unencrypted PEM private key",
        ),
        (
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "FIT signing needs RSA or ECDSA",
        ),
        (
            ec.generate_private_key(ec.SECP521R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "unsupported elliptic curve secp521r1",
        ),
    ],
    ids=["empty", "garbage-pem", "encrypted", "ed25519", "p521"],
)
def test_unusable_key_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyStoreError, match=message):
        load_private_key_file(path)


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden", "-x", "x" * 65, "sp ace"])
def test_bad_key_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyStoreError, match="bad key name"):
        private_key_path(tmp_path, name)


def test_missing_key_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match=r"keys/nope.key: no such key file"):
        load_signing_key(tmp_path / "keys", "nope")


# -- U-Boot key node --------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2048, 4096])
def test_uboot_key_node_identical_to_mkimage(
    tmp_path: Path, bits: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    keys = shared_rsa_keys(tmp_path_factory, bits)
    configs = sample_configs()
    for conf in configs:
        conf.extra = f'signature-1 {{ algo = "sha256,rsa{bits}"; key-name-hint = "dev"; }};'
    theirs = board_dtb(tmp_path / "theirs.dtb", ["v,u-boot"])
    sample_fit(tmp_path / "fit", configs=configs, extra=["-k", keys, "-K", theirs, "-r"])
    public = load_public_keys(keys / "dev.crt")["dev"]
    ours = export_uboot_dtb(
        public, "dev", tmp_path / "ours.dtb", algo=f"sha256,rsa{bits}", required="conf"
    )
    expected = node_properties(theirs, "/signature/key-dev")
    assert [name for name, _ in expected] == [
        "required", "algo", "rsa,r-squared", "rsa,modulus", "rsa,exponent",
        "rsa,n0-inverse", "rsa,num-bits", "key-name-hint",
    ]  # fmt: skip
    assert node_properties(ours, "/signature/key-dev") == expected
    # Adding to an existing DTB (U-Boot's control DT) keeps what was there.
    merged = export_uboot_dtb(public, "dev", tmp_path / "m.dtb", base_dtb=theirs)
    assert node_properties(merged, "/") == node_properties(theirs, "/")


def test_ecdsa_key_points_match_mkimage_and_its_signature_verifies(tmp_path: Path) -> None:
    # mkimage 2023.01 signs ECDSA with <keydir>/<hint>.pem, writes the raw r||s, and puts the
    # key at /signature/<hint> (no "key-" prefix, no hint or algo property; it also needs
    # /signature to exist and fails on a second configuration with the same key).
    keys = tmp_path / "keys"
    keys.mkdir()
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", keys / "ec.pem")
    conf = ItsConfig("conf-b", "kernel", fdt=["fdt-b"], compatible=["v,board-b"])
    conf.extra = 'signature-1 { algo = "sha256,ecdsa256"; key-name-hint = "ec"; };'
    theirs = compile_dts("/dts-v1/;\n/ { signature { }; };\n", tmp_path / "theirs.dtb")
    sample = sample_fit(
        tmp_path / "fit", configs=[conf], default="conf-b", extra=["-k", keys, "-K", theirs]
    )
    mk_keys = load_public_keys(theirs)
    report = verify(sample.fit.read_bytes(), mk_keys)
    assert report.ok, report.lines()
    ours = export_uboot_dtb(mk_keys["ec"], "ec", tmp_path / "ours.dtb")
    mine = dict(node_properties(ours, "/signature/key-ec"))
    for name, value in node_properties(theirs, "/signature/ec"):
        assert mine[name] == value, name
    assert mine["algo"] == b"sha256,ecdsa256\0"


@pytest.mark.parametrize("algo", ["rsa3072", "ecdsa256"])
def test_key_dtb_round_trip(tmp_path: Path, algo: str) -> None:
    new_key(tmp_path, "k", algo)
    public = public_key_of(tmp_path, "k")
    dtb = export_uboot_dtb(public, "k", tmp_path / "k.dtb", required="conf")
    assert load_public_keys(dtb)["k"].public_numbers() == public.public_numbers()
    assert dict(node_properties(dtb, "/signature/key-k"))["required"] == b"conf\0"


# -- PEM for barebox --------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["rsa2048", "ecdsa256"])
def test_pem_export_is_what_openssl_derives(tmp_path: Path, algo: str) -> None:
    new_key(tmp_path, "k", algo)
    out = export_pem(public_key_of(tmp_path, "k"), tmp_path / "board.pem")
    der_ours = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", out, "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    der_openssl = subprocess.run(
        ["openssl", "pkey", "-in", tmp_path / "k.key", "-pubout", "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    assert der_ours == der_openssl
    assert b"PRIVATE" not in out.read_bytes()


# -- CLI --------------------------------------------------------------------------------------


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overrided", "-v", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_keys_new_export_and_sign(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    r = cli("keys", "new", "board", "--algo", "ecdsa256", "--keys", keys)
    assert r.returncode == 0, r.stderr
    r = cli(
        "keys",
        "export",
        "board",
        "--keys",
        keys,
        "--uboot-dtb",
        tmp_path / "k.dtb",
        "--required",
        "conf",
    )
    assert r.returncode == 0, r.stderr
    r = cli("keys", "export", "board", "--keys", keys, "--pem", tmp_path / "board.pem")
    assert r.returncode == 0, r.stderr
    assert "keyring=fit,fit-hint=board:" in r.stdout
    sample = sample_fit(tmp_path / "fit")
    out = tmp_path / "signed.itb"
    r = cli("fit", "sign", sample.fit, "--keys", keys, "--key-name", "board", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "with sha256,ecdsa256" in r.stdout
    for key_file in ("k.dtb", "board.pem"):
        r = cli("fit", "verify", out, "--key", tmp_path / key_file)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.count("signature verifies with key 'board'") == 4
    # Nothing of the private key ever reaches the console, even verbose.
    secret = (keys / "board.key").read_text().splitlines()[1]
    assert secret not in r.stdout + r.stderr


def test_cli_refused_key_is_one_line(tmp_path: Path) -> None:
    new_key(tmp_path, "dev", "ecdsa256")
    (tmp_path / "dev.key").chmod(0o644)
    sample = sample_fit(tmp_path / "fit")
    r = cli(
        "fit", "sign", sample.fit, "--keys", tmp_path, "--key-name", "dev", "-o", tmp_path / "o.itb"
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"overrided: error: {tmp_path}/dev.key: mode 0644 lets group or others read a private key;"
        f" run chmod 600 {tmp_path}/dev.key"
    ]
