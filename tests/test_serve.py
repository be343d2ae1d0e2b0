"""`overrided serve` for real: a subprocess on loopback, builds dropped into its folder, and
tftp-hpa's `tftp` (and curl-like HTTP GETs) fetching the devboot script and what it names.

FITs are made by mkimage (tests/support/fits.py), modules CPIOs by GNU cpio, the trimmed FIT is
checked with U-Boot's `dumpimage -l` and by re-parsing it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from overrided.fit import Fit
from tests.support.builds import modules_cpio
from tests.support.fits import dumpimage_list, sample_fit
from tests.support.serve import REPO, Served

BOARD_A = """
user = "afa"
compatible = ["v,board-a", "v,soc"]
initrd = "append"
[bootargs]
rsinit = "rsinit.bind_modules"
"""


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two different builds of the sample FIT (sha256 vs sha1 hash nodes)."""
    one = sample_fit(tmp_path_factory.mktemp("fit1")).fit
    two = sample_fit(tmp_path_factory.mktemp("fit2"), hashes=("sha1",)).fit
    return one, two


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return modules_cpio(tmp_path_factory.mktemp("mods") / "modules-6.19.0-arm64.cpio", "6.19.0")


def drop_build(builds: Path, name: str, fit: Path, modules: Path | None = None) -> Path:
    """Land a build the way an upload does: write under dot-names, then rename into place."""
    folder = builds / name
    folder.mkdir(parents=True, exist_ok=True)
    files = [(fit, "image.fit")] + ([(modules, modules.name)] if modules else [])
    for src, dst in files:
        tmp = folder / f".{dst}.part"
        shutil.copyfile(src, tmp)
        os.replace(tmp, folder / dst)
    return folder


def script_vars(script: bytes) -> dict[str, str]:
    """``name="value"`` assignments of a devboot script."""
    return dict(re.findall(r'^(devboot_\w+)="([^"]*)"$', script.decode(), re.M))


def image_of(script: bytes) -> str:
    """The versioned name whose bytes the script's image name (``<user>-linux-<host>``) serves."""
    m = re.search(r"^# \S+-linux-\S+ is (\S+)$", script.decode(), re.M)
    assert m, script
    return m.group(1)


def curl_tftp(srv: Served, name: str, source: str) -> bytes | None:
    """``name`` fetched by curl's TFTP client from the address ``source`` (any of 127/8), or
    ``None`` if the server refuses it."""
    url = f"tftp://127.0.0.1:{srv.tftp_port}/{name}"
    got = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "--interface", source, url],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if got.returncode != 0:
        assert b"not found" in got.stderr.lower() or b"tftp" in got.stderr.lower(), got.stderr
        return None
    return got.stdout


def wait_script(srv: Served, name: str, pattern: str) -> bytes:
    """Poll over TFTP until the script ``name`` exists and matches ``pattern``."""

    def ready() -> bytes | None:
        data = srv.served(name)
        return data if data is not None and re.search(pattern, data.decode()) else None

    result: bytes = srv.wait_for(ready, what=f"{name} matching {pattern!r}")
    return result


def test_devboot_script_and_everything_it_names(
    tmp_path: Path, fits: tuple[Path, Path], modules: Path
) -> None:
    srv = Served(tmp_path)
    (srv.boards / "a.toml").write_text(BOARD_A)
    drop_build(srv.builds, "b1", fits[0], modules)
    with srv:
        script = srv.tftp_get("afa-devboot-board-a")
        lines = script.decode().splitlines()
        assert lines[0] == "# afa-devboot-board-a: devboot overrides for board a"
        assert lines[1].startswith("# build b1 (6.19.0), configuration conf-a (Board A), ")
        assert "'v,board-a' is entry 0" in lines[1]
        v = script_vars(script)
        assert set(v) == {"devboot_image", "devboot_initrd"}  # oftree: the FIT brings it
        # The image is barebox's own `boot net` name, which `devboot net` has opened already.
        assert v["devboot_image"] == "afa-linux-board-a"
        fit_name = image_of(script)
        assert re.fullmatch(r"afa-fit-board-a-[0-9a-f]{12}", fit_name)
        assert re.fullmatch(r":afa-initrd-board-a-[0-9a-f]{12}", v["devboot_initrd"])
        assert 'global linux.bootargs.dyn.rsinit="rsinit.bind_modules"' in lines

        fit_path = tmp_path / "got.fit"
        fit_bytes = srv.tftp_get(v["devboot_image"], fit_path)
        assert srv.tftp_get(fit_name) == fit_bytes
        listing = dumpimage_list(fit_path)
        assert "Default Configuration: 'conf-a'" in listing
        assert re.findall(r"Configuration \d+ \((\S+)\)", listing) == ["conf-a"]
        with Fit.open(fit_path) as fit:
            assert list(fit.configurations) == ["conf-a"]
            assert sorted(fit.images) == ["fdt-a", "kernel", "ramdisk"]
            dtb = bytes(fit.images["fdt-a"].data())
        assert dtb == (fits[0].parent / "fdt-a.dtb").read_bytes()

        initrd = srv.tftp_get(v["devboot_initrd"].lstrip(":"))
        listed = subprocess.run(
            ["cpio", "-t", "--quiet"], input=initrd, capture_output=True, check=True
        ).stdout.decode()
        assert "lib/modules/6.19.0/kernel/drivers/x.ko" in listed.splitlines()

        # barebox's `boot net` names, so a plain `devboot` (default boot order) works too.
        assert srv.tftp_get("afa-linux-board-a") == fit_bytes
        assert srv.tftp_get("afa-oftree-board-a") == dtb
        # No init CPIO: a modules-only initramfs would leave the kernel without /init.
        assert srv.served("afa-initramfs-board-a") is None

        # curl's TFTP client gets the same bytes.
        url = f"tftp://127.0.0.1:{srv.tftp_port}/{fit_name}"
        got = subprocess.run(["curl", "-sS", "--max-time", "30", url], capture_output=True)
        assert got.returncode == 0, got.stderr
        assert got.stdout == fit_bytes
        # HTTP serves the same catalog.
        assert srv.http_get("/afa-devboot-board-a") == script
        assert srv.http_get("/" + fit_name) == fit_bytes
        assert srv.http_get("/afa-linux-board-a") == fit_bytes
        (board,) = srv.api("/api/boards")
        assert board["configuration"] == "conf-a" and board["build"] == "b1"
        assert board["artifacts"]["fit"] == fit_name
        assert "board a (afa-devboot-board-a): build b1, conf-a" in srv.log()
    assert srv.proc is not None and srv.proc.returncode == 0  # SIGTERM: clean exit


def test_rebuild_during_boot_keeps_old_names_byte_exact(
    tmp_path: Path, fits: tuple[Path, Path], modules: Path
) -> None:
    srv = Served(tmp_path)
    (srv.boards / "a.toml").write_text(BOARD_A)
    drop_build(srv.builds, "b1", fits[0], modules)
    with srv:
        old_script = srv.tftp_get("afa-devboot-board-a")
        old = script_vars(old_script)
        old_fit = srv.tftp_get(image_of(old_script))
        old_initrd = srv.tftp_get(old["devboot_initrd"].lstrip(":"))

        # The developer rebuilds while the board is between fetching the script and the FIT.
        drop_build(srv.builds, "b1", fits[1], modules)
        gone = r"(?s)^(?!.*" + image_of(old_script) + ")"
        new_script = wait_script(srv, "afa-devboot-board-a", gone)
        new = script_vars(new_script)
        assert image_of(new_script) != image_of(old_script)
        # The old render's versioned names still serve exactly the old bytes ...
        assert srv.tftp_get(image_of(old_script)) == old_fit
        assert srv.tftp_get(old["devboot_initrd"].lstrip(":")) == old_initrd
        # ... and the new script stands for a FIT from the new build only.
        new_fit = srv.tftp_get(image_of(new_script), tmp_path / "new.fit")
        assert new_fit != old_fit
        assert "sha1" in dumpimage_list(tmp_path / "new.fit")
        assert srv.tftp_get(new["devboot_image"]) == new_fit
        # Unchanged modules: the same initrd blob, the same versioned name.
        assert new["devboot_initrd"] == old["devboot_initrd"]


def test_each_board_reads_one_snapshot_of_its_names_across_a_rebuild(
    tmp_path: Path, fits: tuple[Path, Path], modules: Path
) -> None:
    """Two boards at two addresses, curl's TFTP client for both: the one that read the script
    before a rebuild gets that script's FIT under the stable name the script names; the other
    gets the new one under the same name; a new script read moves the first one on."""
    board, other = "127.0.0.2", "127.0.0.3"
    srv = Served(tmp_path)
    (srv.boards / "a.toml").write_text(BOARD_A.replace('initrd = "append"', 'init = "init.cpio"'))
    tree = tmp_path / "init-tree"
    tree.mkdir()
    (tree / "init").write_text("#!/bin/sh\necho hello\n")
    with (srv.boards / "init.cpio").open("wb") as f:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], input=b"init", stdout=f, cwd=tree, check=True
        )
    drop_build(srv.builds, "b1", fits[0], modules)
    with srv:
        old_script = curl_tftp(srv, "afa-devboot-board-a", board)
        assert old_script is not None
        assert script_vars(old_script)["devboot_image"] == "afa-linux-board-a"
        old_fit = curl_tftp(srv, image_of(old_script), other)  # versioned: the same for all
        old_initramfs = curl_tftp(srv, "afa-initramfs-board-a", other)
        assert old_fit is not None and old_initramfs is not None

        # The rebuild brings new modules too: a new initramfs under the same name.
        other_modules = tmp_path / "m2" / modules.name
        other_modules.parent.mkdir()
        shutil.copy(modules, other_modules)
        with other_modules.open("ab") as f:
            f.write(b"\0" * 512)  # trailing zeros: still the same archive to the kernel
        drop_build(srv.builds, "b1", fits[1], other_modules)
        gone = r"(?s)^(?!.*" + image_of(old_script) + ")"

        def new_script() -> bytes | None:
            got = curl_tftp(srv, "afa-devboot-board-a", other)
            return got if got and re.search(gone, got.decode()) else None

        script = srv.wait_for(new_script, what="the other board seeing the new script")
        new_fit = curl_tftp(srv, image_of(script), other)
        assert new_fit is not None and new_fit != old_fit
        new_initramfs = curl_tftp(srv, "afa-initramfs-board-a", other)
        assert new_initramfs is not None and new_initramfs != old_initramfs

        # The board between its script and its image: the FIT its script stood for, and the
        # matching `boot net` names, over TFTP and HTTP alike ...
        assert curl_tftp(srv, "afa-linux-board-a", board) == old_fit
        assert curl_tftp(srv, "afa-initramfs-board-a", board) == old_initramfs
        http = subprocess.run(
            ["curl", "-sS", "--fail", "--interface", board, f"{srv.http_base}/afa-linux-board-a"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        assert http.stdout == old_fit
        # ... the other board the new FIT under the same name ...
        assert curl_tftp(srv, "afa-linux-board-a", other) == new_fit
        assert curl_tftp(srv, "afa-initramfs-board-a", other) == new_initramfs
        # ... and the log says who got an older render, of which build.
        srv.wait_for(
            lambda: (
                f"pin: client {board} gets afa-linux-board-a of board a from build b1" in srv.log()
            ),
            what="the pin's log line",
        )
        # The board's next `devboot` reads the script again: from then on, the new render.
        assert curl_tftp(srv, "afa-devboot-board-a", board) == script
        assert curl_tftp(srv, "afa-linux-board-a", board) == new_fit
        assert curl_tftp(srv, "afa-initramfs-board-a", board) == new_initramfs


def test_board_without_a_file_is_matched_by_hostname(
    tmp_path: Path, fits: tuple[Path, Path], modules: Path
) -> None:
    srv = Served(tmp_path)
    drop_build(srv.builds, "b1", fits[0], modules)
    with srv:
        # barebox's default hostname of a "v,board-b" board is "board-b"; user defaults to none.
        script = srv.tftp_get("none-devboot-board-b")
        assert "configuration conf-b (Board B)" in script.decode()
        v = script_vars(script)
        fit_path = tmp_path / "b.fit"
        srv.tftp_get(v["devboot_image"], fit_path)
        with Fit.open(fit_path) as fit:
            assert list(fit.configurations) == ["conf-b"]
        # conf-c has no compatible of its own; its DTB says "v,board-c".
        assert b"configuration conf-c" in srv.tftp_get("none-devboot-board-c")
        # Nothing has "<vendor>,rock3a" first: nothing is served, and the log says why.
        assert srv.served("none-devboot-rock3a") is None
        srv.wait_for(lambda: "has a first compatible '<vendor>,rock3a'" in srv.log())
        boards = {b["hostname"]: b for b in srv.api("/api/boards")}
        assert boards["board-b"]["configuration"] == "conf-b"
        assert boards["rock3a"]["error"]


def test_invalid_board_file_does_not_stop_the_others(
    tmp_path: Path, fits: tuple[Path, Path]
) -> None:
    srv = Served(tmp_path)
    (srv.boards / "a.toml").write_text(BOARD_A)
    (srv.boards / "broken.toml").write_text('compatible = ["v,board-b"]\nimage = "zimage"\n')
    drop_build(srv.builds, "b1", fits[0])
    with srv:
        assert srv.served("afa-devboot-board-a") is not None
        error = "boards/broken.toml: image: Input should be 'fit' or 'kernel'"
        assert error in srv.log()
        broken = next(b for b in srv.api("/api/boards") if b["name"] == "broken")
        assert broken["error"].startswith(error)
        # Fixing the file is picked up by the watcher.
        (srv.boards / "broken.toml").write_text('compatible = ["v,board-b"]\nuser = "x"\n')
        wait_script(srv, "x-devboot-board-b", "configuration conf-b")


def test_half_written_fit_is_never_used(
    tmp_path: Path, fits: tuple[Path, Path], modules: Path
) -> None:
    srv = Served(tmp_path)
    (srv.boards / "a.toml").write_text(BOARD_A)
    drop_build(srv.builds, "b1", fits[0], modules)
    with srv:
        first = script_vars(srv.tftp_get("afa-devboot-board-a"))
        # A slow copy straight into the final name (no rename): half now, the rest later.
        data = fits[1].read_bytes()
        b2 = srv.builds / "b2"
        b2.mkdir()
        with (b2 / "image.fit").open("wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            srv.wait_for(
                lambda: any(b["name"] == "b2" and b["error"] for b in srv.api("/api/builds")),
                what="b2 indexed as unusable",
            )
            # Meanwhile the board is still served, from b1.
            assert script_vars(srv.tftp_get("afa-devboot-board-a")) == first
            f.write(data[len(data) // 2 :])
        script = wait_script(srv, "afa-devboot-board-a", r"# build b2")
        fit_path = tmp_path / "b2.fit"
        srv.tftp_get(script_vars(script)["devboot_image"], fit_path)
        assert "sha1" in dumpimage_list(fit_path)


def test_a_fit_still_open_for_writing_waits_for_its_writer(
    tmp_path: Path, fits: tuple[Path, Path], modules: Path
) -> None:
    srv = Served(tmp_path)
    (srv.boards / "a.toml").write_text(BOARD_A)
    drop_build(srv.builds, "b1", fits[0], modules)
    with srv:
        first = srv.tftp_get("afa-devboot-board-a")
        b2 = srv.builds / "b2"
        b2.mkdir()
        with (b2 / "image.fit").open("wb") as f:
            # Every byte is there, but only the writer knows that it is done.
            f.write(fits[1].read_bytes())
            f.flush()
            srv.wait_for(
                lambda: any(
                    b["name"] == "b2" and "still open for writing" in (b["error"] or "")
                    for b in srv.api("/api/builds")
                ),
                what="b2 waiting for its writer",
            )
            assert srv.tftp_get("afa-devboot-board-a") == first
        # Closing the file writes nothing, and the watcher reports no change: the service
        # notices the close by itself.
        script = wait_script(srv, "afa-devboot-board-a", r"# build b2")
        srv.tftp_get(script_vars(script)["devboot_image"], tmp_path / "b2.fit")
        assert "sha1" in dumpimage_list(tmp_path / "b2.fit")


def test_broken_rewrite_of_a_build_keeps_its_previous_contents(
    tmp_path: Path, fits: tuple[Path, Path], modules: Path
) -> None:
    srv = Served(tmp_path)
    (srv.boards / "a.toml").write_text(BOARD_A)
    drop_build(srv.builds, "old", fits[1], modules)  # an older build the board must not flip to
    os.utime(srv.builds / "old" / "image.fit", (1, 1))
    os.utime(srv.builds / "old" / modules.name, (1, 1))
    drop_build(srv.builds, "b1", fits[0], modules)
    with srv:
        before = srv.tftp_get("afa-devboot-board-a")
        assert b"# build b1 " in before
        v = script_vars(before)
        fit = srv.tftp_get(image_of(before))
        # `make` rewrites image.fit in place and stalls half-way (or dies).
        data = fits[1].read_bytes()
        with (srv.builds / "b1" / "image.fit").open("r+b") as f:
            f.truncate(0)
            f.write(data[: len(data) // 2])
        srv.wait_for(
            lambda: any(
                b["name"] == "b1" and "keep its previous contents" in (b["error"] or "")
                for b in srv.api("/api/builds")
            ),
            what="b1 rejected",
        )
        # The board still gets exactly what it had: same script, same FIT bytes.
        assert srv.tftp_get("afa-devboot-board-a") == before
        assert srv.tftp_get(v["devboot_image"]) == fit
        (board,) = srv.api("/api/boards")
        assert board["build"] == "b1"
        # The rewrite completes: the new contents are served.
        with (srv.builds / "b1" / "image.fit").open("ab") as f:
            f.write(data[len(data) // 2 :])
        wait_script(srv, "afa-devboot-board-a", r"(?s)^(?!.*" + image_of(before) + ")")
        assert all(b["error"] is None for b in srv.api("/api/builds"))


def test_empty_builds_folder_serves_nothing_and_says_so(tmp_path: Path) -> None:
    srv = Served(tmp_path)
    (srv.boards / "a.toml").write_text(BOARD_A)
    with srv:
        assert srv.served("afa-devboot-board-a") is None
        assert "board a: not served: no usable build in the builds folder yet" in srv.log()


def test_keys_inside_a_served_folder_refuse_to_start(tmp_path: Path) -> None:
    srv = Served(tmp_path)
    srv.keys = srv.builds / "keys"  # private keys below the watched builds folder
    r = subprocess.run(srv.command(), capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1
    assert "must never sit below a served folder" in r.stderr
    assert "Traceback" not in r.stderr


def test_replaced_artifacts_leave_after_the_grace_period(
    tmp_path: Path, fits: tuple[Path, Path]
) -> None:
    srv = Served(tmp_path, extra=["--grace", "1"])
    (srv.boards / "a.toml").write_text('build = "b1"\n' + BOARD_A)
    drop_build(srv.builds, "b1", fits[0])
    # A second build made of a kernel Image and DTBs: its FIT is built into the store and
    # must survive garbage collection although no name serves it directly.
    img = srv.builds / "img"
    img.mkdir()
    shutil.copy(fits[0].parent / "Image", img / "Image")
    shutil.copy(fits[0].parent / "fdt-b.dtb", img / "fdt-b.dtb")
    (srv.boards / "b.toml").write_text('compatible = ["v,board-b"]\nbuild = "img"\n')
    # The build's FIT is ingested once, as a blob named by its content; boards' FITs are
    # views over it.
    old_blob = srv.store / "blobs" / hashlib.sha256(fits[0].read_bytes()).hexdigest()
    with srv:
        old = image_of(srv.tftp_get("afa-devboot-board-a"))
        assert old_blob.exists()
        drop_build(srv.builds, "b1", fits[1])
        wait_script(srv, "afa-devboot-board-a", r"(?s)^(?!.*" + old + ")")
        srv.wait_for(lambda: srv.served(old) is None, what="old FIT name retired")
        srv.wait_for(lambda: not old_blob.exists(), what="old FIT blob collected")
        # Collections have run past the grace period: the Image build's FIT must still be
        # there, so its board renders again (a board file change forces a new render).
        (srv.boards / "b.toml").write_text(
            'compatible = ["v,board-b"]\nbuild = "img"\nuser = "u"\n'
        )
        script = wait_script(srv, "u-devboot-board-b", "# build img, configuration ")
        assert srv.served(script_vars(script)["devboot_image"]) is not None


def _big_modules(tree: Path, out_path: Path, data: bytes) -> None:
    """A modules CPIO holding one ``big.ko`` of ``data``."""
    ko = tree / "lib/modules/6.19.0/kernel/big.ko"
    ko.parent.mkdir(parents=True)
    ko.write_bytes(data)
    names = "\n".join(sorted(str(p.relative_to(tree)) for p in tree.rglob("*")))
    with out_path.open("wb") as out:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            input=names.encode(),
            stdout=out,
            cwd=tree,
            check=True,
        )


def _refusals(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if "not-found" in line)


def test_hostname_only_boards_are_rendered_before_they_ask(
    tmp_path: Path, fits: tuple[Path, Path]
) -> None:
    # A modules CPIO of 33 MiB: rendering a board copies none of it, so every hostname-only
    # board of the latest build is served on its very first request.
    srv = Served(tmp_path / "srv")
    folder = drop_build(srv.builds, "b1", fits[0])
    modules = folder / "modules-6.19.0-arm64.cpio"
    _big_modules(tmp_path / "tree", modules, bytes(33 << 20))
    with srv:
        script = srv.tftp_get("none-devboot-board-a")
        assert b"configuration conf-a" in script
        initrd = srv.tftp_get(script_vars(script)["devboot_initrd"])
        assert initrd == modules.read_bytes()
        # A user the service has not seen yet: held while that user's boards render, then
        # served (one request, no refusal first).
        assert b"configuration conf-b" in srv.tftp_get("someone-devboot-board-b")
        assert "someone-devboot-board-b" not in _refusals(srv.log())
        # The store holds the build's inputs (and small files), not a copy per board.
        store_bytes = sum(p.stat().st_size for p in (srv.store / "blobs").iterdir())
        inputs = sum(p.stat().st_size for p in folder.iterdir())
        assert store_bytes < inputs * 1.1


def test_a_request_during_start_up_is_held_until_its_board_is_served(
    tmp_path: Path, fits: tuple[Path, Path]
) -> None:
    # A start-up long enough to ask during it: a 300 MiB modules CPIO is hashed and ingested
    # before the first snapshot is published. The request is answered once it is, not refused.
    srv = Served(tmp_path / "srv")
    (srv.boards / "a.toml").write_text(BOARD_A)
    folder = drop_build(srv.builds, "b1", fits[0])
    _big_modules(tmp_path / "tree", folder / "modules-6.19.0-arm64.cpio", os.urandom(300 << 20))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with srv.log_path.open("ab") as log:
        srv.proc = subprocess.Popen(
            srv.command(), cwd=srv.root, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        try:
            srv.wait_for(lambda: "tftp listening" in srv.log())
            early = " ready: " not in srv.log()
            script = srv.tftp_get("afa-devboot-board-a")
            assert b"configuration conf-a" in script
        finally:
            srv.proc.terminate()
            srv.proc.wait(20)
    assert early, "start-up ended before the request: nothing was held"
    assert "afa-devboot-board-a" not in _refusals(srv.log())


def _fetch_board(srv: Served, source: str) -> tuple[bytes, bytes, bytes] | None:
    """What one board at address ``source`` reads: its script, the FIT by barebox's ``boot
    net`` name, then the FIT by the versioned name the script says it is."""
    script = curl_tftp(srv, "afa-devboot-board-a", source)
    if script is None:
        return None
    fit = curl_tftp(srv, "afa-linux-board-a", source)
    named = curl_tftp(srv, image_of(script), source)
    if fit is None or named is None:
        return None
    return script, fit, named


def test_rebuild_in_place_while_20_boards_read_gives_each_one_whole_build(
    tmp_path: Path, fits: tuple[Path, Path]
) -> None:
    # Two FITs of 12 MiB kernels; `make image.fit` rewrites the build's FIT in place (same
    # inode, O_TRUNC) while 20 boards, each from its own address, read script and FIT.
    parts = sample_fit(tmp_path / "parts").fit.parent
    made = []
    for i in (1, 2):
        kernel = tmp_path / f"Image{i}"
        kernel.write_bytes(os.urandom(12 << 20))
        out = tmp_path / f"big{i}.fit"
        subprocess.run(
            [
                sys.executable, "-m", "overrided", "fit", "build", "--kernel", str(kernel),
                "--dtbs", str(parts / "fdt-a.dtb"), "-o", str(out),
            ],
            check=True,
            cwd=REPO,
            capture_output=True,
        )  # fmt: skip
        made.append(out)
    srv = Served(tmp_path / "srv")
    (srv.boards / "a.toml").write_text(BOARD_A)
    folder = drop_build(srv.builds, "b1", made[0])
    with srv:
        old_script = srv.tftp_get("afa-devboot-board-a")
        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            jobs = [pool.submit(_fetch_board, srv, f"127.0.0.{10 + i}") for i in range(20)]
            time.sleep(0.3)  # the transfers are under way
            with (folder / "image.fit").open("r+b") as f:  # in place, as make does
                f.truncate(0)
                f.write(made[1].read_bytes())
            got = [j.result(timeout=120) for j in jobs]
        new_script = wait_script(
            srv, "afa-devboot-board-a", r"(?s)^(?!.*" + image_of(old_script) + ")"
        )
    old_fit = srv.root / "old.fit"
    assert all(g is not None for g in got), srv.log()[-4000:]
    builds = set()
    for script, fit, named in (g for g in got if g is not None):
        # One build per board: the FIT it booted is the one its script names, byte for byte.
        assert fit == named
        builds.add(image_of(script))
    assert builds <= {image_of(old_script), image_of(new_script)}
    # The boards that read the old build got its bytes, whole: the store's copy, not the
    # rewritten file.
    old_fit.write_bytes(
        next(g[1] for g in got if g is not None and image_of(g[0]) == image_of(old_script))
    )
    assert "sha256" in dumpimage_list(old_fit)
    assert b"kernel" in old_fit.read_bytes()[:4096]


def test_builds_folder_removed_and_made_again_is_watched_again(
    tmp_path: Path, fits: tuple[Path, Path]
) -> None:
    srv = Served(tmp_path)
    (srv.boards / "a.toml").write_text(BOARD_A)
    drop_build(srv.builds, "b1", fits[0])
    with srv:
        first = srv.tftp_get("afa-devboot-board-a")
        assert b"build b1" in first
        shutil.rmtree(srv.builds)
        srv.wait_for(lambda: "watching" in srv.log() and "anew" in srv.log(), what="re-watch")
        srv.builds.mkdir()
        drop_build(srv.builds, "b2", fits[1])
        # A build copied into the new folder is indexed and served as before.
        wait_script(srv, "afa-devboot-board-a", "build b2")


def test_a_build_that_fails_to_render_keeps_the_previous_render_served(
    tmp_path: Path, fits: tuple[Path, Path], modules: Path
) -> None:
    srv = Served(tmp_path)
    (srv.boards / "a.toml").write_text(BOARD_A)
    drop_build(srv.builds, "b1", fits[0], modules)
    with srv:
        old = srv.tftp_get("afa-devboot-board-a")
        assert b"build b1" in old
        # A newer build whose modules CPIO was cut short (a failed copy): its archive claims
        # more bytes than the file holds.
        cut = tmp_path / modules.name
        cut.write_bytes(modules.read_bytes()[: modules.stat().st_size * 2 // 3])
        drop_build(srv.builds, "b2", fits[1], cut)

        def failed() -> dict[str, Any] | None:
            boards = {b["name"]: b for b in srv.api("/api/boards")}
            error = boards["a"].get("error") or ""
            return boards["a"] if "b2" in srv.log() and "previous render" in error else None

        info = srv.wait_for(failed, what="board a's failed render of b2")
        assert info["build"] == "b1"
        assert "modules-6.19.0-arm64.cpio" in info["error"]
        # The board is not offline: it still gets build b1, whole.
        assert srv.tftp_get("afa-devboot-board-a") == old
        assert srv.served(image_of(old)) is not None


def test_a_corrupt_blob_is_found_and_its_build_read_again(
    tmp_path: Path, fits: tuple[Path, Path], modules: Path
) -> None:
    srv = Served(tmp_path)
    (srv.boards / "a.toml").write_text(BOARD_A)
    drop_build(srv.builds, "b1", fits[0], modules)
    with srv:
        script = srv.tftp_get("afa-devboot-board-a")
        initrd_name = script_vars(script)["devboot_initrd"].lstrip(":")
        good = srv.tftp_get(initrd_name)
    # A bit flips in the store's copy of the modules CPIO while the service is down.
    blob = srv.store / "blobs" / hashlib.sha256(modules.read_bytes()).hexdigest()
    blob.chmod(0o644)
    with blob.open("r+b") as f:
        f.seek(blob.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    blob.chmod(0o444)
    with srv:
        srv.wait_for(lambda: "is corrupt" in srv.log(), what="the corrupt blob found")
        # Read again from the build folder: the same name serves the right bytes again.
        got = srv.wait_for(lambda: srv.served(initrd_name) == good or None, what="good initrd")
        assert got
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs for the store (root)")
def test_a_full_store_keeps_the_previous_build_served(
    tmp_path: Path, fits: tuple[Path, Path]
) -> None:
    srv = Served(tmp_path)
    srv.store.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "overrided-test", srv.store], check=True
    )
    try:
        (srv.boards / "a.toml").write_text(BOARD_A)
        drop_build(srv.builds, "b1", fits[0])
        with srv:
            old = srv.tftp_get("afa-devboot-board-a")
            # A newer build that does not fit in the store: 4 MiB of kernel.
            big = tmp_path / "big"
            kernel = tmp_path / "Image"
            kernel.write_bytes(os.urandom(4 << 20))
            subprocess.run(
                [
                    sys.executable, "-m", "overrided", "fit", "build", "--kernel", str(kernel),
                    "--dtbs", str(fits[0].parent / "fdt-a.dtb"), "-o", str(big),
                ],
                check=True, cwd=REPO, capture_output=True,
            )  # fmt: skip
            drop_build(srv.builds, "b2", big)
            srv.wait_for(lambda: "build b2: " in srv.log(), what="b2 indexed or refused")
            builds = {b["name"]: b for b in srv.api("/api/builds")}
            assert "No space left" in (builds["b2"]["error"] or ""), builds["b2"]
            # The board keeps its build, whole; the server keeps serving.
            assert srv.tftp_get("afa-devboot-board-a") == old
            assert srv.tftp_get(image_of(old)) is not None
    finally:
        subprocess.run(["umount", "-l", srv.store], check=False)
