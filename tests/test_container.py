"""The Dockerfile, built and run for real: the container serves a board over TFTP and HTTP.

podman builds the repository's Dockerfile on a Debian 12 base made here with mmdebstrap from the
machine's apt sources (``tests/support/container.py``; no registry), then runs it with a board
folder and a build folder mounted, as the Dockerfile's header shows. tftp-hpa and curl fetch the
board's devboot script, FIT and initrd from the container; the bytes must equal what
``overrided serve`` outside the container serves from the same folders.

Needs root, podman, runc and mmdebstrap (``.ci/run`` installs them and sets
``OVERRIDED_REQUIRE_CONTAINER=1``: missing, they fail the test instead of skipping it). The
first run makes the base (about 30 s, kept as a tarball in ``~/.cache/overrided``, imported
once); each run then builds the image whole (apt in both stages, pip building the wheels: one
to two minutes here) and removes it afterwards, so that runs leave no images behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.builds import build_folder
from tests.support.container import Container, build_image, dangling_images, missing_tools
from tests.support.fits import sample_fit
from tests.support.serve import Served, free_port
from tests.support.tftp_clients import tftp_hpa

pytestmark = [pytest.mark.container, pytest.mark.timeout(2400)]

BOARD = 'compatible = ["v,board-a", "v,soc"]\nuser = "afa"\nformats = ["barebox", "pxe"]\n'


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    why = []
    if os.geteuid() != 0:
        why.append("needs root (podman build and run as root)")
    if missing_tools():
        why.append(f"needs {', '.join(missing_tools())} (apt-get install podman runc mmdebstrap)")
    if why:
        if os.environ.get("OVERRIDED_REQUIRE_CONTAINER") == "1":
            pytest.fail("; ".join(why))
        pytest.skip("; ".join(why))
    tag = f"localhost/overrided-test:{os.getpid()}"
    log = tmp_path_factory.mktemp("build") / "podman-build.log"
    before = dangling_images()
    build_image(tag, log=log)
    yield tag
    # The image, and the build stage this build left untagged (700 MB with the compiler): each
    # run leaves nothing but the base behind, at the price of building the image whole.
    subprocess.run(["podman", "rmi", "-f", tag], capture_output=True, check=False)
    for image in dangling_images() - before:
        subprocess.run(["podman", "rmi", image], capture_output=True, check=False)


def tftp_get(port: int, name: str, out: Path) -> bytes:
    """``name`` from 127.0.0.1:`port` with tftp-hpa (which exits 0 on errors too)."""
    out.unlink(missing_ok=True)
    r = subprocess.run(
        tftp_hpa(port, name, out), capture_output=True, text=True, timeout=60, check=False
    )
    assert out.exists() and "Error" not in r.stdout + r.stderr, f"tftp {name}: {r.stdout}"
    return out.read_bytes()


def http_get(port: int, name: str, out: Path) -> bytes:
    """``name`` from 127.0.0.1:`port` with curl."""
    url = f"http://127.0.0.1:{port}/{name}"
    subprocess.run(["curl", "-sSf", "-o", str(out), url], check=True, timeout=60)
    return out.read_bytes()


def test_container_serves_a_board_as_overrided_serve_does(image: str, tmp_path: Path) -> None:
    boards = tmp_path / "boards"
    builds = tmp_path / "kernel-builds"
    boards.mkdir()
    (boards / "board-a.toml").write_text(BOARD)
    build_folder(builds, "b1", sample_fit(tmp_path / "fit").fit)
    tftp_port = free_port(socket.SOCK_DGRAM)
    http_port = free_port(socket.SOCK_STREAM)
    args = [
        "overrided",
        "serve",
        "--boards",
        "/srv/boards",
        "--builds",
        "/srv/kernel-builds",
        "--store",
        "/var/lib/overrided",
        "--tftp-addr",
        "127.0.0.1",
        "--tftp-port",
        str(tftp_port),
        "--http-addr",
        "127.0.0.1",
        "--http-port",
        str(http_port),
    ]
    volumes = {
        boards: "/srv/boards:ro",
        builds: "/srv/kernel-builds:ro",
        tmp_path / "container-store": "/var/lib/overrided",
    }
    (tmp_path / "container-store").mkdir()
    name = f"overrided-test-{os.getpid()}"
    (tmp_path / "outside").mkdir()
    outside = Served(tmp_path / "outside", boards=boards, builds=builds)
    with Container(image, name, volumes=volumes, args=args) as c, outside:
        log = c.wait_for(" ready: ")
        assert "board board-a (afa-devboot-board-a): build b1, conf-a" in log, log
        raw = subprocess.run(
            ["curl", "-sSf", f"http://127.0.0.1:{http_port}/api/boards/board-a"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        inside = json.loads(raw)
        assert inside["build"] == "b1" and inside["configuration"] == "conf-a"
        ours = outside.api("/api/boards/board-a")
        assert inside["artifacts"] == ours["artifacts"]  # same content, same versioned names
        names = ["afa-devboot-board-a", "pxelinux.cfg/board-a", *inside["artifacts"].values()]
        assert {"fit", "initrd"} <= set(inside["artifacts"])
        fetched = tmp_path / "fetched"
        fetched.mkdir()
        for n in names:
            expected = outside.tftp_get(n)
            safe = n.replace("/", "_")
            assert tftp_get(tftp_port, n, fetched / f"{safe}.tftp") == expected, n
            assert http_get(http_port, n, fetched / f"{safe}.http") == expected, n
