"""Real clients read views of many pieces: ranges of two files and literal bytes, meeting
inside blocks, inside read-ahead runs and inside windows.

tftp-hpa ``tftp``, ``atftp`` (windowsize too) and ``curl`` read each view byte for byte at
blksize 512, 1432 (barebox) and 1468 (U-Boot), from a server whose transfers run in the
launcher's spares with the C loop, with the Python loop, and in processes the server forks
(``OVERRIDED_TFTP_LAUNCHER=0``). The last test runs 100 transfers at once and checks that
neither the server nor a transfer's process holds a copy of what it serves.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overrided.served import Piece, View
from overrided.tftp.packets import netascii_encode
from tests.support.tftp import ServerThread, ViewNamespace, pieced_view, wait_until
from tests.support.tftp_clients import atftp, curl, tftp_hpa

# Piece lengths: several boundaries in one block (1, 2, 3, 7), pieces just under and over a
# block of each size, and pieces longer than a read-ahead run or a window.
LENGTHS = [1000, 1, 2, 511, 1433, 40, 9000, 3, 100000, 1469, 7, 65000, 513, 1431, 1467, 22913]
# More than 65536 blocks of 512: block numbers roll over inside a piece.
BIG_LENGTHS = [(20 << 20) + 3, 1, (3 << 20) - 511, 511, (10 << 20) + 77, 77, 1000, 1 << 20]
TEXT = [b"one\ntwo\r", b"\n", b"\rthree\r\n" * 100, b"\r", b"\n\nfour\r", b"x\n" * 700]


def text_view(folder: Path) -> View:
    """Text whose CR and LF fall on both sides of piece boundaries (netascii doubles them)."""
    path = folder / "text"
    path.write_bytes(b"".join(TEXT[0::2]))
    pieces, offset = [], 0
    for i, part in enumerate(TEXT):
        if i % 2:
            pieces.append(Piece.literal(part))
        else:
            pieces.append(Piece(len(part), path, offset))
            offset += len(part)
    return View(tuple(pieces))


def views(folder: Path) -> dict[str, View]:
    """The views the server serves, by name."""
    served = {
        "mixed": pieced_view(folder, LENGTHS * 4, seed=1),
        "big": pieced_view(folder, BIG_LENGTHS, seed=2),
        "tiny": pieced_view(folder, [100, 50, 10], seed=3),  # one block, nothing for a loop
        "empty": View(()),
        "text": text_view(folder),
    }
    for blksize in (512, 1432, 1468):  # a whole number of blocks: the last one is empty
        lengths = list(LENGTHS)
        lengths.append(blksize - sum(lengths) % blksize)
        served[f"exact{blksize}"] = pieced_view(folder, lengths, seed=blksize)
    return served


MODES = ["c-loop", "python-loop", "forked"]


@pytest.fixture(scope="module", params=MODES)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, dict[str, View]]]:
    """The server, its transfers run by the C loop or the Python one in the launcher's spares,
    or ("forked") by the C loop in processes the server forks itself."""
    by_name = views(tmp_path_factory.mktemp("views"))
    with pytest.MonkeyPatch.context() as env:
        # Set before the server starts: the launcher's processes take the environment then.
        if request.param == "python-loop":
            env.setenv("OVERRIDED_TFTP_NATIVE", "0")
        if request.param == "forked":
            env.setenv("OVERRIDED_TFTP_LAUNCHER", "0")
        with ServerThread(ViewNamespace(by_name)) as server:
            assert server.server is not None
            assert server.server._launcher.enabled == (request.param != "forked")
            yield server, by_name


CASES = [
    # (client, view, blksize, windowsize); tftp-hpa asks for no options: 512, window 1
    *[("tftp-hpa", n, 512, 1) for n in ("mixed", "exact512", "tiny", "empty", "big")],
    *[("curl", n, b, 1) for b in (512, 1432, 1468) for n in ("mixed", f"exact{b}", "tiny")],
    *[("atftp", "mixed", b, 1) for b in (512, 1432, 1468)],
    *[("atftp", "mixed", b, w) for b, w in ((512, 4), (1432, 16), (1468, 16), (1468, 64))],
    *[("atftp", f"exact{b}", b, 16) for b in (1432, 1468)],
    ("atftp", "big", 512, 16),
]


@pytest.mark.parametrize(
    ("client", "name", "blksize", "window"),
    CASES,
    ids=[f"{c}-{n}-bs{b}-w{w}" for c, n, b, w in CASES],
)
def test_real_client_reads_a_view_byte_exact(
    served: tuple[ServerThread, dict[str, View]],
    tmp_path: Path,
    client: str,
    name: str,
    blksize: int,
    window: int,
) -> None:
    server, views = served
    view = views[name]
    if window > 1 and name != "empty":
        # Some window holds a boundary between pieces (not at its edges), so one window's
        # read runs across pieces.
        span = blksize * window
        starts = [sum(p.length for p in view.pieces[:i]) for i in range(1, len(view.pieces))]
        assert any(s % span and s // span < view.size // span for s in starts)
    out = tmp_path / "got"
    before = len(server.observer.finished_records)
    if client == "tftp-hpa":
        argv = tftp_hpa(server.port, name, out)
    elif client == "atftp":
        argv = atftp(server.port, name, out, blksize, window)
    else:
        argv = curl(server.port, name, out, blksize)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == view.read()
    record = server.observer.wait_finished(before + 1)[-1]
    assert (record.outcome, record.name, record.sent) == ("ok", name, view.size)
    assert record.size == view.size
    if window == 1:
        assert record.retransmits == 0
    if client != "tftp-hpa":
        assert record.options.get("blksize") == str(blksize)
    assert record.options.get("windowsize", "1") == str(window)


def test_tftp_hpa_reads_a_view_as_netascii(
    served: tuple[ServerThread, dict[str, View]], tmp_path: Path
) -> None:
    """RFC 1350 netascii over pieces: CR and LF at their edges translate as anywhere else."""
    server, views = served
    out = tmp_path / "got.txt"
    before = len(server.observer.finished_records)
    proc = subprocess.run(
        tftp_hpa(server.port, "text", out, mode="netascii"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == views["text"].read()
    record = server.observer.wait_finished(before + 1)[-1]
    assert record.outcome == "ok"
    assert record.size == len(netascii_encode(views["text"].read()))


# -- many transfers at once ----------------------------------------------------------------


def _status_kib(pid: int | str, field: str) -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def launcher_pid(server: ServerThread) -> int:
    def pid() -> int:
        assert server.server is not None
        proc = server.server._launcher._proc
        assert proc is not None
        return proc.pid

    return int(server.run(pid))


def test_rss_stays_flat_with_100_transfers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """100 curl clients read a 2 MiB view at once: a copy of it per transfer would be 200 MiB
    in the server, or 2 MiB more in each transfer's process; both stay flat, and every
    descriptor the server opened for them is closed again."""
    view = pieced_view(tmp_path, [(1 << 20) + 5, 3, 4000, 511, (1 << 20) - 1000, 7], seed=7)
    outs = [tmp_path / f"got{i}" for i in range(100)]
    # The launcher and the C loop, whatever a module fixture still running has set.
    monkeypatch.delenv("OVERRIDED_TFTP_LAUNCHER", raising=False)
    monkeypatch.delenv("OVERRIDED_TFTP_NATIVE", raising=False)
    with ServerThread(ViewNamespace({"v": view}), max_transfers=200) as server:
        launcher = launcher_pid(server)
        fds_before = len(os.listdir("/proc/self/fd"))
        Path("/proc/self/clear_refs").write_text("5")  # our peak RSS from here on
        rss_before = _status_kib("self", "VmRSS")
        launcher_rss = _status_kib(launcher, "VmRSS")
        procs = [
            subprocess.Popen(curl(server.port, "v", out, 1468), stderr=subprocess.DEVNULL)
            for out in outs
        ]
        peaks: dict[int, int] = {}
        deadline = time.monotonic() + 120
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            for pid in _children(launcher):  # the transfers (and the spares)
                peaks[pid] = max(peaks.get(pid, 0), _status_kib(pid, "VmHWM"))
            time.sleep(0.02)
        assert [p.wait(10) for p in procs] == [0] * 100
        records = server.observer.wait_finished(100, timeout=60)
        grown = _status_kib("self", "VmHWM") - rss_before
        wait_until(lambda: len(os.listdir("/proc/self/fd")) == fds_before)
    assert all(out.read_bytes() == view.read() for out in outs)
    assert [r.outcome for r in records] == ["ok"] * 100
    assert grown < 32 * 1024, grown  # KiB; one copy per transfer would be 200 MiB
    assert len(peaks) > 4, "no transfer process was seen running"
    # Forked from the launcher, a transfer starts at its size; packets and buffers add little.
    assert max(peaks.values()) - launcher_rss < 8 * 1024, (launcher_rss, max(peaks.values()))
