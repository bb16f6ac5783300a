"""Names of shared-memory objects, and sweeping them away.

Every object of one session shares the prefix ``np.<owner_pid>.<token>.`` where
``token`` is ``secrets.token_hex(6)`` (unguessable, so another local user cannot
pre-create our names) and ``owner_pid`` is the supervisor process that created
the namespace::

    /np.1234.a1b2c3d4e5f6.r3          shm segment of ring 3
    /np.1234.a1b2c3d4e5f6.r3f         its "free slots" semaphore
    /np.1234.a1b2c3d4e5f6.r3u         its "used slots" semaphore
    /np.1234.a1b2c3d4e5f6.r3x0g2      external payload segment of slot 0, generation 2
    $TMPDIR/np.1234.a1b2c3d4e5f6/     private 0700 directory of the doorbell FIFOs

On Linux they appear in /dev/shm as ``np.…`` (segments) and ``sem.np.…``
(semaphores). Everything is created with mode 0o600.

Liveness of an owner (for :func:`sweep_stale`): the owner is dead when
``os.kill(pid, 0)`` fails with ESRCH. Against pid reuse, :meth:`Namespace.create`
also writes the owner's start time (``/proc/<pid>/stat`` field 22, in clock
ticks since boot) into ``<fifo dir>/owner``; a live pid whose start time differs
from the recorded one is a different process, so its namespaces are stale too.
Without the file (or without /proc) only the pid is checked: a reused pid then
keeps stale entries alive until that process dies — a leak, never a deletion of
live objects. Caveat: an owner in another pid namespace sharing /dev/shm looks
dead to us; the sweeper assumes one pid namespace per /dev/shm.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Final

import posix_ipc

from ._errors import NamespaceError
from ._ownership import seg_origin

__all__ = ["SHM_DIR", "Namespace", "owner_pid", "sweep_stale", "unlink_namespace"]

SHM_DIR: Final = "/dev/shm"
_TOKEN_RE: Final = r"[0-9a-f]{12}"
# /dev/shm entry: optional "sem." then np.<pid>.<token>.<suffix>
_SHM_ENTRY: Final = re.compile(rf"^(sem\.)?np\.([0-9]+)\.({_TOKEN_RE})\.([A-Za-z0-9_.]+)$")
_DIR_ENTRY: Final = re.compile(rf"^np\.([0-9]+)\.({_TOKEN_RE})$")
_SUFFIX: Final = re.compile(r"^[A-Za-z0-9_.]+$")
_OWNER_FILE: Final = "owner"


@dataclass(frozen=True)
class Namespace:
    """The naming scope of one session: owner pid + random token (picklable)."""

    owner_pid: int
    token: str
    fifo_root: str = field(default_factory=tempfile.gettempdir)

    def __post_init__(self) -> None:
        if not re.fullmatch(_TOKEN_RE, self.token) or self.owner_pid <= 0:
            raise NamespaceError(f"invalid namespace pid={self.owner_pid} token={self.token!r}")

    @classmethod
    def create(cls, fifo_root: str | None = None) -> Namespace:
        """A fresh namespace owned by this process, with its private FIFO directory."""
        ns = cls(os.getpid(), secrets.token_hex(6), fifo_root or tempfile.gettempdir())
        os.mkdir(ns.fifo_dir, 0o700)
        start = _start_time(ns.owner_pid)
        if start is not None:
            fd = os.open(os.path.join(ns.fifo_dir, _OWNER_FILE), os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{start}\n")
        return ns

    @property
    def prefix(self) -> str:
        """``np.<pid>.<token>.`` — the /dev/shm file-name prefix (without ``/``)."""
        return f"np.{self.owner_pid}.{self.token}."

    @property
    def fifo_dir(self) -> str:
        return os.path.join(self.fifo_root, f"np.{self.owner_pid}.{self.token}")

    def name(self, suffix: str) -> str:
        """The POSIX IPC name (leading ``/``) of object ``suffix`` in this namespace."""
        if not _SUFFIX.match(suffix):
            raise NamespaceError(f"invalid object suffix {suffix!r} in namespace {self.prefix}")
        return f"/{self.prefix}{suffix}"

    def seg_name(self, sid: int) -> str:
        """The name of external segment ``sid`` (``_ownership``): ``/…r<ring>x<slot>g<gen>``."""
        ring, slot, gen = seg_origin(sid)
        return f"/{self.prefix}r{ring}x{slot}g{gen}"

    def fifo_path(self, stem: str) -> str:
        return os.path.join(self.fifo_dir, stem)


def owner_pid(entry: str) -> int | None:
    """The owner's pid in a nursery_pipes name: a /dev/shm entry (``np.…``, ``sem.np.…``)
    or a FIFO directory (``np.<pid>.<token>``); None for any other name.

    The one place that knows the naming scheme (the test leak checker asks here too).

    >>> owner_pid("sem.np.1234.a1b2c3d4e5f6.r3f"), owner_pid("np.1234.a1b2c3d4e5f6")
    (1234, 1234)
    >>> owner_pid("np.1234.a1b2c3d4e5f6.r3/x") is None, owner_pid("psm_1234") is None
    (True, True)
    """
    if (shm := _SHM_ENTRY.match(entry)) is not None:
        return int(shm.group(2))
    if (directory := _DIR_ENTRY.match(entry)) is not None:
        return int(directory.group(1))
    return None


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parens: split after the last ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 overall; fields[0] is field 3
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to another user
    return True


def _unlink_shm_entry(entry: str) -> bool:
    """Unlink one /dev/shm entry by its POSIX name; True if this call removed it."""
    try:
        if entry.startswith("sem."):
            posix_ipc.unlink_semaphore("/" + entry[4:])
        else:
            posix_ipc.unlink_shared_memory("/" + entry)
    except posix_ipc.ExistentialError:
        return False  # raced with another unlinker: already gone
    return True


def _list_shm(shm_dir: str) -> list[str]:
    try:
        return os.listdir(shm_dir)
    except FileNotFoundError:
        return []


def unlink_namespace(ns: Namespace, shm_dir: str = SHM_DIR) -> list[str]:
    """Remove every object of ``ns`` — whoever created it — and its FIFO directory.

    Returns the removed /dev/shm entry names (and the directory path, if removed).
    Idempotent; safe to call while other processes still map the segments (their
    mappings stay valid until unmapped).
    """
    removed = []
    for entry in _list_shm(shm_dir):
        bare = entry[4:] if entry.startswith("sem.") else entry
        if bare.startswith(ns.prefix) and _SHM_ENTRY.match(entry) and _unlink_shm_entry(entry):
            removed.append(entry)
    if os.path.isdir(ns.fifo_dir):
        shutil.rmtree(ns.fifo_dir, ignore_errors=True)
        removed.append(ns.fifo_dir)
    return removed


def _recorded_start(fifo_dir: str) -> int | None:
    try:
        with open(os.path.join(fifo_dir, _OWNER_FILE)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _is_stale(pid: int, token: str, fifo_root: str) -> bool:
    if not _pid_alive(pid):
        return True
    recorded = _recorded_start(os.path.join(fifo_root, f"np.{pid}.{token}"))
    if recorded is None:
        return False
    current = _start_time(pid)
    return current is not None and current != recorded


def sweep_stale(
    *,
    owners: Collection[int] | None = None,
    shm_dir: str = SHM_DIR,
    fifo_root: str | None = None,
) -> list[str]:
    """Remove every namespace whose owner process is dead (or whose pid was reused).

    Looks at /dev/shm entries ``np.<pid>.<token>.*`` / ``sem.np.<pid>.<token>.*`` and
    FIFO directories ``$TMPDIR/np.<pid>.<token>``; never touches other names.
    ``owners`` restricts the sweep to those owner pids. Returns what was removed.
    """
    root = fifo_root or tempfile.gettempdir()
    found: set[tuple[int, str]] = set()
    for entry in _list_shm(shm_dir):
        m = _SHM_ENTRY.match(entry)
        if m:
            found.add((int(m.group(2)), m.group(3)))
    with contextlib.suppress(OSError):
        for entry in os.listdir(root):
            d = _DIR_ENTRY.match(entry)
            if d and os.path.isdir(os.path.join(root, entry)):
                found.add((int(d.group(1)), d.group(2)))
    removed: list[str] = []
    for pid, token in sorted(found):
        if owners is not None and pid not in owners:
            continue
        if _is_stale(pid, token, root):
            removed += unlink_namespace(Namespace(pid, token, root), shm_dir)
    return removed
