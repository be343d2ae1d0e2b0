"""The labgrid example (``examples/labgrid``) against the real ``overrided serve``.

The client part (upload a build, wait for ``board-rendered``) needs nothing but the server.
The labgrid part loads ``env.yaml`` with labgrid itself and runs the example's pytest tests
through labgrid's pytest plugin; it is skipped only when labgrid is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.fits import SampleFit, sample_fit
from tests.support.serve import Served

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "labgrid"
BOARD = 'compatible = ["v,board-a", "v,soc"]\narch = "arm64"\n'


def example_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "overrided_fixtures", EXAMPLE / "overrided_fixtures.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory) -> SampleFit:
    return sample_fit(tmp_path_factory.mktemp("fit"))


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Served]:
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "board-a.toml").write_text(BOARD)
    with Served(tmp_path) as s:
        yield s


def test_example_client_uploads_and_waits_for_render(srv: Served, fit: SampleFit) -> None:
    client = example_module().Overrided(srv.http_base, srv.token, timeout=60)
    event = client.upload_and_wait("board-a", "k1", {"image.fit": fit.fit})
    assert event["kind"] == "board-rendered"
    assert event["board"] == "board-a" and event["build"] == "k1"
    # What the board fetches next is the new build: the devboot script names its FIT.
    fit_name = client.board("board-a")["artifacts"]["fit"]
    assert fit_name.encode() in srv.tftp_get("none-devboot-board-a")


def test_example_client_says_why_a_board_does_not_boot(srv: Served, tmp_path: Path) -> None:
    other = sample_fit(tmp_path / "other", configs=[])  # no configuration at all
    module = example_module()
    client = module.Overrided(srv.http_base, srv.token, timeout=60)
    with pytest.raises(module.OverridedError, match=r"k9 refused|does not boot k9"):
        client.upload_and_wait("board-a", "k9", {"image.fit": other.fit})


def test_labgrid_runs_the_example_tests(srv: Served, fit: SampleFit, tmp_path: Path) -> None:
    pytest.importorskip("labgrid", reason="labgrid is optional: pip install 'overrided[labgrid]'")
    from labgrid import Environment

    # The example environment, pointed at this server and this FIT.
    text = (EXAMPLE / "env.yaml").read_text()
    text = text.replace("http://192.0.2.1:8080", srv.http_base)
    text = text.replace("overrided_board: rock3a", "overrided_board: board-a")
    text = text.replace("../../linux/arch/arm64/boot/image.fit", str(fit.fit))
    env_file = tmp_path / "env.yaml"
    env_file.write_text(text)

    target = Environment(str(env_file)).get_target("main")
    assert target is not None
    barebox = target.get_driver("BareboxDriver", activate=False)
    assert barebox.boot_command == "devboot"

    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(tmp_path / "pytest.ini"),
            "-p",
            "overrided_fixtures",
            "-p",
            "no:cacheprovider",
            "--lg-env",
            str(env_file),
            str(EXAMPLE / "test_overrided.py"),
            "-k",
            "test_board_resolves_to_upload",
            "-q",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(EXAMPLE), "OVERRIDED_TOKEN": srv.token},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 deselected" in r.stdout
    assert srv.api("/api/boards/board-a")["build"] == "labgrid"
