"""Per-board FIT trimming on Debian's arm64 kernel FIT (~60 MB, ~580 configurations).

Ours: index the FIT once (`Fit.open`), then per board write a trimmed FIT from slices of the
source (`trim`). Peer, in the same run: the naive way with pylibfdt, `Fdt(blob)`, `del_node` of
every other configuration and unreferenced image, `pack`, write. Both write to a file in the
same folder; both outputs are checked to hold the same kernel and DTB bytes.

    .venv/bin/python bench/bench_fit.py [--repeat N] [--naive-repeat N]
    .venv/bin/python bench/bench_fit.py --quick    # a small FIT, 3 and 2 runs: the tests

Prints a table (medians) and a final ``ratio_vs_naive=`` line (median naive / median ours over
the boards).

``--quick`` runs the same on bench_latency's quick inputs instead of Debian's kernel (nothing to
download): a 1 MiB stand-in Image and four of the boards' DTBs made by dtc with their real
root compatibles (the fifth board is then not in the kernel, and skipped), 3 runs per board
for ours and 2 for the naive way. ``quick_kernel()`` gives those inputs to bench_initrd and
bench_sign too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import libfdt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from bench_latency import QUICK_RELEASE, quick_inputs

from overrided.fit import Fit, build_fit, find_dtbs, match, trim
from overrided.fit.model import decode_list
from tests.support import debian

BOARDS = [
    "rockchip/rk3568-rock-3a.dtb",
    "freescale/imx8mm-evk.dtb",
    "rockchip/rk3399-rockpro64-v2.dtb",
    "broadcom/bcm2711-rpi-4-b.dtb",
    "allwinner/sun50i-a64-pine64-plus.dtb",
]


def quick_kernel(
    folder: Path, *, kernel_bytes: int = 1 << 20, module_bytes: int = 2 << 20
) -> debian.Kernel:
    """bench_latency's quick inputs, made in ``folder``, as a stand-in for Debian's kernel.

    ``quick_inputs()`` writes a stand-in ``Image`` of ``kernel_bytes``, ``dtbs/`` with one DTB
    per ``QUICK_BOARDS`` entry (dtc) and ``lib/modules/<QUICK_RELEASE>`` with one stand-in
    module of ``module_bytes``; it also builds their FIT and modules CPIO, which the benches
    that use this make themselves, timed, as they do from Debian's kernel.
    """
    folder.mkdir(parents=True, exist_ok=True)
    quick_inputs(folder, kernel_bytes=kernel_bytes, module_bytes=module_bytes)
    kernel = debian.Kernel(
        release=QUICK_RELEASE,
        image=folder / "Image",
        dtbs=folder / "dtbs",
        modules=folder / "lib" / "modules" / QUICK_RELEASE,
    )
    for path in (kernel.image, kernel.dtbs, kernel.modules):
        if not path.exists():
            raise SystemExit(f"quick_inputs() made no {path.relative_to(folder)} in {folder}")
    return kernel


def naive_trim(blob: bytes, config: str, keep: list[str], out: Path) -> None:
    """The peer: delete everything else with libfdt, pack, set default, write."""
    fdt = libfdt.Fdt(blob)
    confs = fdt.path_offset("/configurations")
    names = []
    node = fdt.first_subnode(confs, quiet=(libfdt.NOTFOUND,))
    while node >= 0:
        names.append(fdt.get_name(node))
        node = fdt.next_subnode(node, quiet=(libfdt.NOTFOUND,))
    for name in names:
        if name != config:
            fdt.del_node(fdt.path_offset(f"/configurations/{name}"))
    images = fdt.path_offset("/images")
    names = []
    node = fdt.first_subnode(images, quiet=(libfdt.NOTFOUND,))
    while node >= 0:
        names.append(fdt.get_name(node))
        node = fdt.next_subnode(node, quiet=(libfdt.NOTFOUND,))
    for name in names:
        if name not in keep:
            fdt.del_node(fdt.path_offset(f"/images/{name}"))
    fdt.setprop_str(fdt.path_offset("/configurations"), "default", config)
    fdt.pack()
    out.write_bytes(fdt.as_bytearray())


def bare_copy(source: Path, length: int, out: Path) -> None:
    """Not a peer but the floor: copy `length` bytes of `source` into `out` in the kernel."""
    with source.open("rb") as src, out.open("wb") as dst:
        done = 0
        while done < length:
            n = os.copy_file_range(src.fileno(), dst.fileno(), length - done, done)
            if n == 0:
                break
            done += n


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, list[float]]:
    """Median seconds over `repeat` runs after one warm-up run."""
    fn()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, help="runs per board for ours (15; quick 3)")
    parser.add_argument("--naive-repeat", type=int, help="runs per board, naive (3; quick 2)")
    parser.add_argument("--quick", action="store_true", help="a small FIT, for the test suite")
    args = parser.parse_args()
    if args.repeat is None:
        args.repeat = 3 if args.quick else 15
    if args.naive_repeat is None:
        args.naive_repeat = 2 if args.quick else 3

    with tempfile.TemporaryDirectory(prefix="bench-fit-") as tmp:
        work = Path(tmp)
        kernel = quick_kernel(work / "quick") if args.quick else debian.kernel()
        source = work / "image.fit"
        dtbs = find_dtbs(kernel.dtbs)
        start = time.perf_counter()
        build_fit(kernel.image, dtbs, source)
        build_s = time.perf_counter() - start
        size = source.stat().st_size
        print(f"kernel {kernel.release}: {len(dtbs)} DTBs, FIT {size / 1e6:.1f} MB, built in "
              f"{build_s:.2f} s")  # fmt: skip

        start = time.perf_counter()
        fit = Fit.open(source)
        index_s = time.perf_counter() - start
        blob = source.read_bytes()  # the peer gets the file in memory for free
        print(f"index (Fit.open, once): {index_s * 1e3:.1f} ms")
        print()
        header = (
            f"{'board':<24} {'config':<9} {'out MB':>7} {'ours ms':>8} {'naive ms':>9} {'ratio':>7}"
        )
        print(header)
        print("-" * len(header))
        ratios = []
        ours_all = []
        floors: list[float] = []
        for name in BOARDS:
            dtb = kernel.dtbs / name
            if not dtb.exists():
                print(f"{name}: not in this kernel, skipped")
                continue
            board = decode_list(bytes(libfdt.FdtRo(dtb.read_bytes()).getprop(0, "compatible")))
            config = match(fit, board, "barebox").config
            assert config is not None, board
            keep = fit.configurations[config].references()
            ours_out, naive_out = work / "ours.fit", work / "naive.fit"
            ours, _ = timed(lambda c=config, o=ours_out: trim(fit, c, o), args.repeat)
            naive, _ = timed(
                lambda c=config, k=keep, o=naive_out: naive_trim(blob, c, k, o), args.naive_repeat
            )
            a, b = Fit.open(ours_out), Fit.open(naive_out)
            assert list(a.images) == list(b.images)
            assert set(a.images) == set(keep)
            for unit in keep:
                assert bytes(a.images[unit].data()) == bytes(b.images[unit].data())
            assert bytes(a.images[fit.configurations[config].fdt[0]].data()) == dtb.read_bytes()
            out_bytes = ours_out.stat().st_size
            floor, _ = timed(lambda n=out_bytes: bare_copy(source, n, work / "copy"), args.repeat)
            floors.append(floor)
            out_mb = out_bytes / 1e6
            ratios.append(naive / ours)
            ours_all.append(ours)
            print(f"{board[0]:<24} {config:<9} {out_mb:>7.1f} {ours * 1e3:>8.1f} "
                  f"{naive * 1e3:>9.1f} {naive / ours:>6.0f}x")  # fmt: skip
        print()
        print(f"ours: median per board {statistics.median(ours_all) * 1e3:.1f} ms "
              f"(target <= 50 ms); index once {index_s * 1e3:.1f} ms")  # fmt: skip
        print(f"floor: copying the same number of bytes with copy_file_range takes "
              f"{statistics.median(floors) * 1e3:.1f} ms (median)")  # fmt: skip
        print(f"ratio_vs_naive={statistics.median(ratios):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
