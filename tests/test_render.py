"""Per-board resolution and rendering, without a server: real FITs (mkimage), real DTBs (dtc),
modules CPIOs from GNU cpio, keys from the keys module, and the store on disk.

A render is served names → views over the build's ingested blobs: it writes no artifact bytes,
and equal inputs give equal views and names."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import pytest

from overrided.builds import Build, Configuration, index_build
from overrided.config import Board
from overrided.fit import Fit
from overrided.fit.verify import verify
from overrided.keys import new_key, public_key_of
from overrided.pipeline import Env
from overrided.render import (
    FORCED_SIGNING_WARNING,
    Render,
    RenderContext,
    RenderError,
    board_for_hostname,
    render_board,
)
from overrided.store import Store
from tests.support.builds import init_cpio, modules_cpio
from tests.support.fits import board_dtb, sample_fit


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_fit(tmp_path_factory.mktemp("sample")).fit


@pytest.fixture
def setup(tmp_path: Path, sample: Path) -> tuple[Build, RenderContext]:
    folder = tmp_path / "kernel-builds" / "b1"
    folder.mkdir(parents=True)
    shutil.copy(sample, folder / "image.fit")
    modules_cpio(folder / "modules-6.19.0-arm64.cpio", "6.19.0")
    store = Store(tmp_path / "store")
    boards = tmp_path / "boards"
    boards.mkdir()
    ctx = RenderContext(store=store, boards_dir=boards, keys_dir=tmp_path / "keys")
    build = index_build(folder, store)
    assert build.usable, build.error
    return build, ctx


def context(tmp_path: Path, store: Store | None = None) -> RenderContext:
    """A render context with nothing shared yet (no parsed FIT, no signatures, no initrds)."""
    return RenderContext(
        store=store or Store(tmp_path / "store"),
        boards_dir=tmp_path / "boards",
        keys_dir=tmp_path / "keys",
    )


def landed_build(tmp_path: Path, sample: Path) -> tuple[RenderContext, Env]:
    """Build b1 (the sample FIT and a modules CPIO) in kernel-builds/, one board file (a), and
    the refresh's environment over them."""
    folder = tmp_path / "kernel-builds" / "b1"
    folder.mkdir(parents=True)
    shutil.copy(sample, folder / "image.fit")
    modules_cpio(folder / "modules-6.19.0-arm64.cpio", "6.19.0")
    ctx = context(tmp_path)
    ctx.boards_dir.mkdir()
    (ctx.boards_dir / "a.toml").write_text('compatible = ["v,board-a"]\n')
    return ctx, Env(folder.parent, ctx.boards_dir, ctx.store, ctx, grace=60.0)


def script_of(r: Render) -> str:
    """The board's barebox devboot script."""
    (name,) = r.info.served["barebox"]
    return r.names[name].read().decode()


def store_files(store: Store) -> dict[Path, tuple[int, int]]:
    """Every file in the store with its inode and mtime: any write shows."""
    return {
        p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in store.root.rglob("*") if p.is_file()
    }


def test_served_names_of_a_board(setup: tuple[Build, RenderContext]) -> None:
    build, ctx = setup
    r = render_board(Board(name="a", user="afa", compatible=["v,board-a"]), [build], ctx)
    names = sorted(r.names)
    pattern = [
        r"afa-devboot-board-a",
        r"afa-fit-board-a-[0-9a-f]{12}",
        r"afa-initrd-board-a-[0-9a-f]{12}",
        r"afa-linux-board-a",
        r"afa-oftree-board-a",
        r"afa-oftree-board-a-[0-9a-f]{12}",
    ]
    assert len(names) == len(pattern)
    for name, p in zip(names, pattern, strict=True):
        assert re.fullmatch(p, name), (name, p)
    # Versioned names embed their view's identity; the stable ones do not.
    assert r.versioned == {n for n in names if re.search(r"-[0-9a-f]{12}$", n)}
    for name in r.versioned:
        assert r.names[name].digest.startswith(name[-12:])
    # Every view reads ranges of the build's ingested blobs only: each a store file named by
    # the sha256 of its bytes.
    inputs = set(build.blobs().values())
    for view in r.names.values():
        assert view.files() <= inputs
        for piece in view.pieces:
            if piece.path is not None:
                assert piece.path == ctx.store.path_of(piece.digest)
                assert hashlib.sha256(piece.path.read_bytes()).hexdigest() == piece.digest
    assert r.info.configuration == "conf-a" and r.info.build == "b1"


@pytest.mark.parametrize(
    ("image", "role"),
    [
        ("fit", "fit"),  # the trimmed FIT, whose versioned name stays served for others
        ("kernel", "kernel"),  # the plain kernel of the FIT's configuration
        ("none", None),  # no image override; `boot net` still gets the FIT
    ],
)
def test_script_names_the_boot_net_image_which_serves_the_board_image(
    setup: tuple[Build, RenderContext], image: str, role: str | None
) -> None:
    build, ctx = setup
    # As a board file gives it: "none" is a word there.
    fields = {"name": "a", "user": "afa", "compatible": ["v,board-a"], "image": image}
    board = Board.model_validate({**fields, "initrd": None})
    r = render_board(board, [build], ctx)
    script = script_of(r).splitlines()
    if role is None:
        assert not any(line.startswith("devboot_image=") for line in script)
        assert r.names["afa-linux-board-a"] == r.names[r.info.artifacts["fit"]]
        return
    assert 'devboot_image="afa-linux-board-a"' in script
    # The very bytes the versioned name of that part serves, which stays published.
    assert r.names["afa-linux-board-a"] == r.names[r.info.artifacts[role]]
    assert r.info.artifacts[role] in r.versioned


def test_rendering_writes_no_artifact_bytes_and_equal_inputs_give_equal_views(
    setup: tuple[Build, RenderContext], tmp_path: Path
) -> None:
    build, ctx = setup
    board = Board(name="a", compatible=["v,board-a"])
    before = store_files(ctx.store)
    first = render_board(board, [build], ctx)
    # The initrd's warnings are the one small result kept (once per set of parts); no blob.
    written = set(store_files(ctx.store)) - set(before)
    assert all(p.parent == ctx.store.cache for p in written), written
    assert {p.name for p in ctx.store.blobs.iterdir()} == set(build.blobs().values())
    settled = store_files(ctx.store)
    again = render_board(board, [build], ctx)
    assert again.names == first.names and first.same_names(again)  # the script too
    assert again.versioned == first.versioned
    # A fresh context (a restart: the FIT parsed again, nothing shared) gives the same names.
    fresh = render_board(board, [build], context(tmp_path, ctx.store))
    assert fresh.names == first.names
    assert store_files(ctx.store) == settled  # nothing written, nothing rewritten
    # Any input change is a new render: here the board's bootargs.
    changed = render_board(board.model_copy(update={"bootargs": {"x": "y"}}), [build], ctx)
    assert not changed.same_names(first)
    assert changed.names["none-devboot-board-a"] != first.names["none-devboot-board-a"]
    assert changed.info.artifacts["fit"] == first.info.artifacts["fit"]  # same FIT view
    # Another board of the same build shares the build's FIT blob, not its trim.
    other = render_board(Board(name="b", compatible=["v,board-b"]), [build], ctx)
    fit_a = first.names[first.info.artifacts["fit"]]
    fit_b = other.names[other.info.artifacts["fit"]]
    assert fit_a.files() == fit_b.files() == {build.blobs()["fit"]}
    assert fit_a.digest != fit_b.digest
    assert store_files(ctx.store) == settled


def test_the_script_says_when_the_build_was_built_not_when_it_was_rendered(
    setup: tuple[Build, RenderContext],
) -> None:
    build, ctx = setup
    r = render_board(Board(name="a", compatible=["v,board-a"]), [build], ctx)
    built = datetime.fromtimestamp(build.mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    header = script_of(r).splitlines()[1]
    assert "build b1 (6.19.0), configuration conf-a (Board A)" in header
    assert f"built {built}" in header and "rendered" not in header


def test_plain_kernel_names_its_dtb(tmp_path: Path) -> None:
    folder = tmp_path / "kernel-builds" / "img"
    folder.mkdir(parents=True)
    kernel = b"\0" * 4096 + b"Linux version 6.19.0 (me@host) #1\n"
    (folder / "Image").write_bytes(kernel)
    dtb = board_dtb(folder / "dts/radxa/rk3568-rock-3a.dtb", ["radxa,rock3a", "rockchip,rk3568"])
    store = Store(tmp_path / "store")
    ctx = RenderContext(store=store, boards_dir=tmp_path, keys_dir=tmp_path / "keys")
    build = index_build(folder, store)
    board = Board(name="rock3a", compatible=["radxa,rock3a"], image="kernel", initrd=None)
    r = render_board(board, [build], ctx)
    assert build.kernel_blob is not None
    kernel_view = r.names[r.info.artifacts["kernel"]]
    assert kernel_view.read() == kernel
    # The ingested Image itself, whose content hash is the view's identity.
    assert kernel_view == build.kernel_blob.view()
    assert kernel_view.digest == hashlib.sha256(kernel).hexdigest()
    assert r.names[r.info.artifacts["oftree"]].read() == dtb.read_bytes()
    assert r.names["none-linux-rock3a"].read() == kernel  # `boot net` gets the kernel
    script = script_of(r)
    # The script's image is the `boot net` name, which serves the kernel for this board.
    assert 'devboot_image="none-linux-rock3a"' in script
    assert f'devboot_oftree="{r.info.artifacts["oftree"]}"' in script
    assert "devboot_initrd" not in script


def test_signed_board_gets_a_signed_fit_and_forced_boards_a_warning(
    setup: tuple[Build, RenderContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    build, ctx = setup
    new_key(ctx.keys_dir, "lab")
    board = Board(
        name="a", compatible=["v,board-a"], sign="lab", signed_images_forced=True, initrd=None
    )
    r = render_board(board, [build], ctx)
    fit_view = r.names[r.info.artifacts["fit"]]
    fit_bytes = fit_view.read()
    report = verify(fit_bytes, public_key_of(ctx.keys_dir, "lab"))
    assert report.ok, report.lines()
    # The signature is new bytes around the same image data: the kernel is still read from
    # the build's FIT blob, not copied.
    assert fit_view.files() == {build.blobs()["fit"]}
    kernel_len = ctx.parts_of(build).fit.images["kernel"].size
    assert any(p.path is not None and p.length >= kernel_len for p in fit_view.pieces)
    unsigned = render_board(board.model_copy(update={"sign": None}), [build], ctx)
    assert unsigned.names[unsigned.info.artifacts["fit"]] != fit_view
    assert FORCED_SIGNING_WARNING in r.info.warnings
    # The name the script gives the image serves the signed FIT too.
    assert 'devboot_image="none-linux-board-a"' in script_of(r).splitlines()
    assert r.names["none-linux-board-a"] == fit_view
    # The script says so too: with signed images forced, barebox ignores it.
    assert f"warning: {FORCED_SIGNING_WARNING}" in script_of(r).splitlines()[1]
    # Signed again from scratch (a fresh context), at another time: the same bytes and name,
    # stamped with the build's own time rather than the clock's.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")
    fresh = RenderContext(store=ctx.store, boards_dir=ctx.boards_dir, keys_dir=ctx.keys_dir)
    again = render_board(board, [build], fresh)
    assert again.names[again.info.artifacts["fit"]].read() == fit_bytes
    assert again.info.artifacts["fit"] == r.info.artifacts["fit"]


def test_overlays_are_served_and_applied_on_top(setup: tuple[Build, RenderContext]) -> None:
    build, ctx = setup
    overlay = ctx.boards_dir / "overlays" / "spi.dtbo"
    overlay.parent.mkdir()
    source = overlay.with_suffix(".dts")
    source.write_text("/dts-v1/;\n/plugin/;\n&{/} { spi-enabled; };\n")
    subprocess.run(["dtc", "-q", "-@", "-I", "dts", "-O", "dtb", "-o", overlay, source], check=True)
    board = Board(name="a", compatible=["v,board-a"], oftree=["overlays/spi.dtbo"], initrd=None)
    r = render_board(board, [build], ctx)
    name = r.info.artifacts["overlay"]
    assert re.fullmatch(r"none-overlay-board-a-[0-9a-f]{12}", name)
    assert r.names[name].read() == overlay.read_bytes()
    # The board file's overlay is ingested: served from the store's copy, named by content.
    assert r.names[name] == ctx.store.ingest(overlay).view()
    # Keep the DTB the FIT brings, apply the overlay on top: barebox's leading colon.
    assert f'devboot_oftree=":{name}"' in script_of(r).splitlines()


def test_every_format_the_board_asks_for(setup: tuple[Build, RenderContext]) -> None:
    build, ctx = setup
    ctx.http_base = "http://127.0.0.1:8080/"  # iPXE loads over HTTP
    board = Board(
        name="a",
        compatible=["v,board-a"],
        formats=["barebox", "pxe", "bootscr", "ipxe"],
        mac="52:54:00:12:34:56",
    )
    r = render_board(board, [build], ctx)
    assert set(r.info.served) == {"barebox", "pxe", "bootscr", "ipxe"}
    assert "pxelinux.cfg/01-52-54-00-12-34-56" in r.info.served["pxe"]
    for files in r.info.served.values():
        for name in files:
            assert name in r.names


def test_modules_under_usr_lib_are_warned_about(tmp_path: Path, sample: Path) -> None:
    folder = tmp_path / "kernel-builds" / "merged-usr"
    folder.mkdir(parents=True)
    shutil.copy(sample, folder / "image.fit")
    cpio = modules_cpio(tmp_path / "m.cpio", "6.19.0")
    # Re-root the same archive under usr/ with GNU cpio: what INSTALL_MOD_PATH=usr gives.
    tree = tmp_path / "tree"
    (tree / "usr").mkdir(parents=True)
    subprocess.run(["cpio", "-idm", "--quiet"], stdin=cpio.open("rb"), cwd=tree / "usr", check=True)
    names = "\n".join(sorted(str(p.relative_to(tree)) for p in tree.rglob("*")))
    with (folder / "modules-6.19.0-arm64.cpio").open("wb") as out:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            input=names.encode(),
            stdout=out,
            cwd=tree,
            check=True,
        )
    store = Store(tmp_path / "store")
    ctx = RenderContext(store=store, boards_dir=tmp_path, keys_dir=tmp_path / "keys")
    r = render_board(Board(name="a", compatible=["v,board-a"]), [index_build(folder, store)], ctx)
    assert any("usr/lib/modules" in w for w in r.info.warnings), r.info.warnings


def test_an_init_cpio_goes_after_the_modules_and_warnings_name_the_files_people_know(
    setup: tuple[Build, RenderContext],
) -> None:
    build, ctx = setup
    init = init_cpio(
        ctx.boards_dir / "init.cpio",
        {"init": b"#!/bin/sh\n", "lib/modules/6.19.0/modules.dep": b"mine\n"},
    )
    r = render_board(Board(name="a", compatible=["v,board-a"], init="init.cpio"), [build], ctx)
    initrd = r.names[r.info.artifacts["initrd"]]
    assert r.names["none-initramfs-board-a"] == initrd  # barebox's `boot net` name
    modules = build.modules[0].read_bytes()
    pad = -len(modules) % 4
    assert initrd.read() == modules + b"\0" * pad + init.read_bytes()
    assert initrd.files() == {build.module_blobs[0].digest, ctx.store.ingest(init).digest}
    # Both parts carry modules.dep: the warning names the build's file and the board's, never
    # their copies in the store.
    (dup,) = [w for w in r.info.warnings if "lib/modules/6.19.0/modules.dep" in w]
    assert str(build.modules[0]) in dup and "init.cpio" in dup, dup
    assert str(ctx.store.root) not in dup, dup


@pytest.mark.parametrize(
    ("board", "error"),
    [
        (Board(name="x", compatible=["v,board-z"], rule="u-boot"), "build b1: no match"),
        (Board(name="x", compatible=["v,board-a"], build="nope"), "build 'nope' does not exist"),
        (Board(name="x", compatible=["v,board-a"], init="missing.cpio"), "missing.cpio"),
        (Board(name="x", compatible=["v,board-a"], sign="nokey"), "nokey"),
        (Board(name="x", compatible=["v,board-a"], oftree=["no.dtbo"]), "overlay 'no.dtbo'"),
    ],
)
def test_boards_that_cannot_be_rendered_say_why(
    setup: tuple[Build, RenderContext], board: Board, error: str
) -> None:
    build, ctx = setup
    with pytest.raises(Exception) as info:
        render_board(board, [build], ctx)
    assert error in str(info.value)


def test_barebox_default_fallback_is_served_with_a_warning(
    setup: tuple[Build, RenderContext],
) -> None:
    build, ctx = setup
    r = render_board(Board(name="z", compatible=["v,board-z"]), [build], ctx)
    assert r.info.configuration == "conf-b"  # the sample FIT's default
    assert "falls back to /configurations/default" in r.info.reason
    assert any("no configuration lists 'v,board-z'" in w for w in r.info.warnings)


def test_no_usable_build() -> None:
    broken = Build("b", Path("b"), error="b: no image.fit")
    ctx = RenderContext(store=None, boards_dir=Path(), keys_dir=Path())  # type: ignore[arg-type]
    with pytest.raises(RenderError, match="no usable build"):
        render_board(Board(compatible=["v,x"]), [broken], ctx)


def conf(name: str, *compatible: str) -> Configuration:
    return Configuration(name=name, compatible=compatible, kernel="kernel")


BUILD = Build(
    "b",
    Path("b"),
    fit=Path("f"),
    arch="arm64",
    configurations=(
        conf("conf-1", "radxa,rock3a", "rockchip,rk3568"),
        conf("conf-2", "rockchip,rk3568-evb1", "rockchip,rk3568"),
        conf("conf-3", "vendor-a,twin", "soc"),
        conf("conf-4", "vendor-b,twin", "soc"),
        conf("conf-5", "rockchip,rk3568"),
        conf("conf-6", "novendor"),
    ),
)


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("rock3a", "radxa,rock3a"),  # exactly one "<vendor>,rock3a" first
        ("ROCK3A", "radxa,rock3a"),  # barebox compares case-insensitively
        ("rk3568-evb1", "rockchip,rk3568-evb1"),
        ("rk3568", "rockchip,rk3568"),  # conf-5 lists it first; conf-1/2 only second
        ("twin", "2 configurations for '<vendor>,twin': conf-3, conf-4"),
        ("novendor", "has a first compatible '<vendor>,novendor'"),  # no vendor prefix
        ("arm64", "has a first compatible '<vendor>,arm64'"),  # the <user>-devboot-<arch> probe
    ],
)
def test_hostname_only_boards(hostname: str, expected: str) -> None:
    if "," in expected and " " not in expected:
        board = board_for_hostname("none", hostname, BUILD)
        assert board.compatible == [expected]
        assert (board.user, board.hostname, board.build) == ("none", hostname, "b")
    else:
        with pytest.raises(RenderError) as info:
            board_for_hostname("none", hostname, BUILD)
        assert expected in str(info.value)
        assert f"no board file for none/{hostname}" in str(info.value)


def test_trimmed_fit_holds_only_the_match(setup: tuple[Build, RenderContext]) -> None:
    build, ctx = setup
    r = render_board(Board(name="c", compatible=["v,board-c", "v,soc-c"]), [build], ctx)
    with Fit.from_bytes(r.names[r.info.artifacts["fit"]].read()) as fit:
        assert list(fit.configurations) == ["conf-c"]
        assert fit.default == "conf-c"
        assert all(img.hashes for img in fit.images.values())  # sha256 hash-1 everywhere


def test_a_landed_builds_trims_are_made_while_its_modules_are_stored(
    tmp_path: Path, sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The modules CPIO's hash and copy take a few tenths of a second on another core: the
    refresh makes every FIT trim meanwhile (the board files' first), and the renders that
    follow take those trims instead of making them again."""
    import threading

    from overrided import builds as builds_mod
    from overrided import pipeline
    from overrided.pipeline import Changes, Snapshot, refresh

    _, env = landed_build(tmp_path, sample)
    stored = threading.Event()  # the modules CPIO is held until the warm-up has run
    real_ingest = builds_mod._ingest

    def slow_ingest(*args: object, **kwargs: object) -> object:
        assert stored.wait(30)
        return real_ingest(*args, **kwargs)  # type: ignore[arg-type]

    seen: dict[str, object] = {}
    real_warmer = pipeline._warmer

    def warmer(boards: tuple[Board, ...], env: Env) -> builds_mod.FitReady:
        warm_up = real_warmer(boards, env)

        def recorded(build: Build, done: Callable[[], bool]) -> None:
            seen["done before"] = done()
            warm_up(build, done)
            seen["modules"] = build.module_blobs
            seen["trims"] = dict(env.ctx.parts_of(build)._trims)
            stored.set()

        return recorded

    monkeypatch.setattr(builds_mod, "_ingest", slow_ingest)
    monkeypatch.setattr(pipeline, "_warmer", warmer)
    snap = refresh(Snapshot(), Changes(frozenset({"b1"}), True), env).snapshot
    build = snap.builds["b1"]
    assert seen["done before"] is False and seen["modules"] == ()
    trims = seen["trims"]
    assert isinstance(trims, dict)
    assert set(trims) == {c.name for c in build.configurations}
    info = snap.infos["a"]
    assert info.configuration and build.module_blobs
    fit_view = snap.renders["a"].names[info.artifacts["fit"]]
    assert fit_view is trims[info.configuration]  # the render took the trim made meanwhile


def test_a_landed_builds_modules_are_listed_from_their_copy_while_it_is_hashed(
    tmp_path: Path, sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renders' initrd warnings need the modules CPIO's members: they are read from the
    store's copy while the hash process hashes it, then belong to the blob, so no reading of
    the blob is started after it is stored. A copy that cannot be listed is read again as the
    blob, so that the error names the blob's file."""
    from overrided import cpio
    from overrided import store as store_mod
    from overrided.pipeline import Changes, Snapshot, refresh

    monkeypatch.setattr(store_mod, "_BIG_FILE", 0)  # every file takes the big files' path
    ctx, env = landed_build(tmp_path, sample)
    real_inspect = cpio.inspect
    read: list[Path] = []

    def inspect(path: Path, opened: BinaryIO | None = None) -> list[cpio.Part]:
        read.append(path)
        return real_inspect(path, opened)

    monkeypatch.setattr(cpio, "inspect", inspect)
    snap = refresh(Snapshot(), Changes(frozenset({"b1"}), True), env).snapshot
    (blob,) = snap.builds["b1"].module_blobs
    # Read once, from the copy (the blob's name was not known yet); never from the blob.
    assert [p.parent for p in read] == [ctx.store.tmp]
    listed = ctx.inspected(blob.path)
    assert listed == [
        dataclasses.replace(p, path=blob.path) for p in real_inspect(blob.path)
    ] and all(p.path == blob.path for p in listed)
    assert snap.infos["a"].error is None

    assert len(read) == 1 and snap.infos["a"].error is None
    assert snap.infos["a"].file == f"{ctx.boards_dir.name}/a.toml"  # where the board came from
    broken = tmp_path / "broken.cpio"
    broken.write_bytes(b"not a cpio archive at all")
    parsed = threading.Event()
    waiting = ctx.read(blob.path, parsed)  # a listing waits for its build's FIT parse
    time.sleep(0.2)
    assert not waiting.done()
    parsed.set()
    assert waiting.result(10) == real_inspect(blob.path)
    failed: concurrent.futures.Future[list[cpio.Part]] = ctx.read(broken, parsed)
    bad = ctx.store.put_bytes(b"not a cpio archive at all")
    broken.unlink()  # renamed into the blobs, as a copy is: it was opened before
    ctx.stored(bad, failed)
    assert isinstance(failed.exception(), cpio.CpioError) and str(broken) in str(failed.exception())
    with pytest.raises(cpio.CpioError, match=bad.digest):
        ctx.inspected(bad.path)


def test_the_warm_up_stops_once_the_modules_are_stored(
    setup: tuple[Build, RenderContext],
) -> None:
    from overrided.pipeline import _warmer

    build, ctx = setup
    board = Board(name="a", compatible=["v,board-a"])
    env = Env(build.path.parent, ctx.boards_dir, ctx.store, ctx, grace=60.0)
    _warmer((board,), env)(build, lambda: True)
    assert ctx.parts_of(build)._trims == {}
    _warmer((board,), env)(build, lambda: False)
    assert set(ctx.parts_of(build)._trims) == {c.name for c in build.configurations}
