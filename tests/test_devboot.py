"""The barebox devboot script, and through it barebox's override rules.

barebox's ``devboot`` (``defaultenv/defaultenv-2-base/bin/devboot``) runs ``ifup -a1``, changes
into ``global.net.fetchdir`` (the TFTP mount), sources ``<user>-devboot-<hostname>`` (falling
back to ``<user>-devboot-<arch>``) and turns each variable the script *set* into a boot
override; an unset variable leaves that part of the boot entry alone:

==================  ==================  ===============================================
variable            override            value
==================  ==================  ===============================================
devboot_image       ``bootm.image``     a FIT: kernel, DTB and initrd all come from it;
                                        a plain kernel: replaces only the kernel
                                        (we name ``<user>-linux-<hostname>``, see below)
devboot_oftree      ``bootm.oftree``    ``base:ov1:ov2``; ``:ov1`` keeps the DTB and
                                        applies overlays; ``""`` drops it (barebox then
                                        passes its own device tree)
devboot_initrd      ``bootm.initrd``    ``a:b`` concatenated; ``:a`` appends to the
                                        entry's (or the FIT's) initrd
==================  ==================  ===============================================

Other lines may set globals, e.g. ``global linux.bootargs.dyn.<name>="…"``. With signed images
forced, barebox ignores every override.

The image is named by barebox's own ``boot net`` name, ``<user>-linux-<hostname>``, which serves
the FIT or the kernel the board's image mode asks for: ``devboot net`` (and plain ``devboot``)
opened that file already for the ``net`` entry, and barebox re-uses a FIT it holds open under
the same path instead of reading it again. The DTB and the initrd keep their versioned names.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from overrided.clients import Artifacts
from overrided.clients.barebox import ScriptError, devboot_script, overrides, render

# barebox's `boot net` image name of BASE's board: the image override names it, whatever it is.
LINUX = "afa-linux-rock3a"

BASE = Artifacts(
    board="rock3a",
    hostname="rock3a",
    user="afa",
    arch="arm64",
    provenance="build b1 (6.1.0), configuration conf-7 (Radxa ROCK3 A), exact, rendered T",
    fit="afa-fit-rock3a-0123456789ab",
    configuration="conf-7",
    kernel="afa-kernel-rock3a-aaaaaaaaaaaa",
    oftree="afa-oftree-rock3a-bbbbbbbbbbbb",
    initrd="afa-initrd-rock3a-cccccccccccc",
)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # The common case: the trimmed FIT brings kernel and DTB, our initrd replaces the FIT's.
        # The FIT is named by its `boot net` name, which the `net` entry has opened already.
        ({}, {"devboot_image": LINUX, "devboot_initrd": BASE.initrd}),
        # Leading colon: keep the entry's own initrd (rootfs in an initramfs), add modules.
        (
            {"initrd_mode": "append"},
            {"devboot_image": LINUX, "devboot_initrd": f":{BASE.initrd}"},
        ),
        # No initrd override at all: the variable is not even set.
        ({"initrd_mode": None}, {"devboot_image": LINUX}),
        ({"initrd": None}, {"devboot_image": LINUX}),
        # A plain kernel replaces only the kernel, so the DTB must be named explicitly. The
        # `boot net` name then serves the kernel.
        (
            {"image_mode": "kernel"},
            {
                "devboot_image": LINUX,
                "devboot_oftree": BASE.oftree,
                "devboot_initrd": BASE.initrd,
            },
        ),
        # Plain kernel, keep the boot entry's device tree: no oftree override.
        (
            {"image_mode": "kernel", "oftree_mode": "keep", "initrd_mode": None},
            {"devboot_image": LINUX},
        ),
        # Empty oftree: drop the DTB, barebox passes its own (CONFIG_BOOTM_OFTREE_FALLBACK).
        (
            {"oftree_mode": "board", "initrd_mode": None},
            {"devboot_image": LINUX, "devboot_oftree": ""},
        ),
        # Overlays on top of whatever DTB the FIT brings: leading colon.
        (
            {"oftree_mode": "overlays", "overlays": ("ov-a", "ov-b"), "initrd_mode": None},
            {"devboot_image": LINUX, "devboot_oftree": ":ov-a:ov-b"},
        ),
        # Plain kernel + DTB + overlays: base first, then overlays.
        (
            {"image_mode": "kernel", "overlays": ("ov-a",), "initrd_mode": None},
            {"devboot_image": LINUX, "devboot_oftree": f"{BASE.oftree}:ov-a"},
        ),
        # Touch nothing but the initrd: the boot entry keeps its kernel and DTB.
        (
            {"image_mode": None, "oftree_mode": None, "initrd_mode": "append"},
            {"devboot_initrd": f":{BASE.initrd}"},
        ),
        # make_fit.py -D: barebox loads only the configuration's first fdt (the base), so the
        # overlays the FIT lists after it are named, before the board file's own.
        (
            {"fit_overlays": ("fo-1", "fo-2"), "overlays": ("ov-a",), "initrd_mode": None},
            {"devboot_image": LINUX, "devboot_oftree": ":fo-1:fo-2:ov-a"},
        ),
        (
            {"image_mode": "kernel", "fit_overlays": ("fo-1",), "initrd_mode": None},
            {"devboot_image": LINUX, "devboot_oftree": f"{BASE.oftree}:fo-1"},
        ),
        # ... but only onto the build's base: not onto barebox's own device tree.
        (
            {"oftree_mode": "board", "fit_overlays": ("fo-1",), "initrd_mode": None},
            {"devboot_image": LINUX, "devboot_oftree": ""},
        ),
    ],
)
def test_overrides_set_only_what_the_board_asks(
    changes: dict[str, object], expected: dict[str, str]
) -> None:
    assert overrides(replace(BASE, **changes)) == expected  # type: ignore[arg-type]


def test_script_lines() -> None:
    a = replace(BASE, initrd_mode="append", bootargs={"rsinit": "rsinit.bind_modules"})
    files = render(a)
    assert list(files) == ["afa-devboot-rock3a"]
    lines = files["afa-devboot-rock3a"].decode().splitlines()
    assert lines == [
        "# afa-devboot-rock3a: devboot overrides for board rock3a",
        "# build b1 (6.1.0), configuration conf-7 (Radxa ROCK3 A), exact, rendered T",
        "# afa-linux-rock3a is afa-fit-rock3a-0123456789ab",
        'devboot_image="afa-linux-rock3a"',
        'devboot_initrd=":afa-initrd-rock3a-cccccccccccc"',
        'global linux.bootargs.dyn.rsinit="rsinit.bind_modules"',
    ]


def test_the_script_says_which_versioned_image_its_image_name_serves() -> None:
    text = devboot_script(replace(BASE, image_mode="kernel", initrd_mode=None)).splitlines()
    assert text[2:] == [
        "# afa-linux-rock3a is afa-kernel-rock3a-aaaaaaaaaaaa",
        'devboot_image="afa-linux-rock3a"',
        'devboot_oftree="afa-oftree-rock3a-bbbbbbbbbbbb"',
    ]


def test_empty_oftree_is_set_not_omitted() -> None:
    # `[[ -v devboot_oftree ]]` is true for an empty value: it is an override to "no DTB".
    text = devboot_script(replace(BASE, oftree_mode="board", initrd_mode=None))
    assert 'devboot_oftree=""' in text.splitlines()


def test_provenance_cannot_break_out_of_its_comment() -> None:
    a = replace(BASE, provenance="build x\ndevboot_image=evil\r\nmore")
    lines = devboot_script(a).splitlines()
    assert lines[1] == "# build x devboot_image=evil more"
    assert not any(line.startswith("devboot_image=evil") for line in lines)


def test_warnings_become_comments() -> None:
    text = devboot_script(BASE, warnings=("barebox ignores overrides",))
    assert "# warning: barebox ignores overrides" in text.splitlines()


@pytest.mark.parametrize(
    "value", ['a"b', "$(reset)", "${global.user}", "`x`", "a\nreset", "back\\slash", "\x00"]
)
def test_values_hush_would_interpret_are_refused(value: str) -> None:
    with pytest.raises(ScriptError, match="must not contain"):
        devboot_script(replace(BASE, bootargs={"x": value}))


def test_single_quotes_and_spaces_are_fine_inside_double_quotes() -> None:
    text = devboot_script(replace(BASE, bootargs={"x": "a 'b' c=d,e"}))
    assert "global linux.bootargs.dyn.x=\"a 'b' c=d,e\"" in text.splitlines()
