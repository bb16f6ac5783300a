"""``StreamPipeline``: one bidirectional stream, one session.

Three trio tasks per stream, in one nursery that the session lives in:

- **inbound** reads requests: the first must be ``StreamInit``; then
  ``DataChunk`` (or legacy ``AudioChunk``) frames go to the session with
  their sequence; ``StreamControl`` CLOSE ends the input (the pipeline
  flushes), CANCEL stops at once. A client that half-closes counts as CLOSE.
- **outbound** turns the session's events into responses: ``InitProgress``
  while nodes initialise, ``StreamReady`` (with every node's executor), a
  ``ChunkResult`` per output (with the sequence of the input that caused
  it), and at the end ``StreamClosed`` with the final metrics — or the error.
- **sender** is the only task that writes to the stream (messages must not
  interleave); it also sends ``StreamMetrics`` periodically. A client that
  stops reading blocks it; after ``stall_timeout_secs`` the stream is ended
  (the session is cancelled), never the server.

Every problem is answered with ``error`` (StreamResponse field 3), the one
member every remotemedia.v1 client knows. A *rejection* refuses one request
or one output and the session carries on: a chunk with a bad sequence, an
unknown or non-source node, bytes that disagree with their format, a frame of
a kind the node does not take or that cannot reach its worker, both or
neither buffer fields, data after CLOSE, a second StreamInit, an empty
request, an unknown StreamControl command, an output over a size limit. Its
message starts with what was refused and says the stream goes on; the
ErrorResponse extensions carry ``session_continues`` (true),
``failing_sequence`` and ``stream_error_type``. Anything else ends the stream
(no StreamInit first, an invalid manifest, a node failure, the time limit):
``error`` with ``session_continues`` false, then StreamClosed if a session ran.

Nothing but progress goes out before StreamReady: requests other than CLOSE
and CANCEL are judged once the session is ready (a client that pipelines
chunks behind its StreamInit gets StreamReady first, then their results or
rejections). CLOSE (or a half-close) before StreamReady is kept until the
session is ready: it then flushes and closes as usual. CANCEL acts at once.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from .._errors import (
    FrameError,
    InputError,
    NodeError,
    NurseryPipesError,
    ResourceLimitError,
    SessionError,
)
from .._proto.remotemedia import v1 as pb
from ..runtime import (
    FramesDropped,
    NodeFailed,
    NodeProgress,
    NodeRestarted,
    Output,
    Runtime,
    Session,
    SessionState,
    SignalHandled,
    SignalSent,
    StateChanged,
)
from ..runtime._plan import check_input_kind, check_input_target
from ..wire._convert import buffer_to_frame, error_response, frame_to_buffer, manifest_from_proto
from ..wire._messages import UPB as M
from ..wire._messages import has, which
from ._bridge import PumpedStream
from ._events import supervision_to_proto
from ._execution import check_request_limits, output_limit, refusal, refuse_if_draining
from ._metrics import metrics_to_proto, rss_bytes

__all__ = ["StreamSettings", "handle_stream"]

_ERROR = pb.StreamErrorType
_CONTROL = pb.StreamControlCommand


@dataclass(frozen=True)
class StreamSettings:
    metrics_interval_secs: float = 1.0
    stall_timeout_secs: float = 30.0
    recommended_chunk_size: int = 320
    max_message_bytes: int | None = None
    """Largest response (a ChunkResult) to send; None: the runtime's ``server.max_message_bytes``,
    the server's limit on requests."""
    observe_chunk_latency: Callable[[float], None] | None = None
    """Called with each ChunkResult's seconds from its chunk's arrival (metrics), if set."""


@dataclass
class _State:
    last_seq: int = -1
    received_at: OrderedDict[int, float] = field(default_factory=OrderedDict)
    outputs: int = 0
    chunks: int = 0
    dropped: int = 0
    latency_sum_ms: float = 0.0
    cancelled: bool = False
    limits: Any = field(default_factory=lambda: M.ResourceLimits())
    max_message_bytes: int = 0
    ready: trio.Event = field(default_factory=trio.Event)
    """Set once StreamReady is in the sender's queue: no answer to a request goes before it."""
    observe_latency: Callable[[float], None] | None = None


async def handle_stream(
    stream: PumpedStream,
    runtime: Runtime,
    settings: StreamSettings,
    accepting: Any,
    *,
    trace_context: Mapping[str, str] | None = None,
) -> None:
    """Serve one StreamPipeline call (runs as a trio task). ``trace_context``: the call's W3C
    trace headers, which the session's trace continues."""
    first = await stream.recv()
    if first is None:
        return
    kind, init_value = which(first, "request")
    init: Any = init_value
    if kind != "init":
        error = M.ErrorResponse(
            error_type=pb.ErrorType.VALIDATION,
            message=f"the first message must be StreamInit, got {kind or 'an empty request'}; stream ended",
            stream_error_type=_ERROR.STREAM_ERROR_INIT_REQUIRED,
        )
        await stream.send(M.StreamResponse(error=error))
        return
    refuse_if_draining(accepting())  # as ExecutePipeline does
    denied = refusal(init.client_version)
    if denied is not None:
        await stream.send(M.StreamResponse(error=denied))
        return
    try:
        plan = runtime.plan(manifest_from_proto(init.manifest))
        initial = {nid: buffer_to_frame(buf, f"data_inputs[{nid}]") for nid, buf in init.data_inputs.items()}
        for node_id, frame in initial.items():  # before the session starts: a refusal is the end
            check_input_target(plan, node_id)
            check_input_kind(plan, node_id, frame)
        check_request_limits(init.resource_limits, initial)
    except NurseryPipesError as exc:
        await stream.send(M.StreamResponse(error=error_response(exc, M)))
        return
    limits: Any = init.resource_limits
    timeout = limits.max_timeout_ms / 1000 if limits.max_timeout_ms else math.inf
    state = _State(
        limits=limits,
        max_message_bytes=settings.max_message_bytes or runtime.config.server.max_message_bytes,
        observe_latency=settings.observe_chunk_latency,
    )
    with trio.move_on_after(timeout) as deadline:
        await _run(stream, runtime, plan, initial, settings, state, trace_context)
    if deadline.cancelled_caught:
        await stream.send(
            M.StreamResponse(
                error=M.ErrorResponse(
                    error_type=pb.ErrorType.RESOURCE_LIMIT,
                    message=f"the stream exceeded resource_limits.max_timeout_ms ({limits.max_timeout_ms} ms); session cancelled",
                    stream_error_type=_ERROR.STREAM_ERROR_TIMEOUT,
                )
            )
        )


async def _run(
    stream: PumpedStream,
    runtime: Runtime,
    plan: Any,
    initial: dict[str, Any],
    settings: StreamSettings,
    state: _State,
    trace_context: Mapping[str, str] | None,
) -> None:
    # Small: with the session's own bounded queues this bounds what a client that stops
    # reading can make the server hold.
    send_channel, receive_channel = trio.open_memory_channel[Any](8)
    try:
        async with (
            runtime.open_session(plan, wait_ready=False, trace_context=trace_context) as session,
            trio.open_nursery() as nursery,
        ):
            # The sender outlives the other two: it ends once every response is written.
            nursery.start_soon(_sender, stream, receive_channel, session, state, settings)
            async with trio.open_nursery() as inner:
                inner.start_soon(_inbound, stream, session, send_channel.clone(), state, initial, inner)
                await _outbound(session, send_channel, state, settings)
                inner.cancel_scope.cancel()  # stop reading requests: the session is over
    except SessionError:
        pass  # already reported on the stream by _outbound
    except NurseryPipesError as exc:  # e.g. a resource limit hit when opening the session
        await stream.send(M.StreamResponse(error=error_response(exc, M)))


async def _outbound(
    session: Session, out: trio.MemorySendChannel[Any], state: _State, settings: StreamSettings
) -> None:
    async with out:
        try:
            async for event in session.events():
                response = _response_for(event, session, state, settings)
                if response is not None:
                    await out.send(response)
                if isinstance(event, StateChanged) and event.state is SessionState.READY:
                    state.ready.set()  # StreamReady is queued: what answers requests may follow
        except SessionError as exc:
            error = error_response(exc, M)
            if isinstance(exc, NodeError):
                error.stream_error_type = _ERROR.STREAM_ERROR_EXECUTION
            await out.send(M.StreamResponse(error=error))
            await out.send(_closed(session, f"failed: {exc}"))
            return
        await out.send(_closed(session, "cancelled by client" if state.cancelled else "closed"))


def _response_for(event: Any, session: Session, state: _State, settings: StreamSettings) -> Any | None:
    if isinstance(event, (NodeFailed, NodeRestarted, FramesDropped)):
        return M.StreamResponse(supervision=supervision_to_proto(event, M))
    if isinstance(event, SignalSent):
        sent = M.SignalSent(
            name=event.name, signal_id=event.signal_id, origin=event.origin, node_ids=list(event.targets)
        )
        return M.StreamResponse(signal_sent=sent)
    if isinstance(event, SignalHandled):
        handled = M.SignalHandled(
            node_id=event.node_id,
            name=event.name,
            signal_id=event.signal_id,
            origin=event.origin,
            dropped_sequences=list(event.dropped),
        )
        if event.aborted is not None:
            handled.aborted_sequence = event.aborted
        return M.StreamResponse(signal_handled=handled)
    if isinstance(event, NodeProgress):
        return M.StreamResponse(
            progress=M.InitProgress(
                node_id=event.node_id, state=event.state, progress=event.progress, message=event.message
            )
        )
    if isinstance(event, StateChanged):
        if event.state is SessionState.READY:
            return M.StreamResponse(
                ready=M.StreamReady(
                    session_id=session.id,
                    recommended_chunk_size=settings.recommended_chunk_size,
                    max_buffer_latency_ms=int(settings.metrics_interval_secs * 1000),
                    assignments=_assignments(session),
                )
            )
        return None
    if isinstance(event, Output):
        return _result(event, state)
    return None


def _result(event: Output, state: _State) -> Any:
    """The ChunkResult for one output — or, for one over a size limit, a rejection naming its
    node. The frame's size is checked before it is copied into a message."""
    nbytes = event.frame.nbytes
    exceeded = output_limit(nbytes, state.limits, state.max_message_bytes)
    if exceeded is None:
        received = state.received_at.get(event.seq)
        elapsed_ms = (time.perf_counter() - received) * 1000 if received is not None else 0.0
        response = M.StreamResponse(
            result=M.ChunkResult(
                sequence=event.seq,
                data_outputs={event.node_id: frame_to_buffer(event.frame, M)},
                processing_time_ms=elapsed_ms,
                total_items_processed=state.outputs + 1,
            )
        )
        size = response.ByteSize()
        if size <= state.max_message_bytes:
            state.outputs += 1
            state.latency_sum_ms += elapsed_ms
            if state.observe_latency is not None and received is not None:
                state.observe_latency(elapsed_ms / 1000)
            return response
        nbytes, exceeded = size, output_limit(size, state.limits, state.max_message_bytes)
    error = M.ErrorResponse(
        error_type=pb.ErrorType.RESOURCE_LIMIT,
        message=f"it is {nbytes} bytes, {exceeded}",
        failing_node_id=event.node_id,
    )
    return _rejected(f"output of node {event.node_id!r} for sequence {event.seq} not sent", error, event.seq)


def _assignments(session: Session) -> list[Any]:
    metrics = session.metrics()
    return [
        M.NodeAssignment(node_id=nid, executor=a.executor, reason=a.reason, pid=metrics.nodes[nid].pid or 0)
        for nid, a in session.assignments.items()
    ]


def _closed(session: Session, reason: str) -> Any:
    return M.StreamResponse(
        closed=M.StreamClosed(
            session_id=session.id, final_metrics=metrics_to_proto(session.metrics(), M), reason=reason
        )
    )


async def _sender(
    stream: PumpedStream,
    inbox: trio.MemoryReceiveChannel[Any],
    session: Session,
    state: _State,
    settings: StreamSettings,
) -> None:
    next_metrics = trio.current_time() + settings.metrics_interval_secs
    closed = False
    async with inbox:
        while True:
            response: Any | None = None
            # Only the wait for a response races the metrics deadline, never its sending: a send
            # cut short would lose a response already taken from the inbox.
            with trio.move_on_at(math.inf if closed else next_metrics):
                try:
                    response = await inbox.receive()
                except trio.EndOfChannel:
                    return
            if response is not None:
                if not closed:  # StreamClosed is the last thing the client hears
                    await _send_or_give_up(stream, response, session, settings)
                    closed = which(response, "response")[0] == "closed"
                continue
            if session.state is not SessionState.INITIALIZING:  # metrics only once StreamReady went out
                await _send_or_give_up(stream, _stream_metrics(session, state), session, settings)
            next_metrics = trio.current_time() + settings.metrics_interval_secs


async def _send_or_give_up(
    stream: PumpedStream, response: Any, session: Session, settings: StreamSettings
) -> None:
    with trio.move_on_after(settings.stall_timeout_secs) as scope:
        await stream.send(response)
    if scope.cancelled_caught:
        session.cancel()
        from grpclib.const import Status
        from grpclib.exceptions import GRPCError

        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"client did not read responses for {settings.stall_timeout_secs:g} s; stream ended",
        )


def _stream_metrics(session: Session, state: _State) -> Any:
    metrics = session.metrics()
    breakdown = dict(metrics.data_type_breakdown)
    return M.StreamResponse(
        metrics=M.StreamMetrics(
            session_id=session.id,
            chunks_processed=state.chunks,
            average_latency_ms=state.latency_sum_ms / state.outputs if state.outputs else 0.0,
            total_items=state.outputs,
            buffer_items=session.statistics().queued_events,
            chunks_dropped=state.dropped,
            peak_memory_bytes=rss_bytes(),  # what metrics_to_proto reports as memory
            data_type_breakdown=breakdown,
        )
    )


async def _inbound(
    stream: PumpedStream,
    session: Session,
    out: trio.MemorySendChannel[Any],
    state: _State,
    initial: dict[str, Any],
    nursery: trio.Nursery,
) -> None:
    async with out:
        try:
            for node_id, frame in initial.items():
                await session.send(node_id, frame, seq=0)
        except SessionError:  # the session failed to start or is ending: outbound reports why
            return
        if initial:
            state.last_seq = 0  # StreamInit's data_inputs are sequence 0: chunks continue after it
        closed = False
        while True:
            request = await stream.recv()
            if request is None:
                if not closed:  # a client that half-closes has sent everything
                    nursery.start_soon(_close_when_ready, session, state)
                return
            kind, found = which(request, "request")
            value: Any = found
            if kind == "control":
                if value.command == _CONTROL.COMMAND_CANCEL:
                    state.cancelled = True
                    session.cancel()
                    return
                if value.command == _CONTROL.COMMAND_CLOSE:
                    if not closed:
                        closed = True
                        nursery.start_soon(_close_when_ready, session, state)
                    continue
            # Everything else is answered after StreamReady: an upstream client may take an error
            # before it for a failed start. (A chunk waited for READY in Session.send anyway.)
            await state.ready.wait()
            if kind == "control":
                await out.send(_unknown_command(value.command))
                continue
            if kind == "signal":
                error = _signal(value, session)
                if error is not None:
                    await out.send(error)
                continue
            error = await _data(kind, value, session, state, closed)
            if error is not None:
                await out.send(error)


async def _close_when_ready(session: Session, state: _State) -> None:
    """End the session's input — once it is READY: a CLOSE (or half-close) can arrive while
    nodes still initialise, and the session only takes its end of input once they are ready.
    Cancelled with the inbound side if the session fails first."""
    await state.ready.wait()
    await session.close()


def _signal(request: Any, session: Session) -> Any | None:
    """Hand a SignalRequest to the session; the rejection to send for a bad one."""
    what = f"signal {request.name!r} not sent"
    try:
        payload = json.loads(request.payload_json) if request.payload_json else {}
        if not isinstance(payload, dict):
            raise InputError(f"payload_json must be a JSON object, not {type(payload).__name__}")
        session.signal(request.name, to=list(request.node_ids) or None, payload=payload)
    except ValueError as exc:  # (json.JSONDecodeError included)
        error = M.ErrorResponse(error_type=pb.ErrorType.VALIDATION, message=f"payload_json: {exc}")
        return _rejected(what, error)
    except InputError as exc:
        return _rejected(what, error_response(exc, M))
    except SessionError:
        return None  # the session is ending; outbound reports why
    return None


def _unknown_command(command: int) -> Any:
    known = ", ".join(f"{c.name}={c.value}" for c in (_CONTROL.COMMAND_CLOSE, _CONTROL.COMMAND_CANCEL))
    error = M.ErrorResponse(
        error_type=pb.ErrorType.VALIDATION, message=f"command {command} is not one of {known}"
    )
    return _rejected("StreamControl ignored", error)


async def _data(kind: str, value: Any, session: Session, state: _State, closed: bool) -> Any | None:
    """Feed one data message to the session; the rejection to send for a bad one."""
    if kind == "init":
        error = M.ErrorResponse(
            error_type=pb.ErrorType.VALIDATION, message="the stream is already initialised"
        )
        return _rejected("a second StreamInit ignored", error)
    if kind == "audio_chunk":
        value = M.DataChunk(
            node_id=value.node_id,
            buffer=M.DataBuffer(audio=value.buffer),
            sequence=value.sequence,
            timestamp_ms=value.timestamp_ms,
        )
    elif kind != "data_chunk":
        error = M.ErrorResponse(
            error_type=pb.ErrorType.VALIDATION, message="set one of init, data_chunk or control"
        )
        return _rejected("an empty request ignored", error)
    seq = value.sequence
    what = f"DataChunk sequence {seq} rejected"
    if closed:
        error = M.ErrorResponse(error_type=pb.ErrorType.VALIDATION, message="data after CLOSE")
        return _rejected(what, error, seq)
    if seq <= state.last_seq:
        state.dropped += 1
        error = M.ErrorResponse(
            error_type=pb.ErrorType.VALIDATION,
            message=f"sequence {seq} does not increase (last accepted: {state.last_seq})",
        )
        return _rejected(what, error, seq, _ERROR.STREAM_ERROR_INVALID_SEQUENCE)
    try:
        targets = _targets(value)
        frames = [(nid, buffer_to_frame(buf, where)) for nid, buf, where in targets]
        for node_id, frame in frames:  # refuse the whole chunk before any of it is sent
            check_input_target(session.plan, node_id)  # what Session.send would refuse
            check_input_kind(session.plan, node_id, frame)
        check_request_limits(state.limits, dict(frames))
        state.last_seq = seq
        state.received_at[seq] = time.perf_counter()
        while len(state.received_at) > 4096:
            state.received_at.popitem(last=False)
        for node_id, frame in frames:
            await session.send(node_id, frame, seq=seq)
        state.chunks += 1
    except (InputError, FrameError, ResourceLimitError) as exc:
        state.dropped += 1
        return _rejected(what, error_response(exc, M), seq)
    except SessionError:  # closed, cancelled, or failed (then the node's error): not this chunk's fault
        return None  # the session is ending; outbound reports why
    return None


def _targets(chunk: Any) -> list[tuple[str, Any, str]]:
    has_buffer = has(chunk, "buffer")
    has_named = bool(chunk.named_buffers)
    if has_buffer == has_named:
        which = "both" if has_buffer else "neither"
        raise InputError(
            f"DataChunk sequence {chunk.sequence} sets {which} of buffer / named_buffers; exactly one is required"
        )
    if has_buffer:
        return [(chunk.node_id, chunk.buffer, "data_chunk.buffer")]
    if chunk.node_id:
        raise InputError("with named_buffers, leave node_id empty: each buffer is keyed by its node id")
    return [(nid, buf, f"data_chunk.named_buffers[{nid}]") for nid, buf in chunk.named_buffers.items()]


def _rejected(what: str, error: Any, seq: int | None = None, kind: int = 0) -> Any:
    """``error`` as the answer to one refused request or output; the session carries on.

    The message says so in words for clients built from upstream's protos, which see
    ``error`` but none of the extension fields set here."""
    error.message = f"{what} (the stream goes on): {error.message}"
    error.session_continues = True
    error.stream_error_type = kind
    if seq is not None:
        error.failing_sequence = seq
    return M.StreamResponse(error=error)
