"""From a validated manifest to a session plan. Sans-I/O.

Everything decided before anything starts lives here: the effective settings
(manifest > runtime.toml > defaults, global limits win), the supervision
policy and each node's restart type, each node's executor and the reason,
each edge's transport, and the limit checks. A plan either
comes out whole or raises an error naming what is wrong — nothing has been
spawned yet.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from .._config import RuntimeConfig
from .._errors import FrameError, FrameKindError, InputError, ManifestError, ManifestIssue, ResourceLimitError
from ..executors import Executor, Placement, SessionSettings
from ..frames import Frame
from ..ipc import shm_refusal
from ..manifest import Manifest, NodeSpec, SupervisionConfig
from ..nodes._base import Node, Params
from ..nodes._routing import REMOTE, SEED_RULE, Assignment, RoutingRule, RoutingTable, route
from ._policy import FAIL_FAST, RestartType, Strategy, SupervisionPolicy

__all__ = [
    "CLIENT",
    "EdgePlan",
    "NodePlan",
    "SessionPlan",
    "SessionSettings",
    "fused_chains",
    "plan_session",
    "resolve_restart",
    "resolve_supervision",
]

CLIENT = "<client>"
"""The session's user, as an edge endpoint: it feeds the sources and reads the sinks."""

Transport = Literal["memory", "shm"]


@dataclass(frozen=True, slots=True)
class EdgePlan:
    src: str
    dst: str
    transport: Transport


@dataclass(frozen=True, slots=True)
class NodePlan:
    node_id: str
    node_type: str
    node_class: type[Node[Any]]
    params: Params
    assignment: Assignment
    inputs: tuple[str, ...]
    """Upstream node ids, or CLIENT for a source."""
    outputs: tuple[str, ...]
    """Downstream node ids, or CLIENT for a sink."""
    placement: Placement
    """Where its executor keeps its ends of an edge (asked of the executor when planning)."""
    processes: int = 0
    """Worker processes it takes."""
    threads: int = 0
    """Threads it takes."""
    spec: NodeSpec | None = None
    """Its manifest entry as written (what a remote executor sends on)."""
    chain: tuple[str, ...] = ()
    """The run of consecutive nodes it belongs to that its executor runs as one unit
    (``Executor.fuses_chains``: the remote executor's nodes on one host; with ``fuse_chains``,
    multiprocess nodes in one worker), in order; empty when it runs alone. Only the run's
    head counts its ``processes``."""
    restart: RestartType = RestartType.TRANSIENT
    """What its failure means: restarted (permanent, transient — alike in a pipeline, where a
    node only ends normally when its inputs have) or not (temporary: its outputs end)."""

    @property
    def executor(self) -> str:
        return self.assignment.executor

    @property
    def on_supervisor(self) -> bool:
        """Its edge ends are in the supervisor's memory (else in shared memory)."""
        return self.placement is Placement.SUPERVISOR


@dataclass(frozen=True)
class SessionPlan:
    manifest: Manifest
    settings: SessionSettings
    nodes: Mapping[str, NodePlan]
    edges: tuple[EdgePlan, ...]
    order: tuple[str, ...]
    sources: tuple[str, ...]
    sinks: tuple[str, ...]
    supervision: SupervisionPolicy = FAIL_FAST
    """How the session answers a node failure (``resolve_supervision``)."""

    @property
    def process_count(self) -> int:
        return sum(n.processes for n in self.nodes.values())

    @property
    def thread_count(self) -> int:
        return sum(n.threads for n in self.nodes.values())

    @property
    def survives_failures(self) -> bool:
        """A node failure may leave the session running (a policy that restarts, or a
        temporary node): rings must then outlive the nodes that use them."""
        return self.supervision.max_restarts > 0 or any(
            n.restart is RestartType.TEMPORARY for n in self.nodes.values()
        )

    @property
    def downstream(self) -> dict[str, frozenset[str]]:
        """Every node's transitive successors (for rest_for_one: what depends on a node)."""
        result: dict[str, frozenset[str]] = {}
        for node_id in reversed(self.order):  # successors first
            below: set[str] = set()
            for nxt in self.nodes[node_id].outputs:
                if nxt != CLIENT:
                    below |= {nxt, *result[nxt]}
            result[node_id] = frozenset(below)
        return result

    @property
    def executors(self) -> frozenset[str]:
        """The executors this session's nodes run on."""
        return frozenset(n.executor for n in self.nodes.values())

    @property
    def assignments(self) -> dict[str, Assignment]:
        return {nid: n.assignment for nid, n in self.nodes.items()}


def resolve_settings(manifest: Manifest, config: RuntimeConfig) -> SessionSettings:
    """The session's effective settings: manifest > runtime.toml > built-in defaults.

    Also the one place where a manifest's ``max_processes_per_session`` meets the runtime's
    cap (``limits.max_processes_per_session``): manifests are validated without knowing any
    runtime's limits, and a runtime only ever runs what it planned.
    """
    mp, defaults = manifest.multiprocess, config.multiprocess
    max_processes = mp.max_processes_per_session or defaults.max_processes_per_session
    refusal = config.limits.session_processes_refusal(max_processes)
    if refusal:
        path = "metadata.multiprocess.max_processes_per_session"
        raise ManifestError([ManifestIssue(path, refusal)], manifest.source)
    return SessionSettings(
        channel_capacity=mp.channel_capacity or defaults.channel_capacity,
        init_timeout_secs=float(mp.init_timeout_secs or defaults.init_timeout_secs),
        max_processes=max_processes,
        enable_backpressure=(
            mp.enable_backpressure if mp.enable_backpressure is not None else defaults.enable_backpressure
        ),
        grace_period_secs=defaults.grace_period_secs,
        python_executable=mp.python_executable or defaults.python_executable,
        close_timeout_secs=float(mp.close_timeout_secs or defaults.close_timeout_secs),
        fuse_chains=mp.fuse_chains if mp.fuse_chains is not None else defaults.fuse_chains,
    )


def resolve_supervision(manifest: Manifest, config: RuntimeConfig) -> SupervisionPolicy:
    """The session's policy: the manifest's ``metadata.supervision`` > runtime.toml's
    ``[supervision]`` > :data:`FAIL_FAST` (today's behaviour: a failed node fails the session).

    A policy is taken whole from the first place that sets one, never assembled key by key:
    its keys left out take ``SupervisionConfig``'s defaults (one_for_one, 3 restarts within
    5 s) in either place. Per-node restart types alone set no policy: with them the server's
    default still applies.
    """
    written = manifest.supervision if manifest.supervision is not None else _server_policy(config)
    if written is None:
        return FAIL_FAST
    return SupervisionPolicy(
        Strategy(written.strategy), max_restarts=written.max_restarts, within_secs=float(written.within_secs)
    )


def _server_policy(config: RuntimeConfig) -> SupervisionConfig | None:
    """runtime.toml's default policy, its unset keys filled in as a manifest's would be."""
    server, default = config.supervision, SupervisionConfig()
    if not server.sets_policy:
        return None
    return SupervisionConfig(
        strategy=default.strategy if server.strategy is None else server.strategy,
        max_restarts=default.max_restarts if server.max_restarts is None else server.max_restarts,
        within_secs=default.within_secs if server.within_secs is None else server.within_secs,
    )


def resolve_restart(spec: NodeSpec, config: RuntimeConfig) -> RestartType:
    """A node's restart type: its manifest entry's ``restart`` > runtime.toml's
    ``[supervision] restart`` (built in: transient)."""
    return RestartType(spec.restart or config.supervision.restart)


def routing_table(config: RuntimeConfig) -> RoutingTable:
    rules = [RoutingRule(r.pattern, r.executor, r.priority) for r in config.routing.rules]
    if config.routing.seed_rule:
        rules.append(SEED_RULE)
    return RoutingTable(
        explicit=dict(config.routing.explicit), rules=tuple(rules), default=config.routing.default
    )


def plan_session(
    manifest: Manifest, config: RuntimeConfig, *, executors: Mapping[str, Executor]
) -> SessionPlan:
    """Decide everything about a session; raise before anything starts if it cannot run.

    ``executors`` are this runtime's, by name: each node's executor is asked what it can run
    and where its edge ends live; routing to a name that is not there is an error.
    """
    settings = resolve_settings(manifest, config)
    table = routing_table(config)
    graph = manifest.graph
    overrides = manifest.multiprocess.executor_overrides
    nodes: dict[str, NodePlan] = {}
    issues: list[ManifestIssue] = []
    for index, spec in enumerate(manifest.nodes):
        cls = manifest.registry[spec.node_type]

        def unsupported(name: str, cls: type[Node[Any]] = cls) -> str | None:
            executor = executors.get(name)
            return executor.unsupported(cls) if executor is not None else None

        assignment = route(
            spec.id,
            spec.node_type,
            declared=cls.executor,
            table=table,
            overrides=overrides,
            host=spec.host,
            unsupported=unsupported,
        )
        path = _assignment_path(index, assignment, spec.id in overrides)
        issues += _placement_issues(path, spec.id, cls, assignment, executors)
        issues += _host_issues(index, spec, assignment, executors)
        issues += _capability_issues(index, spec.capabilities)
        executor = executors.get(assignment.executor)
        nodes[spec.id] = NodePlan(
            node_id=spec.id,
            node_type=spec.node_type,
            node_class=cls,
            params=manifest.params(spec.id),
            assignment=assignment,
            inputs=graph.predecessors(spec.id) or (CLIENT,),
            outputs=graph.successors(spec.id) or (CLIENT,),
            placement=executor.placement if executor is not None else Placement.SUPERVISOR,
            processes=executor.processes_per_node if executor is not None else 0,
            threads=executor.threads_per_node if executor is not None else 0,
            spec=spec,
            restart=resolve_restart(spec, config),
        )
    if any(node.processes for node in nodes.values()):
        issues += _executable_issues(settings.python_executable)
    if issues:
        raise ManifestError(issues, manifest.source)
    for chain in fused_chains(nodes, executors, fuse_on_request=settings.fuse_chains):
        for node_id in chain:
            node = nodes[node_id]
            # One unit: the head's worker (or remote call) runs the whole run.
            processes = node.processes if node_id == chain[0] else 0
            others = ", ".join(n for n in chain if n != node_id)
            reason = f"{node.assignment.reason}; fused with {others} (one unit, run by {chain[0]})"
            assignment = replace(node.assignment, reason=reason)
            nodes[node_id] = replace(node, chain=chain, processes=processes, assignment=assignment)
    plan = SessionPlan(
        manifest=manifest,
        settings=settings,
        nodes=nodes,
        edges=_edges(nodes),
        order=graph.topological_order,
        sources=graph.sources,
        sinks=graph.sinks,
        supervision=resolve_supervision(manifest, config),
    )
    if plan.process_count > settings.max_processes:
        raise ResourceLimitError(
            f"pipeline {manifest.name!r} needs {plan.process_count} worker processes but this session "
            f"may use at most {settings.max_processes} (max_processes_per_session)"
        )
    return plan


def fused_chains(
    nodes: Mapping[str, NodePlan], executors: Mapping[str, Executor], *, fuse_on_request: bool = False
) -> list[tuple[str, ...]]:
    """The maximal runs a → b → … of two or more nodes that one executor runs as a unit: each
    link is the only edge out of a and the only edge into b, and both run on the same executor,
    on the same host, which fuses chains — always (``Executor.fuses_chains``: remote) or when
    the session asks (``fuse_on_request``, ``Executor.fuses_on_request``: multiprocess), the
    two nodes' restart types agree and are not temporary (the run fails, restarts and stops as
    one; a temporary node stopped for good would leave the rest of its run nothing to do), and
    neither node class says ``fusible = False`` (it keeps a process of its own).
    (A sans-I/O walk over the plan's nodes.)"""

    def fuses(executor: Executor, a: NodePlan, b: NodePlan) -> bool:
        if executor.fuses_chains:
            return True
        return (
            executor.fuses_on_request
            and fuse_on_request
            and a.restart is b.restart
            and a.restart is not RestartType.TEMPORARY
            and a.node_class.fusible
            and b.node_class.fusible
        )

    def fusible(a: NodePlan, b: NodePlan) -> bool:
        executor = executors.get(a.executor)
        return (
            executor is not None
            and fuses(executor, a, b)
            and a.executor == b.executor
            and a.spec is not None
            and b.spec is not None
            and a.spec.host == b.spec.host
            and a.outputs == (b.node_id,)
            and b.inputs == (a.node_id,)
        )

    def follower(node: NodePlan) -> NodePlan | None:
        if len(node.outputs) != 1 or node.outputs[0] == CLIENT:
            return None
        nxt = nodes[node.outputs[0]]
        return nxt if fusible(node, nxt) else None

    chains = []
    for node in nodes.values():
        before = node.inputs[0] if len(node.inputs) == 1 and node.inputs[0] != CLIENT else None
        if before is not None and fusible(nodes[before], node):
            continue  # not the head of its run
        run = [node.node_id]
        while (nxt := follower(nodes[run[-1]])) is not None:
            run.append(nxt.node_id)
        if len(run) > 1:
            chains.append(tuple(run))
    return chains


def check_input_target(plan: SessionPlan, node_id: str) -> None:
    """Raise InputError unless ``node_id`` is a source of the plan (where client input goes)."""
    if node_id in plan.sources:
        return
    if node_id not in plan.nodes:
        raise InputError(
            f"input for unknown node {node_id!r} (this pipeline's inputs are: {', '.join(plan.sources)})"
        )
    feeders = ", ".join(plan.nodes[node_id].inputs)
    raise InputError(
        f"node {node_id!r} is not an input of this pipeline (it is fed by {feeders}); "
        f"send to one of: {', '.join(plan.sources)}"
    )


def check_input_kind(plan: SessionPlan, node_id: str, frame: Frame) -> None:
    """Raise unless source node ``node_id`` can take ``frame``.

    :class:`FrameKindError` if the node does not accept frames of that kind;
    :class:`FrameError` if the frame could never reach the worker process it
    would flow to (see ``ipc.shm_refusal``) — refused here, before the
    session takes it, so no node that merely passed it on is blamed for it.
    """
    node = plan.nodes[node_id]
    if frame.kind not in node.node_class.accepts:
        accepted = ", ".join(sorted(k.label for k in node.node_class.accepts))
        raise FrameKindError(
            f"node {node_id!r} ({node.node_type}) accepts {accepted} frames, not {frame.kind.label}"
        )
    refusal = shm_refusal(frame)
    if refusal is not None:
        worker = first_worker_from(plan, node_id)
        if worker is not None:
            via = "" if worker == node_id else f" (it flows on to worker node {worker!r})"
            raise FrameError(f"input for node {node_id!r}{via}: {refusal}")


def first_worker_from(plan: SessionPlan, node_id: str) -> str | None:
    """The first node at or downstream of ``node_id`` (breadth first) that runs in a worker
    process, or None if everything from there on runs in the supervisor."""
    queue, seen = [node_id], {node_id}
    for current in queue:  # (grows while iterating: a breadth-first walk)
        node = plan.nodes[current]
        if not node.on_supervisor:
            return current
        for nxt in node.outputs:
            if nxt != CLIENT and nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return None


def _edges(nodes: Mapping[str, NodePlan]) -> tuple[EdgePlan, ...]:
    def on_supervisor(endpoint: str) -> bool:
        return endpoint == CLIENT or nodes[endpoint].on_supervisor

    edges = []
    for node in nodes.values():
        for src in node.inputs:
            transport: Transport = "memory" if on_supervisor(src) and node.on_supervisor else "shm"
            edges.append(EdgePlan(src, node.node_id, transport))
        if node.outputs == (CLIENT,):
            edges.append(EdgePlan(node.node_id, CLIENT, "memory" if node.on_supervisor else "shm"))
    return tuple(edges)


def _assignment_path(index: int, assignment: Assignment, overridden: bool) -> str:
    """Where in the manifest the node's executor was decided, for error messages."""
    if assignment.executor == REMOTE:
        return f"nodes[{index}].host"
    if overridden:
        return f"metadata.multiprocess.executor_overrides.{assignment.node_id}"
    return f"nodes[{index}].node_type"


def _placement_issues(
    path: str, node_id: str, cls: type[Node[Any]], assignment: Assignment, executors: Mapping[str, Executor]
) -> list[ManifestIssue]:
    executor = executors.get(assignment.executor)
    if executor is None:
        if assignment.executor == REMOTE:
            what = "asks for a remote host, but this runtime has no remote executor"
        else:
            what = f"routes to the {assignment.executor} executor ({assignment.reason}), which this runtime does not have"
        return [ManifestIssue(path, f"node {node_id!r} {what} (available: {', '.join(sorted(executors))})")]
    problem = executor.unsupported(cls)
    if problem is not None:
        # Only a request can get here: a rule's choice falls back to the default executor.
        return [
            ManifestIssue(
                path,
                f"node {node_id!r} routes to {assignment.executor} ({assignment.reason}), which cannot run "
                f"it: {problem}",
            )
        ]
    return []


def _host_issues(
    index: int, spec: NodeSpec, assignment: Assignment, executors: Mapping[str, Executor]
) -> list[ManifestIssue]:
    executor = executors.get(assignment.executor)
    if executor is None:
        return []
    if spec.host is None:
        if not executor.needs_host:
            return []
        return [
            ManifestIssue(
                f"nodes[{index}]",
                f"node {spec.id!r} routes to {assignment.executor} ({assignment.reason}), which runs a "
                'node on another server: give the node a host ("host": "HOST:PORT")',
            )
        ]
    refusal = executor.refuses_host(spec.host)
    return [] if refusal is None else [ManifestIssue(f"nodes[{index}].host", f"node {spec.id!r}: {refusal}")]


def _executable_issues(requested: str) -> list[ManifestIssue]:
    """Workers run on this runtime's interpreter; accept a request that names the same one."""
    if not requested:
        return []
    ours = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if requested in {"python", f"python{sys.version_info.major}", ours}:
        return []
    if os.path.isabs(requested) and os.path.realpath(requested) == os.path.realpath(sys.executable):
        return []
    return [
        ManifestIssue(
            "metadata.multiprocess.python_executable",
            f"workers run on this runtime's interpreter ({sys.executable}, {ours}); {requested!r} is not it",
        )
    ]


def _capability_issues(index: int, caps: Any) -> list[ManifestIssue]:
    if caps is None:
        return []
    issues = []
    path = f"nodes[{index}].capabilities"
    if caps.gpu is not None and caps.gpu.required:
        issues.append(
            ManifestIssue(f"{path}.gpu.required", "a GPU is required, but this runtime schedules no GPUs")
        )
    cores = os.cpu_count() or 1
    if caps.cpu is not None and caps.cpu.cores > cores:
        issues.append(
            ManifestIssue(f"{path}.cpu.cores", f"needs {caps.cpu.cores} cores, this machine has {cores}")
        )
    if caps.cpu is not None and caps.cpu.arch not in ("any", os.uname().machine):
        issues.append(
            ManifestIssue(f"{path}.cpu.arch", f"needs {caps.cpu.arch}, this machine is {os.uname().machine}")
        )
    total_gb = _total_memory_gb()
    if caps.memory_gb is not None and total_gb is not None and caps.memory_gb > total_gb:
        issues.append(
            ManifestIssue(
                f"{path}.memory_gb", f"needs {caps.memory_gb:g} GB, this machine has {total_gb:.1f} GB"
            )
        )
    return issues


def _total_memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return None
