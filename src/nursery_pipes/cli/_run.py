"""``nursery-pipes run``: a local session with a live init-progress display."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from .._errors import InputError, NurseryPipesError, SessionError
from ..frames import Frame
from ..nodes._signals import signal_name_problem
from ..runtime import (
    FramesDropped,
    NodeFailed,
    NodeProgress,
    NodeRestarted,
    Output,
    Runtime,
    Session,
    SessionMetrics,
    SessionState,
    SignalHandled,
    StateChanged,
)
from . import _supervision
from ._files import (
    SignalSpec,
    describe_frames,
    frame_summary,
    parse_input_spec,
    parse_signal_spec,
    read_input,
    signals_due,
    write_outputs,
)
from ._serve import sole_leaf

__all__ = ["run_local"]


def run_local(
    *,
    manifest: Path,
    input_specs: list[str],
    output_dir: Path | None,
    chunk_ms: float,
    runtime_factory: Callable[[], Runtime],
    as_json: bool,
    verbose: bool,
    console: Console,
    out: Console,
    guard: Callable[..., Any],
    signal_specs: Sequence[str] = (),
) -> int:
    def prepare() -> tuple[Runtime, Any, dict[str, list[Frame]], list[SignalSpec]]:
        runtime = runtime_factory()
        plan = runtime.plan(manifest)
        inputs: dict[str, list[Frame]] = {}
        for text in input_specs:
            spec = parse_input_spec(text)
            from ..runtime._plan import check_input_target

            check_input_target(plan, spec.node_id)
            inputs.setdefault(spec.node_id, []).extend(read_input(spec, chunk_ms=chunk_ms))
        total = sum(len(frames) for frames in inputs.values())
        signals = check_signal_specs(signal_specs, list(plan.nodes), total)
        return runtime, plan, inputs, signals

    runtime, plan, inputs, signals = guard(prepare, as_json=as_json)
    collected: dict[str, list[Frame]] = {sink: [] for sink in plan.sinks}
    handled: list[SignalHandled] = []
    state: dict[str, Any] = {}

    async def main() -> None:
        async with runtime.open_session(plan, wait_ready=False) as session:
            state["session"] = session
            error: BaseException | None = None
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_feed, session, inputs, signals)
                    await _consume(session, collected, console, show_progress=not as_json, handled=handled)
            except BaseExceptionGroup as group:
                # The nursery wraps the session's error: report that error, not a group traceback.
                leaf = sole_leaf(group)
                error = leaf if isinstance(leaf, NurseryPipesError) else group
            if error is not None:
                raise error  # outside the except block, so its own __cause__/__context__ stay

    try:
        trio.run(main)
    except SessionError as exc:
        session = state.get("session")
        _report_failure(exc, session, as_json=as_json, verbose=verbose, console=console, out=out)
        return 1
    except NurseryPipesError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return 2
    session = state["session"]
    metrics = session.metrics()
    written = write_outputs(collected, output_dir) if output_dir else []
    if as_json:
        summary = _summary(session, collected, metrics, written)
        summary["signals"] = [
            _supervision.signal_record(h.node_id, h.name, h.dropped, h.aborted) for h in handled
        ]
        out.print_json(data=summary)
    else:
        _print_summary(session, collected, metrics, written, out)
    return 0


async def _feed(session: Session, inputs: dict[str, list[Frame]], signals: Sequence[SignalSpec] = ()) -> None:
    try:
        sent = 0
        for spec in signals_due(signals, sent):
            session.signal(spec.name, to=spec.to)
        for node_id, frames in inputs.items():
            for frame in frames:
                await session.send(node_id, frame)
                sent += 1
                for spec in signals_due(signals, sent):
                    session.signal(spec.name, to=spec.to)
        await session.close()
    except SessionError:
        pass  # reported by the consumer


def check_signal_specs(texts: Sequence[str], nodes: Sequence[str], inputs: int) -> list[SignalSpec]:
    """Parse ``--signal`` options; an InputError names a bad one (before anything runs)."""
    specs = [parse_signal_spec(text) for text in texts]
    for spec in specs:
        problem = signal_name_problem(spec.name)
        if problem:
            raise InputError(f"--signal: {problem}")
        unknown = [n for n in spec.to or () if n not in nodes]
        if unknown:
            raise InputError(f"--signal: no node {unknown[0]!r} in this pipeline (nodes: {', '.join(nodes)})")
        if spec.after > inputs:
            raise InputError(f"--signal: after {spec.after} input frames, but there are only {inputs}")
    return specs


async def _consume(
    session: Session,
    collected: dict[str, list[Frame]],
    console: Console,
    *,
    show_progress: bool,
    handled: list[SignalHandled],
) -> None:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        transient=True,
        disable=not show_progress,
    )
    tasks: dict[str, Any] = {}
    with progress:
        try:
            async for event in session.events():
                if isinstance(event, NodeProgress):
                    if event.node_id not in tasks:
                        tasks[event.node_id] = progress.add_task(event.node_id, total=1.0, note="")
                    progress.update(
                        tasks[event.node_id],
                        completed=event.progress,
                        note=f"{event.state} {event.message}".strip(),
                    )
                elif isinstance(event, StateChanged) and event.state is SessionState.READY:
                    progress.stop()
                elif isinstance(event, Output):
                    collected[event.node_id].append(event.frame)
                elif isinstance(event, (NodeFailed, NodeRestarted, FramesDropped)) and show_progress:
                    _supervision.show(_supervision.from_event(event), console)
                elif isinstance(event, SignalHandled):
                    handled.append(event)
                    # the user's own signals always; a node's (barge-in) when it cost something
                    if show_progress and (
                        event.origin == "client" or event.dropped or event.aborted is not None
                    ):
                        console.print(
                            _supervision.signal_line(event.node_id, event.name, event.dropped, event.aborted)
                        )
        finally:
            progress.stop()


def _report_failure(
    exc: SessionError,
    session: Session | None,
    *,
    as_json: bool,
    verbose: bool,
    console: Console,
    out: Console,
) -> None:
    tb = getattr(exc, "remote_traceback", None)
    if as_json:
        out.print_json(
            data={
                "ok": False,
                "error": str(exc),
                "node_id": exc.node_id,
                "traceback": tb if verbose else None,
            }
        )
        return
    console.print(f"[bold red]pipeline failed:[/] {escape(str(exc))}", highlight=False)
    if tb and verbose:
        console.print(tb, highlight=False, markup=False)
    elif tb:
        console.print("[dim](run with --verbose for the node's traceback)[/]")


def _summary(
    session: Session, collected: dict[str, list[Frame]], metrics: SessionMetrics, written: list[Path]
) -> dict[str, Any]:
    return {
        "ok": True,
        "session_id": session.id,
        "outputs": {nid: [frame_summary(f) for f in frames] for nid, frames in collected.items()},
        "files": [str(p) for p in written],
        "assignments": {
            nid: {"executor": a.executor, "reason": a.reason} for nid, a in session.assignments.items()
        },
        "supervision": [_supervision.from_event(e) for e in session.supervision_log],
        "metrics": {
            "wall_time_ms": round(metrics.wall_time_s * 1000, 3),
            "cpu_time_ms": round(metrics.cpu_time_s * 1000, 3),
            "frames_in": metrics.frames_in,
            "frames_out": metrics.frames_out,
            "nodes": {
                nid: {
                    "frames_in": m.frames_in,
                    "frames_out": m.frames_out,
                    "bytes_in": m.bytes_in,
                    "bytes_out": m.bytes_out,
                    "processing_ms": round(m.processing_s * 1000, 3),
                    "init_ms": round(m.init_s * 1000, 3),
                    "executor": m.executor,
                    "pid": m.pid,
                    "restarts": m.restarts,
                }
                for nid, m in metrics.nodes.items()
            },
        },
    }


def _print_summary(
    session: Session,
    collected: dict[str, list[Frame]],
    metrics: SessionMetrics,
    written: list[Path],
    out: Console,
) -> None:
    table = Table(title=f"Outputs of {session.plan.manifest.name!r}")
    table.add_column("sink")
    table.add_column("output")
    for nid, frames in collected.items():
        table.add_row(nid, describe_frames(frames))
    out.print(table)
    nodes = Table(title=f"Nodes — wall time {metrics.wall_time_s * 1000:.1f} ms")
    restarted = any(m.restarts for m in metrics.nodes.values())
    for column in (
        "node",
        "executor",
        "frames in/out",
        "processing ms",
        "init ms",
        *(["restarts"] * restarted),
    ):
        nodes.add_column(column)
    for nid, m in metrics.nodes.items():
        assignment = session.assignments[nid]
        nodes.add_row(
            nid,
            f"{assignment.executor} ({assignment.reason})",
            f"{m.frames_in}/{m.frames_out}",
            f"{m.processing_s * 1000:.2f}",
            f"{m.init_s * 1000:.1f}",
            *([str(m.restarts)] * restarted),
        )
    out.print(nodes)
    for path in written:
        out.print(f"wrote {path}")
