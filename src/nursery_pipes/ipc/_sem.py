"""Blocking semaphore waits that survive signals.

``posix_ipc.Semaphore.acquire`` releases the GIL while it waits, but raises
``SignalError`` when a signal interrupts ``sem_wait`` (EINTR). Python's own
handlers run as soon as we are back in bytecode, so a handler that raises
(KeyboardInterrupt) still propagates; every other interruption just resumes
the wait with the remaining timeout.
"""

from __future__ import annotations

import time

import posix_ipc

__all__ = ["acquire"]


def acquire(sem: posix_ipc.Semaphore, timeout: float | None) -> bool:
    """Wait for ``sem``; False if ``timeout`` seconds passed first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            sem.acquire(timeout)
        except posix_ipc.BusyError:
            return False
        except posix_ipc.SignalError:
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
            continue
        return True
