"""Doorbells: named FIFOs that turn "a slot was posted" into a readable fd.

Why: the trio supervisor must wait on a file descriptor (``wait_readable``),
never block a thread in ``sem_wait`` or sleep-poll. Each ring may have a
"used" doorbell (waited on by an fd-waiting consumer) and a "free" doorbell
(waited on by an fd-waiting producer), FIFOs in the namespace's private 0700
directory.

Open order (a plain ``open`` of a FIFO blocks until the other end exists):

* the waiter opens ``O_RDWR | O_NONBLOCK``: never blocks, and because it is
  also a writer the fd never reports EOF/POLLHUP when ringers come and go;
* a ringer opens ``O_WRONLY | O_NONBLOCK`` lazily; ``ENXIO`` means no waiter
  has opened yet, and then there is nobody to wake: a waiter always tries the
  ring *after* opening its fd and *before* its first wait.

Ringing writes one byte; ``EAGAIN`` (pipe full) is ignored since a full pipe
is already readable, ``EPIPE`` (waiter gone) drops the fd for a later reopen.
The protocol that makes wake-ups impossible to lose is in ``_ring.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Final

__all__ = ["Bell", "clear", "open_sleeper", "open_waiter", "ring_once", "sleep_until_rung"]

_WAITER_FLAGS: Final = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
_RINGER_FLAGS: Final = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
_BYTE: Final = b"\x00"


def open_waiter(path: str) -> int:
    """Open the waiting end of doorbell ``path``; never blocks."""
    return os.open(path, _WAITER_FLAGS)


def open_sleeper(path: str) -> int:
    """A second, *blocking* reader of doorbell ``path``, for a sync waiter with no timeout:
    :func:`sleep_until_rung` sleeps and drains in one ``read`` (poll + read would be two).
    Open the waiting end (:func:`open_waiter`) first: it is also a writer, so this fd never
    sees end of file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: never blocks
    os.set_blocking(fd, True)
    return fd


def sleep_until_rung(fd: int) -> None:
    """Sleep (GIL released) until the doorbell rings; drains up to 4096 rings (the rest, if
    any, wakes the next sleep at once: harmless). EINTR is retried (PEP 475)."""
    os.read(fd, 4096)


def clear(fd: int) -> None:
    """Drain every pending ring from waiter ``fd`` (call after it was readable)."""
    with contextlib.suppress(BlockingIOError):
        while len(os.read(fd, 4096)) == 4096:
            pass


def _try_open_ringer(path: str) -> int:
    try:
        return os.open(path, _RINGER_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            return -1  # no waiter yet (it will try before waiting) / ring unlinked
        raise


def _write(fd: int) -> bool:
    """Ring once on ``fd``; False when the waiter is gone (EPIPE)."""
    try:
        os.write(fd, _BYTE)
    except BlockingIOError:
        pass  # pipe full: already readable, the waiter will wake
    except BrokenPipeError:
        return False
    return True


def ring_once(path: str) -> None:
    """Open, ring and close (for rare rings from third parties, e.g. abort)."""
    fd = _try_open_ringer(path)
    if fd >= 0:
        try:
            _write(fd)
        finally:
            os.close(fd)


class Bell:
    """The ringing end of one doorbell, opened lazily and cached."""

    __slots__ = ("_fd", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1

    def ring(self) -> None:
        if self._fd < 0:
            self._fd = _try_open_ringer(self.path)
            if self._fd < 0:
                return
        if not _write(self._fd):
            self.close()

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
