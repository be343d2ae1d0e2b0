"""Modules archives as ``make modules-cpio-pkg`` makes them, initrd warnings, and the CLI.

The real Debian arm64 modules tree (3,600+ modules, ~290 MB) is archived once per session and
read back with GNU cpio.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from overrided import cpio
from overrided.cpio import CpioError
from tests.support import debian

RELEASE = "6.1.0-99-test"


def make_modules(root: Path, release: str = RELEASE, base: str = "lib/modules") -> Path:
    """A small modules tree: ``<root>/<base>/<release>/`` with kernel/**.ko and modules.*."""
    rel = root / base / release
    (rel / "kernel" / "drivers" / "net").mkdir(parents=True)
    (rel / "kernel" / "lib").mkdir(parents=True)
    (rel / "kernel" / "drivers" / "net" / "dummy.ko").write_bytes(b"\x7fELF dummy" * 100)
    (rel / "kernel" / "lib" / "crc7.ko").write_bytes(b"\x7fELF crc7")
    (rel / "kernel" / "drivers" / "net-b.ko").write_bytes(b"sorts before net/ in C order")
    (rel / "modules.order").write_text("kernel/lib/crc7.ko\nkernel/drivers/net/dummy.ko\n")
    (rel / "modules.builtin").write_text("")
    (rel / "build").symlink_to("/usr/src/linux-headers")
    return rel


def gnu_list(archive: Path) -> list[str]:
    out = subprocess.run(
        ["cpio", "-t", "--quiet"], stdin=archive.open("rb"), capture_output=True, check=True
    ).stdout
    return [os.fsdecode(line) for line in out.splitlines()]


def c_sorted_find(tree: Path, prefix: str) -> list[str]:
    """What kbuild's ``find | LANG=C sort`` yields for a modules_install tree, with parents."""
    found = subprocess.run(
        ["find", ".", "-mindepth", "1"], cwd=tree, capture_output=True, check=True
    ).stdout.splitlines()
    sort = subprocess.run(
        ["sort"],
        input=b"\n".join(f.removeprefix(b"./") for f in found) + b"\n",
        env={"LC_ALL": "C"},
        capture_output=True,
        check=True,
    ).stdout
    steps = prefix.split("/")
    parents = ["/".join(steps[:i]) for i in range(1, len(steps) + 1)]
    return parents + [f"{prefix}/{os.fsdecode(n)}" for n in sort.splitlines()]


# --------------------------------------------------------------------------------------------
# modules_cpio


@pytest.mark.parametrize(
    ("given", "prefix"),
    [
        ("lib/modules/" + RELEASE, "lib/modules/" + RELEASE),  # the release folder itself
        (".", "lib/modules/" + RELEASE),  # an INSTALL_MOD_PATH root
    ],
)
def test_modules_cpio_lays_out_like_modules_cpio_pkg(
    tmp_path: Path, given: str, prefix: str
) -> None:
    root = tmp_path / "install"
    rel = make_modules(root)
    out = tmp_path / "modules.cpio"
    assert cpio.modules_cpio(root / given, out) == RELEASE
    listed = gnu_list(out)
    assert listed == c_sorted_find(rel, prefix)
    drivers = f"{prefix}/kernel/drivers"
    assert listed.index(f"{drivers}/net") < listed.index(f"{drivers}/net-b.ko")
    # '-' sorts before '/' in C order, as in kbuild's LANG=C sort
    assert listed.index(f"{drivers}/net-b.ko") < listed.index(f"{drivers}/net/dummy.ko")
    assert not any(n.startswith("/") for n in listed)
    entries = {e.name: e for e in cpio.entries(out)}
    assert {(e.uid, e.gid) for e in entries.values()} == {(0, 0)}
    assert entries[f"{prefix}/build"].target == "/usr/src/linux-headers"
    assert oct(entries[f"{prefix}/kernel/lib/crc7.ko"].mode) == "0o100644"
    assert oct(entries[f"{prefix}/kernel"].mode) == "0o40755"


def test_merged_usr_layout_is_kept_under_usr_lib_modules(tmp_path: Path) -> None:
    root = tmp_path / "install"
    make_modules(root, base="usr/lib/modules")
    out = tmp_path / "m.cpio"
    cpio.modules_cpio(root, out)
    assert gnu_list(out)[:4] == ["usr", "usr/lib", "usr/lib/modules", f"usr/lib/modules/{RELEASE}"]


@pytest.mark.parametrize("mode", ["w:gz", "w:xz", "w"])
def test_modules_cpio_from_a_tarball(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "install"
    make_modules(root)
    tarball = tmp_path / "modules.tar"
    with tarfile.open(tarball, mode) as tar:
        tar.add(root / "lib", arcname="lib")
    from_tar, from_dir = tmp_path / "t.cpio", tmp_path / "d.cpio"
    assert cpio.modules_cpio(tarball, from_tar, source_date_epoch=0) == RELEASE
    cpio.modules_cpio(root, from_dir, source_date_epoch=0)
    assert from_tar.read_bytes() == from_dir.read_bytes()


@pytest.mark.parametrize("python", ["with tar_filter", "without (Debian 12's 3.11.2)"])
def test_a_modules_tarball_is_extracted_below_its_folder_only(
    tmp_path: Path, python: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if python.startswith("without"):
        monkeypatch.delattr(tarfile, "tar_filter", raising=False)
    root = tmp_path / "install"
    make_modules(root)
    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tar:
        tar.add(root / "lib", arcname="lib")
    assert cpio.modules_cpio(good, tmp_path / "g.cpio", source_date_epoch=0) == RELEASE
    outside = tmp_path / "outside"
    for what, members in [
        ("a .. name", [_file("lib/../../outside")]),
        (
            "a file through a symlink out",
            [_link(tarfile.SYMTYPE, "lib/escape", "../.."), _file("lib/escape/outside")],
        ),
    ]:
        bad = tmp_path / f"bad-{what.replace(' ', '-')}.tar"
        with tarfile.open(bad, "w") as tar:
            tar.add(root / "lib", arcname="lib")
            for member in members:
                tar.addfile(member, io.BytesIO(b"x") if member.isfile() else None)
        with pytest.raises(cpio.CpioError) as err:
            cpio.modules_cpio(bad, tmp_path / "b.cpio")
        assert str(bad) in str(err.value), what
        assert not outside.exists(), what
    # An absolute name lands inside, its leading "/" dropped (the standard library's rule).
    absolute = tmp_path / "absolute.tar"
    with tarfile.open(absolute, "w") as tar:
        tar.add(root / "lib", arcname="lib")
        tar.addfile(_file(str(outside)), io.BytesIO(b"x"))
    assert cpio.modules_cpio(absolute, tmp_path / "a.cpio", source_date_epoch=0) == RELEASE
    assert not outside.exists()


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def _link(kind: bytes, name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_modules_cpio_is_reproducible_and_honours_source_date_epoch(tmp_path: Path) -> None:
    rel = make_modules(tmp_path / "a")
    a, b = tmp_path / "a.cpio", tmp_path / "b.cpio"
    cpio.modules_cpio(rel, a, source_date_epoch=1700000000)
    os.utime(rel / "modules.order", (1, 1))  # touching files must not change the bytes
    (rel / "modules.order").chmod(0o600)  # nor must the builder's umask
    os.chown(rel / "modules.builtin", 1000, 1000)  # nor the building user
    cpio.modules_cpio(rel, b, source_date_epoch=1700000000)
    assert a.read_bytes() == b.read_bytes()
    assert {e.mtime for e in cpio.entries(a)} == {1700000000}
    c = tmp_path / "c.cpio"
    cpio.modules_cpio(rel, c)  # without an epoch, the files' own mtimes
    order = next(e for e in cpio.entries(c) if e.name.endswith("modules.order"))
    assert order.mtime == 1


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd", "lz4"])
def test_compressed_modules_cpio_unpacks_with_the_real_tools(tmp_path: Path, kind: str) -> None:
    rel = make_modules(tmp_path / "m")
    raw, packed = tmp_path / "m.cpio", tmp_path / f"m.cpio.{kind}"
    cpio.modules_cpio(rel, raw, source_date_epoch=0)
    cpio.modules_cpio(rel, packed, compress=kind, source_date_epoch=0)
    tool = {"gzip": "gzip", "xz": "xz", "zstd": "zstd", "lz4": "lz4"}[kind]
    plain = subprocess.run(
        [tool, "-dc"], stdin=packed.open("rb"), capture_output=True, check=True
    ).stdout
    assert plain == raw.read_bytes()


def test_modules_cpio_writes_into_a_file_object(tmp_path: Path) -> None:
    rel = make_modules(tmp_path / "m")
    buf = io.BytesIO()
    cpio.modules_cpio(rel, buf, compress="zstd", source_date_epoch=0)
    path = tmp_path / "p.zst"
    cpio.modules_cpio(rel, path, compress="zstd", source_date_epoch=0)
    assert buf.getvalue() == path.read_bytes()


def test_modules_cpio_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(CpioError, match="no lib/modules/<release> folder"):
        cpio.modules_cpio(tmp_path, tmp_path / "o.cpio")
    make_modules(tmp_path / "two", "6.1.0-1-arm64")
    make_modules(tmp_path / "two", "6.1.0-2-arm64")
    with pytest.raises(CpioError, match=r"found 6\.1\.0-1-arm64, 6\.1\.0-2-arm64"):
        cpio.modules_cpio(tmp_path / "two", tmp_path / "o.cpio")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(CpioError, match="not a readable modules tarball"):
        cpio.modules_cpio(junk, tmp_path / "o.cpio")
    with pytest.raises(CpioError, match="unknown compression 'rar'"):
        cpio.modules_cpio(make_modules(tmp_path / "x"), tmp_path / "o", compress="rar")
    assert not (tmp_path / "o.cpio").exists() and not (tmp_path / "o").exists()


@pytest.fixture(scope="session")
def debian_modules_cpio(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, debian.Kernel]:
    k = debian.kernel()
    out = tmp_path_factory.mktemp("debian-modules") / f"modules-{k.release}.cpio"
    assert cpio.modules_cpio(k.modules, out) == k.release
    return out, k


def test_the_real_debian_modules_tree_reads_back_with_gnu_cpio(
    debian_modules_cpio: tuple[Path, debian.Kernel],
) -> None:
    out, k = debian_modules_cpio
    listed = gnu_list(out)
    assert listed == c_sorted_find(k.modules, f"lib/modules/{k.release}")
    kos = [n for n in listed if n.endswith(".ko")]
    assert len(kos) > 3000
    sizes = {e.name: e.size for e in cpio.entries(out)}
    sample = kos[len(kos) // 2]
    assert sizes[sample] == (k.modules / sample.split("/", 3)[3]).stat().st_size


# --------------------------------------------------------------------------------------------
# initrd_warnings


def archive_of(tmp_path: Path, name: str, build: dict[str, str | None]) -> Path:
    """An init-style archive of ``path -> content`` (``None`` = folder; ``'->x'`` = symlink)."""
    root = tmp_path / f"{name}-root"
    root.mkdir()
    for path, content in build.items():
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            p.mkdir(exist_ok=True)
        elif content.startswith("->"):
            p.symlink_to(content[2:])
        else:
            p.write_text(content)
    out = tmp_path / f"{name}.cpio"
    cpio.init_cpio_from_dir(root, out)
    return out


def test_no_warnings_for_a_matching_initrd(tmp_path: Path) -> None:
    rel = make_modules(tmp_path / "m")
    mods = tmp_path / "mods.cpio"
    cpio.modules_cpio(rel, mods)
    init = archive_of(tmp_path, "init", {"init": "#!/bin/sh\n", "lib": None})
    assert cpio.initrd_warnings([mods, init], RELEASE) == []


def test_warns_when_modules_are_for_another_release(tmp_path: Path) -> None:
    mods = tmp_path / "mods.cpio.gz"
    cpio.modules_cpio(make_modules(tmp_path / "m"), mods, compress="gzip")
    (warning,) = cpio.initrd_warnings([mods], "6.1.0-56-arm64")
    assert f"modules are for release {RELEASE} but the kernel is 6.1.0-56-arm64" in warning
    assert cpio.initrd_warnings([mods], None) == []  # no kernel given: nothing to compare


def test_warns_about_usr_lib_modules_unless_lib_links_to_usr_lib(tmp_path: Path) -> None:
    mods = tmp_path / "mods.cpio"
    make_modules(tmp_path / "m", base="usr/lib/modules")
    cpio.modules_cpio(tmp_path / "m", mods)
    init = archive_of(tmp_path, "init", {"init": "#!/bin/sh\n"})
    (warning,) = cpio.initrd_warnings([mods, init], RELEASE)
    assert "usr/lib/modules" in warning and "rsinit" in warning
    merged = archive_of(tmp_path, "merged", {"init": "#!/bin/sh\n", "lib": "->usr/lib"})
    assert cpio.initrd_warnings([mods, merged], RELEASE) == []


def test_warns_about_paths_in_two_parts_and_says_the_later_wins(tmp_path: Path) -> None:
    a = archive_of(tmp_path, "a", {"init": "one", "etc": None, "etc/x": "a"})
    b = archive_of(tmp_path, "b", {"init": "two", "etc": None, "etc/y": "b"})
    (warning,) = cpio.initrd_warnings([a, b], None)
    assert f"1 path(s) appear in more than one part, the later part wins: init ({a}, then {b})" in (
        warning
    )  # the shared folder etc is not a conflict


def test_warnings_look_inside_a_composed_initrd(tmp_path: Path) -> None:
    a = archive_of(tmp_path, "a", {"init": "one"})
    b = archive_of(tmp_path, "b", {"init": "two"})
    whole = tmp_path / "initrd"
    cpio.concat([a, b], whole)
    (warning,) = cpio.initrd_warnings([whole], None)
    assert f"init ({whole}, then {whole}@{a.stat().st_size})" in warning


# --------------------------------------------------------------------------------------------
# CLI


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overrided", "cpio", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_cli_modules_init_concat_ls(tmp_path: Path) -> None:
    rel = make_modules(tmp_path / "m")
    mods = tmp_path / "mods.cpio.zst"
    r = run("modules", rel, "-o", mods, "--compress", "zstd", env={"SOURCE_DATE_EPOCH": "42"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == RELEASE
    init_root = tmp_path / "root"
    init_root.mkdir()
    (init_root / "init").write_text("#!/bin/sh\n")
    (init_root / "init").chmod(0o755)
    init = tmp_path / "init.cpio"
    assert run("init", init_root, "-o", init).returncode == 0
    initrd = tmp_path / "initrd"
    r = run("concat", mods, init, "-o", initrd, "--release", "6.1.0-56-arm64")
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^\s+0\s+zstd\s+\d+ bytes\s+{re.escape(str(mods))}$", r.stdout, re.M)
    assert "warning: modules are for release 6.1.0-99-test but the kernel is 6.1.0-56" in r.stderr
    r = run("ls", initrd)
    assert r.returncode == 0, r.stderr
    assert re.search(r"part at offset 0: zstd, \d+ bytes, 13 entries", r.stdout)
    assert re.search(r"part at offset \d+: raw, \d+ bytes, 1 entries", r.stdout)
    assert re.search(r"-rwxr-xr-x +0 +0 +10  init$", r.stdout, re.M)
    assert f"lib/modules/{RELEASE}/build -> /usr/src/linux-headers" in r.stdout
    assert all(e.mtime == 42 for e in cpio.entries(mods))


def test_cli_errors_are_one_line_with_file_and_offset(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0\0\0\0hello")
    r = run("ls", junk)
    assert r.returncode == 1
    expected = f"{junk}: offset 4: not a CPIO archive: unknown format (first bytes 68 65 6c 6c 6f)"
    assert r.stderr == f"overrided: error: {expected}\n"
    r = run("concat", junk, "-o", tmp_path / "out")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
    r = run("modules", tmp_path / "nothing", "-o", tmp_path / "m.cpio")
    assert r.returncode == 1 and "no such folder or tarball" in r.stderr
    r = run("modules", tmp_path, "-o", tmp_path / "m.cpio", env={"SOURCE_DATE_EPOCH": "soon"})
    assert r.returncode == 1 and "SOURCE_DATE_EPOCH" in r.stderr
