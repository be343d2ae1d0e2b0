"""Latency from a build landing to a devboot script naming it, over TFTP.

For each run a fresh copy of the Debian arm64 kernel's FIT (built once with
``overrided fit build`` from ``tests.support.debian.kernel()``: 33 MB Image + ~580 DTBs) and its
modules CPIO (``overrided cpio modules``) is written into a new ``kernel-builds/run-N/``. The
clock starts when the last byte is written and closed, and stops when tftp-hpa's ``tftp``
fetches an ``afa-devboot-rock3a`` that is the new render: index, match, trim, initrd, render and
catalog swap in between.

How a script is known to be new: ``devboot_image`` names the stable ``boot net`` name
(``afa-linux-rock3a``) whatever the build, so it cannot tell. The script's provenance comment
names the build (``# build run-N (…)``), and its other names carry a hash of their content
(docs/boards.md: ``afa-fit-rock3a-<hash12>`` in the comment above ``devboot_image``,
``afa-initrd-rock3a-<hash12>``). A script is new when it names this run's build and its set of
hashed names differs from the previous script's: in the ``rebuild`` scenario the build name
stays ``dev`` and only the FIT's hashed name changes.

The peer is the classic setup: tftpd-hpa serving a folder into which the developer copies the
same FIT, modules CPIO and a hand-written script; its latency is how soon that script can be
fetched (the floor of "copy and serve", with no per-board work at all).

Each run's FIT differs from the previous one (the root description carries the run number), so
nothing is answered from the render cache. Run: ``.venv/bin/python bench/bench_latency.py``;
``--quick`` runs it on a small FIT (a stand-in kernel and four DTBs compiled with ``dtc``) and a
tiny modules CPIO, for the test suite.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import debian  # noqa: E402
from tests.support.fits import board_dtb, payload  # noqa: E402
from tests.support.serve import HOST, Served, free_port  # noqa: E402

OUT = REPO / "bench" / "out"
DESCRIPTION = "overrided latency bench run 0000"
BOARD = """
user = "afa"
compatible = ["radxa,rock3a", "rockchip,rk3568"]
initrd = "append"
[bootargs]
rsinit = "rsinit.bind_modules"
"""
SCRIPT = "afa-devboot-rock3a"
# The quick inputs' boards: DTB file -> root compatible. The first is the bench's board.
QUICK_BOARDS: dict[str, list[str]] = {
    "rockchip/rk3568-rock-3a.dtb": ["radxa,rock3a", "rockchip,rk3568"],
    "rockchip/rk3399-rockpro64-v2.dtb": ["pine64,rockpro64-v2.1", "pine64,rockpro64"],
    "freescale/imx8mm-evk.dtb": ["fsl,imx8mm-evk", "fsl,imx8mm"],
    "broadcom/bcm2711-rpi-4-b.dtb": ["raspberrypi,4-model-b", "brcm,bcm2711"],
}
QUICK_RELEASE = "6.1.0-quick-arm64"
# A name whose content decides it: ``<user>-<role>-<hostname>-<first 12 hex of its sha256>``.
HASHED_NAME = re.compile(r"[A-Za-z0-9_.+-]+-[0-9a-f]{12}(?![0-9A-Za-z])")
SCENARIOS = {
    "rebuild": "make image.fit rewrites the FIT of a build folder in place, modules unchanged",
    "new": "a new build folder: FIT and the unchanged modules CPIO (296 MB in Debian's) copied in",
}


def overrided(*args: str) -> None:
    """Run an ``overrided`` subcommand of this checkout; fail if it fails."""
    subprocess.run([sys.executable, "-m", "overrided", *args], check=True, cwd=REPO)


def inputs() -> tuple[Path, Path]:
    """The Debian FIT and modules CPIO, built once into bench/out/."""
    k = debian.kernel()
    OUT.mkdir(parents=True, exist_ok=True)
    fit = OUT / "debian-image.fit"
    mods = OUT / f"modules-{k.release}-arm64.cpio"
    if not fit.exists():
        overrided(
            "fit", "build", "--kernel", str(k.image), "--dtbs", str(k.dtbs), "-o", str(fit),
            "--description", DESCRIPTION,
        )  # fmt: skip
    if not mods.exists():
        overrided("cpio", "modules", str(k.modules), "-o", str(mods))
    return fit, mods


def quick_inputs(
    folder: Path, *, kernel_bytes: int = 1 << 20, module_bytes: int = 2 << 20, stem: str = "quick"
) -> tuple[Path, Path]:
    """A small FIT and modules CPIO in ``folder``, made the same way as the Debian ones.

    The FIT is ``overrided fit build`` of a stand-in kernel (1 MiB by default) and one DTB per
    ``QUICK_BOARDS`` entry (compiled by dtc); the CPIO is ``overrided cpio modules`` of a
    ``lib/modules/<release>`` with one stand-in module (2 MiB by default).
    """
    dtbs = folder / "dtbs"
    for name, compatible in QUICK_BOARDS.items():
        board_dtb(dtbs / name, compatible, model=name.rsplit("/", 1)[-1].removesuffix(".dtb"))
    kernel = folder / "Image"
    kernel.write_bytes(payload(kernel_bytes, 1))
    tree = folder / "lib" / "modules" / QUICK_RELEASE
    module = tree / "kernel" / "drivers" / "misc" / f"{stem}.ko"
    module.parent.mkdir(parents=True)
    module.write_bytes(payload(module_bytes, 2))
    (tree / "modules.order").write_text(f"kernel/drivers/misc/{stem}.ko\n")
    fit = folder / f"{stem}-image.fit"
    mods = folder / f"modules-{QUICK_RELEASE}.cpio"
    overrided(
        "fit", "build", "--kernel", str(kernel), "--dtbs", str(dtbs), "-o", str(fit),
        "--description", DESCRIPTION,
    )  # fmt: skip
    overrided("cpio", "modules", str(tree), "-o", str(mods))
    return fit, mods


def names_build(text: str, build: str) -> bool:
    """Whether a script's text names the build folder ``build`` (``run-1``, not ``run-10``)."""
    return re.search(rf"(?<![\w.+-]){re.escape(build)}(?![\w.+-])", text) is not None


def hashed_names(text: str) -> frozenset[str]:
    """The content-named artifacts a script refers to (in its variables and comments)."""
    return frozenset(HASHED_NAME.findall(text))


def land(fit_bytes: bytes, run: int, mods: Path | None, folder: Path, fit_name: str) -> float:
    """Write this run's FIT (and the modules CPIO) into ``folder``; return the end time."""
    folder.mkdir(parents=True, exist_ok=True)
    data = fit_bytes.replace(DESCRIPTION.encode(), DESCRIPTION[:-4].encode() + b"%04d" % run, 1)
    if mods is not None:
        shutil.copyfile(mods, folder / mods.name)
    with (folder / fit_name).open("wb") as f:
        f.write(data)
    return time.perf_counter()


def tftp_get(port: int, name: str, dest: Path) -> str | None:
    """Fetch with tftp-hpa; the text, or None if not (yet) served."""
    dest.unlink(missing_ok=True)
    r = subprocess.run(
        ["tftp", HOST, str(port), "-m", "binary", "-c", "get", name, str(dest)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if "Error" in r.stdout + r.stderr or not dest.exists():
        return None
    return dest.read_text(errors="replace")


def wait_for(port: int, dest: Path, is_new: Callable[[str], bool], what: str) -> str:
    """Poll over TFTP until ``is_new`` accepts the script's text; return that text.

    The time is taken by the caller right after this returns. Gives up after 60 s.
    """
    deadline = time.perf_counter() + 60.0
    text: str | None = None
    while time.perf_counter() < deadline:
        text = tftp_get(port, SCRIPT, dest)
        if text is not None and is_new(text):
            return text
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {SCRIPT} to be {what}; last fetched:\n{text}")


def new_render(build: str, previous: frozenset[str]) -> Callable[[str], bool]:
    """A script of a new render: it names ``build`` and other hashed names than ``previous``."""
    return lambda text: names_build(text, build) and hashed_names(text) != previous


def naming(marker: str) -> Callable[[str], bool]:
    """A script that contains ``marker`` (the peer's scripts name their run's FIT)."""
    return lambda text: marker in text


def stages(log: str) -> tuple[list[float], list[float]]:
    """Index and render durations, in order, from the service's log."""
    index = [float(x) for x in re.findall(r"indexed in ([0-9.]+)s", log)]
    render = [float(x) for x in re.findall(r"\(rendered in ([0-9.]+)s\)", log)]
    return index, render


def bench_overrided(
    fit: Path, mods: Path, runs: int, work: Path, scenario: str
) -> tuple[list[float], list[float], list[float]]:
    """``new``: each run is a new build folder with FIT and modules; ``rebuild``: the FIT of
    one build folder is rewritten in place (as ``make image.fit`` does), modules untouched."""
    fit_bytes = fit.read_bytes()
    srv = Served(work / f"overrided-{scenario}")
    (srv.boards / "rock3a.toml").write_text(BOARD)
    times: list[float] = []

    def folder(run: int) -> Path:
        return srv.builds / (f"run-{run}" if scenario == "new" else "dev")

    try:
        srv.start()
        land(fit_bytes, 0, mods, folder(0), "image.fit")  # warm up: first index
        text = wait_for(srv.tftp_port, work / "s", new_render(folder(0).name, frozenset()), "any")
        for run in range(1, runs + 1):
            is_new = new_render(folder(run).name, hashed_names(text))
            t0 = land(fit_bytes, run, mods if scenario == "new" else None, folder(run), "image.fit")
            text = wait_for(srv.tftp_port, work / "s", is_new, f"a render of run {run}")
            times.append(time.perf_counter() - t0)
            if scenario == "new" and run >= 2:  # keep the disk bounded: two builds at a time
                shutil.rmtree(folder(run - 2))
        index, render = stages(srv.log())
    except SystemExit as timed_out:
        # Without the line per TFTP fetch: the polling made most of them.
        log = "".join(x for x in srv.log().splitlines(True) if " overrided.tftp: " not in x)
        raise SystemExit(f"{timed_out}\noverrided serve's log:\n{log[-6000:]}") from None
    finally:
        srv.stop()
    # The last successful index and render of each run (a FIT caught mid-write fails first).
    return times, index[-runs:], render[-runs:]


def bench_tftpd_hpa(fit: Path, mods: Path, runs: int, work: Path, scenario: str) -> list[float]:
    """The peer: copy the files and a hand-written script into tftpd-hpa's folder, then time
    how soon tftp-hpa fetches that script."""
    root = work / f"tftpboot-{scenario}"
    root.mkdir()
    port = free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen(["in.tftpd", "-L", "-s", str(root), "-a", f"{HOST}:{port}"])
    fit_bytes = fit.read_bytes()
    times: list[float] = []
    try:
        time.sleep(0.3)
        for run in range(1, runs + 1):
            land(fit_bytes, run, mods if scenario == "new" else None, root, "afa-fit-rock3a")
            marker = f"afa-fit-rock3a-{run:04d}"
            (root / SCRIPT).write_text(f'devboot_image="{marker}"\n')
            t0 = time.perf_counter()
            wait_for(port, work / "s", naming(marker), f"naming {marker}")
            times.append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait()
    return times


def main() -> None:
    """Run both scenarios against both servers; print the tables and the ratio line."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--runs", type=int, default=None, help="runs per scenario (default 5; quick 2)")
    p.add_argument("--quick", action="store_true", help="a small FIT, for the test suite")
    args = p.parse_args()
    runs = args.runs or (2 if args.quick else 5)
    medians: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        work = Path(tmp)
        if args.quick:
            (work / "inputs").mkdir()
            fit, mods = quick_inputs(work / "inputs")
        else:
            fit, mods = inputs()
        fit_mb, mods_mb = fit.stat().st_size / 1e6, mods.stat().st_size / 1e6
        print(f"FIT {fit_mb:.1f} MB, modules CPIO {mods_mb:.1f} MB")
        for scenario in ("rebuild", "new"):
            ours, index, render = bench_overrided(fit, mods, runs, work, scenario)
            peer = bench_tftpd_hpa(fit, mods, runs, work, scenario)
            print(f"\nscenario {scenario}: " + SCENARIOS[scenario])
            print(
                f"{'run':>4} {'overrided s':>12} {'(index s':>9} {'render s)':>9}"
                f" {'tftpd-hpa s':>12}"
            )
            for i, (a, b) in enumerate(zip(ours, peer, strict=True), 1):
                ix = f"{index[i - 1]:.3f}" if i <= len(index) else "-"
                rd = f"{render[i - 1]:.3f}" if i <= len(render) else "-"
                print(f"{i:>4} {a:>12.3f} {ix:>9} {rd:>9} {b:>12.3f}")
            medians[scenario] = (statistics.median(ours), statistics.median(peer))
            print(
                f"{'med':>4} {medians[scenario][0]:>12.3f} {'':>19} {medians[scenario][1]:>12.3f}"
            )
            os.sync()
    for scenario, (mo, _) in medians.items():
        met = "yes" if mo <= 0.5 else "no"
        print(f"{scenario}: median {mo:.3f} s, target <= 0.5 s met: {met}")
    mo, mp = medians["rebuild"]
    print(f"ratio_vs_tftpd_hpa={mo / mp:.1f}")


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the servers started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
