"""Peak memory of the calling process, for benchmark workers in either virtualenv (no imports
beyond the standard library)."""

from __future__ import annotations


def peak_rss_bytes() -> int:
    """This process's peak resident set (``VmHWM``). Not ``ru_maxrss``: that survives
    ``execve``, so a worker would report its parent's peak whenever that is higher."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")
