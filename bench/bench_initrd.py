"""Time and peak memory of `cpio.concat` against `cat` for a real ~300 MB initrd.

The modules archive is built by us from the real Debian arm64 modules tree (~290 MB of .ko
files), the init archive from Debian's static busybox. Each round runs both, alternating, as
separate processes under GNU time, so each one's peak RSS is its own; the Python figure includes
the interpreter. ``ratio_vs_cat`` compares the ``concat()`` call (what the service pays) with the
whole ``cat`` process; the ratio including Python's start-up is printed too. Targets: at most
1.5x cat's time and a peak RSS under 64 MB.

    .venv/bin/python bench/bench_initrd.py [--rounds N]
    .venv/bin/python bench/bench_initrd.py --quick    # ~33 MB of stand-ins, 2 rounds: the tests

``--quick`` runs the same on stand-ins (nothing to download): the modules tree of bench_fit's
``quick_kernel()`` (bench_latency's quick inputs, with one 32 MiB stand-in module) and 1 MiB
of random bytes as busybox, in 2 rounds. GNU time gives wall time in hundredths of a second,
about what ``cat`` takes for that much: a median it gives below that is counted as 0.01 s, and
the table says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

from bench_fit import quick_kernel  # noqa: E402

from overrided import cpio  # noqa: E402
from tests.support import debian  # noqa: E402

TIME_RESOLUTION = 0.01  # GNU time's %e: seconds, to two decimals

# The child times the call itself, as the service pays it (its interpreter is already running).
OURS = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from overrided.cpio import concat\n"
    "parts, out = [Path(p) for p in sys.argv[1:-1]], Path(sys.argv[-1])\n"
    "start = time.perf_counter()\n"
    "concat(parts, out)\n"
    "print(time.perf_counter() - start)\n"
)


def measure(cmd: list[str], stdout: Path | None, report: Path) -> tuple[float, int, str]:
    """Wall time (s), peak RSS (KiB) and standard output of one run of ``cmd``.

    GNU time does the fork: a child forked from this (large) Python process would inherit its
    RSS high-water mark across exec, and ru_maxrss would report ours instead of the child's.
    """
    subprocess.run(["sync"], check=True)  # no writeback from the previous run in this one
    out = stdout.open("wb") if stdout is not None else subprocess.PIPE
    try:
        r = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", "-o", str(report), *cmd],
            stdout=out,
            cwd=ROOT,
            check=True,
        )
    finally:
        if stdout is not None and not isinstance(out, int):
            out.close()
    elapsed, rss = report.read_text().split()[-2:]
    text = r.stdout.decode() if isinstance(r.stdout, bytes) else ""
    return float(elapsed), int(rss), text


def main() -> None:
    """Build the inputs, run both sides, print the table and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds (10; quick 2)")
    parser.add_argument("--quick", action="store_true", help="small stand-ins, for the tests")
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 2 if args.quick else 10

    with tempfile.TemporaryDirectory(prefix="bench-initrd-", dir=os.environ.get("TMPDIR")) as t:
        work = Path(t)
        if args.quick:
            kernel = quick_kernel(work / "quick", module_bytes=32 << 20)
        else:
            kernel = debian.kernel()
        modules = work / f"modules-{kernel.release}.cpio"
        cpio.modules_cpio(kernel.modules, modules)
        root = work / "root" / "bin"
        root.mkdir(parents=True)
        busybox = os.urandom(1 << 20) if args.quick else debian.busybox().read_bytes()
        (root / "busybox").write_bytes(busybox)
        init = work / "init.cpio"
        cpio.init_cpio_from_dir(root.parent, init)
        parts = [modules, init]
        total = sum(p.stat().st_size for p in parts)

        ours_out, cat_out = work / "ours.initrd", work / "cat.initrd"
        report = work / "time.txt"
        cat_cmd = ["cat", *map(str, parts)]
        ours_cmd = [sys.executable, "-c", OURS, *map(str, parts), str(ours_out)]
        rows: dict[str, list[tuple[float, int]]] = {
            "cat": [],
            "concat (process)": [],
            "concat (call)": [],
        }
        measure(cat_cmd, cat_out, report)  # warm the page cache for both sides
        for i in range(args.rounds):
            for out in (ours_out, cat_out):
                out.unlink(missing_ok=True)
            # Alternate who goes first, so neither side always meets a colder or busier disk.
            for side in ("cat", "ours") if i % 2 == 0 else ("ours", "cat"):
                if side == "cat":
                    rows["cat"].append(measure(cat_cmd, cat_out, report)[:2])
                    continue
                wall, rss, printed = measure(ours_cmd, None, report)
                rows["concat (process)"].append((wall, rss))
                rows["concat (call)"].append((float(printed), rss))
        # Same bytes as cat, plus the NUL padding that aligns the init archive.
        assert ours_out.stat().st_size == total + (-modules.stat().st_size % 4)
        with ours_out.open("rb") as a, cat_out.open("rb") as b:
            assert a.read(1 << 20) == b.read(1 << 20)

    print(f"input: {total / 1e6:.1f} MB in {len(parts)} parts, {args.rounds} rounds")
    print(f"{'tool':<18} {'median s':>9} {'min s':>8} {'MB/s':>8} {'peak RSS MiB':>13}")
    medians = {}
    for name, results in rows.items():
        times = [t for t, _ in results]
        rss = max(r for _, r in results) / 1024
        medians[name] = statistics.median(times)
        # Only with small inputs (--quick); "concat (call)" is timed by the child itself.
        if name != "concat (call)" and medians[name] < TIME_RESOLUTION:
            print(f"({name}: under GNU time's resolution, counted as {TIME_RESOLUTION} s)")
            medians[name] = TIME_RESOLUTION
        speed = total / 1e6 / medians[name]
        print(f"{name:<18} {medians[name]:>9.3f} {min(times):>8.3f} {speed:>8.0f} {rss:>13.1f}")
    process = medians["concat (process)"] / medians["cat"]
    print(f"ratio_vs_cat_including_interpreter_start={process:.2f}")
    print(f"ratio_vs_cat={medians['concat (call)'] / medians['cat']:.2f}")


if __name__ == "__main__":
    main()
