"""A node on another server: what one remote hop adds, against the same node here.

Usage: python benchmarks/bench_remote.py [--quick]

Two servers on loopback: a *far* ``nursery-pipes serve`` in its own process, and a runtime
in this process (the *near* side) whose ``[remote] allowed_hosts`` lists it. The pipeline is
one ``PassThrough`` node, ``in``; per frame, ``perf_counter_ns`` just before
``session.send`` to the moment its output is read, one frame in flight (send, wait, next),
after warm-up frames. Frames are ``TensorFrame``s of uint8, 640 B and 1 MiB.

Paths, measured in the same run, interleaved in rounds:

- ``inprocess``: the node in this process (the baseline: the session's own cost);
- ``multiprocess``: the node in a worker process (two shared-memory ring crossings);
- ``remote``: the node on the far server (``"host"``): this runtime → gRPC → the far
  server's session (its node in-process there) → back.

Derived: added per remote hop = remote − inprocess (p50 and p99); remote / multiprocess.
Throughput: frames/s with the pipeline kept full (the remote executor pipelines frames).

Prints tables; the LAST line is one JSON object (also benchmarks/results/remote.json).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import msgspec
import numpy as np
import trio
from _common import finish, parse_args, percentile, print_table, stream_through

from nursery_pipes import Runtime, TensorFrame
from nursery_pipes._config import RemoteConfig, RuntimeConfig

SIZES = (640, 1 << 20)
PATHS = ("inprocess", "multiprocess", "remote")


def manifest(path: str, far: str) -> dict[str, Any]:
    node: dict[str, Any] = {"id": "in", "node_type": "PassThrough"}
    metadata: dict[str, Any] = {"name": f"bench-remote-{path}"}
    if path == "remote":
        node["host"] = far
    else:
        metadata["multiprocess"] = {"executor_overrides": {"in": path}}
    return {"version": "v1", "metadata": metadata, "nodes": [node], "connections": []}


async def far_server(nursery: trio.Nursery) -> tuple[trio.Process, str]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "nursery_pipes", "serve", "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert process.stderr is not None
    buffer = b""
    with trio.fail_after(60):
        while b"listening on" not in buffer:
            chunk = await process.stderr.receive_some()
            if not chunk:
                raise RuntimeError(f"the far server ended: {buffer.decode(errors='replace')}")
            buffer += chunk
    line = next(line for line in buffer.decode().splitlines() if "listening on" in line)

    async def drain_stderr() -> None:
        assert process.stderr is not None
        async for _ in process.stderr:
            pass

    nursery.start_soon(drain_stderr)
    return process, line.rsplit("listening on", 1)[1].strip()


async def one_at_a_time(session: Any, frame: TensorFrame, n: int) -> list[float]:
    outputs = session.outputs()
    times = []
    for _ in range(n):
        began = time.perf_counter_ns()
        await session.send("in", frame)
        await outputs.__anext__()
        times.append((time.perf_counter_ns() - began) / 1000)
    return times


async def measure(quick: bool) -> dict[str, Any]:
    rounds, per_round, warm, tput_n = (4, 50, 20, 300) if quick else (10, 200, 50, 2000)
    lat: dict[tuple[int, str], list[float]] = {(s, p): [] for s in SIZES for p in PATHS}
    tput: dict[tuple[int, str], float] = {}
    async with trio.open_nursery() as nursery:
        process, far = await far_server(nursery)
        try:
            config = msgspec.structs.replace(RuntimeConfig(), remote=RemoteConfig(allowed_hosts=[far]))
            async with Runtime(config) as runtime:
                for size in SIZES:
                    frame = TensorFrame(data=np.arange(size, dtype=np.uint8))
                    for r in range(rounds):
                        order = PATHS[r % 3 :] + PATHS[: r % 3]
                        for path in order:
                            async with runtime.open_session(manifest(path, far)) as session:
                                await one_at_a_time(session, frame, warm)
                                lat[(size, path)] += await one_at_a_time(session, frame, per_round)
                                await session.close()
                    for path in PATHS:
                        async with runtime.open_session(manifest(path, far)) as session:
                            tput[(size, path)] = tput_n / await stream_through(session, "in", frame, tput_n)
        finally:
            process.terminate()
            with trio.move_on_after(20):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            nursery.cancel_scope.cancel()
    return {"lat": lat, "tput": tput, "rounds": rounds}


def size_label(size: int) -> str:
    return "640 B" if size == 640 else "1 MiB"


def main() -> None:
    args = parse_args(__doc__ or "")
    load_before = os.getloadavg()[0]
    raw = trio.run(measure, args.quick)
    results: dict[str, Any] = {}
    rows, derived_rows = [], []
    for size in SIZES:
        k = size_label(size)
        results[k] = {}
        for path in PATHS:
            values = raw["lat"][(size, path)]
            results[k][path] = {
                "p50_us": round(percentile(values, 50), 1),
                "p99_us": round(percentile(values, 99), 1),
                "n": len(values),
                "frames_per_s": round(raw["tput"][(size, path)], 1),
            }
            r = results[k][path]
            rows.append((k, path, r["n"], r["p50_us"], r["p99_us"], r["frames_per_s"]))
        remote, local, mp = results[k]["remote"], results[k]["inprocess"], results[k]["multiprocess"]
        results[k]["added_per_remote_hop"] = {
            "p50_us": round(remote["p50_us"] - local["p50_us"], 1),
            "p99_us": round(remote["p99_us"] - local["p99_us"], 1),
            "remote_over_multiprocess_p50": round(remote["p50_us"] / mp["p50_us"], 2),
        }
        a = results[k]["added_per_remote_hop"]
        derived_rows.append((k, a["p50_us"], a["p99_us"], a["remote_over_multiprocess_p50"]))
    print_table(
        f"One PassThrough node, one frame in flight (µs; {raw['rounds']} interleaved rounds); "
        "frames/s with the pipeline kept full",
        ["size", "path", "n", "p50", "p99", "frames/s"],
        rows,
    )
    print_table(
        "Added by one remote hop (remote − inprocess, same run)",
        ["size", "p50 µs", "p99 µs", "remote/multiprocess p50"],
        derived_rows,
    )
    print(f"load average (1 min): before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    finish("remote", {"quick": args.quick, "results": results})


if __name__ == "__main__":
    main()
