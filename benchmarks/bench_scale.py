"""Scale: many sessions × 5 multiprocess nodes streaming 20 ms audio frames in real time.

Usage: python benchmarks/bench_scale.py [--quick]

Each session is a chain of 5 PassThrough nodes, every one routed to its own
worker process (so 20 sessions = 100 workers on this 2-vCPU VM). Each session
is fed one 20 ms frame (320 float32 samples, 16 kHz mono) every 20 ms on an
absolute schedule (sessions staggered over the period, like independent
clients) while a second task per session reads its outputs. Measured:

- frames sent / received per session (must be equal), in order, each frame's
  content checked (sample value = its index): no loss, no duplicate;
- per-frame latency: from just before ``session.send`` to the moment the sink's
  output is read (p50/p99 over all frames, and the worst session's p99);
- CPU: supervisor (this process), all workers (``/proc/<pid>/stat``), whole
  machine (``/proc/stat``, other agents' load included), per frame and per hop,
  and context switches (wake-ups) per frame;
- afterwards: no worker pid alive, no /dev/shm entry or FIFO dir of this
  process left (and how long after the last session ended that was true).

Full mode: 10 sessions for 30 s (the seed's goal), then 20 sessions for 30 s
(the issue's goal). Quick mode: 10 sessions for 5 s only. Then, in both modes, the first run
again with ``fuse_chains`` (run ``fused``): each session's 5 nodes in ONE worker process
(a fused run, docs/design.md), same frames, same checks; the goal compares its CPU per
session frame with the unfused run's of the same invocation (issue 11: at most half).
Prints tables; the LAST line is one JSON object (also benchmarks/results/scale.json).
"""

from __future__ import annotations

import gc
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import trio
from _common import finish, leftovers, parse_args, print_table

from nursery_pipes import AudioFrame, Runtime, RuntimeConfig
from nursery_pipes._config import LimitsConfig, MultiprocessDefaults, NodesConfig

NODES = 5
PERIOD = 0.020  # s: one 20 ms frame per session per period
SAMPLES = 320  # 20 ms at 16 kHz
TICK = os.sysconf("SC_CLK_TCK")
now = time.perf_counter


def manifest(index: int, *, fuse: bool = False) -> dict[str, Any]:
    ids = [f"n{i}" for i in range(NODES)]
    return {
        "version": "v1",
        "metadata": {
            "name": f"scale-{index}",
            "multiprocess": {
                "executor_overrides": dict.fromkeys(ids, "multiprocess"),
                "init_timeout_secs": 120,
                "fuse_chains": fuse,
            },
        },
        "nodes": [{"id": i, "node_type": "PassThrough", "params": {}} for i in ids],
        "connections": [{"from": a, "to": b} for a, b in itertools.pairwise(ids)],
    }


# ----------------------------------------------------------------------------- /proc readings


def proc_cpu_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def sched_cpu_s(pid: int) -> float:
    """Time on CPU from /proc/<pid>/schedstat (ns precision; 0 if the process is gone)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def ctx_switches(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    total = 0
    for line in text.splitlines():
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
            total += int(line.split()[1])
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def snapshot(worker_pids: list[int]) -> dict[str, Any]:
    busy, total = machine_cpu()
    workers = [proc_cpu_s(p) for p in worker_pids]
    own = os.times()
    return {
        "t": now(),
        "supervisor_cpu": time.process_time(),
        "supervisor_sys": own.system,
        "workers_cpu": sum(sched_cpu_s(p) for p in worker_pids),
        "workers_ticks": sum(u + s for u, s in workers),
        "workers_sys": sum(s for _, s in workers),
        "supervisor_ctx": ctx_switches(os.getpid()),
        "workers_ctx": sum(ctx_switches(p) for p in worker_pids),
        "machine_busy": busy,
        "machine_total": total,
    }


class GcPauses:
    """Collector pauses in the supervisor (gc.callbacks), by generation."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._start = 0.0
        self.active = False

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if not self.active:
            return
        if phase == "start":
            self._start = now()
        else:
            self.pauses[info["generation"]].append(now() - self._start)

    def summary(self) -> dict[str, Any]:
        return {
            f"gen{g}": {
                "count": len(v),
                "total_ms": round(sum(v) * 1000, 1),
                "max_ms": round(max(v, default=0) * 1000, 2),
            }
            for g, v in self.pauses.items()
        }


async def loop_lag(lags: list[float], stop: trio.Event) -> None:
    """How late a 5 ms sleep wakes up: the supervisor's event-loop responsiveness."""
    while not stop.is_set():
        due = trio.current_time() + 0.005
        await trio.sleep_until(due)
        lags.append(trio.current_time() - due)


# --------------------------------------------------------------------------------- streaming


class SessionRun:
    def __init__(self, index: int, frames: int) -> None:
        self.index = index
        self.frames = frames
        self.sent = 0
        self.received = 0
        self.in_order = True
        self.content_ok = True
        self.latency: list[float] = []
        self.late: list[float] = []  # how late each send started vs its schedule (s)
        self.t_send = np.zeros(frames + 1)
        self.pids: list[int] = []
        self.ready = trio.Event()
        self.all_received = trio.Event()
        self.error: BaseException | None = None


async def run_session(
    rt: Runtime, run: SessionRun, go: trio.Event, start_at: list[float], may_close: trio.Event, fuse: bool
) -> None:
    try:
        async with rt.open_session(manifest(run.index, fuse=fuse)) as session:
            # one pid per worker (a fused run's nodes share theirs)
            run.pids = list(
                dict.fromkeys(m.pid for m in session.metrics().nodes.values() if m.pid is not None)
            )
            run.ready.set()
            await go.wait()

            async def feed() -> None:
                first = start_at[0] + run.index * PERIOD / max(1, start_at[1])  # stagger over one period
                for i in range(1, run.frames + 1):
                    due = first + (i - 1) * PERIOD
                    await trio.sleep_until(due)
                    t = trio.current_time()
                    run.late.append(t - due)
                    run.t_send[i] = now()
                    frame = AudioFrame.from_array(
                        np.full(SAMPLES, float(i), dtype=np.float32), sample_rate=16000
                    )
                    await session.send("n0", frame, seq=i)
                    run.sent += 1

            async def read() -> None:
                expected = 1
                async for out in session.outputs():
                    t = now()
                    seq = out.seq
                    if seq != expected:
                        run.in_order = False
                    expected = seq + 1
                    if float(out.frame.samples[0, 0]) != float(seq):
                        run.content_ok = False
                    if 1 <= seq <= run.frames:
                        run.latency.append(t - run.t_send[seq])
                    run.received += 1
                    if run.received == run.frames:
                        run.all_received.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await feed()
                with trio.move_on_after(10):  # a lost frame would never arrive
                    await run.all_received.wait()
                run.all_received.set()
                await may_close.wait()
                await session.close()  # the reader ends when the session has drained
    except BaseException as exc:
        run.error = exc
        run.ready.set()
        run.all_received.set()
        if not isinstance(exc, Exception):
            raise


async def scale(n_sessions: int, seconds: float, fuse: bool = False) -> dict[str, Any]:
    frames = round(seconds / PERIOD)
    config = RuntimeConfig(
        nodes=NodesConfig(testing=True),
        limits=LimitsConfig(max_processes=n_sessions * NODES + 8, max_sessions=max(64, n_sessions + 1)),
        multiprocess=MultiprocessDefaults(init_timeout_secs=120),
    )
    rt = Runtime(config)
    runs = [SessionRun(i, frames) for i in range(n_sessions)]
    go, may_close = trio.Event(), trio.Event()
    start_at = [0.0, float(n_sessions)]
    gc_pauses = GcPauses()
    gc.callbacks.append(gc_pauses)
    lags: list[float] = []
    stop_lag = trio.Event()
    t_open = now()
    async with rt, trio.open_nursery() as nursery:
        for run in runs:
            nursery.start_soon(run_session, rt, run, go, start_at, may_close, fuse)
        for run in runs:
            await run.ready.wait()
        t_ready = now() - t_open
        pids = [p for run in runs for p in run.pids]
        await trio.sleep(0.5)  # let start-up work (forks, page faults) finish before measuring
        before = snapshot(pids)
        gc_pauses.active = True
        nursery.start_soon(loop_lag, lags, stop_lag)
        start_at[0] = trio.current_time() + 0.05
        go.set()
        for run in runs:
            await run.all_received.wait()
        after = snapshot(pids)
        gc_pauses.active = False
        stop_lag.set()
        t_closed = now()
        may_close.set()
    t_exit = now()
    left = leftovers(pids)
    clean_after = 0.0
    while any(left.values()) and now() - t_exit < 5.0:
        await trio.sleep(0.01)
        left = leftovers(pids)
        clean_after = now() - t_exit
    gc.callbacks.remove(gc_pauses)
    result = summarize(runs, before, after, t_ready, t_exit - t_closed, left, clean_after, seconds)
    lag = np.array(lags) * 1000
    result["supervisor_loop_lag_ms"] = {
        "p50": round(float(np.percentile(lag, 50)), 2), "p99": round(float(np.percentile(lag, 99)), 2),
        "max": round(float(lag.max()), 2), "over_10ms": int((lag > 10).sum()),
    }  # fmt: skip
    result["supervisor_gc_pauses"] = gc_pauses.summary()
    return result


def summarize(
    runs: list[SessionRun],
    before: dict[str, Any],
    after: dict[str, Any],
    t_ready: float,
    runtime_exit_s: float,
    left: dict[str, list[Any]],
    clean_after: float,
    seconds: float,
) -> dict[str, Any]:
    lat = np.array([x for r in runs for x in r.latency]) * 1000
    wall = after["t"] - before["t"]
    frames_total = sum(r.received for r in runs)
    sup_cpu = after["supervisor_cpu"] - before["supervisor_cpu"]
    wrk_cpu = after["workers_cpu"] - before["workers_cpu"]
    machine = (after["machine_busy"] - before["machine_busy"]) / max(
        1, after["machine_total"] - before["machine_total"]
    )
    per_session = [
        {
            "session": r.index,
            "sent": r.sent,
            "received": r.received,
            "in_order": r.in_order,
            "content_ok": r.content_ok,
            "p50_ms": round(float(np.percentile(np.array(r.latency) * 1000, 50)), 2) if r.latency else None,
            "p99_ms": round(float(np.percentile(np.array(r.latency) * 1000, 99)), 2) if r.latency else None,
            "max_late_send_ms": round(max(r.late) * 1000, 2) if r.late else None,
            "error": repr(r.error) if r.error else None,
        }
        for r in runs
    ]
    no_loss = all(
        s["sent"] == s["received"] == r.frames and s["in_order"] and s["content_ok"] and not s["error"]
        for s, r in zip(per_session, runs, strict=True)
    )
    hops = NODES + 1  # supervisor → n0 → … → n4 → supervisor
    return {
        "sessions": len(runs),
        "nodes_per_session": NODES,
        "workers": sum(len(r.pids) for r in runs),
        "seconds": seconds,
        "frames_per_session": runs[0].frames,
        "all_ready_s": round(t_ready, 2),
        "no_loss": no_loss,
        "frames_sent": sum(r.sent for r in runs),
        "frames_received": frames_total,
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p90": round(float(np.percentile(lat, 90)), 2) if len(lat) else None,
            "p99": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "max": round(float(lat.max()), 2) if len(lat) else None,
            "worst_session_p99": max((s["p99_ms"] or 0) for s in per_session),
        },
        "late_sends_over_5ms": sum(1 for r in runs for x in r.late if x > 0.005),
        "cpu": {
            "window_s": round(wall, 2),
            "supervisor_pct_of_one_core": round(100 * sup_cpu / wall, 1),
            "workers_pct_of_one_core": round(100 * wrk_cpu / wall, 1),
            "machine_busy_pct_of_all_cores": round(100 * machine, 1),
            "supervisor_sys_share_pct": round(
                100 * (after["supervisor_sys"] - before["supervisor_sys"]) / max(1e-9, sup_cpu), 1
            ),
            "workers_sys_share_pct": round(
                100
                * (after["workers_sys"] - before["workers_sys"])
                / max(1e-9, after["workers_ticks"] - before["workers_ticks"]),
                1,
            ),
            "supervisor_us_per_frame": round(1e6 * sup_cpu / max(1, frames_total), 1),
            "workers_us_per_worker_frame": round(1e6 * wrk_cpu / max(1, frames_total * NODES), 1),
            "us_per_hop": round(1e6 * (sup_cpu + wrk_cpu) / max(1, frames_total * hops), 1),
            # what one frame of one session costs the machine (supervisor + its workers), and so
            # how many such sessions one core holds at this frame rate (CPU alone, no headroom)
            "us_per_session_frame": round(1e6 * (sup_cpu + wrk_cpu) / max(1, frames_total), 1),
            "sessions_per_core": round(len(runs) * wall / max(1e-9, sup_cpu + wrk_cpu), 1),
            "supervisor_ctx_switches_per_frame": round(
                (after["supervisor_ctx"] - before["supervisor_ctx"]) / max(1, frames_total), 2
            ),
            "workers_ctx_switches_per_worker_frame": round(
                (after["workers_ctx"] - before["workers_ctx"]) / max(1, frames_total * NODES), 2
            ),
        },
        "runtime_exit_s": round(runtime_exit_s, 3),
        "leftovers": left,
        "clean": not any(left.values()),
        "clean_after_exit_s": round(clean_after, 3),
        "per_session": per_session,
    }


async def pacing_cost(n_fast: int, n_paced: int) -> dict[str, dict[str, float]]:
    """Why a hop costs more CPU at 50 frames/s than back to back: the same round trip
    (supervisor → 1 PassThrough worker → supervisor, 320 samples) back to back and one every
    20 ms, next to the raw floor (bench_ipc's two plain processes) and a bare trio.sleep."""
    me = os.getpid()
    rows: dict[str, dict[str, float]] = {}
    frame = AudioFrame.from_array(np.zeros(SAMPLES, dtype=np.float32), sample_rate=16000)
    single = {
        "version": "v1",
        "metadata": {"name": "pacing", "multiprocess": {"executor_overrides": {"w": "multiprocess"}}},
        "nodes": [{"id": "w", "node_type": "PassThrough", "params": {}}],
        "connections": [],
    }
    rt = Runtime(RuntimeConfig(nodes=NodesConfig(testing=True)))
    async with rt.open_session(single) as session:
        pid = session.metrics().nodes["w"].pid
        assert pid is not None
        outputs = session.outputs()
        for name, period, n in (("back to back", 0.0, n_fast), ("one every 20 ms", PERIOD, n_paced)):
            w0, s0, lat = sched_cpu_s(pid), sched_cpu_s(me), []
            for _ in range(n):
                if period:
                    await trio.sleep(period)
                t = now()
                await session.send("w", frame)
                await outputs.__anext__()
                lat.append(now() - t)
            rows[f"executor RT, {name}"] = {
                "worker_us": 1e6 * (sched_cpu_s(pid) - w0) / n,
                "supervisor_us": 1e6 * (sched_cpu_s(me) - s0) / n,
                "rt_p50_us": 1e6 * float(np.median(lat)),
            }
    s0 = sched_cpu_s(me)
    for _ in range(n_paced):
        await trio.sleep(PERIOD)
    rows["bare trio.sleep(20 ms) in the supervisor"] = {
        "worker_us": 0.0,
        "supervisor_us": 1e6 * (sched_cpu_s(me) - s0) / n_paced,
        "rt_p50_us": 0.0,
    }
    return {k: {m: round(v, 1) for m, v in row.items()} for k, row in rows.items()}


def raw_pacing_cost(n_fast: int, n_paced: int) -> dict[str, dict[str, float]]:
    """The raw floor's round trip (synchronous), back to back and one every 20 ms."""
    from bench_ipc import Raw

    from nursery_pipes.ipc import Namespace, unlink_namespace

    me = os.getpid()
    rows: dict[str, dict[str, float]] = {}
    ns = Namespace.create()
    raw = Raw(ns)
    try:
        raw.run(300)
        for name, period, n in (("back to back", 0.0, n_fast), ("one every 20 ms", PERIOD, n_paced)):
            b0, a0, lat_ns = sched_cpu_s(raw.proc.pid), sched_cpu_s(me), []
            for _ in range(n):
                if period:
                    time.sleep(period)
                lat_ns += raw.run(1)
            rows[f"raw floor RT, {name}"] = {
                "worker_us": 1e6 * (sched_cpu_s(raw.proc.pid) - b0) / n,
                "supervisor_us": 1e6 * (sched_cpu_s(me) - a0) / n,
                "rt_p50_us": float(np.median(lat_ns)) / 1000,
            }
    finally:
        raw.close()
        unlink_namespace(ns)
    return {k: {m: round(v, 1) for m, v in row.items()} for k, row in rows.items()}


def report(tag: str, r: dict[str, Any]) -> None:
    cpu, lat = r["cpu"], r["latency_ms"]
    print_table(
        f"{tag}: {r['sessions']} sessions × {NODES} nodes in {r['workers']} workers, {r['frames_per_session']} frames each "
        f"({r['seconds']:g} s real time), all ready after {r['all_ready_s']} s",
        ["sent", "received", "no loss", "lat p50 ms", "p90", "p99", "max", "worst session p99", "late sends > 5 ms"],
        [(r["frames_sent"], r["frames_received"], r["no_loss"], lat["p50"], lat["p90"], lat["p99"], lat["max"],
          lat["worst_session_p99"], r["late_sends_over_5ms"])],
    )  # fmt: skip
    print_table(
        f"{tag}: CPU over {cpu['window_s']} s",
        ["supervisor % core", "workers % core", "machine busy %", "sys share sup/workers %", "sup µs/frame",
         "worker µs/frame", "µs/hop", "µs/session frame", "sessions/core", "sup ctxsw/frame",
         "worker ctxsw/frame"],
        [(cpu["supervisor_pct_of_one_core"], cpu["workers_pct_of_one_core"], cpu["machine_busy_pct_of_all_cores"],
          f"{cpu['supervisor_sys_share_pct']}/{cpu['workers_sys_share_pct']}",
          cpu["supervisor_us_per_frame"], cpu["workers_us_per_worker_frame"], cpu["us_per_hop"],
          cpu["us_per_session_frame"], cpu["sessions_per_core"],
          cpu["supervisor_ctx_switches_per_frame"], cpu["workers_ctx_switches_per_worker_frame"])],
    )  # fmt: skip
    sessions = r["per_session"]
    print_table(
        f"{tag}: per session",
        ["session", "sent", "received", "in order", "content ok", "p50 ms", "p99 ms", "max late send ms", "error"],
        [(s["session"], s["sent"], s["received"], s["in_order"], s["content_ok"], s["p50_ms"], s["p99_ms"],
          s["max_late_send_ms"], s["error"] or "") for s in sessions],
    )  # fmt: skip
    lag, gcs = r["supervisor_loop_lag_ms"], r["supervisor_gc_pauses"]
    print(
        f"{tag}: supervisor event loop lag (5 ms sleeps) p50 {lag['p50']} ms, p99 {lag['p99']} ms, max {lag['max']} ms, "
        f"{lag['over_10ms']} over 10 ms; GC pauses: "
        + ", ".join(f"{g} {v['count']}× max {v['max_ms']} ms" for g, v in gcs.items())
    )
    left = r["leftovers"]
    print(
        f"{tag}: afterwards — workers alive {len(left['workers_alive'])}, /dev/shm entries {len(left['shm_entries'])}, "
        f"FIFO dirs {len(left['fifo_dirs'])} (checked {r['clean_after_exit_s']} s after the runtime exited; "
        f"closing all sessions + runtime exit took {r['runtime_exit_s']} s)"
    )


def main() -> None:
    args = parse_args(__doc__ or "")
    started = time.monotonic()
    load_before = os.getloadavg()
    plans = [("seed", 10, 5.0)] if args.quick else [("seed", 10, 30.0), ("issue", 20, 30.0)]
    plans.append(("fused", 10, plans[0][2]))  # the seed run again, each session in one worker
    n_fast, n_paced = (1000, 100) if args.quick else (3000, 300)
    pacing = {**trio.run(pacing_cost, n_fast, n_paced), **raw_pacing_cost(n_fast, n_paced)}
    print_table(
        "CPU per round trip when idle between frames (schedstat, µs; the 'worker' of the raw floor is its peer process)",
        ["round trip", "worker CPU", "supervisor CPU", "RT p50"],
        [(k, v["worker_us"], v["supervisor_us"], v["rt_p50_us"]) for k, v in pacing.items()],
    )
    results = {}
    for tag, n, seconds in plans:
        results[tag] = trio.run(scale, n, seconds, tag == "fused")
        report(f"{tag} ({n} sessions)", results[tag])
    load_after = os.getloadavg()
    goals = {}
    for tag, n, _ in plans:
        r = results[tag]
        label = f"{n}_fused" if tag == "fused" else str(n)
        goals[f"{label}_sessions_no_loss"] = {
            "goal": "sent == received, in order",
            "measured": r["no_loss"],
            "met": r["no_loss"],
        }
        goals[f"{label}_sessions_clean_afterwards"] = {
            "goal": "no worker, no /dev/shm entry",
            "measured": r["clean"],
            "met": r["clean"],
        }
        realtime = r["latency_ms"]["p99"] is not None and r["latency_ms"]["p99"] < PERIOD * 1000
        goals[f"{label}_sessions_p99_below_frame_period"] = {
            "goal": f"< {PERIOD * 1000:g} ms (keeps up in real time)", "measured": r["latency_ms"]["p99"], "met": realtime,
        }  # fmt: skip
    fused, separate = results["fused"]["cpu"], results["seed"]["cpu"]
    ratio = fused["us_per_session_frame"] / max(1e-9, separate["us_per_session_frame"])
    goals["fused_cpu_per_session_frame_over_separate_workers"] = {
        "goal": "<= 0.5 (issue 11: halved, with fuse_chains)", "measured": round(ratio, 3), "met": ratio <= 0.5,
    }  # fmt: skip
    print_table(
        "goals",
        ["goal", "target", "measured", "met"],
        [(k, g["goal"], g["measured"], "MET" if g["met"] else "MISSED") for k, g in goals.items()],
    )
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    if args.quick:
        print("quick mode: 10 sessions for 5 s only (full mode: 10 and 20 sessions, 30 s each)")
    finish(
        "scale",
        {
            "quick": args.quick,
            "runs": {tag: {k: v for k, v in r.items()} for tag, r in results.items()},
            "pacing_cost_us": pacing,
            "goals": goals,
            "goal_met": all(g["met"] for g in goals.values()),
            "loadavg_1m": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
            "seconds": round(time.monotonic() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
