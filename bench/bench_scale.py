"""What a build costs at lab scale (1, 60, all 577 boards), against the floor of a plain ``cp``.

Inputs: the Debian arm64 kernel's FIT (``overrided fit build`` of its Image and DTBs: ~60 MB,
577 configurations) and modules CPIO (``overrided cpio modules``: ~296 MB), built once into
bench/out/ by bench_latency's ``inputs()``, and a tiny init CPIO (``overrided cpio init``).
For each board count N, N board files are written, one per configuration picked evenly through
the FIT's list: ``compatible`` is that configuration's compatible list, ``image = "fit"``,
``initrd = "replace"``, ``init`` the init CPIO, and a hostname of its own, so every board has
its own ``lab-devboot-<hostname>``. (Some configurations share a compatible list; their
boards then resolve to the first of them, as barebox would.)

Each run starts a fresh ``overrided serve`` (its store in a temporary folder, TFTP and HTTP on
127.0.0.1) on those boards and no build. Once it is ready (its folders are watched by
then), the FIT and the modules CPIO are copied with ``cp`` into a
dot-folder of the builds folder, which is then renamed to the build's name (the service ignores
dot-folders, so it sees the build whole). The clock starts when that rename returns and stops
when, for every board, the script fetched over HTTP names the build and the FIT and initrd it
names (``devboot_image``, ``devboot_initrd``) answer a HEAD with 200: the time the last board
was seen so. Only the last board is polled until it is served (aiohttp), then all are swept
by curl (``--parallel``, 16 connections: the scripts, then one HEAD per distinct name they
give, since boards share their initrd), pausing 10 ms between sweeps (up to 250 ms while
nothing changes). Every board a sweep finds served counts as served when that sweep ends, so
the clock is late by at most a pause and a sweep, whose duration the table shows beside the
time the last board alone was seen served. Then a sample of boards (the first five and the
last) is fetched with real TFTP clients: the script with tftp-hpa's ``tftp``, the FIT and the
initrd with curl (large blocks); the FIT must pass ``dumpimage -l``, the initrd must start with
a newc header and hold at least the modules CPIO, and both must be as long as over HTTP.

Also recorded: how much the store grew (allocated blocks of its files, each inode once and not
counting inodes it shares with the build folder, so hardlinks count right; a reflinked extent
would count once per file), the service's peak RSS (``VmHWM``, which counts the pages of files
it maps too; its helper processes apart), its CPU seconds from landing to served, and the floor:
``cp`` of the same files into a fresh folder (the best of three) and the bytes it allocates.

Prints a table and, for the largest count, ``store_growth_ratio=`` (store growth / landed
bytes), ``peak_rss_mb=`` and last ``ratio_vs_cp=`` (seconds to all served / seconds of the
``cp``). The targets are printed, not asserted. A count that is not all served within
``--timeout`` is reported as a timeout. Exits 1 only if a served artifact is wrong.

    .venv/bin/python bench/bench_scale.py [--counts 1,60,all] [--runs N] [--timeout S]
    .venv/bin/python bench/bench_scale.py --quick    # small FIT, 1 and 4 boards: the tests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))

from bench_latency import inputs as debian_inputs  # noqa: E402
from bench_latency import names_build, overrided, quick_inputs  # noqa: E402

from overrided.fit import Fit  # noqa: E402
from tests.support.serve import HOST, Served  # noqa: E402

TARGET_SECONDS = 1.0
TARGET_GROWTH = 1.1
TARGET_RSS_MB = 200.0
USER = "lab"
SAMPLE_FIRST = 5  # boards checked over TFTP: these first ones and the last one
# The devboot variables that name served files (docs/boards.md, "What barebox does").
VARIABLE = re.compile(r'^(devboot_image|devboot_initrd)="([^"]*)"', re.M)
FDT_MAGIC = b"\xd0\x0d\xfe\xed"
NEWC_MAGICS = (b"070701", b"070702")
TFTP_BLKSIZE = 65464  # RFC 2348: the largest block size, so a 300 MB initrd is seconds


@dataclass(frozen=True)
class Inputs:
    """What lands in a build folder, the init CPIO the boards add, and the FIT's boards."""

    fit: Path
    modules: Path
    init: Path
    configurations: list[tuple[str, tuple[str, ...]]]  # name, compatible; in node order

    @property
    def landed_bytes(self) -> int:
        """Bytes of the files a build brings (FIT and modules CPIO)."""
        return self.fit.stat().st_size + self.modules.stat().st_size


@dataclass(frozen=True)
class BoardRef:
    """One board file written for the bench."""

    hostname: str
    configuration: str

    @property
    def script(self) -> str:
        """Its devboot script's name."""
        return f"{USER}-devboot-{self.hostname}"


@dataclass(frozen=True)
class Seen:
    """A board seen served: when, and the names and sizes its script refers to."""

    at: float
    image: str
    initrd: tuple[str, ...]
    sizes: tuple[int, ...]  # image, then each initrd part


@dataclass
class Result:
    """One run of one board count."""

    boards: int
    run: int
    landed: int
    cp_seconds: float
    cp_bytes: int  # allocated by the cp
    seconds: float | None  # landing to all served; None: timed out
    gate: float | None  # landing to the last board served, polled alone
    served: int
    sweep: float  # the last sweep over the boards, the bound on the clock's lateness
    cpu: float  # seconds of the service's CPU from landing to served
    growth: int  # bytes allocated in the store since it was ready
    rss: int  # bytes: the service process's peak RSS (VmHWM)
    helpers_rss: int  # bytes: the largest peak RSS of its helper processes
    checked: int = 0  # boards fetched over TFTP
    failed: int = 0  # of which something was wrong
    problems: list[str] = field(default_factory=list)


def configurations(fit_path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """Each configuration's name and the compatible list bootloaders match it by."""
    with Fit.open(fit_path) as fit:
        return [
            (name, tuple(conf.effective_compatible(fit)))
            for name, conf in fit.configurations.items()
        ]


def init_cpio(folder: Path) -> Path:
    """A tiny init CPIO (one shell script as ``/init``), made by ``overrided cpio init``."""
    tree = folder / "init-tree"
    tree.mkdir(parents=True)
    (tree / "init").write_text("#!/bin/sh\nexec /bin/sh\n")
    (tree / "init").chmod(0o755)
    out = folder / "init.cpio"
    overrided("cpio", "init", str(tree), "-o", str(out))
    return out


def prepare(quick: bool, work: Path) -> Inputs:
    """The bench's inputs: Debian's (cached in bench/out/), or small ones in ``work``."""
    if quick:
        (work / "quick").mkdir()
        fit, modules = quick_inputs(work / "quick")
    else:
        fit, modules = debian_inputs()
    return Inputs(fit, modules, init_cpio(work), configurations(fit))


def write_boards(folder: Path, inputs: Inputs, count: int) -> list[BoardRef]:
    """``count`` board files in ``folder``, configurations picked evenly through the FIT."""
    usable = [(name, compat) for name, compat in inputs.configurations if compat]
    if not usable:
        raise SystemExit(f"{inputs.fit}: no configuration has a compatible to match a board by")
    count = min(count, len(usable))
    shutil.copyfile(inputs.init, folder / "init.cpio")
    boards = []
    for i in range(count):
        name, compatible = usable[i * len(usable) // count]
        board = BoardRef(hostname=f"b{i:04d}", configuration=name)
        # JSON string literals are valid TOML basic strings.
        (folder / f"{board.hostname}.toml").write_text(
            f"# bench_scale: configuration {name}\n"
            f"user = {json.dumps(USER)}\n"
            f"hostname = {json.dumps(board.hostname)}\n"
            f"compatible = {json.dumps(list(compatible))}\n"
            'image = "fit"\n'
            'initrd = "replace"\n'
            'init = "init.cpio"\n'
        )
        boards.append(board)
    return boards


def copy_inputs(inputs: Inputs, folder: Path) -> None:
    """``cp`` the FIT (as ``image.fit``) and the modules CPIO into ``folder``."""
    folder.mkdir(parents=True)
    subprocess.run(["cp", str(inputs.fit), str(folder / "image.fit")], check=True)
    subprocess.run(["cp", str(inputs.modules), str(folder)], check=True)


def cp_floor(inputs: Inputs, folder: Path, tries: int = 3) -> tuple[float, int]:
    """The fewest seconds ``copy_inputs`` takes into a fresh folder (writeback of earlier
    runs makes single copies noisy), and the bytes one copy allocates."""
    best = float("inf")
    written = 0
    for i in range(tries):
        os.sync()  # each copy starts with nothing left to write back, as the landing does
        dest = folder / str(i)
        start = time.perf_counter()
        copy_inputs(inputs, dest)
        best = min(best, time.perf_counter() - start)
        written = allocated(dest)
        shutil.rmtree(dest)
    return best, written


def land(inputs: Inputs, builds: Path, name: str) -> float:
    """Copy the inputs into a dot-folder of ``builds``, rename it to ``name``; the time after."""
    hidden = builds / f".{name}"
    copy_inputs(inputs, hidden)
    hidden.rename(builds / name)
    return time.perf_counter()


def _files(root: Path) -> Iterable[os.stat_result]:
    """The status of every regular file below ``root`` (links are not followed)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue  # the store collected it while we walked
            if stat.S_ISREG(st.st_mode):
                yield st


def inodes(root: Path) -> set[tuple[int, int]]:
    """The (device, inode) of every file below ``root``."""
    return {(st.st_dev, st.st_ino) for st in _files(root)}


def allocated(root: Path, shared: set[tuple[int, int]] | None = None) -> int:
    """Bytes allocated to the files below ``root``: each inode once, none of ``shared``."""
    seen = set(shared or ())
    total = 0
    for st in _files(root):
        key = (st.st_dev, st.st_ino)
        if key not in seen:
            seen.add(key)
            total += st.st_blocks * 512
    return total


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` figure of ``/proc/<pid>/status`` (``VmHWM``, ``VmRSS``); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except FileNotFoundError:
                continue
            out += kids
            todo += kids
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and of its children it waited for."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3 of proc(5); utime, stime, cutime, cstime are 14-17.
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


class Memory:
    """Peak RSS of the service and, apart, the largest of its helper processes."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.helpers = 0

    def sample(self) -> None:
        """Note the helpers' peaks now (a helper's figure is gone once it exits)."""
        for kid in descendants(self.pid):
            self.helpers = max(self.helpers, status_kib(kid, "VmHWM") * 1024)

    def peak(self) -> int:
        """The service process's own peak RSS in bytes."""
        return status_kib(self.pid, "VmHWM") * 1024


def script_names(text: str) -> tuple[str, tuple[str, ...]]:
    """The image and the initrd parts a script names (an initrd may be a colon list)."""
    values = dict(VARIABLE.findall(text))
    parts = tuple(p for p in values.get("devboot_initrd", "").split(":") if p)
    return values.get("devboot_image", ""), parts


async def check(
    session: aiohttp.ClientSession, base: str, board: BoardRef, build: str
) -> Seen | None:
    """The board over HTTP: its script names ``build``, its FIT and initrd are served."""
    try:
        async with session.get(f"{base}/{board.script}") as r:
            if r.status != 200:
                return None
            text = await r.text()
        if not names_build(text, build):
            return None
        image, initrd = script_names(text)
        if not image or not initrd:
            return None
        sizes = []
        for name in (image, *initrd):
            async with session.head(f"{base}/{name}") as r:
                if r.status != 200 or not r.content_length:
                    return None
                sizes.append(r.content_length)
    except (aiohttp.ClientError, TimeoutError):
        return None
    return Seen(time.perf_counter(), image, initrd, tuple(sizes))


@dataclass(frozen=True)
class Sweeps:
    """What ``wait_served`` saw."""

    seen: dict[str, Seen]  # board script -> when and how it was seen served
    gate: float | None  # when the last board, polled alone, was first seen served
    sweep: float  # seconds the last sweep over the boards took


def curl_batch(urls: Sequence[str], bodies: Path | None = None) -> dict[str, tuple[int, int, str]]:
    """Ask for ``urls`` with one ``curl --parallel`` (16 connections, kept alive): a GET each,
    its body kept in the folder ``bodies``, or a HEAD each when ``bodies`` is None. For each
    URL: its status, Content-Length (-1 when absent) and body ("" for a HEAD)."""
    config = []
    outputs = {}
    for i, url in enumerate(urls):
        out = Path(os.devnull) if bodies is None else bodies / f"{i}.out"
        outputs[url] = out
        config.append(f'url = "{url}"\noutput = "{out}"\n')
    fmt = "%{url_effective} %{http_code} %header{content-length}\\n"
    cmd = ["curl", "-s", "--parallel", "--parallel-max", "16", "-w", fmt, "-K", "-"]
    if bodies is None:
        cmd.insert(1, "--head")
    r = subprocess.run(cmd, input="".join(config), capture_output=True, text=True, check=False)
    found: dict[str, tuple[int, int, str]] = {}
    for line in r.stdout.splitlines():
        url, status, *length = line.split(" ")
        if url in outputs:
            out = outputs[url]
            body = out.read_text() if bodies is not None and out.exists() else ""
            size = int(length[0]) if length and length[0].isdigit() else -1
            found[url] = (int(status) if status.isdigit() else 0, size, body)
    return found


def sweep(base: str, boards: Sequence[BoardRef], build: str, work: Path) -> dict[str, Seen]:
    """Every board of ``boards`` served now, checked over HTTP with curl: its script (GET)
    names ``build``, and the FIT and initrd it names answer a HEAD with 200 and a length.
    A name many boards share (their common initrd) is asked for once. The time every board
    found served is given is the end of the sweep: an upper bound for each of them."""
    # The scripts' bodies go to memory (tmpfs where there is one): creating hundreds of files
    # on a disk busy writing back the build just landed takes longer than the requests.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else work) as tmp:
        scripts = curl_batch([f"{base}/{b.script}" for b in boards], Path(tmp))
    named: dict[str, tuple[str, tuple[str, ...]]] = {}
    for board in boards:
        status, _, text = scripts.get(f"{base}/{board.script}", (0, -1, ""))
        if status == 200 and names_build(text, build):
            image, initrd = script_names(text)
            if image and initrd:
                named[board.script] = (image, initrd)
    names = sorted({n for image, initrd in named.values() for n in (image, *initrd)})
    heads = curl_batch([f"{base}/{n}" for n in names])
    at = time.perf_counter()
    seen = {}
    for script, (image, initrd) in named.items():
        sizes = [heads.get(f"{base}/{n}", (0, -1, ""))[:2] for n in (image, *initrd)]
        if all(status == 200 and size > 0 for status, size in sizes):
            seen[script] = Seen(at, image, initrd, tuple(size for _, size in sizes))
    return seen


async def wait_served(
    srv: Served,
    boards: Sequence[BoardRef],
    build: str,
    deadline: float,
    memory: Memory,
    work: Path,
) -> Sweeps:
    """Sweep the boards not yet served until all are or ``deadline`` passes.

    Until the last board is served only it is polled (aiohttp), so that hundreds of requests
    per sweep do not slow down the service being measured; then every board is swept (curl).
    """
    seen: dict[str, Seen] = {}
    pending = list(boards)
    pause = 0.01
    took = 0.0
    gate = None
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.perf_counter() < deadline:
            alive(srv)
            memory.sample()
            first = await check(session, srv.http_base, boards[-1], build)
            if first is not None:
                gate = first.at
                break
            await asyncio.sleep(0.01)
    while pending:
        alive(srv)
        start = time.perf_counter()
        found = sweep(srv.http_base, pending, build, work)
        took = time.perf_counter() - start
        memory.sample()
        seen.update(found)
        left = [b for b in pending if b.script not in found]
        progressed = len(left) < len(pending)
        pending = left
        if not pending or time.perf_counter() >= deadline:
            break
        # Back off while nothing changes, so polling does not load the service it measures.
        pause = 0.01 if progressed else min(pause * 2, 0.25)
        await asyncio.sleep(pause)
    return Sweeps(seen, gate, took)


def alive(srv: Served) -> None:
    """Stop the bench if the service exited."""
    if srv.proc is None or srv.proc.poll() is not None:
        raise SystemExit(f"overrided serve exited:\n{srv.log()[-4000:]}")


def run_tool(cmd: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a client tool; its failure or timeout is in the result, never raised."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, -1, "", f"timed out after {timeout} s")


def tftp_check(
    srv: Served, board: BoardRef, build: str, seen: Seen, modules: int, work: Path
) -> list[str]:
    """Fetch the board's script (tftp-hpa), FIT and initrd (curl) over TFTP; what is wrong.
    ``modules`` is the size of the modules CPIO, which the initrd starts with."""
    problems: list[str] = []
    dest = work / "tftp"
    dest.mkdir(exist_ok=True)
    try:
        text = srv.tftp_get(board.script, dest / board.script).decode(errors="replace")
    except FileNotFoundError as err:
        return [f"{board.script}: {err}"]
    if not names_build(text, build):
        return [f"{board.script} over TFTP does not name build {build}:\n{text}"]
    image, initrd = script_names(text)
    sizes = dict(zip((seen.image, *seen.initrd), seen.sizes, strict=True))
    for name in (image, *initrd):
        out = dest / name
        url = f"tftp://{HOST}:{srv.tftp_port}/{name}"
        r = run_tool(["curl", "-sS", "--tftp-blksize", str(TFTP_BLKSIZE), "-o", str(out), url])
        if r.returncode != 0 or not out.exists():
            problems.append(f"{name}: curl {url}: {r.stderr.strip()} (exit {r.returncode})")
            continue
        got = out.stat().st_size
        with out.open("rb") as f:
            head = f.read(8)
        if got != sizes.get(name, got):
            problems.append(f"{name}: {got} bytes over TFTP, {sizes[name]} over HTTP")
        if name == image:
            listing = run_tool(["dumpimage", "-l", str(out)])
            if not head.startswith(FDT_MAGIC) or listing.returncode != 0:
                problems.append(f"{name}: not a FIT: {listing.stdout[-300:]}{listing.stderr}")
        elif not head.startswith(NEWC_MAGICS):
            problems.append(f"{name}: does not start with a newc CPIO header: {head!r}")
        elif len(initrd) == 1 and got < modules:
            problems.append(f"{name}: {got} bytes, less than the modules CPIO ({modules})")
        out.unlink()
    return problems


def sample(boards: Sequence[BoardRef]) -> list[BoardRef]:
    """The boards checked over TFTP: the first few and the last."""
    return list(dict.fromkeys([*boards[:SAMPLE_FIRST], boards[-1]]))


def one_run(inputs: Inputs, count: int, run: int, timeout: float) -> Result:
    """Start a service on ``count`` boards, land a build, time it until all are served."""
    with tempfile.TemporaryDirectory(prefix=f"bench-scale-{count}-") as tmp:
        work = Path(tmp)
        cp_seconds, cp_bytes = cp_floor(inputs, work / "cp-floor")
        srv = Served(work / "serve")
        boards = write_boards(srv.boards, inputs, count)
        build = f"scale-{len(boards)}-{run}"
        try:
            srv.start(timeout=120)
            assert srv.proc is not None
            memory = Memory(srv.proc.pid)
            before = allocated(srv.store)
            cpu0 = cpu_seconds(srv.proc.pid)
            # Start quiet: the floor's copies and the last run's store are written back first
            # (writeback on a 2-core machine takes CPU from whatever runs beside it).
            os.sync()
            t0 = land(inputs, srv.builds, build)
            sweeps = asyncio.run(wait_served(srv, boards, build, t0 + timeout, memory, work))
            seen = sweeps.seen
            cpu = cpu_seconds(srv.proc.pid) - cpu0
            growth = allocated(srv.store, inodes(srv.builds)) - before
            memory.sample()
            result = Result(
                boards=len(boards),
                run=run,
                landed=inputs.landed_bytes,
                cp_seconds=cp_seconds,
                cp_bytes=cp_bytes,
                seconds=max(s.at for s in seen.values()) - t0 if len(seen) == len(boards) else None,
                gate=None if sweeps.gate is None else sweeps.gate - t0,
                served=len(seen),
                sweep=sweeps.sweep,
                cpu=cpu,
                growth=growth,
                rss=memory.peak(),
                helpers_rss=memory.helpers,
            )
            if result.seconds is not None:
                for board in sample(boards):
                    modules = inputs.modules.stat().st_size
                    problems = tftp_check(srv, board, build, seen[board.script], modules, work)
                    result.checked += 1
                    result.failed += bool(problems)
                    result.problems += problems
        finally:
            srv.stop()
        return result


def parse_counts(raw: str) -> list[int | None]:
    """``1,60,all`` → [1, 60, None] (None: every configuration)."""
    out: list[int | None] = []
    for part in raw.split(","):
        part = part.strip()
        if part == "all":
            out.append(None)
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise SystemExit(f"--counts: {part!r} is neither a positive number nor 'all'")
    return out


def mb(n: float) -> str:
    """Bytes as MB with one decimal."""
    return f"{n / 1e6:.1f}"


# Table columns: title, width.
COLUMNS = (
    ("boards", 6), ("run", 3), ("cp MB", 7), ("cp s", 7), ("gate s", 7), ("served s", 16),
    ("ratio", 7), ("sweep s", 7), ("cpu s", 7), ("store +MB", 9), ("growth", 6), ("rss MB", 7),
    ("helpers", 8), ("tftp", 5),
)  # fmt: skip


def table_line(cells: Sequence[object]) -> str:
    """Cells right-aligned under ``COLUMNS``."""
    return " ".join(f"{c!s:>{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True))


def row(r: Result) -> str:
    """One table row."""
    if r.seconds is None:
        served, ratio = f"timeout {r.served}/{r.boards}", "-"
    else:
        served, ratio = f"{r.seconds:.3f}", f"{r.seconds / r.cp_seconds:.1f}"
    checked = f"{r.checked - r.failed}/{r.checked}" if r.checked else "-"
    return table_line(
        [
            r.boards, r.run, mb(r.cp_bytes), f"{r.cp_seconds:.3f}",
            "-" if r.gate is None else f"{r.gate:.3f}", served, ratio,
            f"{r.sweep:.3f}", f"{r.cpu:.1f}", mb(r.growth), f"{r.growth / r.landed:.2f}",
            mb(r.rss), mb(r.helpers_rss), checked,
        ]
    )  # fmt: skip


LEGEND = """\
cp MB, cp s: what the floor, a cp of the landed files into a fresh folder, allocates and takes
gate s:      landing to the last board file's board seen served (it alone is polled until then)
served s:    landing to every board's script (HTTP) naming the build, with its FIT and initrd
             served; late by at most a pause and a sweep over the boards (sweep s)
cpu s:       the service's CPU (its own and its waited-for children's) in that time
store +MB:   bytes allocated in the store since it was ready; growth: that / landed bytes
rss MB:      the service's peak RSS; helpers: the largest peak RSS of its helper processes
             (VmHWM counts mapped file pages: the hash process maps each file it hashes)
tftp:        sampled boards whose script, FIT and initrd checked out over TFTP"""


def summary(results: list[Result]) -> list[str]:
    """The closing lines for the largest count: targets, then the ratio lines."""
    largest = max(r.boards for r in results)
    runs = [r for r in results if r.boards == largest]
    growth = statistics.median(r.growth / r.landed for r in runs)
    rss_mb = max(r.rss for r in runs) / 1e6
    cp = statistics.median(r.cp_seconds for r in runs)
    lines = [
        f"targets (not asserted): all boards served <= {TARGET_SECONDS} s after landing; store "
        f"growth <= {TARGET_GROWTH}x the landed bytes; peak RSS < {TARGET_RSS_MB:.0f} MB",
    ]
    if any(r.seconds is None for r in runs):
        worst = min(r.served for r in runs)
        served = f"timed out ({worst}/{largest} served at best)"
        ratio = "timeout"
    else:
        seconds = statistics.median(r.seconds or 0.0 for r in runs)
        served = f"served in {seconds:.3f} s (met: {'yes' if seconds <= TARGET_SECONDS else 'no'})"
        ratio = f"{seconds / cp:.1f}"
    lines += [
        f"{largest} boards: {served}; store growth {growth:.2f}x "
        f"(met: {'yes' if growth <= TARGET_GROWTH else 'no'}); peak RSS {rss_mb:.1f} MB "
        f"(met: {'yes' if rss_mb < TARGET_RSS_MB else 'no'}); cp of the inputs {cp:.3f} s",
        f"store_growth_ratio={growth:.2f}",
        f"peak_rss_mb={rss_mb:.1f}",
        f"ratio_vs_cp={ratio}",
    ]
    return lines


def main() -> int:
    """Run every count, print the table and the closing lines."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small FIT, 1 and 4 boards")
    parser.add_argument("--counts", help="board counts, 'all' for every configuration")
    parser.add_argument("--runs", type=int, default=1, help="runs per count")
    parser.add_argument("--timeout", type=float, help="seconds per run (default 600; quick 60)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs: at least 1")
    counts = parse_counts(args.counts or ("1,4" if args.quick else "1,60,all"))
    timeout = args.timeout or (60.0 if args.quick else 600.0)

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-inputs-") as tmp:
        inputs = prepare(args.quick, Path(tmp))
        usable = sum(1 for _, compat in inputs.configurations if compat)
        print(
            f"FIT {mb(inputs.fit.stat().st_size)} MB ({len(inputs.configurations)} "
            f"configurations, {usable} with a compatible), modules CPIO "
            f"{mb(inputs.modules.stat().st_size)} MB, init CPIO {inputs.init.stat().st_size} bytes"
        )
        print(table_line([title for title, _ in COLUMNS]))
        for count in counts:
            for run in range(1, args.runs + 1):
                result = one_run(inputs, count or usable, run, timeout)
                results.append(result)
                print(row(result), flush=True)
                for problem in result.problems:
                    print(f"  wrong: {problem}")
    print()
    print(LEGEND)
    for line in summary(results):
        print(line)
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the service started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
