"""The leak checker behind ``no_leaks``: it knows nursery_pipes names only through ipc._names."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import posix_ipc
import pytest

from nursery_pipes.ipc import Namespace, unlink_namespace
from nursery_pipes.ipc._names import SHM_DIR, owner_pid
from nursery_pipes.testing._leaks import find_leaks, snapshot

TOKEN = "a1b2c3d4e5f6"


@pytest.fixture
def shm_names() -> Iterator[list[str]]:
    """POSIX shm names a test creates; unlinked after, whatever the test did."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_shared_memory(name)


def create_segment(name: str) -> None:
    posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=4096).close_fd()


def test_a_namespace_left_behind_is_reported_and_cleaned() -> None:
    before = snapshot()
    ns = Namespace.create()
    create_segment(ns.name("r0"))
    posix_ipc.Semaphore(ns.name("r0f"), posix_ipc.O_CREX).close()
    try:
        problems = find_leaks(before, settle=0)
        assert problems == [
            f"leaked /dev/shm entries: {[f'{ns.prefix}r0', f'sem.{ns.prefix}r0f']}",
            f"leaked FIFO directories: {[os.path.basename(ns.fifo_dir)]}",
        ]
        assert find_leaks(before, settle=0) == []  # and it cleaned them up
    finally:
        unlink_namespace(ns)


def test_another_owners_namespace_is_not_this_processes_leak(shm_names: list[str]) -> None:
    other = Namespace(os.getpid() + 1, TOKEN)  # only a name: nothing is sent to that pid
    before = snapshot()
    shm_names.append(other.name("r0"))
    create_segment(shm_names[-1])
    os.mkdir(other.fifo_dir, 0o700)
    try:
        assert owner_pid(f"{other.prefix}r0") == other.owner_pid
        assert find_leaks(before, settle=0, clean=False) == []
    finally:
        os.rmdir(other.fifo_dir)


def test_a_name_the_sweeper_would_never_remove_is_not_excused(shm_names: list[str]) -> None:
    """A name that only looks like another owner's (its suffix breaks the naming scheme) is
    not one: sweep_stale would never remove it, so the leak checker must not excuse it."""
    name = f"np.{os.getpid() + 1}.{TOKEN}.r0-x"
    assert owner_pid(name) is None
    before = snapshot()
    shm_names.append("/" + name)
    create_segment(shm_names[-1])
    assert find_leaks(before, settle=0) == [f"leaked /dev/shm entries: {[name]}"]
    assert not os.path.exists(os.path.join(SHM_DIR, name))


def test_names_that_are_not_ours_in_the_temp_dir_are_ignored() -> None:
    before = snapshot()
    path = tempfile.mkdtemp(prefix="np.not.ours.")
    try:
        assert owner_pid(os.path.basename(path)) is None
        assert find_leaks(before, settle=0, clean=False) == []
    finally:
        os.rmdir(path)
