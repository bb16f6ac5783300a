"""Resident memory and CPU time of a process, from ``/proc`` (Linux): for the Prometheus
collector and the Monitor service, which both report on the server's worker processes.

Plain synchronous reads of two small files per process; call them off the trio thread when
there are many (a thread, or prometheus-client's own HTTP thread).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcessUsage", "process_usage"]

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    rss_bytes: int
    cpu_secs: float
    """User + system CPU time the process has used so far."""


def process_usage(pid: int) -> ProcessUsage | None:
    """The process's memory and CPU time now; None if it is gone (or /proc cannot be read)."""
    try:
        # The name in field 2 may hold spaces and parentheses: split after its last ')'.
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except (OSError, IndexError):
        return None
    return ProcessUsage(int(statm[1]) * _PAGE, (int(stat[11]) + int(stat[12])) / _TICK)
