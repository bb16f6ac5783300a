"""The PNG plots of docs/benchmarks.md (scripts/bench_report.py), drawn from the benchmarks' JSON.

The only module of the report that imports matplotlib (the ``bench`` extra); bench_report imports
it only when matplotlib is importable, after selecting the Agg backend. Each ``draw_*`` takes
every benchmark's JSON by topic and a path, and returns False (drawing nothing) when the
benchmark it needs is not in this report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

Data = dict[str, dict[str, Any]]
DPI = 100
FRAME_PERIOD_MS = 20.0
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig: Figure, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def _pos(values: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Points with y > 0 (a log axis cannot show the rest: e.g. a hop cost that came out negative)."""
    kept = [(x, y) for x, y in values if y is not None and y > 0]
    return [x for x, _ in kept], [y for _, y in kept]


def draw_hop_vs_size(data: Data, path: Path) -> bool:
    """(1) Cost per crossing vs frame size, log-log, with memcpy and Pipe baselines (bench_chain, bench_hop)."""
    chain = data.get("chain")
    if chain is None:
        return False
    sizes, der, res = chain["sizes_bytes"], chain["derived"], chain["results_us"]
    labels = list(der)
    series: dict[str, list[float]] = {
        "nursery_pipes: (multiprocess − in-process chain) / 6 crossings": [
            der[k]["hop_per_crossing_us"] for k in labels
        ],
        "one memcpy (numpy.copyto)": [res[k]["memcpy"]["p50_us"] for k in labels],
        "multiprocessing.Pipe chain / 6 transfers": [der[k]["pipe_per_transfer_us"] for k in labels],
        "in-process chain / 5 nodes": [der[k]["inprocess_per_node_us"] for k in labels],
    }
    if all("pipecat_per_processor_us" in der[k] for k in labels):
        series["Pipecat chain / 5 processors"] = [der[k]["pipecat_per_processor_us"] for k in labels]
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    for i, (name, ys) in enumerate(series.items()):
        xs, ys_ = _pos(list(zip(sizes, ys, strict=True)))
        ax.plot(xs, ys_, marker="o", color=COLORS[i % len(COLORS)], label=name)
    hop = data.get("hop")
    if hop is not None:
        r = hop["results_us"]
        small = 1024 * 4  # bench_hop's small frame: 1024 float32 samples
        ex = [(small, r["exec_rt[free]"]["p50_us"] / 2), (10 << 20, r["big_exec_hop"]["p50_us"])]
        pipe = [(small, r["pipe_rt[free]"]["p50_us"] / 2), (10 << 20, r["big_pipe_hop"]["p50_us"])]
        ax.scatter(*_pos(ex), marker="s", s=60, color=COLORS[0], edgecolor="black", zorder=3,
                   label="bench_hop: executor one-way (4 KiB: round trip / 2)")  # fmt: skip
        ax.scatter(*_pos(pipe), marker="s", s=60, facecolor="none", edgecolor=COLORS[2], zorder=3,
                   label="bench_hop: multiprocessing.Pipe one-way (4 KiB: round trip / 2)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(list(sizes), labels)
    ax.minorticks_off()
    ax.set_xlabel("frame size")
    ax.set_ylabel("p50 µs per crossing / copy / node")
    ax.set_title("Cost per hop vs frame size (log-log; bench_chain" + (" + bench_hop)" if hop else ")"))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left")
    return _save(fig, path)


def draw_chain_latency(data: Data, path: Path) -> bool:
    """(2) Latency distribution per path and size (min, p50, p99; the JSON keeps no raw samples)."""
    chain = data.get("chain")
    if chain is None:
        return False
    res = chain["results_us"]
    fig, axes = plt.subplots(1, len(res), figsize=(10, 3.8), sharey=True)
    axes_list: list[Axes] = list(axes) if len(res) > 1 else [axes]
    for ax, (size, paths) in zip(axes_list, res.items(), strict=True):
        names = list(paths)
        for i, name in enumerate(names):
            v = paths[name]
            lo, mid, hi = max(v["min_us"], 1e-3), max(v["p50_us"], 1e-3), max(v["p99_us"], 1e-3)
            ax.vlines(i, lo, hi, color=COLORS[i % len(COLORS)], linewidth=3, alpha=0.6)
            ax.plot([i], [mid], marker="o", color=COLORS[i % len(COLORS)])
            ax.plot([i], [hi], marker="_", markersize=14, color="black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(size, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes_list[0].set_ylabel("µs per frame (bar: min…p99, dot: p50)")
    fig.suptitle("5-node chain: latency per frame, one in flight (bench_chain)", fontsize=11)
    return _save(fig, path)


def draw_blocking(data: Data, path: Path) -> bool:
    """(2) Light sessions' latency p50/p99 beside a blocking node, per kind and executor (bench_blocking)."""
    d = data.get("blocking")
    if d is None:
        return False
    stalls = d["stalls"]
    names, p50, p99 = ["baseline"], [stalls["baseline"]["p50_ms"]], [stalls["baseline"]["p99_ms"]]
    for kind, placed in stalls.items():
        if kind == "baseline":
            continue
        for executor, v in placed.items():
            names.append(f"{kind}\n{executor}")
            p50.append(v["p50_ms"])
            p99.append(v["p99_ms"])
    fig, ax = plt.subplots(figsize=(10, 4.2))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50", color=COLORS[0])
    ax.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99", color=COLORS[1])
    ax.axhline(stalls["baseline"]["p99_ms"], color="gray", linestyle="--", linewidth=1, label="baseline p99")
    ax.set_yscale("log")
    ax.set_xticks(list(xs), names, fontsize=8)
    ax.set_ylabel("light frame latency, ms (log)")
    ax.set_title(
        f"Light sessions beside a node blocking {d.get('block_ms', 200):g} ms per frame (bench_blocking)"
    )
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def draw_scale(data: Data, path: Path) -> bool:
    """(3) Sessions vs latency p99 (bench_scale; quick mode has one point: 10 sessions)."""
    d = data.get("scale")
    if d is None:
        return False
    # one worker per node (the fused run, each session in one worker, is in the tables)
    runs = sorted((r for tag, r in d["runs"].items() if tag != "fused"), key=lambda r: r["sessions"])
    xs = [r["sessions"] for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (key, label) in enumerate(
        (
            ("p50", "p50"),
            ("p99", "p99 (all frames)"),
            ("worst_session_p99", "worst session's p99"),
            ("max", "max"),
        )
    ):
        ax.plot(xs, [r["latency_ms"][key] for r in runs], marker="o", color=COLORS[i], label=label)
    for r in runs:
        per = [s["p99_ms"] for s in r.get("per_session", []) if s.get("p99_ms") is not None]
        ax.scatter([r["sessions"]] * len(per), per, s=12, color=COLORS[1], alpha=0.35)
    ax.axhline(FRAME_PERIOD_MS, color="red", linestyle="--", linewidth=1, label="frame period (20 ms)")
    ax.set_yscale("log")
    ax.set_xticks(xs, [f"{x}\n({x * 5} workers)" for x in xs])
    ax.set_xlim(min(xs) - 5, max(xs) + 5)
    ax.set_xlabel("real-time sessions (5 worker processes each)")
    ax.set_ylabel("latency per frame, ms (log)")
    mode = "quick: 10 sessions only" if d.get("quick") else "full"
    ax.set_title(f"Sessions vs latency (bench_scale, {mode}); dots: each session's p99", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def draw_speech(data: Data, path: Path) -> bool:
    """(4) Speech-to-speech latency breakdown: component p50s stacked, measured p50 marked (bench_speech)."""
    d = data.get("speech")
    if d is None:
        return False
    rows: list[tuple[str, dict[str, Any], float]] = [
        (f"1 session\n(multiprocess, n={d['latency_ms']['n']})", d["components_ms"], d["latency_ms"]["p50"])
    ]
    for pattern, v in (d.get("concurrent") or {}).items():
        if isinstance(v, dict) and "inprocess" in v:
            for executor in ("inprocess", "multiprocess"):
                e = v[executor]
                rows.append(
                    (
                        f"{d['concurrent'].get('sessions')} sessions, {pattern}\n{executor}",
                        e["components_ms"],
                        e["latency_ms"]["p50"],
                    )
                )
    components = list(rows[0][1])
    fig, ax = plt.subplots(figsize=(10, 1.2 + 1.0 * len(rows)))
    for y, (_, comps, total) in enumerate(rows):
        left = 0.0
        for i, name in enumerate(components):
            width = comps.get(name, {}).get("p50", 0.0)
            ax.barh(y, width, left=left, color=COLORS[i % len(COLORS)], label=name if y == 0 else None)
            left += width
        ax.plot(
            [total, total],
            [y - 0.45, y + 0.45],
            color="black",
            linewidth=2,
            label="measured p50 (end to end)" if y == 0 else None,
        )
    goal = (d.get("goal") or {}).get("latency_p50_max_ms")
    if goal:
        ax.axvline(goal, color="red", linestyle="--", linewidth=1, label=f"goal p50 ≤ {goal:g} ms")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms from the end of the utterance to the first reply audio (component p50s, stacked)")
    ax.set_title("Speech to speech: where the time goes (bench_speech)", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3)
    return _save(fig, path)


def draw_supervision(data: Data, path: Path) -> bool:
    """(2) Real-time stream latency percentiles, with and without a SIGKILL every 2 s (bench_supervision)."""
    d = data.get("supervision")
    if d is None:
        return False
    keys = ["p50", "p99", "p999", "max"]
    runs = (("no kills (baseline)", d["stream_baseline"]), ("SIGKILL every 2 s", d["stream_with_kills"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, run) in enumerate(runs):
        lat = run["latency_ms"]
        ax.bar([x + (i - 0.5) * 0.4 for x in range(len(keys))], [lat.get(k, 0) for k in keys], width=0.4,
               label=f"{label}: {run['frames_delivered']}/{run['frames_sent']} delivered", color=COLORS[i])  # fmt: skip
    ax.axhline(FRAME_PERIOD_MS, color="red", linestyle="--", linewidth=1, label="frame period (20 ms)")
    ax.set_xticks(range(len(keys)), keys)
    ax.set_ylabel("latency of delivered frames, ms")
    ax.set_title("5 workers, 20 ms audio in real time (bench_supervision)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def draw_peers(data: Data, path: Path) -> bool:
    """(5) Pipecat beside nursery_pipes, where bench_chain / bench_blocking measured it."""
    panels: list[Callable[[Axes], None]] = []
    chain, blocking = data.get("chain"), data.get("blocking")
    if chain and "skipped" not in chain.get("peer_pipecat", {"skipped": ""}):
        res = chain["results_us"]

        def chain_panel(ax: Axes) -> None:
            sizes = list(res)
            for i, p in enumerate(("multiprocess", "inprocess", "pipe", "pipecat")):
                ax.bar([x + (i - 1.5) * 0.2 for x in range(len(sizes))], [res[s][p]["p50_us"] for s in sizes],
                       width=0.2, label=p, color=COLORS[i])  # fmt: skip
            ax.set_xticks(range(len(sizes)), sizes)
            ax.set_yscale("log")
            ax.set_ylabel("5-node chain p50 µs (log)")
            ax.set_title("bench_chain", fontsize=10)
            ax.legend(fontsize=8)

        panels.append(chain_panel)
    if blocking and "skipped" not in blocking.get("peer_pipecat", {"skipped": ""}):
        peer, stalls = blocking["peer_pipecat"], blocking["stalls"]

        def blocking_panel(ax: Axes) -> None:
            names = ["baseline", *peer["heavy"]]
            ours_ip = [stalls["baseline"]["p99_ms"]] + [stalls["sleep"]["inprocess"]["p99_ms"]] * len(
                peer["heavy"]
            )
            ours_th = [stalls["baseline"]["p99_ms"]] + [stalls["sleep"]["thread"]["p99_ms"]] * len(
                peer["heavy"]
            )
            theirs = [peer["baseline"]["p99_ms"]] + [v["p99_ms"] for v in peer["heavy"].values()]
            for i, (label, ys) in enumerate(
                (
                    ("nursery_pipes in-process", ours_ip),
                    ("nursery_pipes thread", ours_th),
                    ("Pipecat", theirs),
                )
            ):
                ax.bar(
                    [x + (i - 1) * 0.27 for x in range(len(names))],
                    ys,
                    width=0.27,
                    label=label,
                    color=COLORS[i],
                )
            ax.set_xticks(range(len(names)), names, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("light sessions' p99 ms (log)")
            ax.set_title("bench_blocking: beside a 200 ms blocking node", fontsize=10)
            ax.legend(fontsize=8)

        panels.append(blocking_panel)
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2))
    for ax, panel in zip([axes] if len(panels) == 1 else list(axes), panels, strict=True):
        panel(ax)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Peers side by side", fontsize=11)
    return _save(fig, path)


# (key for the Markdown: "<topic>:<caption>" or "overview:<caption>", file name, drawer)
PLOTS: list[tuple[str, str, Callable[[Data, Path], bool]]] = [
    (
        "chain:Cost per hop vs frame size, log-log, with the memcpy and Pipe baselines",
        "hop_vs_frame_size.png",
        draw_hop_vs_size,
    ),
    ("chain:Latency per frame by path and size (min…p99, p50)", "chain_latency.png", draw_chain_latency),
    ("blocking:Light sessions' latency beside a blocking node", "blocking_latency.png", draw_blocking),
    ("scale:Sessions vs p99", "scale_sessions_p99.png", draw_scale),
    ("speech:Speech-to-speech latency breakdown", "speech_breakdown.png", draw_speech),
    ("supervision:Stream latency with and without worker kills", "supervision_latency.png", draw_supervision),
    ("overview:Peers side by side (Pipecat)", "peers.png", draw_peers),
]
