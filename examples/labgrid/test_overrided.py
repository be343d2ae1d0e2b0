"""Example tests: run with `pytest --lg-env env.yaml -p overrided_fixtures`."""

from __future__ import annotations

from typing import Any

from overrided_fixtures import Overrided


def test_board_resolves_to_upload(
    env: Any, overrided: Overrided, uploaded_build: dict[str, Any]
) -> None:
    """The uploaded build is what the board will boot (no hardware needed)."""
    board = overrided.board(env.config.get_option("overrided_board"))
    assert board["build"] == uploaded_build["build"]
    assert not board["error"]


def test_devbooted_kernel_runs(devbooted: Any) -> None:
    """Boot the board with devboot and check the kernel came up (needs the board)."""
    devbooted.run_check("uname -r")
