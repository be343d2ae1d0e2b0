"""Network namespaces for tests: an isolated loopback with extra addresses and optional netem.

A namespace gives a test its own port 69 and its own addresses, so a TFTP server there cannot
clash with anything on the host, and ``tc ... netem`` on its ``lo`` affects only that test.
Names are unique per process (``ovd-<pid>-<n>``); ``close`` deletes the namespace, which also
kills nothing by itself: callers stop their own processes first.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Sequence
from typing import Any

_counter = itertools.count(1)


class NetnsError(RuntimeError):
    """An ``ip``/``tc`` command failed; the message carries its stderr."""


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


class Netns:
    """A network namespace with ``lo`` up; a context manager that deletes it on exit."""

    def __init__(self, addresses: Sequence[str] = (), *, prefix: str = "ovd") -> None:
        self.name = f"{prefix}-{os.getpid()}-{next(_counter)}"
        self.addresses = tuple(addresses)
        self._created = False

    def create(self) -> Netns:
        """Create the namespace, bring ``lo`` up and add the addresses (CIDR, e.g. ``/32``)."""
        _ip("netns", "add", self.name)
        self._created = True
        try:
            self.ip("link", "set", "lo", "up")
            for addr in self.addresses:
                self.ip("addr", "add", addr, "dev", "lo")
        except Exception:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Delete the namespace (idempotent)."""
        if self._created:
            self._created = False
            _ip("netns", "delete", self.name)

    def __enter__(self) -> Netns:
        if not self._created:
            self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 60, **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run a command inside the namespace and wait (output captured, text unless told)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.wrap(argv), check=check, timeout=timeout, **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a command inside the namespace (``ip netns exec`` execs it: same pid)."""
        return subprocess.Popen(self.wrap(argv), **kw)

    def run_to_end(self, argv: Sequence[str], **kw: Any) -> int:
        """Run a command inside the namespace to its end; its exit status. If this process
        unwinds meanwhile (Ctrl-C, or SIGTERM made to unwind), the command gets a SIGTERM and
        is waited for, so that it stops its servers before the namespace goes."""
        child = self.popen(argv, **kw)
        try:
            return child.wait()
        finally:
            if child.poll() is None:
                child.terminate()
                child.wait(60)

    def ip(self, *args: str) -> None:
        """Run ``ip`` inside the namespace."""
        _ip("-n", self.name, *args)

    def netem(self, spec: str, dev: str = "lo") -> None:
        """Replace ``dev``'s root qdisc by ``netem <spec>``, e.g. ``"loss 2%"``."""
        argv = ["tc", "qdisc", "replace", "dev", dev, "root", "netem", *spec.split()]
        proc = self.run(argv, check=False)
        if proc.returncode != 0:
            raise NetnsError(f"{' '.join(argv)}: {proc.stderr.strip()}")

    def drop_udp(self, percent: float, dev: str = "lo", *, min_length: int = 0) -> str:
        """Drop ``percent`` % of UDP packets on ``dev``; return how (for test messages).

        ``tc netem loss`` where the kernel has ``sch_netem`` and all sizes are meant; otherwise
        an nftables ingress rule drops the same share at random (each packet on ``lo`` passes
        ingress once). ``min_length`` spares UDP packets shorter than that many bytes (UDP
        header included), e.g. to drop TFTP DATA but never ACKs.
        """
        if not min_length:
            try:
                self.netem(f"loss {percent:g}%", dev)
                return f"netem loss {percent:g}%"
            except NetnsError:
                pass  # no sch_netem in this kernel: nftables below
        per_mille = round(percent * 10)
        match = f"udp length >= {min_length} " if min_length else "meta l4proto udp "
        rules = (
            "table netdev overrided_loss {\n"
            "  chain in {\n"
            f'    type filter hook ingress device "{dev}" priority 0; policy accept;\n'
            f"    {match}numgen random mod 1000 < {per_mille} drop\n"
            "  }\n"
            "}\n"
        )
        proc = self.run(["nft", "-f", "-"], check=False, input=rules)
        if proc.returncode != 0:
            raise NetnsError(f"nft: {proc.stderr.strip()}")
        size = f" of {min_length} bytes or more" if min_length else ""
        return f"nftables: drop {percent:g}% of UDP packets{size} on {dev}"

    def clear_netem(self, dev: str = "lo") -> None:
        """Remove the root qdisc again (no error if there is none)."""
        self.run(["tc", "qdisc", "del", "dev", dev, "root"], check=False)
