"""Command lines of the real TFTP clients the tests drive (tftp-hpa, atftp, curl) on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path


def tftp_hpa(port: int, name: str, out: Path, mode: str = "octet") -> list[str]:
    """tftp-hpa's ``tftp`` fetching ``name`` into ``out`` (it asks for no options)."""
    return ["tftp", "127.0.0.1", str(port), "-m", mode, "-c", "get", name, str(out)]


def atftp(port: int, name: str, out: Path, blksize: int, window: int) -> list[str]:
    """atftp asking for ``blksize``, and ``windowsize`` above 1 (RFC 7440)."""
    opts = ["--option", f"blksize {blksize}"]
    if window > 1:
        opts += ["--option", f"windowsize {window}"]
    return ["atftp", *opts, "-g", "-r", name, "-l", str(out), "127.0.0.1", str(port)]


def curl(port: int, name: str, out: Path, blksize: int) -> list[str]:
    """curl's TFTP client asking for ``blksize``."""
    url = f"tftp://127.0.0.1:{port}/{name}"
    return ["curl", "-sS", "--tftp-blksize", str(blksize), "-o", str(out), url]
