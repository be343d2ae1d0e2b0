"""Per-client pins: a rebuild between two reads of one board never mixes two renders.

barebox reads a board's stable names one by one (``devboot``: the script, then the ``net``
entry's probes of ``oftree``/``initramfs``, then ``linux``, which the script also names as the
image). A client that read the script, or a ``boot net`` name while it held no pin for the
board, gets that board's stable names from that snapshot until it is idle; everyone else, and
the same client's other boards, get the newest. Here catalogs are built by hand from real store
blobs and the clock is ours; the service and its garbage collection are driven at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import pytest

from overrided.catalog import Catalog, Group
from overrided.clients.barebox import stable_names
from overrided.folder import FolderNamespace
from overrided.pins import Pins
from overrided.served import Entry, NotServed, Transfer
from overrided.service import OverridedService
from overrided.store import Store
from overrided.tftp import TftpServer
from tests.support.serve import rebuild, sample_service

IDLE = 60.0
GRACE = 600.0
A, B = "192.0.2.10", "192.0.2.11"  # two boards' addresses


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def render(
    store: Store, build: str, board: str = "a", host: str = "board-a", *, initramfs: bool = True
) -> tuple[list[Entry], Group]:
    """What a render of ``build`` publishes for one board: script, boot net names, versioned FIT."""
    script, linux, oftree, initrd = stable_names("afa", host)
    fit = store.put_bytes(f"FIT of {build} for {host}".encode())
    parts = {
        script: store.put_bytes(f'devboot_image="{linux}" # {build}'.encode()),
        linux: fit,
        oftree: store.put_bytes(f"DTB of {build} for {host}".encode()),
        f"afa-fit-{host}-{fit.digest[:12]}": fit,
    }
    if initramfs:
        parts[initrd] = store.put_bytes(f"initramfs of {build} for {host}".encode())
    group = Group(board, script, stable_names("afa", host), f"build {build}")
    return [Entry(n, blob.view(), board) for n, blob in parts.items()], group


def publish(old: Catalog, *renders: tuple[list[Entry], Group], grace: float = GRACE) -> Catalog:
    entries = [e for r in renders for e in r[0]]
    versioned = {e.name for e in entries if "-fit-" in e.name} | {
        n for n in old.entries if "-fit-" in n
    }
    return old.successor(entries, keep=versioned, groups=[g for _, g in renders], grace=grace)


class Reader:
    """The service's lookup, reduced to pins over a catalog the test replaces."""

    def __init__(self, store: Store, *, idle: float = IDLE, limit: float = GRACE) -> None:
        self.store = store
        self.clock = Clock()
        self.pins = Pins(idle=idle, limit=limit, clock=self.clock)
        self.catalog = Catalog()

    def rebuild(self, build: str, *, initramfs: bool = True, grace: float = GRACE) -> None:
        self.catalog = publish(
            self.catalog, render(self.store, build, initramfs=initramfs), grace=grace
        )

    def read(self, name: str, client: str) -> bytes:
        entry = self.pins.lookup(self.catalog, name, client)
        if entry is None:
            entry = self.catalog.lookup(name)
            self.pins.pin(self.catalog, name, client, entry)
        return entry.view.read()


@pytest.fixture
def reader(tmp_path: Path) -> Reader:
    r = Reader(Store(tmp_path / "store"))
    r.rebuild("b1")
    return r


def test_a_rebuild_between_script_and_image_keeps_the_client_on_its_script(
    reader: Reader,
) -> None:
    script = reader.read("afa-devboot-board-a", A)
    assert script.endswith(b"# b1")
    reader.clock.now += 5
    reader.rebuild("b2")
    # The board that read b1's script gets b1's FIT and initramfs under the stable names ...
    assert reader.read("afa-linux-board-a", A) == b"FIT of b1 for board-a"
    assert reader.read("afa-initramfs-board-a", A) == b"initramfs of b1 for board-a"
    assert reader.read("afa-oftree-board-a", A) == b"DTB of b1 for board-a"
    # ... everyone else gets b2, also under the same names.
    assert reader.read("afa-linux-board-a", B) == b"FIT of b2 for board-a"
    assert reader.read("afa-devboot-board-a", B).endswith(b"# b2")
    # Versioned names are the same for every client.
    fit_b1 = "afa-fit-board-a-" + hashlib.sha256(b"FIT of b1 for board-a").hexdigest()[:12]
    assert reader.read(fit_b1, B) == b"FIT of b1 for board-a"


def test_reading_the_script_again_pins_to_the_newest_snapshot(reader: Reader) -> None:
    reader.read("afa-devboot-board-a", A)
    reader.rebuild("b2")
    assert reader.read("afa-linux-board-a", A) == b"FIT of b1 for board-a"
    # The next `devboot`: the script read moves the client to b2 at once.
    assert reader.read("afa-devboot-board-a", A).endswith(b"# b2")
    assert reader.read("afa-linux-board-a", A) == b"FIT of b2 for board-a"


def test_plain_boot_net_is_pinned_by_its_first_read(reader: Reader) -> None:
    # `boot net` without devboot: `[ -f oftree ]` and `[ -f initramfs ]` probes, then linux.
    assert reader.read("afa-oftree-board-a", A) == b"DTB of b1 for board-a"
    reader.rebuild("b2")
    assert reader.read("afa-initramfs-board-a", A) == b"initramfs of b1 for board-a"
    assert reader.read("afa-linux-board-a", A) == b"FIT of b1 for board-a"
    # Reading a boot net name again does not move the pin: only the script or idleness do.
    assert reader.read("afa-oftree-board-a", A) == b"DTB of b1 for board-a"


def test_a_pin_ends_when_its_client_is_idle(reader: Reader) -> None:
    reader.read("afa-devboot-board-a", A)
    reader.rebuild("b2")
    # Every read refreshes the pin: reads a little less than IDLE apart keep it ...
    for _ in range(3):
        reader.clock.now += IDLE - 1
        assert reader.read("afa-linux-board-a", A) == b"FIT of b1 for board-a"
    # ... IDLE seconds without one end it: the next read pins to the newest snapshot.
    reader.clock.now += IDLE
    assert reader.read("afa-linux-board-a", A) == b"FIT of b2 for board-a"
    reader.rebuild("b3")
    assert reader.read("afa-linux-board-a", A) == b"FIT of b2 for board-a"


def test_a_transfer_in_progress_keeps_its_pin(reader: Reader) -> None:
    # A big FIT over lockstep TFTP can take longer than IDLE; the read after it must still
    # come from the same snapshot.
    reader.read("afa-devboot-board-a", A)
    reader.rebuild("b2")
    reader.read("afa-linux-board-a", A)
    transfer = Transfer("tftp", f"{A}:40000", "afa-linux-board-a", board="a")
    reader.pins.started(transfer)
    reader.clock.now += 3 * IDLE
    reader.pins.finished(transfer)
    reader.clock.now += 1
    assert reader.read("afa-initramfs-board-a", A) == b"initramfs of b1 for board-a"
    # Another client's transfer of the same board does not keep A's pin.
    other = Transfer("tftp", f"{B}:40001", "afa-linux-board-a", board="a")
    reader.pins.started(other)
    reader.clock.now += IDLE
    assert reader.read("afa-linux-board-a", A) == b"FIT of b2 for board-a"


def test_no_pin_outlives_the_grace_period(tmp_path: Path) -> None:
    reader = Reader(Store(tmp_path / "store"), idle=IDLE, limit=100.0)
    reader.rebuild("b1")
    reader.read("afa-devboot-board-a", A)
    reader.rebuild("b2")
    for _ in range(3):
        reader.clock.now += 30
        assert reader.read("afa-linux-board-a", A) == b"FIT of b1 for board-a"
    reader.clock.now += 10  # 100 s after the script read, though read 10 s ago
    assert reader.read("afa-linux-board-a", A) == b"FIT of b2 for board-a"


def test_a_name_the_pinned_snapshot_did_not_serve_is_not_served(tmp_path: Path) -> None:
    reader = Reader(Store(tmp_path / "store"))
    reader.rebuild("b1", initramfs=False)
    reader.read("afa-devboot-board-a", A)
    reader.rebuild("b2")  # the board file gained an init CPIO
    # `[ -f initramfs ]` must answer as b1 would: b1's boot has no initramfs.
    with pytest.raises(NotServed, match=r"pinned to build b1 .*which did not serve it"):
        reader.read("afa-initramfs-board-a", A)
    assert reader.read("afa-initramfs-board-a", B) == b"initramfs of b2 for board-a"


def test_other_boards_of_the_same_client_are_not_pinned(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    reader = Reader(store)
    reader.catalog = publish(Catalog(), render(store, "b1"), render(store, "b1", "x", "board-x"))
    reader.read("afa-devboot-board-a", A)
    reader.catalog = publish(
        reader.catalog, render(store, "b2"), render(store, "b2", "x", "board-x")
    )
    assert reader.read("afa-linux-board-x", A) == b"FIT of b2 for board-x"
    assert reader.read("afa-linux-board-a", A) == b"FIT of b1 for board-a"


def test_pins_off(tmp_path: Path) -> None:
    reader = Reader(Store(tmp_path / "store"), idle=0)
    reader.rebuild("b1")
    reader.read("afa-devboot-board-a", A)
    reader.rebuild("b2")
    assert reader.read("afa-linux-board-a", A) == b"FIT of b2 for board-a"
    assert len(reader.pins) == 0


def test_a_pin_serving_an_old_entry_says_so(
    reader: Reader, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="overrided.pins")
    reader.read("afa-devboot-board-a", A)
    reader.read("afa-linux-board-a", A)
    assert not caplog.records  # same as the current entry: nothing to say
    reader.rebuild("b2")
    reader.read("afa-linux-board-a", A)
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert message.startswith(f"pin: client {A} gets afa-linux-board-a of board a from build b1")
    assert "not from build b2" in message


def test_many_clients_keep_at_most_so_many_pins(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    clock = Clock()
    pins = Pins(idle=IDLE, limit=GRACE, most=3, clock=clock)
    catalog = publish(Catalog(), render(store, "b1"))
    entry = catalog.lookup("afa-linux-board-a")
    for i in range(5):
        pins.pin(catalog, "afa-linux-board-a", f"198.51.100.{i}", entry)
    assert len(pins) == 3
    # The oldest went first.
    assert pins.lookup(catalog, "afa-oftree-board-a", "198.51.100.0") is None
    assert pins.lookup(catalog, "afa-oftree-board-a", "198.51.100.4") is not None


def test_only_a_boards_stable_names_pin(reader: Reader) -> None:
    fit = next(n for n in reader.catalog.entries if n.startswith("afa-fit-"))
    reader.read(fit, A)
    assert len(reader.pins) == 0
    reader.read("afa-linux-board-a", A)
    assert len(reader.pins) == 1


def test_pinned_blobs_are_live_while_the_pin_can_serve_them(reader: Reader) -> None:
    store = reader.store
    reader.read("afa-devboot-board-a", A)
    old = {n: reader.catalog.entries[n].view for n in stable_names("afa", "board-a")}
    old_blobs = frozenset().union(*(v.files() for v in old.values()))
    assert len(old_blobs) == len(old)  # script, FIT, DTB, initramfs: one blob each
    # Catalogs that keep no retired names: the pin is all that refers to b1's blobs.
    reader.rebuild("b2", grace=0)
    reader.rebuild("b3", grace=0)
    assert not old_blobs & reader.catalog.digests()
    live = reader.catalog.digests() | reader.pins.digests()
    assert old_blobs <= live
    store.collect(live, grace=0)
    assert reader.read("afa-linux-board-a", A) == b"FIT of b1 for board-a"
    # Once the pin has ended, its blobs are no longer kept for it.
    reader.clock.now += IDLE
    assert not old_blobs & reader.pins.digests()


async def test_the_tftp_server_names_the_client_address(tmp_path: Path) -> None:
    """The server passes the requester's address, without its port, to the namespace."""
    (tmp_path / "name").write_bytes(b"bytes")

    clients: list[str | None] = []

    class Recording(FolderNamespace):
        def lookup(self, name: str, *, client: str | None = None) -> Entry:
            clients.append(client)
            return super().lookup(name, client=client)

    server = TftpServer(Recording(tmp_path))
    await server.start("127.0.0.1", 0)
    try:
        curl = await asyncio.create_subprocess_exec(
            "curl",
            "-sS",
            "--interface",
            "127.0.0.5",
            f"tftp://127.0.0.1:{server.port}/name",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(curl.communicate(), 60)
    finally:
        await server.close(grace=0.5)
    assert curl.returncode == 0, err
    assert out == b"bytes"
    assert clients == ["127.0.0.5"]


# --- the service ----------------------------------------------------------------------------

BOARD = 'user = "afa"\ncompatible = ["v,board-a", "v,soc"]\n'


def test_the_service_keeps_a_pinned_fit_until_the_pin_ends(tmp_path: Path) -> None:
    """Through ``OverridedService``: lookups with client addresses, a rebuild, and the store's
    collection run again and again; whatever a pin hands out can still be opened."""
    grace = 1.0
    settings, build, two = sample_service(tmp_path, BOARD, grace=grace, pin_idle=IDLE)

    async def run() -> None:
        service = OverridedService(settings)
        await service.refresh(None, boards=True)
        try:
            script = service.lookup("afa-devboot-board-a", client=A)
            fit = service.lookup("afa-linux-board-a", client=A)
            (info,) = service.boards()
            old_fit = info.artifacts["fit"]
            assert service.lookup(old_fit).view == fit.view
            rebuild(build, two)
            await service.refresh({"b1"})
            new = service.lookup("afa-linux-board-a", client=B)
            assert new.view != fit.view
            # Until the pin ends (grace seconds after the script read), A gets the old FIT,
            # and collections never delete a blob it can hand out.
            served_old = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 4 * grace
            while loop.time() < deadline:
                await service.collect(grace=0.0)
                got = service.lookup("afa-linux-board-a", client=A)
                with got.view.open() as opened:
                    assert opened.size == got.view.size
                    assert opened.read_at(0, 4) == b"\xd0\x0d\xfe\xed"  # a FIT's bytes
                if got.view == fit.view:
                    served_old += 1
                else:
                    break
                await asyncio.sleep(0.05)
            assert served_old > 1
            assert got.view == new.view
            (info,) = service.boards()
            assert service.lookup(info.artifacts["fit"]).view == new.view
            # A new script read from the same address is the next boot: the newest render.
            assert service.lookup("afa-devboot-board-a", client=A).view != script.view
        finally:
            await service.close()

    asyncio.run(run())
