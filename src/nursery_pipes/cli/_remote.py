"""``nursery-pipes run --server HOST:PORT``: the same job as a local run, against a server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpclib.exceptions import GRPCError, StreamTerminatedError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from .._errors import ManifestError, NurseryPipesError, SessionError
from ..frames import Frame
from . import _supervision
from ._files import (
    SignalSpec,
    describe_frames,
    frame_summary,
    parse_input_spec,
    read_input,
    signals_due,
    write_outputs,
)
from ._run import check_signal_specs

__all__ = ["RemoteRun", "run_remote"]


@dataclass
class RemoteRun:
    outputs: dict[str, list[Frame]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    session_id: str = ""
    assignments: list[Any] = field(default_factory=list)
    final_metrics: Any = None
    wall_s: float = 0.0
    started: float = 0.0
    """time.monotonic() when the first input was sent."""
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    """time.monotonic() of each output's arrival, per sink."""
    rejected: list[str] = field(default_factory=list)
    """What the server refused while the session went on (an input chunk, an oversized output)."""
    supervision: list[dict[str, Any]] = field(default_factory=list)
    """What the server's supervision did (node failures it survived, restarts, dropped inputs)."""
    signals: list[dict[str, Any]] = field(default_factory=list)
    """What each node did with the control signals sent (``--signal``)."""
    signal_arrivals: list[tuple[float, str]] = field(default_factory=list)
    """time.monotonic() at which each node's SignalHandled arrived, and the node."""
    signals_sent: list[tuple[float, Any]] = field(default_factory=list)
    """time.monotonic() at which each SignalSent arrived (a node's barge-in included), and it."""
    sequences: dict[str, list[int]] = field(default_factory=dict)
    """The input sequence of each output, per sink (parallel to ``outputs``)."""


async def stream_job(
    address: str,
    manifest: dict[str, Any],
    inputs: list[tuple[str, Frame]],
    *,
    token: str | None,
    console: Console,
    show_progress: bool,
    pace_s: float = 0.0,
    signals: Sequence[SignalSpec] = (),
) -> RemoteRun:
    """Stream inputs through a server session; collect outputs, latencies and final metrics.

    ``pace_s`` > 0 sends one input every ``pace_s`` seconds (real time for 20 ms chunks).
    """
    from ..client import ChunkOutput, Client, StreamEvent

    run = RemoteRun()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        transient=True,
        disable=not show_progress,
    )
    async with Client(address, token=token) as client:
        with progress:
            tasks: dict[str, Any] = {}
            async with client.stream(manifest, on_progress=lambda p: _show(progress, tasks, p)) as stream:
                progress.stop()
                run.session_id = stream.session_id
                run.assignments = list(stream.ready.assignments) if stream.ready else []

                async def feed() -> None:
                    run.started = time.monotonic()
                    for spec in signals_due(signals, 0):
                        await stream.signal(spec.name, to=spec.to)
                    for i, (node_id, frame) in enumerate(inputs):
                        if pace_s:
                            await asyncio.sleep(max(0.0, run.started + i * pace_s - time.monotonic()))
                        await stream.send(node_id, frame)
                        for spec in signals_due(signals, i + 1):
                            await stream.signal(spec.name, to=spec.to)
                    await stream.close()

                began = time.monotonic()
                sender = asyncio.ensure_future(feed())
                try:
                    async for event in stream:
                        if isinstance(event, ChunkOutput):
                            run.outputs.setdefault(event.node_id, []).append(event.frame)
                            run.arrivals.setdefault(event.node_id, []).append(time.monotonic())
                            run.sequences.setdefault(event.node_id, []).append(event.sequence)
                            run.latencies_ms.append(event.processing_time_ms)
                        elif isinstance(event, StreamEvent) and event.kind == "supervision":
                            record = _supervision.from_message(event.message)
                            run.supervision.append(record)
                            if show_progress:
                                _supervision.show(record, console)
                        elif isinstance(event, StreamEvent) and event.kind == "signal_sent":
                            run.signals_sent.append((time.monotonic(), event.message))
                        elif isinstance(event, StreamEvent) and event.kind == "signal_handled":
                            h = event.message
                            aborted = h.aborted_sequence  # (None when unset: a proto3 optional)
                            run.signal_arrivals.append((time.monotonic(), h.node_id))
                            run.signals.append(
                                _supervision.signal_record(
                                    h.node_id, h.name, list(h.dropped_sequences), aborted
                                )
                            )
                            # the user's own signals always; a node's (barge-in) when it cost something
                            if show_progress and (
                                h.origin == "client" or h.dropped_sequences or aborted is not None
                            ):
                                console.print(
                                    _supervision.signal_line(
                                        h.node_id, h.name, list(h.dropped_sequences), aborted
                                    )
                                )
                        elif isinstance(event, StreamEvent) and event.kind == "rejected":
                            run.rejected.append(event.message.message)
                            console.print(
                                f"[yellow]warning:[/] {escape(event.message.message)}", highlight=False
                            )
                finally:
                    await sender
                run.wall_s = time.monotonic() - began
                if stream.closed is not None:
                    run.final_metrics = stream.closed.final_metrics
    return run


def _show(progress: Progress, tasks: dict[str, Any], p: Any) -> None:
    if p.node_id not in tasks:
        tasks[p.node_id] = progress.add_task(p.node_id, total=1.0, note="")
    progress.update(tasks[p.node_id], completed=p.progress, note=f"{p.state} {p.message}".strip())


def run_remote(
    *,
    address: str,
    manifest: Path,
    input_specs: list[str],
    output_dir: Path | None,
    chunk_ms: float,
    token: str | None,
    as_json: bool,
    console: Console,
    out: Console,
    guard: Callable[..., Any],
    signal_specs: Sequence[str] = (),
) -> int:
    from ..client._client import load_manifest

    def prepare() -> tuple[dict[str, Any], list[tuple[str, Frame]], list[SignalSpec]]:
        doc = load_manifest(manifest)
        inputs: list[tuple[str, Frame]] = []
        for text in input_specs:
            spec = parse_input_spec(text)
            inputs.extend((spec.node_id, frame) for frame in read_input(spec, chunk_ms=chunk_ms))
        nodes = [str(n.get("id")) for n in doc.get("nodes", []) if isinstance(n, dict)]
        return doc, inputs, check_signal_specs(signal_specs, nodes, len(inputs))

    doc, inputs, signals = guard(prepare, as_json=as_json)
    try:
        run = asyncio.run(
            stream_job(
                address, doc, inputs, token=token, console=console, show_progress=not as_json, signals=signals
            )
        )
    except ManifestError:
        raise
    except SessionError as exc:
        console.print(f"[bold red]pipeline failed:[/] {escape(str(exc))}", highlight=False)
        return 1
    except NurseryPipesError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return 2
    except OSError as exc:
        console.print(
            f"[bold red]error:[/] cannot reach server {escape(address)}: {escape(str(exc))}", highlight=False
        )
        return 2
    except GRPCError as exc:  # e.g. a chunk over the server's size limit, or the server shutting down
        console.print(
            f"[bold red]error:[/] the server ended the call with {exc.status.name}: {escape(exc.message or '')}",
            highlight=False,
        )
        return 1
    except StreamTerminatedError as exc:
        console.print(
            f"[bold red]error:[/] lost the call to server {escape(address)}: {escape(str(exc))}",
            highlight=False,
        )
        return 1
    written = write_outputs(run.outputs, output_dir) if output_dir else []
    if as_json:
        out.print_json(data=_summary(run, written))
    else:
        print_remote_summary(run, written, out, title=str(doc.get("metadata", {}).get("name", "")))
    return 0


def _summary(run: RemoteRun, written: list[Path]) -> dict[str, Any]:
    return {
        "ok": True,
        "session_id": run.session_id,
        "outputs": {nid: [frame_summary(f) for f in frames] for nid, frames in run.outputs.items()},
        "files": [str(p) for p in written],
        "assignments": {
            a.node_id: {"executor": a.executor, "reason": a.reason, "pid": a.pid} for a in run.assignments
        },
        "latency_ms": _latency(run.latencies_ms),
        "rejected": run.rejected,
        "supervision": run.supervision,
        "signals": run.signals,
        "metrics": json.loads(run.final_metrics.to_json()) if run.final_metrics is not None else None,
    }


def _latency(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": round(pick(0.5), 3), "p95": round(pick(0.95), 3), "max": round(ordered[-1], 3)}


def print_remote_summary(run: RemoteRun, written: list[Path], out: Console, *, title: str) -> None:
    table = Table(title=f"Outputs of {title!r} (session {run.session_id})")
    table.add_column("sink")
    table.add_column("output")
    for nid, frames in run.outputs.items():
        table.add_row(nid, escape(describe_frames(frames)))
    out.print(table)
    nodes = Table(title="Nodes")
    for column in ("node", "executor", "pid", "items", "processing ms"):
        nodes.add_column(column)
    node_metrics = run.final_metrics.node_metrics if run.final_metrics is not None else {}
    for a in run.assignments:
        m = node_metrics.get(a.node_id)
        nodes.add_row(
            a.node_id,
            f"{a.executor} ({escape(a.reason)})",
            str(a.pid or "—"),
            str(m.items_processed if m else "?"),
            f"{m.execution_time_ms:.2f}" if m else "?",
        )
    out.print(nodes)
    lat = _latency(run.latencies_ms)
    if lat:
        out.print(
            f"chunk latency (input received → output sent, server side): p50 {lat['p50']:.2f} ms, "
            f"p95 {lat['p95']:.2f} ms, max {lat['max']:.2f} ms"
        )
    for path in written:
        out.print(f"wrote {path}")
