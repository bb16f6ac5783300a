"""nginx in front of a replica vs the replica direct, in the same run; and a replica's memory.

Usage: python benchmarks/bench_nginx.py [--quick]

One ``nursery-pipes serve`` process (a real replica) and a real nginx running
deploy/nginx/nursery-pipes.conf with that replica as its only upstream (tests/nginx_fixtures.py
starts it; nginx from the OS package manager, ``make setup`` installs it). Clients are grpclib
streams in this process. Measured, each against its direct baseline in the same run:

- **latency per chunk**: one session (a single in-process PassThrough, so the path is what is
  measured), one 20 ms audio chunk (320 float32 samples, 1280 B) sent, its result awaited, the
  next sent; direct and through nginx alternate in batches, so both see the same machine;
  p50/p99 and what nginx adds;
- **throughput of 20 concurrent streams**: each sends chunks keeping 8 in flight and reads its
  results, for a fixed time; chunks per second in total, direct vs through nginx;
- **session setup**: StreamInit → StreamReady (nginx opens an upstream connection per session:
  deploy/nginx/nursery-pipes.conf says why there is no keepalive);
- **memory of the replica** (docs/scaling.md sizes pods from it): the PSS of the server and all
  its worker processes (/proc/<pid>/smaps_rollup; PSS shares the pages forked workers have in
  common fairly, RSS would count them once per worker), idle and with sessions open — 20
  sessions of one worker node each, then 10 sessions of five worker nodes each (the
  bench_scale.py chain); per session and per worker node.

Prints tables; the LAST line is one JSON object (also benchmarks/results/nginx.json).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' real-process fixtures

import numpy as np
import trio
import trio_asyncio
from _common import finish, parse_args, print_table, summarize
from nginx_fixtures import nginx_binary, running_nginx
from service_fixtures import open_stream, serve_process

from nursery_pipes._proto.remotemedia import v1 as pb

CHUNK = pb.DataBuffer(
    audio=pb.AudioBuffer(
        samples=np.zeros(320, dtype=np.float32).tobytes(), sample_rate=16000, channels=1, num_samples=320
    )
)
ECHO = {
    "version": "v1",
    "metadata": {"name": "bench-nginx", "multiprocess": {"executor_overrides": {"echo": "inprocess"}}},
    "nodes": [{"id": "echo", "node_type": "PassThrough", "params": {}}],
    "connections": [],
}
IN_FLIGHT = 8
STREAMS = 20


def worker_manifest(nodes: int) -> dict[str, Any]:
    ids = [f"n{i}" for i in range(nodes)]
    return {
        "version": "v1",
        "metadata": {
            "name": f"bench-memory-{nodes}",
            "multiprocess": {
                "executor_overrides": dict.fromkeys(ids, "multiprocess"),
                "init_timeout_secs": 120,
            },
        },
        "nodes": [{"id": i, "node_type": "PassThrough", "params": {}} for i in ids],
        "connections": [{"from": a, "to": b} for a, b in itertools.pairwise(ids)],
    }


# ----------------------------------------------------------------------------- client side (asyncio)


async def latencies(port: int, n: int) -> list[float]:
    """Seconds from sending each chunk to reading its result, one at a time."""
    out = []
    async with open_stream(port) as s:
        await s.init(ECHO)
        await s.until("ready")
        for seq in range(1, n + 1):
            start = time.perf_counter()
            await s.chunk("echo", CHUNK, seq)
            await s.until("result")
            out.append(time.perf_counter() - start)
        await s.close()
        await s.end()
        await s.rest()
    return out


async def pipelined(port: int, seconds: float, counts: list[int]) -> None:
    """One stream: keep IN_FLIGHT chunks outstanding for ``seconds``; count the results."""
    async with open_stream(port) as s:
        await s.init(ECHO)
        await s.until("ready")
        window = asyncio.Semaphore(IN_FLIGHT)
        stop = time.perf_counter() + seconds
        done = 0

        async def send() -> None:
            for seq in itertools.count(1):
                await window.acquire()
                if time.perf_counter() >= stop:
                    break
                await s.chunk("echo", CHUNK, seq)
            await s.close()
            await s.end()

        sender = asyncio.ensure_future(send())
        while (item := await s.recv()) is not None:
            if item[0] == "result":
                done += 1
                window.release()
        await sender
        await s.stream.recv_trailing_metadata()
        counts.append(done)


async def throughput(port: int, seconds: float) -> float:
    counts: list[int] = []
    start = time.perf_counter()
    await asyncio.gather(*(pipelined(port, seconds, counts) for _ in range(STREAMS)))
    elapsed = time.perf_counter() - start
    assert len(counts) == STREAMS
    return sum(counts) / elapsed


async def setup_times(port: int, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        async with open_stream(port) as s:
            await s.init(ECHO)
            await s.until("ready")
            out.append(time.perf_counter() - start)
            await s.close()
            await s.end()
            await s.rest()
    return out


async def hold_sessions(
    port: int, doc: dict[str, Any], n: int, opened: Callable[[], Awaitable[None]]
) -> None:
    """Open ``n`` sessions of ``doc`` (each through one chunk), call ``opened``, close them."""
    streams = []
    try:
        for _ in range(n):
            cm = open_stream(port)
            s = await cm.__aenter__()
            streams.append((cm, s))
            await s.init(doc)
            await s.until("ready")
            await s.chunk("n0", CHUNK, 1)
            await s.until("result")
        await opened()
    finally:
        for cm, s in streams:
            await s.close()
            await s.end()
            await s.rest()
            await cm.__aexit__(None, None, None)


# ----------------------------------------------------------------------------- memory (/proc)


def tree(pid: int) -> list[int]:
    """``pid`` and every descendant (from /proc/<pid>/task/*/children)."""
    found, pending = [], [pid]
    while pending:
        p = pending.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):  # it exited meanwhile
                pending.extend(int(c) for c in (task / "children").read_text().split())
    return found


def memory(pid: int) -> dict[str, float]:
    """PSS and RSS of the process tree, MiB; how many processes."""
    pss = rss = 0
    pids = tree(pid)
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == "Pss":
                    pss += int(value.split()[0])
                elif key == "Rss":
                    rss += int(value.split()[0])
        except OSError:
            pass
    return {"pss_mib": pss / 1024, "rss_mib": rss / 1024, "processes": len(pids)}


# ----------------------------------------------------------------------------- the run


async def run(quick: bool) -> dict[str, Any]:
    rounds, per_round = (6, 50) if quick else (20, 100)
    seconds = 2.0 if quick else 6.0
    env = {"NURSERY_PIPES_LIMITS__MAX_SESSIONS": "64", "NURSERY_PIPES_LIMITS__MAX_PROCESSES": "64"}
    prefix = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    async with (
        serve_process(env=env) as replica,
        running_nginx(prefix, [replica.address]) as nginx,
        trio_asyncio.open_loop(),
    ):
        aio = trio_asyncio.aio_as_trio
        paths = {"direct": replica.port, "nginx": nginx.port}
        await aio(latencies)(replica.port, 20)  # warm up both paths
        await aio(latencies)(nginx.port, 20)
        lat: dict[str, list[float]] = {"direct": [], "nginx": []}
        for _ in range(rounds):
            for name, port in paths.items():
                lat[name] += await aio(latencies)(port, per_round)
        rate = {name: await aio(throughput)(port, seconds) for name, port in paths.items()}
        rate_again = {name: await aio(throughput)(port, seconds) for name, port in reversed(paths.items())}
        setup = {name: await aio(setup_times)(port, 10 if quick else 30) for name, port in paths.items()}

        idle = memory(replica.process.pid)
        loaded: dict[str, dict[str, float]] = {}
        for label, nodes, sessions in (("1 worker node", 1, STREAMS), ("5 worker nodes", 5, 10)):

            async def measure(label: str = label) -> None:
                loaded[label] = memory(replica.process.pid)

            await aio(hold_sessions)(replica.port, worker_manifest(nodes), sessions, aio_callback(measure))
            loaded[label]["sessions"] = sessions
            loaded[label]["nodes"] = nodes
    shutil.rmtree(prefix)
    return {
        "latency_s": lat,
        "rate": rate,
        "rate_again": rate_again,
        "setup_s": setup,
        "idle": idle,
        "loaded": loaded,
    }


def aio_callback(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A trio coroutine function, callable from the asyncio side."""
    return trio_asyncio.trio_as_aio(fn)


def main() -> None:
    args = parse_args(__doc__ or "")
    if nginx_binary() is None:
        sys.exit("nginx is not installed: `make setup` installs it (apt-get install nginx)")
    started = time.monotonic()
    r = trio.run(run, args.quick)
    ms = {name: summarize([v * 1000 for v in values]) for name, values in r["latency_s"].items()}
    added = {q: ms["nginx"][q] - ms["direct"][q] for q in ("p50", "p95", "p99")}
    print_table(
        "Latency per chunk, send → result (ms; one stream, one chunk at a time, 1280 B audio)",
        ["path", "p50", "p95", "p99", "n"],
        [(name, s["p50"], s["p95"], s["p99"], s["n"]) for name, s in ms.items()]
        + [("nginx adds", added["p50"], added["p95"], added["p99"], "")],
    )
    rate = {name: (r["rate"][name] + r["rate_again"][name]) / 2 for name in r["rate"]}
    print_table(
        f"Throughput, {STREAMS} concurrent streams, {IN_FLIGHT} chunks in flight each (chunks/s)",
        ["path", "run 1", "run 2", "mean", "vs direct"],
        [(n, r["rate"][n], r["rate_again"][n], rate[n], rate[n] / rate["direct"]) for n in rate],
    )
    setup = {name: summarize([v * 1000 for v in values]) for name, values in r["setup_s"].items()}
    print_table(
        "Session setup, StreamInit → StreamReady (ms)",
        ["path", "p50", "p99", "n"],
        [(name, s["p50"], s["p99"], s["n"]) for name, s in setup.items()],
    )
    idle = r["idle"]
    memory_rows = [("idle replica", 0, 0, idle["processes"], idle["pss_mib"], idle["rss_mib"], "", "")]
    per_session = {}
    for label, m in r["loaded"].items():
        delta = m["pss_mib"] - idle["pss_mib"]
        per_session[label] = {
            "sessions": m["sessions"],
            "nodes": m["nodes"],
            "pss_mib": m["pss_mib"],
            "per_session_mib": delta / m["sessions"],
            "per_worker_node_mib": delta / (m["sessions"] * m["nodes"]),
        }
        memory_rows.append((
            f"{m['sessions']} sessions × {label}", m["sessions"], m["nodes"], m["processes"], m["pss_mib"],
            m["rss_mib"], delta / m["sessions"], delta / (m["sessions"] * m["nodes"]),
        ))  # fmt: skip
    print_table(
        "Replica memory, server + workers (MiB; PSS: shared pages split between the processes sharing them)",
        ["state", "sessions", "nodes", "processes", "PSS", "RSS (double counts)", "PSS/session", "PSS/node"],
        memory_rows,
    )
    finish(
        "nginx",
        {
            "quick": args.quick,
            "latency_ms": ms,
            "nginx_adds_ms": added,
            "throughput_chunks_per_s": {"runs": [r["rate"], r["rate_again"]], "mean": rate},
            "throughput_ratio_nginx_vs_direct": rate["nginx"] / rate["direct"],
            "setup_ms": setup,
            "memory": {"idle": idle, "loaded": per_session},
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "seconds": round(time.monotonic() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
