"""A worker must not outlive its supervisor.

Two layers, both armed at the start of a node job:

- ``PR_SET_PDEATHSIG(SIGKILL)`` when the worker's parent is multiprocessing's
  forkserver (a single-threaded process that exits when the supervisor does).
  Not with the spawn start method: there the parent is the *thread* that
  started the process — trio's thread cache retires idle threads, which
  would kill a healthy worker.
- A daemon thread that waits on a pidfd of the supervisor (``pidfd_open``, a
  file descriptor that becomes readable when that process exits) and then
  ends the worker with ``os._exit``. No polling: one blocking ``select``.

Shared-memory names are cleaned up separately: the supervisor unlinks its
namespace on every exit path, and the next start sweeps namespaces whose
owner pid is dead.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading

__all__ = ["arm_watchdog"]

PR_SET_PDEATHSIG = 1
EXIT_ORPHANED = 70  # EX_SOFTWARE: the supervisor is gone


def arm_watchdog(supervisor_pid: int, *, parent_is_forkserver: bool) -> None:
    if parent_is_forkserver and sys.platform == "linux":
        _pdeathsig()
    try:
        fd = os.pidfd_open(supervisor_pid)
    except ProcessLookupError:
        os._exit(EXIT_ORPHANED)  # already gone
    except (OSError, AttributeError):  # pragma: no cover - no pidfd (old kernel / not Linux)
        _poll_parent(supervisor_pid)
        return
    thread = threading.Thread(target=_wait_and_exit, args=(fd,), name="nursery-pipes-watchdog", daemon=True)
    thread.start()


def _pdeathsig() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(EXIT_ORPHANED)


def _wait_and_exit(fd: int) -> None:
    select.select([fd], [], [])
    os._exit(EXIT_ORPHANED)


def _poll_parent(supervisor_pid: int) -> None:  # pragma: no cover - fallback only
    def watch() -> None:
        import time

        while True:
            try:
                os.kill(supervisor_pid, 0)
            except ProcessLookupError:
                os._exit(EXIT_ORPHANED)
            time.sleep(0.5)

    threading.Thread(target=watch, name="nursery-pipes-watchdog", daemon=True).start()
