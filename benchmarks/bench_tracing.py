"""What tracing costs on the hot path: off, sampled at 0.01 and at 1.0 — and, with
``--baseline-rev REV``, the code of revision REV (before the tracing seam) — in one run.

Usage: python benchmarks/bench_tracing.py [--quick] [--baseline-rev REV]

The pipeline: src (in-process) → w1 (worker) → w2 (worker) → sink (in-process), four built-in
``PassThrough`` nodes, 1024-sample float32 audio frames (4 KiB) — small frames, so per-frame
overheads show. Per mode, in a fresh Python process of its own (the baseline's code cannot be
imported beside this checkout's):

- ``stream``: n frames sent as fast as backpressure allows while the sink's outputs are read;
  wall time per frame and the supervisor's CPU time per frame (where the tracing work runs:
  every span is made in the supervisor, worker processes only time their sampled frames);
- ``round trip``: one frame in flight (send, await its output, next): p50 / p95 per frame.

Modes: ``before`` (REV's ``src/``, exported with ``git archive``; only with
``--baseline-rev``), ``off`` (this checkout, no tracer: the seam's no-op default), ``0``,
``0.01`` and ``1.0`` (``OpenTelemetryTracer`` at that ``frame_sample_ratio`` — ``0``: session
and init spans only, nothing per frame — spans through the SDK's
``BatchSpanProcessor`` — what ``serve`` uses — into an exporter that drops them: the cost of
making spans, not of the network). Rounds interleave the modes, in a rotating order, so
background load hits them alike; each mode's numbers are medians over its rounds.

Goal (issue 13): tracing off costs nothing measurable against ``before`` (within noise:
ratio ≤ 1.05 on the stream's supervisor CPU per frame).

Prints tables; the LAST line is one JSON object (also benchmarks/results/tracing.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

GOAL_OFF_RATIO = 1.05
MODES = ("before", "off", "0", "0.01", "1.0")

DOC = {
    "version": "v1",
    "metadata": {
        "name": "bench-tracing",
        "multiprocess": {
            "executor_overrides": {
                "src": "inprocess",
                "w1": "multiprocess",
                "w2": "multiprocess",
                "sink": "inprocess",
            }
        },
    },
    "nodes": [{"id": nid, "node_type": "PassThrough", "params": {}} for nid in ("src", "w1", "w2", "sink")],
    "connections": [{"from": a, "to": b} for a, b in (("src", "w1"), ("w1", "w2"), ("w2", "sink"))],
}


# -- one mode, in a process of its own ------------------------------------------------------------


def child(mode: str, n_stream: int, n_round: int) -> dict[str, Any]:
    import numpy as np
    import trio

    import nursery_pipes
    from nursery_pipes import AudioFrame, Runtime, RuntimeConfig
    from nursery_pipes._config import MultiprocessDefaults

    frame = AudioFrame.from_array(np.zeros(1024, dtype=np.float32), sample_rate=16000)
    config = RuntimeConfig(multiprocess=MultiprocessDefaults(grace_period_secs=0.5))
    tracer, provider = _tracer(mode)
    kwargs: dict[str, Any] = {"tracer": tracer} if tracer is not None else {}

    async def stream(runtime: Any, n: int) -> tuple[float, float]:
        async with runtime.open_session(DOC) as session:
            cpu, start = time.process_time(), time.perf_counter()
            async with trio.open_nursery() as nursery:

                async def feed() -> None:
                    for _ in range(n):
                        await session.send("src", frame)
                    await session.close()

                nursery.start_soon(feed)
                count = 0
                async for _ in session.outputs():
                    count += 1
            assert count == n
            return time.perf_counter() - start, time.process_time() - cpu

    async def round_trips(runtime: Any, n: int) -> list[float]:
        times = []
        async with runtime.open_session(DOC) as session:
            outputs = session.outputs()
            for _ in range(n):
                start = time.perf_counter()
                await session.send("src", frame)
                await outputs.__anext__()
                times.append(time.perf_counter() - start)
            await session.close()
        return times

    async def main() -> dict[str, Any]:
        async with Runtime(config, **kwargs) as runtime:
            await stream(runtime, 300)  # warm-up: workers, rings, code paths
            wall, cpu = await stream(runtime, n_stream)
            times = await round_trips(runtime, n_round)
        times.sort()
        return {
            "stream_wall_us": wall / n_stream * 1e6,
            "stream_cpu_us": cpu / n_stream * 1e6,
            "rt_p50_us": times[len(times) // 2] * 1e6,
            "rt_p95_us": times[int(len(times) * 0.95)] * 1e6,
        }

    result = trio.run(main)
    if provider is not None:
        provider.shutdown()
    result["nursery_pipes"] = str(Path(nursery_pipes.__file__).parent)
    result["spans"] = _DROPPED[0]
    return result


_DROPPED = [0]


def _tracer(mode: str) -> tuple[Any, Any]:
    if mode in ("before", "off"):
        return None, None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from nursery_pipes.tracing import OpenTelemetryTracer

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            _DROPPED[0] += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return OpenTelemetryTracer(provider, frame_sample_ratio=float(mode)), provider


# -- the run ---------------------------------------------------------------------------------------


def run_mode(mode: str, src: Path, n_stream: int, n_round: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(src))  # worker processes import the same code
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(n_stream), str(n_round)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise SystemExit(f"mode {mode} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["nursery_pipes"]) == src / "nursery_pipes", (mode, result["nursery_pipes"])
    return result


def export_baseline(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def main() -> None:
    from _common import finish, print_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and rounds (< 60 s)")
    parser.add_argument("--baseline-rev", help="git revision whose code is the 'before' mode")
    args = parser.parse_args()
    rounds, n_stream, n_round = (3, 2000, 300) if args.quick else (5, 5000, 1000)
    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as tmp:
        sources = {mode: ROOT / "src" for mode in MODES}
        if args.baseline_rev:
            sources["before"] = export_baseline(args.baseline_rev, Path(tmp))
        else:
            del sources["before"]
        modes = list(sources)
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for r in range(rounds):
            for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
                runs[mode].append(run_mode(mode, sources[mode], n_stream, n_round))
    keys = ("stream_wall_us", "stream_cpu_us", "rt_p50_us", "rt_p95_us")
    medians = {m: {k: statistics.median(run[k] for run in runs[m]) for k in keys} for m in modes}
    base = "before" if "before" in medians else "off"
    ratios = {m: {k: medians[m][k] / medians[base][k] for k in keys} for m in modes}
    print_table(
        f"src → worker → worker → sink, 4 KiB audio; medians of {rounds} rounds (ratio vs {base})",
        ["mode", "stream µs/frame", "supervisor CPU µs/frame", "round trip p50 µs", "p95 µs", "spans"],
        [
            [
                m,
                f"{medians[m]['stream_wall_us']:.1f} ({ratios[m]['stream_wall_us']:.3f})",
                f"{medians[m]['stream_cpu_us']:.1f} ({ratios[m]['stream_cpu_us']:.3f})",
                f"{medians[m]['rt_p50_us']:.1f} ({ratios[m]['rt_p50_us']:.3f})",
                f"{medians[m]['rt_p95_us']:.1f}",
                runs[m][-1]["spans"],
            ]
            for m in modes
        ],
    )
    goal = None
    if "before" in ratios:
        off = ratios["off"]["stream_cpu_us"]
        goal = {"off_vs_before_cpu_ratio": off, "goal": GOAL_OFF_RATIO, "met": off <= GOAL_OFF_RATIO}
        print(f"\ntracing off vs before (supervisor CPU per frame): {off:.3f} (goal ≤ {GOAL_OFF_RATIO})")
    finish(
        "tracing",
        {
            "quick": args.quick,
            "rounds": rounds,
            "frames_streamed": n_stream,
            "round_trips": n_round,
            "baseline_rev": args.baseline_rev,
            "medians": medians,
            "ratios_vs": base,
            "ratios": ratios,
            "runs": runs,
            "goal": goal,
        },
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, n_stream, n_round = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(child(mode, n_stream, n_round)))
    else:
        main()
