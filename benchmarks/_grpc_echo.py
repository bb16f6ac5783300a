"""Raw remotemedia.v1 echo servers for bench_grpc.py (baselines; not the product).

    python benchmarks/_grpc_echo.py --mode MODE [--codec betterproto|upb] [--no-rust-codec]

Serves the SAME method paths as ``nursery-pipes serve`` with the SAME betterproto
message types, but with no runtime behind them:

- ``ExecutePipeline``: ``ExecuteResponse(result=ExecutionResult(data_outputs=request.data_inputs))``;
- ``StreamPipeline``: StreamInit → StreamReady; each DataChunk →
  ``StreamResponse(result=ChunkResult(sequence, data_outputs={node_id: buffer}))``;
  StreamControl → StreamClosed, end of stream.

Modes (how the handler runs):

- ``asyncio``: plain ``asyncio.run`` — the raw grpclib baseline;
- ``trio-asyncio``: grpclib on a trio-asyncio loop inside ``trio.run``, handler still asyncio
  (the cost of trio-asyncio's loop alone);
- ``trio-hop``: as above, but the handler body runs in trio (``trio_as_aio``) and hops back to
  asyncio for every recv/send through ``nursery_pipes.service._bridge.TrioStream`` — the
  server's own bridge (``aio_as_trio`` per message);
- ``trio-tasks``: trio-hop plus our server's task layout for a stream (an inbound task and a
  single sender task joined by a trio memory channel, as in ``service/_streaming.py``),
  still with no session behind it;
- ``trio-pump``: a PROPOSED bridge for comparison: the trio body of trio-tasks, but the
  grpclib stream is read and written by two asyncio tasks, handing messages over without a
  per-message hop (asyncio → trio: ``MemorySendChannel.send_nowait``; trio → asyncio:
  ``asyncio.Queue.put_nowait``; a hop only to wait when a side is full).

``--codec upb`` serves google.protobuf (upb) message classes built from the package's own
descriptor set (``remotemedia_v1.binpb``) instead of the betterproto ones: same wire format,
so the same betterproto client talks to it (a PROPOSED codec for the server's hot path).

``--no-rust-codec`` makes ``import betterproto_rust_codec`` fail before betterproto is
imported, so betterproto falls back to its pure-Python (de)serialisation.

Prints ``listening on HOST:PORT`` on stderr once bound; exits on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

MODES = ("asyncio", "trio-asyncio", "trio-hop", "trio-tasks", "trio-pump")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=MODES, default="asyncio")
    parser.add_argument("--no-rust-codec", action="store_true")
    parser.add_argument("--codec", choices=("betterproto", "upb"), default="betterproto")
    parser.add_argument("--host", default="127.0.0.1")
    return parser.parse_args()


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.no_rust_codec:
    sys.modules["betterproto_rust_codec"] = None  # type: ignore[assignment]  # import → ModuleNotFoundError

import asyncio  # noqa: E402

import betterproto  # noqa: E402
from grpclib.const import Cardinality, Handler  # noqa: E402
from grpclib.server import Server  # noqa: E402

from nursery_pipes._proto.remotemedia import v1 as pb  # noqa: E402

EXECUTE = "/remotemedia.v1.PipelineExecutionService/ExecutePipeline"
STREAM = "/remotemedia.v1.StreamingPipelineService/StreamPipeline"


class Betterproto:
    """The generated betterproto messages (what our server uses)."""

    ExecuteRequest = pb.ExecuteRequest
    ExecuteResponse = pb.ExecuteResponse
    StreamRequest = pb.StreamRequest
    StreamResponse = pb.StreamResponse

    @staticmethod
    def reply(request: Any, count: int) -> tuple[Any, bool]:
        """(response, last) for one StreamRequest."""
        kind, found = betterproto.which_one_of(request, "request")
        value: Any = found
        if kind == "data_chunk":
            return (
                pb.StreamResponse(
                    result=pb.ChunkResult(
                        sequence=value.sequence,
                        data_outputs={value.node_id: value.buffer},
                        total_items_processed=count,
                    )
                ),
                False,
            )
        if kind == "init":
            return pb.StreamResponse(
                ready=pb.StreamReady(session_id="echo", recommended_chunk_size=320)
            ), False
        if kind == "control":
            return pb.StreamResponse(closed=pb.StreamClosed(session_id="echo", reason="closed")), True
        return None, False

    @staticmethod
    def execute_reply(request: Any) -> Any:
        return pb.ExecuteResponse(
            result=pb.ExecutionResult(
                data_outputs=dict(request.data_inputs), status=pb.ExecutionStatus.SUCCESS
            )
        )


class Upb:
    """google.protobuf (upb) classes from the package's descriptor set: same wire format."""

    def __init__(self) -> None:
        from importlib import resources

        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        data = resources.files("nursery_pipes._proto").joinpath("remotemedia_v1.binpb").read_bytes()
        pool = descriptor_pool.DescriptorPool()
        for proto in descriptor_pb2.FileDescriptorSet.FromString(data).file:
            pool.Add(proto)

        def cls(name: str) -> Any:
            return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"remotemedia.v1.{name}"))

        self.ExecuteRequest = cls("ExecuteRequest")
        self.ExecuteResponse = cls("ExecuteResponse")
        self.StreamRequest = cls("StreamRequest")
        self.StreamResponse = cls("StreamResponse")

    def reply(self, request: Any, count: int) -> tuple[Any, bool]:
        kind = request.WhichOneof("request")
        response = self.StreamResponse()
        if kind == "data_chunk":
            chunk = request.data_chunk
            result = response.result
            result.sequence = chunk.sequence
            result.data_outputs[chunk.node_id].CopyFrom(chunk.buffer)
            result.total_items_processed = count
            return response, False
        if kind == "init":
            response.ready.session_id = "echo"
            response.ready.recommended_chunk_size = 320
            return response, False
        if kind == "control":
            response.closed.session_id = "echo"
            response.closed.reason = "closed"
            return response, True
        return None, False

    def execute_reply(self, request: Any) -> Any:
        response = self.ExecuteResponse()
        response.result.status = 1  # SUCCESS
        for node_id, buffer in request.data_inputs.items():
            response.result.data_outputs[node_id].CopyFrom(buffer)
        return response


M: Any = Betterproto


# -- asyncio handlers ----------------------------------------------------------------------------


async def execute_aio(stream: Any) -> None:
    request = await stream.recv_message()
    await stream.send_message(M.execute_reply(request))


async def echo(recv: Any, send: Any) -> None:
    """The echo loop of every handler: ``recv()`` until None, ``send`` each reply, stop after CLOSE."""
    count = 0
    while True:
        request = await recv()
        if request is None:
            return
        count += 1
        response, last = M.reply(request, count)
        if response is not None:
            await send(response)
        if last:
            return


async def stream_aio(stream: Any) -> None:
    await echo(stream.recv_message, stream.send_message)


# -- trio handlers (bodies in trio, one asyncio hop per recv/send) ---------------------------------


def _trio_handlers(tasks: bool) -> tuple[Any, Any]:
    import trio
    import trio_asyncio
    from grpclib.encoding.proto import ProtoCodec

    from nursery_pipes.service._bridge import TrioStream

    codec = ProtoCodec()  # what the echo server decodes with (grpclib's default)

    async def execute_body(raw: Any) -> None:
        stream = TrioStream(raw, M.ExecuteRequest, MAX_MESSAGE_BYTES, codec)
        request = await stream.recv()
        await stream.send(M.execute_reply(request))

    async def stream_body(raw: Any) -> None:
        stream = TrioStream(raw, M.StreamRequest, MAX_MESSAGE_BYTES, codec)
        await echo(stream.recv, stream.send)

    async def stream_body_tasks(raw: Any) -> None:
        stream = TrioStream(raw, M.StreamRequest, MAX_MESSAGE_BYTES, codec)
        send_channel, receive_channel = trio.open_memory_channel[Any](64)

        async def inbound() -> None:
            async with send_channel:
                await echo(stream.recv, send_channel.send)

        async def sender() -> None:
            async with receive_channel:
                async for response in receive_channel:
                    await stream.send(response)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            nursery.start_soon(inbound)

    body = stream_body_tasks if tasks else stream_body

    async def execute(stream: Any) -> None:
        await trio_asyncio.trio_as_aio(execute_body)(stream)

    async def streaming(stream: Any) -> None:
        await trio_asyncio.trio_as_aio(body)(stream)

    return execute, streaming


def _pump_handler() -> Any:
    """StreamPipeline with asyncio reader/writer tasks and a trio body, no per-message hop."""
    import trio
    import trio_asyncio

    end = object()

    async def streaming(stream: Any) -> None:
        inbox_send, inbox_receive = trio.open_memory_channel[Any](64)
        outbox: asyncio.Queue[Any] = asyncio.Queue(64)

        async def reader() -> None:  # asyncio
            try:
                while True:
                    request = await stream.recv_message()
                    if request is None:
                        return
                    try:
                        inbox_send.send_nowait(request)
                    except trio.WouldBlock:  # the trio side is behind: wait (rare)
                        await trio_asyncio.trio_as_aio(inbox_send.send)(request)
            finally:
                inbox_send.close()

        async def put(message: Any) -> None:  # trio → asyncio
            try:
                outbox.put_nowait(message)
            except asyncio.QueueFull:  # the client is behind: wait (rare)
                await trio_asyncio.aio_as_trio(outbox.put)(message)

        async def body() -> None:  # trio: what the session's tasks would do
            count = 0
            try:
                async with inbox_receive:
                    async for request in inbox_receive:
                        count += 1
                        response, last = M.reply(request, count)
                        if response is not None:
                            await put(response)
                        if last:
                            return
            finally:
                with trio.CancelScope(shield=True):
                    await put(end)

        async def writer() -> None:  # asyncio
            while (message := await outbox.get()) is not end:
                await stream.send_message(message)

        reading = asyncio.ensure_future(reader())
        try:
            await asyncio.gather(trio_asyncio.trio_as_aio(body)(), writer())
        finally:
            reading.cancel()

    return streaming


class _Service:
    def __init__(self, execute: Any, streaming: Any) -> None:
        self._mapping = {
            EXECUTE: Handler(execute, Cardinality.UNARY_UNARY, M.ExecuteRequest, M.ExecuteResponse),
            STREAM: Handler(streaming, Cardinality.STREAM_STREAM, M.StreamRequest, M.StreamResponse),
        }

    def __mapping__(self) -> dict[str, Handler]:
        return self._mapping


def _announce(server: Server, host: str) -> None:
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)


async def serve_asyncio(host: str) -> None:
    server = Server([_Service(execute_aio, stream_aio)])
    await server.start(host, 0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _announce(server, host)
    await stop.wait()
    server.close()
    await server.wait_closed()


async def serve_trio(host: str, mode: str) -> None:
    import trio
    import trio_asyncio

    if mode == "trio-asyncio":
        service = _Service(execute_aio, stream_aio)
    elif mode == "trio-pump":
        service = _Service(_trio_handlers(tasks=True)[0], _pump_handler())
    else:
        service = _Service(*_trio_handlers(tasks=mode == "trio-tasks"))
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio_asyncio.open_loop():
            server = Server([service])
            await trio_asyncio.aio_as_trio(server.start)(host, 0)
            _announce(server, host)
            async for _ in signals:
                break
            server.close()
            await trio_asyncio.aio_as_trio(server.wait_closed)()


def main() -> None:
    global M
    assert ARGS is not None
    if ARGS.codec == "upb":
        M = Upb()
    if ARGS.mode == "asyncio":
        asyncio.run(serve_asyncio(ARGS.host))
    else:
        import trio

        trio.run(serve_trio, ARGS.host, ARGS.mode)


if __name__ == "__main__":
    main()
