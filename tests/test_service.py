"""``OverridedService`` in this process: when the hostname-only boards are rendered.

After a refresh publishes the board files' renders, the boards that fetch them go first: the
hostname-only renders (one per FIT configuration) wait until requests pause, unless a request
is held for one of them.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from overrided import service as service_mod
from overrided.config import Settings
from overrided.served import View
from overrided.service import OverridedService
from tests.support.fits import sample_fit

BOARD = 'user = "afa"\ncompatible = ["v,board-a", "v,soc"]\n'
SCRIPT_A = "afa-devboot-board-a"  # a board file's board
LINUX_B = "none-linux-board-b"  # a hostname-only board's FIT


def _setup(tmp_path: Path) -> tuple[Settings, Path, Path]:
    one = sample_fit(tmp_path / "fit1").fit
    two = sample_fit(tmp_path / "fit2", hashes=("sha1",)).fit
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "a.toml").write_text(BOARD)
    build = tmp_path / "kernel-builds" / "b1"
    build.mkdir(parents=True)
    shutil.copy(one, build / "image.fit")
    settings = Settings(
        boards_dir=tmp_path / "boards",
        builds_dir=tmp_path / "kernel-builds",
        store_dir=tmp_path / "store",
        keys_dir=tmp_path / "keys",
        quiet=0.0,
    )
    return settings, build, two


async def _asking(service: OverridedService, seconds: float, every: float = 0.02) -> None:
    """A board asking for its script every ``every`` s for ``seconds`` s."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        service.lookup(SCRIPT_A)
        await asyncio.sleep(every)


def _rebuild(build: Path, fit: Path) -> None:
    shutil.copy(fit, build / "image.fit.tmp")
    (build / "image.fit.tmp").replace(build / "image.fit")


def test_hostname_only_boards_are_rendered_once_requests_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_mod, "QUIET", 0.3)
    monkeypatch.setattr(service_mod, "LATEST", 30.0)
    settings, build, two = _setup(tmp_path)

    async def run() -> None:
        service = OverridedService(settings)
        await service.refresh(None, boards=True)  # nobody asks: both kinds rendered at once
        try:
            old_script, old_b = service.lookup(SCRIPT_A).view, service.lookup(LINUX_B).view
            _rebuild(build, two)
            asking = asyncio.create_task(_asking(service, 1.0))
            refreshing = asyncio.create_task(service.refresh({"b1"}))
            while service.lookup(SCRIPT_A).view == old_script:
                await asyncio.sleep(0.01)
            # The board file's board is served the new build while the requests go on; the
            # hostname-only board is not rendered anew until they pause.
            await asyncio.sleep(0.3)
            assert service.lookup(LINUX_B).view == old_b and not refreshing.done()
            await asking
            assert service.lookup(LINUX_B).view == old_b
            await asyncio.wait_for(refreshing, 10)
            assert service.lookup(LINUX_B).view != old_b
        finally:
            await service.close()

    asyncio.run(run())


def test_a_held_request_has_the_hostname_only_boards_rendered_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_mod, "QUIET", 0.3)
    monkeypatch.setattr(service_mod, "LATEST", 30.0)
    settings, build, two = _setup(tmp_path)

    async def run() -> None:
        service = OverridedService(settings)
        await service.refresh(None, boards=True)
        try:
            old_script, old_b = service.lookup(SCRIPT_A).view, service.lookup(LINUX_B).view
            _rebuild(build, two)
            asking = asyncio.create_task(_asking(service, 3.0))
            refreshing = asyncio.create_task(service.refresh({"b1"}))
            while service.lookup(SCRIPT_A).view == old_script:
                await asyncio.sleep(0.01)
            # A name only a hostname-only render could serve is held: the renders go now,
            # although the other board keeps asking.
            with pytest.raises(service_mod.Held):
                service.lookup("none-devboot-no-such-board", client="192.0.2.7")
            await asyncio.wait_for(refreshing, 2.0)
            assert not asking.done()
            new_b: View = service.lookup(LINUX_B).view
            assert new_b != old_b
            asking.cancel()
        finally:
            await service.close()

    asyncio.run(run())
