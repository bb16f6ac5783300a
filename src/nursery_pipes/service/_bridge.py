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

import struct
from typing import Any

import trio
import trio_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

__all__ = ["TrioStream", "recv_limited"]


class TrioStream:
    """A grpclib server stream, usable from trio."""

    def __init__(self, stream: Any, recv_type: type[Any], max_message_bytes: int) -> None:
        self.raw = stream
        self._recv_type = recv_type
        self._max = max_message_bytes
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
        return await recv_limited(self.raw, self._recv_type, self._max)


async def recv_limited(stream: Any, recv_type: type[Any], max_message_bytes: int) -> Any | None:
    """``stream.recv_message()`` of a grpclib server stream, refusing a message over the size
    limit before its body is read (asyncio side)."""
    # The same steps as grpclib.stream.recv_message, with the size check before the body.
    inner = stream._stream  # grpclib.protocol.Stream
    meta = await inner.recv_data(5)
    if not meta:
        return None
    if meta[0]:
        raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
    length = struct.unpack(">I", meta[1:5])[0]
    if length > max_message_bytes:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"message of {length} bytes exceeds this server's limit of {max_message_bytes} bytes (max_message_bytes)",
        )
    body = await inner.recv_data(length)
    try:
        return stream._codec.decode(body, recv_type)
    except Exception as exc:
        raise GRPCError(Status.INVALID_ARGUMENT, f"cannot decode {recv_type.__name__}: {exc}") from exc


async def checkpoint() -> None:
    await trio.lowlevel.checkpoint()
