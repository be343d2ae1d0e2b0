"""Trimming a FIT to one configuration: checked with dumpimage, dtc and by re-parsing, and a
mkimage-signed configuration still verifies afterwards (docs/formats.md, "Trimming keeps
signatures")."""

from __future__ import annotations

import hashlib
import io
import struct
from pathlib import Path

import libfdt
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from overrided.fit import Fit, FitError, trim, trim_bytes
from tests.support.fits import (
    ItsConfig,
    ItsImage,
    SampleFit,
    board_dtb,
    dumpimage_extract,
    dumpimage_list,
    its_source,
    mkimage_fit,
    run,
    sample_configs,
    sample_fit,
    signing_keys,
)

LAYOUTS = {
    "embedded": {},
    "data-offset": {"external": True},
    "data-position": {"external": True, "position": 0x2000},
}
CONFIGS = ["conf-a", "conf-b", "conf-c", "conf-soc"]


@pytest.fixture(scope="module", params=list(LAYOUTS))
def sample(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SampleFit:
    return sample_fit(tmp_path_factory.mktemp("s"), **LAYOUTS[request.param])


@pytest.mark.parametrize("config", CONFIGS)
def test_trim_keeps_config_and_its_images(sample: SampleFit, config: str, tmp_path: Path) -> None:
    out = tmp_path / "t.itb"
    with Fit.open(sample.fit) as fit:
        size = trim(fit, config, out)
        assert size == out.stat().st_size
        refs = fit.configurations[config].references()
        trimmed = Fit.open(out)
        assert list(trimmed.configurations) == [config]
        assert trimmed.default == config
        assert list(trimmed.images) == [n for n in fit.images if n in refs]
        assert trimmed.description == fit.description
        for index, name in enumerate(trimmed.images):
            image, source = trimmed.images[name], fit.images[name]
            assert image.data_location == "embedded"  # barebox reads nothing else
            assert bytes(image.data()) == bytes(source.data())
            assert image.hashes == source.hashes
            assert (image.type, image.load, image.compression) == (
                source.type,
                source.load,
                source.compression,
            )
            assert dumpimage_extract(out, index, tmp_path / "x") == bytes(source.data())
        got = trimmed.configurations[config]
        want = fit.configurations[config]
        assert (got.kernel, got.fdt, got.ramdisk, got.loadables, got.compatible) == (
            want.kernel,
            want.fdt,
            want.ramdisk,
            want.loadables,
            want.compatible,
        )
    listing = dumpimage_list(out)
    assert f"Default Configuration: '{config}'" in listing
    assert "Configuration 1" not in listing
    assert run("mkimage", "-l", out) == listing  # both tools read it the same way
    # dtc parses the whole structure and refuses malformed blobs.
    run("dtc", "-q", "-I", "dtb", "-O", "dts", "-o", tmp_path / "t.dts", out)


def test_trim_to_bytes_and_streams_agree(sample: SampleFit, tmp_path: Path) -> None:
    with Fit.open(sample.fit) as fit:
        trim(fit, "conf-a", tmp_path / "t.itb")
        stream = io.BytesIO()
        n = trim(fit, "conf-a", stream)
        assert stream.getvalue() == trim_bytes(fit, "conf-a") == (tmp_path / "t.itb").read_bytes()
        assert n == len(stream.getvalue())


def test_trim_a_trimmed_fit_is_a_fixed_point(sample: SampleFit) -> None:
    with Fit.open(sample.fit) as fit:
        once = trim_bytes(fit, "conf-b")
    assert trim_bytes(Fit.from_bytes(once), "conf-b") == once


def test_default_is_inserted_when_missing(tmp_path: Path) -> None:
    sample = sample_fit(tmp_path, default=None)
    with Fit.open(sample.fit) as fit:
        assert fit.default is None
        out = tmp_path / "t.itb"
        trim(fit, "conf-c", out)
    assert Fit.open(out).default == "conf-c"
    assert "Default Configuration: 'conf-c'" in dumpimage_list(out)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_add_hashes(layout: str, tmp_path: Path) -> None:
    sample = sample_fit(tmp_path, hashes=(), **LAYOUTS[layout])
    with Fit.open(sample.fit) as fit:
        plain = Fit.from_bytes(trim_bytes(fit, "conf-a"))
        assert all(not i.hashes for i in plain.images.values())
        out = tmp_path / "h.itb"
        trim(fit, "conf-a", out, add_hashes=True)
        hashed = Fit.open(out)
        for name, image in hashed.images.items():
            value = hashlib.sha256(bytes(fit.images[name].data())).digest()
            assert image.hashes == [("hash-1", "sha256", value)]
    assert dumpimage_list(out).count("Hash algo:    sha256") == 3


def test_add_hashes_leaves_hashed_images_alone(tmp_path: Path) -> None:
    sample = sample_fit(tmp_path, hashes=("sha1",))
    with Fit.open(sample.fit) as fit:
        assert trim_bytes(fit, "conf-b", add_hashes=True) == trim_bytes(fit, "conf-b")


def test_unknown_configuration(sample: SampleFit) -> None:
    with Fit.open(sample.fit) as fit, pytest.raises(FitError) as err:
        trim_bytes(fit, "conf-z")
    assert str(err.value) == f"{sample.fit}: no configuration 'conf-z' (have: {', '.join(CONFIGS)})"


def test_configuration_naming_a_missing_image(tmp_path: Path) -> None:
    k = tmp_path / "k"
    k.write_bytes(b"k" * 32)
    its = its_source(
        [ItsImage("kernel", k, "kernel")],
        [ItsConfig("conf-1", "kernel", fdt=["fdt-9"]), ItsConfig("conf-2", "kernel")],
    )
    fit = Fit.open(mkimage_fit(its, tmp_path / "m.itb"))
    assert fit.missing_references("conf-1") == ["fdt-9"]
    with pytest.raises(FitError, match=r"m.itb: /configurations/conf-1 names image 'fdt-9', "):
        trim_bytes(fit, "conf-1")
    assert list(Fit.from_bytes(trim_bytes(fit, "conf-2")).images) == ["kernel"]


# --- signatures -----------------------------------------------------------------------------
# An independent reading of docs/formats.md, "Signed bytes", written from the spec text for this
# test only.

EXCLUDED = {"data", "data-size", "data-offset", "data-position"}


def hashed_bytes(blob: bytes, config: str, signature: str = "signature-1") -> bytes:
    """The byte stream a configuration signature covers: included tags, then strings prefix."""
    fdt = libfdt.FdtRo(blob)
    conf = fdt.path_offset(f"/configurations/{config}")
    paths = ["/", f"/configurations/{config}"]
    p = fdt.first_property_offset(conf, quiet=(libfdt.NOTFOUND,))
    while p >= 0:
        prop = fdt.get_property_by_offset(p)
        if prop.name not in ("description", "compatible", "default"):
            for unit in prop.as_stringlist():
                paths.append(f"/images/{unit}")
                img = fdt.path_offset(f"/images/{unit}")
                child = fdt.first_subnode(img, quiet=(libfdt.NOTFOUND,))
                while child >= 0:
                    if fdt.get_name(child).startswith("hash"):
                        paths.append(f"/images/{unit}/{fdt.get_name(child)}")
                    child = fdt.next_subnode(child, quiet=(libfdt.NOTFOUND,))
        p = fdt.next_property_offset(p, quiet=(libfdt.NOTFOUND,))
    off_struct, off_strings = struct.unpack_from(">II", blob, 8)
    strings = blob[off_strings:]
    out = bytearray()
    names: list[str] = []
    wants: list[int] = []
    want = 0
    pos = off_struct
    while True:
        (tag,) = struct.unpack_from(">I", blob, pos)
        if tag == 1:  # BEGIN_NODE
            end = blob.index(b"\0", pos + 4)
            names.append(blob[pos + 4 : end].decode())
            nxt = (end + 1 + 3) & ~3
            wants.append(want)
            path = "/" + "/".join(names[1:])
            want = 2 if path in paths else max(want - 1, 0)
            include = want > 0
        elif tag == 2:  # END_NODE
            nxt = pos + 4
            include = want > 0
            want = wants.pop()
            names.pop()
        elif tag == 3:  # PROP
            length, nameoff = struct.unpack_from(">II", blob, pos + 4)
            nxt = (pos + 12 + length + 3) & ~3
            name = strings[nameoff : strings.index(b"\0", nameoff)].decode()
            include = want == 2 and name not in EXCLUDED
        elif tag == 4:  # NOP
            nxt = pos + 4
            include = want == 2
        elif tag == 9:  # END
            out += blob[pos : pos + 4]
            break
        else:
            raise AssertionError(f"bad tag {tag} at {pos:#x}")
        if include:
            out += blob[pos:nxt]
        pos = nxt
    sig = fdt.path_offset(f"/configurations/{config}/{signature}")
    _, strings_size = fdt.getprop(sig, "hashed-strings").as_uint32_list()
    return bytes(out) + strings[:strings_size]


def verify(blob: bytes, config: str, cert: Path) -> None:
    """RSA PKCS#1 v1.5 / sha256 check of the configuration's signature-1 (raises if invalid)."""
    fdt = libfdt.FdtRo(blob)
    sig = fdt.path_offset(f"/configurations/{config}/signature-1")
    value = bytes(fdt.getprop(sig, "value"))
    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(value, hashed_bytes(blob, config), padding.PKCS1v15(), hashes.SHA256())


@pytest.fixture(scope="module", params=["embedded", "data-offset"])
def signed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SampleFit, Path]:
    """The sample with every configuration signed by `mkimage -k keys -K pub.dtb -r`."""
    folder = tmp_path_factory.mktemp("signed")
    keys = signing_keys(folder / "keys", "dev")
    pub = board_dtb(folder / "pub.dtb", ["v,u-boot"])
    sample = sample_fit(
        folder,
        configs=sample_configs(sign_key="dev"),
        extra=["-k", keys, "-K", pub, "-r"],
        external=request.param == "data-offset",
    )
    return sample, keys / "dev.crt"


@pytest.mark.parametrize("config", CONFIGS)
def test_signature_survives_trim(signed: tuple[SampleFit, Path], config: str) -> None:
    sample, cert = signed
    source = sample.fit.read_bytes()
    verify(source, config, cert)  # mkimage's signature, checked independently
    with Fit.open(sample.fit) as fit:
        assert fit.configurations[config].signatures == ["signature-1"]
        trimmed = trim_bytes(fit, config)
    assert hashed_bytes(trimmed, config) == hashed_bytes(source, config)
    verify(trimmed, config, cert)


def test_region_check_notices_a_changed_signed_property(signed: tuple[SampleFit, Path]) -> None:
    """Control: a same-length change of a signed property changes the hashed bytes and the
    signature fails, so the equality above means something."""
    sample, cert = signed
    with Fit.open(sample.fit) as fit:
        trimmed = trim_bytes(fit, "conf-a")
    at = trimmed.rindex(b"v,board-a\0")  # the configuration's compatible, after /images
    tampered = trimmed[:at] + b"v,board-A" + trimmed[at + 9 :]
    assert tampered != trimmed
    assert hashed_bytes(tampered, "conf-a") != hashed_bytes(trimmed, "conf-a")
    with pytest.raises(InvalidSignature):
        verify(tampered, "conf-a", cert)


def test_trim_onto_itself_is_refused(tmp_path: Path) -> None:
    sample = sample_fit(tmp_path)
    before = sample.fit.read_bytes()
    with Fit.open(sample.fit) as fit, pytest.raises(FitError, match="onto itself"):
        trim(fit, "conf-a", sample.fit)
    assert sample.fit.read_bytes() == before


def test_signature_survives_inserting_default(tmp_path: Path) -> None:
    """Inserting /configurations/default (make_fit.py writes none) keeps the signature: the
    properties of /configurations are never hashed, it is only an ancestor (docs/formats.md, "Signed
    bytes")."""
    keys = signing_keys(tmp_path / "keys", "dev")
    pub = board_dtb(tmp_path / "pub.dtb", ["v,u-boot"])
    sample = sample_fit(
        tmp_path, default=None, configs=sample_configs(sign_key="dev"),
        extra=["-k", keys, "-K", pub, "-r"],
    )  # fmt: skip
    with Fit.open(sample.fit) as fit:
        assert fit.default is None
        trimmed = trim_bytes(fit, "conf-c")
    assert Fit.from_bytes(trimmed).default == "conf-c"
    assert hashed_bytes(trimmed, "conf-c") == hashed_bytes(sample.fit.read_bytes(), "conf-c")
    verify(trimmed, "conf-c", keys / "dev.crt")


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("source", ["file", "bytes"])
def test_trim_hashes_what_it_writes(layout: str, source: str, tmp_path: Path) -> None:
    # A 3 MiB kernel: ranges that big are copied in the kernel (copy_file_range) from a
    # mapped file, and must be hashed all the same.
    kernel = tmp_path / "Image"
    kernel.write_bytes(bytes(range(251)) * ((3 << 20) // 251 + 1))
    dtb = board_dtb(tmp_path / "a.dtb", ["v,board-a"])
    its = its_source(
        [ItsImage("kernel", kernel, "kernel", os="linux"), ItsImage("fdt-a", dtb, "flat_dt")],
        [ItsConfig("conf-a", "kernel", fdt=["fdt-a"])],
    )
    made = mkimage_fit(its, tmp_path / "big.itb", **LAYOUTS[layout])
    fit = Fit.open(made) if source == "file" else Fit.from_bytes(made.read_bytes(), made)
    with fit:
        for add_hashes in (False, True):
            out = tmp_path / f"t-{add_hashes}.itb"
            h = hashlib.sha256()
            size = trim(fit, "conf-a", out, add_hashes=add_hashes, sha256=h)
            assert size == out.stat().st_size > 3 << 20
            assert h.hexdigest() == hashlib.sha256(out.read_bytes()).hexdigest()
            stream, h2 = io.BytesIO(), hashlib.sha256()
            trim(fit, "conf-a", stream, add_hashes=add_hashes, sha256=h2)
            assert h2.hexdigest() == h.hexdigest()
