"""Latency from a build landing to a devboot script naming it, over TFTP.

For each run a fresh copy of the Debian arm64 kernel's FIT (built once with
``overrided fit build`` from ``tests.support.debian.kernel()``: 33 MB Image + ~580 DTBs) and its
modules CPIO (``overrided cpio modules``) is written into a new ``kernel-builds/run-N/``. The
clock starts when the last byte is written and closed, and stops when tftp-hpa's ``tftp``
fetches an ``afa-devboot-rock3a`` that names ``run-N``: index, match, trim, initrd, render and
catalog swap in between.

The peer is the classic setup: tftpd-hpa serving a folder into which the developer copies the
same FIT, modules CPIO and a hand-written script; its latency is how soon that script can be
fetched (the floor of "copy and serve", with no per-board work at all).

Each run's FIT differs from the previous one (the root description carries the run number), so
nothing is answered from the render cache. Run: ``.venv/bin/python bench/bench_latency.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import debian  # noqa: E402
from tests.support.serve import HOST, Served, free_port  # noqa: E402

OUT = REPO / "bench" / "out"
DESCRIPTION = "overrided latency bench run 0000"
BOARD = """
user = "afa"
compatible = ["radxa,rock3a", "rockchip,rk3568"]
initrd = "append"
[bootargs]
rsinit = "rsinit.bind=/lib/modules"
"""
SCRIPT = "afa-devboot-rock3a"
SCENARIOS = {
    "rebuild": "make image.fit rewrites the FIT of a build folder in place, modules unchanged",
    "new": "a new build folder: FIT and an unchanged 296 MB modules CPIO copied in",
}


def overrided(*args: str) -> None:
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


def wait_for(port: int, dest: Path, changed_from: str | None, limit: float = 60.0) -> str:
    """Poll until the script names a FIT other than ``changed_from``; return that name.

    The time is taken by the caller right after this returns.
    """
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        text = tftp_get(port, SCRIPT, dest)
        if text is not None:
            m = re.search(r'^devboot_image="([^"]+)"', text, re.M)
            if m and m.group(1) != changed_from:
                return m.group(1)
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for a script naming a FIT other than {changed_from}")


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

    with srv:
        land(fit_bytes, 0, mods, folder(0), "image.fit")  # warm up: first index
        current = wait_for(srv.tftp_port, work / "s", None)
        for run in range(1, runs + 1):
            t0 = land(fit_bytes, run, mods if scenario == "new" else None, folder(run), "image.fit")
            current = wait_for(srv.tftp_port, work / "s", current)
            times.append(time.perf_counter() - t0)
            if scenario == "new" and run >= 2:  # keep the disk bounded: two builds at a time
                shutil.rmtree(folder(run - 2))
        index, render = stages(srv.log())
    # The last successful index and render of each run (a FIT caught mid-write fails first).
    return times, index[-runs:], render[-runs:]


def bench_tftpd_hpa(fit: Path, mods: Path, runs: int, work: Path, scenario: str) -> list[float]:
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
            (root / SCRIPT).write_text(f'devboot_image="afa-fit-rock3a-{run:04d}"\n')
            t0 = time.perf_counter()
            wait_for(port, work / "s", f"afa-fit-rock3a-{run - 1:04d}")
            times.append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    fit, mods = inputs()
    print(f"FIT {fit.stat().st_size / 1e6:.1f} MB, modules CPIO {mods.stat().st_size / 1e6:.1f} MB")
    medians: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        work = Path(tmp)
        for scenario in ("rebuild", "new"):
            ours, index, render = bench_overrided(fit, mods, args.runs, work, scenario)
            peer = bench_tftpd_hpa(fit, mods, args.runs, work, scenario)
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
    main()
