"""The session and node state tables, and the table in docs/design.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nursery_pipes._states import (
    NODE_TRANSITIONS,
    SESSION_TRANSITIONS,
    IllegalTransition,
    NodeEvent,
    NodeState,
    SessionEvent,
    SessionState,
    StateMachine,
)

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def test_session_happy_path() -> None:
    m = StateMachine("s", SessionState.INITIALIZING, SESSION_TRANSITIONS)
    for event, state in [
        (SessionEvent.ALL_READY, SessionState.READY),
        (SessionEvent.INPUT, SessionState.EXECUTING),
        (SessionEvent.INPUT, SessionState.EXECUTING),
        (SessionEvent.CLOSE, SessionState.TERMINATING),
        (SessionEvent.STOPPED, SessionState.TERMINATED),
    ]:
        assert m.fire(event) is state


def test_close_while_initializing_is_recorded_and_carried_out_at_ready() -> None:
    """close() before READY is legal: the state stays INITIALIZING (the session remembers the
    request) and the session fires CLOSE again right after ALL_READY."""
    m = StateMachine("s", SessionState.INITIALIZING, SESSION_TRANSITIONS)
    assert m.fire(SessionEvent.CLOSE) is SessionState.INITIALIZING
    assert m.fire(SessionEvent.ALL_READY) is SessionState.READY
    assert m.fire(SessionEvent.CLOSE) is SessionState.TERMINATING
    assert m.fire(SessionEvent.STOPPED) is SessionState.TERMINATED


@pytest.mark.parametrize(
    "start", [SessionState.INITIALIZING, SessionState.READY, SessionState.EXECUTING, SessionState.TERMINATING]
)
def test_every_live_session_state_can_fail_and_then_terminate(start: SessionState) -> None:
    m = StateMachine("s", start, SESSION_TRANSITIONS)
    assert m.fire(SessionEvent.FAIL) is SessionState.ERROR
    assert m.fire(SessionEvent.STOPPED) is SessionState.TERMINATED


def test_terminated_is_final() -> None:
    for event in SessionEvent:
        assert (SessionState.TERMINATED, event) not in SESSION_TRANSITIONS


def test_every_session_state_is_reachable_and_can_reach_terminated() -> None:
    reachable = {SessionState.INITIALIZING}
    changed = True
    while changed:
        changed = False
        for (src, _), dst in SESSION_TRANSITIONS.items():
            if src in reachable and dst not in reachable:
                reachable.add(dst)
                changed = True
    assert reachable == set(SessionState)
    for state in SessionState:
        assert _can_reach(state, SessionState.TERMINATED, SESSION_TRANSITIONS)


def test_node_lifecycle_and_processing_loop() -> None:
    m = StateMachine("n", NodeState.IDLE, NODE_TRANSITIONS)
    m.fire(NodeEvent.START)
    m.fire(NodeEvent.INIT_DONE)
    for _ in range(3):
        assert m.fire(NodeEvent.FRAME) is NodeState.PROCESSING
        assert m.fire(NodeEvent.FRAME_DONE) is NodeState.READY
    assert m.fire(NodeEvent.STOP) is NodeState.STOPPING
    assert m.fire(NodeEvent.FINISHED) is NodeState.STOPPED


def test_every_node_state_reaches_a_final_state() -> None:
    for state in NodeState:
        assert _can_reach(state, NodeState.STOPPED, NODE_TRANSITIONS) or _can_reach(
            state, NodeState.ERROR, NODE_TRANSITIONS
        )


def test_illegal_transition_names_machine_state_and_event() -> None:
    m = StateMachine("node asr", NodeState.IDLE, NODE_TRANSITIONS)
    with pytest.raises(IllegalTransition, match=r"node asr: event FRAME is not allowed in state IDLE"):
        m.fire(NodeEvent.FRAME)
    assert m.state is NodeState.IDLE


def test_on_change_sees_only_real_changes() -> None:
    seen = []
    m = StateMachine(
        "s", SessionState.READY, SESSION_TRANSITIONS, on_change=lambda a, b, e: seen.append((a, b, e))
    )
    m.fire(SessionEvent.INPUT)
    m.fire(SessionEvent.INPUT)  # EXECUTING → EXECUTING: no change reported
    assert seen == [(SessionState.READY, SessionState.EXECUTING, SessionEvent.INPUT)]


@pytest.mark.parametrize(
    ("title", "table"),
    [("Session transitions", SESSION_TRANSITIONS), ("Node transitions", NODE_TRANSITIONS)],
)
def test_design_doc_shows_the_same_tables(title: str, table: dict) -> None:  # type: ignore[type-arg]
    text = DESIGN.read_text(encoding="utf-8")
    section = text.split(f"### {title}", 1)[1].split("###", 1)[0]
    rows = set(re.findall(r"^\|\s*(\w+)\s*\|\s*(\w+)\s*\|\s*(\w+)\s*\|$", section, flags=re.M))
    documented = {(a, b, c) for a, b, c in rows if a.isupper()}
    actual = {(src.name, event.name, dst.name) for (src, event), dst in table.items()}
    assert documented == actual


def _can_reach(start: object, goal: object, table: dict) -> bool:  # type: ignore[type-arg]
    seen = {start}
    frontier = [start]
    while frontier:
        state = frontier.pop()
        if state == goal:
            return True
        for (src, _), dst in table.items():
            if src == state and dst not in seen:
                seen.add(dst)
                frontier.append(dst)
    return False
