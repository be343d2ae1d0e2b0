"""Example tests: run with `pytest --lg-env env.yaml` (the token in $OVERRIDED_TOKEN)."""

from __future__ import annotations

from typing import Any


def test_board_boots_the_staged_build(target: Any) -> None:
    """Stage `images:` on overrided; the board resolves to that build (no hardware needed)."""
    overrided = target.get_driver("OverridedDriver", activate=False)
    info = overrided.stage()
    assert info.build == overrided.build and info.error is None, info
    print(f"{info.name}: build {info.build}, configuration {info.configuration}: {info.reason}")
    for warning in info.warnings:
        print(f"warning: {warning}")


def test_devboot_boots_the_kernel(target: Any, strategy: Any) -> None:
    """Stage, then power-cycle into barebox, devboot, log in (needs the board)."""
    target.get_driver("OverridedDriver", activate=False).stage()
    strategy.transition("shell")  # OverridedStrategy: off, barebox, booted (devboot), shell
    target.get_driver("ShellDriver").run_check("uname -r")
