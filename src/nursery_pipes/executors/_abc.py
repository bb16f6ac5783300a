"""What an executor is: the one seam between a session and whatever runs its nodes.

An executor is a class registered under a name (built-ins here; third-party
ones through the ``nursery_pipes.executors`` entry-point group, see
:mod:`._registry`). A runtime makes one instance of each, from its config.
The session and the planner only ever ask an executor these questions:

- **What can you run?** :meth:`Executor.unsupported` says why a node class
  cannot run here (async hooks in a process, a class a worker cannot import),
  or ``None``. Routing falls back from a rule's choice to an executor that
  can; an explicit request for an impossible executor is a validation error.
- **Where do your ends of an edge live?** :attr:`Executor.placement`: in the
  supervisor (trio memory channels: the node gets
  :class:`~._ports.SupervisorPorts`) or in shared memory (rings: the node gets
  :class:`~._transport.ShmPorts`). The planner gives each edge its transport
  from the placements of its two ends; nothing compares executor names.
- **Will you run a node on that host?** :meth:`Executor.refuses_host` is asked
  for a node whose manifest entry names a ``host`` (the remote executor checks
  its allow-list; every other executor runs nodes on this machine only).
- **What do you cost?** :attr:`Executor.processes_per_node` and
  :attr:`Executor.threads_per_node` count against the runtime's limits.
- **Run this node.** :meth:`Executor.session` yields what runs one session's
  nodes (:class:`NodeRunner`); :meth:`Executor.lifespan` holds what outlives
  sessions (a warm worker pool), entered by ``async with Runtime(...)``.

The contract of :meth:`NodeRunner.run_node`:

0. drive the node's state machine (``host.state.fire(NodeEvent...)``: START,
   INIT_DONE, FRAME/FRAME_DONE, STOP, FINISHED or FAIL) — metrics report it;
1. initialise the node, reporting progress (``host.progress``), within
   ``init_timeout_secs`` (else :class:`~nursery_pipes.NodeInitTimeout`);
2. call ``task_status.started()`` once the node is ready;
3. process every message until each input has delivered its end of stream,
   flush the node, then end every output;
4. on failure, report it at once (``host.report_failure``), stop the node,
   and raise a :class:`~nursery_pipes.NodeError` naming the node and phase —
   never let a foreign exception out;
5. on cancellation, stop the node: ask → grace period
   (``grace_period_secs``) → kill, with cleanup under a shielded cancel
   scope, so nothing the executor started outlives the call.
"""

from __future__ import annotations

import abc
import enum
import inspect
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar, Protocol

import trio

from .._config import RuntimeConfig
from ..nodes._base import Node
from ._host import NodeHost
from ._ports import SupervisorPorts
from ._transport import ShmPorts

__all__ = ["HOOKS", "Executor", "NodePorts", "NodeRunner", "Placement", "async_hooks"]

NodePorts = SupervisorPorts | ShmPorts
"""A node's ports: which of the two it gets follows from its executor's placement."""

HOOKS = ("initialize", "process", "flush", "cleanup")


class Placement(enum.Enum):
    """Where an executor's ends of an edge live."""

    SUPERVISOR = "supervisor"
    """In the supervisor process: trio memory channels (the node gets SupervisorPorts)."""
    SHARED_MEMORY = "shared memory"
    """In shared-memory rings the node reads and writes itself (it gets ShmPorts)."""


class NodeRunner(Protocol):
    """Runs nodes of one session (see the module docstring for the contract)."""

    async def run_node(
        self, host: NodeHost, ports: NodePorts, *, task_status: trio.TaskStatus[None]
    ) -> None: ...


def async_hooks(node_class: type[Node[Any]]) -> list[str]:
    """The hooks of ``node_class`` that are coroutine or async-generator functions."""
    return [
        name
        for name in HOOKS
        if inspect.iscoroutinefunction(getattr(node_class, name))
        or inspect.isasyncgenfunction(getattr(node_class, name))
    ]


class Executor(abc.ABC):
    """Base class of every executor. Subclass, set the class attributes, implement
    :meth:`run_node` (or :meth:`session`), and register it by name."""

    name: ClassVar[str]
    """The name manifests and runtime.toml use (``executor_overrides``, ``[routing]``)."""
    placement: ClassVar[Placement]
    runs_async: ClassVar[bool] = False
    """It can run nodes whose hooks are ``async def`` (they need the supervisor's trio loop)."""
    processes_per_node: ClassVar[int] = 0
    """Worker processes one node takes (checked against the process limits before it starts)."""
    threads_per_node: ClassVar[int] = 0
    """Threads one node takes (checked against ``limits.max_threads``)."""
    needs_host: ClassVar[bool] = False
    """It runs a node only where the node's manifest entry says (its ``host``): a node routed
    here without one is a validation error."""
    fuses_chains: ClassVar[bool] = False
    """It runs a run of consecutive nodes on one host as a unit (``NodeHost.chain``): the
    planner finds those runs, the executor's session runner runs them."""
    fuses_on_request: ClassVar[bool] = False
    """It runs such runs as a unit when the session asks (``fuse_chains``: the multiprocess
    executor, one worker per run), where the nodes' restart types agree and are not
    temporary — the run fails, restarts and stops as one."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config

    def unsupported(self, node_class: type[Node[Any]]) -> str | None:
        """Why this executor cannot run ``node_class``, or None if it can."""
        hooks = async_hooks(node_class)
        if hooks and not self.runs_async:
            where = f"{node_class.__module__}.{node_class.__qualname__}"
            return (
                f"{where} has async hooks ({', '.join(hooks)}), which run only in the supervisor's trio loop"
            )
        return None

    def refuses_host(self, host: str) -> str | None:
        """Why this executor will not run a node on ``host`` (``HOST:PORT`` from the node's
        manifest entry), or None if it will. Asked while planning, before anything connects."""
        return f"the {self.name} executor runs nodes on this machine only, not on {host}"

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        """What outlives sessions (entered by ``async with Runtime(...)``). Default: nothing."""
        return _nothing()

    def session(self) -> AbstractAsyncContextManager[NodeRunner]:
        """What runs one session's nodes, for as long as the session lives. Default: this
        executor itself (override :meth:`run_node`)."""
        return _itself(self)

    async def run_node(self, host: NodeHost, ports: NodePorts, *, task_status: trio.TaskStatus[None]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement run_node() or session()")


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


@asynccontextmanager
async def _itself(executor: Executor) -> AsyncIterator[NodeRunner]:
    yield executor
