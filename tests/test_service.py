"""The gRPC service over real sockets, unary side: GetVersion, ExecutePipeline, errors,
bad input, auth, limits, health, reflection and TLS.

Every server here is a real ``Server`` on a loopback port inside the test's trio
run; clients are grpclib (our ``Client`` or raw channels) on a trio-asyncio loop.
Each bad-input test also checks that the server keeps serving afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import betterproto
import numpy as np
import pytest
import trio
import trio_asyncio
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest
from grpclib.reflection.v1alpha.reflection_grpc import ServerReflectionStub as V1AlphaReflectionStub
from grpclib.reflection.v1alpha.reflection_pb2 import (
    ServerReflectionRequest as V1AlphaReflectionRequest,
)
from service_fixtures import (
    EXECUTE_PATH,
    EXECUTION,
    MONITOR,
    STREAMING,
    UPPER,
    VERSION_PATH,
    RawCodec,
    Served,
    audio,
    audio_buffer,
    client_tls_context,
    health_status,
    make_config,
    manifest,
    mixed_audio_manifest,
    self_signed_cert,
    served_fixture,  # noqa: F401  (the `served` fixture)
    serving,
    text_buffer,
)

from nursery_pipes import FrameError, ManifestError, NodeError, ResourceLimitError, Runtime, TextFrame
from nursery_pipes._proto.remotemedia import v1 as pb
from nursery_pipes.client import AuthenticationError, Client, collect, raise_for_error
from nursery_pipes.service import Server
from nursery_pipes.wire import manifest_to_proto

pytestmark = pytest.mark.timeout(60)


# -- helpers -----------------------------------------------------------------------------------------


async def raw_unary(
    served: Served,
    path: str,
    payload: bytes | betterproto.Message,
    reply: type[betterproto.Message],
    metadata: dict[str, str] | None = None,
) -> Any:
    """One unary call with arbitrary request bytes; returns the reply or raises GRPCError."""

    async def call() -> Any:
        channel = Channel("127.0.0.1", served.port, codec=RawCodec())  # type: ignore[arg-type]
        try:
            async with channel.request(
                path, Cardinality.UNARY_UNARY, bytes, reply, metadata=metadata
            ) as stream:
                await stream.send_message(payload, end=True)
                return await stream.recv_message()
        finally:
            channel.close()

    return await served.aio(call)


async def execute_raw(
    served: Served, request: pb.ExecuteRequest, metadata: dict[str, str] | None = None
) -> pb.ExecuteResponse:
    response: pb.ExecuteResponse = await raw_unary(
        served, EXECUTE_PATH, request, pb.ExecuteResponse, metadata
    )
    return response


def error_of(response: pb.ExecuteResponse) -> pb.ErrorResponse:
    kind, value = betterproto.which_one_of(response, "outcome")
    assert kind == "error", f"expected an error, got {kind}: {response}"
    assert isinstance(value, pb.ErrorResponse)
    return value


def upper_request(text: str = "hi", **fields: Any) -> pb.ExecuteRequest:
    fields.setdefault("client_version", "1.0")
    return pb.ExecuteRequest(
        manifest=manifest_to_proto(UPPER), data_inputs={"up": text_buffer(text)}, **fields
    )


async def still_serving(served: Served) -> None:
    """The server answers a fresh unary call correctly."""

    async def call() -> dict[str, Any]:
        async with served.client() as client:
            result = await client.execute(UPPER, {"up": TextFrame(text="still here")})
        return result.outputs

    outputs = await served.aio(call)
    assert outputs["up"].text == "STILL HERE"


# -- GetVersion --------------------------------------------------------------------------------------


async def test_get_version_lists_node_types_and_checks_compatibility(served: Served) -> None:
    async def call() -> tuple[pb.VersionResponse, pb.VersionResponse, pb.VersionResponse]:
        async with served.client() as client:
            ours = await client.version()
        channel = Channel("127.0.0.1", served.port)
        try:
            stub = pb.PipelineExecutionServiceStub(channel)
            old = await stub.get_version(pb.VersionRequest(client_version="v1"))
            future = await stub.get_version(pb.VersionRequest(client_version="2.3.0"))
        finally:
            channel.close()
        return ours, old, future

    ours, old, future = await served.aio(call)
    info = ours.version_info
    assert ours.compatible
    assert info.protocol_version == "v1"
    assert info.runtime_version.startswith("nursery_pipes ")
    assert info.supported_protocols == ["v1"]  # protocol versions (it listed the transport, "grpc")
    built = datetime.fromisoformat(info.build_timestamp)  # ISO 8601, UTC ("…Z")
    assert info.build_timestamp.endswith("Z")
    assert built.utcoffset() == timedelta(0)
    assert built <= datetime.now(UTC)
    types = set(info.supported_node_types)
    assert {"PassThrough", "TextTransformNode", "AudioGainNode", "RaiseNode", "ProgressNode"} <= types
    assert sorted(types) == sorted(served.runtime.registry.names())
    assert old.compatible
    assert not future.compatible
    assert "2.3.0" in future.compatibility_message
    assert future.version_info.protocol_version == "v1"


# -- ExecutePipeline: success ------------------------------------------------------------------------


async def test_execute_mixed_pipeline_outputs_metrics_results_assignments_progress(served: Served) -> None:
    doc = mixed_audio_manifest()
    doc["nodes"].append({"id": "prog", "node_type": "ProgressNode", "params": {"steps": 3}})
    doc["connections"].append({"from": "out", "to": "prog"})
    doc["metadata"]["multiprocess"]["executor_overrides"]["prog"] = "multiprocess"
    request = pb.ExecuteRequest(
        manifest=manifest_to_proto(doc),
        data_inputs={"src": audio_buffer(0.25, n=480)},
        client_version="1.0",
    )
    response = await execute_raw(served, request)
    kind, _ = betterproto.which_one_of(response, "outcome")
    assert kind == "result", response
    result = response.result
    assert result.status == pb.ExecutionStatus.SUCCESS

    # outputs of the two sinks, keyed by node id
    assert set(result.data_outputs) == {"prog", "tap"}
    doubled = np.frombuffer(result.data_outputs["prog"].audio.samples, dtype=np.float32)
    tapped = np.frombuffer(result.data_outputs["tap"].audio.samples, dtype=np.float32)
    np.testing.assert_allclose(doubled, np.full(480, 0.5, dtype=np.float32), rtol=1e-4)
    np.testing.assert_array_equal(tapped, np.full(480, 0.25, dtype=np.float32))
    assert result.data_outputs["prog"].audio.sample_rate == 16000
    assert result.data_outputs["prog"].audio.num_samples == 480

    # node results and metrics name every node
    node_ids = {"src", "gain", "out", "tap", "prog"}
    assert {r.node_id for r in result.node_results} == node_ids
    assert all(r.status == pb.NodeStatus.SUCCESS for r in result.node_results)
    metrics = result.metrics
    assert set(metrics.node_metrics) == node_ids
    assert metrics.wall_time_ms > 0
    assert metrics.node_metrics["gain"].items_processed == 1
    custom = {nid: json.loads(m.custom_metrics) for nid, m in metrics.node_metrics.items()}
    assert custom["gain"]["executor"] == "multiprocess"
    assert custom["src"]["executor"] == "inprocess"

    # extensions: assignments (with worker pids) and init progress
    assignments = {a.node_id: a for a in result.assignments}
    assert set(assignments) == node_ids
    assert {n: a.executor for n, a in assignments.items()} == {
        "src": "inprocess",
        "gain": "multiprocess",
        "out": "inprocess",
        "tap": "multiprocess",
        "prog": "multiprocess",
    }
    assert all(a.reason for a in assignments.values())
    worker_pids = {assignments[n].pid for n in ("gain", "tap", "prog")}
    assert len(worker_pids) == 3
    assert 0 not in worker_pids
    assert os.getpid() not in worker_pids
    steps = [p for p in result.progress if p.node_id == "prog" and p.message.startswith("step")]
    assert [p.message for p in steps] == ["step 1/3", "step 2/3", "step 3/3"]
    assert [p.progress for p in steps] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert any(p.node_id == "gain" and p.state == "ready" for p in result.progress)


async def test_execute_joins_the_frames_of_a_sink(served: Served) -> None:
    """A sink that produced several frames comes back as one buffer (audio concatenated); frames
    that cannot be joined are a clear error pointing at StreamPipeline."""
    chunked = manifest(
        [("chunk", "AudioChunkerNode", {"chunk_size": 160}), ("out", "PassThrough", {})],
        [("chunk", "out")],
        executors={"chunk": "inprocess", "out": "multiprocess"},
    )
    values = np.arange(480, dtype=np.float32)
    request = pb.ExecuteRequest(
        manifest=manifest_to_proto(chunked),
        data_inputs={
            "chunk": pb.DataBuffer(
                audio=pb.AudioBuffer(samples=values.tobytes(), sample_rate=16000, channels=1)
            )
        },
    )
    response = await execute_raw(served, request)
    joined = response.result.data_outputs["out"].audio
    assert joined.num_samples == 480
    np.testing.assert_array_equal(np.frombuffer(joined.samples, dtype=np.float32), values)
    assert response.result.metrics.node_metrics["out"].items_processed == 3

    mixed = manifest([("vad", "EnergyVADNode", {"emit_audio": True, "emit_events": True})])
    loud = np.sin(np.arange(16000) / 3).astype(np.float32)
    request = pb.ExecuteRequest(
        manifest=manifest_to_proto(mixed),
        data_inputs={"vad": pb.DataBuffer(audio=pb.AudioBuffer(samples=loud.tobytes(), sample_rate=16000))},
    )
    error = error_of(await execute_raw(served, request))
    assert error.error_type == pb.ErrorType.VALIDATION
    assert "cannot be joined" in error.message
    assert "StreamPipeline" in error.message


@pytest.mark.parametrize("executor", ["inprocess", "multiprocess"])
async def test_data_type_breakdown_counts_every_sink(served: Served, executor: str) -> None:
    doc = manifest([("sink", "PassThrough", {})], executors={"sink": executor})
    request = pb.ExecuteRequest(manifest=manifest_to_proto(doc), data_inputs={"sink": audio_buffer(0.5)})
    response = await execute_raw(served, request)
    assert response.result.metrics.data_type_breakdown == {"audio": 1}


async def test_client_execute_returns_frames(served: Served) -> None:
    async def call() -> Any:
        async with served.client() as client:
            return await client.execute(mixed_audio_manifest(), {"src": audio(0.5)})

    result = await served.aio(call)
    np.testing.assert_allclose(result.outputs["out"].samples[:, 0], 1.0, rtol=1e-4)
    np.testing.assert_array_equal(result.outputs["tap"].samples[:, 0], 0.5)
    assert {a.node_id: a.executor for a in result.assignments}["gain"] == "multiprocess"


# -- ExecutePipeline: errors -------------------------------------------------------------------------


async def test_bad_manifest_is_validation_error_with_paths(served: Served) -> None:
    doc = manifest(
        [("bad id!", "PassThrough", {}), ("b", "NoSuchNode", {})],
        [("b", "ghost")],
    )
    error = error_of(await execute_raw(served, pb.ExecuteRequest(manifest=manifest_to_proto(doc))))
    assert error.error_type == pb.ErrorType.VALIDATION
    paths = {issue.path for issue in error.issues}
    assert {"nodes[0].id", "nodes[1].node_type"} <= paths
    assert any(p.startswith("connections[0]") for p in paths), paths
    assert "NoSuchNode" in error.message

    async def via_client() -> None:
        async with served.client() as client:
            await client.execute(doc, {})

    with pytest.raises(ManifestError) as caught:
        await served.aio(via_client)
    assert {"nodes[0].id", "nodes[1].node_type"} <= {i.path for i in caught.value.issues}
    await still_serving(served)


async def test_params_that_are_not_json_are_a_validation_error(served: Served) -> None:
    wire = pb.PipelineManifest(
        version="v1",
        metadata=pb.ManifestMetadata(name="bad-params"),
        nodes=[
            pb.NodeManifest(id="ok", node_type="PassThrough", params="{}"),
            pb.NodeManifest(id="up", node_type="TextTransformNode", params='{"operation": upper}'),
        ],
        connections=[pb.Connection(from_="ok", to="up")],
    )
    error = error_of(await execute_raw(served, pb.ExecuteRequest(manifest=wire)))
    assert error.error_type == pb.ErrorType.VALIDATION
    assert [i.path for i in error.issues] == ["nodes[1].params"]
    assert "not valid JSON" in error.issues[0].message
    await still_serving(served)


async def test_json_nested_ten_thousand_levels_is_a_validation_error(served: Served) -> None:
    deep = "[" * 10_000 + "]" * 10_000
    wire = pb.PipelineManifest(
        version="v1",
        metadata=pb.ManifestMetadata(name="deep", extra_json='{"labels": ' + deep + "}"),
        nodes=[pb.NodeManifest(id="j", node_type="JsonTransformNode", params='{"set": {"x": ' + deep + "}}")],
    )
    error = error_of(await execute_raw(served, pb.ExecuteRequest(manifest=wire)))
    assert error.error_type == pb.ErrorType.VALIDATION
    assert [(i.path, i.message) for i in error.issues] == [
        ("metadata.extra_json", "nested deeper than 64 levels"),
        ("nodes[0].params", "nested deeper than 64 levels"),
    ]
    await still_serving(served)


@pytest.mark.parametrize("executor", ["inprocess", "multiprocess"])
async def test_raising_node_is_node_execution_with_node_and_trace(served: Served, executor: str) -> None:
    doc = manifest(
        [("src", "PassThrough", {}), ("bad", "RaiseNode", {"phase": "process", "message": "kaput"})],
        [("src", "bad")],
        executors={"src": "inprocess", "bad": executor},
    )
    request = pb.ExecuteRequest(manifest=manifest_to_proto(doc), data_inputs={"src": text_buffer("x")})
    error = error_of(await execute_raw(served, request))
    assert error.error_type == pb.ErrorType.NODE_EXECUTION
    assert error.failing_node_id == "bad"
    assert "kaput" in error.message
    assert "RuntimeError: kaput" in error.stack_trace
    assert "process" in error.stack_trace  # the node's own frame (RaiseNode.process/_fault)

    async def via_client() -> None:
        async with served.client() as client:
            await client.execute(doc, {"src": TextFrame(text="x")})

    with pytest.raises(NodeError) as caught:
        await served.aio(via_client)
    assert caught.value.node_id == "bad"
    await still_serving(served)


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"num_samples": 100}, "num_samples is 100"),  # 160 samples' worth of bytes
        ({"samples": b"\x00" * 7, "num_samples": 0}, "7"),  # not a whole number of f32 samples
        ({"format": pb.AudioFormat.I16, "channels": 3, "num_samples": 0}, ""),  # 640 bytes / (2*3)
        ({"sample_rate": 0}, "sample_rate"),
        ({"format": 9, "num_samples": 0}, "audio format 9 is not one of"),  # an enum value from the future
    ],
)
async def test_audio_bytes_that_disagree_are_type_validation(
    served: Served, fields: dict[str, Any], complaint: str
) -> None:
    request = pb.ExecuteRequest(
        manifest=manifest_to_proto(manifest([("src", "PassThrough", {})])),
        data_inputs={"src": audio_buffer(0.1, n=160, **fields)},
    )
    error = error_of(await execute_raw(served, request))
    assert error.error_type == pb.ErrorType.TYPE_VALIDATION
    assert "data_inputs[src]" in error.message
    assert complaint in error.message

    async def via_client() -> None:
        async with served.client() as client:
            channel = client._channel
            stub = pb.PipelineExecutionServiceStub(channel)
            response = await stub.execute_pipeline(request)
            raise_for_error(response.error)

    with pytest.raises(FrameError):
        await served.aio(via_client)
    await still_serving(served)


async def test_input_for_unknown_node_is_validation_error(served: Served) -> None:
    request = pb.ExecuteRequest(manifest=manifest_to_proto(UPPER), data_inputs={"nobody": text_buffer("x")})
    error = error_of(await execute_raw(served, request))
    assert error.error_type == pb.ErrorType.VALIDATION
    assert "nobody" in error.message
    await still_serving(served)


async def test_a_source_without_input_is_a_validation_error_naming_it(served: Served) -> None:
    """It ran with nothing and answered SUCCESS with empty buffers."""
    doc = manifest([("a", "TextTransformNode", {"operation": "upper"}), ("b", "PassThrough", {})])
    for inputs, missing in [({}, "nodes 'a', 'b'"), ({"a": text_buffer("x")}, "node 'b'")]:
        request = pb.ExecuteRequest(manifest=manifest_to_proto(doc), data_inputs=inputs)
        error = error_of(await execute_raw(served, request))
        assert error.error_type == pb.ErrorType.VALIDATION
        assert f"no input for source {missing}" in error.message
    assert served.runtime.sessions == {}
    await still_serving(served)


async def test_input_of_a_kind_the_node_does_not_take_is_type_validation(served: Served) -> None:
    doc = manifest([("g", "AudioGainNode", {})], executors={"g": "multiprocess"})
    request = pb.ExecuteRequest(manifest=manifest_to_proto(doc), data_inputs={"g": text_buffer("x")})
    error = error_of(await execute_raw(served, request))
    assert error.error_type == pb.ErrorType.TYPE_VALIDATION
    assert "node 'g' (AudioGainNode) accepts audio frames, not text" in error.message
    assert served.runtime.sessions == {}  # refused before a worker was started


UPSAMPLE = manifest([("resample", "AudioResampleNode", {"target_rate": 1_000_000, "quality": "QQ"})])


def tones(n: int, rate: int = 1000) -> pb.DataBuffer:
    """``n`` samples at ``rate`` Hz: ×(1 MHz / rate) samples out of UPSAMPLE, 4 bytes each."""
    return pb.DataBuffer(
        audio=pb.AudioBuffer(
            samples=np.full(n, 0.1, dtype=np.float32).tobytes(), sample_rate=rate, channels=1
        )
    )


@pytest.mark.parametrize("served", [{"server": {"max_message_bytes": 128 * 1024}}], indirect=True)
async def test_outputs_are_bounded_like_inputs(served: Served) -> None:
    """A reply over the server's max_message_bytes, or outputs over the request's
    resource_limits.max_memory_bytes, are RESOURCE_LIMIT naming the sink (they were sent:
    a few hundred bytes in, a reply of any size out)."""

    async def run(buffer: pb.DataBuffer, limits: pb.ResourceLimits | None = None) -> pb.ExecuteResponse:
        request = pb.ExecuteRequest(
            manifest=manifest_to_proto(UPSAMPLE),
            data_inputs={"resample": buffer},
            resource_limits=limits or pb.ResourceLimits(),
        )
        return await execute_raw(served, request)

    too_big = error_of(await run(tones(100)))  # 400 bytes in, ~400 KB out
    assert too_big.error_type == pb.ErrorType.RESOURCE_LIMIT
    assert "sink 'resample'" in too_big.message
    assert "max_message_bytes is 131072" in too_big.message

    over_memory = error_of(await run(tones(10), pb.ResourceLimits(max_memory_bytes=20_000)))  # ~48 KB
    assert over_memory.error_type == pb.ErrorType.RESOURCE_LIMIT
    assert "sink 'resample'" in over_memory.message
    assert "resource_limits.max_memory_bytes (20000)" in over_memory.message

    fits = await run(tones(10))
    assert betterproto.which_one_of(fits, "outcome")[0] == "result"
    assert fits.result.data_outputs["resample"].audio.sample_rate == 1_000_000
    assert served.runtime.sessions == {}
    await still_serving(served)


async def test_incompatible_client_version_is_version_mismatch(served: Served) -> None:
    error = error_of(await execute_raw(served, upper_request(client_version="9.0")))
    assert error.error_type == pb.ErrorType.VERSION_MISMATCH
    assert "9.0" in error.message


async def test_request_resource_limits(served: Served) -> None:
    big = pb.ExecuteRequest(
        manifest=manifest_to_proto(manifest([("src", "PassThrough", {})])),
        data_inputs={"src": audio_buffer(0.1, n=1000)},
        resource_limits=pb.ResourceLimits(max_audio_samples=999),
    )
    error = error_of(await execute_raw(served, big))
    assert error.error_type == pb.ErrorType.RESOURCE_LIMIT
    assert "max_audio_samples" in error.message

    big.resource_limits = pb.ResourceLimits(max_memory_bytes=1000)  # 4000 bytes of samples
    error = error_of(await execute_raw(served, big))
    assert error.error_type == pb.ErrorType.RESOURCE_LIMIT
    assert "max_memory_bytes" in error.message

    slow = pb.ExecuteRequest(
        manifest=manifest_to_proto(manifest([("slow", "SleepNode", {"process_seconds": 30})])),
        data_inputs={"slow": text_buffer("x")},
        resource_limits=pb.ResourceLimits(max_timeout_ms=200),
    )
    began = trio.current_time()
    error = error_of(await execute_raw(served, slow))
    assert error.error_type == pb.ErrorType.RESOURCE_LIMIT
    assert "max_timeout_ms" in error.message
    assert trio.current_time() - began < 5

    # within limits: fine
    big.resource_limits = pb.ResourceLimits(max_audio_samples=1000, max_memory_bytes=4000)
    assert betterproto.which_one_of(await execute_raw(served, big), "outcome")[0] == "result"


@pytest.mark.parametrize("served", [{"limits": {"max_processes": 2}}], indirect=True)
async def test_too_many_processes_is_resource_limit_before_spawning(served: Served) -> None:
    doc = manifest(
        [("a", "PassThrough", {}), ("b", "PassThrough", {}), ("c", "PassThrough", {})],
        [("a", "b"), ("b", "c")],
        executors={"a": "multiprocess", "b": "multiprocess", "c": "multiprocess"},
    )

    async def call() -> None:
        async with served.client() as client:
            await client.execute(doc, {"a": TextFrame(text="x")})

    with pytest.raises(ResourceLimitError, match=r"limits\.max_processes"):
        await served.aio(call)
    assert served.runtime.sessions == {}
    await still_serving(served)


@pytest.mark.parametrize("served", [{"limits": {"max_sessions": 1}}], indirect=True)
async def test_more_sessions_than_allowed_is_resource_limit(served: Served) -> None:
    """A stream holds the only session slot: a unary call and a second stream are refused."""

    async def scenario() -> tuple[pb.ErrorResponse, Exception]:
        async with served.client() as client, client.stream(UPPER) as stream:
            channel = client._channel
            stub = pb.PipelineExecutionServiceStub(channel)
            response = await stub.execute_pipeline(upper_request())
            refused: Exception | None = None
            try:
                async with client.stream(UPPER):
                    pass
            except ResourceLimitError as exc:
                refused = exc
            await stream.close()
            async for _ in stream:
                pass
            assert refused is not None
            return response.error, refused

    error, refused = await served.aio(scenario)
    assert error.error_type == pb.ErrorType.RESOURCE_LIMIT
    assert "limits.max_sessions" in error.message
    assert "limits.max_sessions" in str(refused)
    await still_serving(served)  # the slot is free again


# -- bad bytes on the wire ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"\x0a\xff", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x0a\x05abc"],
    ids=["truncated-length", "bad-varint", "short-field"],
)
async def test_undecodable_request_is_invalid_argument(served: Served, payload: bytes) -> None:
    for path, reply, name in [
        (EXECUTE_PATH, pb.ExecuteResponse, "ExecuteRequest"),
        (VERSION_PATH, pb.VersionResponse, "VersionRequest"),
    ]:
        with pytest.raises(GRPCError) as caught:
            await raw_unary(served, path, payload, reply)
        assert caught.value.status == Status.INVALID_ARGUMENT
        assert name in (caught.value.message or "")
    await still_serving(served)


@pytest.mark.parametrize("served", [{"server": {"max_message_bytes": 64 * 1024}}], indirect=True)
async def test_message_over_the_size_limit_is_refused(served: Served) -> None:
    request = pb.ExecuteRequest(
        manifest=manifest_to_proto(manifest([("src", "PassThrough", {})])),
        data_inputs={"src": audio_buffer(0.1, n=32 * 1024)},  # 128 KiB of samples
    )
    with pytest.raises(GRPCError) as caught:
        await execute_raw(served, request)
    assert caught.value.status == Status.RESOURCE_EXHAUSTED
    assert "65536" in (caught.value.message or "")
    await still_serving(served)
    # GetVersion needs no token: it must not take (and echo back) any size either
    with pytest.raises(GRPCError) as caught:
        await raw_unary(
            served, VERSION_PATH, pb.VersionRequest(client_version="1." + "9" * 100_000), pb.VersionResponse
        )
    assert caught.value.status == Status.RESOURCE_EXHAUSTED
    # just under the limit is fine
    request.data_inputs = {"src": audio_buffer(0.1, n=15 * 1024)}
    assert betterproto.which_one_of(await execute_raw(served, request), "outcome")[0] == "result"


# -- auth --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("served", [{"server": {"auth_token": "s3cret"}}], indirect=True)
async def test_bearer_token_auth(served: Served) -> None:
    for metadata, why in [
        (None, "missing"),
        ({"authorization": "Bearer wrong"}, "wrong"),
        ({"authorization": "Basic s3cret"}, "wrong"),
        ({"authorization": "Bearer"}, "wrong"),
    ]:
        error = error_of(await execute_raw(served, upper_request(), metadata))
        assert error.error_type == pb.ErrorType.AUTHENTICATION
        assert why in error.message

    async def with_client(token: str | None) -> Any:
        async with served.client(token=token) as client:
            version = await client.version()  # open without a token
            assert version.compatible
            return (await client.execute(UPPER, {"up": TextFrame(text="ok")})).outputs["up"].text

    assert await served.aio(with_client, "s3cret") == "OK"
    with pytest.raises(AuthenticationError, match="wrong bearer token"):
        await served.aio(with_client, "nope")

    async def stream_without_token() -> None:
        async with served.client() as client, client.stream(UPPER):
            pass

    with pytest.raises(AuthenticationError, match="missing bearer token"):
        await served.aio(stream_without_token)

    async def refused_many_times() -> int:
        """More refusals on one connection than HTTP/2 allows concurrent streams (100)."""
        refused = 0
        async with served.client() as client:
            for _ in range(120):
                try:
                    async with client.stream(UPPER):
                        pass
                except AuthenticationError:
                    refused += 1
        return refused

    with trio.fail_after(20):
        assert await served.aio(refused_many_times) == 120

    async def stream_with_token() -> list[str]:
        async with served.client(token="s3cret") as client, client.stream(UPPER) as stream:
            outs = await collect(stream, [("up", TextFrame(text="a")), ("up", TextFrame(text="b"))])
        return [o.frame.text for o in outs]

    assert await served.aio(stream_with_token) == ["A", "B"]


# -- health and reflection ---------------------------------------------------------------------------


async def test_health_reports_serving_then_not_serving_on_drain(served: Served) -> None:
    for service in ("", EXECUTION, STREAMING):
        assert await served.aio(health_status, served.port, service) == HealthCheckResponse.SERVING
    with pytest.raises(GRPCError) as caught:
        await served.aio(health_status, served.port, "no.such.Service")
    assert caught.value.status == Status.NOT_FOUND

    # Drain with a stream still running, so the server stays up while we look: a balancer's
    # health checker holding a connection sees NOT_SERVING; a new connection is refused.
    async def during_drain() -> tuple[list[int], BaseException | None]:
        checker = Channel("127.0.0.1", served.port)
        try:
            await HealthStub(checker).Check(HealthCheckRequest())  # the checker's connection is up
            async with served.client() as client, client.stream(UPPER) as stream:
                served.server.drain()
                statuses = [
                    (await HealthStub(checker).Check(HealthCheckRequest(service=s))).status
                    for s in ("", EXECUTION, STREAMING)
                ]
                try:
                    await health_status(served.port)
                    refused = None
                except ConnectionRefusedError as exc:
                    refused = exc
                await stream.close()
                async for _ in stream:
                    pass
        finally:
            checker.close()
        return statuses, refused

    statuses, refused = await served.aio(during_drain)
    assert statuses == [HealthCheckResponse.NOT_SERVING] * 3
    assert isinstance(refused, ConnectionRefusedError)


async def test_reflection_lists_services_and_resolves_descriptors(served: Served) -> None:
    from google.protobuf import descriptor_pb2

    async def ask(requests: list[Any], stub_type: Any) -> list[Any]:
        channel = Channel("127.0.0.1", served.port)
        try:
            async with stub_type(channel).ServerReflectionInfo.open() as stream:
                replies = []
                for request in requests:
                    await stream.send_message(request)
                    replies.append(await stream.recv_message())
                await stream.end()
        finally:
            channel.close()
        return replies

    for stub_type, request_type in [
        (ServerReflectionStub, ServerReflectionRequest),
        (V1AlphaReflectionStub, V1AlphaReflectionRequest),
    ]:
        listing, by_symbol, by_file, health, monitor, missing = await served.aio(
            ask,
            [
                request_type(list_services=""),
                request_type(file_containing_symbol=STREAMING),
                request_type(file_by_filename="remotemedia/v1/common.proto"),
                request_type(file_containing_symbol="grpc.health.v1.Health"),
                request_type(file_containing_symbol=MONITOR),
                request_type(file_containing_symbol="nope.Nope"),
            ],
            stub_type,
        )
        names = {s.name for s in listing.list_services_response.service}
        assert {EXECUTION, STREAMING, MONITOR, "grpc.health.v1.Health"} <= names, stub_type
        # The Monitor extension: a file and package of its own, importing nothing of remotemedia.v1.
        (monitor_file,) = monitor.file_descriptor_response.file_descriptor_proto
        monitor_proto = descriptor_pb2.FileDescriptorProto.FromString(monitor_file)
        assert (monitor_proto.name, monitor_proto.package) == (
            "nursery_pipes/v1/monitor.proto",
            "nursery_pipes.v1",
        )
        assert list(monitor_proto.dependency) == []
        assert [m.name for m in monitor_proto.service[0].method] == ["Snapshot", "Watch"]
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(blob)
            for blob in by_symbol.file_descriptor_response.file_descriptor_proto
        ]
        streaming = next(f for f in files if f.name == "remotemedia/v1/streaming.proto")
        assert [s.name for s in streaming.service] == ["StreamingPipelineService"]
        assert "remotemedia/v1/common.proto" in streaming.dependency
        (common,) = [
            descriptor_pb2.FileDescriptorProto.FromString(blob)
            for blob in by_file.file_descriptor_response.file_descriptor_proto
        ]
        assert common.package == "remotemedia.v1"
        assert "DataBuffer" in {m.name for m in common.message_type}
        (health_file,) = health.file_descriptor_response.file_descriptor_proto
        assert descriptor_pb2.FileDescriptorProto.FromString(health_file).service[0].name == "Health"
        assert missing.error_response.error_code == Status.NOT_FOUND.value


# -- TLS ---------------------------------------------------------------------------------------------


async def test_tls_serves_trusting_clients_and_plaintext_fails_cleanly(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    async with serving(server={"tls_cert": str(cert), "tls_key": str(key)}) as served:

        async def secure() -> str:
            async with Client(tls=client_tls_context(cert), address=served.address) as client:
                assert (await client.version()).compatible
                result = await client.execute(UPPER, {"up": TextFrame(text="tls")})
            return str(result.outputs["up"].text)

        async def plaintext() -> None:
            async with served.client() as client, asyncio.timeout(10):
                await client.version()

        assert await served.aio(secure) == "TLS"
        with pytest.raises(StreamTerminatedError, match="Connection lost"):  # fast, no hang
            await served.aio(plaintext)
        assert await served.aio(secure) == "TLS"  # still serving


# -- shutdown ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_serve_returns_and_closes_idle_client_connections(tmp_path: Path, tls: bool) -> None:
    """A client keeps its connection open across the server's drain: ``serve`` still returns,
    the connection is closed (the client's next call fails at once instead of hanging), and no
    socket outlives the server's loop."""
    server_kw: dict[str, Any] = {}
    context = None
    if tls:
        cert, key = self_signed_cert(tmp_path)
        server_kw = {"tls_cert": str(cert), "tls_key": str(key)}
        context = client_tls_context(cert)
    async with Runtime(make_config(server=server_kw)) as runtime, trio_asyncio.open_loop():
        async with trio.open_nursery() as nursery:
            server = Server(runtime)
            port = await nursery.start(server.serve)
            client = Client(tls=context, address=f"127.0.0.1:{port}")
            await trio_asyncio.aio_as_trio(client.__aenter__)()
            assert (await trio_asyncio.aio_as_trio(client.version)()).compatible
            server.drain()
        try:
            with trio.fail_after(5), pytest.raises((ConnectionError, StreamTerminatedError)):
                await trio_asyncio.aio_as_trio(client.version)()
        finally:
            await trio_asyncio.aio_as_trio(client.__aexit__)(None, None, None)
