"""Fixtures for the ipc tests: a stricter leak check and fresh namespaces.

The project-wide ``no_leaks`` check (tests/conftest.py) already fails a test that
leaves child processes, threads, or /dev/shm entries and FIFO directories of this
process behind. The ipc tests also run processes that create namespaces of their
own, named after themselves: this adds the new entries of owners that died during
the test — a leak nobody would ever sweep — and sweeps them so they do not cascade
into the next test.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from nursery_pipes.ipc import Namespace, sweep_stale, unlink_namespace
from nursery_pipes.ipc._names import SHM_DIR, owner_pid


def _owners() -> dict[str, int]:
    """Every nursery_pipes /dev/shm entry and FIFO directory, with its owner's pid."""
    entries = [*os.listdir(SHM_DIR), *os.listdir(tempfile.gettempdir())]
    return {e: pid for e in entries if (pid := owner_pid(e)) is not None}


@pytest.fixture(autouse=True)
def ipc_leak_check() -> Iterator[None]:
    """Stricter than the project-wide ``no_leaks``, which counts only this process's
    names: also fails on namespaces of owners that died during the test (a worker or
    helper process that leaked)."""
    before = _owners()
    yield
    owners = {pid for entry, pid in _owners().items() if entry not in before} - {os.getpid()}
    leaked = sweep_stale(owners=owners)
    if leaked:
        pytest.fail(f"leaked /dev/shm entries or FIFO dirs of dead owners: {sorted(leaked)}")


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
