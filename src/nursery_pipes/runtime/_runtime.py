"""The runtime: configuration, node registry, executors and global limits, shared by sessions.

A program (or the gRPC server) makes one :class:`Runtime` and opens sessions
from it; the module-level :func:`open_session` / :func:`run_pipeline` use a
default runtime built from built-in defaults. The runtime *admits* sessions —
plans them, checks the global limits, keeps the list of those running — and
each :class:`Session` owns its own lifecycle (:func:`run_session`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from .._config import RuntimeConfig
from .._errors import ConfigError, NurseryPipesError, ResourceLimitError, SessionError
from ..executors import Executor, create_executors
from ..frames import Frame
from ..manifest import Manifest
from ..nodes._registry import NodeRegistry, build_registry
from ..nodes._routing import Assignment
from ._events import FramesDropped, NodeFailed, NodeProgress, NodeRestarted
from ._plan import SessionPlan, check_input_target, plan_session
from ._session import Session, SessionMetrics, run_session
from ._stats import RuntimeStats
from ._trace import NO_TRACER, Tracer

__all__ = ["PipelineInputs", "PipelineResult", "Runtime", "registry_from_config"]

ManifestSource = Manifest | str | bytes | Mapping[str, Any] | os.PathLike[str]
PipelineInputs = Mapping[str, Frame | Iterable[Frame] | AsyncIterable[Frame]]


@dataclass(frozen=True)
class PipelineResult:
    """What :func:`run_pipeline` returns."""

    outputs: dict[str, list[Frame]]
    """Frames produced by each sink node, in order."""
    sequences: dict[str, list[int]]
    """For each output frame, the sequence number of the input that caused it."""
    metrics: SessionMetrics
    assignments: dict[str, Assignment]
    progress: list[NodeProgress]
    session_id: str
    supervision: list[NodeFailed | NodeRestarted | FramesDropped] = field(default_factory=list)
    """What the supervision policy did: node failures it survived, restarts, dropped frames."""


def registry_from_config(config: RuntimeConfig) -> NodeRegistry:
    """A new registry: built-ins, then entry points, configured modules and testing nodes as
    configured, then classes declared with :func:`register_node` in this process."""
    nodes = config.nodes
    return build_registry(entry_points=nodes.entry_points, modules=nodes.modules, testing=nodes.testing)


class Runtime:
    """Sessions share this: config, registry, executors, limits.

    >>> import trio
    >>> from nursery_pipes import Runtime, TextFrame
    >>> manifest = {"version": "v1", "metadata": {"name": "shout"},
    ...             "nodes": [{"id": "up", "node_type": "TextTransformNode",
    ...                        "params": {"operation": "upper"}}], "connections": []}
    >>> result = trio.run(Runtime().run_pipeline, manifest, {"up": TextFrame(text="hi")})
    >>> result.outputs["up"][0].text
    'HI'
    """

    def __init__(
        self,
        config: RuntimeConfig | None = None,
        *,
        registry: NodeRegistry | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        if registry is None:
            # Always a registry of its own: nothing registered in one runtime is seen by another.
            registry = registry_from_config(config or RuntimeConfig())
        self.config = config or RuntimeConfig()
        self.registry = registry
        self.executors: dict[str, Executor] = create_executors(self.config)
        _check_routing(self.config, self.executors)
        self._sessions: dict[str, Session] = {}
        self.stats = RuntimeStats()
        """Counters over every session this runtime ran (for monitoring: ``serve --metrics-listen``)."""
        self.tracer: Tracer = tracer or NO_TRACER
        """Traces each session (``nursery_pipes.tracing`` for OpenTelemetry); default: none."""
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> Runtime:
        """Start what sessions share — each executor's lifespan (the multiprocess executor's
        worker pool and its pre-started workers, ``[multiprocess] warm_pool``) — after a sweep
        of what dead supervisors left in /dev/shm."""
        from ..ipc import sweep_stale

        sweep_stale()
        stack = AsyncExitStack()
        try:
            for executor in self.executors.values():
                await stack.enter_async_context(executor.lifespan())
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            # Not wrapped in a new (shielded) scope: the executors' nurseries were entered outside
            # it, and scopes must unwind in order. Each executor shields its own shutdown.
            await stack.aclose()

    @property
    def sessions(self) -> Mapping[str, Session]:
        return dict(self._sessions)

    def manifest(self, source: ManifestSource) -> Manifest:
        """Parse and validate against this runtime's registry (its limits are checked by
        :meth:`plan`)."""
        return Manifest.parse(source, registry=self.registry)

    def plan(self, source: ManifestSource | SessionPlan) -> SessionPlan:
        if isinstance(source, SessionPlan):
            return source
        return plan_session(self.manifest(source), self.config, executors=self.executors)

    @asynccontextmanager
    async def open_session(
        self,
        manifest: ManifestSource | SessionPlan,
        *,
        session_id: str | None = None,
        wait_ready: bool = True,
        trace_context: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Session]:
        """Start a session; yields it once every node is ready.

        With ``wait_ready=False`` it yields at once, while nodes initialise:
        :meth:`Session.events` then shows their progress, the READY state
        change, or the init failure; :meth:`Session.send` waits for READY.

        Leave the block after :meth:`Session.close` to let the pipeline drain
        (unread outputs are discarded); leave it without closing, or with an
        exception, to cancel. Errors come out unwrapped (a NodeError, not an
        ExceptionGroup).

        ``trace_context``: the caller's trace, as W3C carrier headers (``traceparent``,
        ``tracestate``): the session's trace is part of it (with a :attr:`tracer` that traces).
        """
        plan = self.plan(manifest)
        self._check_limits(plan)
        session = Session(
            plan,
            self.executors,
            config=self.config,
            session_id=session_id,
            tracer=self.tracer,
            trace_context=trace_context,
        )
        self._sessions[session.id] = session
        self.stats.session_started()
        try:
            async with run_session(session, wait_ready=wait_ready):
                yield session
        finally:
            self._sessions.pop(session.id, None)
            self.stats.session_ended(session)

    async def run_pipeline(
        self, manifest: ManifestSource | SessionPlan, inputs: PipelineInputs
    ) -> PipelineResult:
        """Run a manifest to completion on ``inputs`` (frames keyed by source node id)."""
        plan = self.plan(manifest)
        for node_id in inputs:
            check_input_target(plan, node_id)
        outputs: dict[str, list[Frame]] = {sink: [] for sink in plan.sinks}
        sequences: dict[str, list[int]] = {sink: [] for sink in plan.sinks}
        feed_errors: list[BaseException] = []
        async with self.open_session(plan) as session:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_feed_all, session, inputs, feed_errors)
                try:
                    async for out in session.outputs():
                        outputs[out.node_id].append(out.frame)
                        sequences[out.node_id].append(out.seq)
                except SessionError as exc:
                    feed_errors.insert(0, exc)  # raised below, outside the nursery
            if feed_errors:
                raise feed_errors[0]
            metrics = await session.wait()
        return PipelineResult(
            outputs,
            sequences,
            metrics,
            session.assignments,
            list(session.progress_log),
            session.id,
            session.supervision_log,
        )

    def _check_limits(self, plan: SessionPlan) -> None:
        limits = self.config.limits
        if len(self._sessions) >= limits.max_sessions:
            raise ResourceLimitError(
                f"{len(self._sessions)} sessions are running; this runtime allows at most {limits.max_sessions} "
                "(limits.max_sessions)"
            )
        for what, needed, cap, setting in (
            ("worker processes", plan.process_count, limits.max_processes, "limits.max_processes"),
            ("threads", plan.thread_count, limits.max_threads, "limits.max_threads"),
        ):
            running = sum(
                s.plan.process_count if what == "worker processes" else s.plan.thread_count
                for s in self._sessions.values()
            )
            if needed and running + needed > cap:
                raise ResourceLimitError(
                    f"pipeline {plan.manifest.name!r} needs {needed} {what}, {running} are in use and this "
                    f"runtime allows at most {cap} ({setting})"
                )


def _check_routing(config: RuntimeConfig, executors: Mapping[str, Executor]) -> None:
    """Every executor runtime.toml [routing] names must exist (a typo would route silently)."""
    named = [("[routing] default", config.routing.default)]
    named += [
        (f"[routing.explicit] {node_type}", name) for node_type, name in config.routing.explicit.items()
    ]
    named += [
        (f"[routing] rules[{i}] ({rule.pattern})", rule.executor)
        for i, rule in enumerate(config.routing.rules)
    ]
    for where, name in named:
        if name not in executors:
            raise ConfigError(
                f"{where}: no executor named {name!r} (available: {', '.join(sorted(executors))})"
            )


async def _feed_all(session: Session, inputs: PipelineInputs, errors: list[BaseException]) -> None:
    if all(isinstance(frames, (Frame, list, tuple)) for frames in inputs.values()):
        # Frames in hand: one task feeds every source in turn. Safe — the caller drains the
        # outputs meanwhile — and cheaper than a task per source (unary gRPC calls, scripts).
        for node_id, frames in inputs.items():
            await _feed(session, node_id, frames, errors)
    else:  # iterators may be slow or endless: each source gets its own task
        async with trio.open_nursery() as nursery:
            for node_id, frames in inputs.items():
                nursery.start_soon(_feed, session, node_id, frames, errors)
    if errors:
        session.cancel()
    else:
        await session.close()


async def _feed(
    session: Session,
    node_id: str,
    frames: Frame | Iterable[Frame] | AsyncIterable[Frame],
    errors: list[BaseException],
) -> None:
    try:
        await _send_all(session, node_id, frames)
    except SessionError:
        pass  # the session failed: the output loop reports it
    except NurseryPipesError as exc:
        errors.append(exc)  # a bad input: reported once the session is stopped
        session.cancel()


async def _send_all(
    session: Session, node_id: str, frames: Frame | Iterable[Frame] | AsyncIterable[Frame]
) -> None:
    if isinstance(frames, Frame):
        await session.send(node_id, frames)
    elif isinstance(frames, AsyncIterable):
        async for frame in frames:
            await session.send(node_id, frame)
    else:
        for frame in frames:
            await session.send(node_id, frame)
