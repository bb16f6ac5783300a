"""Loaned output buffers: a worker node that produces a big frame per input, building it in
``NodeContext.output_array`` (the shared memory it is sent through) or in a new array that the
worker then copies there.

Usage: python benchmarks/bench_loan.py [--quick]

One session per variant, one multiprocess node (``_bench_nodes.ProduceNode``): per tiny input
frame it writes every byte of a new uint8 tensor of 1 MiB or 10 MiB and emits it; the
supervisor reads the output (copying it out of shared memory, as for every output). Measured,
interleaved in rounds, one frame in flight:

- latency: ``perf_counter_ns`` before ``session.send`` → the output read;
- CPU of the producing worker per frame (``/proc/<pid>/schedstat``): the number the loan
  changes — it saves the worker one copy of the payload;
- baseline, same run: one ``numpy.copyto`` of the payload (preallocated destination).

Prints a table; the LAST line is one JSON object (also benchmarks/results/loan.json).
"""

from __future__ import annotations

import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, _bench_nodes (workers too)

import _bench_nodes
import numpy as np
import trio
from _common import finish, memcpy_ns, parse_args, percentile, print_table

from nursery_pipes import Runtime, RuntimeConfig, TensorFrame
from nursery_pipes._config import MultiprocessDefaults

MIB = 1 << 20
SIZES = (MIB, 10 * MIB)


def manifest(nbytes: int, loaned: bool) -> dict[str, Any]:
    return {
        "version": "v1",
        "metadata": {"name": "loan", "multiprocess": {"executor_overrides": {"p": "multiprocess"}}},
        "nodes": [{"id": "p", "node_type": "ProduceNode", "params": {"nbytes": nbytes, "loaned": loaned}}],
        "connections": [],
    }


def cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


async def one_by_one(session: Any, pid: int, n: int) -> tuple[list[int], float]:
    """Latencies (ns) of n frames, one in flight, and the worker's CPU ns per frame."""
    tick = TensorFrame(data=np.zeros(4, np.uint8))
    outputs = session.outputs()
    latencies = []
    cpu_before = cpu_ns(pid)
    for _ in range(n):
        began = time.perf_counter_ns()
        await session.send("p", tick)
        out = await outputs.__anext__()
        latencies.append(time.perf_counter_ns() - began)
        assert out.frame.data.nbytes > 0
    return latencies, (cpu_ns(pid) - cpu_before) / n


async def measure(rounds: int, per_round: int) -> dict[str, Any]:
    rt = Runtime(RuntimeConfig(multiprocess=MultiprocessDefaults(slot_size=256 * 1024, slot_count=4)))
    _bench_nodes.register(rt.registry)
    lat: dict[tuple[int, str], list[int]] = {}
    cpu: dict[tuple[int, str], list[float]] = {}
    async with rt:
        for nbytes in SIZES:
            async with AsyncExitStack() as stack:
                sessions = {
                    variant: await stack.enter_async_context(rt.open_session(manifest(nbytes, loaned)))
                    for variant, loaned in (("output_array", True), ("np.empty + copy", False))
                }
                pids = {v: s.metrics().nodes["p"].pid for v, s in sessions.items()}
                for v, s in sessions.items():  # warm-up: every slot's external segment grown
                    await one_by_one(s, pids[v], 8)
                for r in range(rounds):
                    order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
                    for v in order:
                        samples, per_frame = await one_by_one(sessions[v], pids[v], per_round)
                        lat.setdefault((nbytes, v), []).extend(samples)
                        cpu.setdefault((nbytes, v), []).append(per_frame)
                    lat.setdefault((nbytes, "memcpy"), []).extend(memcpy_ns(nbytes, per_round))
                for s in sessions.values():
                    await s.close()
    return {"lat": lat, "cpu": cpu}


def main() -> None:
    args = parse_args(__doc__ or "")
    rounds, per_round = (3, 20) if args.quick else (10, 40)
    raw = trio.run(measure, rounds, per_round)
    rows, result = [], {}
    for nbytes in SIZES:
        label = f"{nbytes // MIB} MiB"
        copy_p50 = percentile(raw["lat"][(nbytes, "memcpy")], 50) / 1000
        entry: dict[str, Any] = {"memcpy_p50_us": copy_p50}
        for v in ("output_array", "np.empty + copy"):
            p50 = percentile(raw["lat"][(nbytes, v)], 50) / 1000
            p99 = percentile(raw["lat"][(nbytes, v)], 99) / 1000
            worker_cpu = float(np.median(raw["cpu"][(nbytes, v)])) / 1000
            entry[v] = {"p50_us": p50, "p99_us": p99, "worker_cpu_us_per_frame": worker_cpu}
            rows.append([label, v, p50, p99, worker_cpu, worker_cpu / copy_p50])
        loan, copy = entry["output_array"], entry["np.empty + copy"]
        entry["latency_ratio"] = loan["p50_us"] / copy["p50_us"]
        entry["worker_cpu_ratio"] = loan["worker_cpu_us_per_frame"] / copy["worker_cpu_us_per_frame"]
        entry["worker_cpu_saved_in_memcpys"] = (
            copy["worker_cpu_us_per_frame"] - loan["worker_cpu_us_per_frame"]
        ) / copy_p50
        rows.append([label, "memcpy (baseline)", copy_p50, "", "", 1.0])
        result[label] = entry
    print_table(
        f"A worker producing one big frame per input ({rounds}×{per_round} frames per row, one in flight; µs)",
        ["size", "built in", "latency p50", "p99", "worker CPU / frame", "worker CPU / memcpy"],
        rows,
    )
    for label, entry in result.items():
        print(
            f"  {label}: output_array / np.empty+copy — latency {entry['latency_ratio']:.2f}, worker CPU "
            f"{entry['worker_cpu_ratio']:.2f} ({entry['worker_cpu_saved_in_memcpys']:.2f} memcpys saved)"
        )
    finish("loan", {"quick": args.quick, "rounds": rounds, "per_round": per_round, "results": result})


if __name__ == "__main__":
    main()
