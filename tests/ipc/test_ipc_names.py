"""Namespaces, unlinking and sweeping stale objects (real processes)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import stat

import posix_ipc
import pytest
from ipc_workers import make_entries_and_die, produce_external_and_exit

from nursery_pipes.ipc import (
    Namespace,
    NamespaceError,
    Ring,
    RingSpec,
    sweep_stale,
    unlink_namespace,
)

SPAWN = multiprocessing.get_context("spawn")


def _shm(ns: Namespace) -> list[str]:
    return sorted(e for e in os.listdir("/dev/shm") if ns.prefix in e)


def test_namespace_format(ns: Namespace) -> None:
    assert ns.owner_pid == os.getpid()
    assert re.fullmatch(r"np\.[0-9]+\.[0-9a-f]{12}\.", ns.prefix)
    assert ns.name("r3") == f"/np.{os.getpid()}.{ns.token}.r3"
    assert ns.name("r3x0g1").endswith(".r3x0g1")
    mode = os.stat(ns.fifo_dir).st_mode
    assert stat.S_ISDIR(mode)
    assert stat.S_IMODE(mode) == 0o700
    assert pickle.loads(pickle.dumps(ns)) == ns


def test_namespace_tokens_are_unique_and_validated(ns: Namespace) -> None:
    other = Namespace.create()
    try:
        assert other.token != ns.token
    finally:
        unlink_namespace(other)
    with pytest.raises(NamespaceError):
        Namespace(os.getpid(), "../etc")
    with pytest.raises(NamespaceError):
        ns.name("a/b")


def test_objects_are_private(ns: Namespace) -> None:
    with Ring.create(RingSpec(ns, 0, 2, 64, async_consumer=True)) as ring:
        shm = os.stat(f"/dev/shm/{ring.name[1:]}")
        sem = os.stat(f"/dev/shm/sem.{ring.name[1:]}u")
        fifo = os.stat(ring.spec.used_doorbell or "")
        assert stat.S_IMODE(shm.st_mode) == 0o600
        assert stat.S_IMODE(sem.st_mode) == 0o600
        assert stat.S_ISFIFO(fifo.st_mode)
        assert stat.S_IMODE(fifo.st_mode) == 0o600


def test_unlink_namespace_removes_entries_of_other_processes() -> None:
    ns = Namespace.create()
    spec = RingSpec(ns, 4, 2, 64, async_consumer=True, async_producer=True)
    ring = Ring.create(spec)
    child = SPAWN.Process(target=produce_external_and_exit, args=(spec,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert f"{ns.prefix}r4x0g1" in _shm(ns)  # made by the child
    bystander = Namespace.create()
    try:
        with Ring.create(RingSpec(bystander, 4, 1, 64)):
            removed = unlink_namespace(ns)
            assert set(removed) == {
                f"{ns.prefix}r4", f"{ns.prefix}r4x0g1", f"sem.{ns.prefix}r4f",
                f"sem.{ns.prefix}r4u", ns.fifo_dir,
            }  # fmt: skip
            assert _shm(ns) == []
            assert not os.path.exists(ns.fifo_dir)
            assert len(_shm(bystander)) == 3  # untouched
            assert unlink_namespace(ns) == []  # idempotent
    finally:
        ring.close()  # owner close after unlink: nothing left to unlink, no error
        unlink_namespace(bystander)


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_sweep_removes_namespaces_of_dead_owners(how: str) -> None:
    parent_end, child_end = SPAWN.Pipe()
    child = SPAWN.Process(target=make_entries_and_die, args=(child_end, how))
    child.start()
    child_end.close()
    assert parent_end.poll(30), "child did not report"
    pid, token = parent_end.recv()
    parent_end.close()
    dead = Namespace(pid, token)
    live = Namespace.create()
    try:
        with Ring.create(RingSpec(live, 0, 1, 64)):
            if how == "kill":
                assert sweep_stale(owners={pid, os.getpid()}) == []  # still alive
                child.kill()
            child.join(30)
            assert len(_shm(dead)) == 4  # ring, 2 semaphores, external segment
            removed = sweep_stale(owners={pid, os.getpid()})
            assert sorted(removed) == sorted([*_shm_names(dead), dead.fifo_dir])
            assert _shm(dead) == []
            assert not os.path.exists(dead.fifo_dir)
            assert len(_shm(live)) == 3
            assert os.path.isdir(live.fifo_dir)
    finally:
        unlink_namespace(live)
        unlink_namespace(dead)


def _shm_names(ns: Namespace) -> list[str]:
    return [f"{ns.prefix}r0", f"{ns.prefix}r0x0g1", f"sem.{ns.prefix}r0f", f"sem.{ns.prefix}r0u"]


def test_sweep_detects_pid_reuse_by_start_time(ns: Namespace) -> None:
    # A namespace "owned" by our live pid but recorded with another start time:
    # the recorded owner is gone and our pid was reused.
    reused = Namespace(os.getpid(), "0123456789ab")
    os.mkdir(reused.fifo_dir, 0o700)
    with open(os.path.join(reused.fifo_dir, "owner"), "w") as f:
        f.write("1\n")
    seg = posix_ipc.SharedMemory(reused.name("r0"), posix_ipc.O_CREX, mode=0o600, size=64)
    seg.close_fd()
    try:
        removed = sweep_stale(owners={os.getpid()})
        assert sorted(removed) == [reused.fifo_dir, f"{reused.prefix}r0"]
        assert os.path.isdir(ns.fifo_dir)  # ours: correct start time, untouched
    finally:
        unlink_namespace(reused)


def test_sweep_never_touches_foreign_names() -> None:
    child = SPAWN.Process(target=os.getpid)
    child.start()
    child.join(30)
    dead = child.pid
    assert dead is not None
    foreign = [f"/np.{dead}.ABCDEF012345.r0", f"/np.{dead}.0123.r0", f"/npx.{dead}.0123456789ab.r0"]
    for name in foreign:
        posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=64).close_fd()
    try:
        assert sweep_stale(owners={dead}) == []
        assert all(os.path.exists(f"/dev/shm{name}") for name in foreign)
    finally:
        for name in foreign:
            posix_ipc.unlink_shared_memory(name)
