"""``ExecutePipeline`` and ``GetVersion`` (unary), on the library API.

A reply is bounded like a request: ``resource_limits.max_memory_bytes`` bounds
what the session produces and the server's ``max_message_bytes`` what one reply
may carry. Both are checked on each output frame's size as it arrives, so a run
whose outputs grow past a limit is stopped then — before the frames pile up and
long before any protobuf message is built from them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from .._errors import InputError, NurseryPipesError, ResourceLimitError, SessionError
from .._proto.remotemedia import v1 as pb
from .._version import __version__
from ..frames import AudioFrame, Frame
from ..runtime import Runtime, Session
from ..runtime._plan import SessionPlan, check_input_kind, check_input_target
from ..wire._convert import buffer_to_frame, error_response, frames_to_buffer, manifest_from_proto
from ..wire._messages import UPB as M
from ._events import supervision_to_proto
from ._metrics import metrics_to_proto

__all__ = [
    "DRAINING",
    "PROTOCOL_VERSION",
    "build_timestamp",
    "check_request_limits",
    "compatible",
    "execute",
    "output_limit",
    "refusal",
    "refuse_if_draining",
    "version",
]

PROTOCOL_VERSION = "v1"
SUPPORTED_PROTOCOLS = (PROTOCOL_VERSION,)
"""remotemedia protocol versions this server speaks (VersionInfo.supported_protocols)."""


@functools.cache
def build_timestamp() -> str:
    """When this installation was built, ISO 8601 UTC, or "" if that cannot be told.

    The modification time of the installed distribution's METADATA: pip writes it
    when it builds the wheel it installs (for an editable install, when ``pip
    install -e`` ran) — the build, not the start of this process.
    """
    try:
        files = importlib.metadata.distribution("nursery-pipes").files or []
        metadata = next(f for f in files if f.name == "METADATA" and f.parent.name.endswith(".dist-info"))
        mtime = os.stat(metadata.locate()).st_mtime
    except (importlib.metadata.PackageNotFoundError, StopIteration, OSError):
        return ""
    return datetime.fromtimestamp(mtime, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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
            supported_protocols=list(SUPPORTED_PROTOCOLS),
            build_timestamp=build_timestamp(),
        ),
        compatible=ok,
        compatibility_message=why,
    )


DRAINING = "server is draining: it takes no new sessions (running ones finish); retry on another replica"


def refuse_if_draining(accepting: bool) -> None:
    """End a new call on a draining server with UNAVAILABLE: the status gRPC clients, their retry
    policies and proxies read as "not processed, try another server" (an ErrorResponse would read
    as the request's own fault, and no client retries it)."""
    if not accepting:
        raise GRPCError(Status.UNAVAILABLE, DRAINING)


def refusal(client_version: str) -> Any | None:
    """The ErrorResponse that turns a new session away (an incompatible client), or None."""
    ok, why = compatible(client_version)
    if not ok:
        return M.ErrorResponse(error_type=pb.ErrorType.VERSION_MISMATCH, message=why)
    return None


async def execute(
    runtime: Runtime,
    request: Any,
    accepting: bool,
    *,
    max_message_bytes: int | None = None,
    trace_context: Mapping[str, str] | None = None,
) -> Any:
    """Serve one ExecutePipeline call. ``max_message_bytes`` bounds the reply (default: the
    runtime's ``server.max_message_bytes``, the server's limit on requests); ``trace_context``:
    the call's W3C trace headers, which the session's trace continues."""
    refuse_if_draining(accepting)
    denied = refusal(request.client_version)
    if denied is not None:
        return M.ExecuteResponse(error=denied)
    started = time.perf_counter()
    limits = request.resource_limits
    reply_limit = max_message_bytes or runtime.config.server.max_message_bytes
    try:
        plan = runtime.plan(manifest_from_proto(request.manifest))
        inputs = {
            nid: buffer_to_frame(buf, f"data_inputs[{nid}]") for nid, buf in request.data_inputs.items()
        }
        check_execute_inputs(plan, inputs)
        check_request_limits(limits, inputs)
        decode_ms = (time.perf_counter() - started) * 1000
        timeout = limits.max_timeout_ms / 1000 if limits.max_timeout_ms else None
        with trio.fail_after(timeout) if timeout else contextlib.nullcontext():
            outputs, session = await _run_bounded(
                runtime, plan, inputs, _Budget(limits, reply_limit), trace_context
            )
        buffers = {sink: frames_to_buffer(sink, frames, M) for sink, frames in outputs.items()}
    except trio.TooSlowError:
        return M.ExecuteResponse(
            error=M.ErrorResponse(
                error_type=pb.ErrorType.RESOURCE_LIMIT,
                message=f"execution exceeded resource_limits.max_timeout_ms ({limits.max_timeout_ms} ms)",
            )
        )
    except NurseryPipesError as exc:
        return M.ExecuteResponse(error=error_response(exc, M))
    response = _result(plan, buffers, session, decode_ms)
    size = response.ByteSize()
    if size > reply_limit:  # the frames fitted; their encoding and the metrics did not
        biggest = max(buffers, key=lambda sink: buffers[sink].ByteSize())
        return M.ExecuteResponse(
            error=M.ErrorResponse(
                error_type=pb.ErrorType.RESOURCE_LIMIT,
                message=f"the reply would be {size} bytes (sink {biggest!r} is the largest output), more "
                f"than one message may carry (this server's max_message_bytes is {reply_limit})",
                failing_node_id=biggest,
            )
        )
    return response


def check_execute_inputs(plan: SessionPlan, inputs: dict[str, Frame]) -> None:
    """One input per source node, each of a kind it takes — before anything starts."""
    for node_id, frame in inputs.items():
        check_input_target(plan, node_id)
        check_input_kind(plan, node_id, frame)
    missing = [nid for nid in plan.sources if nid not in inputs]
    if missing:
        names = ", ".join(repr(nid) for nid in missing)
        raise InputError(
            f"no input for source node{'s' * (len(missing) > 1)} {names}: data_inputs needs one buffer "
            f"for each source of this pipeline ({', '.join(plan.sources)})"
        )


class _Budget:
    """The bytes a unary run may produce: resource_limits.max_memory_bytes and the reply limit."""

    def __init__(self, limits: Any, max_message_bytes: int) -> None:
        self.limits = limits
        self.max_message_bytes = max_message_bytes
        self.held = 0

    def take(self, node_id: str, frame: Frame) -> ResourceLimitError | None:
        self.held += frame.nbytes
        exceeded = output_limit(self.held, self.limits, self.max_message_bytes)
        if exceeded is None:
            return None
        return ResourceLimitError(
            f"sink {node_id!r} brought the outputs to {self.held} bytes, {exceeded}; the run was stopped"
        )


def output_limit(nbytes: int, limits: Any, max_message_bytes: int) -> str | None:
    """Which limit ``nbytes`` of output exceed (as the end of a sentence), or None."""
    if limits.max_memory_bytes and nbytes > limits.max_memory_bytes:
        return f"more than resource_limits.max_memory_bytes ({limits.max_memory_bytes})"
    if nbytes > max_message_bytes:
        return f"more than one message may carry (this server's max_message_bytes is {max_message_bytes})"
    return None


async def _run_bounded(
    runtime: Runtime,
    plan: SessionPlan,
    inputs: dict[str, Frame],
    budget: _Budget,
    trace_context: Mapping[str, str] | None = None,
) -> tuple[dict[str, list[Frame]], Session]:
    """Run the session on ``inputs``, collecting each sink's frames until ``budget`` says stop."""
    outputs: dict[str, list[Frame]] = {sink: [] for sink in plan.sinks}
    stopped: NurseryPipesError | None = None
    async with runtime.open_session(plan, trace_context=trace_context) as session:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_feed, session, inputs)
            try:
                async for out in session.outputs():
                    stopped = budget.take(out.node_id, out.frame)
                    if stopped is not None:
                        session.cancel()
                        break
                    outputs[out.node_id].append(out.frame)
            except SessionError as exc:  # kept out of the nursery: it would wrap it in a group
                stopped = exc
            if stopped is not None:
                nursery.cancel_scope.cancel()  # the feeder too, wherever it waits
        if stopped is not None:
            raise stopped  # leaving the block this way cancels the session
        await session.wait()
    return outputs, session


async def _feed(session: Session, inputs: dict[str, Frame]) -> None:
    with contextlib.suppress(SessionError):  # the session failed or was stopped: the outputs say why
        for node_id, frame in inputs.items():
            await session.send(node_id, frame)
        await session.close()


def _result(plan: SessionPlan, buffers: dict[str, Any], session: Session, decode_ms: float) -> Any:
    metrics = session.metrics()
    return M.ExecuteResponse(
        result=M.ExecutionResult(
            data_outputs=buffers,
            metrics=metrics_to_proto(metrics, M, serialization_ms=decode_ms),
            node_results=[M.NodeResult(node_id=nid, status=pb.NodeStatus.SUCCESS) for nid in plan.order],
            status=pb.ExecutionStatus.SUCCESS,
            assignments=[
                M.NodeAssignment(
                    node_id=nid, executor=a.executor, reason=a.reason, pid=metrics.nodes[nid].pid or 0
                )
                for nid, a in session.assignments.items()
            ],
            progress=[
                M.InitProgress(node_id=p.node_id, state=p.state, progress=p.progress, message=p.message)
                for p in session.progress_log
            ],
            supervision=[supervision_to_proto(e, M) for e in session.supervision_log],
        )
    )


def check_request_limits(limits: Any, inputs: dict[str, Frame]) -> None:
    """``max_audio_samples`` per audio input (samples of all channels, as the wire counts them),
    ``max_memory_bytes`` for all inputs together."""
    if limits.max_audio_samples:
        for nid, frame in inputs.items():
            if isinstance(frame, AudioFrame):
                total = frame.num_samples * frame.channels
                if total > limits.max_audio_samples:
                    raise ResourceLimitError(
                        f"data_inputs[{nid}] has {total} audio samples (all channels); "
                        f"resource_limits.max_audio_samples is {limits.max_audio_samples}"
                    )
    if limits.max_memory_bytes:
        total = sum(frame.nbytes for frame in inputs.values())
        if total > limits.max_memory_bytes:
            raise ResourceLimitError(
                f"the inputs hold {total} bytes; resource_limits.max_memory_bytes is {limits.max_memory_bytes}"
            )
