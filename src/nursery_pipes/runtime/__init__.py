"""Sessions, supervision, executors and the runtime that ties them together."""

from .._states import NodeState, SessionState
from ._children import WorkerCrashed, WorkerProcess
from ._events import (
    Event,
    FramesDropped,
    NodeFailed,
    NodeProgress,
    NodeRestarted,
    Output,
    SignalHandled,
    SignalSent,
    StateChanged,
)
from ._plan import SessionPlan
from ._policy import FAIL_FAST, RestartType, Strategy, SupervisionPolicy
from ._runtime import PipelineResult, Runtime
from ._session import Session, SessionMetrics, SessionStatistics
from ._supervisor import ChildFailed, ChildSpec, FailureRecord, Supervisor
from ._trace import NO_TRACER, InitTrace, SessionTrace, Tracer

__all__ = [
    "FAIL_FAST",
    "NO_TRACER",
    "ChildFailed",
    "ChildSpec",
    "Event",
    "FailureRecord",
    "FramesDropped",
    "InitTrace",
    "NodeFailed",
    "NodeProgress",
    "NodeRestarted",
    "NodeState",
    "Output",
    "PipelineResult",
    "RestartType",
    "Runtime",
    "Session",
    "SessionMetrics",
    "SessionPlan",
    "SessionState",
    "SessionStatistics",
    "SessionTrace",
    "SignalHandled",
    "SignalSent",
    "StateChanged",
    "Strategy",
    "SupervisionPolicy",
    "Supervisor",
    "Tracer",
    "WorkerCrashed",
    "WorkerProcess",
]
