"""Shared plumbing for the benchmarks: argument parsing, percentiles, the table, the JSON line.

Conventions (every ``bench_<topic>.py``):

- ``python benchmarks/bench_<topic>.py [--quick]`` — ``--quick`` finishes in under 30 s;
- goals are ratios against a baseline measured *in the same run* (this VM is noisy);
- a readable table on stdout, then, as the LAST line, one JSON object with the measured
  values, the baselines and the goals; the same JSON is written to
  ``benchmarks/results/<topic>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (< 30 s)")
    return parser.parse_args()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean/min of a list of measurements (same unit in, same unit out)."""
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
        "min": min(values) if values else float("nan"),
        "n": len(values),
    }


def time_per_call(fn: Callable[[], object], *, repeat: int, number: int) -> list[float]:
    """Seconds per call, one sample per batch of ``number`` calls."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return samples


def memcpy_ns(nbytes: int, n: int) -> list[int]:
    """Nanoseconds per ``numpy.copyto`` of ``nbytes`` into a preallocated array, ``n`` times: the
    baseline of one copy of a payload."""
    import numpy as np

    src = np.full(nbytes, 7, np.uint8)
    dst = np.empty_like(src)
    samples = []
    for _ in range(n):
        began = time.perf_counter_ns()
        np.copyto(dst, src)
        samples.append(time.perf_counter_ns() - began)
    return samples


async def stream_through(session: Any, node_id: str, frame: Any, n: int) -> float:
    """Seconds from the first send to the last output: ``n`` copies of ``frame`` sent to
    ``node_id`` as fast as backpressure allows (then ``close()``), every output read meanwhile."""
    import trio

    start = time.perf_counter()

    async def feed() -> None:
        for _ in range(n):
            await session.send(node_id, frame)
        await session.close()

    count = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        async for _ in session.outputs():
            count += 1
    elapsed = time.perf_counter() - start
    assert count == n
    return elapsed


def leftovers(worker_pids: Iterable[int]) -> dict[str, list[Any]]:
    """What this process left behind: live worker pids among ``worker_pids``, and the /dev/shm
    entries and FIFO directories of its namespaces (``np.<pid>.*``)."""
    mine = f"np.{os.getpid()}."
    return {
        "workers_alive": sorted(p for p in worker_pids if os.path.exists(f"/proc/{p}")),
        "shm_entries": [e for e in os.listdir("/dev/shm") if mine in e],
        "fifo_dirs": [e for e in os.listdir(tempfile.gettempdir()) if e.startswith(mine)],
    }


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 100_000:
            return f"{value:.3f}"
        return f"{value:.3g}"
    return str(value)


def finish(topic: str, result: dict[str, Any]) -> None:
    """Write benchmarks/results/<topic>.json and print the JSON as the last line."""
    result = {"benchmark": topic, "environment": environment(), **result}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{topic}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    sys.stdout.flush()
    print(json.dumps(result))
