"""What ``nursery-pipes run`` says when a supervision policy acts: the same lines and JSON
for a local session (library events) and a remote one (``SupervisionEvent`` messages)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape

from ..runtime import FramesDropped, NodeFailed, NodeRestarted

__all__ = ["from_event", "from_message", "show"]

Record = dict[str, Any]


def from_event(event: NodeFailed | NodeRestarted | FramesDropped) -> Record:
    """A library event as the record the CLI prints and puts in its JSON."""
    if isinstance(event, NodeFailed):
        kind = "stopped" if event.action == "stop" else "failed"
        what = {
            "restart": f"restarting {', '.join(event.restarting)}",
            "stop": "stopped for good",
            "escalate": "giving up",
        }
        return _record(kind, event.node_id, f"{event.error} — {what[event.action]}", restarts=event.restarts)
    if isinstance(event, NodeRestarted):
        return _record("restarted", event.node_id, f"{event.cause} failed", restarts=event.restarts)
    return _record("dropped", event.node_id, event.reason, dropped=event.sequences)


def from_message(message: Any) -> Record:
    """A ``SupervisionEvent`` from a server as the same record."""
    return _record(
        message.kind,
        message.node_id,
        message.message,
        restarts=message.restarts,
        dropped=list(message.dropped_sequences),
    )


def _record(
    kind: str, node_id: str, message: str, *, restarts: int = 0, dropped: Sequence[int] = ()
) -> Record:
    return {
        "kind": kind,
        "node_id": node_id,
        "message": message,
        "restarts": restarts,
        "dropped_sequences": list(dropped),
    }


def show(record: Record, console: Console) -> None:
    """One line on the console, as it happens."""
    node = escape(record["node_id"])
    kind = record["kind"]
    if kind == "dropped":
        seqs = ", ".join(str(s) for s in record["dropped_sequences"])
        line = f"[yellow]dropped:[/] {node}: input {seqs} — {escape(record['message'])}"
    elif kind == "restarted":
        line = f"[yellow]restarted:[/] {node} (restart {record['restarts']}; {escape(record['message'])})"
    else:
        line = f"[yellow]{kind}:[/] {escape(record['message'])}"
    console.print(line, highlight=False)


def signal_record(node_id: str, name: str, dropped: Sequence[int], aborted: int | None) -> Record:
    """What one node did with a control signal, as the JSON summary shows it."""
    return {"node": node_id, "signal": name, "dropped": list(dropped), "aborted": aborted}


def signal_line(node_id: str, name: str, dropped: Sequence[int], aborted: int | None) -> str:
    """What one node did with a control signal, for people."""
    lost = [*([aborted] if aborted is not None else []), *dropped]
    what = f"gave up inputs {', '.join(map(str, lost))}" if lost else "dropped nothing"
    return f"[cyan]signal[/] {escape(name)} → node {escape(node_id)}: {what}"
