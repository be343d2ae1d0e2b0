"""Every benchmark runs in its tiny ``--quick`` mode, so that none rots.

Each must exit 0 and print its closing lines (``ratio_vs_<peer>=`` and the like). Nothing here
asserts on a time or a ratio: the figures of a quick run on a loaded CI machine mean nothing.
The quick modes build small inputs with mkimage/dtc and the ``overrided`` commands, start the
real ``overrided serve`` (and tftpd-hpa) on 127.0.0.1 and fetch with tftp-hpa and curl.
bench_tftp.py runs its servers in a network namespace of its own (``ip netns``, as root, as
soak.py needs too).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# bench script -> the closing lines it must print, as name=value
QUICK = {
    "bench_scale.py": ("store_growth_ratio", "peak_rss_mb", "ratio_vs_cp"),
    "bench_latency.py": ("ratio_vs_tftpd_hpa",),
    "soak.py": ("completion", "ratio_vs_tftpd_hpa"),
    "bench_tftp.py": ("ratio_vs_tftpd_hpa",),
    "bench_fit.py": ("ratio_vs_naive",),
    "bench_initrd.py": ("ratio_vs_cat",),
    "bench_sign.py": ("ratio_vs_mkimage",),
}


def run_quick(script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``bench/<script> --quick``; on a timeout, SIGTERM first so it stops its servers."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / script), "--quick"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"{script} --quick did not finish in {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("script", sorted(QUICK))
def test_quick_mode_completes_and_prints_its_ratios(script: str) -> None:
    r = run_quick(script)
    assert r.returncode == 0, f"{script} --quick exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    for name in QUICK[script]:
        # A number, or "timeout" when the service did not serve every board in time.
        assert re.search(rf"^{name}=(\d+(\.\d+)?|timeout)$", r.stdout, re.M), (
            f"{script} --quick printed no {name}= line:\n{r.stdout}"
        )
