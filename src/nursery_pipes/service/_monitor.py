"""The ``nursery_pipes.v1.Monitor`` service's snapshots: the server, its live sessions and their
nodes, as ``nursery-pipes top`` shows them (protos/nursery_pipes/v1/monitor.proto).

A snapshot is taken when a client asks — once per Snapshot call, once per interval of a Watch
call — and never otherwise: nothing is counted on the frame path for it. The sessions are read
on the trio thread through the library's API (``runtime.sessions``, ``runtime.stats``,
:func:`~nursery_pipes.runtime._stats.session_view`); the worker processes' memory and CPU are
then read from ``/proc`` in a thread, off the event loop. Messages are upb's (built from
``nursery_pipes_v1.binpb``): a snapshot of 64 sessions of 5 nodes takes ~1 ms to build and
serialise with upb, ~37 ms with betterproto — time the server's event loop would not spend
moving frames.
"""

from __future__ import annotations

import math
import os

import trio

from .._version import __version__
from ..runtime import Runtime
from ..runtime._stats import SessionView, session_view
from ..wire._messages import upb_messages
from ._procfs import ProcessUsage, process_usage

__all__ = [
    "DEFAULT_INTERVAL_SECS",
    "MAX_INTERVAL_SECS",
    "MIN_INTERVAL_SECS",
    "MON",
    "MONITOR",
    "take_snapshot",
    "watch_interval",
]

MONITOR = "nursery_pipes.v1.Monitor"
MON = upb_messages("nursery_pipes.v1")
"""The monitor's message classes (upb)."""

DEFAULT_INTERVAL_SECS = 1.0
MIN_INTERVAL_SECS = 0.25
MAX_INTERVAL_SECS = 60.0


def watch_interval(requested: float) -> float:
    """The interval a Watch call gets: 0 (unset) or not a number → 1 s; else kept within
    [0.25, 60] s — a client cannot make the server snapshot faster than 4 times a second."""
    if not math.isfinite(requested) or requested <= 0:
        return DEFAULT_INTERVAL_SECS
    return min(MAX_INTERVAL_SECS, max(MIN_INTERVAL_SECS, requested))


async def take_snapshot(runtime: Runtime, *, uptime_s: float, draining: bool) -> object:
    """A ``ServerSnapshot`` of ``runtime`` now (call on its trio thread)."""
    views = [session_view(session) for session in runtime.sessions.values()]
    stats = runtime.stats
    started, ended = stats.sessions_started, dict(stats.sessions_ended)
    server_pid = os.getpid()
    pids = {n.pid for v in views for n in v.nodes if n.pid is not None}
    usage = await trio.to_thread.run_sync(lambda: {pid: process_usage(pid) for pid in {server_pid, *pids}})
    own = usage.get(server_pid)
    limits = runtime.config.limits
    server = MON.ServerInfo(
        version=f"nursery_pipes {__version__}",
        uptime_secs=uptime_s,
        draining=draining,
        sessions_active=len(views),
        sessions_started=started,
        sessions_completed=ended.get("completed", 0),
        sessions_failed=ended.get("failed", 0),
        sessions_cancelled=ended.get("cancelled", 0),
        worker_processes=sum(1 for pid in pids if usage.get(pid) is not None),
        max_sessions=limits.max_sessions,
        max_processes=limits.max_processes,
        pid=server_pid,
        rss_bytes=own.rss_bytes if own else 0,
        cpu_secs=own.cpu_secs if own else 0.0,
    )
    return MON.ServerSnapshot(server=server, sessions=[_session(v, usage) for v in views])


def _session(view: SessionView, usage: dict[int, ProcessUsage | None]) -> object:
    nodes = []
    for n in view.nodes:
        proc = usage.get(n.pid) if n.pid is not None else None
        nodes.append(
            MON.NodeSnapshot(
                node_id=n.node_id,
                node_type=n.node_type,
                executor=n.executor,
                state=n.state,
                pid=n.pid or 0,
                frames_in=n.frames_in,
                frames_out=n.frames_out,
                bytes_in=n.bytes_in,
                bytes_out=n.bytes_out,
                queued_in=n.queued_in,
                restarts=n.restarts,
                failures=n.failures,
                processing_secs=n.processing_s,
                init_secs=n.init_s,
                rss_bytes=proc.rss_bytes if proc else 0,
                cpu_secs=proc.cpu_secs if proc else 0.0,
                host=n.host,
            )
        )
    return MON.SessionSnapshot(
        session_id=view.session_id,
        pipeline=view.pipeline,
        state=view.state,
        age_secs=view.age_s,
        frames_in=view.frames_in,
        frames_out=view.frames_out,
        bytes_in=view.bytes_in,
        bytes_out=view.bytes_out,
        queued_outputs=view.queued_outputs,
        error=view.error,
        nodes=nodes,
    )
