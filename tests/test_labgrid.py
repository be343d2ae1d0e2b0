"""``overrided.labgrid`` against the real ``overrided serve`` on loopback, through labgrid itself.

labgrid loads each environment (``imports: [overrided.labgrid]``), so the resource and driver are
registered with labgrid's own ``target_factory`` and bound as labgrid binds them. Builds are
staged by upload and by URL (from nginx, ``tests/support/nginx.py``); failures
come back as ``StageError`` with the server's reason. The last test runs the example
(``examples/labgrid``) through labgrid's pytest plugin. Booting barebox in QEMU with the driver
is ``tests/e2e/test_labgrid.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labgrid import Environment  # in the test extra: these tests never skip

from overrided.labgrid import StageError, answer_verdict, event_verdict, settled, staged_files
from overrided.state import BoardInfo
from tests.support.fits import SampleFit, sample_fit
from tests.support.nginx import Nginx
from tests.support.serve import REPO, Served

EXAMPLE = REPO / "examples" / "labgrid"
BOARD = 'compatible = ["v,board-a", "v,soc"]\narch = "arm64"\n'


# --- what answers and events say of a stage (pure) --------------------------------------------


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ({"on_build": ["board-a: none-linux-board-a"], "not_on_build": []}, True),
        ({"on_build": ["board-ab: x"], "not_on_build": ["board-b: no match"]}, False),  # prefix
        ({"build": "k1"}, False),  # an answer that does not say: wait for events
    ],
)
def test_answer_verdict(answer: dict[str, Any], verdict: bool) -> None:
    assert answer_verdict(answer, "board-a", "k1") is verdict


def test_answer_verdict_gives_the_reason_a_board_does_not_boot_the_build() -> None:
    answer = {"on_build": [], "not_on_build": ["board-a: no configuration matches v,board-a"]}
    with pytest.raises(StageError, match=r"^board board-a does not boot build k1: no config"):
        answer_verdict(answer, "board-a", "k1")


@pytest.mark.parametrize(
    ("event", "verdict"),
    [
        ({"kind": "board-rendered", "board": "board-a", "build": "k1"}, True),
        ({"kind": "board-rendered", "board": "board-a", "build": "k0"}, None),
        ({"kind": "board-rendered", "board": "board-b", "build": "k1"}, None),
        ({"kind": "board-failed", "board": "board-b", "data": {"error": "x"}}, None),
        ({"kind": "build-failed", "build": "k0", "data": {"error": "x"}}, None),
        ({"kind": "build-indexed", "build": "k1"}, None),  # the board's state decides
    ],
)
def test_event_verdict(event: dict[str, Any], verdict: bool | None) -> None:
    assert event_verdict(event, "board-a", "k1") is verdict


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"kind": "build-failed", "build": "k1", "data": {"error": "not a FIT"}}, "k1 refused"),
        ({"kind": "board-failed", "board": "board-a", "data": {"error": "bad"}}, "not rendered"),
    ],
)
def test_event_verdict_failures(event: dict[str, Any], message: str) -> None:
    with pytest.raises(StageError, match=message):
        event_verdict(event, "board-a", "k1")


def test_staged_files() -> None:
    by_url = {"files": [{"name": "image.fit", "outcome": "in-store", "bytes": 0, "url": "u"}]}
    assert staged_files(by_url) == ["image.fit: in-store, 0 bytes"]
    assert staged_files({"files": ["image.fit", "x.dtb"]}) == ["image.fit", "x.dtb"]  # upload
    assert staged_files({}) == []


def test_settled() -> None:
    on = BoardInfo(name="a", hostname="a", build="k1", artifacts={"fit": "f"}, file="boards/a")
    assert settled(on, "k1") is True
    other = on.model_copy(update={"build": "k0", "reason": "k1 has no configuration for a"})
    assert settled(other, "k1") is None  # not indexed yet, as far as we know
    with pytest.raises(StageError, match="k1 has no configuration for a"):
        settled(other, "k1", strict=True)
    hostname_only = other.model_copy(update={"file": None})
    assert settled(hostname_only, "k1", strict=True) is None  # rendered a moment later


# --- the driver in labgrid, against overrided serve -----------------------------------------


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample FIT (four configurations) as ``make image.fit`` names it."""
    return image_fit(sample_fit(tmp_path_factory.mktemp("fit")))


def image_fit(sample: SampleFit) -> Path:
    """A copy of ``sample``'s FIT named ``image.fit``, in a folder of its own."""
    out = sample.fit.parent / "build" / "image.fit"
    out.parent.mkdir()
    shutil.copy(sample.fit, out)
    return out


@pytest.fixture
def files(fit: Path, tmp_path: Path) -> Iterator[Nginx]:
    """The artifact store: nginx serving ``image.fit`` on loopback."""
    with Nginx(tmp_path / "nginx") as store:
        shutil.copy(fit, store.www / fit.name)
        yield store


@pytest.fixture
def srv(tmp_path: Path, files: Nginx) -> Iterator[Served]:
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "board-a.toml").write_text(BOARD)
    with Served(tmp_path, extra=["--allow-url", files.url("")]) as s:
        yield s


def environment(
    srv: Served, tmp_path: Path, image: Path, *, token: bool = True, board: str = "board-a"
) -> Any:
    """A labgrid ``Environment`` with ``OverridedBoard`` and ``OverridedDriver`` for ``srv``."""
    resource: dict[str, str] = {"url": srv.http_base, "board": board}
    if token:
        (tmp_path / "token").write_text(srv.token + "\n")
        resource["token_file"] = "token"  # relative to the environment file
    env = {
        "imports": ["overrided.labgrid"],
        "targets": {
            "main": {
                "resources": {"OverridedBoard": resource},
                "drivers": {"OverridedDriver": {"build": "k1", "images": ["fit"], "timeout": 60}},
            }
        },
        "images": {"fit": str(image)},
    }
    path = tmp_path / "env.yaml"
    path.write_text(json.dumps(env))  # JSON is YAML
    return Environment(str(path))


@pytest.fixture
def no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OVERRIDED_TOKEN", raising=False)


@pytest.mark.usefixtures("no_env_token")
def test_stage_uploads_the_images_and_reports_the_resolution(
    srv: Served, fit: Path, tmp_path: Path
) -> None:
    env = environment(srv, tmp_path, fit)
    target = env.get_target("main")
    try:
        driver = target.get_driver("OverridedDriver", activate=False)
        assert driver.board.url == srv.http_base and driver.barebox is None  # optional binding
        assert driver.resolution().build is None
        info = driver.stage()
        assert (info.build, info.configuration) == ("k1", "conf-a"), info
        assert info.reason and info.error is None, info
        assert info == driver.resolution()
        # The board's next devboot fetches this build's FIT: its script names it.
        assert info.artifacts["fit"].encode() in srv.tftp_get(info.served["barebox"][0])
        assert (srv.builds / "k1" / "image.fit").read_bytes() == fit.read_bytes()
    finally:
        target.cleanup()


@pytest.mark.usefixtures("no_env_token")
def test_stage_says_why_the_board_does_not_boot_the_build(srv: Served, tmp_path: Path) -> None:
    other = image_fit(sample_fit(tmp_path / "other", configs=[]))  # no configuration at all
    env = environment(srv, tmp_path, other)
    target = env.get_target("main")
    try:
        driver = target.get_driver("OverridedDriver", activate=False)
        with pytest.raises(
            StageError, match=r"^board board-a does not boot build k9: .*no match"
        ) as caught:
            driver.stage(build="k9")
        assert "\n" not in str(caught.value)
        assert driver.resolution().build != "k9"
    finally:
        target.cleanup()


@pytest.mark.usefixtures("no_env_token")
def test_stage_urls_has_the_instance_fetch_the_build(
    srv: Served, fit: Path, files: Nginx, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sha256 = hashlib.sha256(fit.read_bytes()).hexdigest()
    url = files.url(fit.name)
    env = environment(srv, tmp_path, fit)
    target = env.get_target("main")
    try:
        driver = target.get_driver("OverridedDriver", activate=False)
        info = driver.stage_urls([{"name": "image.fit", "url": url, "sha256": sha256}], "by-url")
        assert (info.build, info.configuration) == ("by-url", "conf-a"), info
        assert (srv.builds / "by-url" / "image.fit").read_bytes() == fit.read_bytes()
        size = fit.stat().st_size
        assert f"build by-url: image.fit: fetched, {size} bytes" in caplog.text

        # The same digest again: the instance has the file, nothing is fetched.
        gets = len(files.requests())
        info = driver.stage_urls([{"name": "image.fit", "url": url, "sha256": sha256}], "again")
        assert info.build == "again", info
        assert "build again: image.fit: in-store, 0 bytes" in caplog.text
        assert len(files.requests()) == gets, files.requests()

        # A wrong digest: refused with the server's reason; the board keeps its build.
        wrong = [{"name": "image.fit", "url": url, "sha256": "0" * 64}]
        with pytest.raises(StageError, match="sha256") as caught:
            driver.stage_urls(wrong, "by-url-2")
        assert "422" in str(caught.value), caught.value
        assert driver.resolution().build == "again"

        with pytest.raises(StageError, match="missing url"):
            driver.stage_urls([{"name": "image.fit"}])
    finally:
        target.cleanup()


@pytest.mark.usefixtures("no_env_token")
def test_stage_without_a_token_says_how_to_give_one(srv: Served, fit: Path, tmp_path: Path) -> None:
    env = environment(srv, tmp_path, fit, token=False)
    target = env.get_target("main")
    try:
        with pytest.raises(StageError, match=r"no upload token: set token_file .* OVERRIDED_TOKEN"):
            target.get_driver("OverridedDriver", activate=False).stage()
    finally:
        target.cleanup()


def test_devboot_needs_a_barebox_driver(srv: Served, fit: Path, tmp_path: Path) -> None:
    target = environment(srv, tmp_path, fit).get_target("main")
    try:
        with pytest.raises(StageError, match="not bound to a BareboxDriver"):
            target.get_driver("OverridedDriver", activate=False).devboot()
    finally:
        target.cleanup()


@pytest.mark.usefixtures("no_env_token")
def test_a_board_overrided_does_not_know_is_named(srv: Served, fit: Path, tmp_path: Path) -> None:
    env = environment(srv, tmp_path, fit, board="no-such-board")
    target = env.get_target("main")
    try:
        with pytest.raises(StageError, match=r"GET /api/boards/no-such-board: 404"):
            target.get_driver("OverridedDriver", activate=False).resolution()
    finally:
        target.cleanup()


def test_labgrid_runs_the_example_tests(srv: Served, fit: Path, tmp_path: Path) -> None:
    """The example environment, pointed at this server and FIT, through labgrid's plugin."""
    text = (EXAMPLE / "env.yaml").read_text()
    for old, new in [
        ("http://192.0.2.1:8080", srv.http_base),
        ("board: rock3a", "board: board-a"),
        ("../../linux/arch/arm64/boot/image.fit", str(fit)),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    env_file = tmp_path / "env.yaml"
    env_file.write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    argv = [
        sys.executable, "-m", "pytest", "-c", str(tmp_path / "pytest.ini"),
        "-p", "no:cacheprovider", "--lg-env", str(env_file),
        str(EXAMPLE / "test_overrided.py"), "-k", "staged_build", "-q", "-s",
    ]  # fmt: skip
    r = subprocess.run(
        argv,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "OVERRIDED_TOKEN": srv.token},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 deselected" in r.stdout, r.stdout
    assert "board-a: build labgrid, configuration conf-a" in r.stdout, r.stdout
    assert srv.api("/api/boards/board-a")["build"] == "labgrid"
