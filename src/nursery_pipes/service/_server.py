"""The gRPC server: grpclib inside the trio program, serving remotemedia.v1 + health + reflection.

Life of a server (:meth:`Server.serve`)::

    open the runtime (shared worker pool, warm workers, sweep of stale shm)
      └─ open a trio-asyncio loop; start grpclib on the listen address (loopback by default; TLS optional)
           └─ serving ── drain() (SIGTERM/SIGINT) ──▶ draining:
                 the listener closes at once (new connections are refused), health →
                 NOT_SERVING on the connections still open, new calls on them end with
                 UNAVAILABLE; running sessions get ``drain_timeout_secs`` to finish, then
                 are cancelled (their calls end with UNAVAILABLE too); every client
                 connection closes; the runtime stops every worker and unlinks its shm.

Why the listener closes when the drain starts, not when it ends: a load balancer must send
new sessions elsewhere, and a refused connection is the one signal every balancer acts on
without being told — nginx retries a gRPC request on the next upstream only when it failed
before the request was sent (its request bodies are unbuffered), and marks the replica down;
Kubernetes' gRPC probes fail the same way. Health NOT_SERVING is still there for whoever
holds a connection (a balancer's health checker, ``Health/Watch``), and a new call on such a
connection ends with UNAVAILABLE — the status gRPC clients and proxies retry elsewhere, as
the request was not processed (docs/scaling.md).

Authentication: when a bearer token is configured, ExecutePipeline and
StreamPipeline require ``authorization: Bearer <token>`` and answer anything
else with ``ErrorResponse(error_type=AUTHENTICATION)``; the Monitor service
(``nursery_pipes.v1``, our extension: sessions, pipelines, pids) requires it too
and answers UNAUTHENTICATED; GetVersion, health and reflection stay open (they
reveal nothing a client could misuse).

Monitor (``[monitor] enabled``, on by default): Snapshot, and Watch — a snapshot
every interval until the client leaves; it is not a session, so a drain neither
waits for it nor refuses it (the watcher sees the drain) and the server's close
ends it.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
import ssl
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import trio
import trio_asyncio
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server as GrpcServer

from .._config import RuntimeConfig, ServerConfig
from .._errors import ConfigError
from .._proto.remotemedia import v1 as pb
from ..runtime import Runtime
from ..wire._messages import UPB as M
from ..wire._messages import new_pool
from ._bridge import LimitedStream, PumpedStream, recv_limited
from ._execution import execute, version
from ._monitor import MON, MONITOR, take_snapshot, watch_interval
from ._streaming import StreamSettings, handle_stream

if TYPE_CHECKING:
    from ._prometheus import GrpcMetrics  # prometheus-client is imported only with --metrics-listen

__all__ = ["Server", "parse_listen"]

EXECUTION = "remotemedia.v1.PipelineExecutionService"
STREAMING = "remotemedia.v1.StreamingPipelineService"


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address must be host:port, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    if not config.tls_cert and not config.tls_key:
        return None
    if not (config.tls_cert and config.tls_key):
        raise ConfigError("TLS needs both server.tls_cert and server.tls_key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS certificate/key ({config.tls_cert}, {config.tls_key}): {exc}"
        ) from exc
    context.set_alpn_protocols(["h2"])
    return context


class Server:
    """A nursery_pipes gRPC server for one :class:`Runtime`.

    >>> # in a trio program:
    >>> # async with Runtime(config) as runtime:
    >>> #     port = await nursery.start(Server(runtime).serve)
    """

    def __init__(self, runtime: Runtime, *, metrics: GrpcMetrics | None = None) -> None:
        self.runtime = runtime
        self._metrics = metrics
        self.config: RuntimeConfig = runtime.config
        self._accepting = True
        self._drain = trio.Event()
        self._active = 0
        self._idle = trio.Event()
        self._idle.set()
        self._cancel_scopes: set[trio.CancelScope] = set()
        self._status = ServiceStatus()
        self._token = self.config.auth_token_value()  # fails closed: a named but unset variable raises
        self._codec = _WireCodec(metrics)
        self._listener: asyncio.AbstractServer | None = None
        self.port: int | None = None
        self._listening_since: float | None = None
        """trio.current_time() when the server started listening (the Monitor's uptime)."""
        self._watchers = 0

    @property
    def accepting(self) -> bool:
        return self._accepting

    def drain(self) -> None:
        """Stop taking new sessions; running ones get ``drain_timeout_secs`` to finish.

        From the moment this returns, new connections are refused (the listener is closed) and
        health reports NOT_SERVING: a balancer is told the truth before anything else happens."""
        self._accepting = False
        self._status.set(False)
        if self._listener is not None:
            self._listener.close()  # stops accepting; the connections it made stay open
        self._drain.set()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`drain` completes (or the task is cancelled). Reports the bound port."""
        host, port = parse_listen(self.config.server.listen)
        context = _ssl_context(self.config.server)
        self._status.set(True)
        # Bound here, not by grpclib: we know the port without reaching into its server.
        sock = _bind(host, port)
        async with trio_asyncio.open_loop() as loop:
            connections: weakref.WeakSet[Any] = weakref.WeakSet()
            factory = _tracked_factory(GrpcServer(self._handlers(), codec=self._codec), connections)
            # The listener is ours (asyncio's public create_server), not grpclib's Server.start:
            # drain() closes it alone, leaving the running calls their connections.
            try:
                listener = await trio_asyncio.aio_as_trio(loop.create_server)(factory, sock=sock, ssl=context)
            except BaseException:
                sock.close()
                raise
            self._listener = listener
            try:
                self.port = int(sock.getsockname()[1])
                self._listening_since = trio.current_time()
                task_status.started(self.port)
                await self._drain.wait()
                await self._finish_sessions()
            finally:
                self._listener = None
                listener.close()
                # Close every client connection, which cancels the calls still running (their
                # handlers end them with UNAVAILABLE), or their clients wait forever and the
                # sockets outlive the loop.
                handlers = []
                for protocol in list(connections):
                    processor = getattr(protocol, "processor", None)
                    if processor is not None:
                        processor.close("server stopped")
                        handlers.append(protocol.handler)
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    for handler in handlers:
                        await trio_asyncio.aio_as_trio(handler.wait_closed)()
                    await trio_asyncio.aio_as_trio(listener.wait_closed)()
                    await trio_asyncio.aio_as_trio(asyncio.sleep)(0)  # transports finish closing

    async def _finish_sessions(self) -> None:
        with trio.move_on_after(self.config.server.drain_timeout_secs):
            await self._idle.wait()
        for scope in list(self._cancel_scopes):
            scope.cancel()
        with trio.move_on_after(self.config.multiprocess.grace_period_secs + 5):
            await self._idle.wait()

    def _handlers(self) -> list[Any]:
        execution = _Service(
            EXECUTION,
            {
                "ExecutePipeline": (
                    self._execute,
                    Cardinality.UNARY_UNARY,
                    M.ExecuteRequest,
                    M.ExecuteResponse,
                ),
                "GetVersion": (self._version, Cardinality.UNARY_UNARY, M.VersionRequest, M.VersionResponse),
            },
        )
        streaming = _Service(
            STREAMING,
            {
                "StreamPipeline": (
                    self._stream,
                    Cardinality.STREAM_STREAM,
                    M.StreamRequest,
                    M.StreamResponse,
                ),
            },
        )
        ours = [execution, streaming]
        if self.config.monitor.enabled:
            ours.append(
                _Service(
                    MONITOR,
                    {
                        "Snapshot": (
                            self._monitor_snapshot,
                            Cardinality.UNARY_UNARY,
                            MON.SnapshotRequest,
                            MON.ServerSnapshot,
                        ),
                        "Watch": (
                            self._monitor_watch,
                            Cardinality.UNARY_STREAM,
                            MON.WatchRequest,
                            MON.ServerSnapshot,
                        ),
                    },
                )
            )
        health = Health({service: [self._status] for service in ours})
        # Reflection in both versions: v1, and v1alpha, which grpcio-reflection's client and
        # older grpcurl speak. The pool holds our protos and the health service's.
        services: list[Any] = ServerReflection.extend([*ours, health], pool=_descriptor_pool())
        # grpclib's own services (health, reflection) get the same receive rules as ours: the
        # size limit before the body is read, INVALID_ARGUMENT for a body that doesn't decode.
        limit = self.config.server.max_message_bytes
        limited = [s if s in ours else _Limited(s, limit, self._codec) for s in services]
        if not self.config.monitor.enabled:
            # Answered, not unknown: grpclib's answer to an unknown method lacks a content-type,
            # which its own client reports as UNKNOWN "Missing content-type header". This says why.
            limited.append(
                _Service(
                    MONITOR,
                    {
                        "Snapshot": (
                            _monitor_off,
                            Cardinality.UNARY_UNARY,
                            MON.SnapshotRequest,
                            MON.ServerSnapshot,
                        ),
                        "Watch": (
                            _monitor_off,
                            Cardinality.UNARY_STREAM,
                            MON.WatchRequest,
                            MON.ServerSnapshot,
                        ),
                    },
                )
            )
        if self._metrics is None:
            return limited
        return [_Counted(s, self._metrics) for s in limited]

    # -- handlers (asyncio shims → trio) ------------------------------------------------------

    async def _version(self, stream: Any) -> None:
        request = await recv_limited(
            stream, M.VersionRequest, self.config.server.max_message_bytes, self._codec
        )
        await stream.send_message(version(self.runtime, request or M.VersionRequest()))

    async def _execute(self, raw: Any) -> None:
        # Receive and reply on the asyncio side; hop into trio once, for the work itself.
        with self._counted():
            denied = self._auth_error(raw)  # before reading: an unauthenticated body is never decoded
            if denied is not None:
                await raw.send_message(M.ExecuteResponse(error=denied))
                return
            request = await recv_limited(
                raw, M.ExecuteRequest, self.config.server.max_message_bytes, self._codec
            )
            if request is None:
                return
            response = await trio_asyncio.trio_as_aio(self._execute_trio)(request, trace_context(raw))
            await raw.send_message(response)

    async def _execute_trio(self, request: Any, context: dict[str, str]) -> Any:
        async with self._tracked():
            return await execute(self.runtime, request, self._accepting, trace_context=context)

    async def _stream(self, raw: Any) -> None:
        with self._counted():
            denied = self._auth_error(raw)  # before reading: an unauthenticated body is never decoded
            if denied is not None:
                await raw.send_message(M.StreamResponse(error=denied))
                return
            stream = PumpedStream(raw, M.StreamRequest, self.config.server.max_message_bytes, self._codec)
            await _pumped(
                stream,
                trio_asyncio.trio_as_aio(self._stream_trio)(stream, trace_context(raw)),
                drain_timeout=self.config.server.stall_timeout_secs,
            )

    async def _stream_trio(self, stream: PumpedStream, context: dict[str, str]) -> None:
        try:
            async with self._tracked():
                settings = StreamSettings(
                    metrics_interval_secs=self.config.server.metrics_interval_secs,
                    stall_timeout_secs=self.config.server.stall_timeout_secs,
                    observe_chunk_latency=self._metrics.chunk_latency.observe if self._metrics else None,
                )
                await handle_stream(
                    stream, self.runtime, settings, lambda: self._accepting, trace_context=context
                )
        except BaseExceptionGroup as group:
            # A GRPCError raised by a task of the stream's nurseries (undecodable or oversized
            # message, a client that stopped reading) arrives wrapped; grpclib only turns a bare
            # GRPCError into its status, anything else becomes UNKNOWN "Internal Server Error".
            raise _bare_grpc_error(group) from None
        finally:
            stream.finish()

    def _auth_error(self, raw: Any) -> Any | None:
        refusal = self._auth_refusal(raw)
        if refusal is None:
            return None
        return M.ErrorResponse(error_type=pb.ErrorType.AUTHENTICATION, message=refusal)

    def _auth_refusal(self, raw: Any) -> str | None:
        """Why the call's bearer token is not accepted, or None (also when none is required)."""
        if not self._token:
            return None
        header = raw.metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self._token.encode()):
            return None
        why = "missing" if not header else "wrong"
        return f"{why} bearer token (send 'authorization: Bearer <token>')"

    # -- Monitor (nursery_pipes.v1): asyncio side, one hop into trio per snapshot ----------------

    async def _monitor_snapshot(self, raw: Any) -> None:
        self._monitor_auth(raw)
        await recv_limited(raw, MON.SnapshotRequest, self.config.server.max_message_bytes, self._codec)
        await raw.send_message(await trio_asyncio.trio_as_aio(self._snapshot)())

    async def _monitor_watch(self, raw: Any) -> None:
        self._monitor_auth(raw)
        request = await recv_limited(raw, MON.WatchRequest, self.config.server.max_message_bytes, self._codec)
        interval = watch_interval(request.interval_secs if request is not None else 0.0)
        cap = self.config.monitor.max_watchers
        if self._watchers >= cap:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"{self._watchers} Watch calls are running; this server allows {cap} (monitor.max_watchers)",
            )
        self._watchers += 1
        try:
            while True:  # until the client leaves (the call is cancelled) or the server closes
                # send_message waits while the client does not read: nothing piles up here.
                await raw.send_message(await trio_asyncio.trio_as_aio(self._snapshot)())
                await asyncio.sleep(interval)
        finally:
            self._watchers -= 1

    def _monitor_auth(self, raw: Any) -> None:
        refusal = self._auth_refusal(raw)  # before reading: an unauthenticated body is never decoded
        if refusal is not None:
            raise GRPCError(Status.UNAUTHENTICATED, refusal)

    async def _snapshot(self) -> Any:
        since = self._listening_since
        uptime = trio.current_time() - since if since is not None else 0.0
        return await take_snapshot(self.runtime, uptime_s=uptime, draining=not self._accepting)

    @contextmanager
    def _counted(self) -> Iterator[None]:
        """Count a running ExecutePipeline/StreamPipeline call (asyncio side): the drain waits
        until grpclib has its outcome, so the status reaches the client before we close."""
        self._active += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    @asynccontextmanager
    async def _tracked(self) -> AsyncIterator[None]:
        """Let the drain cancel a call once its deadline has passed; the call then ends with
        UNAVAILABLE (a cancelled grpclib handler would otherwise leave its client waiting)."""
        with trio.CancelScope() as scope:
            self._cancel_scopes.add(scope)
            try:
                yield
            finally:
                self._cancel_scopes.discard(scope)
        if scope.cancelled_caught:  # only the drain cancels this scope
            raise GRPCError(
                Status.UNAVAILABLE,
                "server is shutting down: the call did not finish within "
                f"server.drain_timeout_secs ({self.config.server.drain_timeout_secs:g} s) and was cancelled",
            )


async def _monitor_off(stream: Any) -> None:
    raise GRPCError(
        Status.UNIMPLEMENTED,
        f"{MONITOR} is off on this server ([monitor] enabled = false, or serve --no-monitor)",
    )


async def _pumped(stream: PumpedStream, body: Any, *, drain_timeout: float) -> None:
    """Run a stream's trio body with its asyncio reader and writer (asyncio side).

    The body's outcome is the call's outcome. If the writer fails first (the connection
    broke), the body is cancelled. Whatever happens, all three tasks are finished before
    this returns — a cancelled handler (client gone) cancels the body, and the session with it.
    """
    reader = asyncio.ensure_future(stream.reader())
    writer = asyncio.ensure_future(stream.writer())
    work = asyncio.ensure_future(body)
    try:
        await asyncio.wait([work, writer], return_when=asyncio.FIRST_COMPLETED)
        if writer.done() and not work.done():
            work.cancel()
        await work  # raises the body's error (a GRPCError becomes the call's status)
        await asyncio.wait_for(writer, drain_timeout)  # every response queued before the end is sent
    finally:
        for task in (work, writer, reader):
            if not task.done():
                task.cancel()
        await asyncio.gather(work, writer, reader, return_exceptions=True)


TRACE_HEADERS = ("traceparent", "tracestate")
"""The W3C trace context headers a call's session trace continues (docs/design.md §4, "Traces")."""


def trace_context(raw: Any) -> dict[str, str]:
    """The call's trace context from its metadata, as carrier headers (empty: none sent)."""
    metadata = raw.metadata
    return {name: str(metadata[name]) for name in TRACE_HEADERS if name in metadata}


def _bind(host: str, port: int) -> socket.socket:
    """A bound TCP socket for the listen address (what asyncio would bind: the first address
    ``host`` resolves to, SO_REUSEADDR, IPv6 sockets IPv6-only). An OSError says why not."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _tracked_factory(server: GrpcServer, connections: weakref.WeakSet[Any]) -> Callable[[], Any]:
    """grpclib's protocol factory (one H2Protocol per client connection), each protocol it makes
    added to ``connections``."""
    # grpclib has no public hook for its connections: Server._protocol_factory and
    # H2Protocol.processor / .handler are why pyproject.toml bounds grpclib below 0.5.
    factory = server._protocol_factory

    def tracked() -> Any:
        protocol = factory()
        connections.add(protocol)
        return protocol

    return tracked


def _bare_grpc_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The GRPCError a group carries if that is all it carries (else the group itself)."""
    grpc_errors, rest = group.split(GRPCError)
    if grpc_errors is None or rest is not None:
        return group
    first: BaseException = grpc_errors
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


class _WireCodec(ProtoCodec):
    """grpclib's protobuf codec without its exact-type check on replies: our handlers answer with
    upb messages (see wire/_messages.py), health and reflection with their own; all serialise.
    With metrics, it counts the bytes of every message each way."""

    def __init__(self, metrics: GrpcMetrics | None = None) -> None:
        self._metrics = metrics

    def encode(self, message: Any, message_type: Any) -> bytes:
        data: bytes = message.SerializeToString()
        if self._metrics is not None:
            self._metrics.sent_bytes.inc(len(data))
        return data

    def decode(self, data: bytes, message_type: Any) -> Any:
        if self._metrics is not None:
            self._metrics.received_bytes.inc(len(data))
        return super().decode(data, message_type)


class _Counted:
    """A service whose calls are counted by method and final status code."""

    def __init__(self, service: Any, metrics: GrpcMetrics) -> None:
        self._mapping = {
            path: handler._replace(func=_counted(handler.func, path.rsplit("/", 1)[1], metrics))
            for path, handler in service.__mapping__().items()
        }

    def __mapping__(self) -> dict[str, Handler]:
        return self._mapping


def _counted(func: Callable[[Any], Any], method: str, metrics: GrpcMetrics) -> Any:
    async def handler(stream: Any) -> None:
        code = "OK"
        try:
            await func(stream)
        except GRPCError as exc:
            code = exc.status.name
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "UNKNOWN"
            raise
        finally:
            metrics.calls.labels(method=method, code=code).inc()

    return handler


class _Service:
    """A grpclib service from (method name → handler) — we drive the raw streams ourselves."""

    def __init__(
        self, name: str, methods: dict[str, tuple[Callable[..., Any], Cardinality, type, type]]
    ) -> None:
        self._mapping = {
            f"/{name}/{method}": Handler(fn, cardinality, request, reply)
            for method, (fn, cardinality, request, reply) in methods.items()
        }

    def __mapping__(self) -> dict[str, Handler]:
        return self._mapping


class _Limited:
    """One of grpclib's services (health, reflection) with :class:`LimitedStream` receives."""

    def __init__(self, service: Any, max_message_bytes: int, codec: ProtoCodec) -> None:
        self._mapping = {
            path: handler._replace(
                func=_limited(handler.func, handler.request_type, max_message_bytes, codec)
            )
            for path, handler in service.__mapping__().items()
        }

    def __mapping__(self) -> dict[str, Handler]:
        return self._mapping


def _limited(func: Callable[[Any], Any], request_type: type, limit: int, codec: ProtoCodec) -> Any:
    async def handler(stream: Any) -> None:
        await func(LimitedStream(stream, request_type, limit, codec))

    return handler


def _descriptor_pool() -> Any:
    """remotemedia.v1, nursery_pipes.v1 (Monitor) and health, for reflection: a pool of its own,
    so UPB's stays as it is."""
    from grpclib.health.v1 import health_pb2

    pool = new_pool("remotemedia.v1", "nursery_pipes.v1")
    pool.AddSerializedFile(health_pb2.DESCRIPTOR.serialized_pb)
    return pool
