# The C lockstep loop of a TFTP read transfer (_lockstep.c).
STOP_PACKET: int
STOP_RECV: int
STOP_SEND: int
STOP_READ: int
MAX_RUN: int

def run(
    sock_fd: int,
    table: bytes,  # the view: native int64 rows (start, length, fd, file offset), from 0 to size
    buf: bytearray,
    pkt: bytearray,
    blksize: int,
    nblocks: int,
    size: int,
    sent: int,
    ahead: int,
    held: int,
    /,
) -> tuple[int, int, int, int, int, float]: ...
