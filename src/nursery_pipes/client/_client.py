"""A Python client for remotemedia.v1 servers (nursery_pipes or any other implementation).

asyncio-native (grpclib). From trio, run it under trio-asyncio::

    async with trio_asyncio.open_loop():
        result = await trio_asyncio.aio_as_trio(client.execute)(manifest, inputs)

Example (asyncio)::

    async with Client("127.0.0.1:50051") as client:
        info = await client.version()
        result = await client.execute(manifest, {"in": TextFrame(text="hi")})
        async with client.stream(manifest) as stream:
            await stream.send("in", frame)
            await stream.close()
            async for event in stream:
                ...
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import betterproto
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import StreamTerminatedError

from .._errors import (
    FrameError,
    InputError,
    ManifestError,
    ManifestIssue,
    NodeError,
    NurseryPipesError,
    ResourceLimitError,
    SessionError,
)
from .._proto.remotemedia import v1 as pb
from ..frames import Frame
from ..manifest._manifest import decode_json, read_file
from ..wire._convert import buffer_to_frame, frame_to_buffer, manifest_to_proto
from ..wire._messages import UPB, which

__all__ = [
    "AuthenticationError",
    "ChunkOutput",
    "Client",
    "RemoteError",
    "RemoteResult",
    "RemoteStream",
    "StreamEvent",
    "raise_for_error",
    "rejection",
]

CLIENT_VERSION = "1.0"


class RemoteError(NurseryPipesError):
    """The server answered with an ErrorResponse we have no closer exception for."""

    def __init__(self, error: pb.ErrorResponse) -> None:
        super().__init__(f"{error.error_type.name}: {error.message}")
        self.error = error


class AuthenticationError(RemoteError):
    """The server wants a (different) bearer token."""


def raise_for_error(error: pb.ErrorResponse) -> None:
    """Raise the library exception matching a server's ErrorResponse."""
    kind = error.error_type
    if kind == pb.ErrorType.VALIDATION and error.issues:
        raise ManifestError([ManifestIssue(i.path, i.message) for i in error.issues], "server")
    if kind == pb.ErrorType.VALIDATION:
        raise InputError(error.message)
    if kind == pb.ErrorType.TYPE_VALIDATION:
        raise FrameError(error.message)
    if kind == pb.ErrorType.RESOURCE_LIMIT:
        raise ResourceLimitError(error.message)
    if kind == pb.ErrorType.NODE_EXECUTION and error.failing_node_id:
        exc = NodeError(
            error.failing_node_id,
            error.context or "process",
            error.message,
            remote_traceback=error.stack_trace or None,
        )
        exc.args = (error.message,)  # the server's message already names node and phase
        raise exc
    if kind == pb.ErrorType.AUTHENTICATION:
        raise AuthenticationError(error)
    if kind == pb.ErrorType.NODE_EXECUTION:
        raise SessionError(error.message)
    raise RemoteError(error)


@dataclass(frozen=True)
class RemoteResult:
    outputs: dict[str, Frame]
    metrics: pb.ExecutionMetrics
    assignments: list[pb.NodeAssignment]
    progress: list[pb.InitProgress]


@dataclass(frozen=True)
class ChunkOutput:
    node_id: str
    sequence: int
    frame: Frame
    processing_time_ms: float


@dataclass(frozen=True)
class StreamEvent:
    """Anything else a stream says: ``kind`` is progress, ready, metrics, closed or rejected.

    ``rejected``: the server refused one request or output and the session goes on;
    ``message`` is the ErrorResponse (``failing_sequence`` names the chunk). An error that
    ends the session is raised instead (see :func:`raise_for_error`).
    """

    kind: str
    message: Any


def rejection(response: pb.StreamResponse) -> pb.ErrorResponse | None:
    """The ErrorResponse of a non-fatal rejection, or None if ``response`` is something else.

    Servers send it as ``error`` with ``session_continues``; servers before that extension
    sent the (now deprecated) ``stream_error`` member instead."""
    kind, found = betterproto.which_one_of(response, "response")
    value: Any = found
    if kind == "error" and value.session_continues:
        error: pb.ErrorResponse = value
        return error
    if kind == "stream_error":
        old: pb.StreamErrorResponse = value
        return pb.ErrorResponse(
            error_type=old.base_error.error_type,
            message=old.base_error.message,
            failing_node_id=old.base_error.failing_node_id,
            context=old.base_error.context,
            stack_trace=old.base_error.stack_trace,
            issues=old.base_error.issues,
            failing_sequence=old.failing_sequence,
            stream_error_type=int(old.stream_error_type),
            session_continues=True,
        )
    return None


def load_manifest(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """The manifest as a document to send; the server validates it against its own nodes.

    A file that can't be read or text that isn't JSON raises the same ManifestError as a
    local run (naming the file, and the line and column of broken JSON)."""
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, os.PathLike):
        where = os.fspath(source)
        doc: dict[str, Any] = decode_json(read_file(where), where)
        return doc
    doc = decode_json(str(source))
    return doc


class _Codec(ProtoCodec):
    """grpclib's protobuf codec, for betterproto and upb messages alike.

    The stream's per-chunk messages (DataChunk out, ChunkResult back) are upb ones
    (``wire/_messages.py``): betterproto takes ~11 ms to encode a DataChunk of 1 MiB, upb
    well under one. Everything else is betterproto, the client's public types."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        data: bytes = (
            bytes(message) if isinstance(message, betterproto.Message) else message.SerializeToString()
        )
        return data


def _to_betterproto(message: Any, cls: type[Any]) -> Any:
    """A upb message as the betterproto message of the same type (off the hot path)."""
    return cls().parse(message.SerializeToString())


class Client:
    """A connection to a remotemedia.v1 server."""

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        tls: ssl.SSLContext | bool | None = None,
        timeout: float | None = None,
    ) -> None:
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise InputError(f"server address must be host:port, got {address!r}")
        self._host, self._port = host.strip("[]") or "127.0.0.1", int(port)
        self._ssl = tls
        self._metadata = {"authorization": f"Bearer {token}"} if token else None
        self._timeout = timeout
        self._channel: Channel | None = None

    async def __aenter__(self) -> Client:
        self._channel = Channel(self._host, self._port, ssl=self._ssl, codec=_Codec())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _open_channel(self) -> Channel:
        if self._channel is None:
            raise RuntimeError("use the client as 'async with Client(...) as client'")
        return self._channel

    def _execution(self) -> pb.PipelineExecutionServiceStub:
        return pb.PipelineExecutionServiceStub(
            self._open_channel(), metadata=self._metadata, timeout=self._timeout
        )

    async def version(self) -> pb.VersionResponse:
        response: pb.VersionResponse = await self._execution().get_version(
            pb.VersionRequest(client_version=CLIENT_VERSION)
        )
        return response

    async def execute(
        self, manifest: str | os.PathLike[str] | Mapping[str, Any], inputs: Mapping[str, Frame]
    ) -> RemoteResult:
        """One-shot run: one input frame per source node; one output buffer per sink."""
        execution = self._execution()
        request = pb.ExecuteRequest(
            manifest=manifest_to_proto(load_manifest(manifest)),
            data_inputs={nid: frame_to_buffer(frame) for nid, frame in inputs.items()},
            client_version=CLIENT_VERSION,
        )
        response = await execution.execute_pipeline(request)
        kind, value = betterproto.which_one_of(response, "outcome")
        if kind == "error":
            raise_for_error(value)
        result: pb.ExecutionResult = response.result
        outputs = {
            nid: buffer_to_frame(buf, f"data_outputs[{nid}]") for nid, buf in result.data_outputs.items()
        }
        return RemoteResult(outputs, result.metrics, list(result.assignments), list(result.progress))

    def stream(
        self,
        manifest: str | os.PathLike[str] | Mapping[str, Any],
        inputs: Mapping[str, Frame] | None = None,
        *,
        on_progress: Callable[[pb.InitProgress], None] | None = None,
    ) -> RemoteStream:
        """A streaming session: ``async with client.stream(manifest) as s: await s.send(...)``.

        Entering waits for StreamReady; ``on_progress`` sees each node's init progress meanwhile.
        """
        channel = self._open_channel()
        return RemoteStream(channel, load_manifest(manifest), inputs or {}, self._metadata, on_progress)


@dataclass
class RemoteStream:
    """One StreamPipeline call. Iterate it for ChunkOutput and StreamEvent values."""

    _channel: Channel
    _manifest: dict[str, Any]
    _inputs: Mapping[str, Frame]
    _metadata: Any
    _on_progress: Callable[[pb.InitProgress], None] | None = None
    session_id: str = ""
    ready: pb.StreamReady | None = None
    closed: pb.StreamClosed | None = None
    progress: list[pb.InitProgress] = field(default_factory=list)
    _seq: int = 0
    _early: list[StreamEvent] = field(default_factory=list)
    """Rejections that arrived before StreamReady (iteration yields them first)."""
    _ended: bool = False
    _call: Any = None
    _stream: Any = None

    async def __aenter__(self) -> RemoteStream:
        self._call = self._channel.request(
            "/remotemedia.v1.StreamingPipelineService/StreamPipeline",
            Cardinality.STREAM_STREAM,
            UPB.StreamRequest,
            UPB.StreamResponse,
            metadata=self._metadata,
        )
        self._stream = await self._call.__aenter__()
        try:
            await self._stream.send_request()
            await self._stream.send_message(
                pb.StreamRequest(
                    init=pb.StreamInit(
                        manifest=manifest_to_proto(self._manifest),
                        data_inputs={nid: frame_to_buffer(f) for nid, f in self._inputs.items()},
                        client_version=CLIENT_VERSION,
                    )
                )
            )
            await self._wait_ready()
        except BaseException:
            # Refused (auth, limits, bad manifest...): release the HTTP/2 stream, or every refusal
            # keeps one open until the connection runs out of concurrent streams and hangs.
            await self._call.__aexit__(*sys.exc_info())
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        ending_failed: StreamTerminatedError | None = None
        try:
            if exc[0] is not None and self.closed is None:
                await self._stream.cancel()
            elif not self._ended:
                await self._stream.end()
                self._ended = True
        except StreamTerminatedError as error:  # the server already ended or reset the call
            ending_failed = error
        if exc[0] is None and ending_failed is not None:
            exc = (type(ending_failed), ending_failed, ending_failed.__traceback__)
        # Always release the call; on a reset stream this raises the server's status (GRPCError)
        # if it sent one, which says more than "stream reset".
        await self._call.__aexit__(*exc)
        if ending_failed is not None and exc[1] is ending_failed:
            raise ending_failed

    async def _wait_ready(self) -> None:
        while self.ready is None:
            raw = await self._stream.recv_message()
            if raw is None:
                raise SessionError("the server ended the stream before StreamReady")
            response = _to_betterproto(raw, pb.StreamResponse)
            kind, found = betterproto.which_one_of(response, "response")
            value: Any = found
            rejected = rejection(response)
            if rejected is not None:
                self._early.append(StreamEvent("rejected", rejected))
            elif kind == "progress":
                self.progress.append(value)
                if self._on_progress is not None:
                    self._on_progress(value)
            elif kind == "ready":
                self.ready = value
                self.session_id = value.session_id
            elif kind == "error":
                raise_for_error(value)

    async def send(self, node_id: str, frame: Frame, *, sequence: int | None = None) -> int:
        self._seq = self._seq + 1 if sequence is None else sequence
        chunk = UPB.DataChunk(node_id=node_id, buffer=frame_to_buffer(frame, UPB), sequence=self._seq)
        await self._stream.send_message(UPB.StreamRequest(data_chunk=chunk))
        return self._seq

    async def close(self) -> None:
        """End of input: the server flushes the pipeline, then sends StreamClosed."""
        await self._stream.send_message(
            pb.StreamRequest(control=pb.StreamControl(command=pb.StreamControlCommand.COMMAND_CLOSE))
        )

    async def cancel(self) -> None:
        await self._stream.send_message(
            pb.StreamRequest(control=pb.StreamControl(command=pb.StreamControlCommand.COMMAND_CANCEL))
        )

    def __aiter__(self) -> AsyncIterator[ChunkOutput | StreamEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[ChunkOutput | StreamEvent]:
        while self._early:
            yield self._early.pop(0)
        while True:
            raw = await self._stream.recv_message()
            if raw is None:
                return
            kind, found = which(raw, "response")
            if kind == "result":  # the hot path, read from the upb message itself
                for nid, buf in found.data_outputs.items():
                    yield ChunkOutput(nid, found.sequence, buffer_to_frame(buf), found.processing_time_ms)
                continue
            response = _to_betterproto(raw, pb.StreamResponse)
            value: Any = betterproto.which_one_of(response, "response")[1]
            rejected = rejection(response)
            if rejected is not None:
                yield StreamEvent("rejected", rejected)
            elif kind == "error":
                raise_for_error(value)
            elif kind == "closed":
                self.closed = value
                yield StreamEvent(kind, value)
                return
            else:
                yield StreamEvent(kind, value)


async def collect(stream: RemoteStream, frames: Sequence[tuple[str, Frame]]) -> list[ChunkOutput]:
    """Send frames, close, and return every output (a convenience for scripts and tests)."""

    async def feed() -> None:
        for node_id, frame in frames:
            await stream.send(node_id, frame)
        await stream.close()

    task = asyncio.ensure_future(feed())
    try:
        return [event async for event in stream if isinstance(event, ChunkOutput)]
    finally:
        await task
