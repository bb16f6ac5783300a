"""The crash matrix: every way a node can fail × the three strategies × the three executors,
inside a live session with a supervision policy (docs/design.md §4, "Restarting nodes").

Each cell streams frames through ``src → f → sink`` where ``f`` fails once (the fault nodes'
``once`` marker: the fresh instance runs normally), and checks what the client got:

- every frame sent is either delivered or reported dropped — exactly once, never both;
- delivered frames arrive in order, without duplicates;
- the frame ``f`` was processing when it failed is among the dropped ones (a fault in
  ``process``); nothing is dropped for a fault in ``initialize`` or ``flush``;
- the nodes the strategy names are restarted (``f``; ``f`` and ``sink`` for rest_for_one;
  every one still running for one_for_all) and the session ends normally;
- nothing leaks: no process, thread or /dev/shm entry (the autouse leak fixture).

``NP_CRASH_LOOPS=20`` runs every cell twenty times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from nursery_pipes import Runtime, RuntimeConfig, TextFrame
from nursery_pipes._config import MultiprocessDefaults, NodesConfig
from nursery_pipes.runtime import FramesDropped, NodeFailed, NodeRestarted

pytestmark = pytest.mark.timeout(60)

LOOPS = int(os.environ.get("NP_CRASH_LOOPS", "1"))
FRAMES = 6

# fault → (node type, params, executors it can run in, whether a frame in flight is lost)
FAULTS: dict[str, tuple[str, dict[str, Any], tuple[str, ...], bool]] = {
    "raise-initialize": (
        "RaiseNode",
        {"phase": "initialize"},
        ("inprocess", "thread", "multiprocess"),
        False,
    ),
    "raise-process": (
        "RaiseNode",
        {"phase": "process", "after_frames": 2},
        ("inprocess", "thread", "multiprocess"),
        True,
    ),
    "raise-flush": ("RaiseNode", {"phase": "flush"}, ("inprocess", "thread", "multiprocess"), False),
    "os-exit": ("ExitNode", {"phase": "process", "after_frames": 2, "code": 9}, ("multiprocess",), True),
    "segfault": (
        "SignalNode",
        {"phase": "process", "after_frames": 2, "signal": "SIGSEGV"},
        ("multiprocess",),
        True,
    ),
    "sigkill-from-outside": ("SleepNode", {"process_seconds": 0.05}, ("multiprocess",), True),
    # A thread cannot be stopped while it hangs (it would be abandoned, a leaked thread).
    "init-hang": ("HangNode", {"phase": "initialize"}, ("inprocess", "multiprocess"), False),
}
# strategy → the nodes it restarts: those still running among these (src may have ended
# already — its input ended — and a node that ended is done, not restarted)
STRATEGIES = {
    "one_for_one": {"f"},
    "rest_for_one": {"f", "sink"},
    "one_for_all": {"src", "f", "sink"},
}
CELLS = [
    (fault, strategy, executor)
    for fault, (_, _, executors, _) in FAULTS.items()
    for strategy in STRATEGIES
    for executor in executors
]


@dataclasses.dataclass
class Seen:
    delivered: list[int] = dataclasses.field(default_factory=list)
    dropped: list[int] = dataclasses.field(default_factory=list)
    dropped_at: dict[int, str] = dataclasses.field(default_factory=dict)
    """Which node reported each dropped frame."""
    restarted: list[str] = dataclasses.field(default_factory=list)
    failed: list[NodeFailed] = dataclasses.field(default_factory=list)


class Progress:
    """How many frames have come out or been reported dropped; wait for a count."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = trio.Event()

    def update(self, count: int) -> None:
        self.count = count
        self._changed.set()

    async def reached(self, count: int) -> None:
        while self.count < count:
            self._changed = trio.Event()
            await self._changed.wait()


async def run_cell(fault: str, strategy: str, executor: str, marker: Path) -> Seen:
    node_type, params, _, _ = FAULTS[fault]
    if "phase" in params:
        params = {**params, "once": str(marker)}
    doc = {
        "version": "v1",
        "metadata": {
            "name": "crash",
            "supervision": {"strategy": strategy, "max_restarts": 5, "within_secs": 60},
            "multiprocess": {"executor_overrides": {"src": "inprocess", "f": executor, "sink": executor}},
        },
        "nodes": [
            {"id": "src", "node_type": "PassThrough"},
            {"id": "f", "node_type": node_type, "params": params},
            {"id": "sink", "node_type": "PassThrough"},
        ],
        "connections": [{"from": "src", "to": "f"}, {"from": "f", "to": "sink"}],
    }
    rt = Runtime(
        RuntimeConfig(
            nodes=NodesConfig(testing=True), multiprocess=MultiprocessDefaults(grace_period_secs=0.3)
        )
    )
    plan = rt.plan(doc)
    if fault == "init-hang":  # manifests cannot go below 1 s
        plan = dataclasses.replace(plan, settings=dataclasses.replace(plan.settings, init_timeout_secs=0.3))
    seen = Seen()
    progress = Progress()
    async with (
        rt.open_session(plan, wait_ready=fault != "init-hang") as session,
        trio.open_nursery() as nursery,
    ):

        async def read() -> None:
            async for event in session.events():
                if isinstance(event, FramesDropped):
                    seen.dropped.extend(event.sequences)
                    seen.dropped_at.update(dict.fromkeys(event.sequences, event.node_id))
                elif isinstance(event, NodeRestarted):
                    seen.restarted.append(event.node_id)
                elif isinstance(event, NodeFailed):
                    seen.failed.append(event)
                elif hasattr(event, "frame") and event.node_id == "sink":
                    seen.delivered.append(event.seq)
                progress.update(len(seen.delivered) + len(set(seen.dropped)))

        nursery.start_soon(read)
        # One frame at a time: whatever the strategy stops, stops between frames or inside the
        # failing one — never in the instants after a node wrote its outputs and before it
        # returned its input slot (a kill there reports a delivered frame as dropped too).
        for i in range(1, FRAMES + 1):
            await session.send("src", TextFrame(text=str(i)))
            if fault == "sigkill-from-outside" and i == 3:
                await trio.sleep(0.02)  # f sleeps 50 ms in process(frame 3): kill it there
                pid = session.metrics().nodes["f"].pid
                assert pid is not None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await progress.reached(i)
        await session.close()
    return seen


@pytest.mark.parametrize("loop", range(LOOPS))
@pytest.mark.parametrize(("fault", "strategy", "executor"), CELLS)
async def test_crash_matrix(fault: str, strategy: str, executor: str, loop: int, tmp_path: Path) -> None:
    with trio.fail_after(30):
        seen = await run_cell(fault, strategy, executor, tmp_path / "fired")
    sent = list(range(1, FRAMES + 1))
    assert seen.delivered == sorted(seen.delivered), "out of order"
    assert len(set(seen.delivered)) == len(seen.delivered), "delivered twice"
    # A frame is never both delivered and lost — with one exception, documented (design §6): a
    # worker restarted for *another* node's failure is killed at once, and killed between
    # writing a frame's outputs and returning its input slot it reports that frame as giving
    # "no further output" although its outputs are out. On a loaded machine the window is hit.
    both = set(seen.delivered) & set(seen.dropped)
    assert all(seen.dropped_at[seq] not in ("f", "src") for seq in both), f"delivered and dropped: {seen}"
    reported = [seq for seq in seen.dropped if seq not in both]
    assert sorted([*seen.delivered, *reported]) == sent, f"lost without a report: {seen}"
    loses_a_frame = FAULTS[fault][3]
    if loses_a_frame:
        assert seen.dropped, f"the frame in flight must be reported: {seen}"
    elif strategy == "one_for_one":
        assert not seen.dropped, seen  # nothing in flight: nothing lost
    assert [e.node_id for e in seen.failed] == ["f"]
    assert seen.failed[0].action == "restart"
    assert {"f"} | ({"sink"} if strategy != "one_for_one" else set()) <= set(seen.restarted), seen
    assert set(seen.restarted) <= STRATEGIES[strategy], seen
