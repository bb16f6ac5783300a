"""Fan-out of a big frame to several ordinary nodes: shared by reference, or forwarded + copied.

Usage: python benchmarks/bench_fanout.py [--quick]

A ``zero_copy`` ``PassThrough`` worker ("fan") sends every big tensor it gets to k readers,
each an ordinary node in its own worker (``_bench_nodes.FirstByteNode``: its worker copies the
input out of shared memory, then it emits one byte, like a detector). The same pipeline runs in
two runtimes side by side, interleaved in rounds:

- ``shared``: ``[multiprocess] share_fan_out = true`` (the default): the fan sends the frame to
  every reader's ring by reference and keeps its input slot until all have read it
  (ipc/_ownership.py, fan-out) — no copy at the fan;
- ``forward+copy``: ``share_fan_out = false``: the first ring takes the input's segment over,
  the fan copies the frame into every other ring — k − 1 copies at the fan.

A third case runs the fan in the supervisor (the in-process executor), k = 2: ``shared``, its
ports write the frame once into a pool segment both rings refer to; ``forward+copy``, once
per ring. Its "fan CPU" is the whole supervisor process's (the client's work included, alike
in both variants).

Measured, 1 MiB and 10 MiB, k = 2 and 3:

- latency, one frame in flight: ``perf_counter_ns`` before ``session.send`` → the k-th output read;
- CPU per frame (``/proc/<pid>/schedstat``) of the fan worker, and of all k + 1 workers;
- frames/s with the pipeline kept full;
- the fan's ``NodeMetrics.frames_shared`` / ``frames_forwarded`` (every frame must be one);
- baseline, same run: one ``numpy.copyto`` of the payload (preallocated destination). The
  fan's CPU saved is reported in memcpys: ≈ k − 1 expected.

Prints tables; the LAST line is one JSON object (also benchmarks/results/fanout.json).
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
from _common import finish, leftovers, memcpy_ns, parse_args, percentile, print_table

from nursery_pipes import Runtime, RuntimeConfig, TensorFrame
from nursery_pipes._config import MultiprocessDefaults

MIB = 1 << 20
SIZES = (MIB, 10 * MIB)
READERS = (2, 3)
CASES = (*tuple((k, "worker") for k in READERS), (2, "supervisor"))
"""(readers, where the fan runs): in a worker, or in the supervisor (the in-process executor)."""
VARIANTS = {"shared": True, "forward+copy": False}


def manifest(readers: int, fan_in: str = "worker") -> dict[str, Any]:
    ids = [f"r{i}" for i in range(readers)]
    overrides = dict.fromkeys(["fan", *ids], "multiprocess")
    if fan_in == "supervisor":
        overrides["fan"] = "inprocess"
    return {
        "version": "v1",
        "metadata": {"name": "fanout", "multiprocess": {"executor_overrides": overrides}},
        "nodes": [
            {"id": "fan", "node_type": "PassThrough", "params": {}},
            *({"id": i, "node_type": "FirstByteNode", "params": {}} for i in ids),
        ],
        "connections": [{"from": "fan", "to": i} for i in ids],
    }


def cpu_ns(pid: int | None) -> int:
    """CPU time of a process (None: this one, the supervisor — the client's work included)."""
    if pid is None:
        return time.process_time_ns()
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


class Run:
    """One session of one variant, and what was measured of it."""

    def __init__(self, session: Any, readers: int) -> None:
        self.session = session
        self.readers = readers
        self.outputs = session.outputs()
        nodes = session.metrics().nodes
        self.fan_pid = nodes["fan"].pid  # None: the fan runs in the supervisor (this process)
        self.pids = [m.pid for m in nodes.values() if m.pid is not None]
        self.latency_ns: list[int] = []
        self.fan_cpu: list[float] = []
        self.all_cpu: list[float] = []

    async def one_by_one(self, frames: list[TensorFrame], *, record: bool = True) -> None:
        fan_before, all_before = cpu_ns(self.fan_pid), sum(cpu_ns(p) for p in self.pids)
        for frame in frames:
            began = time.perf_counter_ns()
            await self.session.send("fan", frame)
            for _ in range(self.readers):
                out = await self.outputs.__anext__()
                assert int(out.frame.data[0]) == int(frame.data[0])
            if record:
                self.latency_ns.append(time.perf_counter_ns() - began)
        if record:
            self.fan_cpu.append((cpu_ns(self.fan_pid) - fan_before) / len(frames))
            self.all_cpu.append((sum(cpu_ns(p) for p in self.pids) - all_before) / len(frames))

    async def throughput(self, frames: list[TensorFrame]) -> float:
        """Frames/s with the pipeline kept full (as fast as backpressure allows)."""
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:

            async def feed() -> None:
                for frame in frames:
                    await self.session.send("fan", frame)

            nursery.start_soon(feed)
            for _ in range(len(frames) * self.readers):
                await self.outputs.__anext__()
        return len(frames) / (time.perf_counter() - start)


async def measure(rounds: int, per_round: int, burst: int) -> dict[str, Any]:
    runtimes = {
        v: Runtime(RuntimeConfig(multiprocess=MultiprocessDefaults(share_fan_out=share)))
        for v, share in VARIANTS.items()
    }
    results: dict[str, Any] = {}
    pids: list[int] = []
    async with AsyncExitStack() as rts:
        for rt in runtimes.values():
            _bench_nodes.register(rt.registry)
            await rts.enter_async_context(rt)
        for nbytes in SIZES:
            frames = [TensorFrame(data=np.full(nbytes, i % 251, np.uint8)) for i in range(per_round)]
            copies = memcpy_ns(nbytes, per_round * rounds)
            for k, fan_in in CASES:
                async with AsyncExitStack() as stack:
                    runs = {
                        v: Run(await stack.enter_async_context(rt.open_session(manifest(k, fan_in))), k)
                        for v, rt in runtimes.items()
                    }
                    pids += [p for run in runs.values() for p in run.pids]
                    # Warm-up: every ring's segments made and mapped. A burst that finds the fan's
                    # input slots all kept forwards instead, moving segments between rings, and
                    # the slots left without one make new ones: a few rounds until that settles.
                    for run in runs.values():
                        for _ in range(3):
                            await run.one_by_one(frames[:8], record=False)
                            await run.throughput(frames[:burst])
                    fps: dict[str, list[float]] = {v: [] for v in runs}
                    for r in range(rounds):
                        order = list(runs) if r % 2 == 0 else list(reversed(runs))
                        for v in order:
                            await runs[v].one_by_one(frames)
                            fps[v].append(await runs[v].throughput(frames[:burst]))
                    entry: dict[str, Any] = {"memcpy_p50_us": percentile(copies, 50) / 1000}
                    for run in runs.values():
                        await run.session.close()
                        async for _ in run.outputs:  # drained: the workers' final counters are in
                            pass
                    for v, run in runs.items():
                        metrics = run.session.metrics()
                        fan = metrics.nodes["fan"]
                        entry[v] = {
                            "p50_us": percentile(run.latency_ns, 50) / 1000,
                            "p99_us": percentile(run.latency_ns, 99) / 1000,
                            "fan_cpu_us_per_frame": float(np.median(run.fan_cpu)) / 1000,
                            "all_workers_cpu_us_per_frame": float(np.median(run.all_cpu)) / 1000,
                            "frames_per_s": float(np.median(fps[v])),
                            "frames_shared": fan.frames_shared if fan.pid else metrics.frames_shared,
                            "frames_forwarded": fan.frames_forwarded,
                        }
                    where = "" if fan_in == "worker" else ", fan in the supervisor"
                    results[f"{nbytes // MIB} MiB, {k} readers{where}"] = entry
    return {"results": results, "leftovers": leftovers(pids)}


def main() -> None:
    args = parse_args(__doc__ or "")
    rounds, per_round, burst = (5, 25, 32) if args.quick else (8, 40, 64)
    raw = trio.run(measure, rounds, per_round, burst)
    rows, derived = [], {}
    for label, entry in raw["results"].items():
        copy = entry["memcpy_p50_us"]
        on, off = entry["shared"], entry["forward+copy"]
        k = int(label.split(", ")[1].split()[0])
        for v in VARIANTS:
            e = entry[v]
            rows.append(
                [label, v, e["p50_us"], e["p99_us"], e["fan_cpu_us_per_frame"],
                 e["all_workers_cpu_us_per_frame"], e["frames_per_s"], e["frames_shared"], e["frames_forwarded"]]
            )  # fmt: skip
        rows.append([label, "memcpy (baseline)", copy, "", "", "", "", "", ""])
        derived[label] = {
            "latency_ratio": on["p50_us"] / off["p50_us"],
            "fan_cpu_ratio": on["fan_cpu_us_per_frame"] / off["fan_cpu_us_per_frame"],
            "fan_cpu_saved_in_memcpys": (off["fan_cpu_us_per_frame"] - on["fan_cpu_us_per_frame"]) / copy,
            "copies_at_fan_expected_saved": k - 1,
            "all_workers_cpu_ratio": on["all_workers_cpu_us_per_frame"] / off["all_workers_cpu_us_per_frame"],
            "throughput_ratio": on["frames_per_s"] / off["frames_per_s"],
        }
    print_table(
        f"Fan-out to k ordinary nodes ({rounds}×{per_round} frames per row, one in flight; µs, frames/s)",
        ["case", "fan-out", "latency p50", "p99", "fan CPU / frame", "all workers CPU / frame",
         "frames/s (full)", "shared", "forwarded"],
        rows,
    )  # fmt: skip
    print_table(
        "shared / forward+copy, same run",
        ["case", "latency", "fan CPU", "fan CPU saved (memcpys)", "expected", "all workers CPU", "frames/s"],
        [
            [label, d["latency_ratio"], d["fan_cpu_ratio"], d["fan_cpu_saved_in_memcpys"],
             d["copies_at_fan_expected_saved"], d["all_workers_cpu_ratio"], d["throughput_ratio"]]
            for label, d in derived.items()
        ],
    )  # fmt: skip
    print(f"afterwards: {raw['leftovers']}")
    finish(
        "fanout",
        {
            "quick": args.quick,
            "rounds": rounds,
            "per_round": per_round,
            "results": raw["results"],
            "derived": derived,
            "leftovers": raw["leftovers"],
        },
    )


if __name__ == "__main__":
    main()
