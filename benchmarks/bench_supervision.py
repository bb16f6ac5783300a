"""Supervision: how fast a failed node is replaced, and what a live audio stream loses when a
worker process is SIGKILLed every 2 s.

Usage: python benchmarks/bench_supervision.py [--quick]

Part 1 — **failure to replacement ready.** A one-node session (``StampedFailNode``) under
``one_for_one`` with a permanent node, failed over and over, per executor:

- ``inprocess`` / ``thread``: the node raises on a marked frame; the moment of failure is
  ``perf_counter_ns()`` written into the exception's message by the node itself;
- ``multiprocess`` warm (a runtime with a warm pool of 2) and cold (no pool, forkserver):
  the node's worker is SIGKILLed from outside (moment of failure: just before ``os.kill``),
  and, apart, the node raises inside its worker (moment stamped in the worker; the clock is
  CLOCK_MONOTONIC, system-wide).

"Ready" is the replacement's ``ready`` progress event, and "detected" the ``NodeFailed``
event, both stamped as the session queues them (a benchmark-side wrapper of
``EventQueue.put_control``). The baseline, measured in the same run and interleaved with the
rest: a cold multiprocess node start (``open_session`` of the same one-node manifest to its
node's ``ready``, no warm pool), and a warm-pool one for reference.

Part 2 — **a real-time stream through crashes.** 5 multiprocess nodes (gain → 8 ms CPU burn
→ gain → 8 ms CPU burn → gain, each in its own worker; warm pool of 2), fed one 20 ms frame
(320 samples, 16 kHz) every 20 ms on an absolute schedule. First without faults (the
baseline), then the same for the same time while one node — each in turn — is SIGKILLed every
2 s, at a random (seeded) point of the frame period. Measured: frames sent / delivered, the sequences the session reported dropped
(``FramesDropped``), whether the frames missing at the sink are exactly the reported ones
(nothing lost silently), at most one per kill (the frame in process), order and content of
what was delivered, latency p50/p99/max of the delivered frames against the baseline's, and
afterwards no worker process, /dev/shm entry or FIFO dir left.

Full: part 1 with 10 rounds, part 2 60 s + 60 s. ``--quick``: 2 rounds, 8 s + 8 s.
Prints tables; the LAST line is one JSON object (also benchmarks/results/supervision.json).
"""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, _bench_nodes (workers too)

import _bench_nodes
import numpy as np
import trio
from _common import finish, leftovers, parse_args, print_table

from nursery_pipes import AudioFrame, Runtime, RuntimeConfig
from nursery_pipes._config import LimitsConfig, MultiprocessDefaults, NodesConfig
from nursery_pipes.executors import NodeProgress
from nursery_pipes.runtime import FramesDropped, NodeFailed, NodeRestarted
from nursery_pipes.runtime._events import EventQueue

now_ns = time.perf_counter_ns
GOALS = {"multiprocess_warm_restart_ms": 20.0, "multiprocess_cold_restart_ms": 60.0}
SUPERVISION = {"strategy": "one_for_one", "max_restarts": 1000, "within_secs": 3600}
PERIOD = 0.020
SAMPLES = 320
KILL_EVERY = 2.0

# ------------------------------------------------------------------------ event instrumentation


class Stamps:
    """Control events as the session queues them, with the moment (ns)."""

    def __init__(self) -> None:
        self.log: list[tuple[int, Any]] = []
        self.changed: trio.Event | None = None

    def __call__(self, event: Any) -> None:
        self.log.append((now_ns(), event))
        if self.changed is not None:
            self.changed.set()

    def first(self, pred: Callable[[Any], bool], after: int = 0) -> tuple[int, Any] | None:
        for t, event in self.log:
            if t >= after and pred(event):
                return t, event
        return None

    async def wait_for(
        self, pred: Callable[[Any], bool], after: int, within: float = 20.0
    ) -> tuple[int, Any]:
        with trio.fail_after(within):
            while (found := self.first(pred, after)) is None:
                self.changed = trio.Event()
                await self.changed.wait()
        return found


STAMPS = Stamps()
_original_put_control = EventQueue.put_control


def _stamped_put_control(self: EventQueue, event: Any) -> None:
    STAMPS(event)
    _original_put_control(self, event)


EventQueue.put_control = _stamped_put_control  # type: ignore[method-assign]  # benchmark-side stamp only


def is_ready(node_id: str) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, NodeProgress) and e.node_id == node_id and e.state == "ready"


def is_failed(node_id: str) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, NodeFailed) and e.node_id == node_id


# --------------------------------------------------------------------------------- runtimes


def runtime(*, warm: int) -> Runtime:
    rt = Runtime(
        RuntimeConfig(
            nodes=NodesConfig(testing=True),
            limits=LimitsConfig(max_processes=64),
            multiprocess=MultiprocessDefaults(warm_pool=warm, grace_period_secs=0.5, init_timeout_secs=60),
        )
    )
    _bench_nodes.register(rt.registry)
    return rt


def one_node(executor: str, *, supervised: bool = True) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "restart", "multiprocess": {"executor_overrides": {"f": executor}}}
    if supervised:
        metadata["supervision"] = SUPERVISION
    return {
        "version": "v1",
        "metadata": metadata,
        "nodes": [{"id": "f", "node_type": "StampedFailNode", "params": {}, "restart": "permanent"}],
        "connections": [],
    }


def audio(value: float) -> AudioFrame:
    return AudioFrame.from_array(np.full(SAMPLES, value, dtype=np.float32), sample_rate=16000)


async def drain(session: Any) -> None:
    async for _ in session.events():
        pass


async def settle_pool(rt: Runtime) -> None:
    pool = rt.executors["multiprocess"].shared_pool
    if pool is not None:
        await pool.wait_warm()
        await trio.sleep(0.2)  # let the new workers finish starting (idle in their pipe)


# ------------------------------------------------------------------------ part 1: restart time


async def node_start_ms(rt: Runtime) -> float:
    """open_session of the one-node multiprocess manifest until its node is ready."""
    await settle_pool(rt)
    t0 = now_ns()
    async with rt.open_session(one_node("multiprocess", supervised=False)) as session:
        t_ready, _ = await STAMPS.wait_for(is_ready("f"), t0)
        await session.close()
        await session.wait()
    return (t_ready - t0) / 1e6


async def restarts(rt: Runtime, executor: str, how: str, count: int) -> list[dict[str, float]]:
    """``count`` failures of the node (``how``: "raise" or "kill"), each timed to its
    replacement's ready."""
    rows = []
    async with rt.open_session(one_node(executor)) as session, trio.open_nursery() as nursery:
        nursery.start_soon(drain, session)
        for _ in range(count):
            await settle_pool(rt)
            mark = now_ns()
            if how == "kill":
                pid = session.metrics().nodes["f"].pid
                assert pid is not None
                t_fail = now_ns()
                os.kill(pid, signal.SIGKILL)
                t_detected, _ = await STAMPS.wait_for(is_failed("f"), mark)
            else:
                await session.send("f", audio(-1.0))
                t_detected, failed = await STAMPS.wait_for(is_failed("f"), mark)
                stamp = re.search(r"t_ns=(\d+)", str(failed.error))
                assert stamp is not None, failed.error
                t_fail = int(stamp.group(1))
            t_ready, _ = await STAMPS.wait_for(is_ready("f"), t_detected)
            rows.append({
                "detect_ms": (t_detected - t_fail) / 1e6,
                "restart_ms": (t_ready - t_detected) / 1e6,
                "total_ms": (t_ready - t_fail) / 1e6,
            })  # fmt: skip
        await session.send("f", audio(1.0))  # the last replacement works
        await session.close()
        nursery.cancel_scope.deadline = trio.current_time() + 10
    return rows


VARIANTS = [
    ("inprocess", "raise", "warm"),
    ("thread", "raise", "warm"),
    ("multiprocess", "kill", "warm"),
    ("multiprocess", "raise", "warm"),
    ("multiprocess", "kill", "cold"),
    ("multiprocess", "raise", "cold"),
]


async def restart_times(rounds: int, per_round: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, float]]] = {f"{e}/{h}/{p}": [] for e, h, p in VARIANTS}
    cold_start: list[float] = []
    warm_start: list[float] = []
    async with runtime(warm=0) as cold, runtime(warm=2) as warm:
        await node_start_ms(cold)  # the first session also starts the forkserver: not counted
        await node_start_ms(warm)
        for _ in range(rounds):
            cold_start.append(await node_start_ms(cold))
            warm_start.append(await node_start_ms(warm))
            for executor, how, pool in VARIANTS:
                rt = warm if pool == "warm" else cold
                samples[f"{executor}/{how}/{pool}"] += await restarts(rt, executor, how, per_round)
    return {"cold_start_ms": cold_start, "warm_start_ms": warm_start, "restarts": samples}


# ------------------------------------------------------------------ part 2: stream with kills


def stream_manifest() -> dict[str, Any]:
    nodes = [
        ("n0", "AudioGainNode", {"gain_db": 0.0}),
        ("n1", "CpuBurnNode", {"milliseconds": 8.0}),
        ("n2", "AudioGainNode", {"gain_db": 0.0}),
        ("n3", "CpuBurnNode", {"milliseconds": 8.0}),
        ("n4", "AudioGainNode", {"gain_db": 0.0}),
    ]
    ids = [n for n, _, _ in nodes]
    return {
        "version": "v1",
        "metadata": {
            "name": "supervised-stream",
            "multiprocess": {"executor_overrides": dict.fromkeys(ids, "multiprocess")},
            "supervision": SUPERVISION,
        },
        "nodes": [{"id": n, "node_type": t, "params": p, "restart": "permanent"} for n, t, p in nodes],
        "connections": [{"from": a, "to": b} for a, b in itertools.pairwise(ids)],
    }


async def stream(seconds: float, *, kill: bool) -> dict[str, Any]:
    frames = round(seconds / PERIOD)
    t_send = np.zeros(frames + 1)
    latency: dict[int, float] = {}
    delivered: list[int] = []
    content_ok = True
    kills: list[dict[str, Any]] = []
    pids: set[int] = set()
    sent = [0]
    rt = runtime(warm=2)
    async with rt:
        await settle_pool(rt)
        async with rt.open_session(stream_manifest()) as session:
            pids |= {m.pid for m in session.metrics().nodes.values() if m.pid is not None}
            start = trio.current_time() + 0.05
            fed = trio.Event()

            async def feed() -> None:
                for i in range(1, frames + 1):
                    await trio.sleep_until(start + (i - 1) * PERIOD)
                    t_send[i] = time.perf_counter()
                    sent[0] = i
                    await session.send("n0", audio(float(i)), seq=i)
                fed.set()

            async def killer() -> None:
                phases = random.Random(20261204)
                for k in itertools.count():
                    # every 2 s, at a random point of the 20 ms frame period (a fixed point
                    # would always find the same nodes idle, or always busy)
                    due = start + KILL_EVERY * (k + 0.5) + phases.uniform(0, PERIOD)
                    if due > start + seconds - 0.5:
                        return
                    await trio.sleep_until(due)
                    node = f"n{k % 5}"
                    pid = session.metrics().nodes[node].pid
                    assert pid is not None
                    pids.add(pid)
                    t_kill = now_ns()
                    os.kill(pid, signal.SIGKILL)
                    kills.append({"node": node, "pid": pid, "last_sent": sent[0]})
                    # the replacement's pid, for the leak check, once it is up
                    await STAMPS.wait_for(is_ready(node), t_kill)
                    if (new := session.metrics().nodes[node].pid) is not None:
                        pids.add(new)

            async def read() -> None:
                nonlocal content_ok
                async for out in session.outputs():
                    delivered.append(out.seq)
                    latency[out.seq] = time.perf_counter() - t_send[out.seq]
                    if float(out.frame.samples.reshape(-1)[0]) != float(out.seq):
                        content_ok = False

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                if kill:
                    nursery.start_soon(killer)
                await feed()
                await session.close()
            log = session.supervision_log
            restarts = {n: m.restarts for n, m in session.metrics().nodes.items()}
    t_exit = time.perf_counter()
    left = leftovers(pids)
    while any(left.values()) and time.perf_counter() - t_exit < 5.0:
        await trio.sleep(0.01)
        left = leftovers(pids)
    dropped = [(e.node_id, s, e.reason) for e in log if isinstance(e, FramesDropped) for s in e.sequences]
    reported = {s for _, s, _ in dropped}
    missing = set(range(1, frames + 1)) - set(delivered)
    # the frames the kill of each node reported (at most the one in process)
    per_kill = [
        sum(1 for n, s, _ in dropped if n == k["node"] and k["last_sent"] - 2 <= s <= k["last_sent"])
        for k in kills
    ]
    # a dropped frame must be one the killed node could have had in hand: one of the last
    # three sent when it was killed (20 ms apart; ~20 ms through the whole chain)
    in_hand = all(
        any(n == k["node"] and k["last_sent"] - 2 <= s <= k["last_sent"] for k in kills)
        for n, s, _ in dropped
    )
    lat_ms = np.array([latency[s] * 1000 for s in sorted(latency)])
    return {
        "seconds": seconds,
        "frames_sent": frames,
        "frames_delivered": len(delivered),
        "kills": len(kills),
        "killed_nodes": [k["node"] for k in kills],
        "failures_seen": sum(1 for e in log if isinstance(e, NodeFailed)),
        "restarts_seen": sum(1 for e in log if isinstance(e, NodeRestarted)),
        "restarts_per_node": restarts,
        "frames_reported_dropped": sorted(reported),
        "dropped_detail": [{"node": n, "seq": s, "reason": r} for n, s, r in dropped],
        "frames_missing": sorted(missing),
        "missing_equals_reported": missing == reported,
        "reported_but_delivered": sorted(reported - missing),
        "max_reported_per_kill": max(per_kill, default=0),
        "kills_that_dropped_a_frame": sum(1 for c in per_kill if c),
        "dropped_were_in_hand": in_hand,
        "in_order": delivered == sorted(delivered),
        "no_duplicates": len(delivered) == len(set(delivered)),
        "content_ok": content_ok,
        "latency_ms": {
            "p50": float(np.percentile(lat_ms, 50)),
            "p99": float(np.percentile(lat_ms, 99)),
            "p999": float(np.percentile(lat_ms, 99.9)),
            "max": float(lat_ms.max()),
            "over_40ms": int((lat_ms > 40).sum()),
        },
        "leftovers": left,
        "workers_seen": len(pids),
    }


# ------------------------------------------------------------------------------------- report


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))],
        "max": ordered[-1],
        "n": len(ordered),
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    rounds, per_round, seconds = (2, 3, 8.0) if args.quick else (10, 5, 60.0)

    part1 = trio.run(restart_times, rounds, per_round)
    cold = statistics.median(part1["cold_start_ms"])
    rows = [
        ["cold node start (baseline)", "", stats(part1["cold_start_ms"])["p50"], "", "",
         stats(part1["cold_start_ms"])["max"], 1.0],
        ["warm-pool node start", "", stats(part1["warm_start_ms"])["p50"], "", "",
         stats(part1["warm_start_ms"])["max"], stats(part1["warm_start_ms"])["p50"] / cold],
    ]  # fmt: skip
    restart_summary: dict[str, Any] = {}
    for key, samples in part1["restarts"].items():
        total = stats([s["total_ms"] for s in samples])
        restart_summary[key] = {
            "total_ms": total,
            "detect_ms": stats([s["detect_ms"] for s in samples]),
            "restart_ms": stats([s["restart_ms"] for s in samples]),
            "vs_cold_start": total["p50"] / cold,
        }
        rows.append([
            f"restart {key}", "", total["p50"], restart_summary[key]["detect_ms"]["p50"],
            restart_summary[key]["restart_ms"]["p50"], total["max"], total["p50"] / cold,
        ])  # fmt: skip
    print_table(
        f"Failure → replacement ready (ms; {rounds}×{per_round} failures per row)",
        ["what", "", "p50", "detect p50", "start p50", "max", "p50 / cold start"],
        rows,
    )

    baseline = trio.run(lambda: stream(seconds, kill=False))
    crashes = trio.run(lambda: stream(seconds, kill=True))
    table = []
    for name, r in (("no kills (baseline)", baseline), (f"SIGKILL every {KILL_EVERY:g} s", crashes)):
        lat = r["latency_ms"]
        table.append([
            name, r["frames_sent"], r["frames_delivered"], r["kills"], r["restarts_seen"],
            len(r["frames_reported_dropped"]), len(r["frames_missing"]), r["missing_equals_reported"],
            lat["p50"], lat["p99"], lat["max"], lat["p99"] / baseline["latency_ms"]["p99"],
            sum(len(v) for v in r["leftovers"].values()),
        ])  # fmt: skip
    print_table(
        f"Real-time audio through 5 worker processes, {seconds:g} s (latency of delivered frames, ms)",
        ["run", "sent", "delivered", "kills", "restarts", "reported dropped", "missing",
         "missing = reported", "p50", "p99", "max", "p99 / baseline", "leftovers"],
        table,
    )  # fmt: skip
    print(f"dropped: {crashes['dropped_detail']}")

    warm_kill = restart_summary["multiprocess/kill/warm"]["total_ms"]["p50"]
    cold_kill = restart_summary["multiprocess/kill/cold"]["total_ms"]["p50"]
    finish(
        "supervision",
        {
            "quick": args.quick,
            "goals": GOALS,
            "baseline": {
                "cold_start_ms": stats(part1["cold_start_ms"]),
                "warm_start_ms": stats(part1["warm_start_ms"]),
            },
            "restarts": restart_summary,
            "goals_met": {
                "multiprocess_warm_restart_ms": warm_kill <= GOALS["multiprocess_warm_restart_ms"],
                "multiprocess_cold_restart_ms": cold_kill <= GOALS["multiprocess_cold_restart_ms"],
                "stream_nothing_lost_silently": crashes["missing_equals_reported"],
                "stream_at_most_one_frame_per_kill": crashes["max_reported_per_kill"] <= 1,
                "stream_dropped_only_frames_in_hand": crashes["dropped_were_in_hand"],
                "stream_no_leaks": not any(crashes["leftovers"].values()),
            },
            "stream_baseline": baseline,
            "stream_with_kills": crashes,
        },
    )


if __name__ == "__main__":
    main()
