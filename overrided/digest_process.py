"""The program of the store's hash process (``store.HashProcess``), run as a script.

It reads one hex-encoded file path per line and answers each with a line: the sha256 of the
file's bytes in hex, or ``! <errno> <message>``. It imports nothing but ``hashlib``, ``signal``
and ``sys`` (``python -I -S`` starts it in 20 ms), and ends when its input does.
"""

import hashlib
import signal
import sys


def main() -> None:
    """Answer paths until the end of the input."""
    # Ctrl-C in a terminal reaches the whole process group: the service stops, and this process
    # with it when its input ends, without a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    buf = bytearray(1 << 20)  # 1 MiB: the chunk stays in the CPU's cache between read and hash
    view = memoryview(buf)
    for line in sys.stdin.buffer:
        try:
            h = hashlib.sha256()
            with open(bytes.fromhex(line.decode().strip()), "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    h.update(view[:n])
            answer = h.hexdigest()
        except OSError as err:
            answer = f"! {err.errno or 0} {err.strerror or err}"
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
