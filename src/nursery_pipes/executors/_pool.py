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
  refilled in the background after sessions take workers. A worker that dies
  while it warms up (OOM killer, a signal, a fork that fails) costs only
  warmth: the keeper logs it and tries again after a growing pause (0.1 s
  doubling to 5 s), and sessions meanwhile start their workers cold. It never
  takes the runtime, and with it every session, down.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from multiprocessing import spawn
from typing import Any, Literal

import trio
import trio_parallel

from ..worker import WorkerJob, retire_after_node, run_node, warm_up

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)

WARM_RETRY_FIRST_SECS = 0.1
WARM_RETRY_MAX_SECS = 5.0

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
        self.warm_failures = 0
        """Workers that died (or could not start) while warming up."""

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
        failed_passes = 0
        while True:
            self._refill = trio.Event()  # reset first: a request arriving mid-pass is not lost
            warmed: list[bool] = []
            async with trio.open_nursery() as nursery:
                for _ in range(self.warm_target):
                    nursery.start_soon(self._warm_one, warmed)
            if not all(warmed):  # try again soon, however long nobody asks for a refill
                failed_passes += 1
                await trio.sleep(min(WARM_RETRY_MAX_SECS, WARM_RETRY_FIRST_SECS * 2 ** (failed_passes - 1)))
                continue
            failed_passes = 0
            if not self._refill.is_set():
                self._warm.set()
            await self._refill.wait()

    async def _warm_one(self, warmed: list[bool]) -> None:
        try:
            pid = await self._ctx.run_sync(warm_up, kill_on_cancel=True, limiter=self.limiter)
        except (trio_parallel.BrokenWorkerError, OSError) as exc:
            self.warm_failures += 1
            warmed.append(False)
            log.warning(
                "warm pool: %s while warming up; sessions start their workers cold until the pool "
                "is refilled",
                _describe_death(exc),
            )
            return
        self.warmed_pids.add(pid)
        warmed.append(True)


def _describe_death(exc: BaseException) -> str:
    """``worker pid 123 exited with code 3`` / ``... was killed by SIGKILL`` when trio-parallel
    says which process died (its BrokenWorkerError carries it), else the error itself."""
    process = exc.args[1] if len(exc.args) > 1 else None
    pid, code = getattr(process, "pid", None), getattr(process, "exitcode", None)
    if pid is None or code is None:
        return f"a worker could not start ({exc!r})"
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    return f"worker pid {pid} {how}"
