"""Fixtures for the ipc tests: leak detection and fresh namespaces.

Every test is checked for leaks: new /dev/shm entries ``np.*``/``sem.np.*``
owned by this process (or by a process that died during the test), new FIFO
directories ``$TMPDIR/np.*`` of such owners, live child processes and
non-daemon threads. A leak fails the test and is cleaned up so it does not
cascade into the next one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from pathlib import Path
from typing import TypeVar

import pytest

from nursery_pipes.ipc import Namespace, unlink_namespace
from nursery_pipes.ipc._names import SHM_DIR, sweep_stale

T = TypeVar("T")
_ENTRY = re.compile(r"^(?:sem\.)?np\.([0-9]+)\.[0-9a-f]{12}(?:\.|$)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _entries() -> set[str]:
    shm = {f"shm:{e}" for e in os.listdir(SHM_DIR) if _ENTRY.match(e)}
    tmp = tempfile.gettempdir()
    dirs = {f"dir:{e}" for e in os.listdir(tmp) if _ENTRY.match(e)}
    return shm | dirs


def _children() -> set[int]:
    me = os.getpid()
    # multiprocessing's spawn start method keeps one resource tracker for the session.
    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    kids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[1]) == me and fields[0] != b"Z" and int(entry) != tracker:
            kids.add(int(entry))
    return kids


def _ours(entry: str) -> bool:
    m = _ENTRY.match(entry.split(":", 1)[1])
    assert m is not None
    pid = int(m.group(1))
    return pid == os.getpid() or not _alive(pid)


def _settle(check: Callable[[], set[T]], timeout: float = 3.0) -> set[T]:
    """Children and threads may need a moment to finish exiting."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if not value or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def ipc_leak_check() -> Iterator[None]:
    """Stricter than the project-wide ``no_leaks``: also counts namespaces of owners
    that died during the test (a worker or helper process that leaked)."""
    shm_before = _entries()
    kids_before = _children()
    threads_before = set(threading.enumerate())
    yield
    leaked = sorted(e for e in _entries() - shm_before if _ours(e))
    kids = _settle(lambda: _children() - kids_before)
    threads = _settle(lambda: {t for t in threading.enumerate() if not t.daemon} - threads_before)
    problems = []
    if leaked:
        problems.append(f"leaked /dev/shm entries or FIFO dirs: {leaked}")
        _cleanup(leaked)
    if kids:
        problems.append(f"leaked child processes: {sorted(kids)}")
        for pid in kids:  # ours: spawned by this test
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    if threads:
        problems.append(f"leaked threads: {threads}")
    if problems:
        pytest.fail("; ".join(problems))


def _cleanup(leaked: list[str]) -> None:
    for entry in leaked:
        m = re.match(r"^(?:sem\.)?np\.([0-9]+)\.([0-9a-f]{12})", entry.split(":", 1)[1])
        assert m is not None
        pid, token = int(m.group(1)), m.group(2)
        if pid == os.getpid():
            unlink_namespace(Namespace(pid, token))
        else:
            sweep_stale(owners={pid})


@pytest.fixture
def ns() -> Iterator[Namespace]:
    """A fresh namespace; fails if a test leaves objects in it besides its directory."""
    namespace = Namespace.create()
    yield namespace
    fifos = []
    if os.path.isdir(namespace.fifo_dir):
        fifos = sorted(set(os.listdir(namespace.fifo_dir)) - {"owner"})
    removed = unlink_namespace(namespace)
    leftovers = [r for r in removed if r != namespace.fifo_dir] + fifos
    if leftovers:
        pytest.fail(f"namespace {namespace.prefix} left behind: {leftovers}")
