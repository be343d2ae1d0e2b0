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


def test_closed_pipe_ends_quietly() -> None:
    # The reader is gone before the command writes (as with `| head` on long output).
    p = subprocess.Popen(
        [sys.executable, "-m", "overrided", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) in (0, 141)
    assert "Traceback" not in err
