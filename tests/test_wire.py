"""wire/_convert.py, sans-I/O: the conventions the gRPC API documents (docs/design.md §7),
for both message implementations (betterproto for clients, upb for the server)."""

from __future__ import annotations

import betterproto
import numpy as np
import pytest

from nursery_pipes import AudioFrame, FrameError, FrameKindError, InputError
from nursery_pipes._proto.remotemedia import v1 as pb
from nursery_pipes.client import rejection
from nursery_pipes.wire import (
    SUPERVISION_EVENT_KINDS,
    buffer_to_frame,
    error_response,
    frame_to_buffer,
    frames_to_buffer,
    manifest_from_proto,
    manifest_to_proto,
    supervision_event_to_proto,
)
from nursery_pipes.wire._messages import BETTERPROTO, UPB, Messages

NAMESPACES = pytest.mark.parametrize("ns", [BETTERPROTO, UPB], ids=["betterproto", "upb"])


def stereo(frames: int, value: float = 0.25) -> AudioFrame:
    return AudioFrame(samples=np.full((frames, 2), value, dtype=np.float32), sample_rate=48000)


@NAMESPACES
def test_num_samples_counts_every_channel_on_output(ns: Messages) -> None:
    """upstream common.proto: "Total number of samples (including all channels)"."""
    buffer = frame_to_buffer(stereo(160), ns)
    assert buffer.audio.channels == 2
    assert buffer.audio.num_samples == 320
    joined = frames_to_buffer("sink", [stereo(100), stereo(60)], ns)
    assert joined.audio.num_samples == 320


@NAMESPACES
def test_num_samples_counts_every_channel_on_input(ns: Messages) -> None:
    def buffer(num_samples: int) -> object:
        return ns.DataBuffer(
            audio=ns.AudioBuffer(
                samples=np.zeros(320, dtype=np.float32).tobytes(),
                sample_rate=48000,
                channels=2,
                format=int(pb.AudioFormat.F32),
                num_samples=num_samples,
            )
        )

    frame = buffer_to_frame(buffer(320))
    assert isinstance(frame, AudioFrame)
    assert (frame.num_samples, frame.channels) == (160, 2)
    assert buffer_to_frame(buffer(0)) == frame  # unset: the bytes decide
    with pytest.raises(FrameError, match=r"num_samples is 160 but the 1280 bytes hold 320 samples"):
        buffer_to_frame(buffer(160), "data_chunk.buffer")  # the per-channel count is not it


@NAMESPACES
def test_a_frame_of_the_wrong_kind_is_type_validation(ns: Messages) -> None:
    error = error_response(FrameKindError("node 'g' (AudioGainNode) accepts audio frames, not text"), ns)
    assert error.error_type == pb.ErrorType.TYPE_VALIDATION
    assert "accepts audio frames" in error.message
    assert error_response(InputError("input for unknown node 'x'"), ns).error_type == pb.ErrorType.VALIDATION


def test_client_tells_a_rejection_from_a_fatal_error_on_new_and_old_servers() -> None:
    fatal = pb.StreamResponse(error=pb.ErrorResponse(error_type=pb.ErrorType.NODE_EXECUTION))
    assert rejection(fatal) is None
    assert rejection(pb.StreamResponse(closed=pb.StreamClosed())) is None
    new = pb.ErrorResponse(error_type=pb.ErrorType.VALIDATION, failing_sequence=0, session_continues=True)
    assert rejection(pb.StreamResponse(error=new)) == new
    with pytest.warns(DeprecationWarning, match="stream_error is deprecated"):
        old = pb.StreamResponse(  # what servers sent before the ErrorResponse extensions
            stream_error=pb.StreamErrorResponse(
                base_error=pb.ErrorResponse(error_type=pb.ErrorType.VALIDATION, message="ghost"),
                stream_error_type=pb.StreamErrorType.STREAM_ERROR_INVALID_SEQUENCE,
                failing_sequence=4,
            )
        )
    converted = rejection(pb.StreamResponse().parse(bytes(old)))
    assert converted is not None
    assert (converted.message, converted.failing_sequence, converted.session_continues) == ("ghost", 4, True)
    assert converted.stream_error_type == pb.StreamErrorType.STREAM_ERROR_INVALID_SEQUENCE


def test_multiprocess_settings_cross_the_wire_both_ways() -> None:
    """Every metadata.multiprocess setting survives manifest → wire → manifest, the close
    timeout included (it has its own field in MultiprocessConfig)."""
    multiprocess = {
        "max_processes_per_session": 3,
        "channel_capacity": 7,
        "init_timeout_secs": 5,
        "close_timeout_secs": 9,
        "python_executable": "python3",
        "enable_backpressure": False,
        "executor_overrides": {"a": "inprocess"},
        "fuse_chains": False,  # false is a value (the server's default may be true)
    }
    doc = {
        "version": "v1",
        "metadata": {"name": "wire", "multiprocess": multiprocess},
        "nodes": [{"id": "a", "node_type": "PassThrough", "params": {}}],
        "connections": [],
    }
    wire = UPB.PipelineManifest.FromString(bytes(manifest_to_proto(doc)))
    assert manifest_from_proto(wire)["metadata"]["multiprocess"] == multiprocess
    for fuse in (True, None):  # unset stays unset
        doc["metadata"]["multiprocess"] = (
            {"fuse_chains": fuse} if fuse is not None else {"channel_capacity": 7}
        )
        back = manifest_from_proto(UPB.PipelineManifest.FromString(bytes(manifest_to_proto(doc))))
        assert back["metadata"]["multiprocess"].get("fuse_chains") is fuse


# -- supervision -------------------------------------------------------------------------------------


def supervised(supervision: object = "absent", restart: str | None = None) -> dict[str, object]:
    metadata: dict[str, object] = {"name": "wire"}
    if supervision != "absent":
        metadata["supervision"] = supervision
    node: dict[str, object] = {"id": "a", "node_type": "PassThrough", "params": {}}
    if restart is not None:
        node["restart"] = restart
    return {"version": "v1", "metadata": metadata, "nodes": [node], "connections": []}


@pytest.mark.parametrize(
    "supervision",
    [
        {"strategy": "rest_for_one", "max_restarts": 7, "within_secs": 2.5},
        {},  # a policy of defaults: must stay a policy, not become "no policy"
        {"max_restarts": 0},  # 0 is a value, not "unset"
        {"strategy": "one_for_all"},
        {"within_secs": 30.0},
    ],
)
@NAMESPACES
def test_supervision_crosses_the_wire_as_written(ns: Messages, supervision: dict[str, object]) -> None:
    doc = supervised(supervision, restart="temporary")
    wire = bytes(manifest_to_proto(doc))
    parsed = UPB.PipelineManifest.FromString(wire) if ns is UPB else pb.PipelineManifest().parse(wire)
    back = manifest_from_proto(parsed)
    assert back["metadata"]["supervision"] == supervision
    assert back["nodes"][0]["restart"] == "temporary"
    assert "supervision" not in back["metadata"].get("extra_json", "")


@NAMESPACES
def test_no_supervision_and_no_restart_stay_unset(ns: Messages) -> None:
    for doc in (supervised(), supervised(None)):  # null is "not set", as in a file
        wire = bytes(manifest_to_proto(doc))
        parsed = UPB.PipelineManifest.FromString(wire) if ns is UPB else pb.PipelineManifest().parse(wire)
        back = manifest_from_proto(parsed)
        assert "supervision" not in back["metadata"]
        assert "restart" not in back["nodes"][0]


@NAMESPACES
def test_supervision_from_the_wire_is_validated_at_json_paths(ns: Messages) -> None:
    from nursery_pipes import Manifest, ManifestError

    manifest = ns.PipelineManifest(
        version="v1",
        metadata=ns.ManifestMetadata(
            name="w", supervision=ns.SupervisionConfig(strategy="one-for-one", max_restarts=5000)
        ),
        nodes=[ns.NodeManifest(id="a", node_type="PassThrough", restart="forever")],
    )
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(manifest_from_proto(manifest))
    assert [(i.path, i.message) for i in info.value.issues] == [
        ("metadata.supervision.max_restarts", "must be ≤ 1000, got 5000"),
        (
            "metadata.supervision.strategy",
            'must be one of "one_for_one", "one_for_all", "rest_for_one", got "one-for-one" — '
            'did you mean "one_for_one"?',
        ),
        ("nodes[0].restart", 'must be one of "permanent", "transient", "temporary", null, got "forever"'),
    ]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@NAMESPACES
def test_a_non_finite_window_from_the_wire_is_named(ns: Messages, value: float) -> None:
    from nursery_pipes import ManifestError

    manifest = ns.PipelineManifest(
        version="v1",
        metadata=ns.ManifestMetadata(name="w", supervision=ns.SupervisionConfig(within_secs=value)),
        nodes=[ns.NodeManifest(id="a", node_type="PassThrough")],
    )
    with pytest.raises(ManifestError) as info:
        manifest_from_proto(manifest)
    [issue] = info.value.issues
    assert issue.path == "metadata.supervision.within_secs"
    assert issue.message == f"must be a finite number, got {value}"


@NAMESPACES
def test_supervision_event_from_plain_values(ns: Messages) -> None:
    from nursery_pipes import NodeError

    failed = supervision_event_to_proto(
        "failed",
        "asr",
        "node 'asr' failed in process: boom; restarting (1 of 3 within 5 s)",
        restarts=0,
        dropped_sequences=[7],
        error=NodeError("asr", "process", "boom", remote_traceback="Traceback ..."),
        ns=ns,
    )
    assert (failed.node_id, failed.kind, failed.restarts, list(failed.dropped_sequences)) == (
        "asr",
        "failed",
        0,
        [7],
    )
    assert failed.error.error_type == pb.ErrorType.NODE_EXECUTION
    assert (failed.error.failing_node_id, failed.error.context) == ("asr", "process")
    assert failed.error.stack_trace == "Traceback ..."
    restarted = supervision_event_to_proto("restarted", "asr", restarts=1, ns=ns)
    assert (restarted.kind, restarted.restarts, list(restarted.dropped_sequences)) == ("restarted", 1, [])
    # The two implementations agree on the bytes.
    assert bytes(supervision_event_to_proto("dropped", "vad", dropped_sequences=range(3))) == (
        UPB.SupervisionEvent(node_id="vad", kind="dropped", dropped_sequences=[0, 1, 2]).SerializeToString()
    )
    with pytest.raises(ValueError, match=r"kind must be one of .*, got 'crashed'"):
        supervision_event_to_proto("crashed", "asr", ns=ns)
    assert {"failed", "restarted", "stopped", "dropped"} == SUPERVISION_EVENT_KINDS


@NAMESPACES
def test_supervision_events_travel_in_stream_responses_and_execution_results(ns: Messages) -> None:
    event = supervision_event_to_proto("stopped", "tap", "temporary node: not restarted", ns=ns)
    response = ns.StreamResponse(supervision=event)
    result = ns.ExecutionResult(supervision=[event, supervision_event_to_proto("dropped", "tap", ns=ns)])
    if ns is UPB:
        data, data2 = response.SerializeToString(), result.SerializeToString()
    else:
        data, data2 = bytes(response), bytes(result)
    parsed = pb.StreamResponse().parse(data)
    assert betterproto.which_one_of(parsed, "response")[0] == "supervision"
    assert (parsed.supervision.node_id, parsed.supervision.kind) == ("tap", "stopped")
    assert [e.kind for e in UPB.ExecutionResult.FromString(data2).supervision] == ["stopped", "dropped"]
