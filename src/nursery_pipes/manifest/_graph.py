"""The pipeline graph: nodes joined by directed edges. Sans-I/O.

``Graph`` answers the questions the runtime asks before it starts anything:
is it acyclic (and if not, which cycle), in which order can nodes start and
flush (topological stages), which nodes are sources (take client input) and
sinks (produce client output), and who feeds whom (fan-in / fan-out).
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["CycleError", "Graph"]


class CycleError(ValueError):
    """The graph has a cycle; ``cycle`` lists it closed, e.g. ``['a', 'b', 'a']``."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = tuple(cycle)
        super().__init__("cycle: " + " → ".join(self.cycle))


@dataclass(frozen=True)
class Graph:
    """An immutable DAG over node ids (edges keep their manifest order).

    >>> g = Graph(["a", "b", "c"], [("a", "b"), ("a", "c")])
    >>> g.sources, g.sinks, g.stages
    (('a',), ('b', 'c'), (('a',), ('b', 'c')))
    """

    nodes: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]
    _succ: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _pred: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _stages: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False)

    def __init__(self, nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> None:
        node_tuple = tuple(nodes)
        edge_tuple = tuple(edges)
        known = set(node_tuple)
        for src, dst in edge_tuple:
            if src not in known or dst not in known:
                missing = src if src not in known else dst
                raise ValueError(f"edge {src} → {dst} refers to unknown node {missing!r}")
        succ: dict[str, list[str]] = {n: [] for n in node_tuple}
        pred: dict[str, list[str]] = {n: [] for n in node_tuple}
        for src, dst in edge_tuple:
            succ[src].append(dst)
            pred[dst].append(src)
        object.__setattr__(self, "nodes", node_tuple)
        object.__setattr__(self, "edges", edge_tuple)
        object.__setattr__(self, "_succ", {k: tuple(v) for k, v in succ.items()})
        object.__setattr__(self, "_pred", {k: tuple(v) for k, v in pred.items()})
        object.__setattr__(self, "_stages", self._compute_stages())

    def _compute_stages(self) -> tuple[tuple[str, ...], ...]:
        order = {node: i for i, node in enumerate(self.nodes)}
        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
        for node in self.nodes:
            sorter.add(node, *self._pred[node])
        try:
            sorter.prepare()
        except graphlib.CycleError as exc:
            raise CycleError(_canonical_cycle(exc.args[1], order, set(self.edges))) from None
        stages: list[tuple[str, ...]] = []
        while sorter.is_active():
            ready = tuple(sorted(sorter.get_ready(), key=order.__getitem__))
            stages.append(ready)
            sorter.done(*ready)
        return tuple(stages)

    @property
    def stages(self) -> tuple[tuple[str, ...], ...]:
        """Nodes grouped so that every node comes after all of its inputs."""
        return self._stages

    @property
    def topological_order(self) -> tuple[str, ...]:
        return tuple(node for stage in self._stages for node in stage)

    @property
    def sources(self) -> tuple[str, ...]:
        """Nodes without inputs: these receive the client's data."""
        return tuple(n for n in self.nodes if not self._pred[n])

    @property
    def sinks(self) -> tuple[str, ...]:
        """Nodes without outputs: their frames are the pipeline's results."""
        return tuple(n for n in self.nodes if not self._succ[n])

    def successors(self, node: str) -> tuple[str, ...]:
        return self._succ[node]

    def predecessors(self, node: str) -> tuple[str, ...]:
        return self._pred[node]

    def fan_in(self, node: str) -> int:
        return len(self._pred[node])

    def fan_out(self, node: str) -> int:
        return len(self._succ[node])


def _canonical_cycle(raw: Sequence[str], order: dict[str, int], edges: set[tuple[str, str]]) -> list[str]:
    """graphlib reports a cycle from an arbitrary node, along dependency (reversed) edges;
    make it follow the edges, starting at the node that comes first in the manifest,
    closed (a → b → a)."""
    cycle = list(raw)[:-1] if len(raw) > 1 else list(raw)
    if len(cycle) > 1 and (cycle[0], cycle[1]) not in edges:
        cycle.reverse()
    start = min(range(len(cycle)), key=lambda i: order.get(cycle[i], 0))
    rotated = cycle[start:] + cycle[:start]
    return [*rotated, rotated[0]]


def find_cycle(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[str] | None:
    """The first cycle in the graph (closed), or None; edges to unknown nodes are ignored."""
    node_list = list(nodes)
    known = set(node_list)
    try:
        Graph(node_list, [(a, b) for a, b in edges if a in known and b in known])
    except CycleError as exc:
        return list(exc.cycle)
    return None
