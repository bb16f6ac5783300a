"""Run the benchmarks and write docs/benchmarks.md with tables and PNG plots.

Usage (``make bench-report`` runs the first, with matplotlib installed):

    python scripts/bench_report.py                    # every benchmark, quick mode
    python scripts/bench_report.py --full             # full mode (many minutes)
    python scripts/bench_report.py --only chain,scale # run just those; the rest from their last results
    python scripts/bench_report.py --from-results     # render the last benchmarks/results/*.json

Each ``benchmarks/bench_<topic>.py`` runs in a child process (``--quick`` unless ``--full``), one
after another; its result is the JSON object on its last stdout line (the same as
``benchmarks/results/<topic>.json``). A benchmark that fails, times out or prints no JSON is
reported as such in the Markdown; the report goes on with the others.

The Markdown (machine header, per-benchmark tables, ratios against each benchmark's same-run
baseline) needs nothing outside the standard library, so it is tested without matplotlib
(tests/test_bench_report.py). The plots need matplotlib (the ``bench`` extra); without it the
report says they were not drawn.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
OUT_MD = ROOT / "docs" / "benchmarks.md"
PLOTS_SUBDIR = "benchmarks"  # docs/benchmarks/*.png, next to docs/benchmarks.md
RUNS_FILE = "_report_runs.json"  # in the results dir: how each benchmark's last report run went

# The order of the report; a bench_<topic>.py not listed here comes after these, by name.
TOPICS = (
    "chain",
    "fanout",
    "hop",
    "ipc",
    "loan",
    "inprocess",
    "blocking",
    "parallel",
    "scale",
    "speech",
    "grpc",
    "lifecycle",
    "supervision",
    "manifest",
    "nginx",
    "remote",
    "bargein",
    "turn",
)
TIMEOUT_QUICK_S = 600.0
TIMEOUT_FULL_S = 3600.0
FRAME_PERIOD_MS = 20.0  # the real-time budget of a 20 ms audio frame (bench_scale, bench_supervision)

Json = dict[str, Any]


# ------------------------------------------------------------------------------ running


@dataclass
class Outcome:
    """One benchmark in this report: its JSON (``data``) or why there is none."""

    topic: str
    status: str  # "ran" | "failed" | "not run" | "from results"
    data: Json | None = None
    seconds: float | None = None
    note: str = ""
    mode: str = ""  # "quick" | "full" | "" (unknown)


def discover_topics(bench_dir: Path = BENCH_DIR) -> list[str]:
    found = sorted(p.stem.removeprefix("bench_") for p in bench_dir.glob("bench_*.py"))
    return [t for t in TOPICS if t in found] + [t for t in found if t not in TOPICS]


def last_json_line(stdout: str) -> Json | None:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None
    return None


def _tail(text: str, lines: int = 3) -> str:
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return " / ".join(kept)[-400:]


def run_benchmark(
    topic: str,
    *,
    full: bool,
    bench_dir: Path = BENCH_DIR,
    log_dir: Path | None = None,
    timeout: float | None = None,
    python: str = sys.executable,
) -> Outcome:
    """Run ``bench_<topic>.py`` in a child process; never raises for the benchmark's failures."""
    mode = "full" if full else "quick"
    script = bench_dir / f"bench_{topic}.py"
    if not script.is_file():
        return Outcome(topic, "not run", note=f"{script.name} does not exist", mode=mode)
    cmd = [python, str(script), *([] if full else ["--quick"])]
    limit = timeout if timeout is not None else (TIMEOUT_FULL_S if full else TIMEOUT_QUICK_S)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=bench_dir.parent, capture_output=True, text=True, timeout=limit, check=False
        )
    except subprocess.TimeoutExpired as exc:
        return Outcome(
            topic, "failed", seconds=round(time.monotonic() - started, 1), mode=mode,
            note=f"timed out after {limit:g} s ({_tail(_text(exc.stderr)) or 'no stderr'})",
        )  # fmt: skip
    seconds = round(time.monotonic() - started, 1)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"{topic}.log").write_text(proc.stdout + "\n--- stderr\n" + proc.stderr, encoding="utf-8")
    data = last_json_line(proc.stdout)
    if proc.returncode != 0:
        why = _tail(proc.stderr) or _tail(proc.stdout) or "no output"
        return Outcome(
            topic, "failed", seconds=seconds, mode=mode, note=f"exit code {proc.returncode}: {why}"
        )
    if data is None:
        return Outcome(
            topic, "failed", seconds=seconds, mode=mode, note="its last stdout line is not a JSON object"
        )
    return Outcome(topic, "ran", data=data, seconds=seconds, mode=mode)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def load_result(topic: str, results_dir: Path, runs: dict[str, Any] | None = None) -> Outcome:
    """The last ``benchmarks/results/<topic>.json`` (bench_ipc writes ``bench_ipc.json``).

    ``runs``: what the report's earlier runs recorded per topic (RUNS_FILE); a run that failed
    after the JSON was last written wins over that (older) JSON.
    """
    last = (runs or {}).get(topic, {})
    failed_at = last.get("finished_at", 0.0) if last.get("status") == "failed" else None
    for name in (f"{topic}.json", f"bench_{topic}.json"):
        path = results_dir / name
        if not path.is_file() or (failed_at is not None and path.stat().st_mtime <= failed_at):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            return Outcome(topic, "failed", note=f"{name} is not valid JSON: {exc}")
        if not isinstance(data, dict):
            return Outcome(topic, "failed", note=f"{name} does not hold a JSON object")
        when = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        mode = last.get("mode") or (
            {True: "quick", False: "full"}.get(data["quick"], "") if "quick" in data else ""
        )
        return Outcome(
            topic, "from results", data=data, seconds=last.get("seconds"), mode=mode, note=f"{name}, written {when}",
        )  # fmt: skip
    if failed_at is not None:
        return Outcome(
            topic, "failed", seconds=last.get("seconds"), mode=last.get("mode", ""), note=last.get("note", "")
        )
    return Outcome(topic, "not run", note=f"no {topic}.json in {results_dir.name}/")


# --------------------------------------------------------------------------- formatting


def fmt(value: Any) -> str:
    """A table cell: numbers with 3-4 significant digits, booleans as yes/no, None as —."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.1f}"
        if magnitude >= 1 or value == 0:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value) if value else "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) if value else "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b == 0:
        return None
    return float(a) / float(b)


def times(value: float | None) -> str:
    return "—" if value is None else f"{fmt(value)}×"


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(fmt(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def goals_table(goals: Any) -> str | None:
    """The ``goals`` dict most benchmarks write: name → {goal, measured, met}."""
    if not isinstance(goals, dict):
        return None
    rows = [
        (name, g.get("goal"), g.get("measured"), "met" if g.get("met") else "**not met**")
        for name, g in goals.items()
        if isinstance(g, dict) and "met" in g
    ]
    return md_table(["goal", "target", "measured", "met"], rows) if rows else None


def met_flags_table(flags: Any, title: str = "goal") -> str | None:
    """``goal_met_by_goal`` / ``goals_met``: name → bool."""
    if not isinstance(flags, dict) or not flags:
        return None
    return md_table([title, "met"], [(k, "met" if v else "**not met**") for k, v in flags.items()])


# ------------------------------------------------------------------------ the sections
# Each takes the benchmark's JSON and returns Markdown blocks: its key table, the ratios
# against the baseline measured in the same run, its goals. A KeyError etc. (a JSON that
# changed shape) is caught by render_section, which then falls back to the goals alone.


def section_chain(d: Json) -> list[str]:
    res, der = d["results_us"], d["derived"]
    blocks = [
        f"{d['nodes']} `PassThrough` nodes in a chain, one frame in flight; latency µs per frame "
        f"({d['rounds']} interleaved rounds). `multiprocess`: every node in its own worker "
        "(6 ring crossings); baselines from the same run: the in-process chain, one `numpy.copyto` "
        "(memcpy) and 5 processes forwarding over `multiprocessing.Pipe`.",
        md_table(
            ["size", "path", "n", "p50 µs", "p99 µs", "min µs", "frames/s (pipeline full)"],
            [
                (
                    size,
                    path,
                    r["n"],
                    r["p50_us"],
                    r["p99_us"],
                    r["min_us"],
                    d.get("throughput_fps_median", {}).get(size, {}).get(path),
                )
                for size, paths in res.items()
                for path, r in paths.items()
            ],
        ),
        "Ratios of p50s against the same-run baselines; hop = (multiprocess − inprocess) / 6 crossings; "
        "marginal hop = (5-worker − 1-worker chain) / 4, what one more worker costs:",
        md_table(
            [
                "size",
                "chain / memcpy",
                "chain / Pipe chain",
                "chain / in-process",
                "chain / its copies (7 in the slots, 1 external)",
                "hop µs",
                "marginal hop µs",
                "hop / memcpy",
                "Pipe per transfer µs",
            ]
            + (["chain / Pipecat"] if any("chain_over_pipecat" in v for v in der.values()) else []),
            [
                (
                    size,
                    times(v["chain_over_memcpy"]),
                    times(v["chain_over_pipe"]),
                    times(v["chain_over_inprocess"]),
                    times(v["chain_over_copies"]),
                    v["hop_per_crossing_us"],
                    v.get("marginal_hop_us", "—"),
                    times(v["hop_over_memcpy"]),
                    v["pipe_per_transfer_us"],
                    *([times(v["chain_over_pipecat"])] if "chain_over_pipecat" in v else []),
                )
                for size, v in der.items()
            ],
        ),
    ]
    if any("fused_over_chain" in v for v in der.values()):
        blocks += [
            "`multiprocess_fused`: the same 5 nodes with `fuse_chains`, in one worker process (2 ring "
            "crossings; not what the goals measure, which put every node in a process of its own):",
            md_table(
                ["size", "fused p50 µs", "fused / 5-worker chain", "fused / memcpy", "fused / Pipe chain"],
                [
                    (
                        size,
                        res[size].get("multiprocess_fused", {}).get("p50_us"),
                        times(v["fused_over_chain"]),
                        times(v["fused_over_memcpy"]),
                        times(v["fused_over_pipe"]),
                    )
                    for size, v in der.items()
                    if "fused_over_chain" in v
                ],
            ),
        ]
    return blocks + _goals_blocks(d)


def section_hop(d: Json) -> list[str]:
    res, base = d["results_us"], d["baselines"]
    rows = [(k, v["n"], v["p50_us"], v["p99_us"], v["min_us"]) for k, v in res.items()]
    ratio_rows = []
    for place in ("free", "cross", "same"):
        ex = res.get(f"exec_rt[{place}]", {}).get("p50_us")
        ratio_rows.append(
            (f"executor round trip 4 KiB [{place}]", ex,
             times(ratio(ex, base["raw_floor_p50_us"].get(place))), times(ratio(ex, base["pipe_rt_p50_us"].get(place))))
        )  # fmt: skip
    big = res.get("big_exec_hop", {}).get("p50_us")
    ratio_rows.append(
        ("executor one-way hop 10 MiB", big, times(ratio(big, base.get("big_ring_hop_p50_us"))),
         times(ratio(big, base.get("big_pipe_hop_p50_us"))))
    )  # fmt: skip
    return [
        "The multiprocess executor's hop against the same run's floors. `[free]` nothing pinned, "
        "`[cross]` supervisor and worker on different CPUs, `[same]` both on CPU 0. "
        "`exec_rt`: supervisor → worker → supervisor through a session (4 KiB); `raw_floor_rt`: "
        "two processes ping-ponging through shm + 2 semaphores; `big_*`: 10 MiB.",
        md_table(["measurement", "n", "p50 µs", "p99 µs", "min µs"], rows),
        "Ratios of p50s (for 10 MiB the first baseline is the bare ring hop, not the raw floor):",
        md_table(["what", "p50 µs", "÷ raw floor (or bare ring)", "÷ multiprocessing.Pipe"], ratio_rows),
        *_goals_blocks(d),
    ]


def section_ipc(d: Json) -> list[str]:
    res = d["results"]
    rows = [(k, v["n"], v["p50_us"], v["p99_us"], v.get("mean_us")) for k, v in res.items()]
    ratio_rows = []
    for place in ("free", "cross", "same"):
        floor = res.get(f"raw_floor_rt[{place}]", {}).get("p50_us")
        pipe = res.get(f"pipe_rt[{place}]", {}).get("p50_us")
        for ring in ("ring_sync_rt", "ring_trio_rt"):
            p50 = res.get(f"{ring}[{place}]", {}).get("p50_us")
            ratio_rows.append((f"{ring}[{place}]", p50, times(ratio(p50, floor)), times(ratio(p50, pipe))))
    for what, ring, pipe_key in (
        ("hop", "big_ring_hop", "big_pipe_hop"),
        ("rt", "big_ring_rt", "big_pipe_rt"),
    ):
        p50 = res.get(ring, {}).get("p50_us")
        ratio_rows.append(
            (f"{ring} (10 MiB {what})", p50, "—", times(ratio(p50, res.get(pipe_key, {}).get("p50_us"))))
        )
    return [
        "The shared-memory ring alone (no runtime), against the same run's raw floor "
        "(shm + 2 semaphores) and `multiprocessing.Pipe`; 4 KiB round trips unless marked 10 MiB.",
        md_table(["measurement", "n", "p50 µs", "p99 µs", "mean µs"], rows),
        "Ratios of p50s:",
        md_table(["ring", "p50 µs", "÷ raw floor", "÷ Pipe"], ratio_rows),
        *_goals_blocks(d),
    ]


def section_fanout(d: Json) -> list[str]:
    res, der = d["results"], d["derived"]
    rows = []
    for case, v in res.items():
        for variant in ("shared", "forward+copy"):
            e = v[variant]
            rows.append(
                (case, variant, e["p50_us"], e["p99_us"], e["fan_cpu_us_per_frame"],
                 e["all_workers_cpu_us_per_frame"], e["frames_per_s"], e["frames_shared"], e["frames_forwarded"])
            )  # fmt: skip
        rows.append((case, "memcpy (baseline)", v["memcpy_p50_us"], "", "", "", "", "", ""))
    return [
        "A `zero_copy` node sending each big tensor to k ordinary nodes (which copy what they read), "
        "with `share_fan_out` on (every ring gets a reference, the input slot is kept until all "
        "have read it) and off (the first ring takes the segment over, the others get copies); "
        "in the last case the fan runs in the supervisor (one pool copy for all rings, against "
        "one per ring; its CPU is the whole supervisor process's), "
        f"interleaved in one run ({d.get('rounds')} rounds × {d.get('per_round')} frames, one in "
        "flight; frames/s with the pipeline full); baseline: one memcpy of the payload, same run.",
        md_table(
            [
                "case",
                "fan-out",
                "p50 µs",
                "p99 µs",
                "fan CPU µs / frame",
                "all workers CPU µs / frame",
                "frames/s",
                "shared",
                "forwarded",
            ],
            rows,
        ),
        "shared / forward+copy, and the fan's CPU saved in memcpys (k − 1 copies are saved; a copy "
        "into a ring costs more than a warm memcpy):",
        md_table(
            [
                "case",
                "latency",
                "fan CPU",
                "fan CPU saved (memcpys)",
                "copies saved",
                "all workers CPU",
                "frames/s",
            ],
            [
                (
                    case,
                    times(v["latency_ratio"]),
                    times(v["fan_cpu_ratio"]),
                    v["fan_cpu_saved_in_memcpys"],
                    v["copies_at_fan_expected_saved"],
                    times(v["all_workers_cpu_ratio"]),
                    times(v["throughput_ratio"]),
                )
                for case, v in der.items()
            ],
        ),
    ]


def section_loan(d: Json) -> list[str]:
    res = d["results"]
    rows = []
    for size, v in res.items():
        loan, copy = v["output_array"], v["np.empty + copy"]
        rows.append(
            (size, v["memcpy_p50_us"], loan["p50_us"], copy["p50_us"], loan["worker_cpu_us_per_frame"],
             copy["worker_cpu_us_per_frame"], times(v["latency_ratio"]), times(v["worker_cpu_ratio"]),
             v["worker_cpu_saved_in_memcpys"])
        )  # fmt: skip
    return [
        "A worker node producing a big frame per input: built in place in `NodeContext.output_array` "
        "against a new array the worker copies into shared memory; baseline: one memcpy of the "
        f"payload, same run ({d.get('rounds')} rounds × {d.get('per_round')} frames).",
        md_table(
            [
                "size",
                "memcpy p50 µs",
                "output_array p50 µs",
                "copy p50 µs",
                "worker CPU µs (loan)",
                "worker CPU µs (copy)",
                "latency loan / copy",
                "worker CPU loan / copy",
                "CPU saved, in memcpys",
            ],
            rows,
        ),
    ]


def section_inprocess(d: Json) -> list[str]:
    lat, tp = d["latency_us"], d["throughput_fps"]
    return [
        f"An in-process chain of {d['chain_length']} `PassThrough` nodes ({d['frame']}) against the "
        "floor: bare trio tasks forwarding over memory channels of the same capacity, same run.",
        md_table(
            ["path", "frames/s", "p50 µs", "p95 µs", "p99 µs", "n"],
            [
                (
                    "nursery_pipes",
                    tp["ours"],
                    lat["ours"]["p50"],
                    lat["ours"]["p95"],
                    lat["ours"]["p99"],
                    lat["ours"]["n"],
                ),
                (
                    "floor (bare trio tasks)",
                    tp["floor"],
                    lat["floor"]["p50"],
                    lat["floor"]["p95"],
                    lat["floor"]["p99"],
                    lat["floor"]["n"],
                ),
            ],
        ),
        f"Ratios: throughput {times(tp.get('ratio'))} the floor's, p50 latency "
        f"{times(lat.get('ratio_p50'))} the floor's; p99 uses "
        f"{fmt(100 * d['realtime_budget_share_p99'])} % of the 20 ms frame period.",
    ]


def section_blocking(d: Json) -> list[str]:
    stalls, base = d["stalls"], d["stalls"]["baseline"]
    rows: list[Sequence[Any]] = [
        ("none (baseline)", "—", base["p50_ms"], base["p99_ms"], base["max_ms"], "1×", "1×", "—")
    ]
    for kind, placed in stalls.items():
        if kind == "baseline":
            continue
        for executor, v in placed.items():
            rows.append(
                (kind, executor, v["p50_ms"], v["p99_ms"], v["max_ms"], times(v["p50_vs_baseline"]),
                 times(v["p99_vs_baseline"]), v["heavy_latency_p50_ms"])
            )  # fmt: skip
    cost = d["per_frame_cost"]
    cost_rows = []
    for size, by_exec in cost.items():
        if size == "thread_floors":
            continue
        for executor, v in by_exec.items():
            cost_rows.append(
                (f"{int(size):,} B", executor, v["rtt_p50_us"], v["rtt_p99_us"], v["overhead_vs_inprocess_p50_us"],
                 v["bytes_copied_per_frame"])
            )  # fmt: skip
    for name, v in cost.get("thread_floors", {}).items():
        cost_rows.append(("floor", name, v["rtt_p50_us"], v["rtt_p99_us"], None, 0))
    return [
        f"{d['light_sessions']} light sessions (a 20 ms frame every 20 ms) beside one session whose node "
        f"blocks {fmt(d['block_ms'])} ms per frame: the light frames' latency (ms, from each frame's "
        "scheduled time), against the same light sessions with no heavy session (same run). "
        "`sleep`: GIL released, no CPU; `numpy`: CPU, GIL released; `python`: CPU, GIL held.",
        md_table(
            [
                "heavy node",
                "placed",
                "p50 ms",
                "p99 ms",
                "max ms",
                "p50 / baseline",
                "p99 / baseline",
                "heavy p50 ms",
            ],
            rows,
        ),
        "What an executor costs per frame (one `PassThrough` session, one frame in flight, µs):",
        md_table(
            ["frame", "executor", "RTT p50 µs", "RTT p99 µs", "p50 − in-process µs", "bytes copied"],
            cost_rows,
        ),
        _peer_note(d),
    ]


def section_parallel(d: Json) -> list[str]:
    rows = []
    for v in d["kinds"].values():
        wall, r = v["wall_s"], v["ratio_to_inprocess"]
        rows.append(
            (v["label"], wall.get("inprocess"), wall.get("thread"), wall.get("multiprocess"),
             times(r.get("thread")), times(r.get("multiprocess")))
        )  # fmt: skip
    goal = d.get("goal", {})
    return [
        f"{d['stages']} CPU-bound stages (~{fmt(d['work_ms_per_frame_per_stage'])} ms of work per frame each) "
        f"in a chain, {d['frames']} frames; wall time first input → last output (best of "
        f"{d['rounds']} round(s)); ratios to the in-process wall time of the same kind, same run.",
        md_table(
            [
                "stage",
                "in-process s",
                "thread s",
                "multiprocess s",
                "thread / in-process",
                "multiprocess / in-process",
            ],
            rows,
        ),
        f"Goal (issue 3): CpuBurnNode multiprocess / in-process ≤ {fmt(goal.get('ratio_max'))}: measured "
        f"{fmt(d.get('ratio'))} — {'met' if d.get('goal_met') else '**not met**'} "
        "(three busy stages share the machine's cores).",
    ]


def section_scale(d: Json) -> list[str]:
    rows, cpu_rows = [], []
    for tag, r in d["runs"].items():
        lat, cpu = r["latency_ms"], r["cpu"]
        rows.append(
            (tag, r["sessions"], r["workers"], r["seconds"], r["frames_sent"], r["frames_received"], r["no_loss"],
             lat["p50"], lat["p99"], lat["max"], lat["worst_session_p99"],
             times(ratio(lat["p99"], FRAME_PERIOD_MS)))
        )  # fmt: skip
        cpu_rows.append(
            (tag, cpu["supervisor_pct_of_one_core"], cpu["workers_pct_of_one_core"],
             cpu["machine_busy_pct_of_all_cores"], cpu["supervisor_us_per_frame"], cpu["us_per_hop"],
             cpu.get("us_per_session_frame", "—"), cpu.get("sessions_per_core", "—"))
        )  # fmt: skip
    pacing = d.get("pacing_cost_us", {})
    blocks = [
        "Sessions of 5 `PassThrough` nodes, each in its own worker process, each fed a 20 ms audio frame "
        "every 20 ms in real time; latency from `session.send` to the sink's output (ms). The "
        "baseline is the frame period: p99 below it keeps up in real time. Run `fused`: the first "
        "run again with `fuse_chains` (each session's 5 nodes in one worker process), same run.",
        md_table(
            [
                "run",
                "sessions",
                "workers",
                "s",
                "sent",
                "received",
                "no loss",
                "p50 ms",
                "p99 ms",
                "max ms",
                "worst session p99 ms",
                "p99 / 20 ms period",
            ],
            rows,
        ),
        md_table(
            [
                "run",
                "supervisor % of a core",
                "workers % of a core",
                "machine busy %",
                "supervisor µs/frame",
                "µs/hop",
                "CPU µs per session frame",
                "sessions per core (CPU alone)",
            ],
            cpu_rows,
        ),
    ]
    if pacing:
        blocks += [
            "CPU per round trip, back to back vs one every 20 ms (the raw floor's 'worker' is its peer process):",
            md_table(
                ["round trip", "worker CPU µs", "supervisor CPU µs", "RT p50 µs"],
                [(k, v["worker_us"], v["supervisor_us"], v["rt_p50_us"]) for k, v in pacing.items()],
            ),
        ]
    if d.get("quick"):
        blocks.append(
            "Quick mode runs 10 sessions only, so the plot has one point; for the curve run "
            "`make bench-report BENCH_REPORT_ARGS='--full --only scale'` (10 and 20 sessions, 30 s each)."
        )
    return blocks + _goals_blocks(d)


def section_speech(d: Json) -> list[str]:
    def pct_row(name: str, s: Json) -> tuple[Any, ...]:
        return (name, s.get("p50"), s.get("p95"), s.get("min"), s.get("n"))

    blocks = [
        f"`examples/speech_to_speech.json` (Silero VAD → pocketsphinx → reply → Piper, each speech node in its "
        f"own worker), {d['utterances']} utterances fed in real time in {fmt(d['chunk_ms'])} ms chunks. "
        "Latency: end of utterance (last speech sample sent) → first reply audio at the client (ms).",
        md_table(
            ["latency", "p50 ms", "p95 ms", "min ms", "n"],
            [
                pct_row("end of utterance → first audio", d["latency_ms"]),
                pct_row("VAD speech_end → first audio", d["from_vad_end_ms"]),
                pct_row("scheduled send → first audio", d["from_scheduled_ms"]),
            ],
        ),
        "Where the time goes (per-component p50, from stamps in the nodes):",
        md_table(
            ["component", "p50 ms", "p95 ms", "min ms", "n"],
            [pct_row(k, v) for k, v in d["components_ms"].items()],
        ),
    ]
    conc = d.get("concurrent") or {}
    conc_rows = []
    for pattern, v in conc.items():
        if not isinstance(v, dict) or "inprocess" not in v:
            continue
        ip, mp = v["inprocess"]["latency_ms"], v["multiprocess"]["latency_ms"]
        conc_rows.append(
            (pattern, ip["p50"], ip["p95"], mp["p50"], mp["p95"], times(ratio(mp["p50"], ip["p50"])))
        )
    if conc_rows:
        blocks += [
            f"{conc.get('sessions')} sessions at once, every speech node in-process vs each in its own worker "
            "(same run; in-process nodes share the trio thread):",
            md_table(["start pattern", "in-process p50 ms", "in-process p95 ms", "multiprocess p50 ms",
                      "multiprocess p95 ms", "multiprocess / in-process p50"], conc_rows),
        ]  # fmt: skip
    goal, met = d.get("goal", {}), d.get("goal_met", {})
    if goal:
        blocks.append(
            f"Goal (seed SC-004): p50 ≤ {fmt(goal.get('latency_p50_max_ms'))} ms and p95 ≤ "
            f"{fmt(goal.get('latency_p95_max_ms'))} ms — "
            + ", ".join(f"{k} {'met' if v else '**not met**'}" for k, v in met.items())
        )
    return blocks


def section_grpc(d: Json) -> list[str]:
    unary, stream, sessions = d["unary_ms"], d["stream"], d["sessions"]
    by_server = unary.get("by_server", {})
    raw = by_server.get("raw", unary["raw_echo"])
    bridge = d.get("bridge", {})
    rows = [
        (name, b.get("what"), by_server.get(name, {}).get("p50"), by_server.get(name, {}).get("p99"),
         times(ratio(by_server.get(name, {}).get("p50"), raw["p50"])), b.get("chunks_per_s"),
         times(b.get("ratio_to_raw")), b.get("roundtrip_p50_ms"), b.get("server_cpu_us_per_chunk"), b.get("lost"))
        for name, b in bridge.items()
    ]  # fmt: skip
    return [
        "The gRPC service against raw grpclib echo servers (same messages, no runtime behind them), "
        "same run. Unary: `ExecutePipeline` of a 1-node manifest, 4 KiB in and out; stream: 4 KiB chunks "
        "through a `PassThrough` session; the ratios are to the plain-asyncio raw echo.",
        md_table(
            [
                "server",
                "what",
                "unary p50 ms",
                "unary p99 ms",
                "unary p50 / raw",
                "stream chunks/s",
                "chunks/s / raw",
                "stream RT p50 ms",
                "server CPU µs/chunk",
                "lost",
            ],
            rows,
        ),
        f"Real server: unary p50 {times(unary.get('ratio_p50'))} and p99 {times(unary.get('ratio_p99'))} the raw "
        f"echo; streaming {fmt(stream['chunks_per_s']['real'])} chunks/s = "
        f"{times(stream['chunks_per_s'].get('ratio'))} the raw echo's. "
        f"{len(sessions.get('rounds', [])) and sessions['rounds'][0].get('sessions')} concurrent real-time "
        f"sessions (a stage in a worker): p99 {fmt(sessions.get('p99_ms_median'))} ms, "
        f"{fmt(sessions.get('lost'))} chunks lost.",
        met_flags_table(d.get("goal_met_by_goal")) or "",
    ]


def section_lifecycle(d: Json) -> list[str]:
    spawn = [
        (
            k,
            v["n"],
            v["session_ready_p50_ms"],
            v["session_ready_max_ms"],
            v["node_ready_p50_ms"],
            v["init_s_p50_ms"],
        )
        for k, v in d["spawn_to_ready"].items()
    ]
    tear = [
        (
            k,
            v["n"],
            v["session_wait_ms"],
            v["pids_reaped_ms"],
            v["shm_unlinked_ms"],
            v["all_gone_ms"],
            v["max_all_gone_ms"],
        )
        for k, v in d["teardown_ms"].items()
    ]
    mem = d.get("memory", {})
    sup = mem.get("supervisor", {})
    return [
        "Worker lifecycle: `open_session` → every node ready (ms), cold (forkserver, spawn) and from a "
        "warm pool; teardown until every worker is reaped and every segment unlinked.",
        md_table(
            ["variant", "n", "session ready p50 ms", "max ms", "node ready p50 ms", "node init p50 ms"], spawn
        ),
        md_table(
            [
                "teardown",
                "n",
                "session wait ms",
                "pids reaped ms",
                "shm unlinked ms",
                "all gone ms",
                "max all gone ms",
            ],
            tear,
        ),
        f"Memory: the 5 workers of a session use {fmt(mem.get('workers_uss_total_mb'))} MB unique memory (USS) "
        f"in all; the supervisor grows {fmt(sup.get('uss_per_session_mb'))} MB USS "
        f"({fmt(sup.get('rss_per_session_mb'))} MB RSS) per extra open session. Warm pool against cold "
        f"forkserver start (1 node, p50): "
        f"{times(ratio(d['spawn_to_ready'].get('warm_1', {}).get('node_ready_p50_ms'), d['spawn_to_ready'].get('forkserver_cold_1', {}).get('node_ready_p50_ms')))}.",
        *_goals_blocks(d),
    ]


def section_supervision(d: Json) -> list[str]:
    base = d["baseline"]
    rows: list[Sequence[Any]] = [
        ("cold node start (baseline)", base["cold_start_ms"]["p50"], None, None, base["cold_start_ms"]["max"], "1×"),
        ("warm-pool node start", base["warm_start_ms"]["p50"], None, None, base["warm_start_ms"]["max"],
         times(ratio(base["warm_start_ms"]["p50"], base["cold_start_ms"]["p50"]))),
    ]  # fmt: skip
    for name, v in d["restarts"].items():
        rows.append(
            (f"restart {name}", v["total_ms"]["p50"], v["detect_ms"]["p50"], v["restart_ms"]["p50"],
             v["total_ms"]["max"], times(v.get("vs_cold_start")))
        )  # fmt: skip
    stream_rows = []
    b_lat = d["stream_baseline"]["latency_ms"]
    for label, key in (
        ("no kills (baseline)", "stream_baseline"),
        ("SIGKILL every 2 s", "stream_with_kills"),
    ):
        s = d[key]
        lat = s["latency_ms"]
        stream_rows.append(
            (label, s["seconds"], s["frames_sent"], s["frames_delivered"], s["kills"], len(s["frames_reported_dropped"]),
             s["missing_equals_reported"], lat["p50"], lat["p99"], lat["max"], times(ratio(lat["p99"], b_lat["p99"])))
        )  # fmt: skip
    return [
        "Failure → replacement ready (ms), per executor, against a cold node start measured in the same run:",
        md_table(["what", "p50 ms", "detect p50 ms", "start p50 ms", "max ms", "p50 / cold start"], rows),
        "A real-time audio stream through 5 worker processes while one is SIGKILLed every 2 s, against "
        "the same stream without kills (latency of the delivered frames, ms):",
        md_table(
            [
                "run",
                "s",
                "sent",
                "delivered",
                "kills",
                "reported dropped",
                "missing = reported",
                "p50 ms",
                "p99 ms",
                "max ms",
                "p99 / baseline",
            ],
            stream_rows,
        ),
        met_flags_table(d.get("goals_met")) or "",
    ]


def section_manifest(d: Json) -> list[str]:
    rows = []
    for key, label in (("nodes_10", "10 nodes"), ("nodes_100", "100 nodes")):
        v = d[key]
        rows.append(
            (label, v["bytes"], v["parse_validate_ms"]["p50"], v["parse_validate_ms"]["p99"], v["json_loads_ms"]["p50"],
             times(v["ratio_to_json_loads_p50"]))
        )  # fmt: skip
    goal = d.get("goal", {})
    return [
        "Manifest parse + validate against plain `json.loads` of the same text (same run).",
        md_table(
            ["manifest", "bytes", "parse+validate p50 ms", "p99 ms", "json.loads p50 ms", "÷ json.loads"],
            rows,
        ),
        f"Goal (issue 2): 10 nodes ≤ {fmt(goal.get('nodes_10_p50_ms_max'))} ms — "
        f"{'met' if d.get('goal_met') else '**not met**'}.",
    ]


def section_nginx(d: Json) -> list[str]:
    lat, adds, setup = d["latency_ms"], d["nginx_adds_ms"], d["setup_ms"]
    rate = d["throughput_chunks_per_s"]["mean"]
    memory = d["memory"]
    mem_rows = [("idle replica", 0, 0, memory["idle"]["pss_mib"], None, None)]
    for label, m in memory["loaded"].items():
        mem_rows.append(
            (label, m["sessions"], m["nodes"], m["pss_mib"], m["per_session_mib"], m["per_worker_node_mib"])
        )
    return [
        "A replica (`nursery-pipes serve`) through the real nginx of `deploy/nginx/nursery-pipes.conf` "
        "against the same replica direct, same run. Per chunk, one at a time (ms):",
        md_table(
            ["path", "p50", "p95", "p99", "setup p50 (init → ready)"],
            [
                (name, lat[name]["p50"], lat[name]["p95"], lat[name]["p99"], setup[name]["p50"])
                for name in ("direct", "nginx")
            ]
            + [("nginx adds", adds["p50"], adds["p95"], adds["p99"], None)],
        ),
        f"20 concurrent streams: {fmt(rate['direct'])} chunks/s direct, {fmt(rate['nginx'])} through nginx "
        f"({times(d['throughput_ratio_nginx_vs_direct'])} direct).",
        "Replica memory, server + all workers (PSS, MiB):",
        md_table(
            ["state", "sessions", "worker nodes each", "PSS", "per session", "per worker node"], mem_rows
        ),
    ]


def section_remote(d: Json) -> list[str]:
    rows = []
    for size, paths in d["results"].items():
        for path in ("inprocess", "multiprocess", "remote"):
            r = paths[path]
            rows.append((size, path, r["p50_us"], r["p99_us"], r["frames_per_s"]))
    added = [
        (size, paths["added_per_remote_hop"]["p50_us"], paths["added_per_remote_hop"]["p99_us"])
        for size, paths in d["results"].items()
    ]
    return [
        "One PassThrough node here, in a worker, or on a second `serve` process over loopback "
        "(a remote node), one frame in flight (µs; frames/s with the pipeline kept full):",
        md_table(["size", "path", "p50", "p99", "frames/s"], rows),
        "Added by one remote hop (remote − in-process, same run, µs):",
        md_table(["size", "p50", "p99"], added),
    ]


def section_bargein(d: Json) -> list[str]:
    rows = []
    for mode, r in d["results"].items():
        rows.append(
            (mode, r["n"], r["told_ms"]["p50"], r["told_ms"]["max"], r["stopped_ms"]["p50"],
             r["stopped_ms"]["max"], r["from_onset_ms"]["p50"], r["audio_frames_after_max"])
        )  # fmt: skip
    return [
        "The VAD's barge-in `interrupt` to a speech-synthesis node that is busy with a long answer "
        "(or idle: the baseline), at the client, from the VAD's speech_start event (ms). told = "
        "`SignalSent` (a client stops playing here), stopped = the node's `SignalHandled`:",
        md_table(
            [
                "tts",
                "n",
                "told p50",
                "told max",
                "stopped p50",
                "stopped max",
                "from onset p50",
                "audio after",
            ],
            rows,
        ),
        *_goals_blocks(d),
    ]


def section_turn(d: Json) -> list[str]:
    rows = [
        (name, f"{s['answered']}/{s['questions']}", s["p50_ms"], s["max_ms"], s["heard_right"], s["split"],
         s["early"], s["retracted"])
        for name, s in d["summary"].items()
    ]  # fmt: skip
    return [
        "End of a spoken question (espeak-ng, real time, 20 ms chunks) → first reply audio at an "
        "independent grpcio client built from the upstream protos, through `nursery-pipes serve` "
        "(ms). Baseline, same run: the example with turns ended by the VAD's 300 ms hangover alone:",
        md_table(["pipeline", "answered", "p50", "max", "heard right", "split", "early", "retracted"], rows),
        *_goals_blocks(d),
    ]


SECTIONS: dict[str, Callable[[Json], list[str]]] = {
    "chain": section_chain,
    "fanout": section_fanout,
    "hop": section_hop,
    "ipc": section_ipc,
    "loan": section_loan,
    "inprocess": section_inprocess,
    "blocking": section_blocking,
    "parallel": section_parallel,
    "scale": section_scale,
    "speech": section_speech,
    "grpc": section_grpc,
    "lifecycle": section_lifecycle,
    "supervision": section_supervision,
    "manifest": section_manifest,
    "nginx": section_nginx,
    "remote": section_remote,
    "bargein": section_bargein,
    "turn": section_turn,
}

TITLES = {
    "chain": "5-node chain by frame size (issue 11)",
    "fanout": "Fan-out of a big frame by reference (issue 11)",
    "hop": "One executor hop",
    "ipc": "Shared-memory ring transport",
    "loan": "Loaned output buffers (`output_array`)",
    "inprocess": "In-process chain",
    "blocking": "A blocking node beside light sessions (issue 9)",
    "parallel": "Parallelism by executor",
    "scale": "Many real-time sessions",
    "speech": "Speech to speech",
    "grpc": "gRPC service",
    "lifecycle": "Worker lifecycle",
    "supervision": "Supervision and restarts",
    "manifest": "Manifest parse + validate",
    "nginx": "Behind nginx, and a replica's memory (issue 12)",
    "remote": "A node on another server (issue 12)",
    "bargein": "Barge-in: interrupting the reply path (issue 14)",
    "turn": "Turn-taking over gRPC, independent client and voice (issue 14)",
}


def _goals_blocks(d: Json) -> list[str]:
    table = goals_table(d.get("goals"))
    return ["Goals:", table] if table else []


def _peer_note(d: Json) -> str:
    peer = d.get("peer_pipecat")
    if not isinstance(peer, dict):
        return ""
    if "skipped" in peer:
        return f"Peer (Pipecat) rows not measured: {peer['skipped']}."
    return f"Peer: Pipecat {peer.get('version', '?')} measured in the same run (see [Peers](#peers))."


def render_section(outcome: Outcome, plots: dict[str, str]) -> str:
    topic = outcome.topic
    title = TITLES.get(topic, topic)
    lines = [f"## {title}", "", f"`benchmarks/bench_{topic}.py` — {status_text(outcome)}", ""]
    if outcome.data is None:
        return "\n".join(lines)
    renderer = SECTIONS.get(topic)
    blocks: list[str]
    try:
        blocks = renderer(outcome.data) if renderer else _goals_blocks(outcome.data)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as exc:
        blocks = [f"*The JSON did not have the expected shape ({type(exc).__name__}: {exc}); goals only.*"]
        blocks += _goals_blocks(outcome.data)
    if renderer is None:
        blocks.insert(0, "*No table for this benchmark yet; its goals, if any:*")
    for name, path in plots.items():
        if name.startswith(f"{topic}:"):
            blocks.append(f"![{name.split(':', 1)[1]}]({path})")
    lines += [b + "\n" for b in blocks if b]
    return "\n".join(lines)


def status_text(o: Outcome) -> str:
    mode = f", {o.mode} mode" if o.mode else ""
    secs = f", {fmt(float(o.seconds))} s" if isinstance(o.seconds, (int, float)) else ""
    if o.status == "ran":
        return f"ran{mode}{secs}"
    if o.status == "from results":
        return f"from the last run's JSON ({o.note}{mode}{secs})"
    if o.status == "failed":
        return f"**failed**{mode}{secs}: {o.note}"
    return f"**not run**: {o.note}"


def render_peers(outcomes: dict[str, Outcome]) -> str:
    """Pipecat beside nursery_pipes, from bench_blocking and bench_chain (where it was measured)."""
    lines = ["## Peers", ""]
    measured = False
    for topic in ("blocking", "chain"):
        o = outcomes.get(topic)
        peer = (o.data or {}).get("peer_pipecat") if o else None
        if not isinstance(peer, dict):
            lines.append(f"- `bench_{topic}`: no result in this report.")
            continue
        if "skipped" in peer:
            lines.append(f"- `bench_{topic}`: Pipecat not measured — {peer['skipped']}.")
            continue
        measured = True
        assert o is not None
        assert o.data is not None
        try:
            lines += ["", _peer_table(topic, o.data, peer), ""]
        except (KeyError, TypeError, ValueError) as exc:
            lines.append(f"- `bench_{topic}`: the peer rows did not have the expected shape ({exc}).")
    if not measured:
        lines += [
            "",
            "Pipecat needs protobuf < 7 while uv.lock has 7, so it is not an extra: install it in a venv of "
            "its own (see `benchmarks/requirements-peers.txt`; add `matplotlib` there for the plots), then "
            "`.venv-peers/bin/python scripts/bench_report.py --only blocking,chain`: the benchmarks run with "
            "the Python that runs the report.",
        ]
    return "\n".join(lines) + "\n"


def _peer_table(topic: str, d: Json, peer: Json) -> str:
    if topic == "blocking":
        stalls = d["stalls"]
        rows: list[Sequence[Any]] = [
            (
                "none (baseline)",
                stalls["baseline"]["p99_ms"],
                stalls["baseline"]["p99_ms"],
                peer["baseline"]["p99_ms"],
            )
        ]
        for name, v in peer["heavy"].items():
            ours = stalls.get("sleep", {})
            rows.append(
                (
                    f"heavy: {name}",
                    ours.get("inprocess", {}).get("p99_ms"),
                    ours.get("thread", {}).get("p99_ms"),
                    v["p99_ms"],
                )
            )
        return (
            f"Light sessions' p99 ms beside a node blocking 200 ms (`bench_blocking`; Pipecat {peer.get('version')}):\n\n"
            + md_table(["heavy", "nursery_pipes in-process", "nursery_pipes thread", "Pipecat"], rows)
        )
    res = d["results_us"]
    rows = [
        (size, v["multiprocess"]["p50_us"], v["inprocess"]["p50_us"], v["pipe"]["p50_us"], v["pipecat"]["p50_us"],
         times(ratio(v["multiprocess"]["p50_us"], v["pipecat"]["p50_us"])))
        for size, v in res.items()
        if "pipecat" in v
    ]  # fmt: skip
    return (
        f"5-node chain p50 µs by frame size (`bench_chain`; Pipecat {peer.get('version')}, one asyncio loop):\n\n"
        + md_table(
            ["size", "multiprocess", "in-process", "Pipe chain", "Pipecat", "multiprocess / Pipecat"], rows
        )
    )


# ------------------------------------------------------------------------------ machine


def machine_info(root: Path = ROOT) -> dict[str, str]:
    info: dict[str, str] = {}
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["CPU"] = cpu
    cores = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = cores or 0
    info["cores"] = f"{cores} logical ({usable} usable by this process)"
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                info["RAM"] = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                break
    except (OSError, ValueError, IndexError):
        pass
    info["Python"] = f"{platform.python_implementation()} {platform.python_version()}"
    os_name = platform.system()
    try:
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    info["OS"] = f"{os_name}, kernel {platform.release()}"
    info["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info["git commit"] = git_commit(root)
    with contextlib.suppress(OSError):
        info["load average (1/5/15 min) at start"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def git_commit(root: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        # the report's own files do not count: they are being rewritten
        dirty = git(
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!docs/benchmarks.md",
            ":!docs/benchmarks",
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{commit}{' + uncommitted changes' if dirty else ''}"


# ----------------------------------------------------------------------------- markdown


def render_markdown(
    outcomes: dict[str, Outcome],
    machine: dict[str, str],
    *,
    mode: str,
    plots: dict[str, str],
    plot_note: str = "",
    total_seconds: float | None = None,
) -> str:
    """The whole docs/benchmarks.md. ``plots``: "topic:title" → path relative to the Markdown."""
    out = [
        "# Benchmarks",
        "",
        "Generated by `make bench-report` (`scripts/bench_report.py`); do not edit by hand. Every ratio is "
        "against a baseline measured in the same run of the same benchmark (the machines these run on are "
        "shared and noisy, so absolute numbers move from run to run; ratios move less). Each benchmark's "
        "docstring (`benchmarks/bench_<topic>.py`) says exactly what it measures.",
        "",
        "## Machine",
        "",
        md_table(["machine", "this run"], list(machine.items())),
        "",
        f"Mode: **{mode}**"
        + (f"; the whole report took {fmt(total_seconds)} s" if total_seconds is not None else "")
        + ".",
        "",
        "## Summary",
        "",
        md_table(
            ["benchmark", "status", "seconds", "goals met"],
            [
                (f"[{t}](#{_anchor(TITLES.get(t, t))})", o.status, o.seconds, _goal_summary(o))
                for t, o in outcomes.items()
            ],
        ),
        "",
    ]
    if plot_note:
        out += [f"*Plots: {plot_note}*", ""]
    overview = {k: v for k, v in plots.items() if k.startswith("overview:")}
    if overview:
        out += ["## Plots across benchmarks", ""]
        out += [f"![{k.split(':', 1)[1]}]({v})\n" for k, v in overview.items()]
    for o in outcomes.values():
        out.append(render_section(o, plots))
    out.append(render_peers(outcomes))
    return "\n".join(out).rstrip() + "\n"


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def _goal_summary(o: Outcome) -> str:
    d = o.data
    if d is None:
        return "—"
    goals = d.get("goals")
    flags: list[bool] = []
    if isinstance(goals, dict):
        flags = [bool(g["met"]) for g in goals.values() if isinstance(g, dict) and "met" in g]
    for key in ("goal_met_by_goal", "goals_met"):
        if not flags and isinstance(d.get(key), dict):
            flags = [bool(v) for v in d[key].values()]
    if not flags and isinstance(d.get("goal_met"), dict):
        flags = [bool(v) for v in d["goal_met"].values()]
    if not flags and isinstance(d.get("goal_met"), bool):
        flags = [d["goal_met"]]
    if not flags:
        return "no goal"
    return f"{sum(flags)} of {len(flags)}"


# -------------------------------------------------------------------------------- plots


def render_plots(outcomes: dict[str, Outcome], plots_dir: Path, md_dir: Path) -> tuple[dict[str, str], str]:
    """Draw every plot the results allow; returns ("topic:title" → path relative to ``md_dir``, note)."""
    try:
        import matplotlib
    except ImportError:
        return {}, "not drawn: matplotlib is not importable (`make bench-report` installs the `bench` extra)"
    matplotlib.use("Agg")
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import _bench_plots  # scripts/_bench_plots.py: the only module that imports matplotlib

    plots_dir.mkdir(parents=True, exist_ok=True)
    data = {t: o.data for t, o in outcomes.items() if o.data is not None}
    made: dict[str, str] = {}
    problems: list[str] = []
    for key, filename, draw in _bench_plots.PLOTS:
        path = plots_dir / filename
        try:
            drawn = draw(data, path)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as exc:
            problems.append(f"{filename}: {type(exc).__name__}: {exc}")
            drawn = False
        if drawn:
            made[key] = path.relative_to(md_dir).as_posix()
        elif path.exists():
            path.unlink()  # a stale plot of an earlier run must not stay beside this report
    note = f"could not draw {'; '.join(problems)}" if problems else ""
    return made, note


# --------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--full", action="store_true", help="full mode (default: --quick)")
    parser.add_argument(
        "--only",
        default="",
        help="run only these comma-separated topics (the others: from their last results)",
    )
    parser.add_argument("--from-results", action="store_true", help="render the existing results/*.json only")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR)
    parser.add_argument(
        "--out", type=Path, default=OUT_MD, help="the Markdown file (plots go to <its dir>/benchmarks/)"
    )
    parser.add_argument("--no-plots", action="store_true", help="Markdown only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    available = discover_topics(args.bench_dir)
    selected = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = [t for t in selected if t not in available]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}", file=sys.stderr
        )
        return 2
    to_run = [] if args.from_results else (selected or available)
    machine = machine_info()  # before the runs: the load average is the machine's, not ours

    runs_path = args.results_dir / RUNS_FILE
    try:
        runs: dict[str, Any] = json.loads(runs_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        runs = {}
    outcomes: dict[str, Outcome] = {}
    for i, topic in enumerate(to_run, 1):
        print(f"[{i}/{len(to_run)}] bench_{topic}.py ({'full' if args.full else 'quick'}) …", flush=True)
        o = run_benchmark(topic, full=args.full, bench_dir=args.bench_dir, log_dir=args.results_dir / "logs")
        print(f"    {status_text(o)}", flush=True)
        outcomes[topic] = o
        runs[topic] = {
            "status": o.status, "seconds": o.seconds, "mode": o.mode, "note": o.note, "finished_at": time.time(),
        }  # fmt: skip
        args.results_dir.mkdir(parents=True, exist_ok=True)
        runs_path.write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
    # the benchmarks not run now: their last results, if any (the summary says which is which)
    outcomes = {t: outcomes.get(t) or load_result(t, args.results_dir, runs) for t in available}

    if not to_run:
        mode = "rendered from the last results (benchmarks/results/*.json)"
    else:
        mode = f"{'full' if args.full else 'quick'}: ran {len(to_run)} of {len(available)} benchmarks" + (
            "; the others from their last results" if len(to_run) < len(available) else ""
        )
    md_dir = args.out.resolve().parent
    if args.no_plots:
        plots, plot_note = {}, "not drawn (--no-plots)"
    else:
        plots, plot_note = render_plots(outcomes, md_dir / PLOTS_SUBDIR, md_dir)
    text = render_markdown(
        outcomes, machine, mode=mode, plots=plots, plot_note=plot_note,
        total_seconds=round(time.monotonic() - started, 1),
    )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    failed = [t for t, o in outcomes.items() if o.status == "failed"]
    print(f"wrote {args.out} ({len(plots)} plots){'; failed: ' + ', '.join(failed) if failed else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
