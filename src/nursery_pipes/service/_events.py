"""A session's supervision events as remotemedia.v1 ``SupervisionEvent`` extension messages.

Streams carry them as ``StreamResponse.supervision`` when they happen; unary calls gather
them in ``ExecutionResult.supervision``. An upstream client skips them (an unknown oneof
member, an unknown field) and only misses the results of the dropped frames.
"""

from __future__ import annotations

from typing import Any

from ..runtime import FramesDropped, NodeFailed, NodeRestarted
from ..wire import supervision_event_to_proto
from ..wire._messages import Messages

__all__ = ["supervision_to_proto"]

SupervisionEvent = NodeFailed | NodeRestarted | FramesDropped


def supervision_to_proto(event: SupervisionEvent, ns: Messages) -> Any:
    """One library event → one ``SupervisionEvent`` message (of the ``ns`` implementation)."""
    if isinstance(event, NodeFailed):
        what = {
            "restart": f"restarting {', '.join(event.restarting)}",
            "stop": "stopped for good (temporary): its outputs end, the session goes on",
            "escalate": "the supervision policy gives up: the session fails",
        }[event.action]
        return supervision_event_to_proto(
            "stopped" if event.action == "stop" else "failed",
            event.node_id,
            f"{event.error} — {what}",
            restarts=event.restarts,
            error=event.error,
            ns=ns,
        )
    if isinstance(event, NodeRestarted):
        return supervision_event_to_proto(
            "restarted",
            event.node_id,
            f"a fresh instance of {event.node_id} is starting (restart {event.restarts}; {event.cause} failed)",
            restarts=event.restarts,
            ns=ns,
        )
    return supervision_event_to_proto(
        "dropped", event.node_id, event.reason, dropped_sequences=event.sequences, ns=ns
    )
