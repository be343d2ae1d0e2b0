"""Boot the real Debian arm64 kernel in QEMU with initrds we concatenate, and watch it use them.

Each initrd is our concatenation of an init archive (Debian's static arm64 busybox and an
``/init`` script, archived by us) and a modules archive built by us from the kernel package's
``lib/modules``. The init prints a marker, lists ``/lib/modules/$(uname -r)``, loads a real module
with ``insmod`` and powers off. One case boots the full modules tree; the others a subset, which
keeps them quick. The last cases show that a plain ``cat`` of an odd-length gzip part and a raw
part, or of an lz4 part and a raw part, breaks the kernel's unpacking where ``cpio.inspect`` says.
"""

from __future__ import annotations

import gzip
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from overrided import cpio
from overrided.kernel import release_of_image
from tests.support import debian

pytestmark = pytest.mark.e2e

# crc7 has no dependencies (its .modinfo says "depends=") and needs no hardware, and Debian's
# config builds it as a module (CONFIG_CRC7=m): both are checked in the module fixture.
MODULE = "kernel/lib/crc7.ko"
MARKER = "OVERRIDED-INIT-REACHED"
BOOT_TIMEOUT = 180

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
echo "{MARKER} release=$(uname -r)"
echo "modules-listing-begin"
ls /lib/modules/$(uname -r)
echo "modules-listing-end"
echo "modules-count=$(find /lib/modules/$(uname -r) -name '*.ko' | wc -l)"
if insmod /lib/modules/$(uname -r)/{MODULE}; then echo "insmod-status=ok"; fi
grep '^crc7 ' /proc/modules
poweroff -f
"""


@pytest.fixture(scope="session")
def kernel() -> debian.Kernel:
    return debian.kernel()


@pytest.fixture(scope="session")
def parts(tmp_path_factory: pytest.TempPathFactory, kernel: debian.Kernel) -> dict[str, Path]:
    """The archives the boots combine, built once: init (raw, gzip), modules subset and full."""
    ko = kernel.modules / MODULE
    assert re.search(rb"\0depends=\0", ko.read_bytes()), "crc7 must have no dependencies"
    config = (kernel.image.parent / f"config-{kernel.release}").read_text()
    assert "\nCONFIG_CRC7=m\n" in config
    work = tmp_path_factory.mktemp("initrd-boot")

    root = work / "init-root"
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "dev"):
        (root / d).mkdir(parents=True)
    shutil.copy2(debian.busybox(), root / "bin" / "busybox")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    init_raw, init_gz = work / "init.cpio", work / "init.cpio.gz"
    cpio.init_cpio_from_dir(root, init_raw)
    cpio.init_cpio_from_dir(root, init_gz, compress="gzip")

    subset = work / "subset" / "lib" / "modules" / kernel.release
    (subset / "kernel" / "lib").mkdir(parents=True)
    for f in kernel.modules.glob("modules.*"):
        shutil.copy2(f, subset)
    shutil.copy2(ko, subset / MODULE)
    built = {
        "init": init_raw,
        "init.gz": init_gz,
        "subset": work / "modules-subset.cpio",
        "subset.zst": work / "modules-subset.cpio.zst",
        "subset.gz": work / "modules-subset.cpio.gz",
        "subset.lz4": work / "modules-subset.cpio.lz4",
        "full": work / "modules-full.cpio",
    }
    for name, compress in (
        ("subset", None),
        ("subset.zst", "zstd"),
        ("subset.gz", "gzip"),
        ("subset.lz4", "lz4"),
    ):
        assert cpio.modules_cpio(subset.parent.parent.parent, built[name], compress=compress) == (
            kernel.release
        )
    assert cpio.modules_cpio(kernel.modules, built["full"]) == kernel.release

    # A gzip part whose length is 2 mod 4: what the kernel chokes on without our padding.
    # The gzip header's file name field adds 0 (no name) or len + 1 bytes: among these lengths
    # every remainder mod 4 occurs, whatever the compressed size.
    data = built["subset"].read_bytes()
    for name_len in range(8):
        buf = io.BytesIO()
        with gzip.GzipFile(filename="m" * name_len, mode="wb", fileobj=buf, mtime=0) as g:
            g.write(data)
        if len(buf.getvalue()) % 4 == 2:
            break
    built["subset.odd.gz"] = work / "modules-subset-odd.cpio.gz"
    built["subset.odd.gz"].write_bytes(buf.getvalue())
    assert built["subset.odd.gz"].stat().st_size % 4 == 2
    return built


def boot(kernel: debian.Kernel, initrd: Path) -> str:
    """Boot QEMU's virt board with ``initrd``; return the console log (fails with it on timeout)."""
    cmd = [
        "qemu-system-aarch64",
        "-M",
        "virt",
        "-cpu",
        "cortex-a57",
        "-m",
        "1024",
        "-nographic",
        "-no-reboot",
        "-kernel",
        str(kernel.image),
        "-initrd",
        str(initrd),
        "-append",
        "console=ttyAMA0 panic=-1",
    ]
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=BOOT_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        log = (err.stdout or b"").decode(errors="replace")
        pytest.fail(f"QEMU did not power off within {BOOT_TIMEOUT}s; console:\n{log}")
    return (r.stdout + r.stderr).decode(errors="replace").replace("\r\n", "\n")


def assert_booted_with_modules(log: str, release: str, min_modules: int) -> None:
    assert f"{MARKER} release={release}" in log, log
    listing = log.split("modules-listing-begin", 1)[1].split("modules-listing-end", 1)[0]
    for name in ("kernel", "modules.order", "modules.builtin"):
        assert name in listing, log
    count = re.search(r"modules-count=(\d+)", log)
    assert count is not None and int(count.group(1)) >= min_modules, log
    assert "insmod-status=ok" in log, log
    assert re.search(r"^crc7 \d+ 0 - Live", log, re.M), log
    assert "Initramfs unpacking failed" not in log, log


CASES: dict[str, tuple[tuple[str, ...], int]] = {
    # name: (parts in order, minimum number of .ko files the init must see)
    "raw+gzip": (("init", "subset.gz"), 1),
    "gzip+raw": (("subset.odd.gz", "init"), 1),  # needs our 2 bytes of padding
    "zstd+raw": (("subset.zst", "init"), 1),
    "lz4+raw": (("subset.lz4", "init"), 1),  # needs a zero word after the lz4 stream
    "full-raw+gzip": (("full", "init.gz"), 3000),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_unpacks_our_concatenation_and_loads_a_module(
    case: str,
    kernel: debian.Kernel,
    parts: dict[str, Path],
    tmp_path: Path,
) -> None:
    names, min_modules = CASES[case]
    initrd = tmp_path / "initrd"
    placed = cpio.concat([parts[n] for n in names], initrd)
    assert all(p.offset % 4 == 0 for p in placed)
    release = release_of_image(kernel.image)
    assert release == kernel.release
    assert cpio.initrd_warnings([initrd], release) == []
    log = boot(kernel, initrd)
    assert_booted_with_modules(log, kernel.release, min_modules)


@pytest.mark.parametrize(
    ("first", "kernel_says", "inspect_says"),
    [
        # docs/formats.md, "How Linux reads the sequence": a raw archive right after an odd-length
        # gzip part is not 4-byte aligned.
        (
            "subset.odd.gz",
            "Initramfs unpacking failed: invalid magic at start of compressed archive",
            "raw archive starts at an offset not a multiple of 4",
        ),
        # lz4 legacy has no end mark: unlz4 reads the next part as one more chunk, even when
        # it is 4-byte aligned, unless a zero word follows the stream.
        (
            "subset.lz4",
            "Initramfs unpacking failed: Decoding failed",
            "must start with 4 NUL bytes",
        ),
    ],
)
def test_plain_cat_breaks_the_kernel_where_inspect_says(
    first: str,
    kernel_says: str,
    inspect_says: str,
    kernel: debian.Kernel,
    parts: dict[str, Path],
    tmp_path: Path,
) -> None:
    head, init = parts[first].read_bytes(), parts["init"].read_bytes()
    initrd = tmp_path / "cat-initrd"
    # What a naive tool (or barebox joining FIT ramdisks) does: align to 4 at most.
    initrd.write_bytes(head + (b"\0" * (-len(head) % 4) if first.endswith("lz4") else b"") + init)
    with pytest.raises(cpio.CpioError, match=inspect_says):
        cpio.inspect(initrd)
    log = boot(kernel, initrd)
    assert kernel_says in log, log
    assert MARKER not in log, log
