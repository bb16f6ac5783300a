"""Worker processes: trio-parallel contexts, the start method, and the optional warm pool.

- **Start method.** FORKSERVER with an explicit preload of the worker-side
  module and numpy (``multiprocessing.set_forkserver_preload``): each worker is
  a fork of an already-warm interpreter instead of a fresh one that re-imports
  everything (SPAWN, plus the parent's ``__main__``). Chosen by measurement:
  ``benchmarks/bench_lifecycle.py`` puts a cold node's start at ~21 ms with
  FORKSERVER against ~145 ms with SPAWN on the 2-vCPU dev VM. SPAWN stays available
  (``[multiprocess] worker_type = "spawn"``).
- **One job per worker.** Each node is one long job; ``retire`` makes a worker
  that ran a node exit afterwards, so no process state ever leaks from one
  session into another.
- **Capacity.** trio-parallel limits concurrent jobs with a CapacityLimiter
  (cpu_count by default): node jobs run for the whole session, so the
  runtime's limiter is sized by ``limits.max_processes`` instead, and the
  limit itself is enforced before spawning (ResourceLimitError).
- **No ``__main__`` re-import.** multiprocessing normally makes every spawn or
  forkserver child re-import the parent's ``__main__`` (slow, and a script
  without an ``if __name__ == "__main__"`` guard would run again in every
  worker). Node classes must live in importable modules (the plan rejects
  ``__main__`` ones for workers), so while a pool is open, trio-parallel
  worker processes are started without that step.
- **Warm pool.** With ``warm_pool = N``, N workers are started ahead of time
  by running a no-op job in each; they wait in trio-parallel's cache and a
  session's nodes take them instead of starting fresh ones. The pool is
  refilled in the background after sessions take workers.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from multiprocessing import spawn
from typing import Any, Literal

import trio
import trio_parallel

from ..worker import WorkerJob, retire_after_node, run_node, warm_up

__all__ = ["WorkerPool"]

PRELOAD = ["nursery_pipes.worker", "nursery_pipes.nodes.builtin", "numpy"]
# trio-parallel's name for its worker processes (not public API: pyproject.toml bounds
# trio-parallel for it, and test_workers_never_import_the_parents_main notices a change).
_WORKER_NAME = "trio-parallel worker process"
_preloaded = False
_pools_open = 0


def _skip_main_for_workers() -> None:
    original = spawn.get_preparation_data
    if getattr(original, "_nursery_pipes", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        if _pools_open and name.startswith(_WORKER_NAME):
            data.pop("init_main_from_name", None)
            data.pop("init_main_from_path", None)
        return data

    get_preparation_data._nursery_pipes = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


def _configure_forkserver() -> None:
    global _preloaded
    if not _preloaded:
        # Must happen before the forkserver starts; harmless if it already runs.
        multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
        _preloaded = True


class WorkerPool:
    """Starts node workers in one trio-parallel context; optionally keeps some pre-started."""

    def __init__(
        self, *, worker_type: Literal["forkserver", "spawn"], max_processes: int, warm: int = 0
    ) -> None:
        self.worker_type = worker_type
        self.warm_target = warm
        self.limiter = trio.CapacityLimiter(max(1, max_processes) + max(0, warm))
        self._ctx: Any = None
        self._refill = trio.Event()
        self._warm = trio.Event()
        self.warmed_pids: set[int] = set()
        """Workers started ahead of time (for tests and statistics)."""

    @property
    def parent_is_forkserver(self) -> bool:
        return self.worker_type == "forkserver"

    @asynccontextmanager
    async def open(self) -> AsyncIterator[WorkerPool]:
        global _pools_open
        if self.worker_type == "forkserver":
            _configure_forkserver()
        _skip_main_for_workers()
        _pools_open += 1
        try:
            async with self._context():
                yield self
        finally:
            _pools_open -= 1

    @asynccontextmanager
    async def _context(self) -> AsyncIterator[None]:
        kind = (
            trio_parallel.WorkerType.FORKSERVER
            if self.worker_type == "forkserver"
            else trio_parallel.WorkerType.SPAWN
        )
        async with trio_parallel.open_worker_context(
            idle_timeout=math.inf, retire=retire_after_node, grace_period=5.0, worker_type=kind
        ) as ctx:
            self._ctx = ctx
            try:
                if self.warm_target:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._keep_warm)
                        yield
                        nursery.cancel_scope.cancel()
                else:
                    yield
            finally:
                self._ctx = None

    async def run(self, job: WorkerJob) -> dict[str, Any]:
        """Run one node job in a worker; cancelling kills the worker (SIGKILL)."""
        assert self._ctx is not None, "WorkerPool.open() first"
        result: dict[str, Any] = await self._ctx.run_sync(
            run_node, job, kill_on_cancel=True, limiter=self.limiter
        )
        return result

    def refill_soon(self) -> None:
        """A job took a worker (it reported in): top the warm pool up again."""
        if self.warm_target:
            if self._warm.is_set():
                self._warm = trio.Event()
            self._refill.set()

    def idle_workers(self) -> int:
        return int(self._ctx.statistics().idle_workers) if self._ctx is not None else 0

    async def wait_warm(self) -> None:
        """Wait until the warm pool is full (returns at once without a pool)."""
        if self.warm_target:
            await self._warm.wait()

    async def _keep_warm(self) -> None:
        # trio-parallel's cache is LIFO and prunes dead workers lazily, so its idle count can
        # include workers that retired after running a node. Running warm_target warm-up jobs
        # *at once* leaves exactly warm_target live idle workers: each job takes a cached worker
        # if one is alive, else starts a new one.
        while True:
            self._refill = trio.Event()  # reset first: a request arriving mid-pass is not lost
            async with trio.open_nursery() as nursery:
                for _ in range(self.warm_target):
                    nursery.start_soon(self._warm_one)
            if not self._refill.is_set():
                self._warm.set()
            await self._refill.wait()

    async def _warm_one(self) -> None:
        pid = await self._ctx.run_sync(warm_up, kill_on_cancel=True, limiter=self.limiter)
        self.warmed_pids.add(pid)
