"""Signing a per-board FIT of Debian's arm64 kernel: ours vs ``mkimage -F -k`` (U-Boot tools).

Input: Debian's arm64 ``Image`` (~33 MB) and one board DTB, built into a FIT, trimmed to the
board's configuration with sha256 hash nodes, and given a ``signature-1`` node: the FIT a
board with ``sign = "<key>"`` gets. Each round re-signs that file in place with the same
RSA-2048 key, ours (read, `sign_configuration`, write) and mkimage (``-F -k keys``), in
alternating order; every output is checked to verify, and the two ``value`` properties to be
byte-identical. mkimage also recomputes every image hash on ``-F``; ours keeps hash nodes that
exist (the trimmer wrote them from the same bytes), which is most of the difference.

    .venv/bin/python bench/bench_sign.py [--repeat N] [--board vendor/board.dtb]
    .venv/bin/python bench/bench_sign.py --quick    # a 1 MiB stand-in Image, 3 rounds: the tests

Prints a table of medians and a final ``ratio_vs_mkimage=`` line (median mkimage / median ours).

``--quick`` does the same with bench_fit's ``quick_kernel()`` (bench_latency's quick inputs:
a 1 MiB stand-in Image and the board's DTB made by dtc; nothing to download) in 3 rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import libfdt
from bench_fit import quick_kernel

from overrided.fit import Fit, build_fit
from overrided.fit.sign import sign_configuration
from overrided.fit.trim import trim_bytes
from overrided.fit.verify import verify
from overrided.keys import load_private_key_file
from tests.support import debian


def _value(blob: bytes, config: str) -> bytes:
    fdt = libfdt.FdtRo(blob)
    return bytes(fdt.getprop(fdt.path_offset(f"/configurations/{config}/signature-1"), "value"))


def main() -> int:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, help="rounds (7; quick 3)")
    parser.add_argument("--board", default="rockchip/rk3399-rockpro64-v2.dtb")
    parser.add_argument("--quick", action="store_true", help="a small FIT, for the test suite")
    args = parser.parse_args()
    if args.repeat is None:
        args.repeat = 3 if args.quick else 7

    with tempfile.TemporaryDirectory(prefix="bench-sign-") as tmp_name:
        tmp = Path(tmp_name)
        kernel = quick_kernel(tmp / "quick") if args.quick else debian.kernel()
        keys = tmp / "keys"
        keys.mkdir()
        for cmd in (
            ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            ["openssl", "req", "-batch", "-new", "-x509", "-key", keys / "dev.key"],
        ):
            out = keys / ("dev.key" if "genpkey" in cmd else "dev.crt")
            subprocess.run([*map(str, cmd), "-out", str(out)], check=True, capture_output=True)
        os.chmod(keys / "dev.key", 0o600)
        key = load_private_key_file(keys / "dev.key")

        build_fit(kernel.image, [kernel.dtbs / args.board], tmp / "build.itb")
        trimmed = trim_bytes(Fit.open(tmp / "build.itb"), "conf-1", add_hashes=True)
        # The template both re-sign: our first signature leaves the node mkimage needs.
        source = tmp / "source.itb"
        source.write_bytes(sign_configuration(trimmed, "conf-1", key, key_name="dev"))
        size = source.stat().st_size

        def ours() -> bytes:
            dest = tmp / "ours.itb"
            blob = sign_configuration(source.read_bytes(), "conf-1", key, key_name="dev")
            dest.write_bytes(blob)
            return blob

        def mkimage() -> bytes:
            dest = tmp / "mkimage.itb"
            shutil.copyfile(source, dest)
            subprocess.run(
                ["mkimage", "-F", "-k", str(keys), str(dest)], check=True, capture_output=True
            )
            return dest.read_bytes()

        times: dict[str, list[float]] = {"ours": [], "mkimage": []}
        runners = {"ours": ours, "mkimage": mkimage}
        results: dict[str, bytes] = {}
        for i in range(args.repeat):
            order = ["ours", "mkimage"] if i % 2 == 0 else ["mkimage", "ours"]
            for name in order:
                start = time.perf_counter()
                results[name] = runners[name]()
                times[name].append(time.perf_counter() - start)
        public = key.public_key()
        for name, blob in results.items():
            report = verify(blob, public)
            assert report.ok, (name, report.lines())
        assert _value(results["ours"], "conf-1") == _value(results["mkimage"], "conf-1")

    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"signing a per-board FIT: {args.board}, {size / 1e6:.1f} MB, RSA-2048")
    print(f"{args.repeat} rounds, alternating order; outputs verify, values byte-identical")
    print(f"{'signer':<10} {'median s':>10} {'min s':>8} {'max s':>8}")
    for name, t in times.items():
        print(f"{name:<10} {med[name]:>10.3f} {min(t):>8.3f} {max(t):>8.3f}")
    print(f"ratio_vs_mkimage={med['mkimage'] / med['ours']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
