"""Control signals: messages that overtake the frames queued for a node.

Frames keep their order on an edge; a control signal does not wait its turn. Like a system
message in an actor system, it goes to a set of nodes *ahead of* the frames queued on their
input edges — in the supervisor and across worker processes alike — and each target's
:meth:`~nursery_pipes.Node.on_signal` hook decides what it means there. Returning True
drops the frames queued for the node and aborts the one in flight (its outputs not yet sent
are discarded; a generator ``process()`` is closed at its next ``yield``). Signals may go
anywhere in the graph, against the data direction too (a downstream node telling upstream
ones to stop).

Built-in names (any other lower-case name is a user-defined signal, default: not dropping):

- ``interrupt`` — stop what you are doing; drops by default (barge-in: the user speaks
  while the reply is being synthesised);
- ``cancel_turn`` — the current turn is void; drops by default;
- ``flush`` — emit what you buffer now; does not drop by default.

Frames not dropped on purpose keep every guarantee they had: order, backpressure, and any
loss reported. Dropped frames are reported as dropped (``FramesDropped``), with the signal
named as the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CANCEL_TURN",
    "DROPPING_SIGNALS",
    "FLUSH",
    "INTERRUPT",
    "SIGNAL_NAME",
    "Signal",
    "signal_name_problem",
]

INTERRUPT = "interrupt"
CANCEL_TURN = "cancel_turn"
FLUSH = "flush"
DROPPING_SIGNALS = frozenset({INTERRUPT, CANCEL_TURN})
"""The signals a node answers by dropping its queued frames unless it says otherwise."""

SIGNAL_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Signal:
    """One control signal, as a target node's :meth:`~nursery_pipes.Node.on_signal` sees it."""

    name: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    """JSON-like data for the targets (strings, numbers, lists, dicts)."""
    origin: str = "client"
    """Who sent it: ``client`` (the session's user), or the id of the node that did."""
    id: int = 0
    """Its number within the session (1, 2, …), for matching what each target reports."""

    def __post_init__(self) -> None:
        problem = signal_name_problem(self.name)
        if problem:
            raise ValueError(problem)


def signal_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a signal, or None."""
    if not isinstance(name, str) or not SIGNAL_NAME.match(name):
        return (
            f"signal name {name!r} must be a lower-case word of at most 64 characters ({SIGNAL_NAME.pattern})"
        )
    return None
