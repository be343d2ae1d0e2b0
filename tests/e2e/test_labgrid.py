"""labgrid's own pytest plugin drives barebox in QEMU through ``overrided.labgrid``.

The test writes a labgrid environment (``env.yaml``: ``imports: [overrided.labgrid]``,
labgrid's ``QEMUDriver`` running barebox as the board's power and console, ``BareboxDriver``,
``OverridedBoard``, ``OverridedDriver`` and ``OverridedStrategy``) and a test module, then runs
``pytest --lg-env env.yaml`` inside a network namespace of its own, where ``overrided serve``
listens (TFTP on port 69, HTTP on the namespace's loopback). The inner test, as a labgrid user
writes it:

1. stages build A with ``OverridedDriver.stage()`` (an upload of ``Image``, the DTB and the
   modules CPIO named in ``images:``), then build B with ``stage_urls()``: overrided fetches it
   from an artifact store (nginx in the namespace, ``tests/support/nginx.py``), each file with its
   sha256; each stage returns the board's resolution;
2. ``OverridedStrategy.transition("booted")``: power-cycles QEMU, waits for barebox's prompt
   (``BareboxDriver``), then ``OverridedDriver.devboot()`` types ``devboot``: barebox fetches
   the board's devboot script over TFTP and boots Debian's arm64 kernel with our initrd, whose
   ``/init`` prints markers naming the build of the DTB and of the modules it got (B), and loads
   a module.

barebox's images come from ``tests/support/barebox.py`` (``../shared/barebox/`` by default); with
``OVERRIDED_REQUIRE_BAREBOX=1`` (CI) a missing image fails this test instead of skipping it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import parts
from tests.e2e.conftest import BOARD, KernelParts, NetnsServed, write_board
from tests.support import barebox
from tests.support.netns import Netns
from tests.support.nginx import Nginx
from tests.support.serve import REPO
from tests.support.uboot import QEMU

pytestmark = pytest.mark.e2e

MAC = "52:54:00:12:34:56"  # boards/qemu-virt.toml names it
UPLOADED, FETCHED = "lg-upload", "lg-url"  # the builds the inner test stages, in this order
FILES_PORT = 8081  # the artifact store's HTTP port on the namespace's loopback
TIMEOUT = 900  # the whole inner run: QEMU on a loaded machine, generous

# The labgrid test, as a user of the driver writes it; its options come from env.yaml.
INNER_TEST = '''\
"""Stage a build by upload, then one by URL; power the QEMU board on and devboot it."""

import re


def test_stage_then_devboot(env, target, strategy):
    option = env.config.get_option
    overrided = target.get_driver("OverridedDriver", activate=False)
    assert overrided.resolution().build is None  # no build yet

    uploaded = overrided.stage()  # images: Image, virt.dtb, modules-<release>.cpio
    assert uploaded.build == overrided.build and uploaded.error is None, uploaded
    assert uploaded.configuration and "initrd" in uploaded.artifacts, uploaded

    fetched = overrided.stage_urls(option("url_files"), build=option("fetched"))
    assert fetched.build == option("fetched") and fetched.error is None, fetched
    assert fetched.artifacts["initrd"] != uploaded.artifacts["initrd"], fetched
    print("resolution:", fetched.model_dump_json())

    # OverridedStrategy: power-cycle QEMU, barebox's prompt, OverridedDriver.devboot()
    strategy.transition("booted")
    qemu = target.get_driver("QEMUDriver")

    marker = re.escape(option("marker"))
    line = marker + r" init release=(\\S+) build=(\\S*) dt=(\\S*)\\r?\\n"
    _, _, m, _ = qemu.expect(line, timeout=int(option("boot_timeout")))
    assert (m.group(2), m.group(3)) == (option("booted").encode(),) * 2, m.group(0)
    qemu.expect(marker + " modprobe " + option("probe") + " ok", timeout=60)
    qemu.expect(marker + " done", timeout=60)
    qemu.off()
'''


@dataclass(frozen=True)
class Builds:
    """Two kernel builds as ``make`` leaves them: ``Image``, QEMU's DT as barebox's QEMU makes
    it, ``modules-<release>.cpio``; the DTB's ``/chosen`` and the modules name ``build-A`` in
    ``a/``, ``build-B`` in ``b/``."""

    a: Path
    b: Path


@pytest.fixture(scope="module")
def builds(barebox_parts: KernelParts, tmp_path_factory: pytest.TempPathFactory) -> Builds:
    d = tmp_path_factory.mktemp("labgrid-builds")
    out = Builds(a=d / "a", b=d / "b")
    for folder, dtb, modules in [
        (out.a, barebox_parts.dtb_a, barebox_parts.modules_a),
        (out.b, barebox_parts.dtb_b, barebox_parts.modules_b),
    ]:
        folder.mkdir()
        shutil.copy(dtb, folder / "virt.dtb")  # QEMU's DT under barebox, /chosen naming the build
        shutil.copy(barebox_parts.image, folder / "Image")
        shutil.copy(modules, folder / f"modules-{barebox_parts.release}.cpio")
    return out


def url_files(folder: Path, base: str) -> list[dict[str, str]]:
    """What ``stage_urls`` gets: each file of ``folder`` by URL below ``base``, with its sha256."""
    return [
        {"name": f.name, "url": base + f.name, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
        for f in sorted(folder.iterdir())
    ]


def environment(served: NetnsServed, builds: Builds, files_base: str, root: Path) -> str:
    """The labgrid environment: QEMU running barebox on the board's documentation network."""
    machine = dict(zip(barebox.MACHINE_ARGS[::2], barebox.MACHINE_ARGS[1::2], strict=True))
    # -no-shutdown: the init's poweroff stops the guest but leaves QEMU to QEMUDriver.off()
    extra = ["-global", machine["-global"], "-no-shutdown", *barebox.nic(MAC)]
    (root / "token").write_text(served.token + "\n")
    env = {
        "imports": ["overrided.labgrid"],
        "targets": {
            "main": {
                "resources": {
                    "OverridedBoard": {
                        "url": served.http_base,
                        "board": BOARD,
                        "token_file": "token",  # relative to env.yaml
                    }
                },
                "drivers": {
                    "QEMUDriver": {
                        "qemu_bin": "qemu",
                        "machine": machine["-M"],
                        "cpu": machine["-cpu"],
                        "memory": f"{machine['-m']}M",
                        "kernel": "barebox",
                        "extra_args": shlex.join(extra),
                    },
                    "BareboxDriver": {"prompt": "barebox@[^:]+:[^ ]+ ", "login_timeout": 240},
                    "OverridedDriver": {
                        "build": UPLOADED,
                        "images": ["kernel", "dtb", "modules"],
                        "net_server": "127.0.0.1",  # QEMU's user network: see barebox.py
                        "boot_timeout": 240,
                    },
                    "OverridedStrategy": {},  # after what it binds, as labgrid wants
                },
            }
        },
        "tools": {"qemu": shutil.which(QEMU) or QEMU},
        "images": {
            "barebox": str(barebox.images().path(barebox.IMAGE)),
            "kernel": str(builds.a / "Image"),
            "dtb": str(builds.a / "virt.dtb"),
            "modules": str(next(builds.a.glob("modules-*.cpio"))),
        },
        "options": {
            "fetched": FETCHED,
            "url_files": url_files(builds.b, files_base),
            "booted": "build-B",
            "marker": parts.MARKER,
            "probe": parts.PROBE,
            "boot_timeout": "240",
        },
    }
    return json.dumps(env, indent=2)  # JSON is YAML


def test_labgrid_stages_and_devboots_barebox_in_qemu(
    tmp_path: Path, kernel_parts: KernelParts, builds: Builds
) -> None:
    """``pytest --lg-env env.yaml``: stage by upload, then by URL; barebox prompt, devboot; our
    init runs with the build staged by URL."""
    if os.geteuid() != 0:
        pytest.fail("end-to-end boots need root for network namespaces")
    lab = tmp_path / "lab"
    lab.mkdir()
    with Netns() as ns, Nginx(tmp_path / "nginx", port=FILES_PORT, wrap=ns.wrap) as store:
        for f in builds.b.iterdir():
            shutil.copy(f, store.www / f.name)
        files_base = store.url("")
        served = NetnsServed(tmp_path, ns)
        served.extra = ["--allow-url", files_base]
        write_board(served.boards, kernel_parts)
        served.start(timeout=120)
        try:
            (lab / "env.yaml").write_text(environment(served, builds, files_base, lab))
            (lab / "test_board.py").write_text(INNER_TEST)
            (lab / "pytest.ini").write_text("[pytest]\n")
            argv = [
                sys.executable, "-m", "pytest", "-c", str(lab / "pytest.ini"),
                "-p", "no:cacheprovider", "--lg-env", str(lab / "env.yaml"),
                "--lg-log", str(lab / "console"), "-rA", "-s", str(lab / "test_board.py"),
            ]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            env.pop("OVERRIDED_TOKEN", None)  # the token comes from token_file
            run = ns.run(argv, cwd=lab, env=env, timeout=TIMEOUT, check=False)
            output = run.stdout + run.stderr
            assert run.returncode == 0, output[-12000:] + served.log()[-4000:]
            assert "1 passed" in output, output[-4000:]

            # The server's side: the board is on the build fetched by URL, whose files are the
            # store's; barebox fetched that build's devboot script and initrd over TFTP.
            info = served.board()
            assert info["build"] == FETCHED and info["error"] is None, info
            resolution = next(line for line in output.splitlines() if "resolution:" in line)
            reported = json.loads(resolution.split("resolution:", 1)[1])
            for key in ("build", "configuration", "reason", "artifacts", "warnings"):
                assert reported[key] == info[key], (key, reported, info)
            for f in builds.b.iterdir():
                assert (served.builds / FETCHED / f.name).read_bytes() == f.read_bytes(), f
            journal = served.api(f"/api/boards/{BOARD}/journal?limit=1000")
            fetched = {t["name"] for t in journal if t["outcome"] == "ok"}
            script = info["served"]["barebox"][0]
            assert {script, info["artifacts"]["initrd"]} <= fetched, journal
            # B's Image is A's, uploaded before: the store has its sha256, nginx never sees it.
            fetched_paths = {r.path for r in store.requests() if r.status == 200}
            assert fetched_paths == {f"/{f.name}" for f in builds.b.iterdir()} - {"/Image"}, (
                store.requests()
            )
        finally:
            served.stop()
    console = "".join(p.read_text(errors="replace") for p in (lab / "console").glob("*"))
    booted = f"{parts.MARKER} init release={kernel_parts.release} build=build-B dt=build-B"
    assert booted in console, console[-4000:]
