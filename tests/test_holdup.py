"""Which nodes hold a closing session up (sans-I/O): decided from what the edges show."""

from __future__ import annotations

from nursery_pipes import Runtime
from nursery_pipes.runtime._holdup import Flow, holdups
from nursery_pipes.runtime._plan import SessionPlan

WAITING_FOR_INPUT = Flow(queued_in=0, inputs_ended=False, output_full=False)
WAITING_FOR_OUTPUT = Flow(queued_in=5, inputs_ended=False, output_full=True)
FRAMES_QUEUED = Flow(queued_in=5, inputs_ended=False, output_full=False)
FLUSHING = Flow(queued_in=0, inputs_ended=True, output_full=False)


def plan(*edges: tuple[str, str]) -> SessionPlan:
    ids = sorted({n for edge in edges for n in edge})
    return Runtime().plan(
        {
            "version": "v1",
            "metadata": {"name": "holdup"},
            "nodes": [{"id": i, "node_type": "PassThrough"} for i in ids],
            "connections": [{"from": a, "to": b} for a, b in edges],
        }
    )


CHAIN = plan(("a", "b"), ("b", "c"))


def test_a_node_flushing_holds_up_the_nodes_after_it() -> None:
    assert holdups(CHAIN, {"b": FLUSHING, "c": WAITING_FOR_INPUT}) == (["b"], ["c"])


def test_a_node_with_frames_queued_holds_up_the_node_blocked_sending_to_it() -> None:
    flows = {"a": WAITING_FOR_OUTPUT, "b": FRAMES_QUEUED, "c": WAITING_FOR_INPUT}
    assert holdups(CHAIN, flows) == (["b"], ["a", "c"])


def test_a_node_whose_consumer_is_full_is_not_to_blame() -> None:
    assert holdups(CHAIN, {"b": WAITING_FOR_OUTPUT, "c": FRAMES_QUEUED}) == (["c"], ["b"])


def test_parallel_branches_can_both_hold_up() -> None:
    fork = plan(("s", "x"), ("s", "y"), ("x", "j"), ("y", "j"))
    flows = {"x": FLUSHING, "y": FRAMES_QUEUED, "j": WAITING_FOR_INPUT}
    assert holdups(fork, flows) == (["x", "y"], ["j"])


def test_when_every_node_looks_like_it_waits_the_graph_decides() -> None:
    # A worker's rings are read while it runs: the snapshot may show nobody at work.
    flows = {"a": WAITING_FOR_OUTPUT, "b": WAITING_FOR_INPUT, "c": WAITING_FOR_INPUT}
    assert holdups(CHAIN, flows) == (["a"], ["b", "c"])
    assert holdups(CHAIN, {"b": WAITING_FOR_OUTPUT, "c": WAITING_FOR_OUTPUT}) == (["b"], ["c"])
