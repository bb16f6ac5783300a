"""Frame transport benchmark: shared-memory rings vs. the floor and the alternatives.

Usage: python benchmarks/bench_ipc.py [--quick]

All numbers come from ONE run, interleaved in rounds so background load hits
every method alike. Round trips (A→B→A) are timed in A with perf_counter_ns;
one-way hops are timed B-side against A's timestamp (CLOCK_MONOTONIC is
system-wide on Linux). Prints a table; the LAST line is one JSON object (also
written to benchmarks/results/bench_ipc.json).
"""

from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import posix_ipc

from nursery_pipes.ipc import (
    EndOfStream,
    Namespace,
    Ring,
    RingSpec,
    SlotHeader,
    unlink_namespace,
)

SMALL = 1024 * 4  # 1024 float32 samples
BIG = 10 << 20  # 10 MiB
SPAWN = multiprocessing.get_context("spawn")
RESULTS = Path(__file__).resolve().parent / "results" / "bench_ipc.json"
now = time.perf_counter_ns

# ----------------------------------------------------------------------------- workers


def raw_worker(name: str, s_in: str, s_out: str) -> None:
    """B of the raw floor: wait, copy in→out, post. A stop byte at offset 0 ends it."""
    shm = posix_ipc.SharedMemory(name)
    mm = mmap.mmap(shm.fd, shm.size)
    shm.close_fd()
    a, b = posix_ipc.Semaphore(s_in), posix_ipc.Semaphore(s_out)
    view = memoryview(mm)
    while True:
        a.acquire()
        if view[0]:
            break
        view[64 + SMALL : 64 + 2 * SMALL] = view[64 : 64 + SMALL]
        b.release()
    view.release()
    mm.close()


def ring_worker(in_spec: RingSpec, out_spec: RingSpec, mode: str) -> None:
    """B over rings. mode "echo": copy every frame back (send: one copy);
    "hop": reply with a tiny ack carrying B's receive time minus A's send time."""
    with Ring.attach(in_spec) as rin, Ring.attach(out_spec) as rout:
        cons, prod = rin.consumer(), rout.producer()
        while True:
            try:
                frame = cons.receive()
            except EndOfStream:
                prod.end_of_stream()
                return
            t_recv = now()
            with frame:
                if mode == "timed":  # echo, and tell A when B had the frame / started sending
                    aux = (t_recv, now(), 0, 0)
                    prod.send(SlotHeader(seq=frame.header.seq, aux=aux), b"", frame.payload)
                    continue
                if mode == "hop":
                    latency = t_recv - frame.header.aux[0]
                    prod.send(SlotHeader(seq=frame.header.seq, aux=(latency, 0, 0, 0)))
                    continue
                prod.send(frame.header, frame.meta, frame.payload)  # one copy


def pipe_worker(conn: Connection, mode: str) -> None:
    while True:
        data = conn.recv_bytes()
        t_recv = now()
        if not data:
            return
        if mode == "hop":
            conn.send_bytes((t_recv - int.from_bytes(data[:8], "little")).to_bytes(8, "little"))
        else:
            conn.send_bytes(data)


def tp_echo(data: bytes) -> bytes:
    return data


# ------------------------------------------------------------------------- measurements


class Raw:
    """Two plain processes ping-ponging through one segment + two semaphores."""

    def __init__(self, ns: Namespace) -> None:
        self.name, self.s1, self.s2 = ns.name("raw"), ns.name("raw1"), ns.name("raw2")
        shm = posix_ipc.SharedMemory(self.name, posix_ipc.O_CREX, mode=0o600, size=4 * SMALL)
        self.mm = mmap.mmap(shm.fd, shm.size)
        shm.close_fd()
        self.view = memoryview(self.mm)
        self.a = posix_ipc.Semaphore(self.s1, posix_ipc.O_CREX, mode=0o600, initial_value=0)
        self.b = posix_ipc.Semaphore(self.s2, posix_ipc.O_CREX, mode=0o600, initial_value=0)
        self.proc = SPAWN.Process(target=raw_worker, args=(self.name, self.s1, self.s2))
        self.proc.start()
        self.src = memoryview(np.arange(1024, dtype=np.float32)).cast("B")

    def run(self, n: int) -> list[int]:
        out, view, a, b, src = [], self.view, self.a, self.b, self.src
        for _ in range(n):
            t0 = now()
            view[64 : 64 + SMALL] = src
            a.release()
            b.acquire()
            out.append(now() - t0)
        return out

    def close(self) -> None:
        self.view[0] = 1
        self.a.release()
        self.proc.join()
        self.view.release()
        self.mm.close()
        for sem in (self.a, self.b):
            sem.unlink()
            sem.close()
        posix_ipc.unlink_shared_memory(self.name)


class RingPair:
    """A → ring → worker → ring → A, with either sync or trio ends on A's side."""

    def __init__(self, ns: Namespace, first: int, slot_size: int, mode: str, trio_side: bool):
        self.out_spec = RingSpec(ns, first, 4, slot_size, async_producer=trio_side)
        self.back_spec = RingSpec(ns, first + 1, 4, slot_size, async_consumer=trio_side)
        self.out, self.back = Ring.create(self.out_spec), Ring.create(self.back_spec)
        self.prod, self.cons = self.out.producer(), self.back.consumer()
        self.proc = SPAWN.Process(target=ring_worker, args=(self.out_spec, self.back_spec, mode))
        self.proc.start()

    def close(self) -> None:
        self.prod.end_of_stream()
        try:
            while True:
                self.cons.receive(timeout=30).release()
        except EndOfStream:
            pass
        self.proc.join()
        self.out.close()
        self.back.close()


def ring_small_sync(pair: RingPair, n: int) -> list[int]:
    out, prod, cons = [], pair.prod, pair.cons
    payload = np.arange(1024, dtype=np.float32)
    for i in range(n):
        t0 = now()
        prod.send(SlotHeader(kind=1, seq=i, ndim=1, shape=(1024,)), b"", payload)
        cons.receive().release()
        out.append(now() - t0)
    return out


async def ring_small_trio(pair: RingPair, n: int) -> list[int]:
    from nursery_pipes.executors import TrioConsumer, TrioProducer

    tx, rx = TrioProducer(pair.prod), TrioConsumer(pair.cons)
    out = []
    payload = np.arange(1024, dtype=np.float32)
    for i in range(n):
        t0 = now()
        await tx.send(SlotHeader(kind=1, seq=i, ndim=1, shape=(1024,)), b"", payload)
        (await rx.receive()).release()
        out.append(now() - t0)
    return out


BREAKDOWN = ("a_send", "post_to_b_has_frame", "b_work", "b_send_to_a_has_frame", "a_release")


def ring_breakdown(pair: RingPair, n: int) -> dict[str, list[int]]:
    """Split a sync round trip into CPU pieces and wake-ups (timestamps across processes)."""
    prod, cons = pair.prod, pair.cons
    payload = np.arange(1024, dtype=np.float32)
    parts: dict[str, list[int]] = {k: [] for k in BREAKDOWN}
    for i in range(n):
        t0 = now()
        prod.send(SlotHeader(kind=1, seq=i, ndim=1, shape=(1024,)), b"", payload)
        t1 = now()
        frame = cons.receive()
        t2 = now()
        b_has, b_sends = frame.header.aux[0], frame.header.aux[1]
        frame.release()
        t3 = now()
        pieces = (t1 - t0, b_has - t1, b_sends - b_has, t2 - b_sends, t3 - t2)
        for key, value in zip(BREAKDOWN, pieces, strict=True):
            parts[key].append(value)
    return parts


def ring_big(pair: RingPair, n: int, src: np.ndarray, hop: bool) -> list[int]:
    """Loan 10 MiB, write it in place (one copy), commit; B acks (hop) or echoes."""
    out, prod, cons = [], pair.prod, pair.cons
    for i in range(n):
        t0 = now()
        with prod.loan(BIG) as loan:
            np.copyto(np.frombuffer(loan.payload, np.uint8), src)
            loan.commit(SlotHeader(kind=2, seq=i, aux=(t0, 0, 0, 0)))
        with cons.receive() as back:
            out.append(back.header.aux[0] if hop else now() - t0)
    return out


class PipePair:
    def __init__(self, mode: str) -> None:
        self.conn, child = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=pipe_worker, args=(child, mode))
        self.proc.start()
        child.close()

    def run(self, n: int, payload: bytearray, hop: bool) -> list[int]:
        out, conn = [], self.conn
        for _ in range(n):
            t0 = now()
            payload[:8] = t0.to_bytes(8, "little")
            conn.send_bytes(payload)
            reply = conn.recv_bytes()
            out.append(int.from_bytes(reply, "little") if hop else now() - t0)
        return out

    def close(self) -> None:
        self.conn.send_bytes(b"")
        self.proc.join()
        self.conn.close()


async def tp_run(n: int, payload: bytes) -> list[int]:
    import trio_parallel

    out = []
    for _ in range(n):
        t0 = now()
        await trio_parallel.run_sync(tp_echo, payload)
        out.append(now() - t0)
    return out


def piece_costs(ns: Namespace, n: int) -> dict[str, float]:
    """In-process CPU cost (µs) of each ring step, no wake-ups: where overhead goes."""
    with Ring.create(RingSpec(ns, 90, 4, 8192)) as ring:
        prod, cons = ring.producer(), ring.consumer()
        payload = np.arange(1024, dtype=np.float32)
        timings: dict[str, list[int]] = {"header": [], "send": [], "receive": [], "release": []}
        for i in range(n):
            t0 = now()
            h = SlotHeader(kind=1, seq=i, ndim=1, shape=(1024,))
            t1 = now()
            prod.send(h, b"", payload)
            t2 = now()
            r = cons.receive()
            t3 = now()
            r.release()
            t4 = now()
            for key, dt in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                timings[key].append(dt)
    return {k: statistics.median(v) / 1000 for k, v in timings.items()}


# ------------------------------------------------------------------------------ driver


def summary(samples: list[int]) -> dict[str, float]:
    arr = np.array(samples, dtype=np.float64) / 1000.0  # µs
    return {
        "n": len(samples),
        "p50_us": round(float(np.percentile(arr, 50)), 1),
        "p99_us": round(float(np.percentile(arr, 99)), 1),
        "mean_us": round(float(arr.mean()), 1),
    }


PLACEMENTS = {"free": None, "cross": (0, 1), "same": (0, 0)}  # (A's cpu, B's cpu)


def place(placement: str, worker_pid: int | None) -> None:
    """Pin A (this process) and B for one block of samples; "free" lets Linux choose."""
    cpus = os.sched_getaffinity(0) | set(range(os.cpu_count() or 1))
    pins = PLACEMENTS[placement]
    a_cpu, b_cpu = (None, None) if pins is None or len(cpus) < 2 else pins
    os.sched_setaffinity(0, cpus if a_cpu is None else {a_cpu})
    if worker_pid is not None:
        os.sched_setaffinity(worker_pid, cpus if b_cpu is None else {b_cpu})


async def measure(quick: bool) -> dict[str, Any]:
    import trio

    rounds = 4 if quick else 8
    n_small = 500 if quick else 2000
    n_big = 8 if quick else 25
    n_tp_big = 2 if quick else 6
    ns = Namespace.create()
    samples: dict[str, list[int]] = {}
    src = np.random.default_rng(1).integers(0, 255, BIG, dtype=np.uint8)
    big_payload = bytearray(src.tobytes())
    small_bytes = np.arange(1024, dtype=np.float32).tobytes()
    closers: list[Callable[[], None]] = []
    breakdown: dict[str, dict[str, list[int]]] = {}
    try:
        raw = Raw(ns)
        closers.append(raw.close)
        sync_pair = RingPair(ns, 0, 8192, "echo", trio_side=False)
        closers.append(sync_pair.close)
        timed_pair = RingPair(ns, 8, 8192, "timed", trio_side=False)
        closers.append(timed_pair.close)
        trio_pair = RingPair(ns, 2, 8192, "echo", trio_side=True)
        closers.append(trio_pair.close)
        big_echo = RingPair(ns, 4, 65536, "echo", trio_side=False)
        closers.append(big_echo.close)
        big_hop = RingPair(ns, 6, 65536, "hop", trio_side=False)
        closers.append(big_hop.close)
        pipe_echo, pipe_hop = PipePair("echo"), PipePair("hop")
        closers += [pipe_echo.close, pipe_hop.close]
        raw.run(200)
        ring_small_sync(sync_pair, 200)
        ring_breakdown(timed_pair, 200)
        await ring_small_trio(trio_pair, 200)
        ring_big(big_echo, 3, src, hop=False)
        ring_big(big_hop, 3, src, hop=True)
        pipe_echo.run(200, bytearray(small_bytes), hop=False)
        pipe_echo.run(2, big_payload, hop=False)
        pipe_hop.run(2, big_payload, hop=True)
        await tp_run(3, small_bytes)

        def add(key: str, values: list[int]) -> None:
            samples.setdefault(key, []).extend(values)

        small_bytes_buf = bytearray(small_bytes)
        for _ in range(rounds):
            for where in PLACEMENTS:
                place(where, raw.proc.pid)
                add(f"raw_floor_rt[{where}]", raw.run(n_small))
                place(where, sync_pair.proc.pid)
                add(f"ring_sync_rt[{where}]", ring_small_sync(sync_pair, n_small))
                place(where, timed_pair.proc.pid)
                for key, values in ring_breakdown(timed_pair, n_small // 2).items():
                    breakdown.setdefault(where, {}).setdefault(key, []).extend(values)
                place(where, trio_pair.proc.pid)
                add(f"ring_trio_rt[{where}]", await ring_small_trio(trio_pair, n_small))
                place(where, pipe_echo.proc.pid)
                add(f"pipe_rt[{where}]", pipe_echo.run(n_small, small_bytes_buf, hop=False))
            place("free", None)
            add("trio_parallel_rt", await tp_run(n_small // 10, small_bytes))
            add("big_ring_hop", ring_big(big_hop, n_big, src, hop=True))
            add("big_ring_rt", ring_big(big_echo, n_big, src, hop=False))
            add("big_pipe_hop", pipe_hop.run(n_big, big_payload, hop=True))
            add("big_pipe_rt", pipe_echo.run(n_big, big_payload, hop=False))
            add("big_trio_parallel_rt", await tp_run(n_tp_big, bytes(big_payload)))
            await trio.lowlevel.checkpoint()
        costs = piece_costs(ns, 5000)
    finally:
        place("free", None)
        for close in reversed(closers):
            close()
        unlink_namespace(ns)
    return {
        "results": {k: summary(v) for k, v in samples.items()},
        "piece_costs_us": costs,
        "ring_sync_rt_breakdown_p50_us": {
            where: {k: round(statistics.median(v) / 1000, 1) for k, v in parts.items()}
            for where, parts in breakdown.items()
        },
    }


def goals(res: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for where in PLACEMENTS:
        raw = res[f"raw_floor_rt[{where}]"]["p50_us"]
        for side in ("sync", "trio"):
            ratio = res[f"ring_{side}_rt[{where}]"]["p50_us"] / raw
            out[f"small_rt_{side}_vs_raw_floor[{where}]"] = {
                "goal": "<= 1.3", "measured": round(ratio, 2), "met": ratio <= 1.3,
            }  # fmt: skip
    hop_ms = res["big_ring_hop"]["p50_us"] / 1000
    speedup_hop = res["big_pipe_hop"]["p50_us"] / res["big_ring_hop"]["p50_us"]
    speedup_rt = res["big_pipe_rt"]["p50_us"] / res["big_ring_rt"]["p50_us"]
    out["big_hop_p50_ms"] = {"goal": "<= 1.5", "measured": round(hop_ms, 3), "met": hop_ms <= 1.5}
    out["big_hop_speedup_vs_pipe"] = {
        "goal": ">= 6", "measured": round(speedup_hop, 1), "met": speedup_hop >= 6,
    }  # fmt: skip
    out["big_rt_speedup_vs_pipe"] = {
        "goal": ">= 6", "measured": round(speedup_rt, 1), "met": speedup_rt >= 6,
    }  # fmt: skip
    return out


LABELS = {
    "raw_floor_rt": "raw floor: shm + 2 sems, 4 KiB round trip",
    "ring_sync_rt": "ring sync <-> sync worker echo, 4 KiB RT",
    "ring_trio_rt": "ring trio <-> sync worker echo (FIFO doorbell), 4 KiB RT",
    "pipe_rt": "multiprocessing.Pipe send_bytes, 4 KiB RT",
    "trio_parallel_rt": "trio_parallel.run_sync echo, 4 KiB RT",
    "big_ring_hop": "ring 10 MiB one-way hop (loan, write in place)",
    "big_ring_rt": "ring 10 MiB round trip (each side one copy)",
    "big_pipe_hop": "multiprocessing.Pipe 10 MiB one-way hop",
    "big_pipe_rt": "multiprocessing.Pipe 10 MiB round trip",
    "big_trio_parallel_rt": "trio_parallel.run_sync echo 10 MiB RT",
}


def _label(key: str) -> str:
    base, _, where = key.partition("[")
    label = LABELS.get(base, base)
    return f"{label} [{where}" if where else label


def print_table(report: dict[str, Any]) -> None:
    print("placement: free = scheduler decides; cross = A cpu0, B cpu1; same = both cpu0")
    print(f"{'measurement':66} {'n':>6} {'p50 µs':>10} {'p99 µs':>10}")
    rows = sorted(report["results"].items(), key=lambda kv: (kv[0].partition("[")[2], kv[0]))
    for key, row in rows:
        print(f"{_label(key):66} {row['n']:>6} {row['p50_us']:>10.1f} {row['p99_us']:>10.1f}")
    print("\nper-step CPU cost in one process (µs, median):",
          ", ".join(f"{k} {v:.2f}" for k, v in report["piece_costs_us"].items()))  # fmt: skip
    print("\nring sync round trip split (p50 µs; wake-ups include the next step's CPU):")
    for where, parts in report["ring_sync_rt_breakdown_p50_us"].items():
        print(f"  [{where:5}] " + ", ".join(f"{k} {v}" for k, v in parts.items()))
    print("\ngoals:")
    for key, g in report["goals"].items():
        print(f"  {key:42} goal {g['goal']:>7}  measured {g['measured']:>8}  "
              f"{'MET' if g['met'] else 'MISSED'}")  # fmt: skip
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (< 30 s)")
    args = parser.parse_args()
    import trio

    started = time.monotonic()
    report = trio.run(measure, args.quick)
    report["goals"] = goals(report["results"])
    report["notes"] = [
        "goal placement: the issue's 1.3x assumes the cross-core floor (~60 us on this VM "
        "class); [cross] pins A and B to different CPUs, [same] to one, [free] lets Linux "
        "choose (bimodal: same-core or cross-core wake-ups, so its p50 flips between runs)",
        "piece_costs_us: hot-loop CPU of each ring step in one process; the ring adds about "
        "header + send + receive + release on A and receive + send + release on B per round trip",
        "ring_sync_rt_breakdown_p50_us: B-side timestamps against A's (CLOCK_MONOTONIC); on one "
        "CPU the woken B preempts A inside send(), hence negative post_to_b values",
    ]
    report["bench"] = "ipc"
    report["quick"] = args.quick
    report["machine"] = {
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
    }
    report["seconds"] = round(time.monotonic() - started, 1)
    print_table(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, separators=(",", ":")))


if __name__ == "__main__":
    main()
