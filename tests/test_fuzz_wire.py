"""A fuzz and fault run over the wire, bounded in time, against a real server.

Every category sends what a broken or hostile client might — random bodies to every
method of every service, structurally valid messages full of garbage, deeply nested JSON,
oversized messages, streams that close or vanish while their nodes initialise — and holds
the server to three rules:

- no call ends with gRPC status UNKNOWN or INTERNAL, and no reply carries
  ``ErrorType.INTERNAL``: every outcome is one the client can act on;
- no traceback in the server's log (a client mistake is at most one line);
- nothing leaks (the autouse ``no_leaks`` fixture: processes, threads, /dev/shm).

Runs are reproducible: each category draws from ``random.Random(seed)``, and a failure
prints the case. ``NP_FUZZ_SCALE=20`` (for example) runs twenty times as many cases and
``NP_FUZZ_SEED=N`` draws other ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import betterproto
import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_pb2 import HealthCheckRequest
from service_fixtures import (
    ALL_METHOD_PATHS,
    EXECUTE_PATH,
    HEALTH_CHECK_PATH,
    HEALTH_WATCH_PATH,
    MONITOR_WATCH_PATH,
    REFLECTION_V1_PATH,
    REFLECTION_V1ALPHA_PATH,
    STREAM_PATH,
    VERSION_PATH,
    BytesCodec,
    Served,
    health_status,
    serving,
)

from nursery_pipes._proto.remotemedia import v1 as pb

SCALE = float(os.environ.get("NP_FUZZ_SCALE", "1"))
SEED = int(os.environ.get("NP_FUZZ_SEED", "0"))

pytestmark = pytest.mark.timeout(120 * max(1.0, SCALE))
LIMIT = 256 * 1024
"""The server's max_message_bytes in these runs: small, so 'oversized' is cheap to send."""


FORBIDDEN = {Status.UNKNOWN, Status.INTERNAL}
REPLY_TYPES: dict[str, type[betterproto.Message]] = {
    EXECUTE_PATH: pb.ExecuteResponse,
    VERSION_PATH: pb.VersionResponse,
    STREAM_PATH: pb.StreamResponse,
}


def describe(message: betterproto.Message) -> str:
    """A failing case, for the report (betterproto can't render enum values it doesn't know)."""
    try:
        return f"{message.to_dict()!r:.400}"
    except ValueError:
        return f"{type(message).__name__} bytes {bytes(message).hex()[:400]}"


def cases(n: int) -> int:
    return max(1, int(n * SCALE))


# -- the client side ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    path: str
    status: Status
    message: str
    replies: list[bytes] = field(default_factory=list)
    timed_out: bool = False

    def errors(self) -> list[Any]:
        """In-band ErrorResponses of our own services' replies."""
        reply_type = REPLY_TYPES.get(self.path)
        if reply_type is None:
            return []
        found = []
        for raw in self.replies:
            reply = reply_type().parse(raw)
            error = getattr(reply, "error", None)
            if error is not None and betterproto.serialized_on_wire(error):
                found.append(error)
        return found


async def call(
    channel: Channel,
    path: str,
    messages: list[bytes],
    *,
    ending: str = "half-close",
    read_for: float = 10.0,
    max_replies: int | None = None,
) -> Outcome:
    """Send ``messages`` on one call of ``path``, end it as ``ending`` says (half-close, open,
    reset), and read replies until the status (or ``read_for`` seconds, or ``max_replies``
    replies: a stream that stays open while the client does, like Health/Watch or
    Monitor/Watch, is not a hang)."""
    replies: list[bytes] = []
    async with channel.request(path, Cardinality.STREAM_STREAM, bytes, bytes) as stream:
        try:
            await stream.send_request()
            for i, message in enumerate(messages):
                last = i == len(messages) - 1
                await stream.send_message(message, end=last and ending == "half-close")
            if not messages and ending == "half-close":
                await stream.end()
            if ending == "reset":
                await stream.cancel()
                return Outcome(path, Status.CANCELLED, "reset by client")
            while True:
                reply = await asyncio.wait_for(stream.recv_message(), read_for)
                if reply is None:
                    break
                replies.append(reply)
                if max_replies is not None and len(replies) >= max_replies:  # it goes on answering
                    await stream.cancel()
                    return Outcome(path, Status.OK, "still open", replies, timed_out=True)
            await stream.recv_trailing_metadata()
        except TimeoutError:
            await stream.cancel()
            return Outcome(path, Status.OK, "still open", replies, timed_out=True)
        except GRPCError as exc:
            return Outcome(path, exc.status, exc.message or "", replies)
        except StreamTerminatedError as exc:  # the server reset the stream after its status
            return Outcome(path, Status.CANCELLED, str(exc), replies)
    return Outcome(path, Status.OK, "", replies)


@dataclass
class Judge:
    """Collects violations of the rules, with the case that caused each."""

    served: Served
    violations: list[str] = field(default_factory=list)
    calls: int = 0

    def check(self, outcome: Outcome, case: str, *, may_stay_open: bool = False) -> None:
        self.calls += 1
        if outcome.status in FORBIDDEN:
            self.violations.append(f"{case}: {outcome.path} ended {outcome.status.name}: {outcome.message}")
        for error in outcome.errors():
            if error.error_type == pb.ErrorType.INTERNAL:
                self.violations.append(f"{case}: {outcome.path} replied INTERNAL: {error.message}")
        if outcome.timed_out and not may_stay_open:
            self.violations.append(f"{case}: {outcome.path} hung (no status after the client finished)")

    def verdict(self, caplog: pytest.LogCaptureFixture) -> None:
        traced = [
            f"{r.name}: {r.getMessage()}"
            for r in caplog.records
            if r.exc_info or "Traceback" in r.getMessage()
        ]
        assert not self.violations, "\n".join(self.violations[:20])
        assert not traced, "tracebacks in the server log:\n" + "\n".join(traced[:10])


@pytest.fixture
async def fuzz_server() -> Any:
    async with serving(
        server={"max_message_bytes": LIMIT, "stall_timeout_secs": 5.0}, limits={"max_sessions": 16}
    ) as served:
        yield served


async def run_cases(
    served: Served, caplog: pytest.LogCaptureFixture, scenario: Callable[[Channel, Judge], Any]
) -> Judge:
    caplog.set_level(logging.INFO)
    judge = Judge(served)

    async def body() -> None:
        channel = Channel("127.0.0.1", served.port, codec=BytesCodec())  # type: ignore[arg-type]
        try:
            await scenario(channel, judge)
        finally:
            channel.close()

    await served.aio(body)
    # The server is alive and well after all of it.
    assert await served.aio(health_status, served.port, "") == 1
    judge.verdict(caplog)
    return judge


# -- generators ---------------------------------------------------------------------------------------

NODE_TYPES = [
    "PassThrough",
    "Echo",
    "TextTransformNode",
    "AudioResampleNode",
    "AudioChunkerNode",
    "JsonTransformNode",
    "CalculatorNode",
    "RaiseNode",
    "SleepNode",
    "",
    "NoSuchNode",
    "os.system",
    "../../etc/passwd",
    "PassThrough\x00",
]
BIG = [0, 1, 2, 3, 255, 65535, 2**31 - 1, 2**32 - 1]
BIG64 = [*BIG, 2**53 + 1, 2**63 - 1, 2**64 - 1]


def deep_json(depth: int, kind: str = "list") -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


def rand_text(r: random.Random, n: int = 40) -> str:
    alphabet = 'abcXYZ_-09 \u00e9\u4e2d\U0001f600"\\{}[]:,\x00\n'
    return "".join(r.choice(alphabet) for _ in range(r.randint(0, n)))


def rand_params(r: random.Random) -> str:
    return r.choice(
        [
            "",
            "{}",
            "[]",
            "null",
            "not json",
            '{"operation": "upper"}',
            '{"operation": 5}',
            '{"target_rate": 1000000}',
            '{"target_rate": -1}',
            '{"chunk_size": 0}',
            '{"seconds": 1e308}',
            '{"seconds": -1}',
            '{"message": "boom"}',
            '{"unknown": 1}',
            '{"a": ' * 50,
            deep_json(r.choice([100, 5000])),
            deep_json(r.choice([100, 5000]), "object"),
            json.dumps({rand_text(r, 8): rand_text(r)}),
        ]
    )


def rand_manifest(r: random.Random) -> pb.PipelineManifest:
    ids = [r.choice(["a", "b", "c", "in", "x" * 300, "bad id", "", "a"]) for _ in range(r.randint(0, 4))]
    nodes = [
        pb.NodeManifest(
            id=nid,
            node_type=r.choice(NODE_TYPES),
            params=rand_params(r),
            host=r.choice(["", "", "", "example.com:1", "nonsense"]),
            is_streaming=r.random() < 0.2,
            runtime_hint=pb.RuntimeHint(r.choice([0, 1, 2, 4])),
            input_types=[pb.DataTypeHint(r.randint(0, 7)) for _ in range(r.randint(0, 2))],
        )
        for nid in ids
    ]
    if nodes and r.random() < 0.3:
        nodes[0].capabilities = pb.CapabilityRequirements(
            gpu=pb.GpuRequirement(type=r.choice(["cuda", "tpu", ""]), min_memory_gb=r.choice([-1.0, 1e308])),
            cpu=pb.CpuRequirement(cores=r.choice(BIG), arch=r.choice(["x86_64", "z80"])),
            memory_gb=r.choice([0.0, -5.0, float("inf"), float("nan")]),
        )
    connections = [
        pb.Connection(from_=r.choice([*ids, "ghost"]), to=r.choice([*ids, "ghost"]))
        for _ in range(r.randint(0, 3))
    ]
    metadata = pb.ManifestMetadata(name=r.choice(["fuzz", "", "n" * 300, rand_text(r)]))
    if r.random() < 0.3:
        metadata.extra_json = r.choice(["{}", "[]", "nope", '{"k": 1}', deep_json(5000, "object")])
    if r.random() < 0.3:
        metadata.multiprocess = pb.MultiprocessConfig(
            max_processes_per_session=r.choice(BIG),
            channel_capacity=r.choice(BIG),
            init_timeout_secs=r.choice(BIG),
            python_executable=r.choice(["", "python3", "/bin/sh"]),
            executor_overrides={
                r.choice([*ids, "ghost"]): r.choice(["inprocess", "multiprocess", "gpu", ""])
            },
        )
    return pb.PipelineManifest(
        version=r.choice(["v1", "v1", "v1", "v2", "", "V1"]),
        metadata=metadata,
        nodes=nodes,
        connections=connections,
    )


def valid_manifest(
    node_type: str = "PassThrough", params: str = "{}", node_id: str = "in"
) -> pb.PipelineManifest:
    return pb.PipelineManifest(
        version="v1",
        metadata=pb.ManifestMetadata(name="fuzz"),
        nodes=[pb.NodeManifest(id=node_id, node_type=node_type, params=params)],
    )


def rand_audio(r: random.Random, data: bytes) -> pb.AudioBuffer:
    return pb.AudioBuffer(
        samples=data,
        sample_rate=r.choice([0, 1, 8000, 16000, 48000, 2**32 - 1]),
        channels=r.choice([0, 1, 2, 3, 255, 2**32 - 1]),
        format=r.randint(0, 5),  # enum values the server doesn't know, too
        num_samples=r.choice(BIG64),
    )


def rand_buffer(r: random.Random) -> pb.DataBuffer:
    data = r.randbytes(r.choice([0, 1, 2, 3, 4, 7, 8, 64, 640, 4096]))
    kind = r.choice(["audio", "video", "tensor", "json", "text", "binary", "none"])
    metadata = {rand_text(r, 5): rand_text(r, 5)} if r.random() < 0.2 else {}
    if kind == "audio":
        return pb.DataBuffer(audio=rand_audio(r, data), metadata=metadata)
    if kind == "video":
        return pb.DataBuffer(
            video=pb.VideoFrame(
                pixel_data=data,
                width=r.choice(BIG),
                height=r.choice(BIG),
                format=r.randint(0, 6),
                frame_number=r.choice(BIG64),
                timestamp_us=r.choice(BIG64),
            )
        )
    if kind == "tensor":
        return pb.DataBuffer(
            tensor=pb.TensorBuffer(
                data=data,
                shape=[r.choice([0, 1, 2, 3, 4, 2**32, 2**63, 2**64 - 1]) for _ in range(r.randint(0, 9))],
                dtype=r.randint(0, 7),
                layout=rand_text(r, 6),
            )
        )
    if kind == "json":
        payload = r.choice(
            [
                "{}",
                "null",
                "[1, 2",
                rand_text(r),
                deep_json(r.choice([100, 10_000])),
                deep_json(10_000, "object"),
                '{"x": 1e999}',
                '"\\ud800"',
            ]
        )
        return pb.DataBuffer(json=pb.JsonData(json_payload=payload, schema_type=rand_text(r, 6)))
    if kind == "text":
        return pb.DataBuffer(
            text=pb.TextBuffer(
                text_data=r.choice([data, rand_text(r).encode(), b"\xff\xfe"]),
                encoding=r.choice(["", "utf-8", "latin-1", "utf-16", "rot13", "nonsense"]),
                language=rand_text(r, 5),
            )
        )
    if kind == "binary":
        return pb.DataBuffer(binary=pb.BinaryBuffer(data=data, mime_type=rand_text(r, 10)))
    return pb.DataBuffer(metadata=metadata)


def rand_limits(r: random.Random) -> pb.ResourceLimits:
    return pb.ResourceLimits(
        max_memory_bytes=r.choice([0, 0, 1, 100, *BIG64]),
        max_timeout_ms=r.choice([0, 0, 0, 1, 5000, *BIG64]),
        max_audio_samples=r.choice([0, 0, 1, *BIG64]),
    )


def rand_execute(r: random.Random) -> pb.ExecuteRequest:
    manifest = rand_manifest(r) if r.random() < 0.6 else valid_manifest(r.choice(["PassThrough", "Echo"]))
    keys = [n.id for n in manifest.nodes] + ["ghost", ""]
    return pb.ExecuteRequest(
        manifest=manifest,
        data_inputs={r.choice(keys): rand_buffer(r) for _ in range(r.randint(0, 3))},
        resource_limits=rand_limits(r),
        client_version=r.choice(["", "1.0", "v1", "2.0", "garbage", "1." + "9" * 50]),
    )


def rand_stream(r: random.Random) -> list[pb.StreamRequest]:
    """A random conversation: usually an init first, then chunks, controls and garbage."""
    requests: list[pb.StreamRequest] = []
    if r.random() < 0.85:
        manifest = valid_manifest(r.choice(["PassThrough", "Echo"])) if r.random() < 0.6 else rand_manifest(r)
        requests.append(
            pb.StreamRequest(
                init=pb.StreamInit(
                    manifest=manifest,
                    data_inputs={"in": rand_buffer(r)} if r.random() < 0.2 else {},
                    resource_limits=rand_limits(r) if r.random() < 0.3 else pb.ResourceLimits(),
                    client_version=r.choice(["", "1.0", "3"]),
                    expected_chunk_size=r.choice(BIG64),
                )
            )
        )
    seq = 0
    for _ in range(r.randint(0, 6)):
        choice = r.random()
        seq = min(r.choice([seq + 1, seq + 1, seq + 1, seq, max(seq - 1, 0), 2**64 - 1]), 2**64 - 1)
        if choice < 0.55:
            chunk = pb.DataChunk(node_id=r.choice(["in", "in", "ghost", ""]), sequence=seq)
            if r.random() < 0.85:
                chunk.buffer = rand_buffer(r)
            if r.random() < 0.15:
                chunk.named_buffers = {r.choice(["in", "ghost"]): rand_buffer(r)}
            requests.append(pb.StreamRequest(data_chunk=chunk))
        elif choice < 0.65:
            with warnings.catch_warnings():  # AudioChunk is deprecated: upstream clients still send it
                warnings.simplefilter("ignore", DeprecationWarning)
                requests.append(
                    pb.StreamRequest(
                        audio_chunk=pb.AudioChunk(
                            node_id="in",
                            buffer=rand_audio(r, r.randbytes(r.choice([0, 3, 640]))),
                            sequence=seq,
                        )
                    )
                )
        elif choice < 0.8:
            requests.append(pb.StreamRequest(control=pb.StreamControl(command=r.randint(0, 3))))
        elif choice < 0.9:
            requests.append(pb.StreamRequest(init=pb.StreamInit(manifest=rand_manifest(r))))
        else:
            requests.append(pb.StreamRequest())
    return requests


# -- 1. random bodies --------------------------------------------------------------------------------


def random_bodies(r: random.Random, n: int) -> Iterator[bytes]:
    for _ in range(n):
        shape = r.random()
        if shape < 0.4:
            yield r.randbytes(r.randint(0, 64))
        elif shape < 0.7:
            yield r.randbytes(r.randint(64, 4096))
        else:  # valid-looking tag/length prefixes with garbage after them
            field_no = r.randint(1, 20)
            wire = r.choice([0, 1, 2, 5])
            yield bytes([(field_no << 3) | wire]) + r.randbytes(r.randint(0, 200))


async def test_random_bodies_to_every_method(fuzz_server: Served, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(channel: Channel, judge: Judge) -> None:
        r = random.Random(SEED + 1)
        for i, body in enumerate(random_bodies(r, cases(60))):
            for path in ALL_METHOD_PATHS:
                # A Monitor/Watch that decodes its body sends a snapshot every interval, for good.
                cap = 2 if path == MONITOR_WATCH_PATH else None
                outcome = await call(channel, path, [body], read_for=3.0, max_replies=cap)
                judge.check(
                    outcome,
                    f"random body #{i} {body[:32]!r}",
                    may_stay_open=path in (HEALTH_WATCH_PATH, MONITOR_WATCH_PATH),
                )

    judge = await run_cases(fuzz_server, caplog, scenario)
    assert judge.calls == cases(60) * len(ALL_METHOD_PATHS)


# -- 2. structured garbage ---------------------------------------------------------------------------


async def test_structured_garbage_execute_and_version(
    fuzz_server: Served, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(channel: Channel, judge: Judge) -> None:
        r = random.Random(SEED + 2)
        for i in range(cases(150)):
            request = rand_execute(r)
            outcome = await call(channel, EXECUTE_PATH, [bytes(request)])
            judge.check(outcome, f"execute #{i}: {describe(request)}")
            version = pb.VersionRequest(client_version=rand_text(r))
            judge.check(await call(channel, VERSION_PATH, [bytes(version)]), f"version #{i}")

    await run_cases(fuzz_server, caplog, scenario)


async def test_structured_garbage_streams(fuzz_server: Served, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(channel: Channel, judge: Judge) -> None:
        r = random.Random(SEED + 3)
        for i in range(cases(120)):
            requests = rand_stream(r)
            ending = r.choice(["half-close", "half-close", "half-close", "reset"])
            outcome = await call(channel, STREAM_PATH, [bytes(q) for q in requests], ending=ending)
            case = f"stream #{i} ({ending}): {[describe(q) for q in requests]}"
            judge.check(outcome, case)

    await run_cases(fuzz_server, caplog, scenario)


async def test_health_and_reflection_garbage(fuzz_server: Served, caplog: pytest.LogCaptureFixture) -> None:
    from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest

    async def scenario(channel: Channel, judge: Judge) -> None:
        r = random.Random(SEED + 4)
        for i in range(cases(60)):
            service = r.choice(["", "remotemedia.v1.StreamingPipelineService", rand_text(r), "x" * 10_000])
            body = HealthCheckRequest(service=service).SerializeToString()
            judge.check(await call(channel, HEALTH_CHECK_PATH, [body]), f"health #{i}")
            judge.check(
                await call(channel, HEALTH_WATCH_PATH, [body], read_for=0.2),
                f"watch #{i}",
                may_stay_open=True,
            )
            request = r.choice(
                [
                    ServerReflectionRequest(file_by_filename=rand_text(r)),
                    ServerReflectionRequest(file_containing_symbol=rand_text(r)),
                    ServerReflectionRequest(list_services=rand_text(r)),
                    ServerReflectionRequest(host=rand_text(r)),
                    ServerReflectionRequest(all_extension_numbers_of_type=rand_text(r)),
                ]
            )
            for path in (REFLECTION_V1_PATH, REFLECTION_V1ALPHA_PATH):
                outcome = await call(channel, path, [request.SerializeToString()] * r.randint(1, 3))
                judge.check(outcome, f"reflection #{i}: {request}")

    await run_cases(fuzz_server, caplog, scenario)


# -- 3. nesting ------------------------------------------------------------------------------------------


async def test_deeply_nested_json_is_a_validation_error(
    fuzz_server: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """10,000 levels in params, metadata.extra_json and a JsonData chunk: an error that names the
    place (VALIDATION or TYPE_VALIDATION), never a RecursionError."""
    deep = deep_json(10_000)

    async def scenario(channel: Channel, judge: Judge) -> None:
        manifest = valid_manifest(params=deep)
        outcome = await call(channel, EXECUTE_PATH, [bytes(pb.ExecuteRequest(manifest=manifest))])
        judge.check(outcome, "deep params")
        (error,) = outcome.errors()
        assert error.error_type == pb.ErrorType.VALIDATION, error
        assert "nodes[0].params" in error.message

        manifest = valid_manifest()
        manifest.metadata.extra_json = deep_json(10_000, "object")
        outcome = await call(channel, EXECUTE_PATH, [bytes(pb.ExecuteRequest(manifest=manifest))])
        judge.check(outcome, "deep extra_json")
        (error,) = outcome.errors()
        assert error.error_type == pb.ErrorType.VALIDATION, error
        assert "metadata" in error.message

        request = pb.ExecuteRequest(
            manifest=valid_manifest(), data_inputs={"in": pb.DataBuffer(json=pb.JsonData(json_payload=deep))}
        )
        outcome = await call(channel, EXECUTE_PATH, [bytes(request)])
        judge.check(outcome, "deep JsonData input")
        (error,) = outcome.errors()
        assert error.error_type in (pb.ErrorType.VALIDATION, pb.ErrorType.TYPE_VALIDATION), error

        init = pb.StreamRequest(init=pb.StreamInit(manifest=valid_manifest()))
        chunk = pb.StreamRequest(
            data_chunk=pb.DataChunk(
                node_id="in", sequence=1, buffer=pb.DataBuffer(json=pb.JsonData(json_payload=deep))
            )
        )
        outcome = await call(channel, STREAM_PATH, [bytes(init), bytes(chunk)])
        judge.check(outcome, "deep JsonData chunk")
        kinds = [
            betterproto.which_one_of(pb.StreamResponse().parse(x), "response")[0] for x in outcome.replies
        ]
        assert "error" in kinds, kinds  # rejected...
        assert kinds[-1] == "closed", kinds  # ...and the stream went on

    await run_cases(fuzz_server, caplog, scenario)


# -- 4. oversize ------------------------------------------------------------------------------------------


async def test_oversized_messages_and_replies(fuzz_server: Served, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(channel: Channel, judge: Judge) -> None:
        r = random.Random(SEED + 5)
        for path in ALL_METHOD_PATHS:
            body = r.randbytes(LIMIT + 1)
            outcome = await call(channel, path, [body])
            judge.check(outcome, f"oversized body to {path}")
            assert outcome.status == Status.RESOURCE_EXHAUSTED, (path, outcome)

        # A small input whose output is far larger than the server's message limit.
        manifest = valid_manifest("AudioResampleNode", '{"target_rate": 1000000}', node_id="in")
        audio = pb.DataBuffer(
            audio=pb.AudioBuffer(
                samples=bytes(4 * 3200), sample_rate=8000, channels=1, format=pb.AudioFormat.F32
            )
        )
        outcome = await call(
            channel, EXECUTE_PATH, [bytes(pb.ExecuteRequest(manifest=manifest, data_inputs={"in": audio}))]
        )
        judge.check(outcome, "execute reply over the limit")
        (error,) = outcome.errors()
        assert error.error_type == pb.ErrorType.RESOURCE_LIMIT, error
        assert "in" in error.message

        init = pb.StreamRequest(init=pb.StreamInit(manifest=manifest))
        chunk = pb.StreamRequest(data_chunk=pb.DataChunk(node_id="in", sequence=1, buffer=audio))
        outcome = await call(channel, STREAM_PATH, [bytes(init), bytes(chunk)])
        judge.check(outcome, "stream reply over the limit")
        errors = outcome.errors()
        assert errors, outcome
        assert errors[0].error_type == pb.ErrorType.RESOURCE_LIMIT, errors

    await run_cases(fuzz_server, caplog, scenario)


# -- 5. close, cancel and vanish while nodes initialise ---------------------------------------------------


@pytest.mark.parametrize("ending", ["close", "half-close", "cancel", "reset"])
async def test_streams_that_end_while_nodes_initialise(
    fuzz_server: Served, caplog: pytest.LogCaptureFixture, ending: str
) -> None:
    """A worker node takes a while to start; the client ends the stream before StreamReady."""
    manifest = pb.PipelineManifest(
        version="v1",
        metadata=pb.ManifestMetadata(
            name="slow-init", multiprocess=pb.MultiprocessConfig(executor_overrides={"in": "multiprocess"})
        ),
        nodes=[pb.NodeManifest(id="in", node_type="PassThrough", params="{}")],
    )
    init = bytes(pb.StreamRequest(init=pb.StreamInit(manifest=manifest)))
    command = {
        "close": pb.StreamControlCommand.COMMAND_CLOSE,
        "cancel": pb.StreamControlCommand.COMMAND_CANCEL,
    }

    async def scenario(channel: Channel, judge: Judge) -> None:
        for i in range(cases(5)):
            messages = [init]
            if ending in command:
                messages.append(bytes(pb.StreamRequest(control=pb.StreamControl(command=command[ending]))))
            outcome = await call(
                channel, STREAM_PATH, messages, ending="reset" if ending == "reset" else "half-close"
            )
            judge.check(outcome, f"{ending} during init #{i}")
            if ending == "reset":
                continue
            assert outcome.status == Status.OK, outcome
            kinds = [
                betterproto.which_one_of(pb.StreamResponse().parse(x), "response")[0] for x in outcome.replies
            ]
            assert kinds[-1] == "closed", kinds
            assert "error" not in kinds, kinds

    await run_cases(fuzz_server, caplog, scenario)
    with trio.fail_after(10):
        while fuzz_server.runtime.sessions:  # noqa: ASYNC110  (the reset sessions, too, end)
            await trio.sleep(0.05)
