"""Transfers over a lossy link: server and real clients in a network namespace of their own.

The namespace's loopback drops 2% of DATA packets and doubles 1% of the UDP packets with an
nftables ingress rule, or, where nft is missing, ``tc netem`` (which drops any packet and also
reorders); the test says which it used. Every file must arrive byte for byte.

The nftables rule spares the option exchange (OACK, and the ACK of block 0): atftp aborts on a
second OACK ("unexpected OACK"), and every server has to send one again when ACK 0 is lost or
the network doubles the OACK, so that would test atftp rather than us. Every DATA packet and
every later ACK stays lossy; the protocol tests cover OACK retransmission on their own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import Netns, NetnsError

pytestmark = pytest.mark.netns

NETEM = "loss 2% duplicate 1% reorder 5% 50% delay 1ms"
# Loss and duplication as NETEM; @th,64 is the TFTP opcode (after the 8-byte UDP header): 3 is
# DATA, 6 is OACK, 00 04 00 00 is the ACK of block 0. Only DATA is dropped: to the server a lost
# ACK and a lost DATA look the same (no ACK comes, it resends), while atftp at window 1 stops
# answering for good once both its ACK and its one extra ACK for a block are lost.
NFT_IMPAIR = """
table netdev impair {
  chain in {
    type filter hook ingress device "lo" priority 0; policy accept;
    meta l4proto udp @th,64,16 == 3 numgen random mod 1000 < 20 drop
    meta l4proto udp @th,64,16 != 6 @th,64,32 != 0x00040000 numgen random mod 1000 < 10 dup to "lo"
  }
}
"""
SIZE = 256 * 1024
# curl asks for timeout 6, so each loss it suffers costs up to 6 s (RFC 2349): a smaller file.
CURL_SIZE = 96 * 1024
REPO = Path(__file__).resolve().parent.parent


def impair(ns: Netns) -> str:
    """Make the namespace's loopback lossy; return how (for failure messages)."""
    if shutil.which("nft") is not None:
        ns.run(["nft", "-f", "-"], input=NFT_IMPAIR)
        return "nftables: 2% of DATA dropped, 1% of UDP after the option exchange doubled"
    try:
        ns.netem(NETEM)
    except NetnsError as err:
        pytest.skip(f"no nft to drop packets and no netem on this kernel ({err})")
    return f"netem {NETEM}"


@pytest.fixture(scope="module")
def lossy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Netns, Path, str]]:
    root = tmp_path_factory.mktemp("lossy")
    (root / "file").write_bytes(os.urandom(SIZE))
    (root / "small").write_bytes(os.urandom(CURL_SIZE))
    ns = Netns(prefix="ovd-loss")
    try:
        ns.create()
    except (NetnsError, OSError) as err:
        pytest.skip(f"network namespaces are not allowed here: {err}")
    server = None
    try:
        how = impair(ns)
        server = ns.popen(
            [sys.executable, "-m", "overrided", "tftp", "serve", str(root), "--port", "69"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert server.stderr is not None
        line = server.stderr.readline()
        assert "listening" in line, line
        yield ns, root, how
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        ns.close()


CLIENTS = {
    "curl-window1": lambda out: [
        "curl", "-sS", "--tftp-blksize", "1432", "-o", out, "tftp://127.0.0.1/small",
    ],
    "atftp-window1": lambda out: [
        "atftp", "--option", "blksize 1432", "-g", "-r", "file", "-l", out, "127.0.0.1",
    ],
    "atftp-window16": lambda out: [
        "atftp", "--option", "blksize 1432", "--option", "windowsize 16",
        "-g", "-r", "file", "-l", out, "127.0.0.1",
    ],
    "tftp-hpa-window1": lambda out: ["tftp", "127.0.0.1", "-m", "octet", "-c", "get", "file", out],
}  # fmt: skip


@pytest.mark.parametrize("client", list(CLIENTS))
def test_lossy_link_completes_byte_exact(
    lossy: tuple[Netns, Path, str], tmp_path: Path, client: str
) -> None:
    ns, root, how = lossy
    out = tmp_path / "got"
    started = time.monotonic()
    proc = ns.run(CLIENTS[client](str(out)), check=False, timeout=240)
    assert proc.returncode == 0, f"{client} over {how}: {proc.stderr}"
    name = "small" if client.startswith("curl") else "file"
    assert out.read_bytes() == (root / name).read_bytes(), f"{client} over {how}"
    print(f"{client}: {name} over {how} in {time.monotonic() - started:.1f}s")
