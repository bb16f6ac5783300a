"""grpclib (asyncio) ↔ trio, in one thread, through trio-asyncio.

grpclib runs on an asyncio loop that trio-asyncio drives from inside the trio
run, so a handler can hop into trio (``trio_as_aio``) and back
(``aio_as_trio``) without any thread switch. Each RPC handler is a thin
asyncio shim that runs the real handler as a trio task: cancellation crosses
in both directions (a client that disconnects cancels the asyncio task, which
cancels the trio task and with it the session's nursery).

:class:`TrioStream` gives trio code a grpclib server stream: ``recv`` /
``send``. Receives enforce the message-size limit *before* reading the body
(the 5-byte gRPC length prefix is checked first), so an oversized message
never gets buffered. Sends are serialised by the caller (one sender task per
stream).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

import trio
import trio_asyncio
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError

__all__ = ["LimitedStream", "PumpedStream", "TrioStream", "recv_limited"]

log = logging.getLogger("nursery_pipes.service")


class TrioStream:
    """A grpclib server stream, usable from trio."""

    def __init__(self, stream: Any, recv_type: type[Any], max_message_bytes: int, codec: CodecBase) -> None:
        self.raw = stream
        self._recv_type = recv_type
        self._max = max_message_bytes
        self._codec = codec
        self._recv = trio_asyncio.aio_as_trio(self._recv_limited)
        self._send = trio_asyncio.aio_as_trio(stream.send_message)

    @property
    def metadata(self) -> Any:
        return self.raw.metadata

    async def recv(self) -> Any | None:
        """The next request message, or None when the client has finished sending."""
        result: Any | None = await self._recv()
        return result

    async def send(self, message: Any) -> None:
        await self._send(message)

    async def _recv_limited(self) -> Any | None:
        return await recv_limited(self.raw, self._recv_type, self._max, self._codec)


_END = object()


class PumpedStream:
    """A grpclib server stream for trio code, with the I/O done by two asyncio tasks.

    ``TrioStream`` hops asyncio↔trio on every message (~30–40 µs each way). Here an
    asyncio *reader* task hands requests to trio through a memory channel
    (``send_nowait``; it only hops when the channel is full) and trio hands
    responses to an asyncio *writer* task through a queue (``put_nowait``; it only
    hops when the queue is full), so a steady stream crosses the bridge without
    hopping at all. Both buffers are small and bounded: a client that stops
    reading still blocks the pipeline (backpressure), and a stall timeout on
    ``send`` still fires.
    """

    def __init__(
        self, stream: Any, recv_type: type[Any], max_message_bytes: int, codec: CodecBase, depth: int = 8
    ) -> None:
        self.raw = stream
        self._recv_type = recv_type
        self._max = max_message_bytes
        self._codec = codec
        self._in_send, self._in_recv = trio.open_memory_channel[Any](depth)
        self._out: asyncio.Queue[Any] = asyncio.Queue(depth)
        self._error: BaseException | None = None
        self._finishing = False
        self._put = trio_asyncio.aio_as_trio(self._out.put)

    @property
    def metadata(self) -> Any:
        return self.raw.metadata

    # -- asyncio side -------------------------------------------------------------------

    async def reader(self) -> None:
        """Read requests until the client finishes; an error is re-raised by the next recv()."""
        try:
            while (
                message := await recv_limited(self.raw, self._recv_type, self._max, self._codec)
            ) is not None:
                try:
                    self._in_send.send_nowait(message)
                except trio.WouldBlock:
                    await trio_asyncio.trio_as_aio(self._in_send.send)(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the trio side is gone: nothing more to deliver
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._in_send.close()

    async def writer(self) -> None:
        """Write responses until the trio side calls finish() and the queue is empty."""
        while (message := await self._out.get()) is not _END:
            await self.raw.send_message(message)
            if self._finishing and self._out.empty():
                return

    # -- trio side ------------------------------------------------------------------------

    async def recv(self) -> Any | None:
        """The next request message, or None when the client has finished sending."""
        try:
            return await self._in_recv.receive()
        except trio.EndOfChannel:
            if isinstance(self._error, GRPCError):
                raise self._error from None
            return None

    async def send(self, message: Any) -> None:
        try:
            self._out.put_nowait(message)
            await trio.lowlevel.checkpoint()
        except asyncio.QueueFull:
            await self._put(message)

    def finish(self) -> None:
        """No more responses: the writer ends once everything queued is written. Never blocks
        (a full queue means the writer is busy, and it checks the flag after each send)."""
        self._finishing = True
        if self._out.empty():
            self._out.put_nowait(_END)


async def recv_limited(
    stream: Any, recv_type: type[Any], max_message_bytes: int, codec: CodecBase
) -> Any | None:
    """``stream.recv_message()`` of a grpclib server stream, with this server's rules (asyncio side):

    - a message over the size limit is refused from its 5-byte length prefix, before the
      body is read (RESOURCE_EXHAUSTED), so it is never buffered;
    - a body that does not decode is INVALID_ARGUMENT, never UNKNOWN;
    - either is logged as one line (a client mistake, not a server fault: no traceback).
    """
    # The same steps as grpclib.stream.recv_message, with the size check before the body.
    # grpclib offers no public hook for that: Stream._stream (its protocol stream) is the
    # reason pyproject.toml bounds grpclib below 0.5.
    inner = stream._stream
    meta = await inner.recv_data(5)
    if not meta:
        return None
    method = recv_type.__name__
    if len(meta) < 5:
        raise _refused(method, Status.INVALID_ARGUMENT, "truncated message (fewer than 5 prefix bytes)")
    if meta[0]:
        raise _refused(method, Status.UNIMPLEMENTED, "compressed messages are not supported")
    length = struct.unpack(">I", meta[1:5])[0]
    if length > max_message_bytes:
        raise _refused(
            method,
            Status.RESOURCE_EXHAUSTED,
            f"message of {length} bytes exceeds this server's limit of {max_message_bytes} bytes (max_message_bytes)",
        )
    body = await inner.recv_data(length)
    if len(body) != length:
        raise _refused(method, Status.INVALID_ARGUMENT, f"truncated message ({len(body)} of {length} bytes)")
    try:
        return codec.decode(body, recv_type)
    except Exception as exc:  # whatever the message implementation raises for bad bytes
        raise _refused(
            method, Status.INVALID_ARGUMENT, f"cannot decode {recv_type.__name__}: {exc}"
        ) from None


def _refused(message_type: str, status: Status, message: str) -> GRPCError:
    log.warning("%s refused (%s): %s", message_type, status.name, message)
    return GRPCError(status, message)


class LimitedStream:
    """A grpclib server stream whose receives follow :func:`recv_limited`, for services whose
    handlers we don't write (health, reflection): they call ``recv_message()`` or iterate the
    stream; everything else goes to the stream itself."""

    def __init__(self, stream: Any, recv_type: type[Any], max_message_bytes: int, codec: CodecBase) -> None:
        self._inner = stream
        self._recv_type = recv_type
        self._max = max_message_bytes
        self._codec = codec

    async def recv_message(self) -> Any | None:
        return await recv_limited(self._inner, self._recv_type, self._max, self._codec)

    def __aiter__(self) -> LimitedStream:
        return self

    async def __anext__(self) -> Any:
        message = await self.recv_message()
        if message is None:
            raise StopAsyncIteration
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
