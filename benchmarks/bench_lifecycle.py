"""Worker lifecycle: spawn to ready, teardown to the last process reaped and segment unlinked, memory.

Usage: python benchmarks/bench_lifecycle.py [--quick]

- **Spawn to ready** (no model: PassThrough nodes): the time from calling
  ``open_session`` until it yields (every node ready), for 1-node and 5-node
  sessions, and per node the time until its ``ready`` progress event (stamped by
  a benchmark-side wrapper of ``Session._on_progress``) plus its own ``init_s``.
  Cold with ``worker_type`` forkserver and spawn (a runtime entered with
  ``async with``, no warm pool; the very first session of the process, which
  also starts the forkserver, is reported apart); warm from a fresh
  ``Runtime(warm_pool=5)`` after ``wait_warm()``; and back-to-back sessions on
  one warm runtime (does the pool refill?).
- **Teardown**: from ``session.cancel()`` (or ``close()``) to the moment no
  worker pid of the session exists any more (reaped: ``/proc/<pid>`` gone) AND
  no ``/dev/shm`` entry nor FIFO directory of its namespace is left, observed by
  a separate watcher process polling every ~0.1 ms. Cooperative nodes, and a
  ``HangNode`` that ignores the stop request (grace period 0.5 s).
- **Memory**: unique memory (USS = Private_Clean + Private_Dirty of
  ``/proc/<pid>/smaps_rollup``) of each worker of a 5-node session; the
  supervisor's growth per extra open session (10 sessions open at once); the
  session's shared-memory footprint (bytes of its /dev/shm entries).

All variants are interleaved in rounds. Prints tables; the LAST line is one
JSON object (also benchmarks/results/lifecycle.json).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import trio
from _common import finish, parse_args, print_table

from nursery_pipes import AudioFrame, Runtime, RuntimeConfig
from nursery_pipes._config import LimitsConfig, MultiprocessDefaults, NodesConfig
from nursery_pipes.runtime._session import Session

now = time.perf_counter
SHM = "/dev/shm"
GRACE = 0.5
GOALS = {
    "cold_node_ready_ms": 150.0,  # per node, forkserver (seed)
    "warm_node_ready_ms": 15.0,
    "five_node_session_ready_ms": 100.0,
    "teardown_cooperative_ms": 100.0,
    "teardown_hang_ms": GRACE * 1000 + 100.0,
    "five_node_uss_mb": 50.0,
    "supervisor_per_session_mb": 2.0,
}

# --------------------------------------------------------------------------- instrumentation

_progress_log: list[tuple[float, str, str]] = []
_original_on_progress = Session._on_progress


def _stamped_on_progress(self: Session, progress: Any) -> None:
    _progress_log.append((now(), progress.node_id, progress.state))
    _original_on_progress(self, progress)


Session._on_progress = _stamped_on_progress  # type: ignore[method-assign]  # benchmark-side stamp only


def chain(n: int, node_type: str = "PassThrough", first: str = "PassThrough") -> dict[str, Any]:
    ids = [f"w{i}" for i in range(n)]
    types = [first] + [node_type] * (n - 1)
    return {
        "version": "v1",
        "metadata": {
            "name": f"lifecycle-{n}",
            "multiprocess": {"executor_overrides": dict.fromkeys(ids, "multiprocess")},
        },
        "nodes": [{"id": i, "node_type": t, "params": {}} for i, t in zip(ids, types, strict=True)],
        "connections": [{"from": a, "to": b} for a, b in itertools.pairwise(ids)],
    }


def config(worker_type: str = "forkserver", warm: int = 0, max_processes: int = 64) -> RuntimeConfig:
    return RuntimeConfig(
        nodes=NodesConfig(testing=True),
        limits=LimitsConfig(max_processes=max_processes),
        multiprocess=MultiprocessDefaults(worker_type=worker_type, warm_pool=warm, grace_period_secs=GRACE),  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------ spawn to ready


async def open_timed(rt: Runtime, n: int) -> dict[str, Any]:
    """One session of n PassThrough nodes: open → yields; per-node starting/ready times."""
    _progress_log.clear()
    t0 = now()
    async with rt.open_session(chain(n)) as session:
        ready = now() - t0
        metrics = session.metrics()
        log = list(_progress_log)
    node_ready = [t - t0 for t, _, state in log if state == "ready"]
    node_start = [t - t0 for t, _, state in log if state == "starting"]
    return {
        "session_ms": ready * 1000,
        "node_ready_ms": [x * 1000 for x in node_ready],
        "node_starting_ms": [x * 1000 for x in node_start],
        "init_ms": [m.init_s * 1000 for m in metrics.nodes.values()],
    }


async def fresh_warm(n: int, warm: int) -> dict[str, Any]:
    """A fresh runtime with a warm pool, filled (wait_warm), then one session of n nodes."""
    rt = Runtime(config(warm=warm))
    async with rt:
        assert rt.executors["multiprocess"].shared_pool is not None
        await rt.executors["multiprocess"].shared_pool.wait_warm()
        await trio.sleep(0.3)  # let the pool's workers settle (idle, blocked in their pipe)
        return await open_timed(rt, n)


def live_pool_workers() -> int:
    """Live (non-zombie) trio-parallel worker processes of this supervisor (forkserver children)."""
    count = 0
    for child in _children(os.getpid()):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"forkserver" not in cmd:
            continue
        for worker in _children(child):
            if _state(worker) not in ("Z", "X", None):
                count += 1
    return count


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            out += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    except OSError:
        pass
    return out


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


async def warm_back_to_back(n_sessions: int, pause: float) -> list[dict[str, Any]]:
    """Sessions of 1 and 2 nodes, alternating, one after another on ONE warm runtime (pool
    target 2), pausing 0.5 s for refills: each session should find 2 live idle workers."""
    rt = Runtime(config(warm=2))
    rows = []
    async with rt:
        pool = rt.executors["multiprocess"].shared_pool
        assert pool is not None
        await pool.wait_warm()
        for i in range(n_sessions):
            await trio.sleep(pause)
            before = {"reported_idle": pool.idle_workers(), "live_workers": live_pool_workers()}
            nodes = 1 + i % 2
            result = await open_timed(rt, nodes)
            rows.append({
                "session": i, "nodes": nodes, **before, "session_ms": result["session_ms"],
                "node_ready_max_ms": max(result["node_ready_ms"]),
            })  # fmt: skip
    return rows


# ----------------------------------------------------------------------------------- teardown

WATCHER = textwrap.dedent(
    """
    import json, os, sys, time
    now = time.perf_counter_ns
    req = json.loads(sys.stdin.readline())
    pids, token, fifo = req["pids"], req["token"], req["fifo_dir"]
    def pids_gone():
        return not any(os.path.exists(f"/proc/{p}") for p in pids)
    def shm_gone():
        return not any(token in e for e in os.listdir("/dev/shm"))
    def fifo_gone():
        return not os.path.exists(fifo)
    print("ready", flush=True)
    out = {}
    deadline = time.monotonic() + 30
    while len(out) < 3 and time.monotonic() < deadline:
        t = now()
        if "pids" not in out and pids_gone(): out["pids"] = t
        if "shm" not in out and shm_gone(): out["shm"] = t
        if "fifo" not in out and fifo_gone(): out["fifo"] = t
        time.sleep(0.0001)
    print(json.dumps(out), flush=True)
    """
)


class Watcher:
    """A separate process that polls /proc and /dev/shm until a session's traces are gone."""

    def __init__(self, pids: list[int], token: str, fifo_dir: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WATCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"pids": pids, "token": token, "fifo_dir": fifo_dir}) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ready"

    def result(self) -> dict[str, int]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.proc.wait(timeout=35)
        return json.loads(line) if line.strip() else {}


def session_token(before: set[str]) -> str:
    mine = f"np.{os.getpid()}."
    new = {e for e in os.listdir(SHM) if mine in e} - before
    tokens = {e.split(mine, 1)[1].split(".", 1)[0] for e in new}
    assert len(tokens) == 1, tokens
    return f"{mine}{tokens.pop()}."


async def teardown_once(rt: Runtime, kind: str) -> dict[str, float]:
    """kind: coop1 / coop5 (cancel), close5 (close + drain), hang (cancel, grace, kill)."""
    if kind == "hang":
        manifest = chain(2, node_type="HangNode")
        manifest["nodes"][0]["params"] = {}
        manifest["nodes"][1]["params"] = {"phase": "process"}
        manifest["metadata"]["multiprocess"]["executor_overrides"]["w0"] = "inprocess"
    else:
        manifest = chain(1 if kind == "coop1" else 5)
    mine = f"np.{os.getpid()}."
    before = {e for e in os.listdir(SHM) if mine in e}
    async with rt.open_session(manifest) as session:
        token = session_token(before)
        fifo_dir = os.path.join(tempfile.gettempdir(), token.rstrip("."))
        pids = [m.pid for m in session.metrics().nodes.values() if m.pid is not None]
        frame = AudioFrame.from_array(np.zeros(320, dtype=np.float32), sample_rate=16000)
        await session.send("w0", frame)
        if kind == "hang":
            await trio.sleep(0.1)  # inside process(), deaf to the ring abort and to SIGTERM
        else:
            outputs = session.outputs()
            await outputs.__anext__()
        watcher = Watcher(pids, token, fifo_dir)
        t0 = time.perf_counter_ns()
        if kind == "close5":
            await session.close()
            async for _ in session.outputs():
                pass
        else:
            session.cancel()
        with suppress(Exception):
            await session.wait()
        t_wait = time.perf_counter_ns()
    t_exit = time.perf_counter_ns()
    seen = watcher.result()
    ms = {k: (v - t0) / 1e6 for k, v in seen.items()}
    missing = {"pids", "shm", "fifo"} - set(seen)
    return {
        "session_wait_ms": (t_wait - t0) / 1e6,
        "open_session_exit_ms": (t_exit - t0) / 1e6,
        "pids_reaped_ms": ms.get("pids", float("nan")),
        "shm_unlinked_ms": ms.get("shm", float("nan")),
        "fifo_dir_removed_ms": ms.get("fifo", float("nan")),
        "all_gone_ms": max(ms.values()) if not missing else float("nan"),
        "workers": len(pids),
    }


# ------------------------------------------------------------------------------------ memory


def smaps_rollup(pid: int) -> dict[str, int]:
    """kB values of /proc/<pid>/smaps_rollup."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def uss_kb(rollup: dict[str, int]) -> int:
    """Unique memory (Private_Clean + Private_Dirty) of a ``smaps_rollup`` reading."""
    return rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)


def shm_rss_kb(pid: int) -> dict[str, int]:
    """Rss / private kB of this process's /dev/shm/np.* mappings (the rings it maps)."""
    rss = private = 0
    current = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            current = len(head) >= 6 and head[5].startswith("/dev/shm/np.")
            continue
        if current and head:
            if head[0] == "Rss:":
                rss += int(head[1])
            elif head[0] in ("Private_Clean:", "Private_Dirty:"):
                private += int(head[1])
    return {"rss_kb": rss, "private_kb": private}


def shm_footprint(token: str) -> dict[str, int]:
    size = blocks = count = 0
    for entry in os.listdir(SHM):
        if token in entry:
            st = os.stat(os.path.join(SHM, entry))
            size += st.st_size
            blocks += st.st_blocks * 512
            count += 1
    return {"entries": count, "bytes": size, "allocated_bytes": blocks}


@asynccontextmanager
async def streamed_session(rt: Runtime, n_frames: int) -> AsyncIterator[Session]:
    """A 5-node session that has already streamed n_frames 20 ms frames end to end."""
    async with rt.open_session(chain(5)) as session:
        frame = AudioFrame.from_array(np.zeros(320, dtype=np.float32), sample_rate=16000)
        outputs = session.outputs()
        for _ in range(n_frames):
            await session.send("w0", frame)
            await outputs.__anext__()
        yield session


async def memory(n_sessions: int) -> dict[str, Any]:
    rt = Runtime(config(max_processes=5 * n_sessions + 5))
    me = os.getpid()
    async with rt:
        # one session first: every module, the pool and the forkserver are loaded
        async with streamed_session(rt, 50):
            pass
        await trio.sleep(0.2)
        mine = f"np.{me}."
        before_entries = {e for e in os.listdir(SHM) if mine in e}
        async with streamed_session(rt, 50) as session:
            token = session_token(before_entries)
            workers = {nid: m.pid for nid, m in session.metrics().nodes.items()}
            per_worker = {}
            for nid, pid in workers.items():
                assert pid is not None
                r = smaps_rollup(pid)
                per_worker[nid] = {
                    "uss_kb": uss_kb(r),
                    "rss_kb": r.get("Rss", 0),
                    "pss_kb": r.get("Pss", 0),
                }
            footprint = shm_footprint(token)
        await trio.sleep(0.2)
        base = smaps_rollup(me)
        base_shm = shm_rss_kb(me)
        async with AsyncExitStack() as stack:
            for _ in range(n_sessions):
                await stack.enter_async_context(streamed_session(rt, 20))
            await trio.sleep(0.2)
            full = smaps_rollup(me)
            full_shm = shm_rss_kb(me)
    uss_total = sum(w["uss_kb"] for w in per_worker.values())

    def per_session(key: str) -> float:
        return (full.get(key, 0) - base.get(key, 0)) / n_sessions / 1024

    sup_uss = (uss_kb(full) - uss_kb(base)) / n_sessions / 1024
    return {
        "workers": per_worker,
        "workers_uss_total_mb": uss_total / 1024,
        "shm_footprint": footprint,
        "supervisor": {
            "sessions_opened": n_sessions,
            "uss_per_session_mb": sup_uss,
            "rss_per_session_mb": per_session("Rss"),
            "pss_per_session_mb": per_session("Pss"),
            "anon_per_session_mb": per_session("Anonymous"),
            "shm_mapped_rss_per_session_mb": (full_shm["rss_kb"] - base_shm["rss_kb"]) / n_sessions / 1024,
            "shm_mapped_private_per_session_mb": (full_shm["private_kb"] - base_shm["private_kb"])
            / n_sessions
            / 1024,
            "rss_before_mb": base["Rss"] / 1024,
            "rss_after_mb": full["Rss"] / 1024,
        },
    }


# ------------------------------------------------------------------------------------ driver


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def measure(quick: bool) -> dict[str, Any]:
    rounds = 2 if quick else 6
    spawn_every = 2  # spawn sessions are slow (~0.2 s per node): every other round
    res: dict[str, list[dict[str, Any]]] = {}

    def add(key: str, value: dict[str, Any]) -> None:
        res.setdefault(key, []).append(value)

    fork_rt = Runtime(config("forkserver"))
    spawn_rt = Runtime(config("spawn"))
    teardown: dict[str, list[dict[str, float]]] = {}
    async with fork_rt:
        t0 = now()
        first = await open_timed(fork_rt, 1)  # starts the forkserver (preload: worker module, numpy)
        first["including_forkserver_start_ms"] = (now() - t0) * 1000
        await open_timed(fork_rt, 5)
        async with spawn_rt:
            await open_timed(spawn_rt, 1)
            for r in range(rounds):
                add("forkserver_cold_1", await open_timed(fork_rt, 1))
                add("forkserver_cold_5", await open_timed(fork_rt, 5))
                add("warm_1", await fresh_warm(1, 5))
                add("warm_5", await fresh_warm(5, 5))
                if r % spawn_every == 0:
                    add("spawn_cold_1", await open_timed(spawn_rt, 1))
                    add("spawn_cold_5", await open_timed(spawn_rt, 5))
                for kind in ("coop1", "coop5", "close5", "hang"):
                    if kind == "hang" and quick and r > 0:
                        continue
                    teardown.setdefault(kind, []).append(await teardown_once(fork_rt, kind))
    back_to_back = await warm_back_to_back(4 if quick else 8, pause=0.5)
    mem = await memory(4 if quick else 10)
    return {
        "spawn": res,
        "first_session": first,
        "teardown": teardown,
        "warm_back_to_back": back_to_back,
        "memory": mem,
    }


def summarize_spawn(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "n": len(rows),
        "session_ready_p50_ms": round(med([r["session_ms"] for r in rows]), 1),
        "session_ready_max_ms": round(max(r["session_ms"] for r in rows), 1),
        "node_starting_p50_ms": round(med([x for r in rows for x in r["node_starting_ms"]]), 1),
        "node_ready_p50_ms": round(med([x for r in rows for x in r["node_ready_ms"]]), 1),
        "node_ready_max_ms": round(max(x for r in rows for x in r["node_ready_ms"]), 1),
        "init_s_p50_ms": round(med([x for r in rows for x in r["init_ms"]]), 3),
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    started = time.monotonic()
    load_before = os.getloadavg()
    raw = trio.run(measure, args.quick)
    load_after = os.getloadavg()

    spawn = {k: summarize_spawn(v) for k, v in raw["spawn"].items()}
    labels = {
        "forkserver_cold_1": "forkserver, cold, 1-node session",
        "forkserver_cold_5": "forkserver, cold, 5-node session",
        "warm_1": "warm pool (5, filled), 1-node session",
        "warm_5": "warm pool (5, filled), 5-node session",
        "spawn_cold_1": "spawn, cold, 1-node session",
        "spawn_cold_5": "spawn, cold, 5-node session",
    }
    print_table(
        "spawn to ready (ms; node = open_session call → that node's ready event)",
        ["variant", "n", "session p50", "session max", "node starting p50", "node ready p50", "node ready max", "init_s p50"],
        [
            (labels[k], s["n"], s["session_ready_p50_ms"], s["session_ready_max_ms"], s["node_starting_p50_ms"],
             s["node_ready_p50_ms"], s["node_ready_max_ms"], s["init_s_p50_ms"])
            for k, s in spawn.items()
        ],
    )  # fmt: skip
    first = raw["first_session"]
    print(f"first session of the process (forkserver start + preload included): {first['session_ms']:.1f} ms")
    print_table(
        "warm runtime (pool target 2), sessions back to back, 0.5 s apart (idle workers counted before each)",
        ["session", "nodes", "reported idle", "live pool workers", "ready ms"],
        [
            (r["session"], r["nodes"], r["reported_idle"], r["live_workers"], round(r["session_ms"], 1))
            for r in raw["warm_back_to_back"]
        ],
    )

    td = {}
    for kind, rows in raw["teardown"].items():
        td[kind] = {
            key: round(med([r[key] for r in rows]), 2)
            for key in (
                "session_wait_ms",
                "open_session_exit_ms",
                "pids_reaped_ms",
                "shm_unlinked_ms",
                "fifo_dir_removed_ms",
                "all_gone_ms",
            )
        }
        td[kind]["max_all_gone_ms"] = round(max(r["all_gone_ms"] for r in rows), 2)
        td[kind]["n"] = len(rows)
    td_labels = {
        "coop1": "cancel, 1 cooperative node",
        "coop5": "cancel, 5 cooperative nodes",
        "close5": "close + drain, 5 nodes",
        "hang": f"cancel, HangNode ignoring stop (grace {GRACE} s)",
    }
    print_table(
        "teardown (ms from cancel()/close(), p50; watcher process polls every ~0.1 ms)",
        ["variant", "n", "session.wait", "pids reaped", "shm unlinked", "fifo dir gone", "all gone", "all gone max"],
        [
            (td_labels[k], v["n"], v["session_wait_ms"], v["pids_reaped_ms"], v["shm_unlinked_ms"],
             v["fifo_dir_removed_ms"], v["all_gone_ms"], v["max_all_gone_ms"])
            for k, v in td.items()
        ],
    )  # fmt: skip

    mem = raw["memory"]
    print_table(
        "memory of a 5-node session's workers (kB, after 50 frames)",
        ["node", "USS", "RSS", "PSS"],
        [(nid, w["uss_kb"], w["rss_kb"], w["pss_kb"]) for nid, w in mem["workers"].items()],
    )
    sup = mem["supervisor"]
    fp = mem["shm_footprint"]
    print(f"workers' USS total: {mem['workers_uss_total_mb']:.1f} MB")
    print(f"session shared memory: {fp['entries']} /dev/shm entries, {fp['bytes'] / 2**20:.2f} MiB "
          f"(allocated {fp['allocated_bytes'] / 2**20:.2f} MiB)")  # fmt: skip
    print_table(
        f"supervisor growth per open 5-node session ({sup['sessions_opened']} sessions open at once, MB)",
        ["USS", "RSS", "PSS", "anonymous", "RSS of mapped rings", "private in mapped rings"],
        [(sup["uss_per_session_mb"], sup["rss_per_session_mb"], sup["pss_per_session_mb"], sup["anon_per_session_mb"],
          sup["shm_mapped_rss_per_session_mb"], sup["shm_mapped_private_per_session_mb"])],
    )  # fmt: skip

    cold_node = spawn["forkserver_cold_1"]["node_ready_p50_ms"]
    warm_node = spawn["warm_1"]["node_ready_p50_ms"]
    five = spawn["forkserver_cold_5"]["session_ready_p50_ms"]
    goals = {
        "cold_node_ready_ms[forkserver]": (cold_node, GOALS["cold_node_ready_ms"]),
        "cold_node_ready_ms[spawn]": (
            spawn["spawn_cold_1"]["node_ready_p50_ms"],
            GOALS["cold_node_ready_ms"],
        ),
        "warm_node_ready_ms": (warm_node, GOALS["warm_node_ready_ms"]),
        "five_node_session_ready_ms[forkserver cold]": (five, GOALS["five_node_session_ready_ms"]),
        "five_node_session_ready_ms[warm]": (
            spawn["warm_5"]["session_ready_p50_ms"],
            GOALS["five_node_session_ready_ms"],
        ),
        "teardown_cooperative_ms[cancel, 5 nodes]": (
            td["coop5"]["all_gone_ms"],
            GOALS["teardown_cooperative_ms"],
        ),
        "teardown_cooperative_ms[close, 5 nodes]": (
            td["close5"]["all_gone_ms"],
            GOALS["teardown_cooperative_ms"],
        ),
        "teardown_hang_ms": (td["hang"]["all_gone_ms"], GOALS["teardown_hang_ms"]),
        "five_node_uss_mb": (round(mem["workers_uss_total_mb"], 1), GOALS["five_node_uss_mb"]),
        "supervisor_per_session_mb[USS]": (
            round(sup["uss_per_session_mb"], 2),
            GOALS["supervisor_per_session_mb"],
        ),
        "supervisor_per_session_mb[RSS]": (
            round(sup["rss_per_session_mb"], 2),
            GOALS["supervisor_per_session_mb"],
        ),
    }
    b2b = [r["node_ready_max_ms"] for r in raw["warm_back_to_back"] if r["nodes"] == 2]
    goals["warm_node_ready_ms[back-to-back 2-node, info]"] = (round(med(b2b), 1), GOALS["warm_node_ready_ms"])
    goal_rows = {k: {"goal": f"<= {g:g}", "measured": m, "met": bool(m <= g)} for k, (m, g) in goals.items()}
    print_table(
        "goals",
        ["goal", "target", "measured", "met"],
        [(k, g["goal"], g["measured"], "MET" if g["met"] else "MISSED") for k, g in goal_rows.items()],
    )
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    primary = [k for k in goal_rows if not k.endswith(("[spawn]", "[RSS]", "info]"))]
    finish(
        "lifecycle",
        {
            "quick": args.quick,
            "spawn_to_ready": spawn,
            "first_session_ms": round(first["session_ms"], 1),
            "warm_back_to_back": raw["warm_back_to_back"],
            "teardown_ms": td,
            "memory": mem,
            "goals": goal_rows,
            "goal_met": all(goal_rows[k]["met"] for k in primary),
            "goal_met_note": "spawn worker type, supervisor RSS and the back-to-back warm check are reported, "
            "not counted in goal_met",
            "loadavg_1m": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
            "seconds": round(time.monotonic() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
