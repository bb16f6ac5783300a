"""The pipeline graph: stages, sources, sinks, fan-in/out, and naming a cycle. Sans-I/O."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nursery_pipes.manifest import CycleError, Graph
from nursery_pipes.manifest._graph import find_cycle


def test_chain() -> None:
    g = Graph(["a", "b", "c"], [("a", "b"), ("b", "c")])
    assert g.stages == (("a",), ("b",), ("c",))
    assert g.topological_order == ("a", "b", "c")
    assert (g.sources, g.sinks) == (("a",), ("c",))
    assert g.successors("a") == ("b",)
    assert g.predecessors("a") == ()
    assert g.predecessors("c") == ("b",)


def test_fan_out_and_fan_in() -> None:
    #    a → b → d
    #      ↘ c ↗ ↘
    #            e
    g = Graph(["a", "b", "c", "d", "e"], [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("c", "e")])
    assert [g.fan_out(n) for n in g.nodes] == [2, 1, 2, 0, 0]
    assert [g.fan_in(n) for n in g.nodes] == [0, 1, 1, 2, 1]
    assert g.successors("c") == ("d", "e")
    assert g.predecessors("d") == ("b", "c")
    assert g.stages == (("a",), ("b", "c"), ("d", "e"))
    assert (g.sources, g.sinks) == (("a",), ("d", "e"))


def test_stage_order_follows_manifest_order_not_names() -> None:
    g = Graph(["z", "y", "x", "w"], [("z", "w"), ("y", "w")])
    assert g.stages == (("z", "y", "x"), ("w",))
    assert g.sources == ("z", "y", "x")
    assert g.sinks == ("x", "w")


def test_longest_path_decides_the_stage() -> None:
    g = Graph(["a", "b", "c"], [("a", "c"), ("a", "b"), ("b", "c")])
    assert g.stages == (("a",), ("b",), ("c",))


def test_isolated_nodes_are_sources_and_sinks() -> None:
    g = Graph(["solo", "a", "b"], [("a", "b")])
    assert g.sources == ("solo", "a")
    assert g.sinks == ("solo", "b")
    assert g.stages == (("solo", "a"), ("b",))


def test_edges_keep_manifest_order_and_graph_equality() -> None:
    edges = [("b", "c"), ("a", "b")]
    g = Graph(["a", "b", "c"], edges)
    assert g.edges == (("b", "c"), ("a", "b"))
    assert g == Graph(("a", "b", "c"), iter(edges))
    assert g != Graph(["a", "b", "c"], list(reversed(edges)))


def test_edge_to_unknown_node_is_refused() -> None:
    with pytest.raises(ValueError, match="edge a → zz refers to unknown node 'zz'"):
        Graph(["a"], [("a", "zz")])


@pytest.mark.parametrize(
    ("nodes", "edges", "cycle"),
    [
        ("ab", [("a", "b"), ("b", "a")], ["a", "b", "a"]),
        ("a", [("a", "a")], ["a", "a"]),
        ("abc", [("a", "b"), ("b", "c"), ("c", "a")], ["a", "b", "c", "a"]),
        ("abc", [("c", "a"), ("b", "c"), ("a", "b")], ["a", "b", "c", "a"]),
        ("cab", [("a", "b"), ("b", "c"), ("c", "a")], ["c", "a", "b", "c"]),
        ("sxyz", [("s", "x"), ("x", "y"), ("y", "z"), ("z", "x")], ["x", "y", "z", "x"]),
    ],
)
def test_cycle_named_in_edge_order_from_the_earliest_node(
    nodes: str, edges: list[tuple[str, str]], cycle: list[str]
) -> None:
    with pytest.raises(CycleError) as info:
        Graph(list(nodes), edges)
    assert list(info.value.cycle) == cycle
    assert str(info.value) == "cycle: " + " → ".join(cycle)
    assert isinstance(info.value, ValueError)
    assert find_cycle(list(nodes), edges) == cycle


def test_find_cycle_ignores_edges_to_unknown_nodes() -> None:
    assert find_cycle(["a", "b"], [("a", "b"), ("b", "ghost"), ("ghost", "a")]) is None
    assert find_cycle(["a", "b"], [("a", "b")]) is None
    assert find_cycle([], []) is None


# ---------------------------------------------------------------------------------------------
# Properties


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]]]:
    n = draw(st.integers(1, 12))
    nodes = [f"n{i}" for i in range(n)]
    rank = draw(st.permutations(range(n)))
    pairs = [(a, b) for i, a in enumerate(nodes) for j, b in enumerate(nodes) if rank[i] < rank[j]]
    edges = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=25)) if pairs else []
    return nodes, edges


@settings(max_examples=150, deadline=None)
@given(dags())
def test_property_every_edge_goes_to_a_later_stage(dag: tuple[list[str], list[tuple[str, str]]]) -> None:
    nodes, edges = dag
    g = Graph(nodes, edges)
    stage = {node: k for k, members in enumerate(g.stages) for node in members}
    assert sorted(stage) == sorted(nodes)  # every node in exactly one stage
    assert sum(len(s) for s in g.stages) == len(nodes)
    for src, dst in edges:
        assert stage[src] < stage[dst]
    for node in nodes:  # each node sits right after its latest input
        preds = g.predecessors(node)
        assert stage[node] == (max(stage[p] for p in preds) + 1 if preds else 0)
    assert set(g.sources) == {n for n in nodes if g.fan_in(n) == 0}
    assert set(g.sinks) == {n for n in nodes if g.fan_out(n) == 0}
    assert find_cycle(nodes, edges) is None


@settings(max_examples=150, deadline=None)
@given(dags(), st.data())
def test_property_a_back_edge_makes_a_named_cycle(
    dag: tuple[list[str], list[tuple[str, str]]], data: st.DataObject
) -> None:
    nodes, edges = dag
    if not edges:
        extra = data.draw(st.sampled_from(nodes))
        edges = [(extra, extra)]
    else:
        a, b = data.draw(st.sampled_from(edges))
        edges = [*edges, (b, a)]
    cycle = find_cycle(nodes, edges)
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    members = cycle[:-1]
    assert len(set(members)) == len(members)
    assert all((x, y) in edges for x, y in itertools.pairwise(cycle))
    assert members[0] == min(members, key=nodes.index)  # starts at the earliest node
