"""Drive Debian's U-Boot (``u-boot-qemu``, ``qemu_arm64``) in ``qemu-system-aarch64`` by serial.

The serial console is QEMU's stdio (``-nographic``), read by a thread into one growing log that
every wait scans with a regular expression, so the whole session can be attached to a failure.

Facts this driver is built around:

* U-Boot reads the serial while a command runs (``ctrlc()`` polls it and discards what it
  reads), so anything typed before the prompt is back can be lost. Type one line at a time and
  wait for each line's status; chain steps on one line with ``&&`` when they belong together.
* The hush shell keeps the last status in ``$?``; ``run`` appends ``; echo <tag>$?<tag>`` to the
  line and parses it. The echoed command line shows ``$?`` literally, so it never matches.
* QEMU is always killed, also when a test fails half way (``close``, or leave the ``with``).

Typical use::

    with UBoot(netns="ovd-1", extra=["-netdev", "user,id=n0", ...]) as ub:
        ub.boot_to_prompt()
        res = ub.run("setenv autoload no && dhcp", timeout=30)
        assert res.status == 0, ub.log
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

UBOOT_BIN = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
QEMU = "qemu-system-aarch64"
PROMPT = "=> "
AUTOBOOT = "Hit any key to stop autoboot"

# The machine every test uses; a DT dumped with ``dumpdtb`` must use exactly these options.
MACHINE_ARGS: tuple[str, ...] = ("-M", "virt", "-cpu", "cortex-a57", "-m", "1024")


class UBootError(AssertionError):
    """A wait timed out, QEMU died, or a command failed; the message ends with the serial log."""


@dataclass(frozen=True)
class CommandResult:
    """What one typed line printed (the echoed line itself excluded) and its ``$?``."""

    command: str
    output: str
    status: int


def qemu_command(
    extra: Sequence[str] = (), *, bios: Path = UBOOT_BIN, netns: str | None = None
) -> list[str]:
    """The full argv: QEMU ``virt`` with U-Boot as ``-bios``, optionally inside a namespace."""
    argv = [QEMU, *MACHINE_ARGS, "-nographic", "-bios", str(bios), *extra]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    return argv


# QEMU's user network on 192.0.2.0/24 (its default is 10.0.2.0/24).
SLIRP_NET = "net=192.0.2.0/24,host=192.0.2.2,dhcpstart=192.0.2.15"


def user_netdev(*, mac: str | None = None, hostfwd: Sequence[str] = ()) -> list[str]:
    """QEMU args for a virtio NIC on user networking, on a documentation subnet (guest
    192.0.2.15, gateway 192.0.2.2).

    Guest traffic to addresses other than the gateway is sent from QEMU's own sockets, so a
    server in QEMU's network namespace is reachable at any address that namespace owns.
    """
    netdev = f"user,id=net0,{SLIRP_NET}" + "".join(f",hostfwd={h}" for h in hostfwd)
    dev = "virtio-net-device,netdev=net0" + (f",mac={mac}" if mac else "")
    return ["-netdev", netdev, "-device", dev]


def dump_dtb(path: Path, extra: Sequence[str] = (), *, bios: Path = UBOOT_BIN) -> Path:
    """Write QEMU's generated ``virt`` DT to ``path`` with the same options a boot will use."""
    argv = [*qemu_command(extra, bios=bios), "-machine", f"dumpdtb={path}"]
    subprocess.run(argv, check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    return path


class UBoot:
    """One QEMU running U-Boot; a context manager that always kills QEMU on exit."""

    def __init__(
        self,
        extra: Sequence[str] = (),
        *,
        netns: str | None = None,
        bios: Path = UBOOT_BIN,
        log_path: Path | None = None,
    ) -> None:
        self.argv = qemu_command(extra, bios=bios, netns=netns)
        self.log_path = log_path
        self._chunks: list[str] = []
        self._text = ""
        self._cond = threading.Condition()
        self._eof = False
        self._scan_from = 0  # waits look for matches after this offset
        self._tags = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self.started_at = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> UBoot:
        """Start QEMU (stdout and stderr both feed the log)."""
        self.started_at = time.monotonic()
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="uboot-serial", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")  # UTF-8 may straddle reads
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    self._eof = True
                    self._cond.notify_all()
                    return
                # U-Boot and the kernel print CRLF; drop every CR (a CRLF can straddle two
                # reads) so lines stay plain for regexes and logs.
                self._text += decoder.decode(data).replace("\r", "")
                self._cond.notify_all()

    def close(self) -> None:
        """Kill QEMU (if running), reap it, and write the log file if one was asked for."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL does not hang
                proc.wait(timeout=10)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):  # QEMU gone: a broken pipe on flush
                    proc.stdin.close()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self.log_path is not None:
            self.log_path.write_text(self.log)

    def __enter__(self) -> UBoot:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def returncode(self) -> int | None:
        """QEMU's exit status, or None while it runs."""
        return None if self._proc is None else self._proc.poll()

    # -- the log ---------------------------------------------------------------------------

    @property
    def log(self) -> str:
        """Everything QEMU printed so far (CRLF folded to LF)."""
        with self._cond:
            return self._text

    def fail(self, message: str) -> UBootError:
        """An error whose message ends with the full serial log."""
        return UBootError(f"{message}\n----- serial log ({self.argv[0]} ...) -----\n{self.log}")

    # -- waiting and typing ----------------------------------------------------------------

    def expect(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait for ``pattern`` in output not yet consumed; consume up to the end of the match.

        Raises ``UBootError`` (with the log) on timeout or if QEMU exits first.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = regex.search(self._text, self._scan_from)
                if m is not None:
                    self._scan_from = m.end()
                    return m
                if self._eof:
                    raise self.fail(f"QEMU exited while waiting for {regex.pattern!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.fail(f"timed out after {timeout:g} s waiting for {regex.pattern!r}")
                self._cond.wait(min(left, 0.5))

    def expect_any(self, patterns: Sequence[str], timeout: float) -> tuple[int, re.Match[str]]:
        """Wait for the first of several patterns; return its index and match."""
        joined = "|".join(f"(?P<p{i}>{p})" for i, p in enumerate(patterns))
        m = self.expect(joined, timeout)
        for i in range(len(patterns)):
            if m.group(f"p{i}") is not None:
                return i, m
        raise AssertionError("unreachable")  # pragma: no cover

    def send(self, text: str) -> None:
        """Write raw text to the serial input."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            raise self.fail("QEMU is not running")
        proc.stdin.write(text.encode())
        proc.stdin.flush()

    def send_line(self, line: str) -> None:
        """Type one line and press enter (no waiting)."""
        self.send(line + "\n")

    def boot_to_prompt(self, timeout: float = 60) -> None:
        """Stop autoboot and wait for the first prompt."""
        self.expect(re.escape(AUTOBOOT), timeout)
        self.send("\n")
        self.expect(re.escape(PROMPT), timeout)

    def run(self, line: str, timeout: float = 30) -> CommandResult:
        """Type ``line`` at the prompt, wait for its status and the next prompt.

        ``line`` may chain commands (``a && b``); the status is that of the chain.
        """
        self._tags += 1
        tag = f"@@rc{self._tags}@@"
        self.send_line(f"{line}; echo {tag}$?{tag}")
        # The echo of the typed line is the first thing back; skip past it.
        self.expect(re.escape(tag) + r"\$\?" + re.escape(tag), timeout)
        start = self._scan_from
        m = self.expect(re.escape(tag) + r"(\d+)" + re.escape(tag), timeout)
        output = self._text[start : m.start()].strip("\n")
        self.expect(re.escape(PROMPT), timeout)
        return CommandResult(command=line, output=output, status=int(m.group(1)))

    def check(self, line: str, timeout: float = 30) -> str:
        """``run`` and require status 0; return the output."""
        res = self.run(line, timeout)
        if res.status != 0:
            raise self.fail(f"{line!r} failed with status {res.status}:\n{res.output}")
        return res.output

    def elapsed(self) -> float:
        """Seconds since QEMU was started."""
        return time.monotonic() - self.started_at
