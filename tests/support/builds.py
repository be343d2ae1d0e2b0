"""Build folders as the service finds them: a FIT copied in, modules CPIOs written by GNU cpio.

Typical use::

    folder = build_folder(tmp_path / "kernel-builds", "b1", sample.fit)   # + one modules CPIO
    build = index_build(folder, Store(tmp_path / "store"))

Nothing here writes CPIO bytes itself; GNU ``cpio`` does, as ``make modules-cpio-pkg`` would lay
the archive out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

RELEASE = "6.19.0"


def newc_archive(tree: Path, out: Path) -> Path:
    """Everything below ``tree`` as a newc CPIO written by GNU cpio (names sorted)."""
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    with out.open("wb") as f:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            input="\n".join(names).encode(),
            stdout=f,
            cwd=tree,
            check=True,
        )
    return out


def modules_cpio(out: Path, release: str) -> Path:
    """A modules CPIO as `make modules-cpio-pkg` lays it out, written by GNU cpio."""
    tree = out.parent / f".tree-{out.name}"
    ko = tree / "lib" / "modules" / release / "kernel" / "drivers" / "x.ko"
    ko.parent.mkdir(parents=True)
    ko.write_bytes(b"\x7fELF module")
    (tree / "lib" / "modules" / release / "modules.dep").write_text("kernel/drivers/x.ko:\n")
    newc_archive(tree, out)
    shutil.rmtree(tree)
    return out


def init_cpio(out: Path, files: dict[str, bytes]) -> Path:
    """An init CPIO holding ``files`` (path in the archive → bytes), written by GNU cpio."""
    tree = out.parent / f".tree-{out.name}"
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    newc_archive(tree, out)
    shutil.rmtree(tree)
    return out


def build_folder(builds_dir: Path, name: str, fit: Path, *, release: str | None = RELEASE) -> Path:
    """``<builds_dir>/<name>/`` holding a copy of ``fit`` as ``image.fit`` and, unless
    ``release`` is ``None``, ``modules-<release>-arm64.cpio``."""
    folder = builds_dir / name
    folder.mkdir(parents=True)
    shutil.copyfile(fit, folder / "image.fit")
    if release is not None:
        modules_cpio(folder / f"modules-{release}-arm64.cpio", release)
    return folder


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Replace ``path``'s bytes the way ``make`` does: the same inode opened with ``O_TRUNC``
    and written again (no new file, no rename)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
