"""The content-addressed store: blobs and their ingestion, cached small results, build
manifests, grace-period GC; and catalog snapshots."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from overrided.catalog import Catalog, Group
from overrided.served import Entry, NotServed, View
from overrided.store import Store, StoreError
from tests.support.builds import rewrite_in_place


def test_blobs_are_named_by_content_and_deduplicated(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    a = store.put_bytes(b"kernel")
    b = store.put_bytes(b"kernel")
    assert a == b
    assert a.digest == hashlib.sha256(b"kernel").hexdigest()
    assert a.path.read_bytes() == b"kernel" and a.size == 6
    assert len(list(store.blobs.iterdir())) == 1


def test_ingest_copies_so_the_source_can_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    src = tmp_path / "Image"
    src.write_bytes(b"v1" * 1000)
    blob = store.ingest(src)
    rewrite_in_place(src, b"v2" * 1000)  # `make` rewrites its output in place
    assert blob.path.read_bytes() == b"v1" * 1000
    assert blob.digest == hashlib.sha256(b"v1" * 1000).hexdigest()
    assert store.ingest(src).digest == hashlib.sha256(b"v2" * 1000).hexdigest()
    assert store.put_file == store.ingest  # the old name still works


def test_ingest_stores_one_blob_per_distinct_content(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    one.write_bytes(b"modules" * 300)
    two.write_bytes(b"modules" * 300)  # another build's file with the same bytes
    other.write_bytes(b"firmware" * 300)
    a = store.ingest(one)
    b = store.ingest(two)
    assert a == b and a.path.read_bytes() == one.read_bytes()
    assert a.size == one.stat().st_size
    assert store.ingest(one) == a  # again: its hash is known, nothing is copied
    c = store.ingest(other)
    assert c != a
    assert sorted(p.name for p in store.blobs.iterdir()) == sorted({a.digest, c.digest})
    assert list(store.tmp.iterdir()) == []
    # A blob is the store's own file, read-only, never a link to the build's.
    assert a.path.stat().st_ino not in (one.stat().st_ino, two.stat().st_ino)
    assert a.path.stat().st_mode & 0o222 == 0


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda p: p.write_bytes(b"new and longer bytes" * 100), id="rewritten"),
        pytest.param(lambda p: p.open("ab").write(b"more"), id="appended"),
        pytest.param(lambda p: os.truncate(p, 10), id="truncated"),
    ],
)
@pytest.mark.parametrize(
    ("eager", "here"),
    [(False, False), (True, False), (True, True)],
    ids=["hash-then-copy", "copy-while-the-hash-process-hashes", "copy-while-hashing-here"],
)
def test_a_file_changed_while_it_is_ingested_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[Path], object],
    eager: bool,
    here: bool,
) -> None:
    from overrided import store as store_mod

    monkeypatch.setattr(store_mod, "_BIG_FILE", 0)  # every file takes the big files' path
    store = Store(tmp_path / "st")
    src = tmp_path / "image.fit"
    src.write_bytes(b"old bytes" * 100)
    real = store_mod.clone_or_copy

    def copy_while_make_writes(source: int, dst: int, size: int) -> None:
        change(src)  # after (or, eager, while) the hash, before or during the copy
        real(source, dst, size)

    monkeypatch.setattr(store_mod, "clone_or_copy", copy_while_make_writes)
    with pytest.raises(StoreError) as refused:
        store.ingest(src, eager=eager, here=here)
    assert str(src) in str(refused.value)  # index_build shows it as "<build>: <message>"
    # Nothing stored under the old bytes' name, and no temporary file left behind.
    assert list(store.blobs.iterdir()) == []
    assert list(store.tmp.iterdir()) == []
    monkeypatch.setattr(store_mod, "clone_or_copy", real)
    blob = store.ingest(src)  # read again once it is quiet: the new bytes, rightly named
    assert blob.path.read_bytes() == src.read_bytes()
    assert blob.digest == hashlib.sha256(src.read_bytes()).hexdigest()


def test_meanwhile_reads_the_finished_copy_while_the_hash_process_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``meanwhile`` gets the store's own copy, whole, before the digest is known; the blob is
    that copy. Ingests that do not copy beside the hash process do not call it."""
    from overrided import store as store_mod

    monkeypatch.setattr(store_mod, "_BIG_FILE", 1024)
    store = Store(tmp_path / "st")
    src = tmp_path / "modules.cpio"
    src.write_bytes(bytes(range(256)) * 100)
    seen: list[tuple[Path, bytes, bool]] = []
    asked: list[Path] = []
    real_of = store.digests.of

    def of(path: Path, **kwargs: bool) -> str:
        asked.append(path)
        return real_of(path, **kwargs)

    monkeypatch.setattr(store.digests, "of", of)

    def meanwhile(copy: Path) -> None:
        seen.append((copy, copy.read_bytes(), bool(asked)))

    blob = store.ingest(src, eager=True, meanwhile=meanwhile)
    assert len(seen) == 1
    copy, data, digest_asked = seen[0]
    assert copy.parent == store.tmp and data == src.read_bytes()
    assert not digest_asked  # called before waiting for the digest
    assert blob.path.read_bytes() == data and not copy.exists()  # the copy became the blob
    other = tmp_path / "other.cpio"
    other.write_bytes(b"x" * 4096)
    for kwargs in ({"eager": False}, {"eager": True, "here": True}):
        store.ingest(other, meanwhile=meanwhile, **kwargs)
    assert len(seen) == 1


@pytest.mark.parametrize("here", [False, True], ids=["hash-process", "here"])
def test_a_big_new_file_is_copied_while_it_is_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, here: bool
) -> None:
    """``eager`` (a build just landed): the copy does not wait for the hash, and a copy whose
    content the store holds already is dropped, leaving one blob and no temp file."""
    from overrided import store as store_mod

    monkeypatch.setattr(store_mod, "_BIG_FILE", 1024)
    store = Store(tmp_path / "st")
    copies: list[int] = []
    real = store_mod.clone_or_copy

    def counted(source: int, dst: int, size: int) -> None:
        copies.append(size)
        real(source, dst, size)

    monkeypatch.setattr(store_mod, "clone_or_copy", counted)
    one, two = tmp_path / "one" / "modules.cpio", tmp_path / "two" / "modules.cpio"
    for path in (one, two):
        path.parent.mkdir()
        path.write_bytes(b"module bytes" * 1000)
    a = store.ingest(one, eager=True, here=here)
    assert a.path.read_bytes() == one.read_bytes()
    assert a.digest == hashlib.sha256(one.read_bytes()).hexdigest()
    b = store.ingest(two, eager=True, here=here)  # same bytes, another build: copied, then dropped
    assert b == a and len(copies) == 2
    assert (
        store.ingest(one, eager=True, here=here) == a and len(copies) == 2
    )  # digest known: no copy
    assert [p.name for p in store.blobs.iterdir()] == [a.digest]
    assert list(store.tmp.iterdir()) == []


def test_a_blob_is_a_view_and_ranges_of_it_are_pieces(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    blob = store.put_bytes(b"0123456789")
    view = blob.view()
    assert view.read() == b"0123456789"
    assert view.digest == blob.digest and view.size == 10  # the content hash: a strong ETag
    assert view.files() == {blob.digest}
    piece = blob.range(2, 5)
    assert (piece.path, piece.offset, piece.length, piece.digest) == (blob.path, 2, 5, blob.digest)
    assert View((piece,)).read() == b"23456"
    assert View((blob.range(10, 0),)).read() == b""
    for offset, length in ((-1, 2), (8, 3), (11, 0)):
        with pytest.raises(StoreError, match="beyond 10 bytes"):
            blob.range(offset, length)


def test_build_manifests_name_the_blobs_each_build_holds(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    store.record_build("b1", {"fit": "a" * 64})
    store.record_build("odd/name ü", {"fit": "b" * 64, "modules:m.cpio": "c" * 64})
    store.record_build("b1", {"fit": "d" * 64})  # indexed again: replaces the record
    assert store.build_manifests() == {
        "b1": {"fit": "d" * 64},
        "odd/name ü": {"fit": "b" * 64, "modules:m.cpio": "c" * 64},
    }
    # A record cut short by a crash is skipped, not fatal.
    (store.manifests / "broken.json").write_text('{"build": "x", "blo')
    assert set(store.build_manifests()) == {"b1", "odd/name ü"}
    store.forget_build("b1")
    store.forget_build("never-recorded")
    assert set(store.build_manifests()) == {"odd/name ü"}


def test_adopt_moves_a_finished_temp_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    tmp = store.temp_path(".fit")
    tmp.write_bytes(b"trimmed")
    blob = store.adopt(tmp)
    assert not tmp.exists()
    assert blob.path.parent == store.blobs
    assert blob.view().read() == b"trimmed"
    assert blob.path.stat().st_mode & 0o222 == 0  # never written again


def test_cached_results_need_every_blob_they_name(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    fit = store.put_bytes(b"fit")
    store.remember("k1", {"blobs": {"fit": fit.digest}, "configuration": "conf-1"})
    assert store.cached("k1") == {"blobs": {"fit": fit.digest}, "configuration": "conf-1"}
    assert store.cached("other") is None
    fit.path.unlink()  # a blob collected by GC makes the cached result useless
    assert store.cached("k1") is None


def test_gc_keeps_live_blobs_and_waits_out_the_grace_period(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    live = store.put_bytes(b"live")
    dead = store.put_bytes(b"dead")
    assert store.collect({live.digest}, grace=600, now=1000.0) == []  # grace starts now
    assert store.collect({live.digest}, grace=600, now=1599.0) == []
    with dead.view().open() as held:  # a transfer that opened the blob keeps reading it
        assert store.collect({live.digest}, grace=600, now=1600.0) == [dead.digest]
        assert not dead.path.exists()
        assert held.read_at(0, 4) == b"dead"
    assert live.path.exists()


def test_gc_forgets_a_blob_that_became_live_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    blob = store.put_bytes(b"x")
    store.collect(set(), grace=10, now=0.0)
    store.collect({blob.digest}, grace=10, now=5.0)  # referenced again: the clock resets
    assert store.collect(set(), grace=10, now=12.0) == []
    assert store.collect(set(), grace=10, now=22.0) == [blob.digest]


def entry(store: Store, name: str, data: bytes) -> Entry:
    """An entry of board ``b`` serving ``data`` from a store blob."""
    return Entry(name, store.put_bytes(data).view(), "b")


def test_catalog_lookup_cleans_names_and_says_why_not(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    cat = Catalog({"none-devboot-x": entry(store, "none-devboot-x", b"s")})
    assert cat.lookup("/none-devboot-x").name == "none-devboot-x"
    with pytest.raises(NotServed, match="'nope' is not served"):
        cat.lookup("nope")
    with pytest.raises(NotServed, match=r"'\.\.' component"):
        cat.lookup("../etc/passwd")


def test_successor_keeps_versioned_names_for_the_grace_period(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    old_script = entry(store, "u-devboot-h", b"script names u-fit-h-aaaa")
    old_fit = entry(store, "u-fit-h-aaaa", b"old fit")
    v1 = Catalog().successor([old_script, old_fit], grace=600, now=0.0)
    new_script = entry(store, "u-devboot-h", b"script names u-fit-h-bbbb")
    new_fit = entry(store, "u-fit-h-bbbb", b"new fit")
    v2 = v1.successor([new_script, new_fit], keep={"u-fit-h-aaaa"}, grace=600, now=100.0)
    # The stable name moves at once; the old versioned name stays, byte-exact.
    assert v2.lookup("u-devboot-h").view == new_script.view
    assert v2.lookup("u-fit-h-aaaa").view.read() == b"old fit"
    assert v2.lookup("u-fit-h-bbbb").view == new_fit.view
    assert old_fit.view.files() <= v2.digests()  # its blob stays live meanwhile
    assert v2.version == v1.version + 1
    # Later snapshots keep it until the grace period (counted from its retirement) is over.
    v3 = v2.successor([new_script, new_fit], keep={"u-fit-h-aaaa"}, grace=600, now=699.0)
    assert "u-fit-h-aaaa" in v3
    v4 = v3.successor([new_script, new_fit], keep={"u-fit-h-aaaa"}, grace=600, now=700.0)
    assert "u-fit-h-aaaa" not in v4  # even when the publisher still calls it versioned
    assert old_fit.view.files() and not old_fit.view.files() & v4.digests()


def test_successor_knows_which_current_stable_names_belong_to_one_board(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    names = ("u-devboot-h", "u-linux-h", "u-oftree-h", "u-initramfs-h")
    group = Group("h", "u-devboot-h", names, "build b1")
    current = [entry(store, n, n.encode()) for n in names[:3]]  # no initramfs served
    cat = Catalog().successor(
        [*current, entry(store, "u-fit-h-aaaa", b"fit")], groups=[group], grace=600
    )
    # Only served names map to their group; versioned names belong to none.
    assert dict(cat.groups) == {n: group for n in names[:3]}
    # A snapshot without the board knows no group for its retired names.
    later = cat.successor([], keep={"u-fit-h-aaaa"}, grace=600)
    assert "u-fit-h-aaaa" in later and not later.groups


def test_catalog_is_immutable(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    cat = Catalog({"a": entry(store, "a", b"a")})
    with pytest.raises(TypeError):
        cat.entries["b"] = cat.entries["a"]  # type: ignore[index]


def test_file_digests_are_remembered_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overrided import store as store_mod

    digests = store_mod.FileDigests()
    path = tmp_path / "modules.cpio"
    path.write_bytes(b"v1")
    hashed: list[Path] = []
    real = store_mod.digest_of_file

    def counted(p: Path) -> str:
        hashed.append(p)
        return real(p)

    monkeypatch.setattr(store_mod, "digest_of_file", counted)
    assert digests.peek(path) is None  # peek never reads
    assert digests.of(path) == hashlib.sha256(b"v1").hexdigest()
    assert digests.of(path) == hashlib.sha256(b"v1").hexdigest()
    assert hashed == [path]  # the second time costs a stat
    assert digests.peek(path) == hashlib.sha256(b"v1").hexdigest()
    path.write_bytes(b"v2 longer")  # rewritten in place: size and mtime change
    assert digests.peek(path) is None
    assert digests.of(path) == hashlib.sha256(b"v2 longer").hexdigest()
    assert hashed == [path, path]


def test_big_files_are_hashed_by_the_hash_process(tmp_path: Path) -> None:
    from overrided.store import FileDigests

    big = tmp_path / "modules.cpio"
    big.write_bytes(bytes(range(256)) * (5 << 12))  # 5 MiB: above the in-process size
    digests = FileDigests()
    try:
        assert digests.of(big) == hashlib.sha256(big.read_bytes()).hexdigest()
        proc = digests.process._proc
        assert proc is not None and proc.poll() is None  # it answered, and it stays
        # A missing file fails the way a local read does.
        with pytest.raises(FileNotFoundError):
            digests.process.digest(tmp_path / "gone.cpio")
        # The process dies: hashes are made here instead, still right.
        proc.kill()
        proc.wait()
        big.write_bytes(b"\1" * (5 << 20))
        assert digests.of(big) == hashlib.sha256(b"\1" * (5 << 20)).hexdigest()
        assert digests.process._proc is None
    finally:
        digests.close()


def test_a_hash_started_ahead_is_not_computed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from overrided.store import FileDigests

    path = tmp_path / "modules.cpio"
    path.write_bytes(b"modules")
    digests = FileDigests()
    release = threading.Event()
    hashed: list[Path] = []

    def slow_hash(p: Path, *, here: bool = False) -> str:
        hashed.append(p)
        release.wait(10)
        return hashlib.sha256(p.read_bytes()).hexdigest()

    monkeypatch.setattr(digests, "hash", slow_hash)
    try:
        digests.start(path)  # the render asks while this still runs
        answers: list[str] = []
        asker = threading.Thread(target=lambda: answers.append(digests.of(path)))
        asker.start()
        release.set()
        asker.join(10)
        assert answers == [hashlib.sha256(b"modules").hexdigest()]
        assert hashed == [path]
        digests.start(path)  # known now: nothing started
        digests.settle()
        assert hashed == [path]
    finally:
        digests.close()


def test_the_hash_process_ends_with_its_owner(tmp_path: Path) -> None:
    import gc

    from overrided.store import HashProcess

    big = tmp_path / "big"
    big.write_bytes(b"\0" * (5 << 20))
    hp = HashProcess()
    assert hp.digest(big) == hashlib.sha256(b"\0" * (5 << 20)).hexdigest()
    proc = hp._proc
    assert proc is not None and proc.poll() is None
    del hp
    gc.collect()
    assert proc.returncode == 0  # reaped: it saw its input end and left


def test_the_hash_process_hashes_a_mapping_and_reads_what_it_cannot_map(tmp_path: Path) -> None:
    from overrided.store import HashProcess

    files = {
        "empty": b"",  # cannot be mapped: read
        "odd": bytes(range(256)) * 12345 + b"tail",  # several chunks, the last one short
    }
    hp = HashProcess()
    try:
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
            assert hp.digest(tmp_path / name) == hashlib.sha256(data).hexdigest(), name
        with pytest.raises(OSError, match="No such file"):
            hp.digest(tmp_path / "absent")
        assert hp._proc is not None and hp._proc.poll() is None  # answered, still running
    finally:
        hp.close()


def test_a_file_that_shrinks_while_it_is_hashed_is_an_error_not_a_dead_hash_process(
    tmp_path: Path,
) -> None:
    """The hash process maps the file: truncating it kills that process with SIGBUS. The caller
    learns that the file shrank, and the next file is hashed by a new process, not here."""
    from overrided.store import HashProcess

    big = tmp_path / "big"
    with big.open("wb") as f:
        f.truncate(8 << 30)  # sparse: 8 GiB take seconds to hash at any speed
    hp = HashProcess()
    hp.start()
    first = hp._proc
    timer = threading.Timer(0.3, lambda: os.truncate(big, 0))
    timer.start()
    try:
        with pytest.raises(OSError, match="shrank while it was hashed") as caught:
            hp.digest(big)
        assert caught.value.filename == str(big)
        assert first is not None and first.returncode == -signal.SIGBUS
        small = tmp_path / "small"
        small.write_bytes(b"x" * (5 << 20))
        assert hp.digest(small) == hashlib.sha256(b"x" * (5 << 20)).hexdigest()
        assert not hp._failed and hp._proc is not None and hp._proc is not first
    finally:
        timer.join()
        hp.close()
