"""overrided's TFTP server against tftpd-hpa, in one run, in a network namespace of its own.

    sudo .venv/bin/python bench/bench_tftp.py [--runs 3] [--size-mib 64] [--probes 200]
    sudo .venv/bin/python bench/bench_tftp.py --quick    # 1 MiB, 1 run, 20 probes: the tests

Both servers serve the same folder inside a fresh namespace (only ``lo``), so nothing else on
the host shares their link. Runs alternate between the servers so load from elsewhere hits
both alike; each figure is the median of ``--runs``. ``--quick`` is the same bench, every row,
on a 1 MiB file with one run per figure and 20 probes (about ten seconds), for the test suite.
It needs root (``ip netns``), as tftpd-hpa does.

- window 1 (lockstep) at blksize 512/1432/1468/8192/65464, with curl and with our own client
  (bench/tftpget.c, built here with gcc: small per packet, and it can ask for a window), on
  a 64 MiB file, in two placements: server and client pinned to one
  core, and to two different cores. At window 1 each block is a round trip, and a round trip
  costs very different things in the two (on a virtual machine a wake-up across cores can
  cost several times the server's work), so the scheduler's choice would otherwise decide
  the figure; pinning both servers alike compares them on the same ground each time;
- overrided with windowsize 4/16/64 (tftpd-hpa has no windowsize; its window-1 figure at the
  same blksize is the reference);
- 32 curl clients at once on a 16 MiB file: all must complete; aggregate throughput compared;
- with a board's round trip emulated (``--turnaround-ms``, default 0.5: our client waits that
  long before each ACK, since this kernel has no netem): tftpd-hpa and overrided at window 1
  and overrided at windowsize 16, blksize 1432, on the 16 MiB file. On loopback a round trip
  costs microseconds, so a window saves little; on a real link it is what a window amortises;
- the first answer: barebox probes every file it opens (RRQ with blksize 512 and tsize, then
  ERROR once it has the OACK), so the time from an RRQ to its OACK is paid per file; the
  median of ``--probes`` such probes per server, alternating.

Prints a table, then ``ratio_vs_tftpd_hpa=``: the geometric mean of the window-1 ratios at
blksize 1432 and 1468 (the block sizes barebox and U-Boot use) over both clients and both
placements, with the lowest of them on the line before. Each ratio is the median over runs of
overrided's speed over tftpd-hpa's in the run right before or after it, so a change in the
host's load over a row cancels out. The rows after window 1 run unpinned.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))

import cpustat  # noqa: E402

from tests.support.netns import Netns  # noqa: E402

HPA_PORT, OVD_PORT = 1069, 2069
CLIENT = Path("tftpget")  # set by inside(): the built bench/tftpget.c
BLKSIZES = (512, 1432, 1468, 8192, 65464)
WINDOWS = (4, 16, 64)
WINDOW_BLKSIZES = (1432, 1468)
CLIENTS_AT_ONCE = 32


def outer(argv: list[str]) -> int:
    """Create the namespace, run this script inside it to its end, delete the namespace."""
    if os.geteuid() != 0:
        print("bench_tftp: needs root (ip netns)", file=sys.stderr)
        return 1
    with Netns(prefix="ovd-bench") as ns:
        return ns.run_to_end([sys.executable, __file__, "--inside", *argv], cwd=REPO)


def curl_fetch(port: int, name: str, blksize: int, size: int) -> float:
    """Seconds curl needs to read ``name`` (checked for size)."""
    out = subprocess.run(
        [
            "curl", "-sS", "--tftp-blksize", str(blksize), "-o", "/dev/null",
            "-w", "%{size_download} %{time_total}", f"tftp://127.0.0.1:{port}/{name}",
        ],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout.split()  # fmt: skip
    if int(out[0]) != size:
        raise RuntimeError(f"curl got {out[0]} bytes of {size} from port {port}")
    return float(out[1])


def build_client(dest: Path) -> Path:
    """Compile bench/tftpget.c into ``dest``."""
    exe = dest / "tftpget"
    try:
        subprocess.run(
            ["gcc", "-O2", "-o", str(exe), str(HERE / "tftpget.c"), "-lz"], check=True, timeout=120
        )
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(f"bench_tftp: cannot build bench/tftpget.c with gcc: {err}") from None
    return exe


def ours_fetch(
    port: int, name: str, blksize: int, window: int, size: int, crc: int, turnaround: float = 0.0
) -> float:
    """Seconds our client needs to read ``name`` (checked for size and CRC)."""
    argv = [str(CLIENT), "127.0.0.1", str(port), name, str(blksize), str(window)]
    out = subprocess.run(
        [*argv, str(round(turnaround * 1e6))], capture_output=True, text=True, timeout=600
    )
    if out.returncode:
        raise RuntimeError(f"port {port}: {out.stderr.strip()}")
    got = json.loads(out.stdout)
    if (got["size"], got["crc32"]) != (size, crc):
        raise RuntimeError(f"port {port}: got {got['size']} bytes, crc {got['crc32']:#x}")
    if window > 1 and got["options"].get("windowsize") != str(window):
        raise RuntimeError(f"port {port}: windowsize {window} not granted: {got['options']}")
    return float(got["seconds"])


def probe(port: int, name: str) -> float:
    """Seconds from barebox's size probe (RRQ blksize 512, tsize) to the server's OACK."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        request = b"\0\1" + name.encode() + b"\0octet\0blksize\0" + b"512\0tsize\0" + b"0\0"
        started = time.perf_counter()
        sock.sendto(request, ("127.0.0.1", port))
        answer, peer = sock.recvfrom(2048)
        elapsed = time.perf_counter() - started
        if answer[:2] != b"\0\6":
            raise RuntimeError(f"port {port}: probe answered with {answer[:32]!r}, not an OACK")
        sock.sendto(b"\0\5\0\0probe done\0", peer)  # as barebox ends its probe
    return elapsed


def many_at_once(port: int, name: str, size: int) -> float:
    """Seconds until all of ``CLIENTS_AT_ONCE`` curl readers (blksize 1432) are done."""
    url = f"tftp://127.0.0.1:{port}/{name}"
    argv = ["curl", "-sS", "--tftp-blksize", "1432", "-o", "/dev/null", "-w", "%{size_download}"]
    started = time.perf_counter()
    procs = [
        subprocess.Popen([*argv, url], stdout=subprocess.PIPE, text=True)
        for _ in range(CLIENTS_AT_ONCE)
    ]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    elapsed = time.perf_counter() - started
    bad = [o for p, o in zip(procs, outs, strict=True) if p.returncode or int(o or 0) != size]
    if bad:
        raise RuntimeError(f"port {port}: {len(bad)} of {CLIENTS_AT_ONCE} readers failed")
    return elapsed


def family(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    return [pid] + [p for kid in kids for p in family(int(kid))]


def median_rate(samples: list[float], size: int) -> float:
    """MB/s from the median of the timings."""
    return size / statistics.median(samples) / 1e6


def inside(args: argparse.Namespace) -> int:
    """The benchmark proper, run inside the namespace."""
    global CLIENT
    size = args.size_mib << 20
    small = min(16 << 20, size)
    root = Path(tempfile.mkdtemp(prefix="bench-tftp-"))
    root.chmod(0o755)  # tftpd-hpa drops to its own user
    servers: list[subprocess.Popen[bytes]] = []
    build = Path(tempfile.mkdtemp(prefix="bench-tftp-client-"))
    try:
        CLIENT = build_client(build)
        data = os.urandom(size)
        (root / "big").write_bytes(data)
        (root / "small").write_bytes(data[:small])
        for f in root.iterdir():
            f.chmod(0o644)
        crc = zlib.crc32(data)
        del data
        servers.append(subprocess.Popen(["in.tftpd", "-L", "-s", str(root), "-a", f":{HPA_PORT}"]))
        servers.append(
            subprocess.Popen(
                [sys.executable, "-m", "overrided", "tftp", "serve", str(root),
                 "--addr", "0.0.0.0", "--port", str(OVD_PORT)],
                cwd=REPO, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        time.sleep(1.5)
        load_before = os.getloadavg()[0]
        cpu_before = cpustat.snapshot()
        # case, client, tftpd-hpa MB/s, overrided MB/s, ratio
        rows: list[tuple[str, str, float, float, float]] = []
        every_cpu = os.sched_getaffinity(0)

        def place(server_cpus: set[int], client_cpus: set[int]) -> None:
            # Transfers are forked from the servers' processes (overrided's from its launcher,
            # which keeps a spare forked ahead) and inherit their affinity; clients (curl and
            # tftpget, started from this process) inherit this one's.
            for proc in servers:
                for pid in family(proc.pid):
                    os.sched_setaffinity(pid, server_cpus)
            os.sched_setaffinity(0, client_cpus)

        def pair(run: Callable[[int], float], nbytes: int) -> tuple[float, float, float]:
            """Median MB/s of each server, and the median ratio of back-to-back runs."""
            hpa: list[float] = []
            ovd: list[float] = []
            for i in range(args.runs):
                order = [(HPA_PORT, hpa), (OVD_PORT, ovd)]
                for port, out in order if i % 2 == 0 else order[::-1]:
                    out.append(run(port))
            # Each ratio compares two runs taken one right after the other, so a change in
            # the host's load over the minutes of a row cancels out.
            ratio = statistics.median(h / o for h, o in zip(hpa, ovd, strict=True))
            return median_rate(hpa, nbytes), median_rate(ovd, nbytes), ratio

        cpus = sorted(every_cpu)
        placements = [("one core", {cpus[0]}, {cpus[0]})]
        if len(cpus) > 1:
            placements.append(("two cores", {cpus[1]}, {cpus[0]}))
        for where, server_cpus, client_cpus in placements:
            place(server_cpus, client_cpus)
            for bs in BLKSIZES:
                for client in args.clients:
                    if client == "curl":
                        h, o, r = pair(lambda p, bs=bs: curl_fetch(p, "big", bs, size), size)
                    else:
                        h, o, r = pair(
                            lambda p, bs=bs: ours_fetch(p, "big", bs, 1, size, crc), size
                        )
                    rows.append((f"window 1 blksize {bs}, {where}", client, h, o, r))
                    print(f"  {rows[-1][0]:<38} {client:<7} {h:8.1f} {o:8.1f}", flush=True)
        place(every_cpu, every_cpu)
        # Window rows compare with tftpd-hpa's window 1 where the scheduler put it: unpinned.
        for bs in WINDOW_BLKSIZES:
            h, o, r = pair(lambda p, bs=bs: ours_fetch(p, "big", bs, 1, size, crc), size)
            rows.append((f"window 1 blksize {bs}, unpinned", "tftpget", h, o, r))
            print(f"  {rows[-1][0]:<38} tftpget {h:8.1f} {o:8.1f}", flush=True)
        hpa_w1 = {(r[0], r[1]): r[2] for r in rows}
        for bs in WINDOW_BLKSIZES:
            for w in WINDOWS:
                runs = [ours_fetch(OVD_PORT, "big", bs, w, size, crc) for _ in range(args.runs)]
                reference = hpa_w1[(f"window 1 blksize {bs}, unpinned", "tftpget")]
                rate = median_rate(runs, size)
                rows.append(
                    (f"windowsize {w} blksize {bs}", "tftpget", reference, rate, rate / reference)
                )
                case, rate = rows[-1][0], rows[-1][3]
                print(f"  {case:<38} tftpget {reference:8.1f} {rate:8.1f}", flush=True)
        h, o, r = pair(lambda p: many_at_once(p, "small", small), CLIENTS_AT_ONCE * small)
        rows.append((f"{CLIENTS_AT_ONCE} at once, {small >> 20} MiB each", "curl", h, o, r))

        # A board's round trip, emulated by our client's wait before each ACK.
        rtt = args.turnaround_ms / 1000
        small_crc = zlib.crc32((root / "small").read_bytes())
        h, o, r = pair(lambda p: ours_fetch(p, "small", 1432, 1, small, small_crc, rtt), small)
        rtt_case = f"rtt {args.turnaround_ms:g} ms, blksize 1432"
        rows.append((f"{rtt_case}, window 1", "tftpget", h, o, r))
        w16 = [
            ours_fetch(OVD_PORT, "small", 1432, 16, small, small_crc, rtt) for _ in range(args.runs)
        ]
        rate = median_rate(w16, small)
        rows.append((f"{rtt_case}, windowsize 16", "tftpget", h, rate, rate / h))

        # The first answer, as barebox's size probe of each file sees it.
        waits: dict[int, list[float]] = {HPA_PORT: [], OVD_PORT: []}
        for i in range(args.probes):
            for port in (HPA_PORT, OVD_PORT) if i % 2 == 0 else (OVD_PORT, HPA_PORT):
                waits[port].append(probe(port, "small"))
        hpa_ms, ovd_ms = (statistics.median(waits[p]) * 1e3 for p in (HPA_PORT, OVD_PORT))

        print()
        print(
            f"{'case':<44} {'client':<7} {'tftpd-hpa MB/s':>15} {'overrided MB/s':>15} {'ratio':>7}"
        )
        for case, client, h, o, r in rows:
            print(f"{case:<44} {client:<7} {h:15.1f} {o:15.1f} {r:7.2f}")
        print("(ratio: median over runs of overrided's speed over tftpd-hpa's in the run before")
        print(" or after; windowsize rows: over tftpd-hpa's window-1 median at that blksize)")
        print(
            f"first answer (RRQ blksize 512 tsize -> OACK), median of {args.probes}:"
            f" tftpd-hpa {hpa_ms:.2f} ms, overrided {ovd_ms:.2f} ms"
        )
        print(f"ratio_first_answer_vs_tftpd_hpa={hpa_ms / ovd_ms:.2f}  (above 1: sooner)")
        print(f"ratio_windowsize16_at_rtt_vs_tftpd_hpa={rows[-1][4]:.2f}")
        print(f"load average: {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end")
        print(cpustat.report(cpu_before))
        w1 = [
            r
            for case, _, _, _, r in rows
            if case.startswith(("window 1 blksize 1432,", "window 1 blksize 1468,"))
            and "unpinned" not in case
        ]
        print(f"lowest_window1_ratio={min(w1):.2f}  (of {len(w1)} rows at blksize 1432/1468)")
        print(f"ratio_vs_tftpd_hpa={statistics.geometric_mean(w1):.2f}")
        return 0
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(build, ignore_errors=True)


def main() -> int:
    """Parse arguments; re-run inside a namespace unless already there."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, help="runs per figure, median (3; quick 1)")
    parser.add_argument("--size-mib", type=int, help="size of the big file (64; quick 1)")
    parser.add_argument(
        "--clients", default="tftpget,curl", help="window-1 clients: tftpget, curl or both"
    )
    parser.add_argument("--probes", type=int, help="first-answer probes per server (200; quick 20)")
    parser.add_argument(
        "--turnaround-ms",
        type=float,
        default=0.5,
        help="emulated board round trip for the last section (client waits before each ACK)",
    )
    parser.add_argument("--quick", action="store_true", help="1 MiB, 1 run: for the test suite")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inside:
        return outer(sys.argv[1:])
    args.runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    args.size_mib = args.size_mib if args.size_mib is not None else (1 if args.quick else 64)
    args.probes = args.probes if args.probes is not None else (20 if args.quick else 200)
    args.clients = [c for c in args.clients.split(",") if c]
    return inside(args)


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C: the servers stop and the namespace is deleted on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
