"""scripts/bench_report.py (`make bench-report`): the Markdown from small synthetic results.

The Markdown needs no matplotlib and is tested for real; the plots are drawn when matplotlib is
importable (after `make bench-report`), and otherwise the report must say why there are none.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_report.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_report"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def pct(p50: float, p99: float) -> dict[str, float]:
    return {"p50": p50, "p95": p99, "p99": p99, "min": p50 / 2, "mean": p50, "n": 5}


def chain_json(with_pipecat: bool = False) -> dict[str, Any]:
    sizes = {"640 B": 640, "64 KiB": 65536, "1 MiB": 1 << 20, "10 MiB": 10 << 20}
    results: dict[str, Any] = {}
    derived: dict[str, Any] = {}
    for i, label in enumerate(sizes):
        scale = 10.0**i
        paths = {
            "multiprocess": 400.0 * scale,
            "inprocess": 80.0,
            "memcpy": 0.3 * scale,
            "pipe": 85.0 * scale,
        }
        if with_pipecat:
            paths["pipecat"] = 300.0
        results[label] = {
            p: {"n": 100, "p50_us": v, "p99_us": 2 * v, "min_us": v / 2} for p, v in paths.items()
        }
        derived[label] = {
            "chain_over_memcpy": 1000.0 / (i + 1),
            "chain_over_pipe": 4.97,
            "chain_over_inprocess": 5.3,
            "chain_over_copies": 190.0,
            "hop_per_crossing_us": 57.17 * scale,
            "hop_over_memcpy": 184.4,
            "pipe_per_transfer_us": 14.19 * scale,
            "inprocess_per_node_us": 16.0,
        }
        if with_pipecat:
            derived[label] |= {"chain_over_pipecat": 1.5, "pipecat_per_processor_us": 60.0}
    peer = {"version": "1.14.0"} if with_pipecat else {"skipped": "pipecat-ai is not installed"}
    return {
        "benchmark": "chain",
        "quick": True,
        "rounds": 2,
        "nodes": 5,
        "sizes_bytes": list(sizes.values()),
        "results_us": results,
        "throughput_fps_median": {k: {"multiprocess": 3870.2} for k in sizes},
        "derived": derived,
        "peer_pipecat": peer,
        "goals": {
            "chain_10MiB_p50_over_memcpy_10MiB": {"goal": "<= 2", "measured": 20.04, "met": False},
            "chain_640B_p50_over_pipe_chain_640B": {"goal": "<= 1", "measured": 0.9, "met": True},
        },
    }


def scale_json() -> dict[str, Any]:
    run = {
        "sessions": 10,
        "workers": 50,
        "seconds": 5.0,
        "frames_sent": 2500,
        "frames_received": 2500,
        "no_loss": True,
        "latency_ms": {"p50": 0.91, "p90": 1.26, "p99": 3.5, "max": 11.6, "worst_session_p99": 4.77},
        "cpu": {
            "supervisor_pct_of_one_core": 16.3,
            "workers_pct_of_one_core": 36.6,
            "machine_busy_pct_of_all_cores": 38.9,
            "supervisor_us_per_frame": 330.4,
            "us_per_hop": 178.5,
        },
        "per_session": [{"session": i, "p99_ms": 3.0 + i / 10} for i in range(10)],
    }
    return {
        "benchmark": "scale",
        "quick": True,
        "runs": {"seed": run},
        "goals": {"10_sessions_no_loss": {"goal": "sent == received", "measured": True, "met": True}},
    }


def speech_json() -> dict[str, Any]:
    comps = {"VAD decision (hangover + model tail)": pct(380.0, 400.0), "ASR end_utt": pct(42.0, 53.0)}
    return {
        "benchmark": "speech",
        "utterances": 5,
        "chunk_ms": 20.0,
        "latency_ms": pct(562.39, 614.0),
        "from_vad_end_ms": pct(182.0, 254.0),
        "from_scheduled_ms": pct(563.0, 615.0),
        "components_ms": comps,
        "concurrent": {
            "sessions": 3,
            "aligned": {
                "inprocess": {"latency_ms": pct(879.0, 935.0), "components_ms": comps},
                "multiprocess": {"latency_ms": pct(690.0, 919.0), "components_ms": comps},
            },
        },
        "goal": {"latency_p50_max_ms": 500.0, "latency_p95_max_ms": 500.0},
        "goal_met": {"p50": False, "p95": False},
    }


def blocking_json() -> dict[str, Any]:
    def stall(p50: float) -> dict[str, float]:
        return {
            "p50_ms": p50,
            "p99_ms": 4 * p50,
            "max_ms": 5 * p50,
            "p50_vs_baseline": p50 / 0.8,
            "p99_vs_baseline": p50 / 0.8,
            "heavy_latency_p50_ms": 201.0,
        }

    return {
        "benchmark": "blocking",
        "light_sessions": 4,
        "block_ms": 200.0,
        "stalls": {
            "baseline": {"p50_ms": 0.8, "p99_ms": 3.96, "max_ms": 5.1, "n": 240},
            "sleep": {"inprocess": stall(4.0), "thread": stall(0.75)},
        },
        "per_frame_cost": {
            "1280": {
                "inprocess": {
                    "rtt_p50_us": 29.0,
                    "rtt_p99_us": 54.6,
                    "overhead_vs_inprocess_p50_us": 0.0,
                    "bytes_copied_per_frame": 0,
                }
            },
            "thread_floors": {"trio.to_thread.run_sync": {"rtt_p50_us": 57.5, "rtt_p99_us": 128.8}},
        },
        "peer_pipecat": {
            "skipped": "pipecat-ai is not installed (pip install -r benchmarks/requirements-peers.txt)"
        },
        "goal_met": True,
    }


def write_results(tmp_path: Path, results: dict[str, dict[str, Any]], topics: list[str]) -> tuple[Path, Path]:
    bench_dir, results_dir = tmp_path / "benchmarks", tmp_path / "benchmarks" / "results"
    results_dir.mkdir(parents=True)
    for topic in topics:
        (bench_dir / f"bench_{topic}.py").write_text("", encoding="utf-8")
    for topic, data in results.items():
        (results_dir / f"{topic}.json").write_text(json.dumps(data), encoding="utf-8")
    return bench_dir, results_dir


def turn_json() -> dict[str, Any]:
    def summary(p50: float, worst: float, early: int, retracted: int) -> dict[str, Any]:
        return {"questions": 18, "answered": 18, "p50_ms": p50, "max_ms": worst, "heard_right": 16,
                "split": 0, "early": early, "retracted": retracted}  # fmt: skip

    return {
        "benchmark": "turn",
        "summary": {"silence only (baseline)": summary(700.0, 900.0, 0, 0), "example": summary(290.0, 420.0, 16, 1)},
        "goals": {
            "p50 end of question -> reply audio": {
                "goal": "<= 350 ms", "measured": "290.0 ms (baseline 700.0 ms)", "met": True,
            },
        },
    }  # fmt: skip


def test_markdown_from_results(tmp_path: Path) -> None:
    report = load_script()
    results = {
        "chain": chain_json(),
        "scale": scale_json(),
        "speech": speech_json(),
        "blocking": blocking_json(),
        "turn": turn_json(),
        "hop": {"benchmark": "hop", "results_us": "not the expected shape", "goals": {}},
    }
    bench_dir, results_dir = write_results(tmp_path, results, [*results, "supervision"])
    out = tmp_path / "docs" / "benchmarks.md"
    args = ["--from-results", "--results-dir", str(results_dir), "--bench-dir", str(bench_dir)]
    assert report.main([*args, "--out", str(out), "--no-plots"]) == 0
    text = out.read_text(encoding="utf-8")

    # the machine it ran on
    for field in ("| CPU |", "| cores |", "| RAM |", "| Python |", "| OS |", "| date |", "| git commit |"):
        assert field in text, field
    # tables with the numbers, formatted, and the ratios to the same-run baselines
    assert "| 640 B | multiprocess | 100 | 400.0 | 800.0 | 200.0 | 3,870 |" in text
    assert "| 640 B | 1,000× | 4.97× | 5.30× |" in text
    assert "| chain_10MiB_p50_over_memcpy_10MiB | <= 2 | 20.04 | **not met** |" in text
    assert "| seed | 10 | 50 | 5.00 | 2,500 | 2,500 | yes | 0.91 | 3.50 | 11.60 | 4.77 | 0.175× |" in text
    assert "| end of utterance → first audio | 562.4 |" in text
    assert "| aligned | 879.0 | 935.0 | 690.0 | 919.0 | 0.785× |" in text
    assert "| sleep | inprocess | 4.00 | 16.00 | 20.00 | 5.00× |" in text
    assert "| example | 18/18 | 290.0 | 420.0 | 16 | 0 | 16 | 1 |" in text
    assert "| p50 end of question -> reply audio | <= 350 ms | 290.0 ms (baseline 700.0 ms) | met |" in text
    # the summary: goals per benchmark, a JSON of the wrong shape, a benchmark with no result
    assert "| [chain](#5-node-chain-by-frame-size-issue-11) | from results | — | 1 of 2 |" in text
    assert "did not have the expected shape" in text
    assert "`benchmarks/bench_supervision.py` — **not run**: no supervision.json" in text
    # peers: Pipecat not installed, and the report says so
    assert "`bench_blocking`: Pipecat not measured — pipecat-ai is not installed" in text
    assert "*Plots: not drawn (--no-plots)*" in text
    assert "![" not in text


def test_peers_side_by_side_when_measured(tmp_path: Path) -> None:
    report = load_script()
    outcome = report.Outcome("chain", "from results", data=chain_json(with_pipecat=True))
    text = report.render_peers({"chain": outcome})
    assert "| 640 B | 400.0 | 80.00 | 85.00 | 300.0 | 1.33× |" in text
    assert "not measured" not in text.split("bench_chain")[-1]


def test_a_failing_benchmark_does_not_stop_the_report(tmp_path: Path) -> None:
    report = load_script()
    bench_dir, results_dir = write_results(tmp_path, {}, [])
    ok = {"benchmark": "ok", "goals": {"fast": {"goal": "<= 1", "measured": 0.5, "met": True}}}
    (bench_dir / "bench_ok.py").write_text(
        f"import json, sys\nassert sys.argv[1:] == ['--quick']\nprint('a table')\nprint(json.dumps({ok!r}))\n",
        encoding="utf-8",
    )
    (bench_dir / "bench_boom.py").write_text("raise RuntimeError('boom')\n", encoding="utf-8")
    (bench_dir / "bench_silent.py").write_text("print('no json here')\n", encoding="utf-8")
    out = tmp_path / "benchmarks.md"
    args = ["--results-dir", str(results_dir), "--bench-dir", str(bench_dir), "--out", str(out), "--no-plots"]
    assert report.main(args) == 0
    text = out.read_text(encoding="utf-8")
    assert "`benchmarks/bench_ok.py` — ran, quick mode" in text
    assert "| fast | <= 1 | 0.5 | met |" in text
    assert "`benchmarks/bench_boom.py` — **failed**, quick mode" in text
    assert "exit code 1" in text
    assert "RuntimeError: boom" in text
    assert "its last stdout line is not a JSON object" in text
    runs = json.loads((results_dir / report.RUNS_FILE).read_text(encoding="utf-8"))
    assert runs["boom"]["status"] == "failed"
    assert runs["ok"]["status"] == "ran"
    assert (results_dir / "logs" / "boom.log").is_file()

    # --only runs one; the others come from what the last run left (the failure stays a failure)
    assert report.main([*args, "--only", "ok"]) == 0
    text = out.read_text(encoding="utf-8")
    assert "quick: ran 1 of 3 benchmarks; the others from their last results" in text
    assert "`benchmarks/bench_boom.py` — **failed**" in text
    assert report.main([*args, "--only", "nope"]) == 2


def test_plots_or_the_reason_there_are_none(tmp_path: Path) -> None:
    report = load_script()
    data = {"chain": chain_json(with_pipecat=True), "scale": scale_json(), "speech": speech_json()}
    data["blocking"] = blocking_json()
    outcomes = {t: report.Outcome(t, "from results", data=d) for t, d in data.items()}
    plots_dir = tmp_path / "benchmarks"
    plots, note = report.render_plots(outcomes, plots_dir, tmp_path)
    if importlib.util.find_spec("matplotlib") is None:
        assert plots == {}
        assert "matplotlib is not importable" in note
        return
    assert note == ""
    assert set(plots.values()) == {
        "benchmarks/hop_vs_frame_size.png",
        "benchmarks/chain_latency.png",
        "benchmarks/blocking_latency.png",
        "benchmarks/scale_sessions_p99.png",
        "benchmarks/speech_breakdown.png",
        "benchmarks/peers.png",
    }
    for rel in plots.values():
        png = tmp_path / rel
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size < 200_000
    text = report.render_markdown(outcomes, {"CPU": "test"}, mode="test", plots=plots)
    assert "![Cost per hop vs frame size, log-log, with the memcpy and Pipe baselines]" in text
    assert "(benchmarks/hop_vs_frame_size.png)" in text
