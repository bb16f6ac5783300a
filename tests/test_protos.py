"""The remotemedia.v1 protos: wire facts, nursery_pipes extensions, generated code.

* the committed betterproto code in ``src/nursery_pipes/_proto`` is what
  ``scripts/generate_protos.py`` produces from ``protos/`` (fails when stale);
* every message/enum/service of ``protos/`` matches the wire table of
  shared/wire/remotemedia-v1.md (transcribed below as ``WIRE``) plus the
  nursery_pipes extensions (``EXTENSIONS``), and nothing else; with the
  extensions stripped, the protos are exactly the upstream wire table;
* betterproto messages and the protobuf runtime (``_pb2`` modules generated at
  test time with grpcio-tools) read each other's bytes, in both directions;
* an "old client" (pb2 built from the protos without the extensions) parses
  messages carrying extensions without error and without seeing them.

All generated artefacts live in pytest tmp dirs. The ``_pb2`` modules are only
ever imported by a helper subprocess, so the protobuf default descriptor pool of
the test process is left untouched.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import betterproto
import pytest
from google.protobuf import descriptor_pb2
from service_fixtures import PROTO_FILES, PROTO_ROOT, run_protoc, write_stripped_protos

from nursery_pipes._proto.remotemedia import v1 as pb

ROOT = Path(__file__).resolve().parent.parent
GENERATED_DIR = ROOT / "src" / "nursery_pipes" / "_proto"
GENERATOR = ROOT / "scripts" / "generate_protos.py"
PACKAGE = "remotemedia.v1"

# ---------------------------------------------------------------------------
# The wire table of shared/wire/remotemedia-v1.md, transcribed line by line.
# Keys are the "###" headings, values the "-" lines (enums: one entry per value).
# ---------------------------------------------------------------------------

WIRE: dict[str, dict[str, list[str]]] = {
    "remotemedia/v1/common.proto": {
        "message DataBuffer": [
            "1: AudioBuffer audio  (oneof data_type)",
            "2: VideoFrame video  (oneof data_type)",
            "3: TensorBuffer tensor  (oneof data_type)",
            "4: JsonData json  (oneof data_type)",
            "5: TextBuffer text  (oneof data_type)",
            "6: BinaryBuffer binary  (oneof data_type)",
            "10: map<string,string> metadata",
        ],
        "message AudioBuffer": [
            "1: bytes samples",
            "2: uint32 sample_rate",
            "3: uint32 channels",
            "4: AudioFormat format",
            "5: uint64 num_samples",
        ],
        "message VideoFrame": [
            "1: bytes pixel_data",
            "2: uint32 width",
            "3: uint32 height",
            "4: PixelFormat format",
            "5: uint64 frame_number",
            "6: uint64 timestamp_us",
        ],
        "message TensorBuffer": [
            "1: bytes data",
            "2: repeated uint64 shape",
            "3: TensorDtype dtype",
            "4: string layout",
        ],
        "message JsonData": [
            "1: string json_payload",
            "2: string schema_type",
        ],
        "message TextBuffer": [
            "1: bytes text_data",
            "2: string encoding",
            "3: string language",
        ],
        "message BinaryBuffer": [
            "1: bytes data",
            "2: string mime_type",
        ],
        "message ExecutionMetrics": [
            "1: double wall_time_ms",
            "2: double cpu_time_ms",
            "3: uint64 memory_used_bytes",
            "4: map<string,NodeMetrics> node_metrics",
            "5: double serialization_time_ms",
            "6: double proto_to_runtime_ms",
            "7: double runtime_to_proto_ms",
            "8: map<string,uint64> data_type_breakdown",
        ],
        "message NodeMetrics": [
            "1: double execution_time_ms",
            "2: uint64 memory_bytes",
            "3: uint64 items_processed",
            "4: string custom_metrics",
        ],
        "message ErrorResponse": [
            "1: ErrorType error_type",
            "2: string message",
            "3: string failing_node_id",
            "4: string context",
            "5: string stack_trace",
        ],
        "message VersionInfo": [
            "1: string protocol_version",
            "2: string runtime_version",
            "3: repeated string supported_node_types",
            "4: repeated string supported_protocols",
            "5: string build_timestamp",
        ],
        "message ResourceLimits": [
            "1: uint64 max_memory_bytes",
            "2: uint64 max_timeout_ms",
            "3: uint64 max_audio_samples",
        ],
        "message NodeResult": [
            "1: string node_id",
            "2: NodeStatus status",
            "3: ErrorResponse error",
            "4: string output_metadata",
        ],
        "enum AudioFormat": [
            "AUDIO_FORMAT_UNSPECIFIED=0",
            "AUDIO_FORMAT_F32=1",
            "AUDIO_FORMAT_I16=2",
            "AUDIO_FORMAT_I32=3",
        ],
        "enum PixelFormat": [
            "PIXEL_FORMAT_UNSPECIFIED=0",
            "PIXEL_FORMAT_RGB24=1",
            "PIXEL_FORMAT_RGBA32=2",
            "PIXEL_FORMAT_YUV420P=3",
            "PIXEL_FORMAT_GRAY8=4",
        ],
        "enum TensorDtype": [
            "TENSOR_DTYPE_UNSPECIFIED=0",
            "TENSOR_DTYPE_F32=1",
            "TENSOR_DTYPE_F16=2",
            "TENSOR_DTYPE_I32=3",
            "TENSOR_DTYPE_I8=4",
            "TENSOR_DTYPE_U8=5",
        ],
        "enum DataTypeHint": [
            "DATA_TYPE_HINT_UNSPECIFIED=0",
            "DATA_TYPE_HINT_AUDIO=1",
            "DATA_TYPE_HINT_VIDEO=2",
            "DATA_TYPE_HINT_TENSOR=3",
            "DATA_TYPE_HINT_JSON=4",
            "DATA_TYPE_HINT_TEXT=5",
            "DATA_TYPE_HINT_BINARY=6",
            "DATA_TYPE_HINT_ANY=7",
        ],
        "enum ErrorType": [
            "ERROR_TYPE_UNSPECIFIED=0",
            "ERROR_TYPE_VALIDATION=1",
            "ERROR_TYPE_NODE_EXECUTION=2",
            "ERROR_TYPE_RESOURCE_LIMIT=3",
            "ERROR_TYPE_AUTHENTICATION=4",
            "ERROR_TYPE_VERSION_MISMATCH=5",
            "ERROR_TYPE_INTERNAL=6",
            "ERROR_TYPE_TYPE_VALIDATION=7",
        ],
        "enum ExecutionStatus": [
            "EXECUTION_STATUS_UNSPECIFIED=0",
            "EXECUTION_STATUS_SUCCESS=1",
            "EXECUTION_STATUS_PARTIAL_SUCCESS=2",
            "EXECUTION_STATUS_FAILED=3",
        ],
        "enum NodeStatus": [
            "NODE_STATUS_UNSPECIFIED=0",
            "NODE_STATUS_SUCCESS=1",
            "NODE_STATUS_SKIPPED=2",
            "NODE_STATUS_FAILED=3",
        ],
    },
    "remotemedia/v1/execution.proto": {
        "service PipelineExecutionService": [
            "rpc ExecutePipeline(ExecuteRequest) returns (ExecuteResponse)",
            "rpc GetVersion(VersionRequest) returns (VersionResponse)",
        ],
        "message ExecuteRequest": [
            "1: PipelineManifest manifest",
            "2: map<string,DataBuffer> data_inputs",
            "3: ResourceLimits resource_limits",
            "4: string client_version",
        ],
        "message ExecuteResponse": [
            "1: ExecutionResult result  (oneof outcome)",
            "2: ErrorResponse error  (oneof outcome)",
        ],
        "message PipelineManifest": [
            "1: string version",
            "2: ManifestMetadata metadata",
            "3: repeated NodeManifest nodes",
            "4: repeated Connection connections",
        ],
        "message ManifestMetadata": [
            "1: string name",
            "2: string description",
            "3: string created_at",
        ],
        "message NodeManifest": [
            "1: string id",
            "2: string node_type",
            "3: string params",
            "4: bool is_streaming",
            "5: CapabilityRequirements capabilities",
            "6: string host",
            "7: RuntimeHint runtime_hint",
            "8: repeated DataTypeHint input_types",
            "9: repeated DataTypeHint output_types",
        ],
        "message Connection": [
            "1: string from",
            "2: string to",
        ],
        "message CapabilityRequirements": [
            "1: GpuRequirement gpu",
            "2: CpuRequirement cpu",
            "3: double memory_gb",
        ],
        "message GpuRequirement": [
            "1: string type",
            "2: double min_memory_gb",
            "3: bool required",
        ],
        "message CpuRequirement": [
            "1: uint32 cores",
            "2: string arch",
        ],
        "message ExecutionResult": [
            "1: map<string,DataBuffer> data_outputs",
            "2: ExecutionMetrics metrics",
            "3: repeated NodeResult node_results",
            "4: ExecutionStatus status",
        ],
        "message VersionRequest": [
            "1: string client_version",
        ],
        "message VersionResponse": [
            "1: VersionInfo version_info",
            "2: bool compatible",
            "3: string compatibility_message",
        ],
        "enum RuntimeHint": [
            "RUNTIME_HINT_UNSPECIFIED=0",
            "RUNTIME_HINT_RUSTPYTHON=1",
            "RUNTIME_HINT_CPYTHON=2",
            "RUNTIME_HINT_CPYTHON_WASM=3",
            "RUNTIME_HINT_AUTO=4",
        ],
    },
    "remotemedia/v1/streaming.proto": {
        "service StreamingPipelineService": [
            "rpc StreamPipeline(stream StreamRequest) returns (stream StreamResponse)",
        ],
        "message StreamRequest": [
            "1: StreamInit init  (oneof request)",
            "2: DataChunk data_chunk  (oneof request)",
            "3: AudioChunk audio_chunk  (oneof request) [deprecated]",
            "4: StreamControl control  (oneof request)",
        ],
        "message StreamInit": [
            "1: PipelineManifest manifest",
            "2: map<string,DataBuffer> data_inputs",
            "3: ResourceLimits resource_limits",
            "4: string client_version",
            "5: uint64 expected_chunk_size",
        ],
        "message DataChunk": [
            "1: string node_id",
            "2: DataBuffer buffer",
            "3: map<string,DataBuffer> named_buffers",
            "4: uint64 sequence",
            "5: uint64 timestamp_ms",
        ],
        "message AudioChunk": [
            "1: string node_id",
            "2: AudioBuffer buffer",
            "3: uint64 sequence",
            "4: uint64 timestamp_ms",
        ],
        "message StreamControl": [
            "1: Command command",
        ],
        "enum StreamControl.Command": [
            "COMMAND_UNSPECIFIED=0",
            "COMMAND_CLOSE=1",
            "COMMAND_CANCEL=2",
        ],
        "message StreamResponse": [
            "1: StreamReady ready  (oneof response)",
            "2: ChunkResult result  (oneof response)",
            "3: ErrorResponse error  (oneof response)",
            "4: StreamMetrics metrics  (oneof response)",
            "5: StreamClosed closed  (oneof response)",
        ],
        "message StreamReady": [
            "1: string session_id",
            "2: uint64 recommended_chunk_size",
            "3: uint64 max_buffer_latency_ms",
        ],
        "message ChunkResult": [
            "1: uint64 sequence",
            "2: map<string,DataBuffer> data_outputs",
            "3: double processing_time_ms",
            "4: uint64 total_items_processed",
        ],
        "message StreamMetrics": [
            "1: string session_id",
            "2: uint64 chunks_processed",
            "3: double average_latency_ms",
            "4: uint64 total_items",
            "5: uint64 buffer_items",
            "6: uint64 chunks_dropped",
            "7: uint64 peak_memory_bytes",
            "8: map<string,uint64> data_type_breakdown",
            "9: uint64 cache_hits",
            "10: uint64 cache_misses",
            "11: uint64 cached_nodes_count",
            "12: double cache_hit_rate",
        ],
        "message StreamClosed": [
            "1: string session_id",
            "2: ExecutionMetrics final_metrics",
            "3: string reason",
        ],
        "message StreamErrorResponse": [
            "1: ErrorResponse base_error",
            "2: StreamErrorType stream_error_type",
            "3: uint64 failing_sequence",
            "4: string session_id",
        ],
        "enum StreamErrorType": [
            "STREAM_ERROR_UNSPECIFIED=0",
            "STREAM_ERROR_INIT_REQUIRED=1",
            "STREAM_ERROR_INVALID_SEQUENCE=2",
            "STREAM_ERROR_BUFFER_OVERFLOW=3",
            "STREAM_ERROR_TIMEOUT=4",
            "STREAM_ERROR_CLIENT_DISCONNECT=5",
            "STREAM_ERROR_EXECUTION=6",
        ],
    },
}

# The nursery_pipes extensions (docs/design.md lists them): new messages, and new
# field numbers in upstream messages. Same notation as WIRE.
EXTENSIONS: dict[str, dict[str, list[str]]] = {
    "remotemedia/v1/common.proto": {
        "message ErrorResponse": [
            "6: repeated ValidationIssue issues",
            "7: optional uint64 failing_sequence",
            "8: int32 stream_error_type",
            "9: bool session_continues",
        ],
        "message ValidationIssue": [
            "1: string path",
            "2: string message",
        ],
        "message InitProgress": [
            "1: string node_id",
            "2: string state",
            "3: double progress",
            "4: string message",
        ],
        "message NodeAssignment": [
            "1: string node_id",
            "2: string executor",
            "3: string reason",
            "4: uint32 pid",
        ],
        "message SupervisionEvent": [
            "1: string node_id",
            "2: string kind",
            "3: string message",
            "4: uint32 restarts",
            "5: repeated uint64 dropped_sequences",
            "6: ErrorResponse error",
        ],
    },
    "remotemedia/v1/execution.proto": {
        "message ManifestMetadata": [
            "4: MultiprocessConfig multiprocess",
            "5: string extra_json",
            "6: optional SupervisionConfig supervision",
        ],
        "message SupervisionConfig": [
            "1: optional string strategy",
            "2: optional uint32 max_restarts",
            "3: optional double within_secs",
        ],
        "message NodeManifest": [
            "10: string restart",
        ],
        "message MultiprocessConfig": [
            "1: uint32 max_processes_per_session",
            "2: uint32 channel_capacity",
            "3: uint32 init_timeout_secs",
            "4: string python_executable",
            "5: optional bool enable_backpressure",
            "6: map<string,string> executor_overrides",
            "7: uint32 close_timeout_secs",
            "8: optional bool fuse_chains",
        ],
        "message ExecutionResult": [
            "5: repeated NodeAssignment assignments",
            "6: repeated InitProgress progress",
            "7: repeated SupervisionEvent supervision",
        ],
    },
    "remotemedia/v1/streaming.proto": {
        "message StreamResponse": [
            "6: InitProgress progress  (oneof response)",
            "7: StreamErrorResponse stream_error  (oneof response) [deprecated]",
            "8: SupervisionEvent supervision  (oneof response)",
            "9: SignalHandled signal_handled  (oneof response)",
            "10: SignalSent signal_sent  (oneof response)",
        ],
        "message StreamReady": [
            "4: repeated NodeAssignment assignments",
        ],
        "message StreamRequest": [
            "5: SignalRequest signal  (oneof request)",
        ],
        "message SignalRequest": [
            "1: string name",
            "2: repeated string node_ids",
            "3: string payload_json",
        ],
        "message SignalSent": [
            "1: string name",
            "2: uint64 signal_id",
            "3: string origin",
            "4: repeated string node_ids",
        ],
        "message SignalHandled": [
            "1: string node_id",
            "2: string name",
            "3: uint64 signal_id",
            "4: string origin",
            "5: repeated uint64 dropped_sequences",
            "6: optional uint64 aborted_sequence",
        ],
    },
}


def _entry_key(kind: str, line: str) -> str:
    """Identity of one table entry: field number, enum value name or rpc name."""
    if kind == "message":
        return line.split(":", 1)[0]
    if kind == "enum":
        return line.split("=", 1)[0]
    return line.split("(", 1)[0]


def merged_table() -> dict[str, dict[str, list[str]]]:
    """WIRE plus EXTENSIONS; an extension reusing an upstream number/name is an error."""
    merged = {f: {k: list(v) for k, v in decls.items()} for f, decls in WIRE.items()}
    for file, decls in EXTENSIONS.items():
        for heading, lines in decls.items():
            kind = heading.split()[0]
            existing = merged[file].setdefault(heading, [])
            taken = {_entry_key(kind, line) for line in existing}
            for line in lines:
                key = _entry_key(kind, line)
                assert key not in taken, f"extension {heading} {line!r} reuses {key}"
                taken.add(key)
                existing.append(line)
    return merged


# ---------------------------------------------------------------------------
# protoc helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stripped_proto_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stripped_protos(tmp_path_factory.mktemp("stripped_protos"))


def descriptor_set(proto_root: Path, out: Path) -> descriptor_pb2.FileDescriptorSet:
    run_protoc(proto_root, f"--descriptor_set_out={out}", "--include_imports")
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    return fds


_SCALAR = {
    number: name[len("TYPE_") :].lower() for name, number in descriptor_pb2.FieldDescriptorProto.Type.items()
}


def render_file(fdp: descriptor_pb2.FileDescriptorProto) -> dict[str, list[str]]:
    """A FileDescriptorProto in the notation of the wire table."""
    assert fdp.package == PACKAGE
    assert fdp.syntax == "proto3"
    prefix = f".{fdp.package}."
    out: dict[str, list[str]] = {}

    def type_ref(type_name: str, scope: str) -> str:
        assert type_name.startswith(prefix), type_name
        name = type_name[len(prefix) :]
        return name[len(scope) + 1 :] if name.startswith(scope + ".") else name

    def render_enum(e: descriptor_pb2.EnumDescriptorProto, name: str) -> None:
        out[f"enum {name}"] = [f"{v.name}={v.number}" for v in e.value]

    def field_type(f: descriptor_pb2.FieldDescriptorProto, scope: str) -> str:
        if f.type in (f.TYPE_MESSAGE, f.TYPE_ENUM):
            return type_ref(f.type_name, scope)
        return _SCALAR[f.type]

    def render_message(m: descriptor_pb2.DescriptorProto, name: str) -> None:
        entries = {n.name: n for n in m.nested_type if n.options.map_entry}
        lines = []
        for f in sorted(m.field, key=lambda f: f.number):
            entry_name = f.type_name.rsplit(".", 1)[-1] if f.type_name else ""
            if f.label == f.LABEL_REPEATED and entry_name in entries:
                entry = entries[entry_name]
                key, value = sorted(entry.field, key=lambda f: f.number)
                typ = f"map<{field_type(key, name)},{field_type(value, name)}>"
            else:
                typ = field_type(f, name)
                if f.proto3_optional:
                    typ = f"optional {typ}"
                elif f.label == f.LABEL_REPEATED:
                    typ = f"repeated {typ}"
                else:
                    assert f.label == f.LABEL_OPTIONAL, f"{name}.{f.name}: proto2 label"
            line = f"{f.number}: {typ} {f.name}"
            if f.HasField("oneof_index") and not f.proto3_optional:
                line += f"  (oneof {m.oneof_decl[f.oneof_index].name})"
            if f.options.deprecated:
                line += " [deprecated]"
            lines.append(line)
        out[f"message {name}"] = lines
        for e in m.enum_type:
            render_enum(e, f"{name}.{e.name}")
        for n in m.nested_type:
            if not n.options.map_entry:
                render_message(n, f"{name}.{n.name}")

    for e in fdp.enum_type:
        render_enum(e, e.name)
    for m in fdp.message_type:
        render_message(m, m.name)
    for s in fdp.service:
        out[f"service {s.name}"] = [
            f"rpc {r.name}({'stream ' if r.client_streaming else ''}"
            f"{type_ref(r.input_type, '')}) returns "
            f"({'stream ' if r.server_streaming else ''}{type_ref(r.output_type, '')})"
            for r in s.method
        ]
    return out


def render_set(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, dict[str, list[str]]]:
    rendered = {f.name: render_file(f) for f in fds.file}
    assert sorted(rendered) == sorted(PROTO_FILES)
    return rendered


def _sorted_table(table: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    def order(heading: str, lines: list[str]) -> list[str]:
        if heading.startswith("message "):
            return sorted(lines, key=lambda line: int(line.split(":", 1)[0]))
        return lines

    return {f: {h: order(h, ls) for h, ls in sorted(d.items())} for f, d in sorted(table.items())}


# ---------------------------------------------------------------------------
# Generated code is up to date
# ---------------------------------------------------------------------------


def _run_generator(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(root.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def test_generated_code_matches_committed(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    proc = _run_generator(tmp_path, "--out", str(fresh))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = _tree(fresh)
    assert {
        "__init__.py",
        "remotemedia/__init__.py",
        "remotemedia/v1/__init__.py",
    } <= expected.keys()
    committed = _tree(GENERATED_DIR)
    assert sorted(committed) == sorted(expected), "generated file set changed; regenerate"
    for name, text in expected.items():
        assert committed[name] == text, f"{name} is stale: run .venv/bin/python scripts/generate_protos.py"


def test_check_flag_detects_stale_code(tmp_path: Path) -> None:
    proc = _run_generator(tmp_path, "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout

    stale = tmp_path / "stale"
    shutil.copytree(GENERATED_DIR, stale, ignore=shutil.ignore_patterns("__pycache__"))
    module = stale / "remotemedia" / "v1" / "__init__.py"
    module.write_text(module.read_text(encoding="utf-8").replace("sample_rate", "rate"))
    (stale / "remotemedia" / "old_module.py").write_text("")
    proc = _run_generator(tmp_path, "--check", "--out", str(stale))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "differs: remotemedia/v1/__init__.py" in proc.stdout
    assert "unexpected (stale) file: remotemedia/old_module.py" in proc.stdout
    assert "+    sample_rate: int" in proc.stdout


# ---------------------------------------------------------------------------
# Wire facts
# ---------------------------------------------------------------------------


def test_protos_match_wire_table_plus_extensions(tmp_path: Path) -> None:
    fds = descriptor_set(PROTO_ROOT, tmp_path / "full.pb")
    assert _sorted_table(render_set(fds)) == _sorted_table(merged_table())


def test_stripped_protos_are_exactly_upstream(tmp_path: Path, stripped_proto_root: Path) -> None:
    """Every extension is marked, and without them the protos are the upstream wire table."""
    fds = descriptor_set(stripped_proto_root, tmp_path / "stripped.pb")
    assert _sorted_table(render_set(fds)) == _sorted_table(WIRE)


def test_service_paths_of_generated_code() -> None:
    assert set(pb.PipelineExecutionServiceBase().__mapping__()) == {
        "/remotemedia.v1.PipelineExecutionService/ExecutePipeline",
        "/remotemedia.v1.PipelineExecutionService/GetVersion",
    }
    assert set(pb.StreamingPipelineServiceBase().__mapping__()) == {
        "/remotemedia.v1.StreamingPipelineService/StreamPipeline",
    }


def test_betterproto_names_and_quirks() -> None:
    """The Python names other modules rely on (betterproto 2.0.0b7 specifics)."""
    # `from` is a keyword: the attribute is `from_`; dict/JSON use the proto name.
    conn = pb.Connection(from_="a", to="b")
    assert conn.to_dict() == {"from": "a", "to": "b"}
    assert pb.Connection().from_dict({"from": "x", "to": "y"}) == pb.Connection("x", "y")
    # Enum value names lose their type prefix in Python (numbers are unchanged) ...
    assert pb.AudioFormat.F32 == 1
    assert pb.ErrorType.VALIDATION == 1
    # ... unless the prefix is not the enum's own name.
    assert pb.StreamControlCommand.COMMAND_CLOSE == 1
    assert pb.StreamErrorType.STREAM_ERROR_TIMEOUT == 4
    # Oneofs: read with which_one_of; reading an unset member raises.
    resp = pb.StreamResponse(progress=pb.InitProgress(node_id="n", state="loading"))
    assert betterproto.which_one_of(resp, "response") == ("progress", resp.progress)
    with pytest.raises(AttributeError):
        _ = resp.ready
    assert betterproto.which_one_of(pb.StreamResponse(), "response") == ("", None)
    # An empty message set as a oneof member is still sent (presence kept).
    assert bytes(pb.StreamResponse(ready=pb.StreamReady())) == b"\x0a\x00"
    # proto3 `optional bool`: None = unset, False is sent.
    assert pb.MultiprocessConfig().enable_backpressure is None
    assert bytes(pb.MultiprocessConfig(enable_backpressure=False)) == b"\x28\x00"
    # Constructing with the deprecated member warns (parsing it does not).
    with pytest.warns(DeprecationWarning, match="audio_chunk is deprecated"):
        pb.StreamRequest(audio_chunk=pb.AudioChunk(node_id="a"))
    parsed = pb.StreamRequest().parse(b"\x1a\x03\x0a\x01a")
    assert betterproto.which_one_of(parsed, "request")[0] == "audio_chunk"


# ---------------------------------------------------------------------------
# Interop with the protobuf runtime (grpcio-tools generated _pb2 modules)
# ---------------------------------------------------------------------------

PB2_HELPER = textwrap.dedent(
    """
    import base64, json, sys, traceback
    sys.path.insert(0, sys.argv[1])
    from google.protobuf import json_format
    from google.protobuf.unknown_fields import UnknownFieldSet
    from remotemedia.v1 import common_pb2, execution_pb2, streaming_pb2

    MODULES = (common_pb2, execution_pb2, streaming_pb2)

    def cls(name):
        for mod in MODULES:
            if hasattr(mod, name):
                return getattr(mod, name)
        raise KeyError(name)

    def run(job):
        if job["op"] == "parse":
            msg = cls(job["type"])()
            msg.ParseFromString(base64.b64decode(job["data"]))
            return {
                "dict": json_format.MessageToDict(msg, preserving_proto_field_name=True),
                "which": {o.name: msg.WhichOneof(o.name) for o in msg.DESCRIPTOR.oneofs},
                "unknown": [f.field_number for f in UnknownFieldSet(msg)],
                "data": base64.b64encode(msg.SerializeToString()).decode(),
            }
        msg = json_format.ParseDict(job["json"], cls(job["type"])())
        return {"data": base64.b64encode(msg.SerializeToString()).decode()}

    for line in sys.stdin:
        try:
            result = run(json.loads(line))
        except Exception:
            result = {"error": traceback.format_exc()}
        sys.stdout.write(json.dumps(result) + "\\n")
        sys.stdout.flush()
    """
)


class Pb2:
    """A helper process that imports one set of ``_pb2`` modules and answers jobs."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def _call(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "pb2 helper died"
        result: dict[str, Any] = json.loads(line)
        assert "error" not in result, result["error"]
        return result

    def parse(self, type_name: str, data: bytes) -> dict[str, Any]:
        result = self._call({"op": "parse", "type": type_name, "data": base64.b64encode(data).decode()})
        result["data"] = base64.b64decode(result["data"])
        return result

    def build(self, type_name: str, proto_json: dict[str, Any]) -> bytes:
        result = self._call({"op": "build", "type": type_name, "json": proto_json})
        return base64.b64decode(result["data"])


def _pb2_helper(proto_root: Path, workdir: Path) -> Iterator[Pb2]:
    out = workdir / "pb2"
    out.mkdir()
    run_protoc(proto_root, f"--python_out={out}")
    script = workdir / "pb2_helper.py"
    script.write_text(PB2_HELPER)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    with subprocess.Popen(
        [sys.executable, "-W", "error", str(script), str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=workdir,
    ) as proc:
        try:
            yield Pb2(proc)
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0


@pytest.fixture(scope="module")
def pb2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pb2]:
    yield from _pb2_helper(PROTO_ROOT, tmp_path_factory.mktemp("pb2_full"))


@pytest.fixture(scope="module")
def old_pb2(tmp_path_factory: pytest.TempPathFactory, stripped_proto_root: Path) -> Iterator[Pb2]:
    yield from _pb2_helper(stripped_proto_root, tmp_path_factory.mktemp("pb2_old"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


SAMPLES = b"\x00\x00\x80\x3f" * 4  # four f32 1.0 samples


def _audio() -> pb.DataBuffer:
    return pb.DataBuffer(
        audio=pb.AudioBuffer(
            samples=SAMPLES,
            sample_rate=16000,
            channels=1,
            format=pb.AudioFormat.F32,
            num_samples=4,
        ),
        metadata={"source": "mic"},
    )


AUDIO_JSON = {
    "audio": {
        "samples": b64(SAMPLES),
        "sample_rate": 16000,
        "channels": 1,
        "format": "AUDIO_FORMAT_F32",
        "num_samples": "4",
    },
    "metadata": {"source": "mic"},
}


def _manifest() -> pb.PipelineManifest:
    return pb.PipelineManifest(
        version="v1",
        metadata=pb.ManifestMetadata(
            name="speech-demo",
            description="demo",
            multiprocess=pb.MultiprocessConfig(
                max_processes_per_session=10,
                channel_capacity=100,
                init_timeout_secs=30,
                python_executable="python3",
                enable_backpressure=False,
                executor_overrides={"asr": "multiprocess"},
            ),
            extra_json='{"owner": "qa"}',
            supervision=pb.SupervisionConfig(strategy="rest_for_one", max_restarts=0, within_secs=2.5),
        ),
        nodes=[
            pb.NodeManifest(
                id="chunker",
                node_type="AudioChunkerNode",
                params='{"chunk_size": 1024}',
                is_streaming=True,
                input_types=[pb.DataTypeHint.AUDIO],
                output_types=[pb.DataTypeHint.AUDIO, pb.DataTypeHint.JSON],
            ),
            pb.NodeManifest(
                id="asr",
                node_type="SpeechRecognitionNode",
                params="{}",
                capabilities=pb.CapabilityRequirements(
                    gpu=pb.GpuRequirement(type="cuda", min_memory_gb=2.5, required=True),
                    cpu=pb.CpuRequirement(cores=2, arch="x86_64"),
                    memory_gb=4.0,
                ),
                host="gpu-box:50051",
                runtime_hint=pb.RuntimeHint.CPYTHON,
                restart="temporary",
            ),
        ],
        connections=[pb.Connection(from_="chunker", to="asr")],
    )


MULTIPROCESS_JSON = {
    "max_processes_per_session": 10,
    "channel_capacity": 100,
    "init_timeout_secs": 30,
    "python_executable": "python3",
    "enable_backpressure": False,
    "executor_overrides": {"asr": "multiprocess"},
}

# max_restarts 0 is on the wire (proto3 `optional`): "no restarts" is not "unset".
SUPERVISION_JSON = {"strategy": "rest_for_one", "max_restarts": 0, "within_secs": 2.5}

MANIFEST_JSON: dict[str, Any] = {
    "version": "v1",
    "metadata": {
        "name": "speech-demo",
        "description": "demo",
        "multiprocess": MULTIPROCESS_JSON,
        "extra_json": '{"owner": "qa"}',
        "supervision": SUPERVISION_JSON,
    },
    "nodes": [
        {
            "id": "chunker",
            "node_type": "AudioChunkerNode",
            "params": '{"chunk_size": 1024}',
            "is_streaming": True,
            "input_types": ["DATA_TYPE_HINT_AUDIO"],
            "output_types": ["DATA_TYPE_HINT_AUDIO", "DATA_TYPE_HINT_JSON"],
        },
        {
            "id": "asr",
            "node_type": "SpeechRecognitionNode",
            "params": "{}",
            "capabilities": {
                "gpu": {"type": "cuda", "min_memory_gb": 2.5, "required": True},
                "cpu": {"cores": 2, "arch": "x86_64"},
                "memory_gb": 4.0,
            },
            "host": "gpu-box:50051",
            "runtime_hint": "RUNTIME_HINT_CPYTHON",
            "restart": "temporary",
        },
    ],
    "connections": [{"from": "chunker", "to": "asr"}],
}

ISSUES_ERROR = pb.ErrorResponse(
    error_type=pb.ErrorType.VALIDATION,
    message="2 validation errors",
    failing_node_id="asr",
    context="manifest",
    stack_trace="",
    issues=[
        pb.ValidationIssue(path="nodes[2].id", message="must match ^[a-zA-Z0-9_-]+$"),
        pb.ValidationIssue(path="metadata.name", message="required"),
    ],
)
ISSUES_ERROR_JSON = {
    "error_type": "ERROR_TYPE_VALIDATION",
    "message": "2 validation errors",
    "failing_node_id": "asr",
    "context": "manifest",
    "issues": [
        {"path": "nodes[2].id", "message": "must match ^[a-zA-Z0-9_-]+$"},
        {"path": "metadata.name", "message": "required"},
    ],
}

SUPERVISION_EVENTS = [
    pb.SupervisionEvent(
        node_id="asr",
        kind="failed",
        message="node 'asr' failed in process: boom",
        dropped_sequences=[7],
        error=pb.ErrorResponse(error_type=pb.ErrorType.NODE_EXECUTION, message="boom", failing_node_id="asr"),
    ),
    pb.SupervisionEvent(node_id="asr", kind="restarted", restarts=1),
]
SUPERVISION_EVENTS_JSON = [
    {
        "node_id": "asr",
        "kind": "failed",
        "message": "node 'asr' failed in process: boom",
        "dropped_sequences": ["7"],
        "error": {"error_type": "ERROR_TYPE_NODE_EXECUTION", "message": "boom", "failing_node_id": "asr"},
    },
    {"node_id": "asr", "kind": "restarted", "restarts": 1},
]

ASSIGNMENTS = [
    pb.NodeAssignment(node_id="chunker", executor="inprocess", reason="default"),
    pb.NodeAssignment(node_id="asr", executor="multiprocess", reason="pattern *Node", pid=4242),
]
ASSIGNMENTS_JSON = [
    {"node_id": "chunker", "executor": "inprocess", "reason": "default"},
    {"node_id": "asr", "executor": "multiprocess", "reason": "pattern *Node", "pid": 4242},
]

EXEC_METRICS = pb.ExecutionMetrics(
    wall_time_ms=12.5,
    cpu_time_ms=3.25,
    memory_used_bytes=1 << 40,
    node_metrics={
        "asr": pb.NodeMetrics(
            execution_time_ms=1.5, memory_bytes=2048, items_processed=3, custom_metrics="{}"
        )
    },
    serialization_time_ms=0.5,
    proto_to_runtime_ms=0.25,
    runtime_to_proto_ms=0.125,
    data_type_breakdown={"audio": 7},
)
EXEC_METRICS_JSON = {
    "wall_time_ms": 12.5,
    "cpu_time_ms": 3.25,
    "memory_used_bytes": str(1 << 40),
    "node_metrics": {
        "asr": {
            "execution_time_ms": 1.5,
            "memory_bytes": "2048",
            "items_processed": "3",
            "custom_metrics": "{}",
        }
    },
    "serialization_time_ms": 0.5,
    "proto_to_runtime_ms": 0.25,
    "runtime_to_proto_ms": 0.125,
    "data_type_breakdown": {"audio": "7"},
}


def _deprecated_audio_chunk_request() -> pb.StreamRequest:
    with pytest.warns(DeprecationWarning, match="audio_chunk is deprecated"):
        return pb.StreamRequest(
            audio_chunk=pb.AudioChunk(
                node_id="chunker",
                buffer=pb.AudioBuffer(samples=SAMPLES, sample_rate=8000, channels=1),
                sequence=3,
                timestamp_ms=30,
            )
        )


def _deprecated_stream_error_response() -> pb.StreamResponse:
    """What servers before the ErrorResponse extensions sent for a rejected chunk (field 7)."""
    with pytest.warns(DeprecationWarning, match="stream_error is deprecated"):
        return pb.StreamResponse(
            stream_error=pb.StreamErrorResponse(
                base_error=pb.ErrorResponse(
                    error_type=pb.ErrorType.NODE_EXECUTION,
                    message="node asr exited with signal 9",
                    failing_node_id="asr",
                ),
                stream_error_type=pb.StreamErrorType.STREAM_ERROR_EXECUTION,
                failing_sequence=9,
                session_id="s-1",
            )
        )


REJECTION = pb.ErrorResponse(
    error_type=pb.ErrorType.VALIDATION,
    message="DataChunk sequence 0 rejected (the stream goes on): input for unknown node 'ghost'",
    context="data",
    failing_sequence=0,  # presence matters: sequence 0 (StreamInit's data_inputs) is a real one
    stream_error_type=pb.StreamErrorType.STREAM_ERROR_INVALID_SEQUENCE,
    session_continues=True,
)
REJECTION_JSON = {
    "error_type": "ERROR_TYPE_VALIDATION",
    "message": "DataChunk sequence 0 rejected (the stream goes on): input for unknown node 'ghost'",
    "context": "data",
    "failing_sequence": "0",
    "stream_error_type": 2,
    "session_continues": True,
}

# (type name, betterproto message factory, the same message in proto3 JSON form)
CASES: dict[str, tuple[str, Any, dict[str, Any]]] = {
    "ExecuteRequest/manifest+audio": (
        "ExecuteRequest",
        lambda: pb.ExecuteRequest(
            manifest=_manifest(),
            data_inputs={"chunker": _audio()},
            resource_limits=pb.ResourceLimits(
                max_memory_bytes=1 << 33, max_timeout_ms=5000, max_audio_samples=480000
            ),
            client_version="1.2.3",
        ),
        {
            "manifest": MANIFEST_JSON,
            "data_inputs": {"chunker": AUDIO_JSON},
            "resource_limits": {
                "max_memory_bytes": str(1 << 33),
                "max_timeout_ms": "5000",
                "max_audio_samples": "480000",
            },
            "client_version": "1.2.3",
        },
    ),
    "ExecuteResponse/result": (
        "ExecuteResponse",
        lambda: pb.ExecuteResponse(
            result=pb.ExecutionResult(
                data_outputs={
                    "asr": pb.DataBuffer(json=pb.JsonData(json_payload='{"t": "hi"}')),
                    "tensor": pb.DataBuffer(
                        tensor=pb.TensorBuffer(data=b"\x01\x02", shape=[1, 2], dtype=pb.TensorDtype.U8)
                    ),
                },
                metrics=EXEC_METRICS,
                node_results=[pb.NodeResult(node_id="asr", status=pb.NodeStatus.SUCCESS)],
                status=pb.ExecutionStatus.SUCCESS,
                assignments=ASSIGNMENTS,
                progress=[pb.InitProgress(node_id="asr", state="ready", progress=1.0)],
                supervision=SUPERVISION_EVENTS,
            )
        ),
        {
            "result": {
                "data_outputs": {
                    "asr": {"json": {"json_payload": '{"t": "hi"}'}},
                    "tensor": {
                        "tensor": {
                            "data": b64(b"\x01\x02"),
                            "shape": ["1", "2"],
                            "dtype": "TENSOR_DTYPE_U8",
                        }
                    },
                },
                "metrics": EXEC_METRICS_JSON,
                "node_results": [{"node_id": "asr", "status": "NODE_STATUS_SUCCESS"}],
                "status": "EXECUTION_STATUS_SUCCESS",
                "assignments": ASSIGNMENTS_JSON,
                "progress": [{"node_id": "asr", "state": "ready", "progress": 1.0}],
                "supervision": SUPERVISION_EVENTS_JSON,
            }
        },
    ),
    "ExecuteResponse/error": (
        "ExecuteResponse",
        lambda: pb.ExecuteResponse(error=ISSUES_ERROR),
        {"error": ISSUES_ERROR_JSON},
    ),
    "StreamRequest/init": (
        "StreamRequest",
        lambda: pb.StreamRequest(
            init=pb.StreamInit(
                manifest=_manifest(),
                data_inputs={"chunker": _audio()},
                resource_limits=pb.ResourceLimits(max_timeout_ms=100),
                client_version="1.2.3",
                expected_chunk_size=1024,
            )
        ),
        {
            "init": {
                "manifest": MANIFEST_JSON,
                "data_inputs": {"chunker": AUDIO_JSON},
                "resource_limits": {"max_timeout_ms": "100"},
                "client_version": "1.2.3",
                "expected_chunk_size": "1024",
            }
        },
    ),
    "StreamRequest/data_chunk.buffer": (
        "StreamRequest",
        lambda: pb.StreamRequest(
            data_chunk=pb.DataChunk(node_id="chunker", buffer=_audio(), sequence=1, timestamp_ms=10)
        ),
        {
            "data_chunk": {
                "node_id": "chunker",
                "buffer": AUDIO_JSON,
                "sequence": "1",
                "timestamp_ms": "10",
            }
        },
    ),
    "StreamRequest/data_chunk.named_buffers": (
        "StreamRequest",
        lambda: pb.StreamRequest(
            data_chunk=pb.DataChunk(
                node_id="mixer",
                named_buffers={
                    "left": _audio(),
                    "frame": pb.DataBuffer(
                        video=pb.VideoFrame(
                            pixel_data=b"\xff" * 12,
                            width=2,
                            height=2,
                            format=pb.PixelFormat.RGB24,
                            frame_number=5,
                            timestamp_us=1_000_000,
                        )
                    ),
                    "caption": pb.DataBuffer(
                        text=pb.TextBuffer(text_data=b"hi", encoding="utf-8", language="en")
                    ),
                    "blob": pb.DataBuffer(
                        binary=pb.BinaryBuffer(data=b"\x00\x01", mime_type="application/x-y")
                    ),
                },
                sequence=2,
            )
        ),
        {
            "data_chunk": {
                "node_id": "mixer",
                "named_buffers": {
                    "left": AUDIO_JSON,
                    "frame": {
                        "video": {
                            "pixel_data": b64(b"\xff" * 12),
                            "width": 2,
                            "height": 2,
                            "format": "PIXEL_FORMAT_RGB24",
                            "frame_number": "5",
                            "timestamp_us": "1000000",
                        }
                    },
                    "caption": {"text": {"text_data": b64(b"hi"), "encoding": "utf-8", "language": "en"}},
                    "blob": {"binary": {"data": b64(b"\x00\x01"), "mime_type": "application/x-y"}},
                },
                "sequence": "2",
            }
        },
    ),
    "StreamRequest/audio_chunk(deprecated)": (
        "StreamRequest",
        _deprecated_audio_chunk_request,
        {
            "audio_chunk": {
                "node_id": "chunker",
                "buffer": {"samples": b64(SAMPLES), "sample_rate": 8000, "channels": 1},
                "sequence": "3",
                "timestamp_ms": "30",
            }
        },
    ),
    "StreamRequest/control.close": (
        "StreamRequest",
        lambda: pb.StreamRequest(control=pb.StreamControl(command=pb.StreamControlCommand.COMMAND_CLOSE)),
        {"control": {"command": "COMMAND_CLOSE"}},
    ),
    "StreamRequest/control.cancel": (
        "StreamRequest",
        lambda: pb.StreamRequest(control=pb.StreamControl(command=pb.StreamControlCommand.COMMAND_CANCEL)),
        {"control": {"command": "COMMAND_CANCEL"}},
    ),
    "StreamResponse/ready": (
        "StreamResponse",
        lambda: pb.StreamResponse(
            ready=pb.StreamReady(
                session_id="s-1",
                recommended_chunk_size=1024,
                max_buffer_latency_ms=50,
                assignments=ASSIGNMENTS,
            )
        ),
        {
            "ready": {
                "session_id": "s-1",
                "recommended_chunk_size": "1024",
                "max_buffer_latency_ms": "50",
                "assignments": ASSIGNMENTS_JSON,
            }
        },
    ),
    "StreamResponse/ready(empty)": (
        "StreamResponse",
        lambda: pb.StreamResponse(ready=pb.StreamReady()),
        {"ready": {}},
    ),
    "StreamResponse/result": (
        "StreamResponse",
        lambda: pb.StreamResponse(
            result=pb.ChunkResult(
                sequence=7,
                data_outputs={"asr": pb.DataBuffer(json=pb.JsonData(json_payload="{}"))},
                processing_time_ms=0.75,
                total_items_processed=7,
            )
        ),
        {
            "result": {
                "sequence": "7",
                "data_outputs": {"asr": {"json": {"json_payload": "{}"}}},
                "processing_time_ms": 0.75,
                "total_items_processed": "7",
            }
        },
    ),
    "StreamResponse/error": (
        "StreamResponse",
        lambda: pb.StreamResponse(error=ISSUES_ERROR),
        {"error": ISSUES_ERROR_JSON},
    ),
    "StreamResponse/metrics": (
        "StreamResponse",
        lambda: pb.StreamResponse(
            metrics=pb.StreamMetrics(
                session_id="s-1",
                chunks_processed=10,
                average_latency_ms=1.25,
                total_items=10,
                buffer_items=1,
                chunks_dropped=0,
                peak_memory_bytes=1 << 20,
                data_type_breakdown={"audio": 10, "json": 2},
                cache_hits=4,
                cache_misses=6,
                cached_nodes_count=1,
                cache_hit_rate=0.4,
            )
        ),
        {
            "metrics": {
                "session_id": "s-1",
                "chunks_processed": "10",
                "average_latency_ms": 1.25,
                "total_items": "10",
                "buffer_items": "1",
                "peak_memory_bytes": str(1 << 20),
                "data_type_breakdown": {"audio": "10", "json": "2"},
                "cache_hits": "4",
                "cache_misses": "6",
                "cached_nodes_count": "1",
                "cache_hit_rate": 0.4,
            }
        },
    ),
    "StreamResponse/closed": (
        "StreamResponse",
        lambda: pb.StreamResponse(
            closed=pb.StreamClosed(session_id="s-1", final_metrics=EXEC_METRICS, reason="close")
        ),
        {
            "closed": {
                "session_id": "s-1",
                "final_metrics": EXEC_METRICS_JSON,
                "reason": "close",
            }
        },
    ),
    "StreamResponse/progress(ext)": (
        "StreamResponse",
        lambda: pb.StreamResponse(
            progress=pb.InitProgress(node_id="asr", state="loading", progress=0.5, message="loading model")
        ),
        {
            "progress": {
                "node_id": "asr",
                "state": "loading",
                "progress": 0.5,
                "message": "loading model",
            }
        },
    ),
    "StreamResponse/supervision(ext)": (
        "StreamResponse",
        lambda: pb.StreamResponse(supervision=SUPERVISION_EVENTS[0]),
        {"supervision": SUPERVISION_EVENTS_JSON[0]},
    ),
    "StreamResponse/supervision.empty(ext)": (
        "StreamResponse",
        lambda: pb.StreamResponse(supervision=pb.SupervisionEvent()),
        {"supervision": {}},
    ),
    "StreamResponse/error+rejection(ext)": (
        "StreamResponse",
        lambda: pb.StreamResponse(error=REJECTION),
        {"error": REJECTION_JSON},
    ),
    "StreamResponse/stream_error(ext)": (
        "StreamResponse",
        _deprecated_stream_error_response,
        {
            "stream_error": {
                "base_error": {
                    "error_type": "ERROR_TYPE_NODE_EXECUTION",
                    "message": "node asr exited with signal 9",
                    "failing_node_id": "asr",
                },
                "stream_error_type": "STREAM_ERROR_EXECUTION",
                "failing_sequence": "9",
                "session_id": "s-1",
            }
        },
    ),
}


def _bp_class(type_name: str) -> type[betterproto.Message]:
    cls: type[betterproto.Message] = getattr(pb, type_name)
    return cls


@pytest.mark.parametrize("case", list(CASES))
def test_betterproto_to_protobuf_runtime(pb2: Pb2, case: str) -> None:
    type_name, factory, proto_json = CASES[case]
    msg = factory()
    parsed = pb2.parse(type_name, bytes(msg))
    assert parsed["dict"] == proto_json
    assert parsed["unknown"] == []
    # ... and back: what the protobuf runtime re-serialises, betterproto reads as equal.
    assert _bp_class(type_name)().parse(parsed["data"]) == msg


@pytest.mark.parametrize("case", list(CASES))
def test_protobuf_runtime_to_betterproto(pb2: Pb2, case: str) -> None:
    type_name, factory, proto_json = CASES[case]
    data = pb2.build(type_name, proto_json)
    msg = _bp_class(type_name)().parse(data)
    assert msg == factory()
    oneofs = {
        "StreamRequest": "request",
        "StreamResponse": "response",
        "ExecuteResponse": "outcome",
    }
    if type_name in oneofs:
        expected_member = next(iter(proto_json))
        assert betterproto.which_one_of(msg, oneofs[type_name])[0] == expected_member


def _drop(d: dict[str, Any], *path: str | int) -> dict[str, Any]:
    """A deep copy of ``d`` without the key at ``path``."""
    out = json.loads(json.dumps(d))
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


@pytest.mark.parametrize(
    ("case", "oneof", "expect_which", "expect_dict", "expect_unknown"),
    [
        ("StreamResponse/progress(ext)", "response", None, {}, [6]),
        ("StreamResponse/stream_error(ext)", "response", None, {}, [7]),
        # A supervision event: an old client sees a response with no member set, and skips it.
        ("StreamResponse/supervision(ext)", "response", None, {}, [8]),
        ("StreamResponse/supervision.empty(ext)", "response", None, {}, [8]),
        (
            # A rejected chunk: an old client sees `error` with everything upstream knows.
            "StreamResponse/error+rejection(ext)",
            "response",
            "error",
            {"error": {k: REJECTION_JSON[k] for k in ("error_type", "message", "context")}},
            [],
        ),
        (
            "StreamResponse/ready",
            "response",
            "ready",
            _drop(CASES["StreamResponse/ready"][2], "ready", "assignments"),
            [],
        ),
        (
            "StreamResponse/error",
            "response",
            "error",
            _drop(CASES["StreamResponse/error"][2], "error", "issues"),
            [],
        ),
        (
            "ExecuteResponse/result",
            "outcome",
            "result",
            _drop(
                _drop(
                    _drop(CASES["ExecuteResponse/result"][2], "result", "assignments"),
                    "result",
                    "progress",
                ),
                "result",
                "supervision",
            ),
            [],
        ),
        (
            "StreamRequest/init",
            "request",
            "init",
            _drop(
                _drop(
                    _drop(
                        _drop(CASES["StreamRequest/init"][2], "init", "manifest", "metadata", "multiprocess"),
                        "init",
                        "manifest",
                        "metadata",
                        "extra_json",
                    ),
                    "init",
                    "manifest",
                    "metadata",
                    "supervision",
                ),
                "init",
                "manifest",
                "nodes",
                1,
                "restart",
            ),
            [],
        ),
    ],
)
def test_old_client_ignores_extensions(
    old_pb2: Pb2,
    case: str,
    oneof: str,
    expect_which: str | None,
    expect_dict: dict[str, Any],
    expect_unknown: list[int],
) -> None:
    """pb2 classes built from the protos without extensions parse extended messages."""
    type_name, factory, _ = CASES[case]
    data = bytes(factory())
    parsed = old_pb2.parse(type_name, data)
    assert parsed["which"][oneof] == expect_which
    assert parsed["dict"] == expect_dict
    assert parsed["unknown"] == expect_unknown
    # Unknown fields survive a pass through the old client (no data is mangled).
    assert _bp_class(type_name)().parse(parsed["data"]) == factory()


def _design_extension_table() -> set[tuple[str, int]]:
    """(message, field number) of every row of design.md's "Wire extensions" table."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = text.split("### Wire extensions", 1)[1].split("\n## ", 1)[0]
    rows: set[tuple[str, int]] = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`"):
            continue
        message = cells[0].strip("`")
        for part in cells[2].split(","):
            first, _, last = part.strip().partition("–")
            rows |= {(message, n) for n in range(int(first), int(last or first) + 1)}
    return rows


def test_design_documents_every_wire_extension() -> None:
    """docs/design.md §7's table lists exactly the extension fields the protos declare."""
    declared = {
        (message.split()[1], int(line.split(":", 1)[0]))
        for messages in EXTENSIONS.values()
        for message, lines in messages.items()
        for line in lines
    }
    documented = _design_extension_table()
    assert sorted(declared - documented) == [], "extension fields missing from design.md's table"
    assert sorted(documented - declared) == [], "design.md's table lists fields the protos do not have"


def test_each_proto_package_has_a_descriptor_set_of_its_own() -> None:
    """remotemedia.v1's descriptor set (the server's upb classes, reflection) holds exactly its
    protos: our extension service, nursery_pipes.v1.Monitor, sits in a package and a set of its
    own, importing nothing of remotemedia.v1 — upstream's protos are untouched by it."""
    sets = {p.name: p for p in GENERATED_DIR.glob("*.binpb")}
    assert sorted(sets) == ["nursery_pipes_v1.binpb", "remotemedia_v1.binpb"]
    files: dict[str, list[descriptor_pb2.FileDescriptorProto]] = {}
    for name, path in sets.items():
        files[name] = list(descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file)
    assert sorted(f.name for f in files["remotemedia_v1.binpb"]) == sorted(PROTO_FILES)
    assert {f.package for f in files["remotemedia_v1.binpb"]} == {PACKAGE}
    (monitor,) = files["nursery_pipes_v1.binpb"]
    assert (monitor.name, monitor.package, list(monitor.dependency)) == (
        "nursery_pipes/v1/monitor.proto",
        "nursery_pipes.v1",
        [],
    )
    assert [s.name for s in monitor.service] == ["Monitor"]
