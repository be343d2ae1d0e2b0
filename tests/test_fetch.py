"""Builds by URL against a real nginx on loopback: ``PUT /api/builds/<name>`` of the real
``overrided serve``, and every fault the issue names, each with a clear answer while the
previous build stays served.

The artifact store is nginx serving a folder (``tests/support/nginx.py``); the build is a FIT
made by mkimage and a modules CPIO made by GNU cpio.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.builds import newc_archive
from tests.support.fits import SampleFit, sample_fit
from tests.support.nginx import Nginx, nginx_binary
from tests.support.serve import REPO, Served

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="needs nginx (apt install nginx)")

BOARD = 'compatible = ["v,board-a", "v,soc"]\narch = "arm64"\n'
RELEASE = "6.19.0"
MODULES = f"modules-{RELEASE}-arm64.cpio"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def big_modules_cpio(out: Path, size: int) -> Path:
    """A modules CPIO (GNU cpio) holding one module of ``size`` random bytes."""
    tree = out.parent / f".tree-{out.name}"
    ko = tree / "lib" / "modules" / RELEASE / "kernel" / "drivers" / "big.ko"
    ko.parent.mkdir(parents=True)
    ko.write_bytes(b"\x7fELF" + os.urandom(size))
    (tree / "lib" / "modules" / RELEASE / "modules.dep").write_text("kernel/drivers/big.ko:\n")
    return newc_archive(tree, out)


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory) -> tuple[SampleFit, SampleFit]:
    root = tmp_path_factory.mktemp("fits")
    return sample_fit(root / "one"), sample_fit(root / "two", default="conf-a")


@pytest.fixture
def store(tmp_path: Path, fits: tuple[SampleFit, SampleFit]) -> Iterator[Nginx]:
    """nginx serving ``builds/b1`` (FIT one + a 1 MiB modules CPIO), ``builds/b2`` (FIT two),
    a FIT that is too large, and a bad copy of b1's FIT."""
    nginx = Nginx(tmp_path / "nginx", rate="128k")
    b1 = nginx.www / "builds" / "b1"
    b1.mkdir(parents=True)
    (b1 / "image.fit").write_bytes(fits[0].fit.read_bytes())
    big_modules_cpio(b1 / MODULES, 1 << 20)
    b2 = nginx.www / "builds" / "b2"
    b2.mkdir(parents=True)
    (b2 / "image.fit").write_bytes(fits[1].fit.read_bytes())
    (nginx.www / "builds" / "huge").mkdir()
    (nginx.www / "builds" / "huge" / "image.fit").write_bytes(os.urandom(3 << 20))
    (nginx.www / "elsewhere").mkdir()
    (nginx.www / "elsewhere" / "image.fit").write_bytes(fits[1].fit.read_bytes())
    with nginx:
        yield nginx


def served(root: Path, nginx: Nginx, *extra: str) -> Served:
    (root / "boards").mkdir(parents=True, exist_ok=True)
    (root / "boards" / "board-a.toml").write_text(BOARD)
    allow = ["--allow-url", nginx.url("builds/"), "--allow-url", nginx.url("slow/builds/")]
    return Served(root / "srv", boards=root / "boards", extra=[*allow, *extra])


def put(srv: Served, build: str, files: list[dict[str, str]], token: str | None = None) -> Any:
    """``PUT /api/builds/<build>``; (status, decoded JSON answer)."""
    req = urllib.request.Request(
        f"{srv.http_base}/api/builds/{build}",
        data=json.dumps({"files": files}).encode(),
        method="PUT",
        headers={
            "Authorization": f"Bearer {token or srv.token}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def b1_files(nginx: Nginx, prefix: str = "builds/b1") -> list[dict[str, str]]:
    www = nginx.www / "builds" / "b1"
    return [
        {
            "name": "image.fit",
            "url": nginx.url(f"{prefix}/image.fit"),
            "sha256": sha256(www / "image.fit"),
        },
        {"name": MODULES, "url": nginx.url(f"{prefix}/{MODULES}"), "sha256": sha256(www / MODULES)},
    ]


def board_fit(srv: Served) -> bytes:
    """The board's per-board FIT as HTTP serves it now."""
    name = srv.api("/api/boards/board-a")["artifacts"]["fit"]
    return srv.http_get(f"/{name}")


def gets(nginx: Nginx) -> list[str]:
    return [f"{r.path} {r.status}" for r in nginx.requests() if r.method == "GET"]


def test_build_by_url_is_served_and_a_second_put_fetches_nothing(
    tmp_path: Path, store: Nginx
) -> None:
    with served(tmp_path, store) as srv:
        events = subprocess.Popen(
            ["curl", "-sN", "--max-time", "60", f"{srv.http_base}/api/events"],
            stdout=subprocess.PIPE,
        )
        time.sleep(0.5)
        status, answer = put(srv, "k1", b1_files(store))
        assert status == 201, answer
        assert [(f["name"], f["outcome"]) for f in answer["files"]] == [
            ("image.fit", "fetched"),
            (MODULES, "fetched"),
        ]
        assert answer["fetched_bytes"] == sum(
            (store.www / "builds" / "b1" / n).stat().st_size for n in ("image.fit", MODULES)
        )
        assert answer["on_build"] == ["board-a: none-devboot-board-a"]
        assert answer["result"]["build"]["modules"] == [MODULES]
        # The build folder holds exactly the store's bytes; no temporary file is left.
        assert (srv.builds / "k1" / "image.fit").read_bytes() == (
            store.www / "builds" / "b1" / "image.fit"
        ).read_bytes()
        assert sorted(p.name for p in srv.builds.rglob(".*")) == []
        assert list((srv.store / "tmp").glob("*.fetch")) == []
        fit = board_fit(srv)
        assert srv.tftp_get("none-devboot-board-a")

        before = gets(store)
        assert before == ["/builds/b1/image.fit 200", f"/builds/b1/{MODULES} 200"]
        status, again = put(srv, "k1", b1_files(store))
        assert status == 201, again
        assert [f["outcome"] for f in again["files"]] == ["in-store", "in-store"]
        assert again["fetched_bytes"] == 0
        assert gets(store) == before  # nginx saw no request at all
        assert board_fit(srv) == fit

        # The same digests under another build name: still nothing fetched.
        status, other = put(srv, "k2", b1_files(store))
        assert status == 201 and [f["outcome"] for f in other["files"]] == ["in-store"] * 2
        assert gets(store) == before
        # Read the stream up to the third build's end (curl gives up after 60 s at most).
        lines: list[str] = []
        assert events.stdout is not None
        while lines.count("event: fetch-finished") < 3:
            line = events.stdout.readline().decode()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        events.terminate()
        events.wait(10)
        stream = "\n".join(lines)
    kinds = [line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith("event: ")]
    assert kinds.count("fetch-started") == 3 and kinds.count("fetch-finished") == 3
    assert "fetch-progress" in kinds
    outcomes = [
        json.loads(line[6:])["data"]["outcome"]
        for line in stream.splitlines()
        if line.startswith("data: ") and '"fetch-file"' in line
    ]
    assert outcomes == ["fetched", "fetched", "in-store", "in-store", "in-store", "in-store"]


def test_faults_answer_clearly_and_keep_the_previous_build(tmp_path: Path, store: Nginx) -> None:
    fit_size = (store.www / "builds" / "b2" / "image.fit").stat().st_size
    limits = ["--fetch-max-size", str(2 << 20), "--fetch-resumes", "1"]
    with served(tmp_path, store, *limits, "--allow-url", store.url("loop/")) as srv:
        status, answer = put(srv, "k1", b1_files(store))
        assert status == 201, answer
        fit = board_fit(srv)
        b2 = store.www / "builds" / "b2" / "image.fit"

        def refused(files: list[dict[str, str]], code: int, *words: str) -> dict[str, Any]:
            status, answer = put(srv, "k1", files)
            assert status == code, answer
            assert answer["status"] == code
            for word in words:
                assert word in answer["error"], answer["error"]
            assert "\n" not in answer["error"]
            assert board_fit(srv) == fit, "the previous build must stay served"
            assert srv.api("/api/boards/board-a")["build"] == "k1"
            assert sorted(p.name for p in srv.builds.rglob(".*")) == []
            return answer

        # A digest mismatch: b2's bytes under b1's digest.
        wrong = {"name": "image.fit", "url": store.url("builds/b2/image.fit"), "sha256": "0" * 64}
        answer = refused([wrong], 422, "hash to sha256", sha256(b2), "previous build kept")
        assert answer["files"][0]["outcome"] == "failed" and answer["files"][0]["bytes"] == fit_size
        # A 404.
        missing = {"name": "image.fit", "url": store.url("builds/nope/image.fit")}
        refused([missing], 502, "404 Not Found", "/builds/nope/image.fit")
        # Larger than the limit (refused on its Content-Length, before a byte is stored).
        huge = {"name": "image.fit", "url": store.url("builds/huge/image.fit")}
        refused([huge], 413, "larger than the limit of 2097152 bytes")
        # Outside the allowed prefixes: refused before anything is fetched.
        n = len(store.requests())
        outside = {"name": "image.fit", "url": store.url("elsewhere/image.fit")}
        refused([outside], 403, "outside the allowed URL prefixes", "elsewhere/image.fit")
        assert len(store.requests()) == n
        # A '..' segment, which would leave the prefix on many servers.
        dots = {"name": "image.fit", "url": store.url("builds/../elsewhere/image.fit")}
        refused([dots], 400, "'..' path segments")
        # A redirect from inside the prefixes to outside them: that hop is refused.
        away = {"name": "image.fit", "url": store.url("builds/moved/elsewhere/image.fit")}
        refused([away], 403, "redirects", "outside the allowed URL prefixes")
        # A redirect loop, named as one.
        loop = {"name": "image.fit", "url": store.url("loop/a")}
        refused([loop], 502, "redirect loop", "/loop/a → ", "/loop/b → ")
        # Two files, the second failing: the first is not published alone.
        good = {"name": "image.fit", "url": store.url("builds/b2/image.fit")}
        answer = refused([good, missing | {"name": MODULES}], 502, "404")
        assert [f["outcome"] for f in answer["files"]] == ["fetched", "failed"]
        # A bad request body, and no token.
        status, answer = put(srv, "k1", [{"name": "../x", "url": good["url"]}])
        assert status == 400 and "files[0].name" in answer["error"]
        status, answer = put(srv, "k1", [good], token="wrong")
        assert status == 401


def test_connection_cut_mid_file_keeps_the_previous_build(tmp_path: Path, store: Nginx) -> None:
    """nginx sends the modules CPIO at 128 KiB/s and is killed part-way: no resume can reach
    it, so the build is refused and the previous one stays."""
    with served(tmp_path, store, "--fetch-resumes", "2") as srv:
        status, _ = put(srv, "k1", b1_files(store)[:1])
        assert status == 201
        fit = board_fit(srv)
        result: list[Any] = []
        files = b1_files(store, "slow/builds/b1")
        files[0]["url"] = store.url("builds/b2/image.fit")  # a new FIT, so the build would change
        files[0]["sha256"] = sha256(store.www / "builds" / "b2" / "image.fit")
        worker = threading.Thread(target=lambda: result.append(put(srv, "k1", files)))
        worker.start()
        time.sleep(2.0)  # about 256 KiB of the 1 MiB CPIO have arrived
        store.kill()
        worker.join(120)
        status, answer = result[0]
        assert status == 502, answer
        assert "connection lost after" in answer["error"] and "2 resume(s) tried" in answer["error"]
        assert [f["outcome"] for f in answer["files"]] == ["fetched", "failed"]
        assert board_fit(srv) == fit
        assert list((srv.store / "tmp").glob("*.fetch")) == []


def test_cut_connection_resumes_with_range(tmp_path: Path, store: Nginx) -> None:
    """The same cut, but the store comes back: the fetch goes on from the byte it had, with
    ``Range`` (nginx logs a 206), and the build is published with the right digest."""
    with served(tmp_path, store) as srv:
        result: list[Any] = []
        worker = threading.Thread(
            target=lambda: result.append(put(srv, "k1", b1_files(store, "slow/builds/b1")))
        )
        worker.start()
        time.sleep(2.5)
        store.kill()
        store.start()
        worker.join(120)
        status, answer = result[0]
        assert status == 201, answer
        modules = answer["files"][1]
        assert modules["outcome"] == "fetched" and modules["resumes"] >= 1, modules
        assert modules["restarts"] == 0
        ranged = [r for r in store.requests() if r.status == 206]
        assert ranged and ranged[0].path == f"/slow/builds/b1/{MODULES}"
        assert ranged[0].range.startswith("bytes=") and ranged[0].range != "bytes=0-"
        assert (srv.builds / "k1" / MODULES).read_bytes() == (
            store.www / "builds" / "b1" / MODULES
        ).read_bytes()


def test_builds_by_url_are_off_without_allowed_prefixes(tmp_path: Path, store: Nginx) -> None:
    (tmp_path / "boards").mkdir()
    with Served(tmp_path / "srv", boards=tmp_path / "boards") as srv:
        status, answer = put(srv, "k1", b1_files(store))
    assert status == 403 and "builds by URL are off" in answer["error"]
    assert store.requests() == []


def test_cli_builds_add(tmp_path: Path, store: Nginx) -> None:
    files = b1_files(store)
    with served(tmp_path, store) as srv:
        argv = [sys.executable, "-m", "overrided", "builds", "add", "k1"]
        argv += ["--server", srv.http_base, "--token", srv.token]
        argv += ["--url", files[0]["url"], "--sha256", files[0]["sha256"], "--url", files[1]["url"]]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)
        assert r.returncode == 0, r.stderr
        assert "image.fit: fetched" in r.stdout and f"{MODULES}: fetched" in r.stdout
        assert "board board-a: boots k1" in r.stdout
        # A wrong digest: exit status 1 and the server's one-line reason.
        bad = [*argv[:-6], "--url", files[0]["url"], "--sha256", "1" * 64]
        r = subprocess.run(bad, capture_output=True, text=True, timeout=120, env=env, check=False)
        assert r.returncode == 1
        assert "overrided: error: build k1: image.fit: the fetched bytes hash to" in r.stderr
        assert srv.api("/api/boards/board-a")["build"] == "k1"


PREFIXES = [
    # (prefix, url, allowed)
    ("https://s3.example.org/ci/", "https://s3.example.org/ci/b1/image.fit", True),
    ("https://s3.example.org/ci/", "https://S3.EXAMPLE.ORG/ci/b1/image.fit", True),
    ("https://s3.example.org/ci/", "https://s3.example.org:443/ci/x", True),
    ("https://s3.example.org/ci/", "http://s3.example.org/ci/x", False),  # the scheme counts
    ("https://s3.example.org/ci/", "https://s3.example.org:8443/ci/x", False),
    ("https://s3.example.org/ci/", "https://s3.example.org.evil.example/ci/x", False),
    ("https://s3.example.org/ci/", "https://s3.example.org/cix/x", False),
    ("https://s3.example.org/ci", "https://s3.example.org/ci/x", True),  # a whole segment
    ("https://s3.example.org/ci", "https://s3.example.org/ci-old/x", False),
    ("https://s3.example.org", "https://s3.example.org/anything", True),
    # A presigned URL: its query is not part of the match, and is kept as it is.
    ("https://s3.example.org/ci/", "https://s3.example.org/ci/x?X-Amz-Signature=a%2Fb", True),
]


@pytest.mark.parametrize(("prefix", "url", "allowed"), PREFIXES)
def test_allowed_prefixes(prefix: str, url: str, allowed: bool) -> None:
    from yarl import URL

    from overrided.fetch import allowed_by, parse_url

    assert allowed_by(parse_url(url), URL(prefix)) is allowed


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://s3.example.org/ci/x", "absolute http:// or https://"),
        ("/ci/x", "absolute http:// or https://"),
        ("https://s3.example.org/ci/../etc/x", "'..' path segments"),
        ("https://s3.example.org/ci/%2e%2e/etc/x", "'..' path segments"),
        ("https://s3.example.org/ci/x\n", "no spaces or control characters"),
    ],
)
def test_urls_refused(url: str, why: str) -> None:
    from overrided.fetch import FetchError, parse_url

    with pytest.raises(FetchError, match=why):
        parse_url(url)


def test_answers_hide_a_presigned_urls_query() -> None:
    from overrided.fetch import parse_url, shown

    url = parse_url("https://u:p@s3.example.org/ci/x?X-Amz-Credential=k&X-Amz-Signature=s")
    assert shown(url) == "https://s3.example.org/ci/x?…"
    assert str(url).endswith("X-Amz-Signature=s")  # fetched as given


def test_bench_quick_mode() -> None:
    """``bench/bench_fetch.py --quick`` runs and prints its ratios (no figure is asserted)."""
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_fetch.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert re.search(r"^ratio_vs_curl=\d+\.\d+$", r.stdout, re.M), r.stdout
    assert re.search(r"^ratio_vs_curl_download=\d+\.\d+$", r.stdout, re.M), r.stdout


def test_a_presigned_url_is_fetched_as_given_and_its_query_never_shown(
    tmp_path: Path, store: Nginx
) -> None:
    query = "X-Amz-Credential=AKIA%2F20261204&X-Amz-Signature=c0ffee%2Bbeef"
    files = b1_files(store)[:1]
    files[0]["url"] += "?" + query
    with served(tmp_path, store) as srv:
        status, answer = put(srv, "k1", files)
        assert status == 201, answer
        assert answer["files"][0]["url"] == store.url("builds/b1/image.fit") + "?…"
        assert "c0ffee" not in srv.log() and "AKIA" not in srv.log()
    assert [r.args for r in store.requests()] == [query]  # the signature's bytes, unchanged
