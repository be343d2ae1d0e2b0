"""Real TFTP clients against the server: tftp-hpa ``tftp``, ``atftp`` (windowsize too), ``curl``.

Each reads edge sizes (empty, exactly one block, one block and a byte) and 40 MiB at blksize
512, which is 81921 blocks, so block numbers roll over past 65535; every file is compared
byte for byte and the server's record must say ``ok``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overrided.tftp.transfer import describe
from tests.support.tftp import ServerThread
from tests.support.tftp_clients import atftp, curl, tftp_hpa

BIG = 40 << 20

# name → size; blocks of 512, 1432 (barebox) and 1468 (U-Boot)
SIZES = {
    "empty": 0,
    "b512": 512,
    "b513": 513,
    "b1432": 1432,
    "b1433": 1433,
    "b1468": 1468,
    "b1469": 1469,
    "big40m": BIG,
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Path]]:
    root = tmp_path_factory.mktemp("tftproot")
    for name, size in SIZES.items():
        (root / name).write_bytes(os.urandom(size))
    (root / "text.txt").write_bytes(b"line one\nline two\r\nbare\rcr\n" * 100)
    with ServerThread(root) as server:
        yield server, root


CASES = [
    # (client, name, blksize, windowsize)
    *[("tftp-hpa", n, 512, 1) for n in ("empty", "b512", "b513", "big40m")],
    *[("curl", n, 512, 1) for n in ("empty", "b512", "b513", "big40m")],
    *[("curl", n, 1432, 1) for n in ("empty", "b1432", "b1433")],
    *[("curl", n, 1468, 1) for n in ("b1468", "b1469")],
    *[("atftp", n, 512, 1) for n in ("empty", "b512", "b513")],
    *[("atftp", n, 1432, 16) for n in ("empty", "b1432", "b1433")],
    ("atftp", "big40m", 512, 16),
]


@pytest.mark.parametrize(
    ("client", "name", "blksize", "window"),
    CASES,
    ids=[f"{c}-{n}-bs{b}-w{w}" for c, n, b, w in CASES],
)
def test_real_client_reads_byte_exact(
    served: tuple[ServerThread, Path],
    tmp_path: Path,
    client: str,
    name: str,
    blksize: int,
    window: int,
) -> None:
    server, root = served
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
    assert out.read_bytes() == (root / name).read_bytes()
    record = server.observer.wait_finished(before + 1)[-1]
    assert (record.outcome, record.name, record.sent) == ("ok", name, SIZES[name])
    if client != "tftp-hpa":  # tftp-hpa sends no options at all
        assert record.options.get("blksize") == str(blksize)
    assert record.options.get("windowsize", "1") == str(window)
    # the transfer's own process measured its CPU time; the server's log line carries it
    assert record.cpu > 0
    assert f" cpu={record.cpu:.3f}s " in describe(record)


def test_tftp_hpa_netascii_round_trip(served: tuple[ServerThread, Path], tmp_path: Path) -> None:
    # RFC 1350 netascii: the server sends CR LF / CR NUL, tftp-hpa translates back
    server, root = served
    out = tmp_path / "got.txt"
    proc = subprocess.run(
        tftp_hpa(server.port, "text.txt", out, mode="netascii"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == (root / "text.txt").read_bytes()


@pytest.mark.parametrize(
    ("argv_of", "error"),
    [
        (lambda port, out: tftp_hpa(port, "missing", out), "File not found"),
        # curl 7.88 prints a bogus getpeername() message but exits 68, "TFTP: file not found"
        (lambda port, out: curl(port, "missing", out, 512), "exit 68"),
    ],
    ids=["tftp-hpa", "curl"],
)
def test_real_client_sees_file_not_found(
    served: tuple[ServerThread, Path], tmp_path: Path, argv_of: object, error: str
) -> None:
    server, _ = served
    argv = argv_of(server.port, tmp_path / "x")  # type: ignore[operator]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert error.lower() in f"{proc.stdout}{proc.stderr}exit {proc.returncode}".lower()


def test_ipv6_loopback_with_curl(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(os.urandom(5000))
    with ServerThread(root, host="::1") as server:
        out = tmp_path / "got"
        url = f"tftp://[::1]:{server.port}/f"
        proc = subprocess.run(
            ["curl", "-sS", "--tftp-blksize", "1432", "-o", str(out), url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == (root / "f").read_bytes()
        (record,) = server.observer.wait_finished(1)
        assert record.client.startswith("[::1]:")


def test_cli_refuses_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from overrided.cli import main

    assert main(["tftp", "serve", str(tmp_path / "nope"), "--port", "0"]) == 1
    assert "nope: not a directory" in capsys.readouterr().err


def test_cli_refuses_bad_caps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from overrided.cli import main

    assert main(["tftp", "serve", str(tmp_path), "--max-blksize", "70000"]) == 1
    assert "max blksize 70000 is outside 8..65464" in capsys.readouterr().err


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def _transfer_children_hwm() -> list[int]:
    """Peak RSS (KiB) of this process's forked children: the running transfers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("PPid") == str(os.getpid()) and fields.get("Name") != "curl":
            found.append(int(fields.get("VmHWM", "0 kB").split()[0]))
    return found


def test_rss_stays_flat_with_concurrent_big_reads(
    served: tuple[ServerThread, Path], tmp_path: Path
) -> None:
    """Blocks are read from the file per window: four 40 MiB reads at once copy no file.

    Each transfer runs in a process forked from this one, so its RSS starts at ours (and it
    inherits our peak, hence the reset); it must not grow by anything like the file's size.
    """
    server, _ = served
    Path("/proc/self/clear_refs").write_text("5")  # reset our peak RSS, which children copy
    base = _status_kib("VmRSS")
    procs = [
        subprocess.Popen(
            curl(server.port, "big40m", tmp_path / f"got{i}", 1432), stderr=subprocess.PIPE
        )
        for i in range(4)
    ]
    peaks: list[int] = []
    while any(p.poll() is None for p in procs):
        peaks += _transfer_children_hwm()
        time.sleep(0.05)
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    assert peaks, "no transfer process was seen running"
    # one copy of the file would be 40960 KiB; window buffers stay far below that
    assert max(peaks) - base < 16 * 1024, (base, max(peaks))
