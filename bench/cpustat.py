"""How much of the machine a benchmark really had: CPU time stolen by the host, and others' load.

On a virtual machine the host may run other guests on the same cores; the guest then sees
its processes take longer with nothing wrong in them ("steal" in /proc/stat). Benchmarks
print the share of steal over their run so a figure measured on a busy host is recognisable.
"""

from __future__ import annotations

from pathlib import Path

# Fields of the "cpu" line of /proc/stat (proc(5)), in USER_HZ ticks.
_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def snapshot() -> dict[str, int]:
    """The machine's summed CPU times so far."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    return dict(zip(_FIELDS, (int(v) for v in first[1 : 1 + len(_FIELDS)]), strict=True))


def report(before: dict[str, int]) -> str:
    """A line with the shares of busy, idle and stolen time since ``before``."""
    after = snapshot()
    delta = {k: after[k] - before[k] for k in _FIELDS}
    total = sum(delta.values()) or 1
    idle = delta["idle"] + delta["iowait"]
    steal = delta["steal"]
    busy = total - idle - steal
    return (
        f"cpu over the run: busy {busy / total:.0%}, idle {idle / total:.0%},"
        f" stolen by the host {steal / total:.0%}"
    )
