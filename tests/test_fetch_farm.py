"""A farm in network namespaces: nginx serving a folder (the artifact store) in one, and one
``overrided serve`` per lab in two others, on a bridge (192.0.2.0/24). Both labs pull the same
build by URL and serve the same board byte-identical artifacts; a second PUT of the same digests
fetches nothing (nginx's access log says so).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests.support.builds import modules_cpio
from tests.support.farm import STORE_IP, Farm, LabServed
from tests.support.fits import sample_fit
from tests.support.nginx import Nginx, nginx_binary

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or nginx_binary() is None,
    reason="needs root (network namespaces), iproute2 and nginx",
)

BOARD = 'compatible = ["v,board-a", "v,soc"]\narch = "arm64"\n'
MODULES = "modules-6.19.0-arm64.cpio"
DEVBOOT = "none-devboot-board-a"


def test_two_labs_pull_one_build_and_serve_identical_artifacts(tmp_path: Path) -> None:
    fit = sample_fit(tmp_path / "fit").fit
    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "board-a.toml").write_text(BOARD)
    with Farm(labs=2) as farm:
        nginx = Nginx(tmp_path / "nginx", addr=STORE_IP, port=8000, wrap=farm.store.wrap)
        build = nginx.www / "ci" / "6.19-rc1"
        build.mkdir(parents=True)
        shutil.copy(fit, build / "image.fit")
        modules_cpio(build / MODULES, "6.19.0")
        files = [
            {
                "name": name,
                "url": nginx.url(f"ci/6.19-rc1/{name}"),
                "sha256": hashlib.sha256((build / name).read_bytes()).hexdigest(),
            }
            for name in ("image.fit", MODULES)
        ]
        allow = ["--allow-url", nginx.url("ci/")]
        labs = [
            LabServed(tmp_path / f"lab{i}", ns, boards=boards, extra=allow)
            for i, ns in enumerate(farm.labs)
        ]
        with nginx:
            for lab in labs:
                lab.start()
            try:
                for lab in labs:
                    status, answer = lab.put_build("rc1", files)
                    assert status == 201, answer
                    assert [f["outcome"] for f in answer["files"]] == ["fetched", "fetched"]
                    assert answer["on_build"] == [f"board-a: {DEVBOOT}"]
                served = []
                for lab in labs:
                    board = lab.api("/api/boards/board-a")
                    assert board["build"] == "rc1"
                    artifacts = {
                        role: lab.http_get(f"/{name}") for role, name in board["artifacts"].items()
                    }
                    artifacts["devboot"] = lab.tftp_get(DEVBOOT)
                    served.append(artifacts)
                assert set(served[0]) >= {"fit", "initrd", "devboot"}
                assert served[0] == served[1], "both labs serve the board the same bytes"

                # Each lab fetched each file once; a second PUT of the same digests, nothing.
                fetched = [(r.path, r.status) for r in nginx.requests()]
                assert sorted(fetched) == sorted(
                    [(f"/ci/6.19-rc1/{name}", 200) for name in ("image.fit", MODULES)] * 2
                )
                status, again = labs[0].put_build("rc1", files)
                assert status == 201 and [f["outcome"] for f in again["files"]] == ["in-store"] * 2
                assert [(r.path, r.status) for r in nginx.requests()] == fetched
            finally:
                for lab in labs:
                    lab.stop()
