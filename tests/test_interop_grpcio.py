"""Interoperability: the server driven by the C-core grpcio stack, with ``_pb2`` modules that
grpcio-tools generates from our own protos at test time.

Nothing of nursery_pipes is on the client side: requests are built with the protobuf runtime
from the generated classes, sent by grpcio, and the replies parsed back by the protobuf
runtime — an independent gRPC stack and an independent message implementation.

The grpcio client runs in a subprocess (``CLIENT``, one scenario per run, JSON on stdout):
the generated modules, grpcio-health-checking and grpcio-reflection all register files in
the protobuf default descriptor pool, which must not meet grpclib's copies of the same
health/reflection protos in the test process. The server runs in the test's trio loop, so
the client is awaited with ``trio.run_process``.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from service_fixtures import (
    EXECUTION,
    PROTO_ROOT,
    STREAMING,
    Served,
    calls_finished,
    manifest,
    mixed_audio_manifest,
    pids_of_session,
    run_protoc,
    self_signed_cert,
    served_fixture,  # noqa: F401  (the `served` fixture)
    serving,
    wait_no_session_processes,
)

from nursery_pipes._proto.remotemedia import v1 as pb

pytestmark = pytest.mark.timeout(60)

CLIENT = r'''
"""A grpcio client for remotemedia.v1: python client.py GEN_DIR ADDRESS SCENARIO OPTIONS_JSON"""
import array
import json
import sys
import time

sys.path.insert(0, sys.argv[1])

import grpc
from google.protobuf import json_format
from remotemedia.v1 import common_pb2, execution_pb2, execution_pb2_grpc, streaming_pb2, streaming_pb2_grpc

ADDRESS, SCENARIO, OPTIONS = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])


def as_dict(message):
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def channel():
    if OPTIONS.get("tls_cert"):
        with open(OPTIONS["tls_cert"], "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(ADDRESS, credentials)
    return grpc.insecure_channel(ADDRESS)


def manifest(doc):
    """A manifest document (the JSON file form) as a PipelineManifest, built field by field."""
    meta = doc["metadata"]
    metadata = execution_pb2.ManifestMetadata(name=meta["name"])
    mp = meta.get("multiprocess")
    if mp:
        metadata.multiprocess.executor_overrides.update(mp.get("executor_overrides", {}))
        if "channel_capacity" in mp:
            metadata.multiprocess.channel_capacity = mp["channel_capacity"]
    return execution_pb2.PipelineManifest(
        version=doc["version"],
        metadata=metadata,
        nodes=[
            execution_pb2.NodeManifest(
                id=n["id"],
                node_type=n["node_type"],
                params=n["params"] if isinstance(n["params"], str) else json.dumps(n["params"]),
            )
            for n in doc["nodes"]
        ],
        connections=[execution_pb2.Connection(**{"from": c["from"], "to": c["to"]}) for c in doc["connections"]],
    )


def buffer(spec):
    """{"audio": [floats], "rate": N} | {"text": "..."} → DataBuffer."""
    if "audio" in spec:
        samples = array.array("f", spec["audio"]).tobytes()
        return common_pb2.DataBuffer(
            audio=common_pb2.AudioBuffer(
                samples=samples,
                sample_rate=spec.get("rate", 16000),
                channels=1,
                format=common_pb2.AUDIO_FORMAT_F32,
                num_samples=spec.get("num_samples", len(spec["audio"])),
            )
        )
    return common_pb2.DataBuffer(text=common_pb2.TextBuffer(text_data=spec["text"].encode(), encoding="utf-8"))


def rpc_error(exc):
    return {"rpc_error": exc.code().name, "details": exc.details()}


def metadata():
    token = OPTIONS.get("token")
    return [("authorization", f"Bearer {token}")] if token else None


def version():
    stub = execution_pb2_grpc.PipelineExecutionServiceStub(channel())
    return {
        v: as_dict(stub.GetVersion(execution_pb2.VersionRequest(client_version=v), timeout=10))
        for v in OPTIONS["client_versions"]
    }


def execute():
    stub = execution_pb2_grpc.PipelineExecutionServiceStub(channel())
    request = execution_pb2.ExecuteRequest(manifest=manifest(OPTIONS["manifest"]), client_version="1.0")
    for node_id, spec in OPTIONS["inputs"].items():
        request.data_inputs[node_id].CopyFrom(buffer(spec))
    try:
        response = stub.ExecutePipeline(request, timeout=30, metadata=metadata())
    except grpc.RpcError as exc:
        return rpc_error(exc)
    return as_dict(response)


def requests():
    yield streaming_pb2.StreamRequest(init=streaming_pb2.StreamInit(manifest=manifest(OPTIONS["manifest"])))
    for node_id, spec, seq in OPTIONS["chunks"]:
        yield streaming_pb2.StreamRequest(
            data_chunk=streaming_pb2.DataChunk(node_id=node_id, buffer=buffer(spec), sequence=seq)
        )
    command = streaming_pb2.StreamControl.COMMAND_CANCEL if OPTIONS.get("cancel") else streaming_pb2.StreamControl.COMMAND_CLOSE
    yield streaming_pb2.StreamRequest(control=streaming_pb2.StreamControl(command=command))


def stream():
    stub = streaming_pb2_grpc.StreamingPipelineServiceStub(channel())
    out = []
    try:
        for response in stub.StreamPipeline(requests(), timeout=30, metadata=metadata()):
            out.append({"which": response.WhichOneof("response"), **as_dict(response)})
    except grpc.RpcError as exc:
        out.append(rpc_error(exc))
    return out


def raw():
    """Bytes that are no ExecuteRequest, through a call without a serializer."""
    call = channel().unary_unary(
        "/remotemedia.v1.PipelineExecutionService/ExecutePipeline",
        request_serializer=None,
        response_deserializer=execution_pb2.ExecuteResponse.FromString,
    )
    try:
        call(bytes.fromhex(OPTIONS["hex"]), timeout=10)
    except grpc.RpcError as exc:
        return rpc_error(exc)
    return {"rpc_error": None}


def health():
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel())
    out = {}
    for service in OPTIONS["services"]:
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            out[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        except grpc.RpcError as exc:
            out[service] = exc.code().name
    return out


def reflection():
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    database = ProtoReflectionDescriptorDatabase(channel())
    pool = DescriptorPool(database)
    services = {}
    for name in database.get_services():
        service = pool.FindServiceByName(name)
        services[name] = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
    chunk = pool.FindMessageTypeByName("remotemedia.v1.DataChunk")
    return {
        "services": services,
        "data_chunk_fields": {f.name: f.number for f in chunk.fields},
        "files": sorted(database.get_services()),
    }


def vanish():
    """Open a stream, report the session id once ready, then hang until killed."""
    stub = streaming_pb2_grpc.StreamingPipelineServiceStub(channel())

    def slow_requests():
        yield from list(requests())[:-1]  # init and chunks, never CLOSE
        time.sleep(3600)

    for response in stub.StreamPipeline(slow_requests()):
        if response.WhichOneof("response") == "ready":
            print(json.dumps({"session_id": response.ready.session_id}), flush=True)
    time.sleep(3600)


print(json.dumps(globals()[SCENARIO]()), flush=True)
'''


@pytest.fixture(scope="session")
def grpcio_client(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(generated modules dir, client script): ``_pb2``/``_pb2_grpc`` from protos/, once per session."""
    root = tmp_path_factory.mktemp("grpcio_client")
    gen = root / "gen"
    gen.mkdir()
    run_protoc(PROTO_ROOT, f"--python_out={gen}", f"--grpc_python_out={gen}")
    assert (gen / "remotemedia" / "v1" / "streaming_pb2_grpc.py").exists()
    script = root / "client.py"
    script.write_text(textwrap.dedent(CLIENT), encoding="utf-8")
    return gen, script


async def grpcio(client: tuple[Path, Path], address: str, scenario: str, **options: Any) -> Any:
    """Run one scenario of the grpcio client; its JSON result."""
    gen, script = client
    with trio.fail_after(45):
        done = await trio.run_process(
            [sys.executable, str(script), str(gen), address, scenario, json.dumps(options)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def b64_floats(data: str) -> np.ndarray[Any, Any]:
    return np.frombuffer(base64.b64decode(data), dtype=np.float32)


# -----------------------------------------------------------------------------------------------------


async def test_grpcio_get_version(served: Served, grpcio_client: tuple[Path, Path]) -> None:
    result = await grpcio(grpcio_client, served.address, "version", client_versions=["1.0", "", "7.1"])
    assert result["1.0"]["compatible"] is True
    assert result[""]["compatible"] is True
    assert "compatible" not in result["7.1"]  # proto3 JSON leaves false out
    assert "7.1" in result["7.1"]["compatibility_message"]
    info = result["1.0"]["version_info"]
    assert info["protocol_version"] == "v1"
    assert sorted(info["supported_node_types"]) == sorted(served.runtime.registry.names())


async def test_grpcio_execute_pipeline(served: Served, grpcio_client: tuple[Path, Path]) -> None:
    result = await grpcio(
        grpcio_client,
        served.address,
        "execute",
        manifest=mixed_audio_manifest(),
        inputs={"src": {"audio": [0.25] * 320}},
    )
    outcome = result["result"]
    assert outcome["status"] == "EXECUTION_STATUS_SUCCESS"
    outputs = outcome["data_outputs"]
    assert set(outputs) == {"out", "tap"}
    np.testing.assert_allclose(b64_floats(outputs["out"]["audio"]["samples"]), 0.5, rtol=1e-4)
    np.testing.assert_array_equal(b64_floats(outputs["tap"]["audio"]["samples"]), 0.25)
    assert outputs["out"]["audio"]["format"] == "AUDIO_FORMAT_F32"
    assert outputs["out"]["audio"]["num_samples"] == "320"
    assert set(outcome["metrics"]["node_metrics"]) == {"src", "gain", "out", "tap"}
    assert {r["node_id"] for r in outcome["node_results"]} == {"src", "gain", "out", "tap"}
    assert {a["node_id"]: a["executor"] for a in outcome["assignments"]} == {
        "src": "inprocess",
        "gain": "multiprocess",
        "out": "inprocess",
        "tap": "multiprocess",
    }


async def test_grpcio_error_responses(served: Served, grpcio_client: tuple[Path, Path]) -> None:
    bad_manifest = manifest([("bad id", "NoSuchNode", {})])
    bad_params = manifest([("up", "TextTransformNode", {})])
    bad_params["nodes"][0]["params"] = "{oops"
    raising = manifest([("boom", "RaiseNode", {"phase": "process", "message": "grpcio sees this"})])
    results = [
        await grpcio(grpcio_client, served.address, "execute", manifest=doc, inputs=inputs)
        for doc, inputs in [
            (bad_manifest, {}),
            (bad_params, {}),
            (raising, {"boom": {"text": "x"}}),
            (manifest([("src", "PassThrough", {})]), {"src": {"audio": [0.0] * 10, "num_samples": 11}}),
        ]
    ]
    validation, params, node, frame = (r["error"] for r in results)
    assert validation["error_type"] == "ERROR_TYPE_VALIDATION"
    assert {i["path"] for i in validation["issues"]} >= {"nodes[0].id", "nodes[0].node_type"}
    assert params["error_type"] == "ERROR_TYPE_VALIDATION"
    assert [i["path"] for i in params["issues"]] == ["nodes[0].params"]
    assert node["error_type"] == "ERROR_TYPE_NODE_EXECUTION"
    assert node["failing_node_id"] == "boom"
    assert "RuntimeError: grpcio sees this" in node["stack_trace"]
    assert frame["error_type"] == "ERROR_TYPE_TYPE_VALIDATION"
    assert "num_samples is 11" in frame["message"]

    undecodable = await grpcio(grpcio_client, served.address, "raw", hex="0aff")
    assert undecodable["rpc_error"] == "INVALID_ARGUMENT"
    assert "ExecuteRequest" in undecodable["details"]


async def test_grpcio_stream_pipeline(served: Served, grpcio_client: tuple[Path, Path]) -> None:
    chunks = [["src", {"audio": [float(i)] * 160}, i] for i in range(1, 6)]
    responses = await grpcio(
        grpcio_client, served.address, "stream", manifest=mixed_audio_manifest(), chunks=chunks
    )
    which = [r["which"] for r in responses]
    assert "rpc_error" not in responses[-1], responses[-1]
    assert which[-1] == "closed"
    assert which.index("ready") < which.index("result")
    assert "progress" in which[: which.index("ready")]
    ready = responses[which.index("ready")]["ready"]
    assert {a["node_id"]: a["executor"] for a in ready["assignments"]}["gain"] == "multiprocess"
    results = [r["result"] for r in responses if r["which"] == "result"]
    by_sink: dict[str, list[tuple[int, float]]] = {}
    for result in results:
        for sink, buffer in result["data_outputs"].items():
            by_sink.setdefault(sink, []).append(
                (int(result["sequence"]), float(b64_floats(buffer["audio"]["samples"])[0]))
            )
    assert [s for s, _ in by_sink["out"]] == [1, 2, 3, 4, 5]
    assert [v for _, v in by_sink["out"]] == pytest.approx([2.0, 4.0, 6.0, 8.0, 10.0], rel=1e-4)
    assert by_sink["tap"] == [(i, float(i)) for i in range(1, 6)]
    closed = responses[-1]["closed"]
    assert closed["session_id"] == ready["session_id"]
    assert closed["reason"] == "closed"
    assert closed["final_metrics"]["node_metrics"]["gain"]["items_processed"] == "5"


async def test_grpcio_stream_errors_and_cancel(served: Served, grpcio_client: tuple[Path, Path]) -> None:
    doc = manifest([("up", "TextTransformNode", {"operation": "upper"})])
    chunks = [
        ["up", {"text": "a"}, 2],
        ["up", {"text": "b"}, 2],
        ["ghost", {"text": "c"}, 3],
        ["up", {"text": "d"}, 4],
    ]
    responses = await grpcio(grpcio_client, served.address, "stream", manifest=doc, chunks=chunks)
    # Rejections arrive as `error` (the deprecated extension `stream_error` is never sent); a
    # client built from our protos also sees the extension fields.
    assert "stream_error" not in [r["which"] for r in responses]
    errors = [r["error"] for r in responses if r["which"] == "error"]
    assert [
        (e.get("stream_error_type", 0), e["failing_sequence"], e.get("session_continues")) for e in errors
    ] == [
        (int(pb.StreamErrorType.STREAM_ERROR_INVALID_SEQUENCE), "2", True),
        (int(pb.StreamErrorType.STREAM_ERROR_UNSPECIFIED), "3", True),
    ]
    assert [e["error_type"] for e in errors] == ["ERROR_TYPE_VALIDATION"] * 2
    assert "ghost" in errors[1]["message"]
    outputs = [
        (r["result"]["sequence"], base64.b64decode(r["result"]["data_outputs"]["up"]["text"]["text_data"]))
        for r in responses
        if r["which"] == "result"
    ]
    assert outputs == [("2", b"A"), ("4", b"D")]
    assert responses[-1]["which"] == "closed"

    cancelled = await grpcio(
        grpcio_client, served.address, "stream", manifest=doc, chunks=chunks[:1], cancel=True
    )
    assert cancelled[-1]["which"] == "closed"
    assert cancelled[-1]["closed"]["reason"] == "cancelled by client"


@pytest.mark.parametrize("served", [{"server": {"auth_token": "grpcio-token"}}], indirect=True)
async def test_grpcio_auth(served: Served, grpcio_client: tuple[Path, Path]) -> None:
    doc = manifest([("up", "TextTransformNode", {"operation": "upper"})])
    denied = await grpcio(
        grpcio_client, served.address, "execute", manifest=doc, inputs={"up": {"text": "x"}}
    )
    assert denied["error"]["error_type"] == "ERROR_TYPE_AUTHENTICATION"
    wrong = await grpcio(grpcio_client, served.address, "stream", manifest=doc, chunks=[], token="nope")
    assert [r["which"] for r in wrong] == ["error"]
    assert wrong[0]["error"]["error_type"] == "ERROR_TYPE_AUTHENTICATION"
    allowed = await grpcio(
        grpcio_client,
        served.address,
        "execute",
        manifest=doc,
        inputs={"up": {"text": "x"}},
        token="grpcio-token",
    )
    assert base64.b64decode(allowed["result"]["data_outputs"]["up"]["text"]["text_data"]) == b"X"


async def test_grpcio_health_and_reflection(served: Served, grpcio_client: tuple[Path, Path]) -> None:
    health = await grpcio(
        grpcio_client, served.address, "health", services=["", EXECUTION, STREAMING, "no.Such"]
    )
    assert health == {"": "SERVING", EXECUTION: "SERVING", STREAMING: "SERVING", "no.Such": "NOT_FOUND"}

    reflected = await grpcio(grpcio_client, served.address, "reflection")
    services = reflected["services"]
    assert {EXECUTION, STREAMING, "grpc.health.v1.Health"} <= set(services)
    assert services[EXECUTION] == {
        "ExecutePipeline": ["remotemedia.v1.ExecuteRequest", "remotemedia.v1.ExecuteResponse"],
        "GetVersion": ["remotemedia.v1.VersionRequest", "remotemedia.v1.VersionResponse"],
    }
    assert services[STREAMING] == {
        "StreamPipeline": ["remotemedia.v1.StreamRequest", "remotemedia.v1.StreamResponse"]
    }
    assert services["grpc.health.v1.Health"]["Check"] == [
        "grpc.health.v1.HealthCheckRequest",
        "grpc.health.v1.HealthCheckResponse",
    ]
    assert reflected["data_chunk_fields"] == {
        "node_id": 1,
        "buffer": 2,
        "named_buffers": 3,
        "sequence": 4,
        "timestamp_ms": 5,
    }


async def test_grpcio_over_tls(tmp_path: Path, grpcio_client: tuple[Path, Path]) -> None:
    cert, key = self_signed_cert(tmp_path)
    async with serving(server={"tls_cert": str(cert), "tls_key": str(key)}) as served:
        secure = await grpcio(
            grpcio_client, f"localhost:{served.port}", "version", client_versions=["1.0"], tls_cert=str(cert)
        )
        assert secure["1.0"]["compatible"] is True
        plaintext = await grpcio(grpcio_client, served.address, "raw", hex="")
        assert plaintext["rpc_error"] == "UNAVAILABLE"


async def test_grpcio_client_killed_mid_stream(served: Served, grpcio_client: tuple[Path, Path]) -> None:
    """The client process dies (SIGKILL) while its session's workers are busy: they are all gone
    within 1 s, and the server keeps serving."""
    gen, script = grpcio_client
    doc = manifest(
        [("src", "PassThrough", {}), ("w1", "PassThrough", {}), ("w2", "SleepNode", {"process_seconds": 30})],
        [("src", "w1"), ("w1", "w2")],
        executors={"src": "inprocess", "w1": "multiprocess", "w2": "multiprocess"},
    )
    options = {"manifest": doc, "chunks": [["src", {"text": "x"}, 1]]}
    process = await trio.lowlevel.open_process(
        [sys.executable, str(script), str(gen), served.address, "vanish", json.dumps(options)],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                data = await process.stdout.receive_some(1024)
                assert data, "the client exited before its session was ready"
                line += data
        session_id = json.loads(line)["session_id"]
        assert len(await pids_of_session(session_id)) == 2
        process.send_signal(signal.SIGKILL)
        await process.wait()
        await wait_no_session_processes(session_id, within=1.0)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
    await calls_finished(served.server)
    assert served.runtime.sessions == {}
    version = await grpcio(grpcio_client, served.address, "version", client_versions=["1.0"])
    assert version["1.0"]["compatible"] is True
