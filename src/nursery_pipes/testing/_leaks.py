"""Leak detection for tests: processes, threads and /dev/shm entries a test left behind.

Used by the ``no_leaks`` fixture of :mod:`nursery_pipes.testing.pytest_plugin`
(autouse in this project's own suite). Anything found is reported *and*
cleaned up, so one leaking test does not make the next ones fail too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..ipc._names import SHM_DIR, owner_pid

__all__ = ["Snapshot", "find_leaks", "snapshot"]

T = TypeVar("T")


@dataclass(frozen=True)
class Snapshot:
    shm: frozenset[str]
    fifo_dirs: frozenset[str]
    children: frozenset[int]
    threads: frozenset[threading.Thread]


def snapshot() -> Snapshot:
    return Snapshot(_shm_entries(), _fifo_dirs(), _children(), frozenset(threading.enumerate()))


def _shm_entries() -> frozenset[str]:
    try:
        return frozenset(e for e in os.listdir(SHM_DIR) if _mine(e))
    except FileNotFoundError:  # not Linux
        return frozenset()


def _fifo_dirs() -> frozenset[str]:
    tmp = tempfile.gettempdir()
    return frozenset(e for e in os.listdir(tmp) if owner_pid(e) == os.getpid())


def _mine(entry: str) -> bool:
    """nursery_pipes names carry the pid of the supervisor that owns them (workers name
    what they create after their supervisor too): only this process's entries count, so
    another test run on the same machine is never mistaken for a leak. Names that are
    not nursery_pipes names always count."""
    owner = owner_pid(entry)
    return owner is None or owner == os.getpid()


def _children() -> frozenset[int]:
    """Live (non-zombie) children of this process, except multiprocessing's helpers."""
    from multiprocessing import resource_tracker

    me = os.getpid()
    helpers = {getattr(resource_tracker._resource_tracker, "_pid", None)}
    helpers |= _forkserver_pid()
    kids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[1]) == me and fields[0] != b"Z" and int(entry) not in helpers:
            kids.add(int(entry))
    return frozenset(kids)


def _forkserver_pid() -> set[int | None]:
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    return {getattr(server, "_forkserver_pid", None)}


def _settle(check: Callable[[], frozenset[T] | set[T]], timeout: float) -> set[T]:
    """Processes and threads may need a moment to finish exiting."""
    deadline = time.monotonic() + timeout
    while True:
        value = set(check())
        if not value or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


def _suspect_thread(thread: threading.Thread) -> bool:
    # trio's thread cache parks idle daemon threads for a while: not a leak.
    # Our own threads are named "nursery-pipes…" and must never outlive a test.
    return not thread.daemon or thread.name.startswith("nursery-pipes")


def find_leaks(before: Snapshot, *, settle: float = 3.0, clean: bool = True) -> list[str]:
    """What appeared since ``before`` and is still there; cleaned up when ``clean``."""
    problems = []
    kids = _settle(lambda: _children() - before.children, settle)
    if kids:
        problems.append(f"leaked child processes: {sorted(kids)}")
        if clean:
            for pid in kids:
                _kill(pid)
    threads = _settle(
        lambda: {t for t in threading.enumerate() if _suspect_thread(t)} - before.threads, settle
    )
    if threads:
        problems.append(f"leaked threads: {sorted(t.name for t in threads)}")
    shm = sorted(_settle(lambda: _shm_entries() - before.shm, settle))
    if shm:
        problems.append(f"leaked /dev/shm entries: {shm}")
        if clean:
            for entry in shm:
                _unlink(os.path.join(SHM_DIR, entry))
    dirs = sorted(_fifo_dirs() - before.fifo_dirs)
    if dirs:
        problems.append(f"leaked FIFO directories: {dirs}")
        if clean:
            for entry in dirs:
                shutil.rmtree(os.path.join(tempfile.gettempdir(), entry), ignore_errors=True)
    return problems


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
