"""The CLI's contract: version, usage errors, one-line user errors."""

from __future__ import annotations

import subprocess
import sys

from overrided import __version__


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overrided", *args], capture_output=True, text=True, timeout=60
    )


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"overrided {__version__}"


def test_unknown_command_is_a_usage_error() -> None:
    r = run("no-such-command")
    assert r.returncode == 2
    assert "invalid choice" in r.stderr
