"""wire/_convert.py, sans-I/O: the conventions the gRPC API documents (docs/design.md §7),
for both message implementations (betterproto for clients, upb for the server)."""

from __future__ import annotations

import numpy as np
import pytest

from nursery_pipes import AudioFrame, FrameError, FrameKindError, InputError
from nursery_pipes._proto.remotemedia import v1 as pb
from nursery_pipes.client import rejection
from nursery_pipes.wire import (
    buffer_to_frame,
    error_response,
    frame_to_buffer,
    frames_to_buffer,
    manifest_from_proto,
    manifest_to_proto,
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
    }
    doc = {
        "version": "v1",
        "metadata": {"name": "wire", "multiprocess": multiprocess},
        "nodes": [{"id": "a", "node_type": "PassThrough", "params": {}}],
        "connections": [],
    }
    wire = UPB.PipelineManifest.FromString(bytes(manifest_to_proto(doc)))
    assert manifest_from_proto(wire)["metadata"]["multiprocess"] == multiprocess
