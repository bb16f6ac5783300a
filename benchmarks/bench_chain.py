"""A chain of 5 nodes, each in its own worker process: latency by frame size, against baselines.

Usage: python benchmarks/bench_chain.py [--quick]

Frames are ``TensorFrame``s of uint8, exactly 640 B, 64 KiB, 1 MiB and 10 MiB. The chain is
5 built-in ``PassThrough`` nodes, n1 → … → n5, in one session; with ``slot_size`` 256 KiB the
two small sizes travel inside the ring slots and the two big ones in the slots' external
segments. Per frame: ``perf_counter_ns`` just before ``session.send`` to the moment the
sink's output is read, one frame in flight at a time (send, wait for its output, next),
after warm-up frames (one at a time, then the pipeline full: every ring slot has then had
its external segment at the 10 MiB size).

Measured in the same run, interleaved in rounds (the order of the paths rotates from round
to round; nothing pinned):

- ``multiprocess``: the chain, every node routed to ``multiprocess``
  (``metadata.multiprocess.executor_overrides``): 6 ring crossings (supervisor → n1, …,
  n5 → supervisor). Copies of the payload: a frame in the slots (640 B, 64 KiB) 7 — into
  the first ring, each worker into its output ring (PassThrough is ``zero_copy``: it reads
  its input in place), out of the last ring into the supervisor; a frame in external
  segments (1 MiB, 10 MiB) 1 — into the first ring; each worker forwards the segment by
  reference (``ipc/_ownership.py``) and the supervisor lends it to the client as a read-only
  view (``ipc/_pool.py``);
- ``multiprocess_1``: a chain of ONE such worker (2 crossings): the difference to the 5-worker
  chain, / 4, is what one more worker costs (``marginal_hop_us``), the fixed costs (the copy
  into the first ring, the session) cancelled out;
- ``multiprocess_fused``: the 5-worker chain's manifest with ``fuse_chains``: the 5 nodes in
  ONE worker (2 crossings; docs/design.md, fused runs) — not what the goals measure (every
  node in its own process), reported beside them;
- ``inprocess``: the same manifest, every node ``inprocess`` (the output *is* the input object);
- ``memcpy``: one ``numpy.copyto`` of the payload into a preallocated array (small sizes
  timed in batches, per-copy time = batch / count);
- ``pipe``: 5 processes forwarding over ``multiprocessing.Pipe`` (spawn; ``send_bytes`` /
  ``recv_bytes``): parent → p1 → … → p5 → parent, one frame in flight: 6 transfers;
- ``pipecat`` (only when ``pipecat-ai`` is importable, see benchmarks/requirements-peers.txt):
  5 pass-through ``FrameProcessor``s in one Pipecat pipeline, one asyncio loop (in a thread
  of its own, interleaved like the rest), carrying an ``OutputAudioRawFrame`` that holds the
  payload ``bytes`` (``_peer_pipecat_chain.py``). Otherwise skipped with a note.

Derived, per size (all from p50s): ``hop`` = (multiprocess − inprocess) / 6, the cost of one
process crossing (the in-process chain's own cost removed, spread over the 6 ring
crossings); the chain over one memcpy, over the Pipe chain, over the copies it makes (7 or 1
makes). Throughput (frames/s with the pipeline kept full: a feeder sends n frames as fast as
backpressure allows while the reader drains them) for multiprocess, inprocess and pipe.

Goals (issue): 10 MiB chain p50 ≤ 2× one memcpy of 10 MiB; 640 B chain p50 ≤ 1.0× the Pipe
chain; hop cost flat in frame size above 64 KiB, read here as hop(10 MiB) ≤ 2× hop(64 KiB)
(the log-log slope over 64 KiB…10 MiB is reported too; a copy per hop gives slope ~1); and
the same for the marginal hop, mhop(10 MiB) ≤ 2× mhop(64 KiB).

If matplotlib is importable: benchmarks/results/chain.png, cost per crossing vs frame size,
log-log, with the memcpy and Pipe baselines (else skipped with a note in the JSON).

Prints tables; the LAST line is one JSON object (also benchmarks/results/chain.json).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, _peer_pipecat_chain

import numpy as np
import trio
from _common import RESULTS, finish, leftovers, parse_args, percentile, print_table

from nursery_pipes import Runtime, RuntimeConfig, TensorFrame
from nursery_pipes._config import MultiprocessDefaults

now = time.perf_counter_ns
KIB, MIB = 1 << 10, 1 << 20
SIZES = (640, 64 * KIB, MIB, 10 * MIB)
NODES = 5
CROSSINGS = NODES + 1  # supervisor → n1 → … → n5 → supervisor
INLINE_COPIES = NODES + 2  # into the first ring, each worker's output, out of the last ring
EXTERNAL_COPIES = 1  # into the first ring: forwarded by reference, lent out (ipc/_pool.py)


def copies(size: int) -> int:
    """Copies of the payload the chain makes for a frame of ``size`` bytes."""
    return EXTERNAL_COPIES if size > SLOT_SIZE else INLINE_COPIES


SLOT_SIZE = 256 * KIB  # 640 B and 64 KiB inline, 1 MiB and 10 MiB in external segments
SLOT_COUNT = 8
PATHS = ("multiprocess", "multiprocess_1", "multiprocess_fused", "inprocess", "memcpy", "pipe", "pipecat")
GOAL_BIG_VS_MEMCPY = 2.0
GOAL_SMALL_VS_PIPE = 1.0
GOAL_FLAT = 2.0
SPAWN = multiprocessing.get_context("spawn")


def size_label(size: int) -> str:
    if size >= MIB:
        return f"{size // MIB} MiB"
    if size >= KIB:
        return f"{size // KIB} KiB"
    return f"{size} B"


def manifest(executor: str, nodes: int = NODES, *, fuse: bool = False) -> dict[str, Any]:
    ids = [f"n{i + 1}" for i in range(nodes)]
    return {
        "version": "v1",
        "metadata": {
            "name": f"bench-chain-{executor}-{nodes}",
            "multiprocess": {
                "executor_overrides": dict.fromkeys(ids, executor),
                "channel_capacity": SLOT_COUNT,
                "fuse_chains": fuse,
            },
        },
        "nodes": [{"id": nid, "node_type": "PassThrough", "params": {}} for nid in ids],
        "connections": [{"from": a, "to": b} for a, b in pairwise(ids)],
    }


# ------------------------------------------------------------------------------ baselines


def memcpy(src: np.ndarray, dst: np.ndarray, repeat: int) -> list[int]:
    """Nanoseconds per ``np.copyto``; small payloads in batches (time of the batch / count)."""
    number = max(1, min(1000, MIB // src.nbytes))
    out = []
    for _ in range(repeat):
        t0 = now()
        for _ in range(number):
            np.copyto(dst, src)
        out.append((now() - t0) // number)
    return out


def pipe_forward(src: Any, dst: Any) -> None:
    """One process of the Pipe chain: forward every message; an empty one ends the chain."""
    while True:
        data = src.recv_bytes()
        dst.send_bytes(data)
        if not data:
            return


class PipeChain:
    """``nodes`` spawned processes forwarding over ``multiprocessing.Pipe``: parent → p1 → … → parent."""

    def __init__(self, nodes: int) -> None:
        conns = [SPAWN.Pipe() for _ in range(nodes + 1)]
        self.head, self.tail = conns[0][0], conns[nodes][1]
        self.procs: list[Any] = []
        try:
            for i in range(nodes):
                proc = SPAWN.Process(target=pipe_forward, args=(conns[i][1], conns[i + 1][0]), daemon=True)
                proc.start()
                self.procs.append(proc)
        finally:
            for i in range(nodes):  # the children's ends: only the children keep them open
                conns[i][1].close()
                conns[i + 1][0].close()

    def run(self, n: int, payload: bytes) -> list[int]:
        out = []
        head, tail = self.head, self.tail
        for _ in range(n):
            t0 = now()
            head.send_bytes(payload)
            got = tail.recv_bytes()
            out.append(now() - t0)
        assert len(got) == len(payload)
        return out

    def throughput(self, n: int, payload: bytes) -> float:
        def feed() -> None:
            for _ in range(n):
                self.head.send_bytes(payload)

        t0 = now()
        sender = threading.Thread(target=feed)
        sender.start()
        for _ in range(n):
            self.tail.recv_bytes()
        elapsed = now() - t0
        sender.join()
        return n / (elapsed / 1e9)

    def close(self) -> None:
        try:
            if all(p.is_alive() for p in self.procs):
                self.head.send_bytes(b"")
                if self.tail.poll(10):
                    self.tail.recv_bytes()
        finally:
            for proc in self.procs:
                proc.join(5)
                if proc.is_alive():  # only our own children, by their Process object
                    proc.kill()
                    proc.join()
            self.head.close()
            self.tail.close()


# ------------------------------------------------------------------------- runtime paths


async def chain_latency(session: Any, frame: TensorFrame, n: int, *, same_object: bool) -> list[int]:
    outputs = session.outputs()
    out = []
    for _ in range(n):
        t0 = now()
        await session.send("n1", frame)
        got = await outputs.__anext__()
        out.append(now() - t0)
    result = got.frame
    assert result.nbytes == frame.nbytes, (result.nbytes, frame.nbytes)
    assert (result is frame) == same_object
    return out


async def chain_throughput(session: Any, frame: TensorFrame, n: int) -> float:
    """Frames/s: n frames sent as fast as backpressure allows while the outputs are read."""
    outputs = session.outputs()

    async def feed() -> None:
        for _ in range(n):
            await session.send("n1", frame)

    t0 = now()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        for _ in range(n):
            await outputs.__anext__()
    return n / ((now() - t0) / 1e9)


def open_peer() -> tuple[Any, dict[str, Any]]:
    if importlib.util.find_spec("pipecat") is None:
        return None, {
            "skipped": "pipecat-ai is not installed (pip install -r benchmarks/requirements-peers.txt, "
            "in .venv-peers)"
        }
    import _peer_pipecat_chain

    peer = _peer_pipecat_chain.PipecatChain(NODES)
    return peer, {"version": _peer_pipecat_chain.VERSION, "frame": _peer_pipecat_chain.FRAME_TYPE}


# ----------------------------------------------------------------------------------- driver


def counts(quick: bool) -> tuple[int, dict[int, int], dict[int, int]]:
    """Rounds, frames per round per size (latency), frames per throughput run per size."""
    if quick:
        return (
            6,
            {640: 400, 64 * KIB: 300, MIB: 60, 10 * MIB: 12},
            {640: 400, 64 * KIB: 200, MIB: 40, 10 * MIB: 12},
        )
    return (
        10,
        {640: 1000, 64 * KIB: 600, MIB: 150, 10 * MIB: 30},
        {640: 2000, 64 * KIB: 800, MIB: 150, 10 * MIB: 40},
    )


async def measure(quick: bool) -> dict[str, Any]:
    rounds, n_lat, n_tp = counts(quick)
    lat: dict[tuple[int, str], list[int]] = {}
    tput: dict[tuple[int, str], list[float]] = {}
    rng = np.random.default_rng(1)
    payloads = {size: rng.integers(0, 256, size, dtype=np.uint8) for size in SIZES}
    frames = {size: TensorFrame(data=payloads[size]) for size in SIZES}
    as_bytes = {size: payloads[size].tobytes() for size in SIZES}
    dsts = {size: np.empty(size, dtype=np.uint8) for size in SIZES}

    config = RuntimeConfig(
        multiprocess=MultiprocessDefaults(
            grace_period_secs=1.0, init_timeout_secs=60, slot_size=SLOT_SIZE, slot_count=SLOT_COUNT
        )
    )
    runtime = Runtime(config)
    closers: list[Callable[[], None]] = []
    worker_pids: list[int] = []
    peer: Any = None
    peer_info: dict[str, Any] = {}
    try:
        pipe = PipeChain(NODES)
        closers.append(pipe.close)
        peer, peer_info = open_peer()
        if peer is not None:
            closers.append(peer.close)
        async with runtime, AsyncExitStack() as stack:
            mp = await stack.enter_async_context(runtime.open_session(manifest("multiprocess")))
            mp1 = await stack.enter_async_context(runtime.open_session(manifest("multiprocess", 1)))
            fused = await stack.enter_async_context(runtime.open_session(manifest("multiprocess", fuse=True)))
            ip = await stack.enter_async_context(runtime.open_session(manifest("inprocess")))
            worker_pids = [m.pid for m in mp.metrics().nodes.values() if m.pid]

            async def run_path(path: str, size: int, n: int) -> list[int]:
                if path == "multiprocess":
                    return await chain_latency(mp, frames[size], n, same_object=False)
                if path == "multiprocess_1":
                    return await chain_latency(mp1, frames[size], n, same_object=False)
                if path == "multiprocess_fused":
                    return await chain_latency(fused, frames[size], n, same_object=False)
                if path == "inprocess":
                    return await chain_latency(ip, frames[size], n, same_object=True)
                if path == "memcpy":
                    return memcpy(payloads[size], dsts[size], n)
                if path == "pipe":
                    return pipe.run(n, as_bytes[size])
                result: list[int] = await trio.to_thread.run_sync(peer.measure, as_bytes[size], n)
                return result

            paths = [p for p in PATHS if p != "pipecat" or peer is not None]
            # warm-up: biggest first, so that every slot of every ring gets its external segment
            # at the 10 MiB size (smaller frames reuse it), then every size on every path
            for size in sorted(SIZES, reverse=True):
                for path in paths:
                    await run_path(path, size, 2 * SLOT_COUNT if size >= MIB else 50)
            # ... and bursts with the pipeline full, each size: the session then owns as many
            # external segments as the measurement will need (big outputs are lent out of the
            # last ring, ipc/_pool.py, and a burst makes more only up to its high-water mark)
            for size in sorted(SIZES, reverse=True):
                for _ in range(3):
                    await chain_throughput(mp, frames[size], max(n_tp[size], 2 * CROSSINGS * SLOT_COUNT))
            for r in range(rounds):
                order = paths[r % len(paths) :] + paths[: r % len(paths)]
                for size in SIZES:
                    for path in order:
                        lat.setdefault((size, path), []).extend(await run_path(path, size, n_lat[size]))
                    tput.setdefault((size, "multiprocess"), []).append(
                        await chain_throughput(mp, frames[size], n_tp[size])
                    )
                    tput.setdefault((size, "inprocess"), []).append(
                        await chain_throughput(ip, frames[size], n_tp[size])
                    )
                    tput.setdefault((size, "pipe"), []).append(pipe.throughput(n_tp[size], as_bytes[size]))
                    await trio.lowlevel.checkpoint()
    finally:
        for close in reversed(closers):
            close()
    return {"lat": lat, "tput": tput, "peer": peer_info, "worker_pids": worker_pids, "rounds": rounds}


def summary(values: list[int]) -> dict[str, float]:
    us = [v / 1000 for v in values]
    return {
        "n": len(us),
        "p50_us": round(percentile(us, 50), 2),
        "p99_us": round(percentile(us, 99), 2),
        "min_us": round(min(us), 2),
    }


def derive(res: dict[str, dict[str, dict[str, float]]], have_peer: bool) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for size in SIZES:
        r = {path: v["p50_us"] for path, v in res[size_label(size)].items()}
        mp, ip, cp, pipe = r["multiprocess"], r["inprocess"], r["memcpy"], r["pipe"]
        hop = (mp - ip) / CROSSINGS
        d = {
            "chain_over_memcpy": mp / cp,
            "chain_over_pipe": mp / pipe,
            "chain_over_inprocess": mp / ip,
            "copies": copies(size),
            "chain_over_copies": mp / (copies(size) * cp),
            "hop_per_crossing_us": hop,
            "hop_per_worker_us": (mp - ip) / NODES,
            "hop_over_memcpy": hop / cp,
            "pipe_per_transfer_us": pipe / CROSSINGS,
            "marginal_hop_us": (mp - r["multiprocess_1"]) / (NODES - 1),
            "fused_over_memcpy": r["multiprocess_fused"] / cp,
            "fused_over_pipe": r["multiprocess_fused"] / pipe,
            "fused_over_chain": r["multiprocess_fused"] / mp,
            "inprocess_per_node_us": ip / NODES,
        }
        if have_peer:
            d["chain_over_pipecat"] = mp / r["pipecat"]
            d["pipecat_per_processor_us"] = r["pipecat"] / NODES
        out[size_label(size)] = {k: round(v, 3) for k, v in d.items()}
    return out


def loglog_slope(xs: list[int], ys: list[float]) -> float:
    if any(y <= 0 for y in ys):
        return float("nan")
    slope, _ = np.polyfit(np.log10(xs), np.log10(ys), 1)
    return round(float(slope), 3)


def goals(res: dict[str, Any], derived: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    big, small = size_label(10 * MIB), size_label(640)
    ratio_big = derived[big]["chain_over_memcpy"]
    ratio_small = derived[small]["chain_over_pipe"]
    flat_sizes = [s for s in SIZES if s >= 64 * KIB]
    hops = [derived[size_label(s)]["hop_per_crossing_us"] for s in flat_sizes]
    flat = hops[-1] / hops[0] if hops[0] > 0 else float("inf")
    # the cost of one more worker in the chain (5-worker chain − 1-worker chain, / 4): the fixed
    # costs (the copy into the first ring, the session) cancel out
    mhops = [derived[size_label(s)]["marginal_hop_us"] for s in flat_sizes]
    mflat = mhops[-1] / mhops[0] if mhops[0] > 0 else float("inf")
    return {
        "chain_10MiB_p50_over_memcpy_10MiB": {
            "goal": f"<= {GOAL_BIG_VS_MEMCPY:g}", "measured": round(ratio_big, 2),
            "met": ratio_big <= GOAL_BIG_VS_MEMCPY,
        },
        "chain_640B_p50_over_pipe_chain_640B": {
            "goal": f"<= {GOAL_SMALL_VS_PIPE:g}", "measured": round(ratio_small, 2),
            "met": ratio_small <= GOAL_SMALL_VS_PIPE,
        },
        "hop_flat_above_64KiB: hop(10 MiB) / hop(64 KiB)": {
            "goal": f"<= {GOAL_FLAT:g}", "measured": round(flat, 2), "met": flat <= GOAL_FLAT,
            "loglog_slope_64KiB_10MiB": loglog_slope(flat_sizes, hops),
        },
        "marginal_hop_flat_above_64KiB: mhop(10 MiB) / mhop(64 KiB)": {
            "goal": f"<= {GOAL_FLAT:g}", "measured": round(mflat, 2), "met": mflat <= GOAL_FLAT,
            "loglog_slope_64KiB_10MiB": loglog_slope(flat_sizes, [max(m, 1e-9) for m in mhops]),
        },
    }  # fmt: skip


def plot(res: dict[str, Any], derived: dict[str, dict[str, float]], have_peer: bool) -> str:
    if importlib.util.find_spec("matplotlib") is None:
        return "skipped: matplotlib is not importable"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [size_label(s) for s in SIZES]
    series = {
        "nursery_pipes hop: (multiprocess − inprocess chain) / 6 crossings": [
            derived[k]["hop_per_crossing_us"] for k in labels
        ],
        "nursery_pipes marginal hop: (5-worker − 1-worker chain) / 4": [
            max(derived[k]["marginal_hop_us"], 0.1) for k in labels
        ],
        "one memcpy (numpy.copyto)": [res[k]["memcpy"]["p50_us"] for k in labels],
        "multiprocessing.Pipe: chain / 6 transfers": [derived[k]["pipe_per_transfer_us"] for k in labels],
        "in-process chain / 5 nodes": [derived[k]["inprocess_per_node_us"] for k in labels],
    }
    if have_peer:
        series["Pipecat chain / 5 processors"] = [derived[k]["pipecat_per_processor_us"] for k in labels]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, ys in series.items():
        pts = [(x, y) for x, y in zip(SIZES, ys, strict=True) if y > 0]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(list(SIZES), labels)
    ax.set_xlabel("frame size")
    ax.set_ylabel("p50 µs per crossing / copy / node")
    ax.set_title("5-node chain: cost per hop vs frame size (log-log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = RESULTS / "chain.png"
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.relative_to(RESULTS.parent.parent))


def chain_leftovers(worker_pids: list[int]) -> dict[str, Any]:
    """What this process left behind (``_common.leftovers``), and its live child processes."""
    left = leftovers(worker_pids)
    return {
        "shm_entries": left["shm_entries"],
        "fifo_dirs": left["fifo_dirs"],
        "worker_pids_checked": len(worker_pids),
        "live_worker_pids": left["workers_alive"],
        "live_children": [p.pid for p in multiprocessing.active_children()],
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    raw = trio.run(measure, args.quick)
    load_after = os.getloadavg()[0]
    peer_info: dict[str, Any] = raw["peer"]
    have_peer = "skipped" not in peer_info

    res: dict[str, dict[str, dict[str, float]]] = {}
    for (size, path), values in raw["lat"].items():
        res.setdefault(size_label(size), {})[path] = summary(values)
    fps = {
        size_label(size): {
            path: round(statistics.median(raw["tput"][(size, path)]), 1)
            for path in ("multiprocess", "inprocess", "pipe")
        }
        for size in SIZES
    }
    derived = derive(res, have_peer)
    report_goals = goals(res, derived)
    plot_note = plot(res, derived, have_peer)
    left = chain_leftovers(raw["worker_pids"])

    paths = [p for p in PATHS if p != "pipecat" or have_peer]
    rows = []
    for size in SIZES:
        k = size_label(size)
        for path in paths:
            r = res[k][path]
            rows.append((k, path, r["n"], r["p50_us"], r["p99_us"], r["min_us"], fps[k].get(path, "—")))
    print_table(
        f"Latency per frame, one in flight (µs; {raw['rounds']} interleaved rounds); "
        f"chains of {NODES} PassThrough; frames/s with the pipeline kept full",
        ["size", "path", "n", "p50", "p99", "min", "frames/s"],
        rows,
    )
    if not have_peer:
        print(f"  pipecat rows skipped: {peer_info['skipped']}")
    print_table(
        "Ratios of p50s; hop = (multiprocess − inprocess) / 6 crossings (µs); mhop = (multiprocess − "
        "multiprocess_1) / 4: one more worker (µs); pipe/6 = Pipe chain per transfer",
        ["size", "mp/memcpy", "mp/pipe", "mp/inproc", "mp/(copies)", "hop µs", "mhop µs", "hop/memcpy",
         "pipe/6 µs"]
        + (["mp/pipecat"] if have_peer else []),
        [
            (k, d["chain_over_memcpy"], d["chain_over_pipe"], d["chain_over_inprocess"],
             d["chain_over_copies"], d["hop_per_crossing_us"], d["marginal_hop_us"], d["hop_over_memcpy"],
             d["pipe_per_transfer_us"], *([d["chain_over_pipecat"]] if have_peer else []))
            for k, d in derived.items()
        ],
    )  # fmt: skip
    print_table(
        "Goals",
        ["goal", "target", "measured", "met"],
        [(k, g["goal"], g["measured"], "MET" if g["met"] else "NOT MET") for k, g in report_goals.items()],
    )
    flat = report_goals["hop_flat_above_64KiB: hop(10 MiB) / hop(64 KiB)"]
    print(
        f"  hop log-log slope over 64 KiB…10 MiB: {flat['loglog_slope_64KiB_10MiB']} (0 = flat, 1 = ∝ size)"
    )
    print(f"\nplot: {plot_note}")
    print(f"leftovers: {left}")
    print(f"load average (1 min): before {load_before:.2f}, after {load_after:.2f}")

    finish(
        "chain",
        {
            "quick": args.quick,
            "rounds": raw["rounds"],
            "nodes": NODES,
            "frame": "TensorFrame uint8, shape (size,)",
            "sizes_bytes": list(SIZES),
            "ring": {"slot_size": SLOT_SIZE, "slot_count": SLOT_COUNT, "channel_capacity": SLOT_COUNT},
            "results_us": res,
            "throughput_fps_median": fps,
            "derived": derived,
            "baselines": {
                size_label(s): {
                    "memcpy_p50_us": res[size_label(s)]["memcpy"]["p50_us"],
                    "pipe_chain_p50_us": res[size_label(s)]["pipe"]["p50_us"],
                    "inprocess_chain_p50_us": res[size_label(s)]["inprocess"]["p50_us"],
                }
                for s in SIZES
            },
            "peer_pipecat": peer_info,
            "goals": report_goals,
            "goal_met": all(g["met"] for g in report_goals.values()),
            "definitions": {
                "latency": "perf_counter_ns before session.send → sink output read; one frame in flight",
                "hop_per_crossing_us": f"(multiprocess p50 − inprocess p50) / {CROSSINGS} ring crossings",
                "hop_per_worker_us": f"(multiprocess p50 − inprocess p50) / {NODES} workers",
                "marginal_hop_us": f"(multiprocess p50 − multiprocess_1 p50) / {NODES - 1}: what one more "
                "PassThrough worker adds to a chain (the copy into the first ring and the session's own "
                "costs cancel out)",
                "chain_over_copies": "multiprocess p50 / (copies × memcpy p50): the chain makes "
                f"{INLINE_COPIES} copies of a frame in the slots (into ring 1, each worker's output, "
                f"out of ring 6) and {EXTERNAL_COPIES} of a frame in external segments (into ring 1)",
                "pipe": "5 spawned processes forwarding with send_bytes/recv_bytes over multiprocessing.Pipe() "
                "(duplex: a socketpair); 6 transfers",
                "throughput": "frames/s, n frames fed as fast as backpressure allows while outputs are read "
                "(median over rounds)",
                "flat_goal": "hop(10 MiB) / hop(64 KiB) <= 2; the log-log slope is reported beside it",
            },
            "plot": plot_note,
            "leftovers": left,
            "loadavg_1m": {"before": round(load_before, 2), "after": round(load_after, 2)},
            "seconds": round(time.monotonic() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
