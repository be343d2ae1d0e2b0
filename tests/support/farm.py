"""A board farm in network namespaces: an artifact store and labs on one bridge.

``Farm`` makes a namespace for the artifact store, holding a bridge with 192.0.2.1/24, and one
namespace per lab, joined to the bridge by a veth pair (the lab's end is ``eth0``, 192.0.2.1x/24).
``LabServed`` is the real ``overrided serve`` inside a lab's namespace, talked to with curl
from inside it (the host cannot reach the namespace's loopback).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.support.netns import Netns
from tests.support.serve import NsServed

STORE_IP = "192.0.2.1"


class Farm:
    """The store's namespace and ``labs`` lab namespaces on a bridge; a context manager."""

    def __init__(self, labs: int) -> None:
        self.store = Netns(prefix="ovf")
        self.labs = [Netns(prefix="ovf") for _ in range(labs)]

    def lab_ip(self, index: int) -> str:
        """The address of lab ``index`` (0-based)."""
        return f"192.0.2.{11 + index}"

    def __enter__(self) -> Farm:
        try:
            self.store.create()
            self.store.ip("link", "add", "br0", "type", "bridge")
            self.store.ip("addr", "add", f"{STORE_IP}/24", "dev", "br0")
            self.store.ip("link", "set", "br0", "up")
            for i, lab in enumerate(self.labs):
                lab.create()
                port = f"lab{i}"
                # Both ends are made in their namespaces: no name ever lands on the host.
                lab.ip(
                    "link", "add", "eth0", "type", "veth", "peer", "name", port,
                    "netns", self.store.name,
                )  # fmt: skip
                self.store.ip("link", "set", port, "master", "br0")
                self.store.ip("link", "set", port, "up")
                lab.ip("addr", "add", f"{self.lab_ip(i)}/24", "dev", "eth0")
                lab.ip("link", "set", "eth0", "up")
        except Exception:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Delete every namespace (their veth pairs and the bridge go with them)."""
        for ns in [*self.labs, self.store]:
            ns.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


class LabServed(NsServed):
    """``overrided serve`` inside a lab's namespace, TFTP and HTTP on its loopback."""

    def __init__(self, root: Path, ns: Netns, *, boards: Path, extra: list[str]) -> None:
        super().__init__(root, ns, boards=boards, extra=extra)
        self.tftp_port = 6969
        self.http_port = 8080

    def put_build(self, build: str, files: list[dict[str, str]]) -> tuple[int, Any]:
        """``PUT /api/builds/<build>`` of a build by URL: (status, JSON answer)."""
        status, body = self.curl(
            "-X", "PUT",
            "-H", f"Authorization: Bearer {self.token}",
            "-H", "Content-Type: application/json",
            "--data-binary", json.dumps({"files": files}),
            f"{self.http_base}/api/builds/{build}",
        )  # fmt: skip
        return status, json.loads(body)

    def tftp_get(self, name: str, dest: Path | None = None) -> bytes:
        """Fetch ``name`` with tftp-hpa inside the namespace."""
        dest = dest or self.root / "fetched" / name.replace("/", "_")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        argv = ["tftp", "127.0.0.1", str(self.tftp_port), "-m", "binary", "-c", "get", name]
        proc = self.ns.run([*argv, str(dest)], check=False, stdin=subprocess.DEVNULL)
        if not dest.exists() or "Error code" in proc.stdout + proc.stderr:
            raise FileNotFoundError(f"tftp get {name}: {proc.stdout}{proc.stderr}")
        return dest.read_bytes()
