"""U-Boot 2023.01 (Debian ``u-boot-qemu``, ``qemu_arm64``) checks our FIT signatures in QEMU.

One U-Boot instance checks every case: each FIT and key DTB is placed in RAM by QEMU's
``-device loader``, then ``fdt addr <fit> && fdt checksign <keys>`` verifies the default
configuration against the keys marked ``required = "conf"``, and ``iminfo <fit>`` checks every
image hash. Facts this proves about 2023.01 (docs/formats.md, "Node lists are rebuilt, never read"):

* Debian's build (2023.01+dfsg-2+deb12u3) carries the backported fix that rebuilds the node
  list from the configuration's references instead of trusting the stored ``hashed-nodes``
  (its binary has "Failed to build hash node list"): a mkimage signature made with the default
  sign-images (kernel, fdt) over a configuration with a ramdisk is rejected even untouched.
  Plain upstream 2023.01 would accept it, and with it a swapped ramdisk (docs/formats.md, "Node
  lists are rebuilt, never read");
* the configuration signature never covers ``data``: a flipped kernel byte passes
  ``checksign`` and fails ``iminfo``;
* this build has neither ECDSA (no ``UCLASS_ECDSA`` driver) nor RSASSA-PSS;
* a FIT with ``@`` in a node name passes ``checksign`` but ``iminfo`` (and so ``bootm``)
  refuses it as "Bad FIT image format": our signer refuses to sign such a FIT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from overrided.fit.model import Fit
from overrided.fit.sign import sign_all, sign_configuration
from overrided.fit.trim import trim_bytes
from overrided.fit.verify import verify
from overrided.keys import (
    PublicKey,
    SigningKey,
    export_uboot_dtb,
    generate_key,
    load_private_key_file,
)
from tests.support.fits import (
    ItsConfig,
    ItsImage,
    its_source,
    mkimage_fit,
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
from tests.support.uboot import UBOOT_BIN, UBoot

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not UBOOT_BIN.exists(), reason="u-boot-qemu is not installed"),
]

FIT_BASE = 0x44000000
FIT_STEP = 0x00200000
KEYS_BASE = 0x43000000
REJECTED_A = "Verification failed for '<NULL>' hash node in 'conf-a' config node"


@dataclass(frozen=True)
class Case:
    """One FIT for U-Boot, what U-Boot must say, and the key our verifier checks it with."""

    blob: bytes
    keyring: str
    verifier_key: PublicKey
    checksign: int
    iminfo: int
    ours_ok: bool
    checksign_says: str = ""
    iminfo_says: str = ""


@dataclass(frozen=True)
class Outcome:
    """What U-Boot printed and returned for one case."""

    checksign: int
    checksign_out: str
    iminfo: int
    iminfo_out: str


def _with_default(blob: bytes, config: str) -> bytes:
    # /configurations/default is not hashed (docs/formats.md, "Trimming keeps signatures"); `fdt
    # checksign` checks the default.
    return set_prop(blob, "/configurations", "default", config.encode() + b"\0")


def build_cases(
    tmp: Path, factory: pytest.TempPathFactory
) -> tuple[dict[str, Case], dict[str, bytes]]:
    """Every case's FIT, and the key DTBs they are checked against (by keyring name)."""
    keys = shared_rsa_keys(factory, 2048)
    dev = load_private_key_file(keys / "dev.key")
    big: SigningKey = load_private_key_file(shared_rsa_keys(factory, 4096) / "dev.key")
    ec: SigningKey = generate_key("ecdsa256")
    keyrings = {}
    for name, key in (("dev", dev), ("big", big), ("ec", ec)):
        dtb = export_uboot_dtb(key.public_key(), name, tmp / f"{name}.dtb", required="conf")
        keyrings[name] = dtb.read_bytes()

    sample = sample_fit(tmp / "sample")  # default conf-b: kernel, fdt-b, loadables firmware
    ours = sign_all(sample.fit.read_bytes(), dev, key_name="dev")
    ours_a = trim_bytes(Fit.from_bytes(ours), "conf-a")  # default conf-a: ramdisk referenced
    # mkimage with a typical .its signature node: default sign-images, ramdisk left out.
    mk = sample_fit(
        tmp / "mk", configs=without_sign_images(sample_configs(), "dev"), extra=["-k", keys]
    )
    # An old-style FIT with a unit address in a node name, signed by mkimage.
    at_dir = tmp / "at"
    at_dir.mkdir()
    (at_dir / "Image").write_bytes(sample.kernel.read_bytes())
    at_fit = mkimage_fit(
        its_source(
            [
                ItsImage("kernel@1", at_dir / "Image", "kernel", os="linux", load=0x40080000),
                ItsImage("fdt-a", sample.dtbs["fdt-a"], "flat_dt"),
            ],
            [ItsConfig("conf-a", "kernel@1", fdt=["fdt-a"], sign_key="dev")],
            default="conf-a",
        ),
        at_dir / "at.itb",
        extra=["-k", keys],
    ).read_bytes()
    mk_a = _with_default(mk.fit.read_bytes(), "conf-a")
    resigned_a = sign_configuration(mk_a, "conf-a", dev, key_name="dev")

    def case(
        blob: bytes,
        checksign: int,
        iminfo: int,
        ours_ok: bool,
        *,
        keyring: str = "dev",
        key: PublicKey | None = None,
        checksign_says: str = "",
        iminfo_says: str = "",
    ) -> Case:
        key = key or dev.public_key()
        return Case(blob, keyring, key, checksign, iminfo, ours_ok, checksign_says, iminfo_says)

    cases = {
        "ours, whole FIT, loadables covered": case(
            ours, 0, 0, True, checksign_says="sha256,rsa2048:dev+"
        ),
        "ours, trimmed to conf-a (ramdisk)": case(ours_a, 0, 0, True),
        "ours, rsa4096": case(
            sign_all(sample.fit.read_bytes(), big, key_name="big", algo="sha256,rsa4096"),
            0, 0, True, keyring="big", key=big.public_key(), checksign_says="sha256,rsa4096:big+",
        ),
        "ours, ecdsa256: no ECDSA in this U-Boot": case(
            sign_all(sample.fit.read_bytes(), ec, key_name="ec", algo="sha256,ecdsa256"),
            1, 0, True, keyring="ec", key=ec.public_key(),
            checksign_says="Unknown signature algorithm",
        ),
        "ours, rsa2048 PSS: no FIT_RSASSA_PSS in this U-Boot": case(
            sign_all(sample.fit.read_bytes(), dev, key_name="dev", padding="pss"),
            1,
            0,
            True,
            checksign_says="Unknown signature algorithm",
        ),
        "one kernel data byte flipped": case(
            flip_byte(ours_a, "kernel"), 0, 1, False, iminfo_says="Bad hash value"
        ),
        "compatible changed": case(
            set_prop(ours_a, "/configurations/conf-a", "compatible", b"v,board-x\0v,soc\0"),
            1, 0, False, checksign_says="Failed to verify required signature 'key-dev'",
        ),
        "fdt reference swapped": case(
            set_prop(_with_default(ours, "conf-a"), "/configurations/conf-a", "fdt", b"fdt-b\0"),
            1, 0, False, checksign_says=REJECTED_A,
        ),
        "ramdisk replaced (self-consistent), ours": case(
            replace_image(ours_a, "ramdisk", bytes(9000)), 1, 0, False, checksign_says=REJECTED_A
        ),
        "mkimage default sign-images, untouched: rejected, ramdisk not covered": case(
            mk_a, 1, 0, False, checksign_says=REJECTED_A
        ),
        "mkimage default sign-images, ramdisk replaced": case(
            replace_image(mk_a, "ramdisk", bytes(9000)), 1, 0, False, checksign_says=REJECTED_A
        ),
        "mkimage default sign-images, conf-c (kernel and fdt only): complete, accepted": case(
            _with_default(mk.fit.read_bytes(), "conf-c"), 0, 0, True
        ),
        "our re-signature of that mkimage FIT, ramdisk replaced": case(
            replace_image(resigned_a, "ramdisk", bytes(9000)), 1, 0, False
        ),
        "unsigned FIT, key required": case(sample.fit.read_bytes(), 1, 0, False),
        "mkimage-signed, '@' in a node name": case(
            at_fit, 0, 1, False, iminfo_says="Bad FIT image format"
        ),
    }  # fmt: skip
    return cases, keyrings


@pytest.fixture(scope="module")
def uboot_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, Case], dict[str, Outcome], str]:
    tmp = tmp_path_factory.mktemp("uboot-sign")
    cases, keyrings = build_cases(tmp, tmp_path_factory)
    extra: list[str] = []
    key_addr = {}
    for i, (name, dtb) in enumerate(keyrings.items()):
        key_addr[name] = KEYS_BASE + i * 0x10000
        path = tmp / f"keyring-{name}.dtb"
        path.write_bytes(dtb)
        extra += ["-device", f"loader,file={path},addr={key_addr[name]:#x},force-raw=on"]
    fit_addr = {}
    for i, (name, c) in enumerate(cases.items()):
        assert len(c.blob) < FIT_STEP
        fit_addr[name] = FIT_BASE + i * FIT_STEP
        path = tmp / f"case-{i}.itb"
        path.write_bytes(c.blob)
        extra += ["-device", f"loader,file={path},addr={fit_addr[name]:#x},force-raw=on"]
    outcomes = {}
    with UBoot(extra, log_path=tmp / "serial.log") as ub:
        ub.boot_to_prompt()
        for name, c in cases.items():
            addr = fit_addr[name]
            check = ub.run(f"fdt addr {addr:#x} && fdt checksign {key_addr[c.keyring]:#x}")
            info = ub.run(f"iminfo {addr:#x}")
            outcomes[name] = Outcome(check.status, check.output, info.status, info.output)
        log = ub.log
    return cases, outcomes, log


CASE_NAMES = [
    "ours, whole FIT, loadables covered",
    "ours, trimmed to conf-a (ramdisk)",
    "ours, rsa4096",
    "ours, ecdsa256: no ECDSA in this U-Boot",
    "ours, rsa2048 PSS: no FIT_RSASSA_PSS in this U-Boot",
    "one kernel data byte flipped",
    "compatible changed",
    "fdt reference swapped",
    "ramdisk replaced (self-consistent), ours",
    "mkimage default sign-images, untouched: rejected, ramdisk not covered",
    "mkimage default sign-images, ramdisk replaced",
    "mkimage default sign-images, conf-c (kernel and fdt only): complete, accepted",
    "our re-signature of that mkimage FIT, ramdisk replaced",
    "unsigned FIT, key required",
    "mkimage-signed, '@' in a node name",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_uboot_and_our_verifier(
    uboot_results: tuple[dict[str, Case], dict[str, Outcome], str], name: str
) -> None:
    cases, outcomes, _log = uboot_results
    c, got = cases[name], outcomes[name]
    where = f"{name}\n--- checksign ---\n{got.checksign_out}\n--- iminfo ---\n{got.iminfo_out}"
    assert (got.checksign, got.iminfo) == (c.checksign, c.iminfo), where
    assert c.checksign_says in got.checksign_out, where
    assert c.iminfo_says in got.iminfo_out, where
    # Our verifier, on the configuration U-Boot checked (the default).
    default = prop(c.blob, "/configurations", "default").rstrip(b"\0").decode()
    report = verify(c.blob, c.verifier_key, config=default)
    assert report.ok == c.ours_ok, report.lines()


def test_every_case_ran(uboot_results: tuple[dict[str, Case], dict[str, Outcome], str]) -> None:
    cases, outcomes, log = uboot_results
    assert list(cases) == CASE_NAMES
    assert set(outcomes) == set(cases)
    assert "U-Boot 2023.01" in log


# -- a real boot with a required key ----------------------------------------------------------

BOOT_FIT = 0x50000000
OTHER_FIT = 0x54000000
UNSIGNED_FIT = 0x58000000
BOOT_INITRD = 0x48000000


def test_bootm_with_required_key_boots_ours_and_refuses_others(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The board's control DT carries our key with ``required = "conf"``, so ``bootm`` itself
    enforces the signature: Debian's kernel boots from our signed, trimmed FIT into an init,
    while the same FIT signed by another key, or not signed, is refused."""
    from overrided.fit.build import build_fit
    from tests.e2e import parts
    from tests.support import debian
    from tests.support.uboot import dump_dtb

    kernel = debian.kernel()
    initrd = parts.init_cpio(tmp_path / "init.cpio")
    virt = dump_dtb(tmp_path / "virt.dtb")  # the board's DT, also the FIT's fdt
    build_fit(kernel.image, [virt], tmp_path / "build.itb")
    trimmed = trim_bytes(Fit.open(tmp_path / "build.itb"), "conf-1", add_hashes=True)
    dev = load_private_key_file(shared_rsa_keys(tmp_path_factory, 2048) / "dev.key")
    fits = {
        BOOT_FIT: sign_configuration(trimmed, "conf-1", dev, key_name="dev"),
        OTHER_FIT: sign_configuration(trimmed, "conf-1", generate_key("rsa2048"), key_name="dev"),
        UNSIGNED_FIT: trimmed,
    }
    extra = ["-device", f"loader,file={initrd},addr={BOOT_INITRD:#x},force-raw=on"]
    for addr, blob in fits.items():
        path = tmp_path / f"fit-{addr:x}.itb"
        path.write_bytes(blob)
        extra += ["-device", f"loader,file={path},addr={addr:#x},force-raw=on"]
    # U-Boot's control DT is the one QEMU hands over: ours, with the key added.
    control = export_uboot_dtb(
        dev.public_key(), "dev", tmp_path / "control.dtb", required="conf", base_dtb=virt
    )
    extra += ["-dtb", str(control)]
    rd = f"{BOOT_INITRD:#x}:{initrd.stat().st_size:#x}"
    with UBoot(extra, log_path=tmp_path / "serial.log") as ub:
        ub.boot_to_prompt()
        ub.check("setenv bootargs console=ttyAMA0")
        for addr in (OTHER_FIT, UNSIGNED_FIT):
            res = ub.run(f"bootm {addr:#x} {rd}", timeout=120)
            assert res.status == 1, ub.log
            assert "Failed to verify required signature 'key-dev'" in res.output, res.output
            assert "Starting kernel" not in res.output
        ub.send_line(f"bootm {BOOT_FIT:#x} {rd}")
        ub.expect(r"Verifying Hash Integrity \.\.\. sha256,rsa2048:dev\+ OK", 120)
        ub.expect("Starting kernel", 120)
        m = ub.expect(rf"{parts.MARKER} init release=(\S+) ", 240)  # space: the whole word
        assert m.group(1) == kernel.release
