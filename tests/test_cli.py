"""The ``nursery-pipes`` command line: validate, nodes, run; exit codes; never a traceback.

Most tests drive the typer app in-process with ``CliRunner`` (fast); a few run the real
console script in a subprocess for exit codes and "no traceback" as a user would see them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from nursery_pipes.cli import _app, app
from nursery_pipes.frames import AudioFrame

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "nursery-pipes"
EXAMPLE = ROOT / "examples" / "text_shout.json"


@pytest.fixture(autouse=True)
def _wide_consoles(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rich wraps at 80 columns when not on a terminal; keep messages on one line for asserts.
    monkeypatch.setattr(_app.console, "width", 300)
    monkeypatch.setattr(_app.out, "width", 300)


def invoke(*args: Any) -> Result:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


def manifest(
    nodes: list[tuple[str, str, dict[str, Any]]], edges: list[tuple[str, str]], **metadata: Any
) -> dict[str, Any]:
    return {
        "version": "v1",
        "metadata": {"name": "cli-test", **metadata},
        "nodes": [{"id": i, "node_type": t, "params": p} for i, t, p in nodes],
        "connections": [{"from": a, "to": b} for a, b in edges],
    }


BAD = {
    "version": "v2",
    "metadata": {
        "name": "bad",
        "multiprocess": {"channel_capacity": 0, "executor_overrides": {"ghost": "inprocess"}},
    },
    "nodes": [
        {"id": "a", "node_type": "PasThrough"},
        {"id": "a", "node_type": "PassThrough"},
        {"id": "c", "node_type": "AudioChunkerNode", "params": {"chunksize": 3}},
    ],
    "connections": [{"from": "a", "to": "nowhere"}],
}
BAD_PATHS = [
    "version",
    "metadata.multiprocess.channel_capacity",
    "metadata.multiprocess.executor_overrides.ghost",
    "nodes[0].node_type",
    "nodes[1].id",
    "nodes[2].params.chunksize",
    "connections[0].to",
]


def sine_wav(path: Path, *, rate: int = 16000, samples: int = 1000, channels: int = 1) -> AudioFrame:
    t = np.arange(samples) / rate
    data = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    frame = AudioFrame(samples=np.repeat(data[:, None], channels, axis=1), sample_rate=rate)
    frame.to_wav(path)
    return frame


# ---------------------------------------------------------------------------------------------
# --help everywhere


@pytest.mark.parametrize("command", [[], ["validate"], ["nodes"], ["run"]])
def test_help_for_every_command(command: list[str]) -> None:
    for flag in ("--help", "-h"):
        result = invoke(*command, flag)
        assert result.exit_code == 0
        assert "Usage" in result.output
    if command == ["run"]:
        assert "--input" in result.output
        assert "--output-dir" in result.output


def test_no_arguments_shows_help() -> None:
    result = invoke()
    assert "Usage" in result.output
    assert "validate" in result.output


# ---------------------------------------------------------------------------------------------
# validate


def test_validate_valid_manifest() -> None:
    result = invoke("validate", EXAMPLE)
    assert result.exit_code == 0
    assert f"{EXAMPLE}: valid — 'text-shout', 2 nodes, 1 connections" in result.output
    assert "shout → inprocess (declared by the node class (TextTransformNode.executor))" in result.output


def test_validate_invalid_manifest_lists_every_error(tmp_path: Path) -> None:
    path = write_json(tmp_path / "bad.json", BAD)
    result = invoke("validate", path)
    assert result.exit_code == 2
    assert f"invalid manifest {path}: {len(BAD_PATHS)} problems" in result.stderr
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("•")]
    assert [line.removeprefix("• ").split(": ")[0] for line in lines] == BAD_PATHS
    assert "unknown node_type 'PasThrough' — did you mean 'PassThrough'?" in result.stderr
    assert result.stdout == ""


def test_validate_json_output(tmp_path: Path) -> None:
    ok = invoke("validate", EXAMPLE, "--json")
    assert ok.exit_code == 0
    assert json.loads(ok.stdout) == {
        "valid": True,
        "name": "text-shout",
        "nodes": 2,
        "connections": 1,
        "assignments": {
            "in": {"executor": "inprocess", "reason": "declared by the node class (PassThrough.executor)"},
            "shout": {
                "executor": "inprocess",
                "reason": "declared by the node class (TextTransformNode.executor)",
            },
        },
    }
    bad = invoke("validate", write_json(tmp_path / "bad.json", BAD), "--json")
    assert bad.exit_code == 2
    report = json.loads(bad.stdout)
    assert report["valid"] is False
    assert [e["path"] for e in report["errors"]] == BAD_PATHS
    assert all(set(e) == {"path", "message"} and e["message"] for e in report["errors"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"version": "v1",\n  "nodes": [,]}', "invalid JSON at line 2, column 13"),
        (b'{"metadata": {"name": "\xff"}}', "not valid UTF-8 text"),
        (b"", "unexpected end of input"),
    ],
)
def test_validate_unparseable_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(content)
    result = invoke("validate", path)
    assert result.exit_code == 2
    assert message in result.stderr


def test_validate_missing_file(tmp_path: Path) -> None:
    result = invoke("validate", tmp_path / "nope.json")
    assert result.exit_code == 2
    assert "cannot read manifest file: No such file or directory" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read manifest file: No such file or directory"),
        (b'{"version": "v1",\n  "nodes": [,]}', "invalid JSON at line 2, column 13"),
    ],
)
def test_run_on_a_server_reports_unreadable_manifests_like_a_local_run(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "m.json"
    if content is not None:
        path.write_bytes(content)
    # refused before any connection is tried: nothing listens on port 1
    result = invoke("run", path, "--server", "127.0.0.1:1")
    assert result.exit_code == 2
    assert f"invalid manifest {path}" in result.stderr
    assert message in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_validate_uses_the_config_cap(tmp_path: Path) -> None:
    doc = manifest([("a", "PassThrough", {})], [], multiprocess={"max_processes_per_session": 8})
    path = write_json(tmp_path / "m.json", doc)
    config = tmp_path / "runtime.toml"
    config.write_text("[limits]\nmax_processes_per_session = 4\n")
    assert invoke("validate", path).exit_code == 0
    result = invoke("validate", path, "--config", config, "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["errors"] == [
        {
            "path": "metadata.multiprocess.max_processes_per_session",
            "message": "8 exceeds this server's limit of 4 processes per session (limits.max_processes_per_session)",
        }
    ]


def test_bad_config_file_is_a_user_error(tmp_path: Path) -> None:
    config = tmp_path / "runtime.toml"
    config.write_text("[limits]\nmax_session = 3\n")
    result = invoke("validate", EXAMPLE, "--config", config)
    assert result.exit_code == 2
    assert "[limits] Object contains unknown field `max_session`" in result.stderr
    missing = invoke("nodes", "--config", tmp_path / "missing.toml")
    assert missing.exit_code == 2
    assert "cannot read config file" in missing.stderr


# ---------------------------------------------------------------------------------------------
# nodes


def test_nodes_table() -> None:
    result = invoke("nodes")
    assert result.exit_code == 0
    for name in ("PassThrough", "AudioChunkerNode", "CalculatorNode", "FastResampleNode"):
        assert name in result.stdout
    assert "chunk_size: int ≥ 1 = 1024" in result.stdout
    assert "inprocess" in result.stdout


def test_nodes_json(tmp_path: Path) -> None:
    result = invoke("nodes", "--json")
    assert result.exit_code == 0
    rows = {row["node_type"]: row for row in json.loads(result.stdout)}
    chunker = rows["AudioChunkerNode"]
    assert set(chunker) == {"node_type", "executor", "accepts", "produces", "params", "description", "origin"}
    assert chunker["executor"] == "inprocess"
    assert chunker["accepts"] == chunker["produces"] == ["audio"]
    assert chunker["params"][0] == {
        "name": "chunk_size",
        "type": "int ≥ 1",
        "default": 1024,
        "required": False,
    }
    assert chunker["origin"] == "built-in"
    assert "RaiseNode" not in rows
    config = tmp_path / "runtime.toml"
    config.write_text("[nodes]\ntesting = true\n")
    testing = {row["node_type"]: row for row in json.loads(invoke("nodes", "--json", "-c", config).stdout)}
    assert testing["RaiseNode"]["executor"] is None
    assert {
        "name": "phase",
        "type": "'initialize' | 'process' | 'flush' | 'cleanup'",
        "default": None,
        "required": True,
    } in testing["RaiseNode"]["params"]
    table = invoke("nodes", "-c", config)
    assert "(routing rules)" in table.stdout


def test_nodes_testing_lists_the_fault_injection_nodes(tmp_path: Path) -> None:
    from nursery_pipes.testing import TESTING_NODES

    names = {cls.node_type for cls in TESTING_NODES}
    assert names == {
        "BlockingCallNode",
        "SleepNode",
        "RaiseNode",
        "HangNode",
        "ExitNode",
        "SignalNode",
        "ProgressNode",
        "CpuBurnNode",
        "KeepInputNode",
        "ForwardKillNode",
        "LogNode",
        "SendSignalNode",
    }
    result = invoke("nodes", "--testing", "--json")
    assert result.exit_code == 0
    rows = {row["node_type"]: row for row in json.loads(result.stdout)}
    assert names <= set(rows)
    assert "AudioChunkerNode" in rows  # with the built-ins, as a runtime with testing = true has them
    for name in names:
        assert rows[name]["description"].startswith("Test node: ")
        assert rows[name]["origin"] == "nursery_pipes.testing"
        assert rows[name]["params"], name
    assert {"name": "code", "type": "int ≥ 0 ≤ 255", "default": 3, "required": False} in rows["ExitNode"][
        "params"
    ]
    # The flag adds to a config file's settings; without it a config decides.
    config = tmp_path / "runtime.toml"
    config.write_text("[nodes]\ntesting = false\nentry_points = false\n")
    assert names <= {
        row["node_type"] for row in json.loads(invoke("nodes", "--json", "--testing", "-c", config).stdout)
    }
    assert not names & {
        row["node_type"] for row in json.loads(invoke("nodes", "--json", "-c", config).stdout)
    }
    table = invoke("nodes", "--testing")
    assert "Test node: raise RuntimeError(message) in the chosen phase" in table.stdout
    assert "phase: 'initialize' | 'process' | 'flush' | 'cleanup' (required)" in table.stdout
    assert "--testing" in invoke("nodes", "--help").stdout


# ---------------------------------------------------------------------------------------------
# run


def test_run_wav_through_the_chunker(tmp_path: Path) -> None:
    wav = tmp_path / "in.wav"
    source = sine_wav(wav, samples=1000)
    doc = manifest([("chunk", "AudioChunkerNode", {"chunk_size": 160})], [])
    path = write_json(tmp_path / "m.json", doc)
    out_dir = tmp_path / "out"
    result = invoke("run", path, "--input", f"chunk={wav}", "--output-dir", out_dir, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    frames = summary["outputs"]["chunk"]
    assert [f["samples"] for f in frames] == [160] * 6 + [40]  # the remainder is flushed at the end
    assert {(f["kind"], f["sample_rate"], f["channels"], f["format"]) for f in frames} == {
        ("audio", 16000, 1, "i16")
    }
    assert summary["files"] == [str(out_dir / "chunk.wav")]
    written = AudioFrame.from_wav(out_dir / "chunk.wav")
    assert written.sample_rate == 16000
    np.testing.assert_array_equal(written.samples, source.samples)
    assert summary["assignments"]["chunk"] == {
        "executor": "inprocess",
        "reason": "declared by the node class (AudioChunkerNode.executor)",
    }
    metrics = summary["metrics"]
    assert set(metrics) == {"wall_time_ms", "cpu_time_ms", "frames_in", "frames_out", "nodes"}
    node = metrics["nodes"]["chunk"]
    assert node["frames_in"] == 4  # 1000 samples at 20 ms (320 samples) per input chunk
    assert node["frames_out"] == 7
    assert node["bytes_in"] == node["bytes_out"] == 2000
    assert node["executor"] == "inprocess"


def test_run_stereo_wav_with_gain_writes_scaled_audio(tmp_path: Path) -> None:
    wav = tmp_path / "in.wav"
    source = sine_wav(wav, samples=800, channels=2)
    doc = manifest([("gain", "AudioGainNode", {"gain_db": -6.0206})], [])
    result = invoke(
        "run",
        write_json(tmp_path / "m.json", doc),
        "-i",
        f"gain={wav}",
        "-o",
        tmp_path / "o",
        "--chunk-ms",
        0,
    )
    assert result.exit_code == 0, result.output
    written = AudioFrame.from_wav(tmp_path / "o" / "gain.wav")
    assert written.channels == 2
    np.testing.assert_allclose(written.samples.astype(float), source.samples / 2, atol=1)


def test_run_json_and_jsonl_inputs(tmp_path: Path) -> None:
    request = write_json(tmp_path / "req.json", {"operation": "multiply", "operands": [6, 7]})
    doc = manifest([("calc", "CalculatorNode", {})], [])
    path = write_json(tmp_path / "m.json", doc)
    summary = json.loads(invoke("run", path, "-i", f"calc={request}", "--json").stdout)
    value = {"result": 42, "operation": "multiply", "operands": [6, 7]}
    [frame] = summary["outputs"]["calc"]
    assert frame == {"kind": "json", "bytes": len(json.dumps(value, separators=(",", ":"))), "value": value}
    lines = tmp_path / "reqs.jsonl"
    lines.write_text(
        '{"operation": "add", "operands": [1, 2]}\n\n{"operation": "subtract", "operands": [1, 2]}\n'
    )
    out_dir = tmp_path / "out"
    result = invoke("run", path, "-i", f"calc={lines}", "--json", "-o", out_dir)
    values = [f["value"]["result"] for f in json.loads(result.stdout)["outputs"]["calc"]]
    assert values == [3, -1]
    assert [json.loads(line)["result"] for line in (out_dir / "calc.jsonl").read_text().splitlines()] == [
        3,
        -1,
    ]


def test_run_text_input_and_output_files(tmp_path: Path) -> None:
    text = tmp_path / "in.txt"
    text.write_text("hello world\n")
    out_dir = tmp_path / "out"
    result = invoke("run", EXAMPLE, "--input", f"in={text}", "--output-dir", out_dir)
    assert result.exit_code == 0, result.output
    assert "HELLO WORLD!" in result.stdout  # the summary table
    assert f"wrote {out_dir / 'shout.txt'}" in result.stdout
    assert (out_dir / "shout.txt").read_text() == "HELLO WORLD!\n"  # the file's final newline is not text


def test_run_with_several_inputs_for_one_source(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one")
    b.write_text("two\r\n")
    summary = json.loads(invoke("run", EXAMPLE, "-i", f"in={a}", "-i", f"in={b}", "--json").stdout)
    assert [f["text"] for f in summary["outputs"]["shout"]] == ["ONE!", "TWO!"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("in={dir}/missing.txt", "input file for node 'in' not found: {dir}/missing.txt"),
        ("in", "--input must look like NODE=FILE, got 'in'"),
        ("=x.txt", "--input must look like NODE=FILE, got '=x.txt'"),
        ("ghost={dir}/in.txt", "input for unknown node 'ghost' (this pipeline's inputs are: in)"),
        (
            "shout={dir}/in.txt",
            "node 'shout' is not an input of this pipeline (it is fed by in); send to one of: in",
        ),
        ("in={dir}/bad.json", "bad.json: JSON frame payload is not valid JSON"),
        ("in={dir}/bad.wav", "cannot read audio from '{dir}/bad.wav'"),
        ("in={dir}/latin1.txt", "latin1.txt: text is not valid utf-8"),
    ],
)
def test_run_bad_inputs_exit_2(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "in.txt").write_text("x")
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEnope")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    result = invoke("run", EXAMPLE, "--input", spec.format(dir=tmp_path))
    assert result.exit_code == 2
    assert message.format(dir=tmp_path) in result.stderr
    assert result.stdout == ""


def test_run_invalid_manifest_exit_2(tmp_path: Path) -> None:
    text = tmp_path / "in.txt"
    text.write_text("x")
    result = invoke("run", write_json(tmp_path / "bad.json", BAD), "--input", f"a={text}")
    assert result.exit_code == 2
    for path in BAD_PATHS:
        assert f"{path}: " in result.stderr
    as_json = invoke("run", tmp_path / "bad.json", "--input", f"a={text}", "--json")
    assert as_json.exit_code == 2
    assert [e["path"] for e in json.loads(as_json.stdout)["errors"]] == BAD_PATHS


def raise_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    config = tmp_path / "runtime.toml"
    config.write_text("[nodes]\ntesting = true\n")
    doc = manifest(
        [("in", "PassThrough", {}), ("bad", "RaiseNode", {"phase": "process", "message": "kaboom"})],
        [("in", "bad")],
        multiprocess={"executor_overrides": {"bad": "inprocess"}},
    )
    text = tmp_path / "in.txt"
    text.write_text("hello")
    return write_json(tmp_path / "raise.json", doc), config, text


def test_run_node_failure_exit_1_names_the_node(tmp_path: Path) -> None:
    path, config, text = raise_setup(tmp_path)
    result = invoke("run", path, "--config", config, "--input", f"in={text}")
    assert result.exit_code == 1
    assert "pipeline failed: node 'bad' failed in process: RuntimeError: kaboom" in result.stderr
    assert "(run with --verbose for the node's traceback)" in result.stderr
    as_json = invoke("run", path, "--config", config, "--input", f"in={text}", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout) == {
        "ok": False,
        "error": "node 'bad' failed in process: RuntimeError: kaboom",
        "node_id": "bad",
        "traceback": None,
    }
    verbose = CliRunner().invoke(app, ["run", str(path), "-c", str(config), "-i", f"in={text}", "--verbose"])
    assert verbose.exit_code == 1
    assert "RuntimeError: kaboom" in verbose.stderr  # the node's own traceback, on request


def test_run_without_testing_nodes_is_a_manifest_error(tmp_path: Path) -> None:
    path, _, text = raise_setup(tmp_path)
    result = invoke("run", path, "--input", f"in={text}")
    assert result.exit_code == 2
    assert "nodes[1].node_type: unknown node_type 'RaiseNode'" in result.stderr


# ---------------------------------------------------------------------------------------------
# The real console script


def run_script(*args: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "300"}
    return subprocess.run(
        [str(SCRIPT), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def test_script_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    assert SCRIPT.exists()
    bad = write_json(tmp_path / "bad.json", BAD)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"version": "v1", "metadata": {"name": "\xff\xfe"}}')
    path, config, text = raise_setup(tmp_path)
    cases = [
        (["validate", bad], 2, "nodes[1].id: duplicate node id 'a'"),
        (["validate", binary], 2, "not valid UTF-8 text"),
        (["run", EXAMPLE, "-i", f"ghost={text}"], 2, "input for unknown node 'ghost'"),
        (["run", path, "-c", config, "-i", f"in={text}"], 1, "node 'bad' failed in process"),
    ]
    for args, code, message in cases:
        proc = run_script(*args)
        output = proc.stdout + proc.stderr
        assert proc.returncode == code, (args, output)
        assert message in output, (args, output)
        assert "Traceback" not in output, (args, output)


def test_run_prints_what_the_supervision_policy_did(tmp_path: Path) -> None:
    """A node fails once; the manifest's policy restarts it. run says so as it happens, the
    JSON lists it, the node table counts the restart, and the run succeeds."""
    config = tmp_path / "runtime.toml"
    config.write_text("[nodes]\ntesting = true\n")
    doc = {
        "version": "v1",
        "metadata": {
            "name": "flaky",
            "supervision": {"strategy": "one_for_one", "max_restarts": 2},
            "multiprocess": {"executor_overrides": {"flaky": "inprocess"}},
        },
        "nodes": [
            {
                "id": "flaky",
                "node_type": "RaiseNode",
                "params": {"phase": "process", "after_frames": 1, "once": str(tmp_path / "fired")},
            }
        ],
        "connections": [],
    }
    inputs: list[str] = []
    for word in ("one", "two", "three"):  # a text file is one frame: three files, three frames
        (tmp_path / f"{word}.txt").write_text(word, encoding="utf-8")
        inputs += ["-i", f"flaky={tmp_path / f'{word}.txt'}"]
    path = write_json(tmp_path / "m.json", doc)
    done = invoke("run", path, *inputs, "--config", config, "--json")
    assert done.exit_code == 0, done.stderr
    summary = json.loads(done.stdout)
    assert [(r["kind"], r["node_id"]) for r in summary["supervision"]] == [
        ("failed", "flaky"),
        ("dropped", "flaky"),
        ("restarted", "flaky"),
    ]
    assert summary["supervision"][1]["dropped_sequences"] == [2]
    assert summary["metrics"]["nodes"]["flaky"]["restarts"] == 1
    (tmp_path / "fired").unlink()
    shown = invoke("run", path, *inputs, "--config", config)
    assert shown.exit_code == 0, shown.stderr
    assert "restarted: flaky (restart 1; flaky failed)" in shown.stderr
    assert "dropped: flaky: input 2" in shown.stderr
