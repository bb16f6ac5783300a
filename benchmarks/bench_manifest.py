"""Manifest parse + validate for 10- and 100-node manifests, against plain json.loads of the same text.

Goal (issue 2): ≤ 1 ms for 10 nodes (seed floor: 100 ms). The ratio to
``json.loads`` shows what validation costs on top of reading the JSON at all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import finish, parse_args, print_table, summarize, time_per_call

from nursery_pipes import Manifest
from nursery_pipes.nodes import default_registry

GOAL_10_NODES_MS = 1.0


def manifest_text(n: int) -> str:
    """A realistic audio pipeline: a chain with a fan-out every fifth node, typed params."""
    kinds = [
        ("AudioChunkerNode", {"chunk_size": 320}),
        ("AudioGainNode", {"gain_db": -3.0}),
        ("AudioResampleNode", {"target_rate": 16000, "quality": "HQ"}),
        ("AudioFormatNode", {"format": "f32", "channels": 1}),
        ("PassThrough", {}),
    ]
    nodes = []
    for i in range(n):
        node_type, params = kinds[i % len(kinds)]
        nodes.append({"id": f"node_{i}", "node_type": node_type, "params": params})
    connections = [{"from": f"node_{i}", "to": f"node_{i + 1}"} for i in range(n - 1)]
    connections += [{"from": f"node_{i}", "to": f"node_{i + 2}"} for i in range(0, n - 2, 5)]
    doc = {
        "version": "v1",
        "metadata": {
            "name": f"bench-{n}",
            "description": "benchmark manifest",
            "multiprocess": {
                "channel_capacity": 64,
                "init_timeout_secs": 30,
                "executor_overrides": {"node_0": "inprocess"},
            },
        },
        "nodes": nodes,
        "connections": connections,
    }
    return json.dumps(doc)


def main() -> None:
    args = parse_args(__doc__ or "")
    registry = default_registry()
    repeat, number = (20, 50) if args.quick else (60, 100)
    rows = []
    result: dict[str, object] = {}
    for n in (10, 100):
        text = manifest_text(n)
        Manifest.from_json(text, registry=registry)  # warm caches (schema, struct types)
        ours = summarize(
            time_per_call(
                lambda t=text: Manifest.from_json(t, registry=registry), repeat=repeat, number=number
            )
        )  # type: ignore[misc]
        base = summarize(time_per_call(lambda t=text: json.loads(t), repeat=repeat, number=number))  # type: ignore[misc]
        ratio = ours["p50"] / base["p50"]
        rows.append((n, len(text), ours["p50"] * 1e3, ours["p99"] * 1e3, base["p50"] * 1e3, ratio))
        result[f"nodes_{n}"] = {
            "bytes": len(text),
            "parse_validate_ms": {k: v * 1e3 if k != "n" else v for k, v in ours.items()},
            "json_loads_ms": {k: v * 1e3 if k != "n" else v for k, v in base.items()},
            "ratio_to_json_loads_p50": ratio,
        }
    print_table(
        "Manifest parse + validate (ms per manifest)",
        ["nodes", "bytes", "ours p50", "ours p99", "json.loads p50", "× json.loads"],
        rows,
    )
    p50_10 = result["nodes_10"]["parse_validate_ms"]["p50"]  # type: ignore[index]
    result["goal"] = {"nodes_10_p50_ms_max": GOAL_10_NODES_MS, "seed_floor_ms": 100.0}
    result["goal_met"] = p50_10 <= GOAL_10_NODES_MS
    print(
        f"\n10-node goal ≤ {GOAL_10_NODES_MS} ms: {'met' if result['goal_met'] else 'MISSED'} ({p50_10:.3f} ms)"
    )
    finish("manifest", result)


if __name__ == "__main__":
    main()
