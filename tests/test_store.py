"""The content-addressed store, the render cache, grace-period GC, and catalog snapshots."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from overrided.catalog import Catalog, Group
from overrided.served import Entry, NotServed
from overrided.store import Store


def test_blobs_are_named_by_content_and_deduplicated(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    a = store.put_bytes(b"kernel")
    b = store.put_bytes(b"kernel")
    assert a == b
    assert a.digest == hashlib.sha256(b"kernel").hexdigest()
    assert a.path.read_bytes() == b"kernel" and a.size == 6
    assert len(list(store.blobs.iterdir())) == 1


def test_put_file_copies_so_the_source_can_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    src = tmp_path / "Image"
    src.write_bytes(b"v1" * 1000)
    blob = store.put_file(src)
    src.write_bytes(b"v2" * 1000)  # `make` rewrites its output in place
    assert blob.path.read_bytes() == b"v1" * 1000
    assert store.put_file(src).digest == hashlib.sha256(b"v2" * 1000).hexdigest()


def test_adopt_moves_a_finished_temp_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    tmp = store.temp_path(".fit")
    tmp.write_bytes(b"trimmed")
    blob = store.adopt(tmp)
    assert not tmp.exists()
    assert blob.path.parent == store.blobs
    assert blob.open().read_at(0, 100) == b"trimmed"


def test_render_cache_needs_every_blob_it_names(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    fit = store.put_bytes(b"fit")
    store.remember("k1", {"blobs": {"fit": fit.digest}, "configuration": "conf-1"})
    assert store.cached("k1") == {"blobs": {"fit": fit.digest}, "configuration": "conf-1"}
    assert store.cached("other") is None
    fit.path.unlink()  # a blob collected by GC makes the cached render useless
    assert store.cached("k1") is None


def test_gc_keeps_live_blobs_and_waits_out_the_grace_period(tmp_path: Path) -> None:
    store = Store(tmp_path / "st")
    live = store.put_bytes(b"live")
    dead = store.put_bytes(b"dead")
    assert store.collect({live.digest}, grace=600, now=1000.0) == []  # grace starts now
    assert store.collect({live.digest}, grace=600, now=1599.0) == []
    with dead.open() as held:  # a transfer that opened the blob keeps reading it
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
    return Entry(name, store.put_bytes(data), "b")


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
    assert v2.lookup("u-devboot-h").blob == new_script.blob
    assert v2.lookup("u-fit-h-aaaa").blob == old_fit.blob
    assert v2.lookup("u-fit-h-bbbb").blob == new_fit.blob
    assert v2.version == v1.version + 1
    # Later snapshots keep it until the grace period (counted from its retirement) is over.
    v3 = v2.successor([new_script, new_fit], keep={"u-fit-h-aaaa"}, grace=600, now=699.0)
    assert "u-fit-h-aaaa" in v3
    v4 = v3.successor([new_script, new_fit], keep={"u-fit-h-aaaa"}, grace=600, now=700.0)
    assert "u-fit-h-aaaa" not in v4  # even when the publisher still calls it versioned
    assert old_fit.blob.digest not in v4.digests()


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
    monkeypatch.setattr(store_mod, "digest_of_file", lambda p: hashed.append(p) or real(p))
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

    def slow_hash(p: Path) -> str:
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
