"""Session and node lifecycles: one transition table each. Sans-I/O.

A :class:`StateMachine` holds the current state and moves only along its
table; anything else raises :class:`IllegalTransition` naming the machine, the
state and the event. docs/design.md shows the same tables.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

__all__ = [
    "NODE_TRANSITIONS",
    "SESSION_TRANSITIONS",
    "IllegalTransition",
    "NodeEvent",
    "NodeState",
    "SessionEvent",
    "SessionState",
    "StateMachine",
]


class SessionState(enum.Enum):
    INITIALIZING = "initializing"
    READY = "ready"
    EXECUTING = "executing"
    TERMINATING = "terminating"
    ERROR = "error"
    TERMINATED = "terminated"


class SessionEvent(enum.Enum):
    ALL_READY = "all nodes ready"
    INPUT = "input received"
    CLOSE = "close requested"
    CANCEL = "cancel requested"
    FAIL = "failure"
    STOPPED = "everything stopped"


S, E = SessionState, SessionEvent

SESSION_TRANSITIONS: Mapping[tuple[SessionState, SessionEvent], SessionState] = {
    (S.INITIALIZING, E.ALL_READY): S.READY,
    # close() before READY is remembered, not refused: the session carries it out when every
    # node is ready (READY, then CLOSE → TERMINATING), so a client that sends nothing and
    # half-closes at once still gets an initialised session that flushes and ends normally.
    (S.INITIALIZING, E.CLOSE): S.INITIALIZING,
    (S.INITIALIZING, E.FAIL): S.ERROR,
    (S.INITIALIZING, E.CANCEL): S.TERMINATING,
    (S.READY, E.INPUT): S.EXECUTING,
    (S.READY, E.CLOSE): S.TERMINATING,
    (S.READY, E.CANCEL): S.TERMINATING,
    (S.READY, E.FAIL): S.ERROR,
    (S.EXECUTING, E.INPUT): S.EXECUTING,
    (S.EXECUTING, E.CLOSE): S.TERMINATING,
    (S.EXECUTING, E.CANCEL): S.TERMINATING,
    (S.EXECUTING, E.FAIL): S.ERROR,
    (S.TERMINATING, E.CANCEL): S.TERMINATING,
    # The last node's started() can be on its way to the supervisor when the session is
    # cancelled or fails: that late ALL_READY is legal and changes nothing.
    (S.TERMINATING, E.ALL_READY): S.TERMINATING,
    (S.TERMINATING, E.FAIL): S.ERROR,
    (S.TERMINATING, E.STOPPED): S.TERMINATED,
    (S.ERROR, E.ALL_READY): S.ERROR,
    (S.ERROR, E.CANCEL): S.ERROR,
    (S.ERROR, E.FAIL): S.ERROR,
    (S.ERROR, E.STOPPED): S.TERMINATED,
}

del S, E


class NodeState(enum.Enum):
    IDLE = "idle"
    INITIALIZING = "initializing"
    READY = "ready"
    PROCESSING = "processing"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


class NodeEvent(enum.Enum):
    START = "start"
    INIT_DONE = "initialized"
    FRAME = "frame received"
    FRAME_DONE = "frame processed"
    STOP = "stop requested"
    FINISHED = "finished"
    FAIL = "failure"


N, V = NodeState, NodeEvent

NODE_TRANSITIONS: Mapping[tuple[NodeState, NodeEvent], NodeState] = {
    (N.IDLE, V.START): N.INITIALIZING,
    (N.IDLE, V.STOP): N.STOPPED,
    (N.INITIALIZING, V.INIT_DONE): N.READY,
    (N.INITIALIZING, V.FAIL): N.ERROR,
    (N.INITIALIZING, V.STOP): N.STOPPING,
    (N.READY, V.FRAME): N.PROCESSING,
    (N.READY, V.STOP): N.STOPPING,
    (N.READY, V.FAIL): N.ERROR,
    (N.PROCESSING, V.FRAME_DONE): N.READY,
    (N.PROCESSING, V.STOP): N.STOPPING,
    (N.PROCESSING, V.FAIL): N.ERROR,
    (N.STOPPING, V.FINISHED): N.STOPPED,
    (N.STOPPING, V.FAIL): N.ERROR,
    (N.STOPPING, V.STOP): N.STOPPING,
    (N.ERROR, V.STOP): N.ERROR,
    (N.ERROR, V.FAIL): N.ERROR,
    (N.STOPPED, V.STOP): N.STOPPED,
}

del N, V

St = TypeVar("St", bound=enum.Enum)
Ev = TypeVar("Ev", bound=enum.Enum)


class IllegalTransition(RuntimeError):
    """An event arrived that the current state does not allow — a bug in the runtime."""


class StateMachine(Generic[St, Ev]):
    """The current state of one machine, moved only along ``table``.

    >>> m = StateMachine("session x", SessionState.INITIALIZING, SESSION_TRANSITIONS)
    >>> m.fire(SessionEvent.ALL_READY)
    <SessionState.READY: 'ready'>
    """

    __slots__ = ("_on_change", "_state", "_table", "name")

    def __init__(
        self,
        name: str,
        initial: St,
        table: Mapping[tuple[St, Ev], St],
        on_change: Callable[[St, St, Ev], None] | None = None,
    ) -> None:
        self.name = name
        self._state = initial
        self._table = table
        self._on_change = on_change

    @property
    def state(self) -> St:
        return self._state

    def can(self, event: Ev) -> bool:
        return (self._state, event) in self._table

    def fire(self, event: Ev) -> St:
        try:
            new = self._table[self._state, event]
        except KeyError:
            raise IllegalTransition(
                f"{self.name}: event {event.name} is not allowed in state {self._state.name}"
            ) from None
        old, self._state = self._state, new
        if self._on_change is not None and new is not old:
            self._on_change(old, new, event)
        return new

    def __repr__(self) -> str:
        return f"<StateMachine {self.name}: {self._state.name}>"
