"""Control signals overtake the frames queued for a node — in every executor.

A slow node (0.3 s a frame) gets five frames; an ``interrupt`` sent right after them reaches
it ahead of the four still queued: those are dropped and the one in flight aborted, all
reported, and the node carries on with the next frame. Real worker processes for
``multiprocess``; the leak fixture checks every test.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import trio

from nursery_pipes import InputError, Node, TextFrame
from nursery_pipes.nodes import Signal
from nursery_pipes.runtime import FramesDropped, Output, SignalHandled, SignalSent
from nursery_pipes.testing import make_runtime

pytestmark = pytest.mark.slow

EXECUTORS = ["inprocess", "thread", "multiprocess"]


def manifest(executor: str, *, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    nodes = [{"id": "slow", "node_type": "SleepNode", "params": {"process_seconds": 0.3}}, *(extra or [])]
    return {
        "version": "v1",
        "metadata": {
            "name": "signals",
            "multiprocess": {
                "executor_overrides": {n["id"]: executor for n in nodes},
                "channel_capacity": 16,
            },
        },
        "nodes": nodes,
        "connections": [{"from": a["id"], "to": b["id"]} for a, b in itertools.pairwise(nodes)],
    }


async def collect_until(session: Any, done: Any) -> list[Any]:
    events = []
    with trio.fail_after(20):
        async for event in session.events():
            events.append(event)
            if done(events):
                return events
    return events


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_an_interrupt_overtakes_the_queued_frames(executor: str) -> None:
    async with make_runtime() as runtime, runtime.open_session(manifest(executor)) as session:
        for n in range(1, 6):
            await session.send("slow", TextFrame(text=f"f{n}"))
        number = session.signal("interrupt", to=["slow"], payload={"why": "barge-in"})
        events = await collect_until(session, lambda ev: any(isinstance(e, SignalHandled) for e in ev))
        await session.send("slow", TextFrame(text="after"))
        await session.close()
        events += [e async for e in session.events()]
    [handled] = [e for e in events if isinstance(e, SignalHandled)]
    assert (handled.node_id, handled.name, handled.signal_id, handled.origin) == (
        "slow",
        "interrupt",
        number,
        "client",
    )
    given_up = {*handled.dropped, *([handled.aborted] if handled.aborted is not None else [])}
    outputs = [(e.seq, e.frame.text) for e in events if isinstance(e, Output)]
    delivered = {seq for seq, _ in outputs}
    assert handled.dropped, "frames were queued behind the one in flight: the signal overtook them"
    assert given_up | (delivered - {6}) == {1, 2, 3, 4, 5}
    assert not given_up & delivered  # each frame either delivered or reported, never both
    assert (6, "after") in outputs  # the node carries on
    dropped = [e for e in events if isinstance(e, FramesDropped)]
    assert sorted(s for e in dropped for s in e.sequences) == sorted(given_up)
    assert "dropped by signal 'interrupt' (from client)" in dropped[0].reason


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_a_signal_the_node_does_not_drop_for_keeps_every_frame(executor: str) -> None:
    async with make_runtime() as runtime, runtime.open_session(manifest(executor)) as session:
        for n in range(1, 4):
            await session.send("slow", TextFrame(text=f"f{n}"))
        session.signal("mark", to=["slow"])  # user-defined: the default on_signal keeps frames
        await session.close()
        events = [e async for e in session.events()]
    [handled] = [e for e in events if isinstance(e, SignalHandled)]
    assert (handled.dropped, handled.aborted) == ((), None)
    assert [e.seq for e in events if isinstance(e, Output)] == [1, 2, 3]
    assert not [e for e in events if isinstance(e, FramesDropped)]


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_a_node_signals_against_the_data_direction(executor: str) -> None:
    """A node downstream interrupts the slow node upstream of it, from wherever it runs."""
    tail = {"id": "tail", "node_type": "SendSignalNode", "params": {"when_text": "f1", "to": ["slow"]}}
    async with make_runtime() as runtime, runtime.open_session(manifest(executor, extra=[tail])) as session:
        for n in range(1, 6):
            await session.send("slow", TextFrame(text=f"f{n}"))
        events = await collect_until(session, lambda ev: any(isinstance(e, SignalHandled) for e in ev))
        await session.close()
        events += [e async for e in session.events()]
    [handled] = [e for e in events if isinstance(e, SignalHandled)]
    assert (handled.node_id, handled.origin) == ("slow", "tail")
    [sent] = [e for e in events if isinstance(e, SignalSent)]
    assert (sent.name, sent.origin, sent.targets, sent.signal_id) == (
        "interrupt",
        "tail",
        ("slow",),
        handled.signal_id,
    )
    assert events.index(sent) < events.index(handled)  # told at once, before the node took it
    outputs = [e.seq for e in events if isinstance(e, Output)]
    assert outputs[0] == 1  # f1 got through and set it off
    assert handled.dropped  # f3… were still queued at the slow node
    assert set(outputs) | set(handled.dropped) | {handled.aborted} - {None} == {1, 2, 3, 4, 5}


class Shy(Node):
    """Keeps its frames on interrupt, and counts the signals it saw."""

    executor = "inprocess"

    seen: ClassVar[list[str]] = []

    def on_signal(self, signal: Signal) -> bool:
        Shy.seen.append(f"{signal.name}:{signal.payload.get('n')}")
        return False

    def process(self, frame: Any) -> Iterator[Any]:
        yield frame


async def test_on_signal_can_refuse_to_drop_and_sees_the_payload() -> None:
    doc = {
        "version": "v1",
        "metadata": {"name": "shy"},
        "nodes": [{"id": "shy", "node_type": "Shy"}],
        "connections": [],
    }
    Shy.seen = []
    async with make_runtime(Shy) as runtime, runtime.open_session(doc) as session:
        await session.send("shy", TextFrame(text="x"))
        session.signal("interrupt", payload={"n": 7})
        await session.close()
        events = [e async for e in session.events()]
    assert Shy.seen == ["interrupt:7"]
    assert [e.seq for e in events if isinstance(e, Output)] == [1]


async def test_bad_signals_are_input_errors_naming_what() -> None:
    async with make_runtime() as runtime, runtime.open_session(manifest("inprocess")) as session:
        with pytest.raises(InputError, match="signal for unknown node 'nope'"):
            session.signal("interrupt", to=["nope"])
        with pytest.raises(InputError, match="signal name 'Loud!' must be a lower-case word"):
            session.signal("Loud!")
        session.cancel()


async def test_a_grpc_client_interrupts_and_sees_what_each_node_dropped() -> None:
    from service_fixtures import serving

    from nursery_pipes.client import ChunkOutput, StreamEvent

    doc = manifest("multiprocess")

    async def run(stream_events: list[Any], address: str) -> None:
        from nursery_pipes.client import Client

        async with Client(address) as client, client.stream(doc) as stream:
            for n in range(1, 6):
                await stream.send("slow", TextFrame(text=f"f{n}"))
            await stream.signal("interrupt", to=["slow"], payload={"why": "barge-in"})
            await stream.signal("interrupt", to=["nobody"])  # refused, the stream goes on
            async for event in stream:
                stream_events.append(event)
                if isinstance(event, StreamEvent) and event.kind == "signal_handled":
                    break
            await stream.send("slow", TextFrame(text="after"))
            await stream.close()
            stream_events.extend([e async for e in stream])

    events: list[Any] = []
    async with serving() as served:
        await served.aio(run, events, served.address)
    handled = [e.message for e in events if isinstance(e, StreamEvent) and e.kind == "signal_handled"]
    assert [(h.node_id, h.name, h.origin) for h in handled] == [("slow", "interrupt", "client")]
    sent = [e.message for e in events if isinstance(e, StreamEvent) and e.kind == "signal_sent"]
    assert [(s.name, s.origin, list(s.node_ids)) for s in sent] == [("interrupt", "client", ["slow"])]
    rejected = [e.message for e in events if isinstance(e, StreamEvent) and e.kind == "rejected"]
    assert any("signal 'interrupt' not sent" in r.message and "'nobody'" in r.message for r in rejected)
    outputs = [(e.sequence, e.frame.text) for e in events if isinstance(e, ChunkOutput)]
    given_up = set(handled[0].dropped_sequences) | (
        {handled[0].aborted_sequence} if handled[0].aborted_sequence is not None else set()
    )
    assert handled[0].dropped_sequences
    assert given_up | {s for s, _ in outputs if s != 6} == {1, 2, 3, 4, 5}
    assert (6, "after") in outputs


async def test_the_readme_example_runs() -> None:
    """README "Control signals": the interrupt overtakes the queued reply."""
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Control signals: interrupt what is queued", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    [handled] = await namespace["main"]()
    assert (handled.node_id, handled.name) == ("tts", "interrupt")
    assert handled.dropped or handled.aborted is not None  # the second reply never got out


async def test_the_cli_sends_signals_locally_and_through_a_server(tmp_path: Any) -> None:
    """``nursery-pipes run --signal 5:interrupt@slow``: after the 5th input the slow node is
    interrupted; the JSON summary says what it dropped — run here and through ``serve``."""
    import json
    import sys

    from service_fixtures import serve_process

    doc = tmp_path / "slow.json"
    doc.write_text(json.dumps(manifest("multiprocess")), encoding="utf-8")
    lines = tmp_path / "in.jsonl"
    lines.write_text("".join(f'{{"n": {n}}}\n' for n in range(1, 7)), encoding="utf-8")
    config = tmp_path / "runtime.toml"
    config.write_text("[nodes]\ntesting = true\n", encoding="utf-8")

    async def cli(*args: str) -> Any:
        with trio.fail_after(60):
            return await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "nursery_pipes",
                    "run",
                    str(doc),
                    "-i",
                    f"slow={lines}",
                    "--json",
                    *args,
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

    bad = await cli("--config", str(config), "--signal", "9:interrupt@slow")
    assert bad.returncode == 2
    assert "--signal: after 9 input frames, but there are only 6" in bad.stderr.decode()
    runs = [await cli("--config", str(config), "--signal", "6:interrupt@slow")]
    async with serve_process() as server:
        runs.append(await cli("--server", server.address, "--signal", "6:interrupt@slow"))
    for done in runs:
        assert done.returncode == 0, done.stderr.decode()
        summary = json.loads(done.stdout)
        [handled] = summary["signals"]
        assert (handled["node"], handled["signal"]) == ("slow", "interrupt")
        assert handled["dropped"], summary  # 0.3 s a frame: frames were still queued
        delivered = len(summary["outputs"].get("slow", []))
        lost = len(handled["dropped"]) + (handled["aborted"] is not None)
        assert delivered + lost == 6


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_an_idle_node_takes_a_signal_without_waiting_for_a_frame(executor: str) -> None:
    """Nothing queued, nothing in flight: the node still runs on_signal and answers at once
    (a supervisor-side pump is woken; a worker looks between two waits on its inputs)."""
    async with make_runtime() as runtime, runtime.open_session(manifest(executor)) as session:
        session.signal("mark", to=["slow"])
        with trio.fail_after(5):
            events = await collect_until(session, lambda ev: any(isinstance(e, SignalHandled) for e in ev))
        session.cancel()
    [handled] = [e for e in events if isinstance(e, SignalHandled)]
    assert (handled.node_id, handled.dropped, handled.aborted) == ("slow", (), None)


def blocking_call(executor: str, call_seconds: float) -> dict[str, Any]:
    node = {"id": "call", "node_type": "BlockingCallNode", "params": {"call_seconds": call_seconds}}
    return {
        "version": "v1",
        "metadata": {"name": "cancel-work", "multiprocess": {"executor_overrides": {"call": executor}}},
        "nodes": [node],
        "connections": [],
    }


@pytest.mark.parametrize("executor", ["thread", "multiprocess"])
async def test_a_signal_stops_the_call_in_flight_of_a_node_that_can_cancel_its_work(executor: str) -> None:
    """A 30 s blocking call (a model run in C, say) gives way to an interrupt at once: the
    node's cancel_work runs while the call does, the call raises, and that is the abort the
    interrupt asked for — reported as dropped, not a failure."""
    async with make_runtime() as runtime, runtime.open_session(blocking_call(executor, 30.0)) as session:
        await session.send("call", TextFrame(text="f1"))
        await session.send("call", TextFrame(text="f2"))
        await trio.sleep(0.5)  # f1's call is under way
        session.signal("interrupt", to=["call"])
        with trio.fail_after(5):  # waiting for the call to end would take 30 s
            events = await collect_until(session, lambda ev: any(isinstance(e, SignalHandled) for e in ev))
        await session.close()
        events += [e async for e in session.events()]
    [handled] = [e for e in events if isinstance(e, SignalHandled)]
    assert (handled.node_id, handled.aborted, handled.dropped) == ("call", 1, (2,))
    assert not [e for e in events if isinstance(e, Output)]
    assert sorted(s for e in events if isinstance(e, FramesDropped) for s in e.sequences) == [1, 2]
    assert session.state.name == "TERMINATED"  # closed normally (a failure ends in ERROR)


@pytest.mark.parametrize("executor", ["thread", "multiprocess"])
async def test_a_signal_the_node_does_not_stop_for_lets_the_call_finish(executor: str) -> None:
    async with make_runtime() as runtime, runtime.open_session(blocking_call(executor, 1.0)) as session:
        await session.send("call", TextFrame(text="f1"))
        await trio.sleep(0.3)
        session.signal("mark", to=["call"])  # cancel_work sees it and lets the call run
        await session.close()
        events = [e async for e in session.events()]
    [handled] = [e for e in events if isinstance(e, SignalHandled)]
    assert (handled.dropped, handled.aborted) == ((), None)
    assert [e.frame.text for e in events if isinstance(e, Output)] == ["f1"]
