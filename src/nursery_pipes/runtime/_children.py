"""Worker-process children: a synchronous function supervised like any other child.

``ChildSpec.in_worker(name, fn, *args)`` runs ``fn(*args)`` in a worker process
(trio-parallel). Each run of the child gets a **fresh process**: the worker
context is the run's own and retires its worker after the one job, so nothing
a crashed run left in memory reaches the next one. How a run ends, as the
supervisor sees it:

==========================  ==================================================
in the worker               the child's run
==========================  ==================================================
``fn`` returns              ends normally (a permanent child is restarted)
``fn`` raises ``exc``       fails with ``exc`` (pickled back by trio-parallel)
``os._exit(3)``, a signal,  fails with :class:`WorkerCrashed` (``exitcode=3``,
SIGKILL, a segfault         or ``signal=9``…), the pid named in the message
==========================  ==================================================

**Started** means the function is running in its worker: the run calls
``task_status.started(worker)`` with the :class:`WorkerProcess` once the
worker has announced itself (its pid), so a supervisor reports ready only
when every worker child really runs.

**Stopping** (a restart, an escalation, cancellation from outside) kills the
worker with SIGKILL (``kill_on_cancel``) and waits for it: a synchronous
function cannot be asked to stop, and no process may outlive its run. Cleanup
that must happen belongs in the parent, not in the worker.

**Traps handled here** (see the product brief): trio-parallel caps concurrent
jobs at ``cpu_count()`` unless given a limiter — a child's job lasts its whole
life, so each run brings its own limiter of one; a worker inherits no file
descriptor, so ``fn`` and ``args`` are pickled (``fn`` must be importable: a
module-level function, not a lambda or a function defined in a function) and
the supervisor reaches the worker through FIFOs named by path
(``worker/_child.py``); workers start with the *spawn* method (trio-parallel's
default), which re-imports the program's ``__main__`` — keep it thin, behind
``if __name__ == "__main__":``. A worker whose supervisor dies ends itself
(``worker/_watchdog.py``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal as _signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
import trio_parallel

from .._errors import NurseryPipesError, describe_exit
from ..ipc import Namespace
from ..worker import retire_child, run_child

__all__ = ["WorkerCrashed", "WorkerProcess", "worker_run"]

# Seconds trio-parallel waits, when a run's context closes, for a worker that has returned
# to exit by itself (it retires at once) before it kills it.
_SHUTDOWN_GRACE = 5.0


class WorkerCrashed(NurseryPipesError):
    """A worker-process child's process died: it exited, or a signal killed it.

    Exactly one of ``exitcode`` / ``signal`` is set; ``pid`` is the process that died.
    """

    def __init__(self, child: str, pid: int | None, *, exitcode: int | None, signal: int | None) -> None:
        self.child = child
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal
        process = f"worker process {pid}" if pid is not None else "worker process"
        super().__init__(f"{child}: {process} {describe_exit(exitcode, signal)}")


class WorkerProcess:
    """The process running one run of a worker child; what its ``task_status.started()`` gets.

    Signals go through a pidfd opened while the process was known to be alive, so a
    pid reused after the worker died can never receive them. Once the run has ended
    every method is a no-op.
    """

    def __init__(self, pid: int, control: _Control) -> None:
        self.pid = pid
        self._control = control
        self._pidfd: int | None
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # it died, and was reaped, right after announcing itself
            self._pidfd = None

    @property
    def alive(self) -> bool:
        """The run has not ended (the process may be dying right now)."""
        return self._pidfd is not None

    def kill(self, signum: int = _signal.SIGKILL) -> None:
        """Send ``signum`` (SIGKILL by default) to the worker process."""
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):  # already gone: the run is about to notice
                _signal.pidfd_send_signal(self._pidfd, signum)

    def inject_exit(self, code: int = 1) -> None:
        """Make the worker process end at once with ``os._exit(code)`` — no cleanup, no
        exception: what a crashing C extension or a stray ``sys.exit`` in a library looks
        like to the supervisor. For fault injection in tests."""
        if self._pidfd is not None:
            self._control.send(f"exit {int(code)}\n")

    def _ended(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def __repr__(self) -> str:
        return f"<WorkerProcess pid={self.pid}{'' if self.alive else ' ended'}>"


class _Control:
    """The supervisor's ends of one run's FIFOs (see ``worker/_child.py``).

    Both are opened O_RDWR (Linux): the open never blocks, a read never sees end of file
    while we hold the FIFO, and a command written before the worker opens ``down`` waits
    in the pipe for it. The directory is named like a session's namespace (owner pid +
    random token), so a crashed supervisor's leftovers are swept by the next start."""

    def __init__(self) -> None:
        self._namespace = Namespace.create()
        self.path = self._namespace.fifo_dir
        self._up = self._down = -1
        try:
            for stem in ("up", "down"):
                os.mkfifo(os.path.join(self.path, stem), 0o600)
            flags = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
            self._up = os.open(os.path.join(self.path, "up"), flags)
            self._down = os.open(os.path.join(self.path, "down"), flags)
        except BaseException:
            self.close()
            raise

    async def receive_pid(self) -> int:
        line = b""
        while not line.endswith(b"\n"):
            await trio.lowlevel.wait_readable(self._up)
            try:
                line += os.read(self._up, 32)
            except BlockingIOError:  # pragma: no cover - woken without data
                continue
        return int(line)

    def send(self, command: str) -> None:
        os.write(self._down, command.encode())

    def close(self) -> None:
        # Only called once receive_pid() is no longer waiting (its task has ended).
        for fd in (self._up, self._down):
            if fd >= 0:
                os.close(fd)
        self._up = self._down = -1
        shutil.rmtree(self.path, ignore_errors=True)


def worker_run(
    name: str, fn: Callable[..., object], args: Sequence[Any]
) -> Callable[[trio.TaskStatus[Any]], Awaitable[None]]:
    """A child's ``run``: each call runs ``fn(*args)`` in a fresh worker process.

    ``fn`` is checked now — a worker gets it by reference (module and name) — so a lambda
    or a function defined inside another is refused here, naming the child, instead of
    failing every run later."""
    try:
        pickle.dumps(fn)
    except Exception as exc:
        raise TypeError(
            f"child {name!r}: {fn!r} cannot be sent to a worker process ({exc}); "
            "define it at the top level of an importable module"
        ) from exc

    async def run(task_status: trio.TaskStatus[Any]) -> None:
        control = _Control()
        try:
            await _run_once(name, fn, tuple(args), control, task_status)
        finally:
            control.close()

    return run


async def _run_once(
    name: str,
    fn: Callable[..., object],
    args: tuple[Any, ...],
    control: _Control,
    task_status: trio.TaskStatus[Any],
) -> None:
    worker: list[WorkerProcess] = []

    async def announce() -> None:
        worker.append(WorkerProcess(await control.receive_pid(), control))
        task_status.started(worker[0])

    error: Exception | None = None
    try:
        async with (
            trio_parallel.open_worker_context(retire=retire_child, grace_period=_SHUTDOWN_GRACE) as context,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(announce)
            try:
                await context.run_sync(
                    run_child,
                    control.path,
                    os.getpid(),
                    fn,
                    args,
                    kill_on_cancel=True,
                    limiter=trio.CapacityLimiter(1),
                )
            except trio_parallel.BrokenWorkerError as exc:
                error = _crashed(name, exc, worker)
            except Exception as exc:  # fn's own exception, unpickled
                error = exc
            nursery.cancel_scope.cancel()
    finally:
        if worker:
            worker[0]._ended()
    if error is not None:
        raise error


def _crashed(name: str, exc: trio_parallel.BrokenWorkerError, worker: list[WorkerProcess]) -> Exception:
    """trio-parallel's error, translated: which process died, and how."""
    proc = exc.args[-1] if exc.args else None
    code = getattr(proc, "exitcode", None)
    pid = getattr(proc, "pid", None) or (worker[0].pid if worker else None)
    if not isinstance(code, int):  # pragma: no cover - trio-parallel always passes the process
        crashed = WorkerCrashed(name, pid, exitcode=None, signal=None)
    elif code < 0:
        crashed = WorkerCrashed(name, pid, exitcode=None, signal=-code)
    else:
        crashed = WorkerCrashed(name, pid, exitcode=code, signal=None)
    crashed.__cause__ = exc
    return crashed
