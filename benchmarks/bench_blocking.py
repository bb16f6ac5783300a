"""A node that blocks 200 ms per frame, and every other session of the runtime (issue 9).

Usage: python benchmarks/bench_blocking.py [--quick]

Part 1 — stalls. One runtime runs LIGHT sessions, each a single in-process
PassThrough fed one 20 ms audio frame (320 f32 samples) every 20 ms on an
absolute schedule, staggered over the period like independent clients. A
light frame's latency is from its *scheduled* time to the moment its output is
read, so a feeder held up by a stalled trio loop counts, as a client's frame
waiting in a socket would. Alongside them runs one heavy session whose only
node takes 200 ms per frame, fed one frame every 400 ms on the same clock (so
it is busy half the time; one warm-up frame goes through it first, untimed).
Three kinds of 200 ms:

- ``sleep``:  ``time.sleep(0.2)`` — blocking I/O: no CPU, GIL released;
- ``numpy``:  200 ms of matrix products (one BLAS thread) — CPU, GIL released (like
  onnxruntime, soxr);
- ``python``: 200 ms of a pure-Python loop — CPU, GIL *held* (the contrast case);

each placed ``inprocess``, ``thread`` and ``multiprocess``. The baseline is the
same light sessions with no heavy session. Every configuration runs in the same
run, interleaved in rounds; each light-session number is compared with that
baseline (p50/p99 over all light frames of all rounds). The baseline itself
(~0.8 ms p50) is mostly the timer: Python's epoll waits in whole milliseconds,
so a feeder's ``sleep_until`` wakes up to ~1 ms late; the session's own hop is
~30 µs (part 2).

Part 2 — what an executor costs per frame. One PassThrough session per executor,
one frame in flight at a time: round trip (send → output read) p50/p99 for a
20 ms audio frame (1280 B) and for 1 MiB, the overhead over in-process, and the
bytes copied per frame: none in-process or in a thread (the output *is* the
input object, checked on every frame), three copies of the payload for a
worker (into the ring, out of the worker into the next ring, out of the ring
into the supervisor; a fourth for nodes without ``zero_copy``).

Part 3 (only when ``pipecat-ai`` is installed: ``pip install -r
benchmarks/requirements-peers.txt``) — the peer: the same light and heavy
pipelines as Pipecat pipelines in one asyncio loop, the heavy processor
calling ``time.sleep(0.2)`` in ``process_frame`` (blocking the loop) or
``await asyncio.to_thread(time.sleep, 0.2)``. Without Pipecat those rows are
skipped with a note.

Prints tables; the LAST line is one JSON object (also benchmarks/results/blocking.json).
"""

from __future__ import annotations

import importlib.util
import os

# One BLAS thread, so a numpy stage is one core's work wherever it runs (see _bench_nodes.MATRIX);
# set before numpy is imported, and inherited by worker processes.
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, _bench_nodes (workers too)

import _bench_nodes
import numpy as np
import trio
from _common import finish, parse_args, percentile, print_table

from nursery_pipes import AudioFrame, Runtime, RuntimeConfig
from nursery_pipes._config import MultiprocessDefaults

PERIOD = 0.020  # s: one 20 ms frame per light session per period
SAMPLES = 320  # 20 ms at 16 kHz
BLOCK_S = 0.200
HEAVY_PERIOD = 0.400  # s: one frame to the heavy session every 400 ms (busy half the time)
EXECUTORS = ("inprocess", "thread", "multiprocess")
KINDS: dict[str, tuple[str, str]] = {
    "sleep": ("BlockingSleepNode", "time.sleep(0.2): blocking I/O, GIL released"),
    "numpy": ("NumpyWorkNode", "200 ms of numpy matmul: CPU, GIL released"),
    "python": ("PythonWorkNode", "200 ms of a Python loop: CPU, GIL held"),
}
MIB = 1 << 20


def config() -> RuntimeConfig:
    return RuntimeConfig(multiprocess=MultiprocessDefaults(init_timeout_secs=60))


def runtime() -> Runtime:
    rt = Runtime(config())
    _bench_nodes.register(rt.registry)
    return rt


def one_node(
    name: str, node_type: str, executor: str, params: dict[str, Any], capacity: int
) -> dict[str, Any]:
    return {
        "version": "v1",
        "metadata": {
            "name": name,
            "multiprocess": {"executor_overrides": {"n": executor}, "channel_capacity": capacity},
        },
        "nodes": [{"id": "n", "node_type": node_type, "params": params}],
        "connections": [],
    }


def audio(samples: int) -> AudioFrame:
    return AudioFrame.from_array(np.zeros(samples, dtype=np.float32), sample_rate=16000)


# ------------------------------------------------------------------------------ part 1: stalls


async def light_session(session: Any, start: float, frames: int, latencies: list[float]) -> None:
    """Feed ``frames`` frames on the schedule from ``start``; latency = output read − scheduled time."""
    due = [start + k * PERIOD for k in range(frames)]
    frame = audio(SAMPLES)

    async def feed() -> None:
        for k in range(frames):
            await trio.sleep_until(due[k])
            await session.send("n", frame, seq=k + 1)
        await session.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        async for out in session.outputs():
            latencies.append(trio.current_time() - due[out.seq - 1])


async def stalls(
    kind: str | None, executor: str | None, params: dict[str, Any], light: int, seconds: float
) -> tuple[list[float], list[float]]:
    """Light-session latencies and the heavy session's own, from each frame's scheduled time (s)."""
    frames = round(seconds / PERIOD)
    latencies: list[float] = []
    heavy_latencies: list[float] = []
    rt = runtime()
    async with rt, AsyncExitStack() as stack:
        lights = [
            await stack.enter_async_context(
                rt.open_session(one_node(f"light-{i}", "PassThrough", "inprocess", {}, 100))
            )
            for i in range(light)
        ]
        heavy = None
        if kind is not None and executor is not None:
            manifest = one_node("heavy", KINDS[kind][0], executor, params, capacity=1)
            heavy = await stack.enter_async_context(rt.open_session(manifest))
            outputs = heavy.outputs()
            await heavy.send("n", audio(SAMPLES))  # warm-up, untimed: a new worker's first frame
            await outputs.__anext__()
        start = trio.current_time() + 0.05
        async with trio.open_nursery() as nursery:
            if heavy is not None:
                nursery.start_soon(heavy_session, heavy, start + PERIOD / 2, seconds, heavy_latencies)
            for i, session in enumerate(lights):
                nursery.start_soon(light_session, session, start + i * PERIOD / light, frames, latencies)
    return latencies, heavy_latencies


async def heavy_session(session: Any, start: float, seconds: float, latencies: list[float]) -> None:
    """One frame every HEAVY_PERIOD from ``start`` for ``seconds``, then close; latency from
    the scheduled time, like the light sessions'."""
    due = [start + k * HEAVY_PERIOD for k in range(max(1, round(seconds / HEAVY_PERIOD)))]
    frame = audio(SAMPLES)

    async def feed() -> None:
        for k, t in enumerate(due):
            await trio.sleep_until(t)
            await session.send("n", frame, seq=k + 2)  # seq 1 was the warm-up frame
        await session.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        async for out in session.outputs():
            latencies.append(trio.current_time() - due[out.seq - 2])


# ------------------------------------------------------------------- part 2: per-frame costs


async def round_trips(executor: str, samples: int, n: int) -> tuple[list[float], bool]:
    """Seconds per round trip through one PassThrough, and whether every output was the very
    object that was sent (no copy at all)."""
    rt = runtime()
    frame = audio(samples)
    times: list[float] = []
    same = True
    async with rt, rt.open_session(one_node("rt", "PassThrough", executor, {}, 100)) as session:
        outputs = session.outputs()
        for i in range(n + 5):  # 5 warm-up frames (a fresh external segment is slow to fill)
            began = time.perf_counter()
            await session.send("n", frame)
            out = await outputs.__anext__()
            if i >= 5:
                times.append(time.perf_counter() - began)
                same = same and out.frame is frame
        await session.close()
    return times, same


async def thread_floors(n: int) -> dict[str, list[float]]:
    """The bare thread hops, no session: trio's own ``to_thread.run_sync`` and the thread
    executor's ``NodeThread.run`` (one dedicated thread), each handing back its argument."""
    from nursery_pipes.executors._thread import NodeThread

    frame = audio(SAMPLES)
    out: dict[str, list[float]] = {"trio.to_thread.run_sync": [], "NodeThread.run": []}
    thread = NodeThread("bench")
    try:
        for i in range(n + 5):
            began = time.perf_counter()
            await trio.to_thread.run_sync(_identity, frame)
            middle = time.perf_counter()
            await thread.run(_identity, frame)
            if i >= 5:
                out["trio.to_thread.run_sync"].append(middle - began)
                out["NodeThread.run"].append(time.perf_counter() - middle)
    finally:
        await thread.stop(1.0)
    return out


def _identity(value: Any) -> Any:
    return value


def copies(executor: str, nbytes: int, zero_copy: bool) -> int:
    """Bytes of payload copied per round trip (executors/_transport.py, worker/_codec.py)."""
    if executor != "multiprocess":
        return 0
    return nbytes * (3 if zero_copy else 4)


# ------------------------------------------------------------------------ part 3: the peer


def pipecat_stalls(light: int, seconds: float, rounds: int) -> dict[str, Any]:
    if importlib.util.find_spec("pipecat") is None:
        return {"skipped": "pipecat-ai is not installed (pip install -r benchmarks/requirements-peers.txt)"}
    import _peer_pipecat

    result: dict[str, Any] = _peer_pipecat.measure(
        light, seconds, rounds, block_s=BLOCK_S, period=PERIOD, samples=SAMPLES
    )
    return result


# ------------------------------------------------------------------------------------ driver


def ms(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000


def main() -> None:
    args = parse_args(__doc__ or "")
    light, seconds, rounds = (4, 1.2, 1) if args.quick else (8, 6.0, 3)
    n_small, n_big = (200, 40) if args.quick else (1000, 200)
    load_before = os.getloadavg()[0]
    params = {
        "sleep": {"seconds": BLOCK_S},
        "numpy": {"units": _bench_nodes.calibrate("numpy", BLOCK_S * 1000)},
        "python": {"units": _bench_nodes.calibrate("python", BLOCK_S * 1000)},
    }
    configs: list[tuple[str | None, str | None]] = [(None, None)]
    configs += [(k, e) for k in KINDS for e in EXECUTORS]
    lat: dict[tuple[str | None, str | None], list[float]] = {c: [] for c in configs}
    heavy: dict[tuple[str | None, str | None], list[float]] = {c: [] for c in configs}
    rtt: dict[tuple[str, int], list[float]] = {}
    floors: dict[str, list[float]] = {}
    same_object: dict[str, bool] = dict.fromkeys(EXECUTORS, True)
    for r in range(rounds):  # interleaved; the order rotates from round to round
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for kind, executor in order:
            light_s, heavy_s = trio.run(stalls, kind, executor, params.get(kind or "", {}), light, seconds)
            lat[(kind, executor)] += light_s
            heavy[(kind, executor)] += heavy_s
        for executor in EXECUTORS:
            for samples, n in ((SAMPLES, n_small), (MIB // 4, n_big)):
                times, same = trio.run(round_trips, executor, samples, n)
                rtt.setdefault((executor, samples), []).extend(times)
                same_object[executor] = same_object[executor] and same
        for name, times in trio.run(thread_floors, n_small).items():
            floors.setdefault(name, []).extend(times)
    load_mid = os.getloadavg()[0]
    peer = pipecat_stalls(light, seconds, rounds)
    load_after = os.getloadavg()[0]

    base = lat[(None, None)]
    base50, base99 = ms(base, 50), ms(base, 99)
    rows: list[tuple[Any, ...]] = [("none (baseline)", "—", base50, base99, ms(base, 100), 1.0, 1.0, "—")]
    stall_json: dict[str, Any] = {
        "baseline": {"p50_ms": base50, "p99_ms": base99, "max_ms": ms(base, 100), "n": len(base)}
    }
    for kind in KINDS:
        stall_json[kind] = {}
        for executor in EXECUTORS:
            values, own = lat[(kind, executor)], heavy[(kind, executor)]
            p50, p99 = ms(values, 50), ms(values, 99)
            rows.append((kind, executor, p50, p99, ms(values, 100), p50 / base50, p99 / base99, ms(own, 50)))
            stall_json[kind][executor] = {
                "p50_ms": p50, "p99_ms": p99, "max_ms": ms(values, 100), "n": len(values),
                "p50_vs_baseline": p50 / base50, "p99_vs_baseline": p99 / base99,
                "heavy_latency_p50_ms": ms(own, 50), "heavy_frames": len(own),
            }  # fmt: skip
    print_table(
        f"{light} light sessions (in-process PassThrough, a 20 ms frame every 20 ms) beside one session "
        f"whose node takes {BLOCK_S * 1000:g} ms per frame, a frame every {HEAVY_PERIOD * 1000:g} ms — "
        f"light latency from each frame's scheduled time ({rounds} round(s) × {seconds:g} s)",
        ["heavy node", "placed", "p50 ms", "p99 ms", "max ms", "p50 / base", "p99 / base", "heavy p50 ms"],
        rows,
    )
    for kind, (_, label) in KINDS.items():
        print(f"  {kind}: {label}")

    cost_rows: list[tuple[Any, ...]] = []
    cost_json: dict[str, Any] = {}
    for samples in (SAMPLES, MIB // 4):
        nbytes = samples * 4
        ref = percentile(rtt[("inprocess", samples)], 50) * 1e6
        for executor in EXECUTORS:
            times = rtt[(executor, samples)]
            p50, p99 = percentile(times, 50) * 1e6, percentile(times, 99) * 1e6
            copied, copied_default = copies(executor, nbytes, True), copies(executor, nbytes, False)
            cost_rows.append((f"{nbytes:,} B", executor, p50, p99, p50 - ref, copied, copied_default))
            cost_json.setdefault(str(nbytes), {})[executor] = {
                "rtt_p50_us": p50, "rtt_p99_us": p99, "overhead_vs_inprocess_p50_us": p50 - ref,
                "bytes_copied_per_frame": copied, "bytes_copied_per_frame_default_node": copied_default,
                "n": len(times),
            }  # fmt: skip
    for name, times in floors.items():
        p50, p99 = percentile(times, 50) * 1e6, percentile(times, 99) * 1e6
        cost_rows.append(("floor", name, p50, p99, "—", 0, 0))
        cost_json.setdefault("thread_floors", {})[name] = {"rtt_p50_us": p50, "rtt_p99_us": p99}
    print_table(
        "Per-frame cost of each executor: one PassThrough session, one frame in flight (µs); "
        "floors: the bare thread hop, no session",
        ["frame", "executor", "RTT p50", "RTT p99", "p50 − inprocess", "B copied", "B copied (no zero_copy)"],
        cost_rows,
    )
    print(
        "  output is the input object (no copy) on every frame: "
        + ", ".join(f"{e} {'yes' if same_object[e] else 'no'}" for e in EXECUTORS)
    )

    if "skipped" not in peer:
        pbase = peer["baseline"]
        print_table(
            f"Peer: Pipecat {peer['version']}, {light} light pipelines + one heavy in one asyncio loop, same "
            "schedule (ms)",
            ["heavy processor", "p50 ms", "p99 ms", "max ms", "p50 / base", "p99 / base", "heavy p50 ms"],
            [("none (baseline)", pbase["p50_ms"], pbase["p99_ms"], pbase["max_ms"], 1.0, 1.0, "—")]
            + [
                (name, v["p50_ms"], v["p99_ms"], v["max_ms"], v["p50_vs_baseline"], v["p99_vs_baseline"],
                 v["heavy_latency_p50_ms"])
                for name, v in peer["heavy"].items()
            ],
        )  # fmt: skip
    else:
        print(f"\npeer (Pipecat) rows skipped: {peer['skipped']}")
    print(
        f"\nload average (1 min): before {load_before:.2f}, after parts 1-2 {load_mid:.2f}, "
        f"at the end {load_after:.2f}"
    )

    thread_sleep = stall_json["sleep"]["thread"]["p99_vs_baseline"]
    inproc_sleep = stall_json["sleep"]["inprocess"]["p99_vs_baseline"]
    finish(
        "blocking",
        {
            "light_sessions": light,
            "seconds_per_config": seconds,
            "rounds": rounds,
            "block_ms": BLOCK_S * 1000,
            "heavy_period_ms": HEAVY_PERIOD * 1000,
            "heavy_params": params,
            "stalls": stall_json,
            "per_frame_cost": cost_json,
            "output_is_input_object": same_object,
            "peer_pipecat": peer,
            "goal": {
                "note": "issue 9 sets no number: a GIL-releasing blocking node in a thread should leave "
                "the light sessions' p99 within 2× of the baseline, where in-process it stalls them",
            },
            "goal_met": thread_sleep <= 2.0 < inproc_sleep,
            "loadavg_1min": {"before": load_before, "after_parts_1_2": load_mid, "after": load_after},
        },
    )


if __name__ == "__main__":
    main()
