"""``OverridedService`` in this process: when the hostname-only boards are rendered.

After a refresh publishes the board files' renders, the boards that fetch them go first: the
hostname-only renders (one per FIT configuration) wait until requests pause, unless a request
is held for one of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from overrided import service as service_mod
from overrided.served import View
from overrided.service import OverridedService
from tests.support.serve import rebuild, sample_service

BOARD = 'user = "afa"\ncompatible = ["v,board-a", "v,soc"]\n'
SCRIPT_A = "afa-devboot-board-a"  # a board file's board
LINUX_B = "none-linux-board-b"  # a hostname-only board's FIT


@dataclass
class Rebuilt:
    """A rebuild whose board files' renders are published while board a keeps asking."""

    service: OverridedService
    old_b: View  # the hostname-only board's FIT before the rebuild
    asking: asyncio.Task[None]  # board a asking for its script
    refreshing: asyncio.Task[None]  # the refresh of the rebuild


async def _asking(service: OverridedService, seconds: float, every: float = 0.02) -> None:
    """A board asking for its script every ``every`` s for ``seconds`` s."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        service.lookup(SCRIPT_A)
        await asyncio.sleep(every)


def _rebuilt_while_asked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    asking_for: float,
    check: Callable[[Rebuilt], Awaitable[None]],
) -> None:
    """Serve build b1, rebuild it while board a asks for its script for ``asking_for`` s, wait
    until board a is served the rebuild, then ``check``."""
    monkeypatch.setattr(service_mod, "QUIET", 0.3)
    monkeypatch.setattr(service_mod, "LATEST", 30.0)
    settings, build, two = sample_service(tmp_path, BOARD)

    async def run() -> None:
        service = OverridedService(settings)
        await service.refresh(None, boards=True)  # nobody asks: both kinds rendered at once
        try:
            old_script, old_b = service.lookup(SCRIPT_A).view, service.lookup(LINUX_B).view
            rebuild(build, two)
            asking = asyncio.create_task(_asking(service, asking_for))
            refreshing = asyncio.create_task(service.refresh({"b1"}))
            while service.lookup(SCRIPT_A).view == old_script:
                await asyncio.sleep(0.01)
            await check(Rebuilt(service, old_b, asking, refreshing))
            asking.cancel()
        finally:
            await service.close()

    asyncio.run(run())


def test_hostname_only_boards_are_rendered_once_requests_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def check(r: Rebuilt) -> None:
        # The board file's board is served the new build while the requests go on; the
        # hostname-only board is not rendered anew until they pause.
        await asyncio.sleep(0.3)
        assert r.service.lookup(LINUX_B).view == r.old_b and not r.refreshing.done()
        await r.asking
        assert r.service.lookup(LINUX_B).view == r.old_b
        await asyncio.wait_for(r.refreshing, 10)
        assert r.service.lookup(LINUX_B).view != r.old_b

    _rebuilt_while_asked(tmp_path, monkeypatch, 1.0, check)


def test_a_held_request_has_the_hostname_only_boards_rendered_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def check(r: Rebuilt) -> None:
        # A name only a hostname-only render could serve is held: the renders go now,
        # although the other board keeps asking.
        with pytest.raises(service_mod.Held):
            r.service.lookup("none-devboot-no-such-board", client="192.0.2.7")
        await asyncio.wait_for(r.refreshing, 2.0)
        assert not r.asking.done()
        assert r.service.lookup(LINUX_B).view != r.old_b

    _rebuilt_while_asked(tmp_path, monkeypatch, 3.0, check)
