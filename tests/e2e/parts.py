"""The real pieces an end-to-end boot needs, made from Debian's arm64 kernel and busybox.

* ``virt.dtb``: QEMU's generated ``virt`` DT (root compatible ``linux,dummy-virt``), dumped with
  exactly the QEMU options the boots use (``-bios`` included), or the kernel dies silently.
* A modules CPIO laid out like ``make modules-cpio-pkg`` output (``lib/modules/<release>/``,
  ``modules.dep`` by the real ``depmod``). It holds a subset of the 292 MB module tree, chosen so
  ``modprobe`` must resolve a dependency (``zram`` needs ``zsmalloc``), plus a file naming the
  build, so a boot shows which build's initrd it got. Fetching all modules over TFTP under TCG
  would cost a minute per boot for nothing more to prove.
* The build's name in ``/chosen`` of its DTB (the FIT's fdt), so a boot shows which build's
  FIT it got: init prints both, and a consistent set shows one name twice.
* An init CPIO: static busybox and an ``/init`` that prints markers, checks the modules, runs
  ``modprobe`` and powers off.

GNU ``cpio -o -H newc`` writes the archives, so they come from a peer, not from our writer.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.support import debian
from tests.support.uboot import dump_dtb, user_netdev

MARKER = "OVERRIDED-E2E"
# Modules copied into the modules CPIO (relative to lib/modules/<release>/kernel/).
MODULES = ("drivers/block/zram/zram.ko", "mm/zsmalloc.ko", "drivers/net/dummy.ko")
PROBE = "zram"  # what init loads; its dependency zsmalloc must come along
BUILD_ID_FILE = "overrided-build"  # under lib/modules/<release>/, names the build
DT_BUILD_PROP = "overrided-build"  # a /chosen property of the build's DTB, names the build
# A node a DT overlay adds at the root; init prints its ``source`` (seen in /proc/device-tree).
OVERLAY_NODE = "overrided-overlay"
# Files a boot entry's own initrd may carry (under /overrided-extra/); init prints each one.
EXTRA_DIR = "overrided-extra"

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
r=$(uname -r)
dt=$(tr -d '\\000' < /sys/firmware/devicetree/base/chosen/{dt_prop} 2>/dev/null)
echo "{marker} init release=$r build=$(cat /lib/modules/$r/{build_id} 2>/dev/null) dt=$dt"
[ -n "$dt" ] || ls -l /sys/firmware/devicetree/base/chosen
if [ -f /lib/modules/$r/modules.dep ] && [ -f /lib/modules/$r/kernel/{probe_path} ]; then
    echo "{marker} modules present"
else
    echo "{marker} modules missing"; ls -R /lib/modules
fi
if modprobe {probe} && [ -d /sys/module/{probe} ] && [ -d /sys/module/zsmalloc ]; then
    echo "{marker} modprobe {probe} ok"
else
    echo "{marker} modprobe {probe} failed"
fi
for f in /{extra_dir}/*; do
    [ -f "$f" ] && echo "{marker} extra $(basename "$f")=$(cat "$f")"
done
ov=$(tr -d '\\000' < /proc/device-tree/{overlay_node}/source 2>/dev/null)
[ -n "$ov" ] && echo "{marker} overlay source=$ov"
echo "{marker} done"
poweroff -f
"""


def run(argv: Sequence[str | Path], cwd: Path | None = None, stdin: bytes | None = None) -> bytes:
    """Run a tool; raise with its stderr if it fails."""
    proc = subprocess.run(
        [str(a) for a in argv], cwd=cwd, input=stdin, capture_output=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def newc(root: Path, out: Path) -> Path:
    """Archive the tree under ``root`` with GNU cpio (newc, owner root, parents first)."""
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    listing = ("\n".join(names) + "\n").encode()
    out.write_bytes(run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], root, listing))
    return out


def init_cpio(out: Path) -> Path:
    """The init archive: ``/init`` (busybox sh script) and ``/bin/busybox``."""
    root = out.parent / (out.name + ".d")
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "lib"):
        (root / d).mkdir(parents=True)
    shutil.copy(debian.busybox(), root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    init = root / "init"
    probe_path = next(m for m in MODULES if m.endswith(f"/{PROBE}.ko"))
    init.write_text(
        INIT.format(
            marker=MARKER,
            build_id=BUILD_ID_FILE,
            dt_prop=DT_BUILD_PROP,
            probe=PROBE,
            probe_path=probe_path,
            overlay_node=OVERLAY_NODE,
            extra_dir=EXTRA_DIR,
        )
    )
    init.chmod(0o755)
    return newc(root, out)


def modules_cpio(out: Path, build_id: str) -> Path:
    """A modules archive of the real kernel (subset, real ``depmod``) naming ``build_id``."""
    k = debian.kernel()
    root = out.parent / (out.name + ".d")
    shutil.rmtree(root, ignore_errors=True)
    mods = root / "lib" / "modules" / k.release
    for rel in MODULES:
        dest = mods / "kernel" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(k.modules / "kernel" / rel, dest)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy(k.modules / name, mods / name)
    run(["depmod", "-b", root, k.release])
    (mods / BUILD_ID_FILE).write_text(build_id)
    return newc(root, out)


def virt_dtb(out: Path) -> Path:
    """QEMU ``virt``'s own DT, dumped with the boot options (its compatible: linux,dummy-virt)."""
    return dump_dtb(out, user_netdev())
