"""Build the repository's Dockerfile with podman and run it, from a Debian base made here.

No container registry is needed: the base image is Debian 12 (minbase) made by ``mmdebstrap``
from this machine's own apt sources and brought in with ``podman import``; the Dockerfile's
``BASE`` build argument names it. pip, during the build, gets this machine's pip configuration
(``/etc/pip.conf``, ``PIP_INDEX_URL``…, and the CA bundle they name), so a build works where
PyPI is reached through a local index or a proxy with its own CA.

Typical use::

    image = build_image(tag)                     # base made once, cached as a tarball
    with Container(image, boards=..., builds=..., store=...) as c:
        c.wait_ready()

Podman runs as root. Two settings make it run on hosts that are not a stock systemd Debian:
``--isolation chroot`` for the build's RUN steps and ``runc`` for ``podman run`` (crun refuses
a hybrid cgroup hierarchy), and ``--ulimit`` no higher than this process's limits (podman raises
``nofile``/``nproc`` by default, which the container's init may not be allowed to do).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

from tests.support.debian import CACHE

REPO = Path(__file__).resolve().parents[2]
BASE_TAG = "localhost/overrided-test-base:bookworm"
# The base tarball is made again when it is older than this (security updates).
BASE_MAX_AGE = 7 * 24 * 3600
PIP_ENV = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_CERT")


def missing_tools() -> list[str]:
    """The programs the container test needs that are not installed."""
    return [t for t in ("podman", "mmdebstrap", "runc") if shutil.which(t) is None]


def apt_sources() -> list[Path]:
    """This machine's apt source files (one-line ``.list`` and deb822 ``.sources``), which
    mmdebstrap reads as they are and copies into the image."""
    files = [Path("/etc/apt/sources.list")]
    folder = Path("/etc/apt/sources.list.d")
    if folder.is_dir():
        files += sorted(folder.glob("*.list")) + sorted(folder.glob("*.sources"))
    found = [f for f in files if f.is_file() and _has_entries(f)]
    if not found:
        raise RuntimeError("no apt sources in /etc/apt/sources.list or sources.list.d")
    return found


def _has_entries(path: Path) -> bool:
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith(("deb ", "Types:")):
            return True
    return False


def _run(argv: list[str], *, timeout: float, log: Path | None = None) -> None:
    """Run ``argv``; on failure raise with the end of its output."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if log is not None:
        log.write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        out = (r.stdout + r.stderr)[-4000:]
        raise RuntimeError(f"{argv[0]} {argv[1]} failed ({r.returncode}):\n{out}")


def base_tarball() -> Path:
    """Debian 12 minbase as a tarball, made by mmdebstrap once and kept in the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tar = CACHE / "debian-bookworm-minbase.tar"
    if tar.exists() and time.time() - tar.stat().st_mtime < BASE_MAX_AGE:
        return tar
    # mmdebstrap picks the output format by the name's suffix: keep ".tar" last.
    tmp = tar.with_name(f".{os.getpid()}.{tar.name}")
    argv = ["mmdebstrap", "--quiet", "--format=tar", "--variant=minbase", "bookworm", str(tmp)]
    try:
        _run(argv + [str(s) for s in apt_sources()], timeout=900)
        tmp.replace(tar)
    finally:
        tmp.unlink(missing_ok=True)
    return tar


def base_image() -> str:
    """The base imported into podman (again when the tarball is newer than the image)."""
    tar = base_tarball()
    r = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Created.Unix}}", BASE_TAG],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0 or int(r.stdout.strip() or 0) < int(tar.stat().st_mtime):
        _run(["podman", "import", str(tar), BASE_TAG], timeout=300)
    return BASE_TAG


# Where the build sees the CA bundle pip is told to use: not the path Debian's ca-certificates
# writes (a file mounted there would stop that package from being configured).
BUILD_CA = "/etc/pip-build-ca.pem"


def _pip_passthrough() -> list[str]:
    """``--build-arg``/``-v`` options that hand pip this machine's configuration: the system
    pip.conf, the index settings of the environment, and the CA bundle either names."""
    opts: list[str] = []
    cert = ""
    conf = Path("/etc/pip.conf")
    if conf.is_file():
        opts.extend(["-v", f"{conf}:{conf}:ro"])
        for line in conf.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "cert" and value.strip():
                cert = value.strip()
    for name in PIP_ENV:
        value = os.environ.get(name, "")
        if name == "PIP_CERT":
            cert = value or cert
            continue
        # A local file index cannot be seen from inside the build.
        urls = [u for u in value.split() if not u.startswith("file:")]
        if urls:
            opts.extend(["--build-arg", f"{name}={' '.join(urls)}"])
    if cert and Path(cert).is_file():
        # PIP_CERT (the environment) wins over the cert line of the mounted pip.conf.
        opts.extend(["-v", f"{cert}:{BUILD_CA}:ro", "--build-arg", f"PIP_CERT={BUILD_CA}"])
    return opts


def build_image(tag: str, log: Path | None = None) -> str:
    """``podman build`` the repository's Dockerfile on the local base; returns `tag`."""
    argv = [
        "podman",
        "build",
        "--isolation",
        "chroot",
        "--network",
        "host",
        "--build-arg",
        f"BASE={base_image()}",
        *_pip_passthrough(),
        "-t",
        tag,
        str(REPO),
    ]
    _run(argv, timeout=1800, log=log)
    return tag


# Limits for the container, at most this process's own: lowering a limit needs no privilege,
# and podman's defaults (raised to 1M files) fail where the runtime may not raise them.
LIMITS = (("nofile", resource.RLIMIT_NOFILE, 65536), ("nproc", resource.RLIMIT_NPROC, 4096))


def dangling_images() -> set[str]:
    """The ids of podman's untagged images (a multi-stage build leaves its build stage so)."""
    r = subprocess.run(
        ["podman", "images", "-q", "--filter", "dangling=true"],
        capture_output=True,
        text=True,
        check=False,
    )
    return set(r.stdout.split())


def run_options() -> list[str]:
    """``podman run`` options for this host: runc, and limits no higher than this process's."""
    opts = ["--runtime", "runc"]
    for name, limit, most in LIMITS:
        _, hard = resource.getrlimit(limit)
        value = most if hard == resource.RLIM_INFINITY else min(hard, most)
        opts.extend(["--ulimit", f"{name}={value}:{value}"])
    return opts


class Container:
    """``podman run -d`` of an image; ``stop()`` removes the container."""

    def __init__(self, image: str, name: str, *, volumes: dict[Path, str], args: list[str]) -> None:
        self.image = image
        self.name = name
        self.volumes = volumes
        self.args = args

    def start(self) -> Container:
        """Start it detached, on the host's network."""
        vols = [x for host, inside in self.volumes.items() for x in ("-v", f"{host}:{inside}")]
        argv = ["podman", "run", "-d", "--name", self.name, "--network", "host"]
        _run([*argv, *run_options(), *vols, self.image, *self.args], timeout=120)
        return self

    def logs(self) -> str:
        """What the container printed so far."""
        r = subprocess.run(
            ["podman", "logs", self.name], capture_output=True, text=True, check=False
        )
        return r.stdout + r.stderr

    def running(self) -> bool:
        """Whether the container is still up."""
        r = subprocess.run(
            ["podman", "inspect", "--format", "{{.State.Running}}", self.name],
            capture_output=True,
            text=True,
            check=False,
        )
        return r.stdout.strip() == "true"

    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        """Wait for `text` in the logs; fail with them when the container stops or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.logs()
            if text in out:
                return out
            if not self.running() or time.monotonic() > deadline:
                raise AssertionError(f"container {self.name}: no {text!r}:\n{out[-6000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop and remove it."""
        subprocess.run(
            ["podman", "rm", "-f", "-t", "10", self.name], capture_output=True, check=False
        )

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
