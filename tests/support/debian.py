"""Real Debian arm64 parts for tests and benchmarks: the kernel package and busybox-static.

Packages are fetched with `apt-get download` from the machine's configured Debian mirrors,
using a private package-list folder so the host's own apt state is never touched, and
cached under ``$OVERRIDED_CACHE`` (default ``~/.cache/overrided``) between runs.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("OVERRIDED_CACHE", Path.home() / ".cache" / "overrided"))
ARM64 = CACHE / "debian-arm64"


def _apt_opts() -> list[str]:
    lists = ARM64 / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    return [
        "-oAPT::Architecture=arm64",
        "-oAPT::Architectures=arm64",
        f"-oDir::State::Lists={lists}",
        f"-oDir::Cache={ARM64 / 'apt-cache'}",
        "-oDebug::NoLocking=1",
        "-q",
    ]


def _apt_update() -> None:
    stamp = ARM64 / "lists.stamp"
    if stamp.exists():
        return
    (ARM64 / "apt-cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", *_apt_opts(), "update"], check=True, capture_output=True)
    stamp.touch()


def _resolve_kernel_package() -> str:
    """The versioned package that `linux-image-arm64` currently depends on."""
    out = subprocess.run(
        ["apt-cache", *_apt_opts(), "depends", "linux-image-arm64"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        m = re.search(r"Depends:\s*(linux-image-[0-9][^\s]*-arm64)\s*$", line)
        if m:
            return m.group(1)
    raise RuntimeError(f"cannot find the kernel package behind linux-image-arm64:\n{out}")


def _download_and_extract(package: str, dest: Path) -> Path:
    """Download `package` (arm64) and unpack it into `dest` once; return `dest`."""
    done = dest / ".extracted"
    if done.exists():
        return dest
    debs = ARM64 / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for old in debs.glob(f"{package}_*.deb"):
        old.unlink()
    subprocess.run(
        ["apt-get", *_apt_opts(), "download", package], check=True, cwd=debs, capture_output=True
    )
    (deb,) = debs.glob(f"{package}_*.deb")
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    done.touch()
    return dest


class _Lock:
    def __enter__(self) -> None:
        ARM64.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(ARM64 / ".lock", os.O_CREAT | os.O_RDWR)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


@dataclass(frozen=True)
class Kernel:
    """An unpacked Debian arm64 kernel package."""

    release: str  # e.g. "6.1.0-28-arm64"
    image: Path  # uncompressed arm64 Image with EFI stub (Debian's vmlinuz)
    dtbs: Path  # folder with vendor subfolders of *.dtb
    modules: Path  # lib/modules/<release>


def kernel() -> Kernel:
    """Fetch (once) and return the current Debian arm64 kernel."""
    with _Lock():
        _apt_update()
        package = _resolve_kernel_package()
        root = _download_and_extract(package, ARM64 / package)
    (image,) = (root / "boot").glob("vmlinuz-*")
    release = image.name.removeprefix("vmlinuz-")
    dtbs = root / "usr" / "lib" / f"linux-image-{release}"
    return Kernel(
        release=release, image=image, dtbs=dtbs, modules=root / "lib" / "modules" / release
    )


def busybox() -> Path:
    """Fetch (once) and return the path of Debian's static arm64 busybox."""
    with _Lock():
        _apt_update()
        root = _download_and_extract("busybox-static", ARM64 / "busybox-static")
    return root / "bin" / "busybox"


if __name__ == "__main__":
    k = kernel()
    print(k)
    print(busybox())
