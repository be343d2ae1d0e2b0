"""``bench/bench_http.py`` in a tiny quick mode, so that it keeps working (no assertion on time)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_http.py"


@pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="the bench compares with nginx (apt install nginx)",
)
def test_bench_http_quick() -> None:
    r = subprocess.run(
        [sys.executable, str(BENCH), "--size-mib", "1", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1].startswith("ratio_vs_nginx=")
    assert float(lines[-1].partition("=")[2]) > 0
    assert any(line.startswith("overrided ") for line in lines)
