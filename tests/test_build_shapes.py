"""Builds as the kernel's own tools leave them, and what each board gets from them.

* A kernel-only build (``Image`` and a modules CPIO, no DTBs) serves boards that keep their own
  device tree (``oftree = "board"``, ``"keep"`` or overlays); a board that needs the build's DTB
  gets the reason.
* ``make_fit.py -D``: a configuration's ``fdt`` is a base DTB and overlays. U-Boot applies the
  list from the FIT; barebox loads only the first fdt (``common/bootm-fit.c``), so its script
  names the overlays in ``bootm.oftree`` after the base the FIT brings.
* ``make_fit.py -r``: a configuration's ``ramdisk``, which barebox's FIT override takes as the
  initrd; ``initrd = "append"`` follows it, so a ramdisk holding modules gives them twice.
* Configuration names (``conf-1…N`` in DTB order) are not stable across builds: boards follow
  their compatible.

DTBs and overlays are compiled by ``dtc -@``, composites made by ``fdtoverlay``, CPIOs written by
GNU cpio, and the FITs by our builder in ``make_fit.py``'s layout; ``mkimage -l`` reads them.
"""

from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

import pytest

from overrided.builds import Build, index_build
from overrided.config import Board
from overrided.discovery import release_of_modules_name
from overrided.fit import Fit, build_fit
from overrided.fit.build import DtbSpec
from overrided.render import RenderContext, RenderError, render_board
from overrided.store import Store
from tests.support.builds import init_cpio, modules_cpio
from tests.support.fits import board_dtb, compile_dts, run

RELEASE = "6.19.0-test"
KERNEL = b"\0" * 4096 + f"Linux version {RELEASE} (me@host) #1 SMP\n".encode()

BASE_DTS = """/dts-v1/;
/ {
    compatible = "radxa,rock3a", "rockchip,rk3568";
    model = "ROCK 3A";
    #address-cells = <1>;
    #size-cells = <1>;
    spi: spi@fe610000 { compatible = "rockchip,rk3066-spi"; reg = <0xfe610000 0x1000>;
        status = "disabled"; };
    chosen { };
};
"""
# Two overlays as kbuild's `dtb-y += base-with-ovl.dtb` composites are made of.
OVERLAY_SPI = """/dts-v1/;
/plugin/;
&spi { status = "okay"; };
"""
OVERLAY_CHOSEN = """/dts-v1/;
/plugin/;
&{/chosen} { overrided-overlay = "decomposed"; };
"""


def compile_overlay(source: str, out: Path) -> Path:
    """An overlay compiled by ``dtc -@`` (symbols, fixups)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(".dtso")
    src.write_text(source)
    run("dtc", "-q", "-@", "-I", "dts", "-O", "dtb", "-o", out, src)
    return out


def base_dtb(out: Path) -> Path:
    """The ROCK 3A base DTB, with symbols so that overlays can name its labels."""
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(".dts")
    src.write_text(BASE_DTS)
    run("dtc", "-q", "-@", "-I", "dts", "-O", "dtb", "-o", out, src)
    return out


def context(tmp_path: Path) -> RenderContext:
    boards = tmp_path / "boards"
    boards.mkdir(exist_ok=True)
    return RenderContext(
        store=Store(tmp_path / "store"), boards_dir=boards, keys_dir=tmp_path / "keys"
    )


def script_of(r: object) -> str:
    from overrided.render import Render

    assert isinstance(r, Render)
    (name,) = r.info.served["barebox"]
    return r.names[name].read().decode()


def script_vars(text: str) -> dict[str, str]:
    """The ``devboot_*`` variables a script sets."""
    return dict(re.findall(r'^(devboot_\w+)="([^"]*)"$', text, re.M))


# --- kernel-only builds ---------------------------------------------------------------------


@pytest.fixture
def kernel_only(tmp_path: Path) -> Build:
    """``kernel-builds/k1``: ``Image`` and ``modules-<release>-arm64.cpio``, no DTB."""
    folder = tmp_path / "kernel-builds" / "k1"
    (folder / "arch/arm64/boot").mkdir(parents=True)
    (folder / "arch/arm64/boot/Image").write_bytes(KERNEL)
    modules_cpio(folder / f"modules-{RELEASE}-arm64.cpio", RELEASE)
    build = index_build(folder, Store(tmp_path / "store"))
    assert build.usable, build.error
    return build


def test_a_kernel_without_dtbs_is_a_build(kernel_only: Build) -> None:
    assert kernel_only.kernel_only
    assert kernel_only.release == RELEASE
    assert kernel_only.modules and kernel_only.modules[0].name == f"modules-{RELEASE}-arm64.cpio"
    (conf,) = kernel_only.configurations
    assert (conf.kernel, conf.fdt, conf.compatible) == ("kernel", (), ())
    # U-Boot's own tool reads the FIT we built: one image, one configuration, no fdt.
    assert kernel_only.fit is not None
    listing = run("mkimage", "-l", kernel_only.fit)
    assert "Image 0 (kernel)" in listing and "Image 1" not in listing, listing
    assert "FDT:" not in listing, listing


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # Only the kernel; barebox passes its own device tree.
        (
            {"image": "kernel", "oftree": "board"},
            {"devboot_image": "none-linux-rock3a", "devboot_oftree": "", "devboot_initrd": "@"},
        ),
        # The kernel-only FIT (no fdt in it): the entry's DTB stays.
        ({"oftree": "keep"}, {"devboot_image": "none-linux-rock3a", "devboot_initrd": "@"}),
        # The entry's DTB with a board file's overlay on top.
        (
            {"image": "kernel", "oftree": ["spi.dtbo"], "initrd": "append"},
            {
                "devboot_image": "none-linux-rock3a",
                "devboot_oftree": ":overlay",
                "devboot_initrd": ":@",
            },
        ),
    ],
)
def test_kernel_only_builds_serve_boards_that_keep_their_device_tree(
    tmp_path: Path, kernel_only: Build, fields: dict[str, object], expected: dict[str, str]
) -> None:
    ctx = context(tmp_path)
    compile_overlay(OVERLAY_SPI.replace("&spi", "&{/}"), ctx.boards_dir / "spi.dtbo")
    board = Board.model_validate({"name": "rock3a", "compatible": ["radxa,rock3a"], **fields})
    r = render_board(board, [kernel_only], ctx)
    art = r.info.artifacts
    assert "oftree" not in art, art  # nothing to serve: the build has no DTB
    assert "a kernel-only build" in r.info.reason
    want = {
        k: v.replace("@", art["initrd"]).replace("overlay", art.get("overlay", "?"))
        for k, v in expected.items()
    }
    assert script_vars(script_of(r)) == want
    linux = r.names["none-linux-rock3a"].read()
    if board.image == "kernel":
        assert linux == KERNEL  # barebox's `boot net` name serves the plain kernel
    else:
        assert linux.startswith(b"\xd0\x0d\xfe\xed")  # the FIT holding only the kernel


@pytest.mark.parametrize("image", ["fit", "kernel", "none"])
def test_a_board_that_needs_the_builds_dtb_gets_the_reason(
    tmp_path: Path, kernel_only: Build, image: str
) -> None:
    board = Board.model_validate(
        {"name": "rock3a", "compatible": ["radxa,rock3a"], "image": image, "oftree": "fit"}
    )
    with pytest.raises(RenderError) as err:
        render_board(board, [kernel_only], context(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("build k1 is a kernel without DTBs")
    assert 'oftree = "board"' in message and "*.dtb" in message


def test_the_service_says_why_a_kernel_only_build_serves_no_board_by_hostname(
    kernel_only: Build,
) -> None:
    from overrided.pipeline import Snapshot, why_not

    snapshot = Snapshot(builds={"k1": kernel_only})
    reason = why_not(snapshot, "none", "rock3a")
    assert "build k1 is a kernel without DTBs" in reason, reason
    assert 'oftree = "board"' in reason


# --- make_fit.py -D: base DTB + overlays ----------------------------------------------------


@pytest.fixture
def decomposed(tmp_path: Path) -> tuple[Build, dict[str, Path]]:
    """A FIT in ``make_fit.py -D``'s layout: conf-1 = base + two overlays, conf-2 a plain DTB;
    the composite ``fdtoverlay`` makes of the same parts is kept to compare with."""
    d = tmp_path / "dts"
    files = {
        "base": base_dtb(d / "rk3568-rock-3a.dtb"),
        "spi": compile_overlay(OVERLAY_SPI, d / "rock-3a-spi.dtbo"),
        "chosen": compile_overlay(OVERLAY_CHOSEN, d / "rock-3a-chosen.dtbo"),
        "other": board_dtb(d / "imx8mm-evk.dtb", ["fsl,imx8mm-evk", "fsl,imx8mm"], "EVK"),
    }
    files["composite"] = d / "rk3568-rock-3a-spi.dtb"
    run("fdtoverlay", "-i", files["base"], "-o", files["composite"], files["spi"], files["chosen"])
    (d / "Image").write_bytes(KERNEL)
    folder = tmp_path / "kernel-builds" / "d1"
    folder.mkdir(parents=True)
    spec: list[DtbSpec] = [[files["base"], files["spi"], files["chosen"]], files["other"]]
    build_fit(d / "Image", spec, folder / "image.fit")
    modules_cpio(folder / f"modules-{RELEASE}-arm64.cpio", RELEASE)
    build = index_build(folder, Store(tmp_path / "store"))
    assert build.usable, build.error
    return build, files


def test_decomposed_fit_lists_base_then_overlays(decomposed: tuple[Build, dict[str, Path]]) -> None:
    build, files = decomposed
    confs = {c.name: c for c in build.configurations}
    assert confs["conf-1"].fdt == ("fdt-1", "fdt-2", "fdt-3")
    assert confs["conf-1"].compatible == ("radxa,rock3a", "rockchip,rk3568")  # the base's
    assert confs["conf-2"].fdt == ("fdt-4",)
    assert build.fit is not None
    listing = run("mkimage", "-l", build.fit)
    assert listing.count("Type:         Flat Device Tree") == 4, listing
    with Fit.open(build.fit) as fit:
        for unit, key in (("fdt-1", "base"), ("fdt-2", "spi"), ("fdt-3", "chosen")):
            assert bytes(fit.images[unit].data()) == files[key].read_bytes()


def apply_overlays(base: bytes, overlays: list[bytes], tmp: Path) -> bytes:
    """``fdtoverlay`` applied to served bytes, as barebox applies ``bootm.oftree``'s list."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "base.dtb").write_bytes(base)
    names = []
    for i, data in enumerate(overlays):
        (tmp / f"o{i}.dtbo").write_bytes(data)
        names.append(tmp / f"o{i}.dtbo")
    run("fdtoverlay", "-i", tmp / "base.dtb", "-o", tmp / "out.dtb", *names)
    return (tmp / "out.dtb").read_bytes()


def test_barebox_gets_the_overlays_named_after_the_fits_base(
    tmp_path: Path, decomposed: tuple[Build, dict[str, Path]]
) -> None:
    """barebox loads the FIT's first fdt; the script's leading colon keeps it and applies the
    configuration's overlays in order, which gives the composite kbuild would have made."""
    build, files = decomposed
    board = Board(name="rock3a", compatible=["radxa,rock3a"], initrd=None)
    r = render_board(board, [build], context(tmp_path))
    art = r.info.artifacts
    names = [art["fdtoverlay"], art["fdtoverlay1"]]
    assert script_vars(script_of(r)) == {
        "devboot_image": "none-linux-rock3a",
        "devboot_oftree": ":" + ":".join(names),
    }
    served = [r.names[n].read() for n in names]
    assert served == [files["spi"].read_bytes(), files["chosen"].read_bytes()]
    # The trimmed FIT keeps the whole list for U-Boot, which applies it.
    fit_bytes = r.names[art["fit"]].read()
    (tmp_path / "trim.fit").write_bytes(fit_bytes)
    with Fit.open(tmp_path / "trim.fit") as fit:
        conf = fit.configurations["conf-1"]
        assert conf.fdt == ["fdt-1", "fdt-2", "fdt-3"]
        base = bytes(fit.images[conf.fdt[0]].data())
    assert apply_overlays(base, served, tmp_path / "apply") == files["composite"].read_bytes()


def test_a_plain_kernel_board_names_base_and_overlays(
    tmp_path: Path, decomposed: tuple[Build, dict[str, Path]]
) -> None:
    build, files = decomposed
    board = Board(name="rock3a", compatible=["radxa,rock3a"], image="kernel", initrd=None)
    r = render_board(board, [build], context(tmp_path))
    art = r.info.artifacts
    oftree = script_vars(script_of(r))["devboot_oftree"]
    assert oftree == f"{art['oftree']}:{art['fdtoverlay']}:{art['fdtoverlay1']}"
    parts = [r.names[n].read() for n in oftree.split(":")]
    assert parts[0] == files["base"].read_bytes()
    assert apply_overlays(parts[0], parts[1:], tmp_path / "k") == files["composite"].read_bytes()


@pytest.mark.parametrize(
    ("fields", "oftree"),
    [
        ({"oftree": "board"}, ""),  # barebox's own device tree: the build's overlays stay out
        ({"image": "kernel", "oftree": "keep"}, None),  # the entry's DTB: not for its base
        ({"oftree": ["extra.dtbo"]}, ":@fdtoverlay:@fdtoverlay1:@overlay"),  # build's, then ours
    ],
)
def test_the_builds_overlays_go_only_onto_the_builds_base(
    tmp_path: Path,
    decomposed: tuple[Build, dict[str, Path]],
    fields: dict[str, object],
    oftree: str | None,
) -> None:
    build, _ = decomposed
    ctx = context(tmp_path)
    compile_overlay(OVERLAY_SPI.replace("&spi", "&{/}"), ctx.boards_dir / "extra.dtbo")
    board = Board.model_validate(
        {"name": "rock3a", "compatible": ["radxa,rock3a"], "initrd": "none", **fields}
    )
    r = render_board(board, [build], ctx)
    art = r.info.artifacts
    got = script_vars(script_of(r)).get("devboot_oftree")
    if oftree is not None:
        oftree = re.sub(r"@(\w+)", lambda m: art[m.group(1)], oftree)
    assert got == oftree


def test_forced_signing_boots_the_base_alone_and_says_so(
    tmp_path: Path, decomposed: tuple[Build, dict[str, Path]]
) -> None:
    build, _ = decomposed
    board = Board(name="rock3a", compatible=["radxa,rock3a"], signed_images_forced=True)
    r = render_board(board, [build], context(tmp_path))
    assert any("boots the base alone" in w for w in r.info.warnings), r.info.warnings


# --- make_fit.py -r: a ramdisk in the FIT ---------------------------------------------------


def ramdisk_build(tmp_path: Path, ramdisk: Path, name: str = "r1") -> Build:
    d = tmp_path / f"{name}-parts"
    dtb = base_dtb(d / "rk3568-rock-3a.dtb")
    (d / "Image").write_bytes(KERNEL)
    folder = tmp_path / "kernel-builds" / name
    folder.mkdir(parents=True)
    build_fit(d / "Image", [dtb], folder / "image.fit", ramdisk=ramdisk)
    modules_cpio(folder / f"modules-{RELEASE}-arm64.cpio", RELEASE)
    build = index_build(folder, Store(tmp_path / "store"))
    assert build.usable, build.error
    return build


@pytest.fixture(scope="module")
def ramdisks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Ramdisks as ``FIT_EXTRA_ARGS=--ramdisk=…`` might name them: the modules CPIO itself,
    gzip-compressed, and an init-only CPIO."""
    d = tmp_path_factory.mktemp("ramdisks")
    mods = modules_cpio(d / f"modules-{RELEASE}-arm64.cpio", RELEASE)
    gz = d / f"modules-{RELEASE}-arm64.cpio.gz"
    gz.write_bytes(gzip.compress(mods.read_bytes(), mtime=0))
    init = init_cpio(d / "init.cpio", {"init": b"#!/bin/sh\n"})
    return {"modules": mods, "gzip": gz, "init": init}


@pytest.mark.parametrize(
    ("ramdisk", "initrd", "image", "warned"),
    [
        ("modules", "append", "fit", "gets the modules twice"),
        ("gzip", "append", "fit", "gets the modules twice"),
        ("init", "append", "fit", None),  # no modules in the ramdisk: nothing doubled
        ("modules", "replace", "fit", None),  # ours replaces the FIT's ramdisk
        ("modules", "append", "kernel", None),  # no FIT override: the FIT's ramdisk is unused
    ],
)
def test_fit_ramdisk_and_the_boards_initrd(
    tmp_path: Path,
    ramdisks: dict[str, Path],
    ramdisk: str,
    initrd: str,
    image: str,
    warned: str | None,
) -> None:
    build = ramdisk_build(tmp_path, ramdisks[ramdisk])
    (conf,) = build.configurations
    assert conf.ramdisk == ("ramdisk",)
    assert build.fit is not None
    assert "Ramdisk" in run("mkimage", "-l", build.fit)
    board = Board.model_validate(
        {"name": "rock3a", "compatible": ["radxa,rock3a"], "initrd": initrd, "image": image}
    )
    r = render_board(board, [build], context(tmp_path))
    twice = [w for w in r.info.warnings if "ramdisk" in w]
    if warned is None:
        assert twice == [], twice
    else:
        assert len(twice) == 1 and warned in twice[0], r.info.warnings
        assert 'initrd = "replace"' in twice[0]
        assert f"warning: {twice[0]}" in script_of(r).splitlines()[1]
    # The trimmed FIT keeps the ramdisk, which barebox's FIT override takes as the initrd.
    trimmed = tmp_path / "trim.fit"
    trimmed.write_bytes(r.names[r.info.artifacts["fit"]].read())
    with Fit.open(trimmed) as fit:
        data = bytes(fit.images["ramdisk"].data())
    assert data == ramdisks[ramdisk].read_bytes()
    prefix = ":" if initrd == "append" else ""
    assert script_vars(script_of(r))["devboot_initrd"] == prefix + r.info.artifacts["initrd"]


# --- modules CPIOs as make modules-cpio-pkg names them --------------------------------------


@pytest.mark.parametrize(
    ("name", "release"),
    [
        ("modules-6.19.0-arm64.cpio", "6.19.0"),
        ("modules-6.19.0-rc3-00042-gdeadbeef-arm64.cpio", "6.19.0-rc3-00042-gdeadbeef"),
        ("modules-7.0.0-arm64.cpio.zst", "7.0.0"),
        ("modules-7.0.0-riscv.cpio.xz", "7.0.0"),
        # Debian's release ends in an arch itself
        ("modules-6.1.0-56-arm64-arm64.cpio.gz", "6.1.0-56-arm64"),
        ("modules-6.19.0.cpio", "6.19.0"),
        ("modules.cpio", None),
        ("modules-6.19.0-arm64.tar", None),
    ],
)
def test_modules_cpio_names(name: str, release: str | None) -> None:
    assert release_of_modules_name(name) == release


def test_a_compressed_modules_cpio_under_usr_lib_is_found_and_warned_about(
    tmp_path: Path,
) -> None:
    """``INSTALL_MOD_PATH=/usr``: ``usr/lib/modules/<release>/`` in a gzip-compressed CPIO. The
    release comes from the archive; rsinit looks only in ``/lib/modules``, so the board's status
    says so (an init part that provides ``lib -> usr/lib`` silences it)."""
    folder = tmp_path / "kernel-builds" / "u1"
    folder.mkdir(parents=True)
    (folder / "Image").write_bytes(KERNEL)
    tree = tmp_path / "tree"
    ko = tree / "usr/lib/modules" / RELEASE / "kernel/drivers/x.ko"
    ko.parent.mkdir(parents=True)
    ko.write_bytes(b"\x7fELF module")
    (tree / "usr/lib/modules" / RELEASE / "modules.dep").write_text("kernel/drivers/x.ko:\n")
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    raw = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        input="\n".join(names).encode(),
        cwd=tree,
        capture_output=True,
        check=True,
    ).stdout
    (folder / f"modules-{RELEASE}-arm64.cpio.gz").write_bytes(gzip.compress(raw, mtime=0))
    build = index_build(folder, Store(tmp_path / "store"))
    assert build.usable, build.error
    assert [m.name for m in build.modules] == [f"modules-{RELEASE}-arm64.cpio.gz"]
    ctx = context(tmp_path)
    board = Board(name="qemu", compatible=["linux,dummy-virt"], image="kernel", oftree="board")
    r = render_board(board, [build], ctx)
    assert any("usr/lib/modules" in w and "rsinit" in w for w in r.info.warnings), r.info
    # An init part that links lib to usr/lib: the modules are found, no warning.
    tree2 = tmp_path / "init-tree"
    tree2.mkdir()
    (tree2 / "usr" / "lib").mkdir(parents=True)
    (tree2 / "lib").symlink_to("usr/lib")
    (tree2 / "init").write_text("#!/bin/sh\n")
    listing = "\n".join(sorted(str(p.relative_to(tree2)) for p in tree2.rglob("*")))
    init = ctx.boards_dir / "init.cpio"
    init.write_bytes(
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            input=listing.encode(),
            cwd=tree2,
            capture_output=True,
            check=True,
        ).stdout
    )
    linked = render_board(board.model_copy(update={"init": "init.cpio"}), [build], ctx)
    assert not any("usr/lib/modules" in w for w in linked.info.warnings), linked.info.warnings


# --- configuration names are not keys across builds -----------------------------------------


def test_a_board_follows_its_compatible_when_the_dtb_order_changes(tmp_path: Path) -> None:
    """``make_fit.py`` numbers configurations in DTB order: a DTB added or renamed shifts every
    ``conf-N``. A board keeps its own DTB from build to build, whatever its configuration's name."""
    d = tmp_path / "dts"
    rock = base_dtb(d / "rk3568-rock-3a.dtb")
    evk = board_dtb(d / "imx8mm-evk.dtb", ["fsl,imx8mm-evk", "fsl,imx8mm"], "EVK")
    added = compile_dts(
        '/dts-v1/;\n/ { compatible = "acme,aaa"; model = "AAA"; };\n', d / "aaa.dtb"
    )
    (d / "Image").write_bytes(KERNEL)
    builds = []
    for name, dtbs in (("b1", [rock, evk]), ("b2", [added, evk, rock])):
        folder = tmp_path / "kernel-builds" / name
        folder.mkdir(parents=True)
        build_fit(d / "Image", dtbs, folder / "image.fit")
        builds.append(index_build(folder, Store(tmp_path / "store")))
    ctx = context(tmp_path)
    got = {}
    for build in builds:
        board = Board(name="rock3a", compatible=["radxa,rock3a"], build=build.name, initrd=None)
        r = render_board(board, builds, ctx)
        got[build.name] = r.info.configuration
        assert r.names[r.info.artifacts["oftree"]].read() == rock.read_bytes()
    assert got == {"b1": "conf-1", "b2": "conf-3"}


def test_a_refresh_reports_the_reason_in_the_boards_status_and_the_log(
    tmp_path: Path, kernel_only: Build, caplog: pytest.LogCaptureFixture
) -> None:
    """What ``/api/boards`` shows and the log says: one line each, the other board served."""
    from overrided.pipeline import Changes, Env, Snapshot, refresh

    ctx = context(tmp_path)
    (ctx.boards_dir / "rock3a.toml").write_text('compatible = ["radxa,rock3a"]\n')
    (ctx.boards_dir / "virt.toml").write_text(
        'compatible = ["linux,dummy-virt"]\nimage = "kernel"\noftree = "board"\n'
    )
    env = Env(
        builds_dir=kernel_only.path.parent,
        boards_dir=ctx.boards_dir,
        store=ctx.store,
        ctx=ctx,
        grace=60.0,
    )
    with caplog.at_level("INFO"):
        snap = refresh(Snapshot(), Changes(frozenset({"k1"}), True), env).snapshot
    refused = snap.infos["rock3a"]
    assert refused.reason.startswith("build k1 is a kernel without DTBs"), refused
    assert not refused.served
    served = snap.infos["virt"]
    assert served.build == "k1" and served.served["barebox"] == ["none-devboot-dummy-virt"]
    logged = [r.getMessage() for r in caplog.records if "kernel without DTBs" in r.getMessage()]
    assert logged and all("\n" not in m for m in logged), caplog.text
