"""Executors: what runs a session's nodes, behind one seam (:mod:`._abc`).

Built in: ``inprocess`` (a trio task in the supervisor), ``thread`` (a sync
node in a thread of its own) and ``multiprocess`` (a worker process, edges in
shared memory). Others register through the ``nursery_pipes.executors``
entry-point group (:mod:`._registry`).
"""

from .._states import NodeEvent, NodeState
from ..nodes._calls import aiter_outputs, check_frame, iter_outputs
from ._abc import Executor, NodePorts, NodeRunner, Placement, async_hooks
from ._host import (
    NO_NODE_TRACE,
    NodeHost,
    NodeMetrics,
    NodeProgress,
    NodeTrace,
    ProgressState,
    SessionSettings,
)
from ._inprocess import HookRunner, InProcessExecutor, Pump, cleanup_failed, initializing, node_failure
from ._multiprocess import MultiprocessExecutor
from ._pool import WorkerPool
from ._ports import (
    WAKE,
    EndOfStream,
    Envelope,
    Flow,
    Mailbox,
    MemoryPort,
    Message,
    OutPort,
    SupervisorPorts,
    Wake,
)
from ._registry import ENTRY_POINT_GROUP, available_executors, create_executors
from ._rings import TrioConsumer, TrioProducer
from ._thread import NodeThread, ThreadExecutor
from ._transport import Recovery, RingGeometry, ShmPort, ShmPorts, ShmTransport, StopMode

__all__ = [
    "ENTRY_POINT_GROUP",
    "NO_NODE_TRACE",
    "WAKE",
    "EndOfStream",
    "Envelope",
    "Executor",
    "Flow",
    "HookRunner",
    "InProcessExecutor",
    "Mailbox",
    "MemoryPort",
    "Message",
    "MultiprocessExecutor",
    "NodeEvent",
    "NodeHost",
    "NodeMetrics",
    "NodePorts",
    "NodeProgress",
    "NodeRunner",
    "NodeState",
    "NodeThread",
    "NodeTrace",
    "OutPort",
    "Placement",
    "ProgressState",
    "Pump",
    "Recovery",
    "RingGeometry",
    "SessionSettings",
    "ShmPort",
    "ShmPorts",
    "ShmTransport",
    "StopMode",
    "SupervisorPorts",
    "ThreadExecutor",
    "TrioConsumer",
    "TrioProducer",
    "Wake",
    "WorkerPool",
    "aiter_outputs",
    "async_hooks",
    "available_executors",
    "check_frame",
    "cleanup_failed",
    "create_executors",
    "initializing",
    "iter_outputs",
    "node_failure",
]
