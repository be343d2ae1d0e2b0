"""Read-only TFTP server (RFC 1350, 2347, 2348, 2349, 7440) over a ``served.Namespace``."""

from overrided.tftp.server import TftpError, TftpServer

__all__ = ["TftpError", "TftpServer"]
