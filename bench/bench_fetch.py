"""Fetching one artifact by URL and checking its sha256: overrided's fetch vs curl + sha256sum.

A build by URL downloads each file and checks its digest. Here both sides do that for one file
served by Debian's nginx on loopback (``tests/support/nginx.py``): overrided's
``fetch_file`` (aiohttp, hashing while it writes into a file) and ``curl -o`` followed by
``sha256sum``, as a CI script would; and, as a bound, curl alone, checking nothing. Runs
alternate; the table shows each run and the medians; ``ratio_vs_curl=`` is overrided's median
throughput over curl + sha256sum's (above 1: faster), ``ratio_vs_curl_download=`` over curl
alone's.

    python bench/bench_fetch.py [--size-mib 256] [--runs 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from overrided.fetch import FetchSettings, client_session, fetch_file, parse_url  # noqa: E402
from tests.support.nginx import Nginx  # noqa: E402


async def ours(url: str, dst: Path, settings: FetchSettings) -> tuple[float, str]:
    """One fetch with overrided's fetcher: (seconds, sha256)."""
    start = time.perf_counter()
    async with client_session(settings) as session:
        got = await fetch_file(session, parse_url(url), dst, settings, lambda _r, _t: None)
    return time.perf_counter() - start, got.sha256


def curl(url: str, dst: Path, *, check: bool = True) -> tuple[float, str | None]:
    """One download with curl, then (``check``) sha256sum: (seconds, sha256)."""
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail", "-o", str(dst), url], check=True, timeout=600)
    if not check:
        return time.perf_counter() - start, None
    out = subprocess.run(
        ["sha256sum", str(dst)], check=True, capture_output=True, text=True, timeout=600
    )
    return time.perf_counter() - start, out.stdout.split()[0]


def main() -> None:
    """Run the comparison; print the table and ``ratio_vs_curl=``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="8 MiB, 2 runs (the test suite)")
    args = ap.parse_args()
    size, runs = (8, 2) if args.quick else (args.size_mib, args.runs)
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        root = Path(tmp)
        nginx = Nginx(root / "nginx")
        data = os.urandom(1 << 20) * size
        (nginx.www / "image.fit").write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        del data
        url = nginx.url("image.fit")
        settings = FetchSettings(allow=(nginx.url(""),), max_size=size << 21)
        times: dict[str, list[float]] = {"overrided": [], "curl": [], "curl-only": []}
        with nginx:
            print(f"{'run':>4} {'tool':>10} {'seconds':>8} {'MiB/s':>8}")
            for i in range(runs):
                tools = ("overrided", "curl", "curl-only")
                for tool in tools if i % 2 == 0 else tools[::-1]:
                    dst = root / f"out-{tool}"
                    got: str | None
                    if tool == "overrided":
                        seconds, got = asyncio.run(ours(url, dst, settings))
                    else:
                        seconds, got = curl(url, dst, check=tool == "curl")
                    if got not in (digest, None):
                        raise SystemExit(f"{tool}: wrong digest {got}")
                    dst.unlink()
                    times[tool].append(seconds)
                    print(f"{i + 1:>4} {tool:>10} {seconds:>8.3f} {size / seconds:>8.1f}")
        med = {tool: statistics.median(t) for tool, t in times.items()}
        for tool, seconds in med.items():
            print(f"{'median':>4} {tool:>10} {seconds:>8.3f} {size / seconds:>8.1f}")
        # curl-only checks nothing: a bound on what any download of the file costs here.
        print(f"ratio_vs_curl_download={med['curl-only'] / med['overrided']:.2f}")
        print(f"ratio_vs_curl={med['curl'] / med['overrided']:.2f}")


if __name__ == "__main__":
    main()
