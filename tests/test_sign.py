"""Configuration signatures: what is covered, byte-identity with mkimage, and what verify reports.

Peers: FITs assembled by `mkimage -f`, keys made by `openssl`, signatures by `mkimage -F -k`.
The rules are those of docs/formats.md, "Signatures"; U-Boot itself checks our output in
test_sign_uboot.py. Shared helpers: ``tests/support/signing.py``.
"""

from __future__ import annotations

import argparse
import struct
from collections.abc import Callable
from pathlib import Path

import libfdt
import pytest

from overrided.commands.fit_sign import register_fit
from overrided.fit.model import Fit, FitError
from overrided.fit.regions import (
    FDT_PROP,
    header,
    signed_bytes,
    signed_node_paths,
    struct_regions,
    tags,
)
from overrided.fit.sign import bootloader_warnings, sign_all, sign_configuration
from overrided.fit.trim import trim_bytes
from overrided.fit.verify import verify
from overrided.keys import SigningKey, generate_key, load_private_key_file
from tests.support.fits import (
    SampleFit,
    compile_dts,
    run,
    sample_configs,
    sample_fit,
)
from tests.support.signing import (
    flip_byte,
    prop,
    replace_image,
    set_prop,
    shared_rsa_keys,
    without_sign_images,
)

EPOCH = "1700000000"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_rsa_keys(tmp_path_factory, 2048)


@pytest.fixture(scope="module")
def key(keys: Path) -> SigningKey:
    (keys / "dev.key").chmod(0o600)
    return load_private_key_file(keys / "dev.key")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleFit:
    """The sample FIT with unsigned ``signature-1`` templates (algo, hint, full sign-images)."""
    return sample_fit(tmp_path_factory.mktemp("sample"), configs=sample_configs(sign_key="dev"))


@pytest.fixture(scope="module")
def signed(sample: SampleFit, key: SigningKey) -> bytes:
    return sign_all(sample.fit.read_bytes(), key, key_name="dev", timestamp=int(EPOCH))


# -- what a signature covers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "images"),
    [
        ("conf-a", ["kernel", "fdt-a", "ramdisk"]),  # ramdisk covered: the mkimage-default trap
        ("conf-b", ["kernel", "fdt-b", "firmware"]),  # loadables covered too
        ("conf-c", ["kernel", "fdt-c"]),
        ("conf-soc", ["kernel", "fdt-a"]),
    ],
)
def test_node_list_is_rebuilt_from_every_reference(
    sample: SampleFit, config: str, images: list[str]
) -> None:
    fdt = libfdt.FdtRo(sample.fit.read_bytes())
    expected = ["/", f"/configurations/{config}"]
    for unit in images:
        expected += [f"/images/{unit}", f"/images/{unit}/hash-1"]
    assert signed_node_paths(fdt, config) == expected


def test_region_walk_hashes_metadata_not_data_nor_signature_properties(tmp_path: Path) -> None:
    dtb = compile_dts(
        """/dts-v1/;
/ { description = "root-desc";
    images { k { data = [de ad be ef]; data-size = <4>; type = "kernel"; hash-1 { value = [aa]; };
                 signature-1 { comment = "image-sig"; }; };
             other { type = "odd-one"; hash-1 { value = [bb]; }; }; };
    configurations { c { kernel = "k"; compatible = "v,x";
                         signature-1 { value = [cc]; comment = "conf-sig"; }; }; }; };
""",
        tmp_path / "t.dtb",
    )
    blob = dtb.read_bytes()
    fdt = libfdt.FdtRo(blob)
    data = signed_bytes(blob, signed_node_paths(fdt, "c"), 0)
    for included in (b"root-desc", b"kernel", b"v,x", b"\xaa", b"signature-1\0"):
        assert included in data
    for excluded in (b"\xde\xad\xbe\xef", b"odd-one", b"\xbb", b"conf-sig", b"image-sig", b"\xcc"):
        assert excluded not in data
    # Regions are merged: fewer ranges than included tags, ending with FDT_END.
    regions = struct_regions(blob, signed_node_paths(fdt, "c"))
    off, size = regions[-1]
    assert blob[off + size - 4 : off + size] == b"\0\0\0\x09"


# -- byte-identity with mkimage ---------------------------------------------------------------


@pytest.mark.parametrize("bits", [2048, 4096])
def test_value_hashed_nodes_and_strings_identical_to_mkimage(
    tmp_path: Path,
    sample: SampleFit,
    bits: int,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    keys = shared_rsa_keys(tmp_path_factory, bits)
    key = load_private_key_file(keys / "dev.key")
    blob = sample.fit.read_bytes()
    if bits != 2048:
        for conf in ("conf-a", "conf-b", "conf-c", "conf-soc"):
            blob = set_prop(
                blob, f"/configurations/{conf}/signature-1", "algo", b"sha256,rsa4096\0"
            )
    theirs_path = tmp_path / "theirs.itb"
    theirs_path.write_bytes(blob)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    run("mkimage", "-F", "-k", keys, "-r", theirs_path)
    theirs = theirs_path.read_bytes()
    ours = sign_all(blob, key, key_name="dev", algo=f"sha256,rsa{bits}")
    for conf in ("conf-a", "conf-b", "conf-c", "conf-soc"):
        sig = f"/configurations/{conf}/signature-1"
        for name in ("value", "hashed-nodes", "hashed-strings", "timestamp", "algo"):
            assert prop(ours, sig, name) == prop(theirs, sig, name), (conf, name)
        assert len(prop(ours, sig, "value")) == bits // 8
    assert prop(ours, "/configurations/conf-a/signature-1", "signer-name") == b"overrided\0"


def test_mkimage_resigning_our_output_covers_the_same_nodes(
    tmp_path: Path, signed: bytes, keys: Path, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our sign-images names every reference, so mkimage (which follows sign-images) hashes the
    # same nodes. Its value differs only because it hashes the strings block as it stands now,
    # which already holds "value", "signer-name"... (docs/formats.md, "Signed bytes", step 3).
    path = tmp_path / "resigned.itb"
    path.write_bytes(signed)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    run("mkimage", "-F", "-k", keys, path)
    theirs = path.read_bytes()
    strings_size = struct.unpack_from(">I", theirs, 32)[0]
    for conf in ("conf-a", "conf-b", "conf-c", "conf-soc"):
        sig = f"/configurations/{conf}/signature-1"
        for name in ("hashed-nodes", "sign-images"):
            assert prop(theirs, sig, name) == prop(signed, sig, name), (conf, name)
        assert prop(theirs, sig, "hashed-strings") == struct.pack(">II", 0, strings_size)
        assert prop(theirs, sig, "signer-name") == b"mkimage\0"
    assert verify(theirs, key.public_key()).ok


def test_mkimage_signed_fit_verifies(tmp_path: Path, keys: Path, key: SigningKey) -> None:
    sample = sample_fit(tmp_path, configs=sample_configs(sign_key="dev"), extra=["-k", keys, "-r"])
    report = verify(sample.fit.read_bytes(), key.public_key())
    assert report.ok, report.lines()
    assert sum(f.node.endswith("signature-1") for f in report.findings) == 4


# -- verification: what fails, exactly --------------------------------------------------------

Tamper = Callable[[bytes, SampleFit], bytes]

TAMPERS: list[tuple[str, Tamper, str, list[str]]] = [
    # (case, tamper, config checked, failing nodes)
    ("untouched", lambda b, s: b, "conf-a", []),
    (
        "one kernel data byte: signature holds, the hash catches it (formats.md, 'Signed bytes')",
        lambda b, s: flip_byte(b, "kernel"),
        "conf-a",
        ["/images/kernel/hash-1"],
    ),
    (
        "compatible changed, same length",
        lambda b, s: set_prop(b, "/configurations/conf-a", "compatible", b"v,board-x\0v,soc\0"),
        "conf-a",
        ["/configurations/conf-a/signature-1"],
    ),
    (
        "fdt reference swapped to another board's DTB",
        lambda b, s: set_prop(b, "/configurations/conf-a", "fdt", b"fdt-b\0"),
        "conf-a",
        ["/configurations/conf-a/signature-1"],
    ),
    (
        "root description changed",
        lambda b, s: set_prop(b, "/", "description", b"test FIX\0"),
        "conf-a",
        ["/configurations/conf-a/signature-1"],
    ),
    (
        "ramdisk replaced with a self-consistent one (data and hash-1)",
        lambda b, s: replace_image(b, "ramdisk", bytes(9000)),
        "conf-a",
        ["/configurations/conf-a/signature-1"],
    ),
    (
        "loadable replaced with a self-consistent one",
        lambda b, s: replace_image(b, "firmware", bytes(1234)),
        "conf-b",
        ["/configurations/conf-b/signature-1"],
    ),
    (
        "byte flipped in an image conf-a does not reference: not covered, rightly",
        lambda b, s: flip_byte(b, "fdt-c", 60),
        "conf-a",
        [],
    ),
    (
        "other configuration's signature value damaged",
        lambda b, s: set_prop(
            b,
            "/configurations/conf-b/signature-1",
            "value",
            bytes(256),
        ),
        "conf-a",
        [],
    ),
]


@pytest.mark.parametrize(
    ("case", "tamper", "config", "failing"), TAMPERS, ids=[t[0] for t in TAMPERS]
)
def test_verify_reports_exactly_what_fails(
    sample: SampleFit,
    signed: bytes,
    key: SigningKey,
    case: str,
    tamper: Tamper,
    config: str,
    failing: list[str],
) -> None:
    report = verify(tamper(signed, sample), key.public_key(), config=config)
    assert sorted(f.node for f in report.failures()) == sorted(failing), report.lines()
    assert report.ok == (not failing)
    # Both steps always run: a failed signature does not hide the hash results.
    assert any(f.node.endswith("/hash-1") for f in report.findings)


def test_default_sign_images_leaves_ramdisk_uncovered_and_verify_says_so(
    tmp_path: Path, keys: Path, key: SigningKey
) -> None:
    # mkimage's default list signs kernel and fdt only; barebox and current U-Boot rebuild the
    # list from every reference and reject this (docs/formats.md, "Node lists are rebuilt, never
    # read").
    mk = sample_fit(
        tmp_path, configs=without_sign_images(sample_configs(), "dev"), extra=["-k", keys]
    )
    blob = mk.fit.read_bytes()
    assert prop(blob, "/configurations/conf-a/signature-1", "hashed-nodes").count(b"ramdisk") == 0
    report = verify(blob, key.public_key(), config="conf-a")
    [failure] = report.failures()
    assert failure.node == "/configurations/conf-a/signature-1"
    assert "did not cover /images/ramdisk, /images/ramdisk/hash-1" in failure.message
    # conf-c references only kernel and fdt, so mkimage's default list was complete there.
    assert verify(blob, key.public_key(), config="conf-c").ok
    # Our signer over the same FIT covers the ramdisk.
    fixed = sign_configuration(blob, "conf-a", key, key_name="dev")
    assert verify(fixed, key.public_key(), config="conf-a").ok
    assert prop(fixed, "/configurations/conf-a/signature-1", "sign-images") == (
        b"kernel\0fdt\0ramdisk\0"
    )


def test_wrong_key_fails_and_names_the_keys_tried(signed: bytes) -> None:
    other = generate_key("rsa2048")
    report = verify(signed, {"other": other.public_key()}, config="conf-c")
    [failure] = report.failures()
    assert "does not verify (tried other)" in failure.message


def test_unsigned_configuration_fails(sample: SampleFit, key: SigningKey) -> None:
    report = verify(sample.fit.read_bytes(), key.public_key(), config="conf-c")
    assert [f.message for f in report.failures()] == ["no value: the signature was never written"]


# -- algorithms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_algo", "algo", "padding", "value_len"),
    [
        ("rsa2048", "sha256,rsa2048", "pkcs-1.5", 256),
        ("rsa3072", "sha256,rsa3072", "pkcs-1.5", 384),
        ("rsa2048", "sha1,rsa2048", "pkcs-1.5", 256),
        ("rsa2048", "sha256,rsa2048", "pss", 256),
        ("ecdsa256", "sha256,ecdsa256", "pkcs-1.5", 64),
    ],
)
def test_sign_verify_round_trip(
    sample: SampleFit, key_algo: str, algo: str, padding: str, value_len: int
) -> None:
    key = generate_key(key_algo)
    blob = sign_all(sample.fit.read_bytes(), key, key_name="k", algo=algo, padding=padding)
    assert verify(blob, key.public_key()).ok
    sig = "/configurations/conf-a/signature-1"
    assert len(prop(blob, sig, "value")) == value_len
    assert prop(blob, sig, "algo") == algo.encode() + b"\0"
    if padding == "pss":
        assert prop(blob, sig, "padding") == b"pss\0"
    # A different key of the same kind must not verify.
    assert not verify(blob, generate_key(key_algo).public_key()).ok


@pytest.mark.parametrize(
    ("key_algo", "config", "algo", "padding", "message"),
    [
        (
            "rsa2048",
            "conf-a",
            "sha256,rsa4096",
            "pkcs-1.5",
            "needs an rsa4096 key, but the key is rsa2048",
        ),
        (
            "ecdsa256",
            "conf-a",
            "sha256,rsa2048",
            "pkcs-1.5",
            "needs an rsa2048 key, but the key is ecdsa256",
        ),
        (
            "rsa2048",
            "conf-a",
            "md5,rsa2048",
            "pkcs-1.5",
            "unsupported signature algo 'md5,rsa2048'",
        ),
        ("rsa2048", "conf-a", "sha256", "pkcs-1.5", "unsupported signature algo 'sha256'"),
        ("ecdsa256", "conf-a", "sha256,ecdsa256", "pss", "padding pss applies to RSA only"),
        (
            "rsa2048",
            "conf-zz",
            "sha256,rsa2048",
            "pkcs-1.5",
            "no configuration /configurations/conf-zz",
        ),
        ("rsa2048", "a/b", "sha256,rsa2048", "pkcs-1.5", "bad configuration name"),
    ],
)
def test_sign_refuses_with_a_clear_error(
    sample: SampleFit, key_algo: str, config: str, algo: str, padding: str, message: str
) -> None:
    with pytest.raises(FitError, match=message.replace("(", r"\(")):
        sign_configuration(
            sample.fit.read_bytes(),
            config,
            generate_key(key_algo),
            key_name="k",
            algo=algo,
            padding=padding,
        )


def test_missing_image_reference_is_named(tmp_path: Path, key: SigningKey) -> None:
    # mkimage refuses such an .its, so build a good FIT and then break the reference.
    blob = sample_fit(tmp_path, configs=sample_configs()).fit.read_bytes()
    blob = set_prop(blob, "/configurations/conf-a", "ramdisk", b"ramdizk\0")
    with pytest.raises(
        FitError, match=r"conf-a: ramdisk = 'ramdizk': no such image /images/ramdizk"
    ):
        sign_configuration(blob, "conf-a", key, key_name="dev")


SIG_A = "/configurations/conf-a/signature-1"


def _bad_token(blob: bytes) -> bytes:
    # Overwrite the first property tag after the root node's BEGIN_NODE with an unknown token.
    head = header(blob)
    first = next(t for t in tags(blob, head) if t.kind == FDT_PROP)
    return blob[: first.start] + b"\0\0\0\x07" + blob[first.start + 4 :]


MALFORMED: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("truncated file", lambda b: b[: len(b) // 2], "truncated FIT: header totalsize"),
    ("unknown structure token", _bad_token, "unknown structure token 0x7 at offset"),
]


@pytest.mark.parametrize(("case", "damage", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_fit_is_an_error_naming_where(
    signed: bytes, key: SigningKey, case: str, damage: Callable[[bytes], bytes], message: str
) -> None:
    with pytest.raises(FitError, match=message):
        verify(damage(signed), key.public_key(), config="conf-a")
    with pytest.raises(FitError, match=message):
        sign_configuration(damage(signed), "conf-a", key, key_name="dev")


BAD_SIGNATURES: list[tuple[str, Callable[[bytes], bytes], str]] = [
    (
        "hashed-strings beyond the strings block",
        lambda b: set_prop(b, SIG_A, "hashed-strings", struct.pack(">II", 0, 0x7FFFFFFF)),
        "exceeds the strings block",
    ),
    (
        "hashed-strings legacy cell not 0",
        lambda b: set_prop(
            b, SIG_A, "hashed-strings", b"\0\0\0\x01" + prop(b, SIG_A, "hashed-strings")[4:]
        ),
        "first cell is 0x1, must be 0",
    ),
    (
        "unknown algo",
        lambda b: set_prop(b, SIG_A, "algo", b"sha256,dsa2048\0"),
        "unsupported signature algo 'sha256,dsa2048'",
    ),
    (
        "hashed-nodes cut short by the signer",
        lambda b: set_prop(
            b,
            SIG_A,
            "hashed-nodes",
            prop(b, SIG_A, "hashed-nodes").replace(b"/images/", b"/IMAGES/"),
        ),
        "",  # hashed-nodes is not trusted: the rebuilt list still verifies
    ),
]


@pytest.mark.parametrize(
    ("case", "damage", "message"), BAD_SIGNATURES, ids=[m[0] for m in BAD_SIGNATURES]
)
def test_bad_signature_nodes_are_reported_not_raised(
    signed: bytes, key: SigningKey, case: str, damage: Callable[[bytes], bytes], message: str
) -> None:
    report = verify(damage(signed), key.public_key(), config="conf-a")
    if not message:
        assert report.ok, report.lines()
        return
    [failure] = report.failures()
    assert failure.node == SIG_A
    assert message in failure.message


def test_key_of_the_wrong_type_is_named(signed: bytes) -> None:
    report = verify(signed, {"ec": generate_key("ecdsa256").public_key()}, config="conf-a")
    assert "tried ec (ecdsa256)" in report.failures()[0].message


def test_unit_address_names_are_refused(tmp_path: Path, key: SigningKey) -> None:
    # Debian's U-Boot 2023.01 answers "Bad FIT image format!" to such a FIT (FIT_FULL_CHECK).
    dtb = compile_dts(
        """/dts-v1/;
/ { description = "old style"; #address-cells = <1>;
    images { kernel@1 { data = [00 01]; type = "kernel"; arch = "arm64"; os = "linux";
                        compression = "none"; hash@1 { algo = "sha256"; value = [00]; }; }; };
    configurations { default = "conf@1"; conf@1 { kernel = "kernel@1"; }; }; };
""",
        tmp_path / "at.dtb",
    )
    blob = dtb.read_bytes()
    with pytest.raises(FitError, match=r"node /images/kernel@1: '@' in FIT node names"):
        sign_all(blob, key, key_name="dev")
    report = verify(blob, key.public_key())
    assert report.failures()[0].node == "/images/kernel@1"
    assert "U-Boot refuses the FIT" in report.failures()[0].message


def test_not_a_fit_is_rejected(key: SigningKey) -> None:
    with pytest.raises(FitError, match="not a FIT: magic 0x7f454c46"):
        sign_all(b"\x7fELF" + bytes(100), key, key_name="dev")
    with pytest.raises(FitError, match="not a FIT"):
        verify(b"\xd0\x0d\xfe\xed" + bytes(3), key.public_key())


@pytest.mark.parametrize(
    ("algo", "padding", "expected"),
    [
        ("sha256,rsa2048", "pkcs-1.5", []),
        ("sha1,rsa4096", "pkcs-1.5", []),
        ("sha512,rsa2048", "pkcs-1.5", ["barebox refuses sha512"]),
        ("sha256,rsa2048", "pss", ["barebox verifies PKCS#1 v1.5 only"]),
        ("sha256,ecdsa256", "pkcs-1.5", ["U-Boot verifies ECDSA only with an ECDSA driver"]),
        ("sha384,ecdsa384", "pkcs-1.5", ["sha384", "P-256 only", "ECDSA driver"]),
    ],
)
def test_bootloader_warnings(algo: str, padding: str, expected: list[str]) -> None:
    warnings = bootloader_warnings(algo, padding)
    assert len(warnings) == len(expected)
    for warning, fragment in zip(warnings, expected, strict=True):
        assert fragment in warning


# -- hashes, external data, trimming ----------------------------------------------------------


def test_images_without_hash_get_sha256_before_signing(tmp_path: Path, key: SigningKey) -> None:
    # Like Linux make_fit.py output: no hash node anywhere.
    sample = sample_fit(tmp_path, hashes=())
    blob = sign_configuration(sample.fit.read_bytes(), "conf-a", key, key_name="dev")
    assert prop(blob, "/images/ramdisk/hash-1", "algo") == b"sha256\0"
    assert verify(blob, key.public_key(), config="conf-a").ok
    listing = run("dumpimage", "-l", _write(tmp_path / "h.itb", blob))
    assert "Sign algo:    sha256,rsa2048:dev" in listing


@pytest.mark.parametrize("layout", [{"external": True}, {"external": True, "position": 0x2000}])
def test_external_data_signs_and_verifies(
    tmp_path: Path, key: SigningKey, layout: dict[str, object]
) -> None:
    sample = sample_fit(tmp_path, hashes=(), **layout)
    blob = sign_all(sample.fit.read_bytes(), key, key_name="dev")
    report = verify(blob, key.public_key())
    assert report.ok, report.lines()
    # dumpimage reads the moved external data back unchanged.
    path = _write(tmp_path / "x.itb", blob)
    run("dumpimage", "-T", "flat_dt", "-p", "0", "-o", tmp_path / "k.out", path)
    assert (tmp_path / "k.out").read_bytes() == sample.kernel.read_bytes()


def test_trimmed_signed_fit_keeps_its_signature_and_can_be_resigned(
    signed: bytes, key: SigningKey
) -> None:
    trimmed = trim_bytes(Fit.from_bytes(signed), "conf-a")
    assert len(trimmed) < len(signed)
    report = verify(trimmed, key.public_key())
    assert report.ok, report.lines()
    assert [f.config for f in report.findings if f.node.endswith("signature-1")] == ["conf-a"]
    other = generate_key("ecdsa256")
    resigned = sign_all(trimmed, other, key_name="ec", algo="sha256,ecdsa256")
    assert verify(resigned, other.public_key()).ok
    assert not verify(resigned, key.public_key()).ok


def test_trim_after_adding_hashes_then_sign(tmp_path: Path, key: SigningKey) -> None:
    sample = sample_fit(tmp_path, hashes=())
    trimmed = trim_bytes(Fit.open(sample.fit), "conf-b", add_hashes=True)
    blob = sign_all(trimmed, key, key_name="dev")
    assert verify(blob, key.public_key()).ok


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- CLI --------------------------------------------------------------------------------------


def _fit_cli(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser(prog="overrided fit")
    register_fit(parser.add_subparsers(dest="fit_command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    status: int = args.func(args)
    return status


def test_cli_sign_then_verify(
    tmp_path: Path, sample: SampleFit, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.itb"
    assert (
        _fit_cli(
            "sign", sample.fit, "--keys", keys, "--key-name", "dev", "--config", "conf-a", "-o", out
        )
        == 0
    )
    assert (out.stat().st_mode & 0o777) == 0o644
    assert _fit_cli("verify", out, "--key", keys / "dev.crt", "--config", "conf-a") == 0
    text = capsys.readouterr().out
    assert "OK   /configurations/conf-a/signature-1: sha256,rsa2048 signature verifies" in text
    assert _fit_cli("verify", out, "--key", keys / "dev.crt") == 1  # conf-b… are unsigned
    tampered = _write(tmp_path / "t.itb", flip_byte(out.read_bytes(), "kernel"))
    assert _fit_cli("verify", tampered, "--key", keys / "dev.crt", "--config", "conf-a") == 1
    assert "FAIL /images/kernel/hash-1: sha256 mismatch" in capsys.readouterr().out


def test_cli_sign_refuses_a_readable_key(tmp_path: Path, sample: SampleFit, keys: Path) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes((keys / "dev.key").read_bytes())
    loose.chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        _fit_cli("sign", sample.fit, "--key", loose, "--key-name", "dev", "-o", tmp_path / "o.itb")
    assert not (tmp_path / "o.itb").exists()
