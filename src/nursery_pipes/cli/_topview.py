"""What ``nursery-pipes top`` shows, from Monitor snapshots (sans-I/O: snapshots in, rates, rich
renderables and JSON out; no clock, no network).

Rates come from two consecutive snapshots of one server, on the server's clock
(``ServerInfo.uptime_secs``), so they do not depend on when the client happened to receive
them. A counter that went down was reset — a node restarted by its supervision policy counts
from zero again — and counts from zero (Prometheus' rule). Snapshots of two different server
lives (another pid, or a clock that went back) give no rates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import betterproto
from rich.console import Group, RenderableType
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table
from rich.text import Text

__all__ = ["NO_RATES", "NodeRates", "Rates", "SessionRates", "rates", "render", "to_json"]

_DASH = "—"


@dataclass(frozen=True, slots=True)
class NodeRates:
    frames_in: float
    """Frames per second into the node."""
    frames_out: float
    cpu_percent: float | None
    """Its worker process's CPU use over the interval (100 = one core); None when it runs in the
    server process or its process changed (a restart)."""


@dataclass(frozen=True, slots=True)
class SessionRates:
    frames_in: float
    """Frames per second from the client."""
    frames_out: float
    """Frames per second out of its sinks."""


@dataclass(frozen=True, slots=True)
class Rates:
    seconds: float
    """Server time between the two snapshots; 0 = no rates."""
    sessions: Mapping[str, SessionRates] = field(default_factory=dict)
    nodes: Mapping[tuple[str, str], NodeRates] = field(default_factory=dict)
    """(session id, node id) → rates."""
    server_cpu_percent: float | None = None


NO_RATES = Rates(0.0)


def _per_second(before: int, after: int, seconds: float) -> float:
    return (after - before if after >= before else after) / seconds


def rates(before: Any, after: Any) -> Rates:
    """Rates between two ``ServerSnapshot`` of one server (``before`` taken first)."""
    seconds = after.server.uptime_secs - before.server.uptime_secs
    if seconds <= 0 or before.server.pid != after.server.pid:
        return NO_RATES
    sessions: dict[str, SessionRates] = {}
    nodes: dict[tuple[str, str], NodeRates] = {}
    earlier = {s.session_id: s for s in before.sessions}
    for session in after.sessions:
        old = earlier.get(session.session_id)
        if old is None:
            continue
        sessions[session.session_id] = SessionRates(
            _per_second(old.frames_in, session.frames_in, seconds),
            _per_second(old.frames_out, session.frames_out, seconds),
        )
        old_nodes = {n.node_id: n for n in old.nodes}
        for node in session.nodes:
            was = old_nodes.get(node.node_id)
            if was is None:
                continue
            cpu = None
            if node.pid and node.pid == was.pid and node.rss_bytes and was.rss_bytes:
                cpu = max(0.0, node.cpu_secs - was.cpu_secs) / seconds * 100
            nodes[(session.session_id, node.node_id)] = NodeRates(
                _per_second(was.frames_in, node.frames_in, seconds),
                _per_second(was.frames_out, node.frames_out, seconds),
                cpu,
            )
    server_cpu = max(0.0, after.server.cpu_secs - before.server.cpu_secs) / seconds * 100
    return Rates(seconds, sessions, nodes, server_cpu)


# -- rendering --------------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """5s, 3m05s, 2h03m, 3d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _rate(value: float | None) -> str:
    if value is None:
        return _DASH
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _state(state: str) -> Text:
    style = {"error": "bold red", "stopping": "yellow", "terminating": "yellow", "initializing": "cyan"}
    return Text(state or "?", style=style.get(state, ""))


def render(snapshot: Any, rates_: Rates, *, address: str, status: str = "") -> RenderableType:
    """The screen: a header (server, uptime, sessions, workers), a sessions table, a nodes table,
    and ``status`` (e.g. "connection lost — reconnecting") when there is one."""
    server = snapshot.server
    draining = Text(" DRAINING", style="bold yellow") if server.draining else Text(" serving", style="green")
    cpu = f" · CPU {_rate(rates_.server_cpu_percent)}%" if rates_.seconds else ""
    header = Text.assemble(
        (f"{address}", "bold"),
        f" · {server.version} · pid {server.pid} · up {duration(server.uptime_secs)} ·",
        draining,
        f"\nsessions: {server.sessions_active} running (max {server.max_sessions}) · "
        f"{server.sessions_started} started · {server.sessions_completed} completed · "
        f"{server.sessions_failed} failed · {server.sessions_cancelled} cancelled",
        f"\nworkers: {server.worker_processes} (max {server.max_processes}) · "
        f"server RSS {decimal(server.rss_bytes)}{cpu}",
    )
    parts: list[RenderableType] = [header]
    if status:
        parts.append(Text(status, style="bold red"))
    if not snapshot.sessions:
        parts.append(Text("no sessions running", style="dim"))
        return Group(*parts)
    parts.append(_sessions_table(snapshot, rates_))
    parts.append(_nodes_table(snapshot, rates_))
    return Group(*parts)


def _sessions_table(snapshot: Any, rates_: Rates) -> Table:
    table = Table(title="sessions", title_justify="left", expand=False)
    for name, justify in (
        ("session", "left"),
        ("pipeline", "left"),
        ("state", "left"),
        ("age", "right"),
        ("nodes", "right"),
        ("in/s", "right"),
        ("out/s", "right"),
        ("unread", "right"),
        ("restarts", "right"),
        ("failures", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in snapshot.sessions:
        r = rates_.sessions.get(s.session_id)
        state = _state(s.state)
        if s.error:
            state.append(f" {s.error.splitlines()[0][:60]}", style="red")
        table.add_row(
            s.session_id,
            escape(s.pipeline),
            state,
            duration(s.age_secs),
            str(len(s.nodes)),
            _rate(r.frames_in if r else None),
            _rate(r.frames_out if r else None),
            str(s.queued_outputs),
            str(sum(n.restarts for n in s.nodes)),
            str(sum(n.failures for n in s.nodes)),
        )
    return table


def _nodes_table(snapshot: Any, rates_: Rates) -> Table:
    table = Table(title="nodes", title_justify="left", expand=False)
    for name, justify in (
        ("session", "left"),
        ("node", "left"),
        ("type", "left"),
        ("executor", "left"),
        ("state", "left"),
        ("pid/host", "right"),
        ("in/s", "right"),
        ("out/s", "right"),
        ("frames", "right"),
        ("queue", "right"),
        ("restarts", "right"),
        ("ms/frame", "right"),
        ("RSS", "right"),
        ("CPU%", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in snapshot.sessions:
        for n in s.nodes:
            r = rates_.nodes.get((s.session_id, n.node_id))
            per_frame = n.processing_secs / n.frames_in * 1000 if n.frames_in else None
            table.add_row(
                s.session_id[:8],
                escape(n.node_id),
                escape(n.node_type),
                escape(n.executor),
                _state(n.state),
                escape(n.host) if n.host else str(n.pid) if n.pid else "server",
                _rate(r.frames_in if r else None),
                _rate(r.frames_out if r else None),
                f"{n.frames_in}/{n.frames_out}",
                Text(str(n.queued_in), style="bold yellow" if n.queued_in else ""),
                Text(str(n.restarts), style="bold red" if n.restarts else ""),
                f"{per_frame:.2f}" if per_frame is not None else _DASH,
                decimal(n.rss_bytes) if n.rss_bytes else _DASH,
                _rate(r.cpu_percent if r else None),
            )
    return table


# -- JSON -------------------------------------------------------------------------------------------


def to_json(snapshot: Any, rates_: Rates) -> dict[str, Any]:
    """The snapshot as plain JSON values (snake_case, every field), each session and node with
    its rates (``*_per_s``, ``cpu_percent``; null where there are none)."""
    doc: dict[str, Any] = snapshot.to_pydict(casing=betterproto.Casing.SNAKE, include_default_values=True)
    doc["interval_secs"] = rates_.seconds or None
    doc["server"]["cpu_percent"] = rates_.server_cpu_percent
    for session in doc.get("sessions", []):
        sr = rates_.sessions.get(session["session_id"])
        session["frames_in_per_s"] = sr.frames_in if sr else None
        session["frames_out_per_s"] = sr.frames_out if sr else None
        for node in session["nodes"]:
            nr = rates_.nodes.get((session["session_id"], node["node_id"]))
            node["frames_in_per_s"] = nr.frames_in if nr else None
            node["frames_out_per_s"] = nr.frames_out if nr else None
            node["cpu_percent"] = nr.cpu_percent if nr else None
    return doc
