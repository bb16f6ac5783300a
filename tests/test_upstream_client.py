"""What an existing remotemedia.v1 client sees: a grpcio client whose ``_pb2`` modules are
generated from our protos *without* the nursery_pipes extensions — upstream's protos.

Such a client knows none of our extension fields or oneof members. Init progress
(``StreamResponse`` field 6) reaches it as a response with no known member, which it
skips; everything else it must understand: every rejection and failure is ``error``
(field 3) with the right ``ErrorType`` and a message that names the node and the
sequence and says whether the stream goes on — the extension fields that say so in
numbers are invisible to it.

The requests are built here with our betterproto classes from upstream fields only;
the client parses each one with its own (stripped) classes and refuses any field it
does not know, so nothing here is something an upstream client could not send. It
runs in a subprocess, as in test_interop_grpcio.py (its generated modules must not meet
the test process's descriptor pool). Executors cannot be chosen by an upstream client
(``metadata.multiprocess`` is an extension): the server's ``[routing.explicit]`` puts
``Echo`` in a worker and the other nodes used here in the supervisor.
"""

from __future__ import annotations

import base64
import json
import sys
import textwrap
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import trio
from service_fixtures import Served, make_config, manifest, run_protoc, serving, write_stripped_protos

from nursery_pipes._config import RoutingConfig
from nursery_pipes._proto.remotemedia import v1 as pb
from nursery_pipes.service._execution import build_timestamp
from nursery_pipes.wire import manifest_to_proto

pytestmark = pytest.mark.timeout(90)

CLIENT = r'''
"""An upstream remotemedia.v1 client: python client.py GEN_DIR ADDRESS SCENARIO OPTIONS_JSON"""
import json
import sys
import threading

sys.path.insert(0, sys.argv[1])

import grpc
from google.protobuf import json_format
from remotemedia.v1 import execution_pb2, execution_pb2_grpc, streaming_pb2, streaming_pb2_grpc

ADDRESS, SCENARIO, OPTIONS = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])


def own(cls, hex_text):
    """A request the test built, as this client's own message; it may only use fields this
    client knows (an upstream client could not send anything else)."""
    message = cls.FromString(bytes.fromhex(hex_text))
    known = cls()
    known.CopyFrom(message)
    known.DiscardUnknownFields()
    assert known.ByteSize() == message.ByteSize(), f"{cls.__name__} uses fields upstream lacks"
    return message


def seen(message, group):
    """What this client sees: the known oneof member (None if none) and the known fields."""
    return {"which": message.WhichOneof(group), **json_format.MessageToDict(message, preserving_proto_field_name=True)}


def rpc_error(exc):
    return {"status": exc.code().name, "details": exc.details()}


def stream():
    stub = streaming_pb2_grpc.StreamingPipelineServiceStub(grpc.insecure_channel(ADDRESS))
    calls = []
    for requests in OPTIONS["streams"]:
        finished = threading.Event()

        def send(requests=requests, finished=finished):
            for item in requests:
                if item == "hold":  # keep the request stream open: no half-close
                    finished.wait(60)
                    return
                yield own(streaming_pb2.StreamRequest, item)

        got = []
        try:
            for response in stub.StreamPipeline(send(), timeout=60):
                got.append(seen(response, "response"))
            got.append({"status": "OK"})
        except grpc.RpcError as exc:
            got.append(rpc_error(exc))
        finally:
            finished.set()
        calls.append(got)
    return calls


def execute():
    stub = execution_pb2_grpc.PipelineExecutionServiceStub(grpc.insecure_channel(ADDRESS))
    out = []
    for hex_text in OPTIONS["requests"]:
        try:
            out.append(seen(stub.ExecutePipeline(own(execution_pb2.ExecuteRequest, hex_text), timeout=60), "outcome"))
        except grpc.RpcError as exc:
            out.append(rpc_error(exc))
    return out


def version():
    stub = execution_pb2_grpc.PipelineExecutionServiceStub(grpc.insecure_channel(ADDRESS))
    reply = stub.GetVersion(execution_pb2.VersionRequest(client_version="1.0"), timeout=10)
    return json_format.MessageToDict(reply, preserving_proto_field_name=True)


print(json.dumps(globals()[SCENARIO]()), flush=True)
'''


@pytest.fixture(scope="module")
def upstream_client(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(generated modules dir, client script): ``_pb2`` from the protos without extensions."""
    root = tmp_path_factory.mktemp("upstream_client")
    protos = write_stripped_protos(root / "protos")
    assert "session_continues" not in (protos / "remotemedia/v1/common.proto").read_text()
    gen = root / "gen"
    gen.mkdir()
    run_protoc(protos, f"--python_out={gen}", f"--grpc_python_out={gen}")
    script = root / "client.py"
    script.write_text(textwrap.dedent(CLIENT), encoding="utf-8")
    return gen, script


async def upstream(client: tuple[Path, Path], served: Served, scenario: str, **options: Any) -> Any:
    gen, script = client
    with trio.fail_after(80):
        done = await trio.run_process(
            [sys.executable, str(script), str(gen), served.address, scenario, json.dumps(options)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


ROUTING = RoutingConfig(
    explicit={"Echo": "multiprocess", "AudioGainNode": "inprocess", "SleepNode": "inprocess"}
)


@pytest.fixture(name="served")
async def served_fixture(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    """A server whose routing an upstream manifest can use; ``request.param``: server settings."""
    config = make_config(server=getattr(request, "param", None))
    async with serving(msgspec.structs.replace(config, routing=ROUTING)) as running:
        yield running


# -- requests, built from upstream fields only -------------------------------------------------------


def upstream_manifest(
    nodes: list[tuple[str, str, dict[str, Any]]], edges: Sequence[tuple[str, str]] = ()
) -> pb.PipelineManifest:
    return manifest_to_proto(manifest(nodes, edges, name="upstream"))  # no metadata.multiprocess


def init(doc: Any, **fields: Any) -> str:
    return bytes(pb.StreamRequest(init=pb.StreamInit(manifest=doc, client_version="1.0", **fields))).hex()


def chunk(node_id: str, buffer: pb.DataBuffer | None, seq: int, **fields: Any) -> str:
    if buffer is not None:
        fields["buffer"] = buffer
    return bytes(pb.StreamRequest(data_chunk=pb.DataChunk(node_id=node_id, sequence=seq, **fields))).hex()


def control(command: int) -> str:
    request = pb.StreamRequest(control=pb.StreamControl(command=pb.StreamControlCommand.COMMAND_CLOSE))
    request.control.command = command  # (betterproto would turn 7 into no enum member)
    return bytes(request).hex()


CLOSE = control(pb.StreamControlCommand.COMMAND_CLOSE)
HOLD = "hold"


def text(value: str) -> pb.DataBuffer:
    return pb.DataBuffer(text=pb.TextBuffer(text_data=value.encode(), encoding="utf-8"))


def audio(frames: int, channels: int = 1, rate: int = 16000, **fields: Any) -> pb.DataBuffer:
    samples = np.full(frames * channels, 0.25, dtype=np.float32).tobytes()
    fields.setdefault("num_samples", frames * channels)  # upstream: all channels together
    return pb.DataBuffer(
        audio=pb.AudioBuffer(
            samples=samples, sample_rate=rate, channels=channels, format=pb.AudioFormat.F32, **fields
        )
    )


def tensor(shape: list[int]) -> pb.DataBuffer:
    data = np.zeros(shape, dtype=np.float32).tobytes()
    return pb.DataBuffer(tensor=pb.TensorBuffer(data=data, shape=shape, dtype=pb.TensorDtype.F32))


# -- what the client saw ---------------------------------------------------------------------------


def members(responses: list[dict[str, Any]]) -> list[str | None]:
    """The oneof member of each response as the client saw it (None: a member it does not know)."""
    return [r["which"] for r in responses if "which" in r]


def after_ready(responses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything from StreamReady on; before it the client may only have skipped progress."""
    seen = members(responses)
    assert "ready" in seen, seen
    start = seen.index("ready")
    assert set(seen[:start]) <= {None}, f"before StreamReady: {seen[:start]}"
    rest = responses[start:]
    assert None not in members(rest), f"after StreamReady the client saw a response it cannot read: {rest}"
    return rest


def errors(responses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["error"] for r in responses if r.get("which") == "error"]


def results(responses: list[dict[str, Any]]) -> list[tuple[str, int, dict[str, Any]]]:
    return [
        (sink, int(r["result"].get("sequence", 0)), buffer)
        for r in responses
        if r.get("which") == "result"
        for sink, buffer in r["result"]["data_outputs"].items()
    ]


def ends_normally(responses: list[dict[str, Any]]) -> None:
    assert responses[-1] == {"status": "OK"}, responses[-1]
    assert responses[-2]["which"] == "closed"


# -- StreamPipeline ----------------------------------------------------------------------------------


async def test_every_rejection_is_an_error_and_the_session_goes_on(
    served: Served, upstream_client: tuple[Path, Path]
) -> None:
    doc = upstream_manifest(
        [
            ("up", "TextTransformNode", {"operation": "upper"}),
            ("tail", "PassThrough", {}),
            ("g", "AudioGainNode", {"gain_db": 0.0}),
            ("slow", "SleepNode", {"process_seconds": 0.3}),  # keeps the session busy past CLOSE
        ],
        [("up", "tail")],
    )
    second_init = init(doc)
    requests = [
        init(doc),
        chunk("up", text("a"), 1),
        chunk("up", text("again"), 1),
        chunk("ghost", text("x"), 2),
        chunk("tail", text("x"), 3),
        chunk("g", audio(160, num_samples=161), 4),
        chunk("g", text("not audio"), 5),
        chunk("up", text("x"), 6, named_buffers={"up": text("x")}),
        chunk("up", None, 7),
        second_init,
        bytes(pb.StreamRequest()).hex(),  # an empty request
        control(pb.StreamControlCommand.COMMAND_UNSPECIFIED),
        control(7),
        chunk("g", audio(160, channels=2), 8),  # stereo: num_samples = 320
        chunk("up", text("b"), 9),
        chunk("slow", text("z"), 10),
        CLOSE,
        chunk("up", text("late"), 11),
    ]
    (responses,) = await upstream(upstream_client, served, "stream", streams=[requests])
    rest = after_ready(responses)
    ends_normally(rest)

    expected = [
        ("ERROR_TYPE_VALIDATION", "DataChunk sequence 1 rejected", "sequence 1 does not increase"),
        ("ERROR_TYPE_VALIDATION", "DataChunk sequence 2 rejected", "unknown node 'ghost'"),
        ("ERROR_TYPE_VALIDATION", "DataChunk sequence 3 rejected", "node 'tail' is not an input"),
        ("ERROR_TYPE_TYPE_VALIDATION", "DataChunk sequence 4 rejected", "num_samples is 161"),
        ("ERROR_TYPE_TYPE_VALIDATION", "DataChunk sequence 5 rejected", "accepts audio frames, not text"),
        ("ERROR_TYPE_VALIDATION", "DataChunk sequence 6 rejected", "sets both of buffer / named_buffers"),
        ("ERROR_TYPE_VALIDATION", "DataChunk sequence 7 rejected", "sets neither of buffer / named_buffers"),
        ("ERROR_TYPE_VALIDATION", "a second StreamInit ignored", "already initialised"),
        ("ERROR_TYPE_VALIDATION", "an empty request ignored", "set one of init, data_chunk or control"),
        ("ERROR_TYPE_VALIDATION", "StreamControl ignored", "command 0 is not one of COMMAND_CLOSE=1"),
        ("ERROR_TYPE_VALIDATION", "StreamControl ignored", "command 7 is not one of COMMAND_CLOSE=1"),
        ("ERROR_TYPE_VALIDATION", "DataChunk sequence 11 rejected", "data after CLOSE"),
    ]
    seen = errors(rest)
    assert len(seen) == len(expected), json.dumps(seen, indent=1)
    for error, (error_type, what, why) in zip(seen, expected, strict=True):
        assert error["error_type"] == error_type, error
        assert error["message"].startswith(f"{what} (the stream goes on): "), error
        assert why in error["message"], error
    assert "node 'g' (AudioGainNode)" in seen[4]["message"]

    # The session went on: the good chunks came back, in order, after the rejections.
    outputs = {(sink, seq): buffer for sink, seq, buffer in results(rest)}
    assert sorted(outputs) == [("g", 8), ("slow", 10), ("tail", 1), ("tail", 9)]
    assert base64.b64decode(outputs["tail", 1]["text"]["text_data"]) == b"A"
    assert base64.b64decode(outputs["tail", 9]["text"]["text_data"]) == b"B"
    stereo = outputs["g", 8]["audio"]
    assert (stereo["channels"], stereo["num_samples"]) == (2, "320")  # all channels, as upstream counts
    assert rest[-2]["closed"]["reason"] == "closed"


async def test_a_first_message_that_is_not_stream_init_is_an_error_and_the_end(
    served: Served, upstream_client: tuple[Path, Path]
) -> None:
    doc = upstream_manifest([("up", "TextTransformNode", {})])
    streams = [[chunk("up", text("x"), 1), init(doc)], [bytes(pb.StreamRequest()).hex()], [CLOSE]]
    calls = await upstream(upstream_client, served, "stream", streams=streams)
    for responses, got in zip(calls, ["data_chunk", "an empty request", "control"], strict=True):
        assert members(responses) == ["error"], responses
        (error,) = errors(responses)
        assert error["error_type"] == "ERROR_TYPE_VALIDATION"
        assert f"the first message must be StreamInit, got {got}; stream ended" == error["message"]
        assert responses[-1] == {"status": "OK"}
    assert served.runtime.sessions == {}


async def test_stream_init_with_data_inputs_it_cannot_take_is_an_error_and_the_end(
    served: Served, upstream_client: tuple[Path, Path]
) -> None:
    doc = upstream_manifest([("g", "AudioGainNode", {})])
    streams = [[init(doc, data_inputs={"g": text("x")})], [init(doc, data_inputs={"ghost": audio(10)})]]
    calls = await upstream(upstream_client, served, "stream", streams=streams)
    for responses, (error_type, why) in zip(
        calls,
        [
            ("ERROR_TYPE_TYPE_VALIDATION", "node 'g' (AudioGainNode) accepts audio frames, not text"),
            ("ERROR_TYPE_VALIDATION", "input for unknown node 'ghost'"),
        ],
        strict=True,
    ):
        assert members(responses) == ["error"], responses
        (error,) = errors(responses)
        assert error["error_type"] == error_type
        assert why in error["message"]
        assert responses[-1] == {"status": "OK"}
    assert served.runtime.sessions == {}


@pytest.mark.parametrize("how", ["half-close", "close", "close-then-half-close"])
async def test_close_before_stream_ready_closes_once_ready(
    served: Served, upstream_client: tuple[Path, Path], how: str
) -> None:
    """grpcurl-style: StreamInit, then at once the end of input — before the nodes are ready."""
    doc = upstream_manifest([("slow", "SleepNode", {"init_seconds": 0.3})])
    requests = {
        "half-close": [init(doc)],
        "close": [init(doc), CLOSE, HOLD],
        "close-then-half-close": [init(doc), CLOSE],
    }[how]
    (responses,) = await upstream(upstream_client, served, "stream", streams=[requests])
    rest = after_ready(responses)
    assert members(rest) == ["ready", "closed"]
    ends_normally(rest)
    assert served.runtime.sessions == {}


async def test_frames_at_the_edge_of_shared_memory(
    served: Served, upstream_client: tuple[Path, Path]
) -> None:
    """Through an in-process node into a worker, and straight into a worker: empty frames
    travel; a tensor of 7 dimensions (the ring header holds 6) is rejected naming the node
    it was sent to and the worker it could not reach; the session goes on."""
    through = upstream_manifest([("src", "PassThrough", {}), ("w", "Echo", {})], [("src", "w")])
    direct = upstream_manifest([("w", "Echo", {})])
    streams = [
        [
            init(doc),
            chunk(source, audio(0), 1),
            chunk(source, tensor([0, 3]), 2),
            chunk(source, tensor([1] * 7), 3),
            chunk(source, text("after"), 4),
            CLOSE,
        ]
        for doc, source in [(through, "src"), (direct, "w")]
    ]
    calls = await upstream(upstream_client, served, "stream", streams=streams)
    for responses, source in zip(calls, ["src", "w"], strict=True):
        rest = after_ready(responses)
        ends_normally(rest)
        (error,) = errors(rest)
        assert error["error_type"] == "ERROR_TYPE_TYPE_VALIDATION"
        assert error["message"].startswith("DataChunk sequence 3 rejected (the stream goes on): ")
        assert f"input for node {source!r}" in error["message"]
        assert "a tensor of 7 dimensions cannot travel through shared memory" in error["message"]
        if source == "src":
            assert "worker node 'w'" in error["message"]
        outputs = {seq: buffer for sink, seq, buffer in results(rest) if sink == "w"}
        assert sorted(outputs) == [1, 2, 4]
        assert outputs[1]["audio"]["sample_rate"] == 16000  # 0 samples: no samples/num_samples set
        assert outputs[2]["tensor"]["shape"] == ["0", "3"]
        assert base64.b64decode(outputs[4]["text"]["text_data"]) == b"after"


UPSAMPLE = [("resample", "AudioResampleNode", {"target_rate": 1_000_000, "quality": "QQ"})]


@pytest.mark.parametrize("served", [{"max_message_bytes": 128 * 1024}], indirect=True)
async def test_outputs_over_a_limit_are_refused_naming_the_node(
    served: Served, upstream_client: tuple[Path, Path]
) -> None:
    """A few hundred bytes in, hundreds of KB out (×1000 in samples): an output over the server's
    max_message_bytes or the call's resource_limits.max_memory_bytes is RESOURCE_LIMIT naming the
    node — a rejection in a stream (later outputs still come), the answer of a unary call."""
    doc = upstream_manifest(UPSAMPLE)
    memory = pb.ResourceLimits(max_memory_bytes=20_000)
    streams = [
        [init(doc), chunk("resample", audio(100, rate=1000), 1), chunk("resample", audio(10, rate=1000), 2), CLOSE],
        [init(doc, resource_limits=memory), chunk("resample", audio(10, rate=1000), 1), chunk("resample", audio(1, rate=1000), 2), CLOSE],
    ]  # fmt: skip
    calls = await upstream(upstream_client, served, "stream", streams=streams)
    clauses = ["this server's max_message_bytes is 131072", "resource_limits.max_memory_bytes (20000)"]
    for responses, clause in zip(calls, clauses, strict=True):
        rest = after_ready(responses)
        ends_normally(rest)
        (error,) = errors(rest)
        assert error["error_type"] == "ERROR_TYPE_RESOURCE_LIMIT"
        assert error["failing_node_id"] == "resample"
        assert error["message"].startswith(
            "output of node 'resample' for sequence 1 not sent (the stream goes on)"
        )
        assert clause in error["message"]
        assert 2 in [seq for _, seq, _ in results(rest)]

    def request(frames: int, limits: pb.ResourceLimits | None = None) -> str:
        return bytes(
            pb.ExecuteRequest(
                manifest=doc,
                data_inputs={"resample": audio(frames, rate=1000)},
                resource_limits=limits or pb.ResourceLimits(),
                client_version="1.0",
            )
        ).hex()

    replies = await upstream(
        upstream_client, served, "execute", requests=[request(100), request(10, memory), request(10)]
    )
    for reply, clause in zip(replies[:2], clauses, strict=True):
        assert reply["which"] == "error", reply
        assert reply["error"]["error_type"] == "ERROR_TYPE_RESOURCE_LIMIT"
        assert "sink 'resample'" in reply["error"]["message"]
        assert clause in reply["error"]["message"]
    assert replies[2]["which"] == "result"
    assert served.runtime.sessions == {}


# -- ExecutePipeline and GetVersion --------------------------------------------------------------------


async def test_execute_pipeline_inputs(served: Served, upstream_client: tuple[Path, Path]) -> None:
    """A source without input is VALIDATION naming it (it answered SUCCESS with empty buffers);
    a frame of a kind the node does not take is TYPE_VALIDATION; a stereo buffer carries
    num_samples for all channels, in and out."""
    two = upstream_manifest([("a", "TextTransformNode", {"operation": "upper"}), ("g", "AudioGainNode", {})])

    def request(**inputs: pb.DataBuffer) -> str:
        return bytes(pb.ExecuteRequest(manifest=two, data_inputs=inputs, client_version="1.0")).hex()

    missing, wrong_kind, stereo = await upstream(
        upstream_client,
        served,
        "execute",
        requests=[
            request(a=text("x")),
            request(a=text("x"), g=text("not audio")),
            request(a=text("x"), g=audio(160, channels=2)),
        ],
    )
    assert missing["which"] == "error"
    assert missing["error"]["error_type"] == "ERROR_TYPE_VALIDATION"
    assert "no input for source node 'g'" in missing["error"]["message"]
    assert wrong_kind["which"] == "error"
    assert wrong_kind["error"]["error_type"] == "ERROR_TYPE_TYPE_VALIDATION"
    assert "node 'g' (AudioGainNode) accepts audio frames, not text" in wrong_kind["error"]["message"]
    assert stereo["which"] == "result"
    out = stereo["result"]["data_outputs"]["g"]["audio"]
    assert (out["channels"], out["num_samples"]) == (2, "320")
    assert base64.b64decode(stereo["result"]["data_outputs"]["a"]["text"]["text_data"]) == b"X"


async def test_get_version(served: Served, upstream_client: tuple[Path, Path]) -> None:
    reply = await upstream(upstream_client, served, "version")
    info = reply["version_info"]
    assert reply["compatible"] is True
    assert info["protocol_version"] == "v1"
    assert info["supported_protocols"] == ["v1"]  # protocol versions, not transports
    built = datetime.fromisoformat(info["build_timestamp"])
    assert info["build_timestamp"].endswith("Z")
    assert built <= datetime.now(UTC)
    assert info["build_timestamp"] == build_timestamp()  # the installed distribution's build time


@pytest.mark.parametrize("executor", ["inprocess", "multiprocess"])
async def test_a_server_that_restarts_failed_nodes_keeps_an_upstream_stream_going(
    upstream_client: tuple[Path, Path], executor: str
) -> None:
    """The server's runtime.toml [supervision] restarts failed nodes (an upstream manifest
    cannot carry a policy: that is an extension). The upstream client gets the results of
    every chunk but the two whose frames were lost, no error, and a normal end; the
    supervision events are responses it cannot read (an unknown oneof member), which it skips."""
    from nursery_pipes._config import SupervisionDefaults

    config = make_config()
    routing = RoutingConfig(explicit={**ROUTING.explicit, "RaiseNode": executor})
    config = msgspec.structs.replace(
        config, routing=routing, supervision=SupervisionDefaults(strategy="one_for_one", max_restarts=5)
    )
    doc = upstream_manifest([("flaky", "RaiseNode", {"phase": "process", "after_frames": 1})])
    requests = [init(doc), *(chunk("flaky", text(f"c{seq}"), seq) for seq in range(1, 5)), CLOSE]
    async with serving(config) as served:
        [responses] = await upstream(upstream_client, served, "stream", streams=[requests])
    seen = members(responses)
    start = seen.index("ready")
    assert [sequence for _, sequence, _ in results(responses)] == [1, 3]
    assert not errors(responses)
    # unreadable to it: 2 × (failed, dropped, restarted, and the fresh instance's progress: starting, ready)
    assert seen.count(None) - seen[:start].count(None) == 10
    ends_normally(responses)
