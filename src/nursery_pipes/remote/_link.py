"""One remote node's conversation with its server: a StreamPipeline call, trio on one side.

The call itself is the asyncio :class:`~nursery_pipes.client.RemoteStream` (grpclib), run by
trio-asyncio in the supervisor's thread. As in ``service/_bridge.py``, nothing hops between
the two loops per frame while the stream is steady: trio puts requests on an asyncio queue
(``put_nowait``) that an asyncio *writer* task sends, and the asyncio *reader* hands what
the server says to trio through a memory channel (``send_nowait``). Either side waits — and
so pushes back on its producer — only when that bounded buffer is full, which is how
backpressure crosses the connection: a slow consumer here stops the reader, gRPC flow
control stops the server's sends, the remote pipeline fills up and stops reading.

Every outcome reaches trio as one final event — :class:`Closed` (the server flushed and
closed the session) or :class:`Failed` (anything else: refusal, remote node failure, a lost
connection) — so the executor handles errors in one place, in order with the outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
import trio_asyncio
from grpclib.exceptions import GRPCError, StreamTerminatedError

from .._errors import ManifestError, NodeError, NurseryPipesError
from ..client import ChunkOutput, Client, StreamEvent
from ..frames import Frame
from ..nodes._signals import Signal

__all__ = ["Closed", "Failed", "Link", "Output", "Ready", "SignalTaken"]


@dataclass(frozen=True, slots=True)
class Ready:
    session_id: str
    """The remote session's id (its server logs name it)."""


@dataclass(frozen=True, slots=True)
class Output:
    sequence: int
    """The remote sequence number of the input that caused it."""
    frame: Frame
    processing_s: float
    """What the remote server says processing that input took."""


@dataclass(frozen=True, slots=True)
class SignalTaken:
    """Remote node ``node_id`` took a signal this link forwarded (its oldest not answered)."""

    node_id: str
    dropped: tuple[int, ...]
    aborted: int | None
    """Remote sequence numbers."""


@dataclass(frozen=True, slots=True)
class Closed:
    pass


@dataclass(frozen=True, slots=True)
class Failed:
    error: NodeError


Event = Ready | Output | SignalTaken | Closed | Failed


class _Broken(Exception):
    """The server broke the conversation (translated into a NodeError naming it)."""


_CLOSE = object()


class Link:
    """The StreamPipeline call that runs node ``node_id`` on ``address``.

    trio side: :meth:`run` (a task that lives as long as the call), :meth:`send` /
    :meth:`close` for input, :attr:`events` for everything back, ending with Closed or Failed.
    """

    def __init__(
        self,
        node_id: str,
        address: str,
        manifest: Mapping[str, Any],
        *,
        token: str,
        tls: ssl.SSLContext | None,
        depth: int,
        on_progress: Callable[[str, float, str], None],
    ) -> None:
        self.node_id = node_id
        self.address = address
        self._manifest = dict(manifest)
        self._token = token
        self._tls = tls
        self._on_progress = on_progress
        self._depth = max(1, depth)
        self._events_in, self.events = trio.open_memory_channel[Event](self._depth)
        self._requests: asyncio.Queue[Any] | None = None
        self._queue_made = trio.Event()
        self._put: Any = None
        self._ready = False

    # -- trio side ---------------------------------------------------------------------

    async def run(self) -> None:
        """Hold the call until it ends; its outcome arrives on :attr:`events` (never raised)."""
        outcome: Event
        async with self._events_in:
            try:
                await trio_asyncio.aio_as_trio(self._converse)()
                outcome = Closed()
            except (
                TimeoutError,
                _Broken,
                NurseryPipesError,
                GRPCError,
                StreamTerminatedError,
                OSError,
            ) as exc:
                outcome = Failed(self._failure(exc))
            with contextlib.suppress(trio.BrokenResourceError):  # nobody listens: being stopped
                await self._events_in.send(outcome)

    async def send(self, sequence: int, frame: Frame) -> None:
        """Hand a frame to the writer; waits only while the writer's queue is full."""
        await self._send_request((sequence, frame))

    async def close(self) -> None:
        """End of input: the server flushes the remote node and closes the session."""
        await self._send_request(_CLOSE)

    async def signal(self, signal: Signal, to: str | None = None) -> None:
        """Forward a control signal to remote node ``to`` (default: this link's node), in
        order with the frames sent."""
        await self._send_request((to or self.node_id, signal))

    async def _send_request(self, request: Any) -> None:
        queue = await self._queue()
        try:
            queue.put_nowait(request)
            await trio.lowlevel.checkpoint()
        except asyncio.QueueFull:
            await self._put(request)

    async def _queue(self) -> asyncio.Queue[Any]:
        await self._queue_made.wait()  # by _converse, on the asyncio side
        assert self._requests is not None
        return self._requests

    # -- asyncio side ------------------------------------------------------------------

    async def _converse(self) -> None:
        self._requests = asyncio.Queue(self._depth)
        self._put = trio_asyncio.aio_as_trio(self._requests.put)
        self._queue_made.set()
        async with Client(self.address, token=self._token or None, tls=self._tls) as client:
            stream = client.stream(self._manifest, on_progress=self._progress)
            async with stream:
                self._ready = True
                await self._deliver(Ready(stream.session_id))
                writer = asyncio.ensure_future(self._write(stream, self._requests))
                try:
                    await self._read(stream)
                finally:
                    if not writer.done():
                        writer.cancel()
                    await asyncio.gather(writer, return_exceptions=True)

    async def _write(self, stream: Any, requests: asyncio.Queue[Any]) -> None:
        while (request := await requests.get()) is not _CLOSE:
            first, second = request
            if isinstance(second, Signal):
                await stream.signal(second.name, to=[first], payload=dict(second.payload))
                continue
            sequence, frame = first, second
            await stream.send(self.node_id, frame, sequence=sequence)
        await stream.close()

    async def _read(self, stream: Any) -> None:
        async for event in stream:
            if isinstance(event, ChunkOutput):
                await self._deliver(Output(event.sequence, event.frame, event.processing_time_ms / 1000))
            elif isinstance(event, StreamEvent) and event.kind == "rejected":
                error = event.message
                raise _Broken(f"refused sequence {error.failing_sequence}: {error.message}")
            elif isinstance(event, StreamEvent) and event.kind == "signal_handled":
                taken = event.message
                await self._deliver(
                    SignalTaken(taken.node_id, tuple(taken.dropped_sequences), taken.aborted_sequence)
                )
            elif isinstance(event, StreamEvent) and event.kind == "closed":
                return
        raise _Broken("the server ended the stream without closing the session")

    async def _deliver(self, event: Event) -> None:
        try:
            self._events_in.send_nowait(event)
        except trio.WouldBlock:
            await trio_asyncio.trio_as_aio(self._events_in.send)(event)

    def _progress(self, progress: Any) -> None:
        if progress.node_id == self.node_id and progress.state != "ready":
            self._on_progress(progress.state, progress.progress, progress.message)

    # -- errors ------------------------------------------------------------------------

    @property
    def _phase(self) -> str:
        return "process" if self._ready else "initialize"

    def _failure(self, exc: BaseException) -> NodeError:
        where = f"on {self.address}"
        if isinstance(exc, ManifestError):
            issues = "; ".join(f"{i.path}: {i.message}" for i in exc.issues)
            return NodeError(self.node_id, "initialize", f"{self.address} refused the node: {issues}")
        if isinstance(exc, NodeError):  # a remote node failed: keep its name and traceback
            detail = str(exc).removeprefix(f"node {exc.node_id!r} failed in {exc.phase}: ")
            # (Remote node ids are ours: the call runs this node, or the fused run it heads.)
            return NodeError(
                exc.node_id or self.node_id,
                exc.phase,
                f"{where}: {detail}",
                remote_traceback=exc.remote_traceback,
            )
        if isinstance(exc, (NurseryPipesError, _Broken)):
            return NodeError(self.node_id, self._phase, f"{where}: {exc}")
        if isinstance(exc, GRPCError):
            detail = f"{exc.status.name}: {exc.message}" if exc.message else exc.status.name
            return NodeError(self.node_id, self._phase, f"{where}: the call failed ({detail})")
        what = "connection lost" if self._ready else "cannot connect"
        reason = str(exc) or type(exc).__name__
        return NodeError(self.node_id, self._phase, f"{where}: {what} ({reason})")
