"""A bounded soak of ``overrided serve`` under UDP loss, and loss recovery against tftpd-hpa.

    sudo .venv/bin/python bench/soak.py [-n 100] [-m 20] [-k 10] [--file-kib 256]
    sudo .venv/bin/python bench/soak.py --quick      # tiny files, N=10 M=2 K=2: the tests

Everything runs in a network namespace the bench creates (only ``lo``, 127.0.0.1), with a
share of UDP packets dropped at random by nftables (``Netns.drop_udp``; this kernel has no
netem). TCP (HTTP) is never dropped.

Soak: ``overrided serve`` with two boards and a build made like bench_latency's quick inputs
(FIT and modules CPIO, ``--file-kib`` stand-ins). At ``--loss`` (1%), N TFTP transfers (curl,
asking blksize 65464; ``overrided serve`` grants 1468) and M HTTP downloads (curl) start spread
over the seconds in which K builds land, one a second (the build folder's FIT rewritten in
place, or a new build folder). Each transfer reads a board's script over HTTP, takes a versioned
name from it (``devboot_initrd``'s parts, or the FIT named by ``# <user>-linux-<host> is
<name>``) and downloads that name; its bytes must equal the same name's bytes fetched over HTTP
(a versioned name's bytes never change). If a name stops being served because a newer build
replaced it, the transfer is counted as superseded and started again with a fresh name.
Reported: completion (byte-exact), retransmits (the service's per-transfer log lines), the
service's RSS each second (min/max) and its open file descriptors after the load against before
it (and what the new ones point at); ``rss_growth_mb=`` is the last sample less the first.

Loss: one file (``--loss-kib`` of random bytes; the Debian FIT with ``--full``) served by
tftpd-hpa and by ``overrided tftp serve`` from the same folder, fetched at window 1 at 1% and
2% loss with curl set up as barebox asks (blksize 1432, timeout 5), as U-Boot asks (blksize
1468, timeout 5, U-Boot's default ``tftptimeout``), and with curl's defaults (blksize 512,
timeout 6). curl asks the timeout option from its own time limits: ``--connect-timeout 15``
gives 5 s. All cases and repeats run at once (each is dominated by waiting out timeouts, not
by the link), each bounded by ``--case-timeout``. Prints the mean seconds per case (a loss
costs a whole timeout, so a median of a few runs says little) and ``ratio_vs_tftpd_hpa=``
(geometric mean of tftpd-hpa's seconds over overrided's). Loss-free, these files take
milliseconds: the times are the timeouts waited out. With ``--full`` (33 MB) a case takes tens
of minutes at 1%: raise ``--case-timeout``.

Final lines: ``completion=``, ``rss_growth_mb=``, ``fd_growth=``, ``ratio_vs_tftpd_hpa=``.
Exits 1 if a transfer failed or a byte differed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))

from bench_latency import DESCRIPTION, QUICK_BOARDS, quick_inputs  # noqa: E402

from tests.support.netns import Netns  # noqa: E402
from tests.support.serve import HOST, Served, free_port  # noqa: E402

OUT = REPO / "bench" / "out"
USER = "soak"
# Asked as RFC 2348's largest; ``overrided serve`` grants at most 1468 (an Ethernet frame).
LOAD_BLKSIZE = 65464
# The devboot variable naming the initrd parts, and the comment naming the FIT's versioned name.
INITRD = re.compile(r'^devboot_initrd="([^"]*)"', re.M)
FIT_NAME = re.compile(r"^# \S+-linux-\S+ is (\S+)", re.M)
RETRANSMITS = re.compile(r" tftp client=.* retransmits=(\d+) outcome=(\S+)")
# Client profiles of the loss comparison: name -> curl options. RFC 2349's timeout option is
# asked by curl as (time limit / its retry count): a 15 s connect limit gives 3 tries of 5 s.
PROFILES: dict[str, tuple[int, list[str]]] = {  # name -> blksize, curl options
    "barebox (blksize 1432, timeout 5)": (
        1432, ["--tftp-blksize", "1432", "--connect-timeout", "15"],
    ),
    "U-Boot (blksize 1468, timeout 5)": (
        1468, ["--tftp-blksize", "1468", "--connect-timeout", "15"],
    ),
    "curl defaults (blksize 512, timeout 6)": (512, []),
}  # fmt: skip


@dataclass
class Tally:
    """What the load phase saw, filled in by its threads."""

    done: int = 0
    failed: list[str] = field(default_factory=list)
    superseded: int = 0
    names: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Curls:
    """The curl processes running now, so that stopping the bench stops them too."""

    def __init__(self) -> None:
        self.live: set[subprocess.Popen[bytes]] = set()
        self.lock = threading.Lock()
        self.closed = False

    def run(self, argv: Sequence[str], timeout: float) -> tuple[int, bytes, str]:
        """Run curl; its exit status, the body and stderr (exit 28 when ``timeout`` passes)."""
        cmd = ["curl", "-sS", "--max-time", f"{timeout:g}", *argv]
        with self.lock:
            if self.closed:
                return 28, b"", "bench stopping"
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.live.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        finally:
            with self.lock:
                self.live.discard(proc)
        return proc.returncode, out, err.decode(errors="replace").strip()

    def stop(self) -> None:
        """Kill every curl still running and start no more."""
        with self.lock:
            self.closed = True
            for proc in self.live:
                proc.kill()


CURLS = Curls()


def curl(argv: Sequence[str], timeout: float) -> tuple[int, bytes, str]:
    """Run curl through ``CURLS``."""
    return CURLS.run(argv, timeout)


def http_get(srv: Served, path: str) -> bytes | None:
    """``path`` from the service over HTTP (TCP: never dropped); None on 404."""
    try:
        return srv.http_get("/" + path.lstrip("/"))
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def versioned_names(script: str) -> list[str]:
    """The versioned names a devboot script refers to: the initrd's parts and the FIT."""
    names = [n for m in INITRD.findall(script) for n in m.split() if n]
    names += FIT_NAME.findall(script)
    return names


class Expected:
    """Each versioned name's sha256, taken once over HTTP (its bytes never change)."""

    def __init__(self, srv: Served) -> None:
        self.srv = srv
        self.digests: dict[str, str] = {}
        self.lock = threading.Lock()

    def pick(self, rng: random.Random, boards: Sequence[str]) -> str | None:
        """A versioned name from a board's current script, its bytes recorded; None if none."""
        script = http_get(self.srv, f"{USER}-devboot-{rng.choice(boards)}")
        names = versioned_names(script.decode(errors="replace")) if script else []
        if not names:
            return None
        name = rng.choice(names)
        with self.lock:
            if name in self.digests:
                return name
        body = http_get(self.srv, name)
        if body is None:
            return None
        with self.lock:
            self.digests[name] = hashlib.sha256(body).hexdigest()
        return name


def small_inputs(folder: Path, kib: int) -> tuple[Path, Path]:
    """bench_latency's quick inputs with ``kib`` KiB stand-ins.

    The service caps blksize at Ethernet's 1468, so a file's blocks, and with them the losses
    each transfer has to wait out, grow with its size: small files keep the soak bounded.
    """
    return quick_inputs(folder, kernel_bytes=kib << 10, module_bytes=kib << 10, stem="soak")


def write_boards(folder: Path) -> list[str]:
    """Two board files (the first two quick boards); their hostnames."""
    hosts = []
    for i, compatible in enumerate(list(QUICK_BOARDS.values())[:2]):
        host = f"s{i}"
        # JSON string literals are valid TOML basic strings.
        (folder / f"{host}.toml").write_text(
            f"user = {json.dumps(USER)}\nhostname = {json.dumps(host)}\n"
            f'compatible = {json.dumps(compatible)}\ninitrd = "append"\n'
        )
        hosts.append(host)
    return hosts


def land(fit_bytes: bytes, run: int, mods: Path, builds: Path) -> None:
    """Build ``run``: even runs rewrite ``dev``'s FIT in place, odd ones add a new folder."""
    folder = builds / ("dev" if run % 2 == 0 else f"new-{run}")
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / mods.name).exists():
        shutil.copyfile(mods, folder / mods.name)
    tag = DESCRIPTION[:-4].encode() + b"%04d" % run
    with (folder / "image.fit").open("wb") as f:
        f.write(fit_bytes.replace(DESCRIPTION.encode(), tag, 1))


def open_files(pid: int, root: Path) -> list[str]:
    """What ``pid``'s file descriptors point at (paths under ``root`` relative to it)."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        targets.append(target.removeprefix(f"{root}/"))
    return targets


def rss_mb(pid: int) -> float:
    """``VmRSS`` of ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def sample_rss(pid: int, stop: threading.Event, into: list[float]) -> None:
    """Append ``pid``'s RSS to ``into`` every second until ``stop`` is set."""
    while True:
        try:
            into.append(rss_mb(pid))
        except OSError:
            return
        if stop.wait(1.0):
            return


@dataclass(frozen=True)
class Load:
    """What every load transfer shares."""

    srv: Served
    expected: Expected
    boards: Sequence[str]
    tally: Tally
    spread: float  # transfers start at random within this many seconds
    timeout: float  # per transfer


def transfer(load: Load, kind: str, seed: int) -> None:
    """One load transfer: wait a while, pick a versioned name, fetch it, check its bytes."""
    srv, expected, boards, tally, timeout = (
        load.srv, load.expected, load.boards, load.tally, load.timeout,
    )  # fmt: skip
    rng = random.Random(seed)
    time.sleep(rng.uniform(0, load.spread))
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline and not CURLS.closed:
        # Until a fetch completes: a name superseded between pick and fetch is picked again.
        name = expected.pick(rng, boards)
        if name is None:
            time.sleep(0.2)
            continue
        if kind == "tftp":
            url = f"tftp://{HOST}:{srv.tftp_port}/{name}"
            rc, body, err = curl(["--tftp-blksize", str(LOAD_BLKSIZE), url], timeout)
        else:
            rc, body, err = curl(["-f", f"{srv.http_base}/{name}"], timeout)
        if rc != 0 and http_get(srv, name) is None:
            with tally.lock:
                tally.superseded += 1
            deadline = time.monotonic() + 60.0
            continue
        with tally.lock:
            tally.names.add(name)
            if rc != 0:
                tally.failed.append(f"{kind} {name}: curl exit {rc}: {err}")
            elif hashlib.sha256(body).hexdigest() != expected.digests[name]:
                tally.failed.append(f"{kind} {name}: {len(body)} bytes differ from HTTP's")
            else:
                tally.done += 1
        return
    with tally.lock:
        tally.failed.append(f"{kind}: no served name to fetch for 60 s")


def set_loss(ns: Netns, percent: float) -> str:
    """Drop ``percent`` % of UDP packets on ``lo`` from now on (0: none); say how."""
    ns.clear_netem()
    ns.run(["nft", "delete", "table", "netdev", "overrided_loss"], check=False)
    return ns.drop_udp(percent) if percent else "no loss"


def soak(args: argparse.Namespace, ns: Netns, work: Path) -> tuple[float, float, int, bool]:
    """The load phase; prints its table and returns completion, RSS growth, fd growth, ok."""
    (work / "inputs").mkdir()
    fit, mods = small_inputs(work / "inputs", args.file_kib)
    fit_bytes = fit.read_bytes()
    srv = Served(work / "serve")
    boards = write_boards(srv.boards)
    land(fit_bytes, 0, mods, srv.builds)
    srv.start()
    pid = srv.proc.pid if srv.proc else 0
    stop = threading.Event()
    rss: list[float] = []
    try:
        expected = Expected(srv)
        srv.wait_for(
            lambda: all(
                versioned_names((http_get(srv, f"{USER}-devboot-{b}") or b"").decode())
                for b in boards
            ),
            timeout=60,
            what="every board's script",
        )
        fds_before = open_files(pid, work)
        sampler = threading.Thread(target=sample_rss, args=(pid, stop, rss))
        sampler.start()
        how = set_loss(ns, args.loss)
        print(f"soak: {how}; {args.n} TFTP + {args.m} HTTP transfers while {args.k} builds land")
        tally = Tally()
        load = Load(srv, expected, boards, tally, max(1.0, float(args.k)), args.case_timeout)
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.n + args.m) as pool:
            kinds = ["tftp"] * args.n + ["http"] * args.m
            jobs = [pool.submit(transfer, load, kind, i) for i, kind in enumerate(kinds)]
            for run in range(1, args.k + 1):
                time.sleep(1.0)
                land(fit_bytes, run, mods, srv.builds)
            for job in jobs:
                job.result()
        elapsed = time.perf_counter() - started
        set_loss(ns, 0)
        time.sleep(2.0)  # let finished transfers' processes and sockets go
        fds_after = open_files(pid, work)
        stop.set()
        sampler.join()
        log = srv.log()
    finally:
        stop.set()
        srv.stop()
    records = [(int(r), o) for r, o in RETRANSMITS.findall(log)]
    ok_records = [r for r, o in records if o == "ok"]
    outcomes = {o: sum(1 for _, x in records if x == o) for o in sorted({o for _, o in records})}
    total = args.n + args.m
    completion = tally.done / total if total else 1.0
    print(f"\n{'soak':<38} {'value':>12}")
    rows = [
        ("transfers (TFTP + HTTP)", f"{total}"),
        ("byte-exact", f"{tally.done}"),
        ("failed", f"{len(tally.failed)}"),
        ("superseded and refetched", f"{tally.superseded}"),
        ("distinct versioned names fetched", f"{len(tally.names)}"),
        ("builds landed", f"{args.k}"),
        ("seconds, load", f"{elapsed:.1f}"),
        ("TFTP transfer records (log)", f"{len(records)} {outcomes}"),
        ("retransmits, total", f"{sum(r for r, _ in records)}"),
        ("retransmits, max per transfer", f"{max(ok_records, default=0)}"),
        ("service RSS MB min / max", f"{min(rss, default=0):.1f} / {max(rss, default=0):.1f}"),
        ("service fds before / after", f"{len(fds_before)} / {len(fds_after)}"),
    ]
    for label, value in rows:
        print(f"{label:<38} {value:>12}")
    # Which folders the descriptors point into, new ones against gone ones.
    where = {"new": Counter(fds_after) - Counter(fds_before)}
    where["gone"] = Counter(fds_before) - Counter(fds_after)
    for what, targets in where.items():
        folders = Counter(os.path.dirname(t) or t for t in targets.elements())
        print(f"fds {what}: " + (", ".join(f"{f} x{n}" for f, n in folders.items()) or "none"))
    for problem in tally.failed[:10]:
        print(f"  FAILED {problem}")
    if tally.failed:
        unhappy = [x for x in log.splitlines() if " tftp client=" in x and "outcome=ok" not in x]
        print("\n".join(["service log, transfers not ok:", *unhappy[-10:]]))
    growth = (rss[-1] - rss[0]) if rss else 0.0
    return completion, growth, len(fds_after) - len(fds_before), not tally.failed


def loss_case(port: int, options: list[str], size: int, digest: str, timeout: float) -> float:
    """Seconds curl needs for the loss file at window 1; inf if it failed or timed out."""
    started = time.perf_counter()
    rc, body, _ = curl([*options, f"tftp://{HOST}:{port}/lossfile"], timeout)
    elapsed = time.perf_counter() - started
    if rc != 0 or len(body) != size or hashlib.sha256(body).hexdigest() != digest:
        return float("inf")
    return elapsed


def compare(args: argparse.Namespace, ns: Netns, work: Path) -> float:
    """The loss comparison against tftpd-hpa; prints its table, returns the ratio."""
    root = work / "tftpboot"
    root.mkdir()
    root.chmod(0o755)  # tftpd-hpa drops to its own user
    if args.full:
        source = OUT / "debian-image.fit"
        if not source.exists():
            raise SystemExit(f"soak: --full needs {source} (run bench/bench_latency.py once)")
        shutil.copyfile(source, root / "lossfile")
    else:
        (root / "lossfile").write_bytes(os.urandom(args.loss_kib << 10))
    (root / "lossfile").chmod(0o644)
    data = (root / "lossfile").read_bytes()
    size, digest = len(data), hashlib.sha256(data).hexdigest()
    del data
    hpa_port, ovd_port = free_port(), free_port()
    servers = [
        subprocess.Popen(["in.tftpd", "-L", "-s", str(root), "-a", f":{hpa_port}"]),
        subprocess.Popen(
            [sys.executable, "-m", "overrided", "tftp", "serve", str(root),
             "--addr", HOST, "--port", str(ovd_port)],
            cwd=REPO, stderr=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    levels = [args.loss] if args.quick else [1.0, 2.0]
    profiles = dict(list(PROFILES.items())[:1]) if args.quick else PROFILES
    rows: list[tuple[str, float, float, float, float]] = []
    try:
        time.sleep(1.5)
        for level in levels:
            how = set_loss(ns, level)
            print(f"\nloss: {how}; {size / 1e6:.2f} MB, window 1, {args.repeats} at once per case")
            cases: dict[tuple[str, int], list[concurrent.futures.Future[float]]] = {}
            with concurrent.futures.ThreadPoolExecutor(2 * len(profiles) * args.repeats) as pool:
                for profile, (_, options) in profiles.items():
                    for port in (hpa_port, ovd_port):
                        cases[(profile, port)] = [
                            pool.submit(loss_case, port, options, size, digest, args.case_timeout)
                            for _ in range(args.repeats)
                        ]
            for profile in profiles:
                hpa = statistics.fmean(f.result() for f in cases[(profile, hpa_port)])
                ovd = statistics.fmean(f.result() for f in cases[(profile, ovd_port)])
                rows.append((profile, level, hpa, ovd, hpa / ovd))
        set_loss(ns, 0)
        barebox = next(iter(PROFILES.values()))[1]
        clean = loss_case(ovd_port, barebox, size, digest, args.case_timeout)
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)
    print(
        f"\n{'client':<40} {'loss':>5} {'tftpd-hpa s':>12} {'overrided s':>12} {'ratio':>6}"
        f" {'losses':>7} {'s/loss hpa':>10} {'s/loss ovd':>10}"
    )
    for profile, level, hpa, ovd, ratio in rows:
        # RRQ, OACK, ACK 0, then a DATA and an ACK per block: each may be dropped.
        losses = (3 + 2 * -(-size // PROFILES[profile][0])) * level / 100
        print(
            f"{profile:<40} {level:>4g}% {hpa:>12.1f} {ovd:>12.1f} {ratio:>6.2f} {losses:>7.1f}"
            f" {(hpa - clean) / losses:>10.1f} {(ovd - clean) / losses:>10.1f}"
        )
    print("(mean of the repeats; inf: failed or over --case-timeout; ratio: tftpd-hpa s /")
    print(" overrided s; losses: packets expected dropped per transfer; s/loss: seconds over")
    print(f" the loss-free time per expected loss) overrided without loss: {clean:.2f} s")
    scale = 33e6 / size
    for profile, level, _, ovd, _ in rows:
        print(f"  at this rate 33 MB would take {ovd * scale / 60:.0f} min: {profile}, {level:g}%")
    finite = [r for *_, r in rows if 0 < r < float("inf")]
    return statistics.geometric_mean(finite) if finite else 0.0


def inside(args: argparse.Namespace) -> int:
    """The bench proper, inside the namespace ``args.netns``."""
    ns = Netns()
    ns.name = args.netns  # made by outer(), which deletes it
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    work.chmod(0o755)
    try:
        completion, growth, fds, ok = soak(args, ns, work)
        ratio = compare(args, ns, work)
    finally:
        set_loss(ns, 0)
        shutil.rmtree(work, ignore_errors=True)
    print(f"completion={completion:.2f}")
    print(f"rss_growth_mb={growth:.1f}")
    print(f"fd_growth={fds}")
    print(f"ratio_vs_tftpd_hpa={ratio:.2f}")
    return 0 if ok else 1


def outer(argv: list[str]) -> int:
    """Create the namespace, run this script inside it, delete the namespace."""
    if os.geteuid() != 0:
        print("soak: needs root (ip netns, nft)", file=sys.stderr)
        return 1
    with Netns(prefix="ovd-soak") as ns:
        return ns.run_to_end([sys.executable, __file__, "--inside", "--netns", ns.name, *argv])


def main() -> int:
    """Parse arguments; re-run inside a namespace unless already there."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("-n", type=int, default=None, help="TFTP transfers (default 100; quick 10)")
    p.add_argument("-m", type=int, default=None, help="HTTP downloads (default 20; quick 2)")
    p.add_argument("-k", type=int, default=None, help="builds landing (default 10; quick 2)")
    p.add_argument("--loss", type=float, default=1.0, help="UDP loss %% during the soak")
    p.add_argument("--file-kib", type=int, default=None, help="soak stand-ins (256; quick 16)")
    p.add_argument("--loss-kib", type=int, default=None, help="loss file (128; quick 16)")
    p.add_argument("--repeats", type=int, default=None, help="per loss case (8; quick 1)")
    p.add_argument("--case-timeout", type=float, default=300.0, help="seconds per transfer")
    p.add_argument("--full", action="store_true", help="loss file: bench/out's Debian FIT")
    p.add_argument("--quick", action="store_true", help="tiny and short, for the test suite")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--netns", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.inside:
        return outer(sys.argv[1:])
    quick = args.quick
    args.n = args.n if args.n is not None else (10 if quick else 100)
    args.m = args.m if args.m is not None else (2 if quick else 20)
    args.k = args.k if args.k is not None else (2 if quick else 10)
    args.file_kib = args.file_kib or (16 if quick else 256)
    args.loss_kib = args.loss_kib or (16 if quick else 128)
    args.repeats = args.repeats or (1 if quick else 8)
    if quick:
        args.case_timeout = min(args.case_timeout, 40.0)
    return inside(args)


def stop(signum: int, frame: object) -> None:
    """On SIGTERM: kill the running curls (so their threads end), then unwind like Ctrl-C."""
    CURLS.stop()
    sys.exit(143)


if __name__ == "__main__":
    # Unwinding runs the finally blocks, which stop the servers and delete the namespace.
    signal.signal(signal.SIGTERM, stop)
    sys.exit(main())
