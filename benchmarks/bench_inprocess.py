"""In-process chain of 5 PassThrough nodes carrying 20 ms audio frames (16 kHz mono f32).

Measures, in one run:
- throughput (frames/s) with the client sending as fast as backpressure allows;
- per-frame latency (send → sink output) p50/p99, one frame in flight at a time;
and the same for the floor: 5 bare trio tasks forwarding objects over memory channels
of the same capacity (what any trio design pays). The ratio is the runtime's overhead.
Goal: report (issue 2 sets no number); the real-time budget of a 20 ms frame is the
natural bar, and the ratio to the floor shows how much of it the runtime uses.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import trio
from _common import finish, parse_args, print_table, stream_through, summarize

from nursery_pipes import AudioFrame, Runtime

CHAIN = 5
CAPACITY = 100


def manifest() -> dict[str, Any]:
    nodes = [{"id": f"p{i}", "node_type": "PassThrough"} for i in range(CHAIN)]
    edges = [{"from": f"p{i}", "to": f"p{i + 1}"} for i in range(CHAIN - 1)]
    return {
        "version": "v1",
        "metadata": {"name": "bench-chain", "multiprocess": {"channel_capacity": CAPACITY}},
        "nodes": nodes,
        "connections": edges,
    }


def frame() -> AudioFrame:
    return AudioFrame.from_array(np.zeros(320, dtype=np.float32), sample_rate=16000)


async def runtime_throughput(n: int) -> float:
    runtime = Runtime()
    audio = frame()
    async with runtime.open_session(manifest()) as session:
        elapsed = await stream_through(session, "p0", audio, n)
    return n / elapsed


async def runtime_latency(n: int) -> list[float]:
    runtime = Runtime()
    audio = frame()
    samples = []
    async with runtime.open_session(manifest()) as session:
        outputs = session.outputs()
        for _ in range(n):
            start = time.perf_counter()
            await session.send("p0", audio)
            await outputs.__anext__()
            samples.append(time.perf_counter() - start)
        await session.close()
    return samples


async def _forward(recv: trio.MemoryReceiveChannel[Any], send: trio.MemorySendChannel[Any]) -> None:
    async with recv, send:
        async for item in recv:
            await send.send(item)


def _floor_chain(nursery: trio.Nursery) -> tuple[trio.MemorySendChannel[Any], trio.MemoryReceiveChannel[Any]]:
    """CHAIN forwarding tasks over memory channels of CAPACITY: (the first send end, the last receive end)."""
    first_send, recv = trio.open_memory_channel[Any](CAPACITY)
    for _ in range(CHAIN):
        send, next_recv = trio.open_memory_channel[Any](CAPACITY)
        nursery.start_soon(_forward, recv, send)
        recv = next_recv
    return first_send, recv


async def floor_throughput(n: int) -> float:
    audio = frame()
    async with trio.open_nursery() as nursery:
        first_send, recv = _floor_chain(nursery)
        start = time.perf_counter()

        async def feed() -> None:
            async with first_send:
                for _ in range(n):
                    await first_send.send(audio)

        nursery.start_soon(feed)
        count = 0
        async for _ in recv:
            count += 1
        elapsed = time.perf_counter() - start
    assert count == n
    return n / elapsed


async def floor_latency(n: int) -> list[float]:
    audio = frame()
    samples = []
    async with trio.open_nursery() as nursery:
        first_send, recv = _floor_chain(nursery)
        for _ in range(n):
            start = time.perf_counter()
            await first_send.send(audio)
            await recv.receive()
            samples.append(time.perf_counter() - start)
        await first_send.aclose()
    return samples


def main() -> None:
    args = parse_args(__doc__ or "")
    n_tp, n_lat, rounds = (5_000, 1_000, 3) if args.quick else (20_000, 5_000, 5)
    ours_tp, base_tp, ours_lat, base_lat = [], [], [], []
    for _ in range(rounds):  # interleave, so drift on the VM hits both sides alike
        ours_tp.append(trio.run(runtime_throughput, n_tp))
        base_tp.append(trio.run(floor_throughput, n_tp))
        ours_lat += trio.run(runtime_latency, n_lat)
        base_lat += trio.run(floor_latency, n_lat)
    tp_ours, tp_base = max(ours_tp), max(base_tp)
    lat_ours = {k: v * 1e6 if k != "n" else v for k, v in summarize(ours_lat).items()}
    lat_base = {k: v * 1e6 if k != "n" else v for k, v in summarize(base_lat).items()}
    print_table(
        f"In-process chain of {CHAIN} PassThrough nodes, 20 ms audio frames",
        ["", "frames/s", "latency p50 µs", "latency p99 µs"],
        [
            ("nursery_pipes session", tp_ours, lat_ours["p50"], lat_ours["p99"]),
            ("floor: bare trio channels", tp_base, lat_base["p50"], lat_base["p99"]),
            (
                "ratio (ours / floor)",
                tp_ours / tp_base,
                lat_ours["p50"] / lat_base["p50"],
                lat_ours["p99"] / lat_base["p99"],
            ),
        ],
    )
    realtime_share = lat_ours["p99"] / 20_000
    print(f"\np99 latency uses {realtime_share:.2%} of a 20 ms frame's real-time budget")
    finish(
        "inprocess",
        {
            "chain_length": CHAIN,
            "frame": "320 samples f32 mono @ 16 kHz (20 ms)",
            "throughput_fps": {"ours": tp_ours, "floor": tp_base, "ratio": tp_ours / tp_base},
            "latency_us": {
                "ours": lat_ours,
                "floor": lat_base,
                "ratio_p50": lat_ours["p50"] / lat_base["p50"],
            },
            "realtime_budget_share_p99": realtime_share,
            "goal": {"note": "issue 2: report frames/s and p50/p99; p99 well under the 20 ms frame period"},
            "goal_met": realtime_share < 0.05,
        },
    )


if __name__ == "__main__":
    main()
