"""``ExecutePipeline`` and ``GetVersion`` (unary), on the library API."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import trio

from .. import __version__
from .._errors import NurseryPipesError, ResourceLimitError
from .._proto.remotemedia import v1 as pb
from ..frames import AudioFrame, Frame
from ..runtime import Runtime
from ..wire._convert import (
    buffer_to_frame,
    error_response,
    frames_to_buffer,
    manifest_from_proto,
    metrics_to_proto,
)
from ..wire._messages import UPB as M

__all__ = ["PROTOCOL_VERSION", "check_request_limits", "compatible", "execute", "refusal", "version"]

PROTOCOL_VERSION = "v1"
BUILD_TIMESTAMP = ""


def compatible(client_version: str) -> tuple[bool, str]:
    """A client is compatible if it speaks protocol v1 (``"1.x"``, ``"v1"``, or says nothing)."""
    if not client_version:
        return True, "no client version given; assuming protocol v1"
    major = client_version.lstrip("vV").split(".", 1)[0]
    if major == "1":
        return True, f"client {client_version} speaks protocol {PROTOCOL_VERSION}"
    return (
        False,
        f"client version {client_version} is not compatible with protocol {PROTOCOL_VERSION} (need 1.x)",
    )


def version(runtime: Runtime, request: Any) -> Any:
    ok, why = compatible(request.client_version)
    return M.VersionResponse(
        version_info=M.VersionInfo(
            protocol_version=PROTOCOL_VERSION,
            runtime_version=f"nursery_pipes {__version__}",
            supported_node_types=runtime.registry.names(),
            supported_protocols=["grpc"],
            build_timestamp=BUILD_TIMESTAMP,
        ),
        compatible=ok,
        compatibility_message=why,
    )


def refusal(client_version: str, accepting: bool) -> Any | None:
    """The ErrorResponse that turns a new session away (an incompatible client, a draining
    server), or None."""
    ok, why = compatible(client_version)
    if not ok:
        return M.ErrorResponse(error_type=pb.ErrorType.VERSION_MISMATCH, message=why)
    if not accepting:
        return M.ErrorResponse(
            error_type=pb.ErrorType.RESOURCE_LIMIT, message="server is shutting down; no new sessions"
        )
    return None


async def execute(runtime: Runtime, request: Any, accepting: bool) -> Any:
    denied = refusal(request.client_version, accepting)
    if denied is not None:
        return M.ExecuteResponse(error=denied)
    started = time.perf_counter()
    try:
        plan = runtime.plan(manifest_from_proto(request.manifest))
        inputs = {
            nid: buffer_to_frame(buf, f"data_inputs[{nid}]") for nid, buf in request.data_inputs.items()
        }
        check_request_limits(request.resource_limits, inputs)
        decode_ms = (time.perf_counter() - started) * 1000
        timeout = (
            request.resource_limits.max_timeout_ms / 1000 if request.resource_limits.max_timeout_ms else None
        )
        with trio.fail_after(timeout) if timeout else contextlib.nullcontext():
            result = await runtime.run_pipeline(plan, inputs)
        outputs = {sink: frames_to_buffer(sink, frames, M) for sink, frames in result.outputs.items()}
    except trio.TooSlowError:
        return M.ExecuteResponse(
            error=M.ErrorResponse(
                error_type=pb.ErrorType.RESOURCE_LIMIT,
                message=f"execution exceeded resource_limits.max_timeout_ms ({request.resource_limits.max_timeout_ms} ms)",
            )
        )
    except NurseryPipesError as exc:
        return M.ExecuteResponse(error=error_response(exc, M))
    metrics = metrics_to_proto(result.metrics, M, serialization_ms=decode_ms)
    return M.ExecuteResponse(
        result=M.ExecutionResult(
            data_outputs=outputs,
            metrics=metrics,
            node_results=[M.NodeResult(node_id=nid, status=pb.NodeStatus.SUCCESS) for nid in plan.order],
            status=pb.ExecutionStatus.SUCCESS,
            assignments=[
                M.NodeAssignment(
                    node_id=nid, executor=a.executor, reason=a.reason, pid=result.metrics.nodes[nid].pid or 0
                )
                for nid, a in result.assignments.items()
            ],
            progress=[
                M.InitProgress(node_id=p.node_id, state=p.state, progress=p.progress, message=p.message)
                for p in result.progress
            ],
        )
    )


def check_request_limits(limits: Any, inputs: dict[str, Frame]) -> None:
    """``max_audio_samples`` per audio input, ``max_memory_bytes`` for all inputs together."""
    if limits.max_audio_samples:
        for nid, frame in inputs.items():
            if isinstance(frame, AudioFrame) and frame.num_samples > limits.max_audio_samples:
                raise ResourceLimitError(
                    f"data_inputs[{nid}] has {frame.num_samples} audio samples; "
                    f"resource_limits.max_audio_samples is {limits.max_audio_samples}"
                )
    if limits.max_memory_bytes:
        total = sum(frame.nbytes for frame in inputs.values())
        if total > limits.max_memory_bytes:
            raise ResourceLimitError(
                f"the inputs hold {total} bytes; resource_limits.max_memory_bytes is {limits.max_memory_bytes}"
            )
