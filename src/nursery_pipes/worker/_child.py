"""The worker side of a supervised worker-process child (``ChildSpec.in_worker``).

trio-parallel runs :func:`run_child` in a fresh worker process for each run of
the child; :func:`retire_child` makes that process exit after the one job, so
a restarted child always gets a new process.

The supervisor talks to the worker through two FIFOs in a private directory
(``channel``; the parent holds both open read-write, so neither open below
blocks and neither side sees a spurious end of file):

- ``up``: the worker writes its pid once, before calling the function — the
  supervisor's sign that the child has started, and how it learns which
  process to signal (a trio-parallel worker inherits no file descriptor we
  could have used instead);
- ``down``: commands for the worker. One exists: ``exit <code>`` ends the
  process at once with ``os._exit(code)`` (fault injection for tests). A
  daemon thread reads them, so a command works whatever the function is
  doing (blocked in C included).

Light on purpose, like the rest of the worker side: no trio here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ._watchdog import arm_watchdog

__all__ = ["retire_child", "run_child"]


def retire_child() -> bool:
    """trio-parallel's ``retire`` hook: a worker runs one child run, then exits."""
    return True


def run_child(channel: str, supervisor_pid: int, fn: Callable[..., Any], args: Sequence[Any]) -> None:
    """Run ``fn(*args)`` as a supervised child in this worker process. Its result is dropped
    (a supervised child has no result: it runs until it ends)."""
    arm_watchdog(supervisor_pid, parent_is_forkserver=False)
    _announce(channel)
    fn(*args)


def _announce(channel: str) -> None:
    # O_NONBLOCK: if the supervisor has already given up on this run (closed its end), fail
    # here (ENXIO) instead of waiting forever for a reader.
    up = os.open(os.path.join(channel, "up"), os.O_WRONLY | os.O_NONBLOCK)
    try:
        down = os.open(os.path.join(channel, "down"), os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(down, True)
        thread = threading.Thread(target=_obey, args=(down,), name="nursery-pipes-child-control", daemon=True)
        thread.start()
        # Invariant: the pid is written only once the command reader runs, so a command
        # sent after the supervisor has seen the pid is always obeyed.
        os.write(up, f"{os.getpid()}\n".encode())
    finally:
        os.close(up)


def _obey(fd: int) -> None:
    with os.fdopen(fd, "rb") as commands:
        for line in commands:  # ends when the supervisor closes its end
            command, _, argument = line.decode().strip().partition(" ")
            if command == "exit":
                os._exit(int(argument))
