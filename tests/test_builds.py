"""Build discovery and the watcher: which files make a build, what the index says about them,
and that a burst of writes becomes one re-index."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from overrided.builds import Build, index_build, latest
from overrided.discovery import find_inputs, release_in_modules_cpio, release_of_modules_name
from overrided.store import Blob, Store, digest_of_file
from overrided.watch import classify, watch
from overrided.writers import being_written, open_for_writing
from tests.support.builds import modules_cpio
from tests.support.fits import board_dtb, sample_fit


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-configuration FIT made by mkimage."""
    return sample_fit(tmp_path_factory.mktemp("sample")).fit


@pytest.mark.parametrize(
    ("name", "release"),
    [
        ("modules-6.19.0-arm64.cpio", "6.19.0"),  # kbuild: modules-<release>-<arch>.cpio
        ("modules-6.1.0-56-arm64-arm64.cpio", "6.1.0-56-arm64"),  # Debian's release ends in arch
        ("modules-6.12.0-rc1-00042-gdeadbeef-arm.cpio.gz", "6.12.0-rc1-00042-gdeadbeef"),
        ("modules-7.0.0.cpio.zst", "7.0.0"),
        ("modules-7.0.0-riscv.cpio.xz", "7.0.0"),
        ("modules.cpio", None),
        ("modules-6.1.tar", None),
        ("image.fit", None),
    ],
)
def test_release_from_modules_file_name(name: str, release: str | None) -> None:
    assert release_of_modules_name(name) == release


@pytest.mark.parametrize("compress", [None, "gzip", "zstd"])
def test_release_read_from_the_modules_archive(tmp_path: Path, compress: str | None) -> None:
    # Named without the arch (modules-<release>.cpio): the name alone is ambiguous
    # for a release that ends in an arch, the archive is not.
    path = modules_cpio(tmp_path / "modules-6.1.0-56-arm64.cpio", "6.1.0-56-arm64")
    if compress:
        subprocess.run([compress, "-q", "-f", str(path)], check=True)
        path = next(tmp_path.glob("modules-*.cpio.*"))
    assert release_in_modules_cpio(path) == "6.1.0-56-arm64"
    assert release_of_modules_name(path.name) == "6.1.0-56"  # what the name alone suggests


def test_release_of_a_build_comes_from_its_modules_archive(tmp_path: Path, sample: Path) -> None:
    b = tmp_path / "builds" / "debian-like"
    b.mkdir(parents=True)
    shutil.copy(sample, b / "image.fit")
    modules_cpio(b / "modules-6.1.0-56-arm64.cpio", "6.1.0-56-arm64")
    assert index_build(b, Store(tmp_path / "st")).release == "6.1.0-56-arm64"


def test_kernel_tree_layout_is_found(tmp_path: Path) -> None:
    b = tmp_path / "b"
    (b / "arch/arm64/boot/dts/rockchip").mkdir(parents=True)
    (b / "arch/arm64/boot/image.fit").write_bytes(b"x")
    (b / "arch/arm64/boot/Image").write_bytes(b"k")
    (b / "arch/arm64/boot/dts/rockchip/rk3568-rock-3a.dtb").write_bytes(b"d")
    (b / "modules-6.19.0-arm64.cpio").write_bytes(b"m")
    (b / ".modules-6.20.0-arm64.cpio.upload").write_bytes(b"half")  # upload in progress
    (b / ".tmp_modules_cpio").mkdir()
    (b / ".tmp_modules_cpio/modules-0-arm64.cpio").write_bytes(b"m")
    found = find_inputs(b)
    # image.fit wins over Image + DTBs: it is what the developer asked make to produce.
    assert found.fit == b / "arch/arm64/boot/image.fit"
    assert found.kernel is None and found.dtbs == []
    assert found.modules == [b / "modules-6.19.0-arm64.cpio"]


def test_dropped_kernel_and_vendor_dtbs(tmp_path: Path) -> None:
    b = tmp_path / "b"
    (b / "dtbs/rockchip").mkdir(parents=True)
    (b / "Image.gz").write_bytes(b"k")
    (b / "Image").write_bytes(b"k")
    (b / "dtbs/rockchip/a.dtb").write_bytes(b"d")
    (b / "dtbs/b.dtb").write_bytes(b"d")
    found = find_inputs(b)
    assert found.kernel == b / "Image"
    assert sorted(found.dtbs) == [b / "dtbs/b.dtb", b / "dtbs/rockchip/a.dtb"]


def test_index_fit_build(tmp_path: Path, sample: Path) -> None:
    b = tmp_path / "builds" / "next"
    (b / "arch/arm64/boot").mkdir(parents=True)
    shutil.copy(sample, b / "arch/arm64/boot/image.fit")
    modules_cpio(b / "modules-6.19.0-rc3-arm64.cpio", "6.19.0-rc3")
    build = index_build(b, Store(tmp_path / "st"))
    assert build.error is None and build.usable
    assert build.name == "next"
    assert build.release == "6.19.0-rc3"
    assert build.arch == "arm64"
    confs = {c.name: list(c.compatible) for c in build.configurations}
    # conf-c has no compatible of its own: the root compatible of its DTB stands in.
    assert confs == {
        "conf-a": ["v,board-a", "v,soc"],
        "conf-b": ["v,board-b", "v,soc"],
        "conf-c": ["v,board-c", "v,soc-c"],
        "conf-soc": ["v,soc"],
    }
    info = build.info()
    assert info.fit == "arch/arm64/boot/image.fit"
    assert info.modules == ["modules-6.19.0-rc3-arm64.cpio"]


def test_index_ingests_the_inputs_and_records_them(tmp_path: Path, sample: Path) -> None:
    b = tmp_path / "builds" / "b"
    b.mkdir(parents=True)
    shutil.copyfile(sample, b / "image.fit")
    mods = modules_cpio(b / "modules-6.19.0-arm64.cpio", "6.19.0")
    store = Store(tmp_path / "st")
    build = index_build(b, store)
    assert build.usable and build.fit_blob is not None
    (mod_blob,) = build.module_blobs
    for blob, source in ((build.fit_blob, b / "image.fit"), (mod_blob, mods)):
        # A copy of its own in the store, named by its bytes, that nobody may write.
        assert blob.path.parent == store.blobs
        assert not blob.path.samefile(source)
        assert blob.path.read_bytes() == source.read_bytes()
        assert (blob.size, blob.digest) == (source.stat().st_size, digest_of_file(source))
        assert blob.path.stat().st_mode & 0o222 == 0
    assert build.blobs() == {
        "fit": build.fit_blob.digest,
        "modules:modules-6.19.0-arm64.cpio": mod_blob.digest,
    }
    assert store.build_manifests() == {"b": build.blobs()}
    # A second build of the same bytes holds the same blobs: nothing stored twice.
    shutil.copytree(b, tmp_path / "builds" / "copy")
    again = index_build(tmp_path / "builds" / "copy", store)
    assert again.blobs() == build.blobs()
    assert len(list(store.blobs.iterdir())) == 2
    assert store.build_manifests() == {"b": build.blobs(), "copy": build.blobs()}


def test_index_kernel_and_dtbs_builds_a_fit_once(tmp_path: Path) -> None:
    b = tmp_path / "builds" / "dropped"
    b.mkdir(parents=True)
    (b / "Image").write_bytes(b"\0" * 4096 + b"Linux version 6.19.0-test (me@host) #1 SMP\n")
    board_dtb(b / "dts/radxa/rk3568-rock-3a.dtb", ["radxa,rock3a", "rockchip,rk3568"], "ROCK 3A")
    board_dtb(b / "dts/fsl/imx8mm-evk.dtb", ["fsl,imx8mm-evk", "fsl,imx8mm"], "i.MX8MM EVK")
    store = Store(tmp_path / "st")
    first = index_build(b, store)
    assert first.error is None, first.error
    assert first.release == "6.19.0-test"  # read from the Image's banner
    assert sorted(c.compatible[0] for c in first.configurations) == [
        "fsl,imx8mm-evk",
        "radxa,rock3a",
    ]
    assert first.fit is not None and first.fit.parent == store.blobs
    again = index_build(b, store)
    assert again.fit == first.fit  # same inputs: the cached FIT, not a new one


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        (lambda b: None, "no image.fit and no Image/Image.gz/zImage found"),
        # (a kernel without DTBs is a kernel-only build: tests/test_build_shapes.py)
        (
            lambda b: [(b / "Image").write_bytes(b"k"), (b / "x.dtb").write_bytes(b"\0" * 64)],
            "x.dtb: not a DTB",
        ),
        (lambda b: (b / "image.fit").write_bytes(b"not a fit at all"), "image.fit"),
    ],
)
def test_unusable_builds_say_why(tmp_path: Path, setup: object, error: str) -> None:
    b = tmp_path / "builds" / "bad"
    b.mkdir(parents=True)
    setup(b)  # type: ignore[operator]
    build = index_build(b, Store(tmp_path / "st"))
    assert not build.usable
    assert build.error is not None and error in build.error
    assert build.info().error == build.error


@pytest.mark.parametrize("fit_whole", [True, False])
def test_modules_are_ingested_beside_the_fit(
    tmp_path: Path, sample: Path, monkeypatch: pytest.MonkeyPatch, fit_whole: bool
) -> None:
    from overrided import builds

    b = tmp_path / "builds" / "b"
    b.mkdir(parents=True)
    data = sample.read_bytes()
    (b / "image.fit").write_bytes(data if fit_whole else data[: len(data) // 2])
    mods = modules_cpio(b / "modules-6.1.0-56-arm64.cpio", "6.1.0-56-arm64")
    store = Store(tmp_path / "st")
    threads: list[str] = []
    real = builds.configurations_of

    def parse(*args: Any) -> Any:
        threads.extend(t.name for t in threading.enumerate())
        return real(*args)

    monkeypatch.setattr(builds, "configurations_of", parse)
    build = index_build(b, store, hash_modules=True)
    assert build.usable == fit_whole
    # The FIT was parsed while the modules had a thread of their own.
    assert any(name.startswith("ingest-b") for name in threads)
    if fit_whole:
        # A usable build's modules are ingested: hashed, and stored once.
        assert [m.digest for m in build.module_blobs] == [digest_of_file(mods)]
        assert store.digests.peek(mods) == digest_of_file(mods)
    else:
        assert not build.usable and build.module_blobs == ()
    # The remembered digest belongs to those bytes only: once they change, it is not used.
    with mods.open("ab") as f:
        f.write(b"\0" * 512)
    assert store.digests.peek(mods) is None


def test_truncated_fit_is_never_used(tmp_path: Path, sample: Path) -> None:
    b = tmp_path / "builds" / "half"
    b.mkdir(parents=True)
    data = sample.read_bytes()
    (b / "image.fit").write_bytes(data[: len(data) // 2])
    build = index_build(b, Store(tmp_path / "st"))
    assert not build.usable
    assert build.error and "image.fit" in build.error


def test_latest_is_the_newest_usable_build() -> None:
    fit = Blob(Path("blobs/f"), 1, "f" * 64)
    old = Build("old", Path("old"), fit=Path("f"), fit_blob=fit, mtime=1.0)
    new = Build("new", Path("new"), fit=Path("f"), fit_blob=fit, mtime=2.0)
    broken = Build("broken", Path("broken"), fit_blob=fit, mtime=3.0, error="bad")
    # Found but never ingested (no blob): nothing to render from, however new.
    unstored = Build("unstored", Path("unstored"), fit=Path("f"), mtime=4.0)
    assert not unstored.usable
    assert latest([old, new, broken, unstored]) == new
    assert latest([broken, unstored]) is None


def test_classify_maps_paths_to_builds_and_ignores_temp_files(tmp_path: Path) -> None:
    builds, boards = tmp_path / "kernel-builds", tmp_path / "boards"
    changes = classify(
        [
            builds / "a/arch/arm64/boot/image.fit",
            builds / "a/modules-1-arm64.cpio",
            builds / "b/.image.fit.upload-1234",  # upload in progress
            builds / ".incoming/x",
            boards / "notes.txt",
        ],
        builds,
        boards,
    )
    assert changes.builds == {"a"} and not changes.boards
    assert classify([boards / "rock3a.toml"], builds, boards).boards


async def test_a_burst_of_writes_is_one_batch(tmp_path: Path) -> None:
    builds, boards = tmp_path / "kernel-builds", tmp_path / "boards"
    (builds / "b1").mkdir(parents=True)
    boards.mkdir()
    stop = asyncio.Event()
    batches = []

    async def collect() -> None:
        async for changes in watch(builds, boards, step_ms=500, stop=stop):
            batches.append(changes)

    task = asyncio.create_task(collect())
    await asyncio.sleep(1.0)  # let the watcher start (its Rust thread sets up inotify)
    # What `make` does: hundreds of object files, then the artifacts.
    for i in range(300):
        (builds / "b1" / f"obj-{i}.o").write_bytes(b"o")
    (builds / "b1" / "image.fit").write_bytes(b"fit")
    (builds / "b1" / ".image.fit.tmp").write_bytes(b"temp")  # hidden: never an input
    for _ in range(200):  # bounded wait for the batch (and any stragglers)
        await asyncio.sleep(0.05)
        if batches:
            break
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert len(batches) == 1
    assert batches[0].builds == {"b1"}


def test_open_for_writing_tells_writers_from_readers(tmp_path: Path) -> None:
    path = tmp_path / "image.fit"
    path.write_bytes(b"fit")
    assert open_for_writing(path) is False
    for mode, writing in (("ab", True), ("rb", False)):
        with path.open(mode):  # a writer or a reader: this process is as good as any
            assert open_for_writing(path) is writing
    assert open_for_writing(path) is False
    assert open_for_writing(tmp_path / "missing") is None


def test_a_writer_opening_during_the_probe_does_not_kill_the_service(tmp_path: Path) -> None:
    # While a probe holds its lease, a writer's open(2) breaks it and the kernel signals the
    # prober; with the default signal (SIGIO) that ends the process. Probe in a child process
    # against a writer that opens the file thousands of times, and see the child survive.
    path = tmp_path / "image.fit"
    path.write_bytes(b"fit")
    code = (
        "import subprocess, sys\n"
        "from pathlib import Path\n"
        "from overrided.writers import open_for_writing\n"
        "p = Path(sys.argv[1])\n"
        "w = subprocess.Popen(['sh', '-c', 'for i in $(seq 3000); do echo x >> \"$0\"; done', p])\n"
        "n = 0\n"
        "while w.poll() is None:\n"
        "    open_for_writing(p)\n"
        "    n += 1\n"
        "print(n)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) > 0


def test_a_build_still_open_for_writing_is_not_indexed(tmp_path: Path, sample: Path) -> None:
    b = tmp_path / "builds" / "b"
    b.mkdir(parents=True)
    store = Store(tmp_path / "st")
    with (b / "image.fit").open("wb") as f:
        f.write(sample.read_bytes())  # all of it: only the writer knows it is not done
        f.flush()
        build = index_build(b, store)
        assert not build.usable and build.writing == (b / "image.fit",)
        assert build.error == "b: image.fit: still open for writing by another process"
        assert being_written([b / "image.fit"]) == [b / "image.fit"]
        # A writer that left the file untouched for a while does not hold the build back.
        assert being_written([b / "image.fit"], idle=0.0) == []
    assert being_written([b / "image.fit"]) == []
    build = index_build(b, store)
    assert build.usable and not build.writing


def test_an_unchanged_build_is_not_parsed_again(
    tmp_path: Path, sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overrided import builds

    b = tmp_path / "builds" / "b"
    b.mkdir(parents=True)
    shutil.copyfile(sample, b / "image.fit")
    store = Store(tmp_path / "st")
    first = index_build(b, store)
    assert first.fit_blob is not None
    parsed: list[Path] = []
    real = builds.configurations_of

    def parse(path: Path, *args: Any) -> Any:
        parsed.append(path)
        return real(path, *args)

    monkeypatch.setattr(builds, "configurations_of", parse)
    assert index_build(b, store, previous=first) is first
    assert parsed == []
    # Any change of an input (here a modules CPIO appears) is indexed anew; the FIT parsed is
    # its immutable copy in the store, which the same bytes share with the first index.
    modules_cpio(b / "modules-6.1.0-56-arm64.cpio", "6.1.0-56-arm64")
    second = index_build(b, store, previous=first)
    assert parsed == [first.fit_blob.path]
    assert second.fit_blob == first.fit_blob
    assert second.usable and second.release == "6.1.0-56-arm64"


def test_modules_written_before_the_fit_are_hashed_while_it_is_written(
    tmp_path: Path, sample: Path
) -> None:
    b = tmp_path / "builds" / "b"
    b.mkdir(parents=True)
    mods = modules_cpio(b / "modules-6.1.0-56-arm64.cpio", "6.1.0-56-arm64")
    store = Store(tmp_path / "st")
    with (b / "image.fit").open("wb") as fit:
        fit.write(sample.read_bytes())
        build = index_build(b, store, hash_modules=True)
        assert build.writing == (b / "image.fit",)
        store.digests.settle()
        assert store.digests.peek(mods) == digest_of_file(mods)
    # A modules CPIO still being written is left alone.
    late = b / "modules-6.1.0-57-arm64.cpio"
    with late.open("wb") as f:
        f.write(mods.read_bytes())
        f.flush()
        assert index_build(b, store, hash_modules=True).writing == (late,)
        store.digests.settle()
        assert store.digests.peek(late) is None


def test_a_fit_whose_image_data_does_not_match_its_hash_is_refused(
    tmp_path: Path, sample: Path
) -> None:
    from overrided.fit import Fit

    data = bytearray(sample.read_bytes())
    with Fit.from_bytes(bytes(data)) as fit:
        kernel = fit.images["kernel"]
        assert kernel.hashes, "the sample FIT's images carry hash nodes"
        at = kernel.data_start + kernel.size // 2
    data[at] ^= 0xFF  # one flipped bit of payload: the structure still parses
    b = tmp_path / "builds" / "bad"
    b.mkdir(parents=True)
    (b / "image.fit").write_bytes(bytes(data))
    build = index_build(b, Store(tmp_path / "st"))
    assert not build.usable
    assert build.error is not None
    assert "image.fit: /images/kernel/hash-1: sha256 mismatch" in build.error
    assert "refuse" in build.error
