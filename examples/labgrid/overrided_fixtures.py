"""pytest fixtures for labgrid: upload a kernel build to overrided, wait until the board's
artifacts are rendered, then power-cycle the board into barebox and ``devboot``.

Standard library only (plus pytest and labgrid), so it runs on any labgrid host. Load it with
``pytest_plugins = ["overrided_fixtures"]`` in your top-level ``conftest.py`` (or ``pytest -p
overrided_fixtures``). It reads from the labgrid environment file:

* ``options: overrided_url`` (``http://host:8080``), ``overrided_board`` (the board's name in
  overrided: its board file stem, or its hostname), ``overrided_build`` (folder to upload into);
* ``images: fit`` (``image.fit`` from ``make image.fit``), optionally ``images: modules``
  (``modules-<release>.cpio*`` from ``make modules-cpio-pkg``);

and the upload token from the ``OVERRIDED_TOKEN`` environment variable.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


class OverridedError(Exception):
    """overrided refused an upload, or the board did not resolve to the uploaded build."""


class Overrided:
    """A small client of overrided's HTTP API: uploads, board status, the event stream."""

    def __init__(self, url: str, token: str, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def board(self, name: str) -> dict[str, Any]:
        """``GET /api/boards/<name>``: build, configuration, reason, served names, warnings."""
        with urllib.request.urlopen(f"{self.url}/api/boards/{name}", timeout=30) as r:
            info: dict[str, Any] = json.load(r)
            return info

    @contextmanager
    def events(self, board: str) -> Iterator[Iterator[dict[str, Any]]]:
        """Follow ``/api/events`` for one board's render results (server-sent events).

        The server subscribes before it answers, so an upload made inside the ``with`` block
        cannot be missed.
        """
        url = f"{self.url}/api/events?kinds=board-rendered,board-failed&board={board}"
        with urllib.request.urlopen(url, timeout=self.timeout) as stream:

            def read() -> Iterator[dict[str, Any]]:
                for raw in stream:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("data: "):
                        yield json.loads(line[len("data: ") :])

            yield read()

    def upload(self, build: str, files: Mapping[str, Path]) -> dict[str, Any]:
        """Upload build outputs as one tarball (one index run); return overrided's answer."""
        with tempfile.TemporaryFile() as tar_file:
            with tarfile.open(fileobj=tar_file, mode="w") as tar:
                for name, path in files.items():
                    tar.add(path, arcname=name)
            size = tar_file.tell()
            tar_file.seek(0)
            request = urllib.request.Request(
                f"{self.url}/builds/{build}",
                data=tar_file,
                method="PUT",
                headers={
                    "Authorization": f"Bearer {self.token}",
                    "Content-Type": "application/x-tar",
                    "Content-Length": str(size),
                    "Accept": "application/json",
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as r:
                    answer: dict[str, Any] = json.load(r)
                    return answer
            except urllib.error.HTTPError as err:
                raise OverridedError(f"upload of {build} refused: {err.read().decode()}") from err

    def upload_and_wait(self, board: str, build: str, files: Mapping[str, Path]) -> dict[str, Any]:
        """Upload, then wait for the board's ``board-rendered`` event naming ``build``."""
        with self.events(board) as events:
            answer = self.upload(build, files)
            if not any(line.startswith(f"{board}: ") for line in answer["on_build"]):
                why = [line for line in answer["not_on_build"] if line.startswith(f"{board}: ")]
                raise OverridedError(f"{board} does not boot {build}: {why or answer}")
            for event in events:
                if event["kind"] == "board-failed":
                    raise OverridedError(f"{board}: rendering failed: {event['data']}")
                if event.get("build") == build:
                    return event
        raise OverridedError("the event stream ended before the board was rendered")


@pytest.fixture(scope="session")
def overrided(env: Any) -> Overrided:
    """The overrided server named by ``options: overrided_url`` of the labgrid environment."""
    url = env.config.get_option("overrided_url")
    token = os.environ.get("OVERRIDED_TOKEN", "")
    if not token:
        pytest.fail("set OVERRIDED_TOKEN to overrided's upload token (overrided serve prints it)")
    return Overrided(url, token)


@pytest.fixture(scope="session")
def uploaded_build(env: Any, overrided: Overrided) -> dict[str, Any]:
    """Upload the environment's ``images`` and wait until overrided re-rendered the board."""
    board = env.config.get_option("overrided_board")
    build = env.config.get_option("overrided_build", "labgrid")
    files = {"image.fit": Path(env.config.get_image_path("fit"))}
    images = env.config.data.get("images", {})
    if "modules" in images:
        modules = Path(env.config.get_image_path("modules"))
        files[modules.name] = modules
    return overrided.upload_and_wait(board, build, files)


@pytest.fixture
def devbooted(target: Any, strategy: Any, uploaded_build: dict[str, Any]) -> Any:
    """Power-cycle into barebox (the strategy's "barebox" state) and run ``devboot``.

    The environment sets ``BareboxDriver: boot_command: devboot``, so ``boot()`` fetches
    ``<user>-devboot-<hostname>`` over TFTP and boots what overrided just rendered.
    """
    strategy.transition("off")
    strategy.transition("barebox")
    barebox = target.get_driver("BareboxDriver")
    barebox.boot()
    barebox.await_boot()
    strategy.transition("shell")
    return target.get_driver("ShellDriver")
