"""Shared helpers for the gRPC tests: a real server on a loopback socket, clients, manifests.

The server runs inside the test's trio run (``Server.serve`` opens its own
trio-asyncio loop); grpclib clients run on a second trio-asyncio loop opened by
:func:`serving`, and are driven with :meth:`Served.aio` (an asyncio coroutine
function, run to completion from trio). grpcio clients run in subprocesses
(tests/test_interop_grpcio.py). :func:`open_stream` is a raw StreamPipeline call
that sends exactly what a test asks for, bytes included. :func:`serve_process` runs
``nursery-pipes serve`` as a real process, in a process session of its own.

Usage::

    async def test_x() -> None:
        async with serving(limits={"max_sessions": 1}) as served:
            async def call() -> pb.VersionResponse:
                async with served.client() as client:
                    return await client.version()
            info = await served.aio(call)

or the ``served`` fixture (import ``served_fixture`` into the test module; default config,
overridden by indirect parametrisation: ``@pytest.mark.parametrize("served", [{"server":
{...}}], indirect=True)``).
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import betterproto
import numpy as np
import pytest
import trio
import trio_asyncio
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest

from nursery_pipes import AudioFrame, Runtime, RuntimeConfig
from nursery_pipes._config import (
    LimitsConfig,
    MonitorConfig,
    MultiprocessDefaults,
    NodesConfig,
    ServerConfig,
)
from nursery_pipes._proto.remotemedia import v1 as pb
from nursery_pipes.client import Client
from nursery_pipes.runtime import Tracer
from nursery_pipes.service import Server
from nursery_pipes.wire import manifest_to_proto

T = TypeVar("T")

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"
PROTO_FILES = (
    "remotemedia/v1/common.proto",
    "remotemedia/v1/execution.proto",
    "remotemedia/v1/streaming.proto",
)

GRACE = 0.3
"""Worker stop grace period for every test server: tests with hung workers stay fast."""

EXECUTION = "remotemedia.v1.PipelineExecutionService"
STREAMING = "remotemedia.v1.StreamingPipelineService"
EXECUTE_PATH = f"/{EXECUTION}/ExecutePipeline"
VERSION_PATH = f"/{EXECUTION}/GetVersion"
STREAM_PATH = f"/{STREAMING}/StreamPipeline"
HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
HEALTH_WATCH_PATH = "/grpc.health.v1.Health/Watch"
REFLECTION_V1_PATH = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
REFLECTION_V1ALPHA_PATH = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
MONITOR = "nursery_pipes.v1.Monitor"
MONITOR_SNAPSHOT_PATH = f"/{MONITOR}/Snapshot"
MONITOR_WATCH_PATH = f"/{MONITOR}/Watch"
ALL_METHOD_PATHS = (
    EXECUTE_PATH,
    VERSION_PATH,
    STREAM_PATH,
    MONITOR_SNAPSHOT_PATH,
    MONITOR_WATCH_PATH,
    HEALTH_CHECK_PATH,
    HEALTH_WATCH_PATH,
    REFLECTION_V1_PATH,
    REFLECTION_V1ALPHA_PATH,
)
"""Every method the server serves: ours, health and reflection (both versions)."""


def make_config(
    *,
    server: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    multiprocess: dict[str, Any] | None = None,
    monitor: dict[str, Any] | None = None,
) -> RuntimeConfig:
    """A test server's config: loopback, any free port, testing nodes, short grace and drain."""
    server_kw: dict[str, Any] = {"listen": "127.0.0.1:0", "drain_timeout_secs": 2.0}
    server_kw.update(server or {})
    mp_kw: dict[str, Any] = {"grace_period_secs": GRACE}
    mp_kw.update(multiprocess or {})
    return RuntimeConfig(
        server=ServerConfig(**server_kw),
        limits=LimitsConfig(**(limits or {})),
        multiprocess=MultiprocessDefaults(**mp_kw),
        nodes=NodesConfig(testing=True),
        monitor=MonitorConfig(**(monitor or {})),
    )


@dataclass
class Served:
    """A running server, and what a test needs to talk to it."""

    server: Server
    runtime: Runtime
    port: int
    nursery: trio.Nursery

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> Client:
        return Client(self.address, **kwargs)

    async def aio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run an asyncio coroutine function (grpclib client code) to completion from trio."""
        result: T = await trio_asyncio.aio_as_trio(fn)(*args)
        return result


@asynccontextmanager
async def serving(
    config: RuntimeConfig | None = None, *, tracer: Tracer | None = None, **sections: Any
) -> AsyncIterator[Served]:
    """Run a server (``make_config(**sections)`` unless ``config`` is given) for the block;
    its runtime traces sessions with ``tracer`` if one is given.

    On exit the server is drained (running streams get ``drain_timeout_secs``) and the
    runtime stopped: no worker process or shared-memory segment outlives the block.
    """
    config = config or make_config(**sections)
    async with Runtime(config, tracer=tracer) as runtime, trio.open_nursery() as nursery:
        server = Server(runtime)
        port = await nursery.start(server.serve)
        try:
            async with trio_asyncio.open_loop():
                yield Served(server, runtime, port, nursery)
        finally:
            server.drain()


@pytest.fixture(name="served")
async def served_fixture(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    """A running server; ``request.param`` (indirect parametrisation) gives ``make_config`` kwargs."""
    sections: dict[str, Any] = getattr(request, "param", {}) or {}
    async with serving(**sections) as running:
        yield running


# -- manifests and frames --------------------------------------------------------------------------


def manifest(
    nodes: list[tuple[str, str, dict[str, Any]]],
    edges: Sequence[tuple[str, str]] = (),
    *,
    executors: dict[str, str] | None = None,
    name: str = "grpc-test",
    **mp: Any,
) -> dict[str, Any]:
    """A manifest document; ``executors`` pins nodes to inprocess/multiprocess."""
    metadata: dict[str, Any] = {"name": name}
    if executors:
        mp["executor_overrides"] = executors
    if mp:
        metadata["multiprocess"] = mp
    return {
        "version": "v1",
        "metadata": metadata,
        "nodes": [{"id": i, "node_type": t, "params": p} for i, t, p in nodes],
        "connections": [{"from": a, "to": b} for a, b in edges],
    }


UPPER = manifest([("up", "TextTransformNode", {"operation": "upper"})])
"""One in-process text node: the cheapest real pipeline."""

ECHO = manifest([("echo", "PassThrough", {})])


def mixed_audio_manifest() -> dict[str, Any]:
    """src (in-process) → gain (worker, ×2) → out (in-process), and src → tap (worker) as a second sink."""
    return manifest(
        [
            ("src", "PassThrough", {}),
            ("gain", "AudioGainNode", {"gain_db": 6.0206}),
            ("out", "PassThrough", {}),
            ("tap", "PassThrough", {}),
        ],
        [("src", "gain"), ("gain", "out"), ("src", "tap")],
        executors={"src": "inprocess", "gain": "multiprocess", "out": "inprocess", "tap": "multiprocess"},
    )


def audio(value: float, n: int = 160, rate: int = 16000) -> AudioFrame:
    return AudioFrame.from_array(np.full(n, value, dtype=np.float32), sample_rate=rate)


def audio_buffer(value: float, n: int = 160, **fields: Any) -> pb.DataBuffer:
    samples = np.full(n, value, dtype=np.float32).tobytes()
    kw: dict[str, Any] = {"samples": samples, "sample_rate": 16000, "channels": 1, "num_samples": n}
    kw.update(fields)
    return pb.DataBuffer(audio=pb.AudioBuffer(**kw))


def text_buffer(text: str) -> pb.DataBuffer:
    return pb.DataBuffer(text=pb.TextBuffer(text_data=text.encode(), encoding="utf-8"))


# -- raw grpclib calls -------------------------------------------------------------------------------


class BytesCodec:
    """A grpclib codec that sends bytes as they are and hands replies back undecoded: a
    client that can say anything and hears exactly what came back."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return message if isinstance(message, bytes) else bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


class RawCodec:
    """A grpclib codec that also sends ``bytes`` as they are (to send what no stub would)."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return message if isinstance(message, bytes) else bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return message_type().parse(data)


def which(response: pb.StreamResponse) -> tuple[str, Any]:
    kind, value = betterproto.which_one_of(response, "response")
    return kind, value


class RawStream:
    """One StreamPipeline call, driven message by message from asyncio code."""

    def __init__(self, stream: Any, channel: Channel) -> None:
        self.stream = stream
        self.channel = channel
        self.received: list[tuple[str, Any]] = []

    async def send(self, request: pb.StreamRequest | bytes) -> None:
        await self.stream.send_message(request)

    async def init(self, doc: dict[str, Any], **fields: Any) -> None:
        await self.send(pb.StreamRequest(init=pb.StreamInit(manifest=manifest_to_proto(doc), **fields)))

    async def chunk(self, node_id: str, buffer: pb.DataBuffer | None, sequence: int, **fields: Any) -> None:
        if buffer is not None:
            fields["buffer"] = buffer
        await self.send(
            pb.StreamRequest(data_chunk=pb.DataChunk(node_id=node_id, sequence=sequence, **fields))
        )

    async def control(self, command: pb.StreamControlCommand) -> None:
        await self.send(pb.StreamRequest(control=pb.StreamControl(command=command)))

    async def close(self) -> None:
        await self.control(pb.StreamControlCommand.COMMAND_CLOSE)

    async def cancel(self) -> None:
        await self.control(pb.StreamControlCommand.COMMAND_CANCEL)

    async def end(self) -> None:
        """Half-close: the client has nothing more to send (the server treats it as CLOSE)."""
        await self.stream.end()

    async def recv(self) -> tuple[str, Any] | None:
        """The next response as (oneof member, value); None at the end of the stream."""
        response = await self.stream.recv_message()
        if response is None:
            return None
        item = which(response)
        self.received.append(item)
        return item

    async def until(self, *kinds: str) -> list[tuple[str, Any]]:
        """Responses up to and including the first one of ``kinds`` (fails at the end of stream)."""
        got = []
        while True:
            item = await self.recv()
            assert item is not None, f"stream ended before {kinds}; got {[k for k, _ in got]}"
            got.append(item)
            if item[0] in kinds:
                return got

    async def rest(self) -> list[tuple[str, Any]]:
        """Every remaining response; the call's status is checked (GRPCError if not OK)."""
        got = []
        while (item := await self.recv()) is not None:
            got.append(item)
        if not self.stream._end_done:  # the server may end the call before the client does
            await self.stream.end()
        await self.stream.recv_trailing_metadata()
        return got


@asynccontextmanager
async def open_stream(port: int, *, metadata: dict[str, str] | None = None) -> AsyncIterator[RawStream]:
    """A raw StreamPipeline call (asyncio side); the request headers are sent at once."""
    channel = Channel("127.0.0.1", port, codec=RawCodec())  # type: ignore[arg-type]
    try:
        async with channel.request(
            STREAM_PATH, Cardinality.STREAM_STREAM, pb.StreamRequest, pb.StreamResponse, metadata=metadata
        ) as stream:
            await stream.send_request()
            yield RawStream(stream, channel)
    finally:
        channel.close()


def results_by_sink(items: list[tuple[str, Any]]) -> dict[str, list[tuple[int, pb.DataBuffer]]]:
    """ChunkResults as {sink: [(sequence, buffer), ...]} in arrival order."""
    out: dict[str, list[tuple[int, pb.DataBuffer]]] = {}
    for kind, value in items:
        if kind == "result":
            for node_id, buffer in value.data_outputs.items():
                out.setdefault(node_id, []).append((value.sequence, buffer))
    return out


def first_audio_value(buffer: pb.DataBuffer) -> float:
    return float(np.frombuffer(buffer.audio.samples, dtype=np.float32)[0])


async def health_status(port: int, service: str = "") -> int:
    """grpc.health.v1 Check of ``service`` on a loopback port (asyncio side): the serving status."""
    channel = Channel("127.0.0.1", port)
    try:
        response = await HealthStub(channel).Check(HealthCheckRequest(service=service))
    finally:
        channel.close()
    return int(response.status)


async def calls_finished(server: Server) -> None:
    """Wait until no ExecutePipeline/StreamPipeline call is running (the drain's own condition)."""
    with trio.fail_after(10):
        await server._idle.wait()


# -- processes ---------------------------------------------------------------------------------------


async def process_table() -> str:
    done = await trio.run_process(["ps", "-eo", "pid=,args="], capture_stdout=True)
    return str(done.stdout.decode())


async def pids_of_session(session_id: str) -> list[int]:
    """Worker processes whose title names this session."""
    table = await process_table()
    return [int(line.split()[0]) for line in table.splitlines() if f"session={session_id} " in line]


async def wait_no_session_processes(session_id: str, within: float) -> float:
    """Seconds until no process of ``session_id`` is left; fails after ``within``."""
    start = trio.current_time()
    while True:
        left = await pids_of_session(session_id)
        elapsed = trio.current_time() - start
        if not left:
            return elapsed
        if elapsed > within:
            pytest.fail(f"session {session_id}: processes {left} still alive after {elapsed:.2f} s")
        await trio.sleep(0.02)


# -- protoc --------------------------------------------------------------------------------------------


EXTENSION_MARK = "// nursery_pipes extension"


def strip_extensions(text: str) -> str:
    """Remove every declaration preceded by a ``// nursery_pipes extension`` comment.

    The comment block (the marker line and any comment lines after it) is dropped,
    then the declaration it introduces: one field line, or a whole ``message {...}``.
    """
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].strip().startswith(EXTENSION_MARK):
            out.append(lines[i])
            i += 1
            continue
        i += 1
        while i < len(lines) and lines[i].strip().startswith("//"):
            i += 1
        decl = lines[i].strip()
        if decl.startswith("message "):
            depth = 0
            while True:
                depth += lines[i].count("{") - lines[i].count("}")
                i += 1
                if depth == 0:
                    break
        else:
            assert decl.endswith(";") or ";" in decl, f"unexpected extension decl: {decl}"
            i += 1
    return "\n".join(out) + "\n"


def write_stripped_protos(dest: Path) -> Path:
    for name in PROTO_FILES:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(strip_extensions((PROTO_ROOT / name).read_text(encoding="utf-8")))
    return dest


def run_protoc(proto_root: Path, *args: str) -> None:
    """grpcio-tools' protoc over ``PROTO_FILES`` of ``proto_root``; ``args`` say what to write."""
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={proto_root}", *args, *PROTO_FILES]
    proc = subprocess.run(cmd, cwd=proto_root, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"protoc failed:\n{proc.stdout}{proc.stderr}"


# -- TLS -----------------------------------------------------------------------------------------------


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (openssl; no `cryptography` installed)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def client_tls_context(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.set_alpn_protocols(["h2"])
    return context


class Announcements:
    """What an in-process ``cli._serve._serve`` announces (its ``announce`` callback), awaitable."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = trio.Event()

    def __call__(self, message: str) -> None:
        self.lines.append(message)
        self._changed.set()

    async def wait_for(self, text: str, count: int = 1) -> str:
        """The ``count``-th announcement containing ``text`` (waits up to 30 s for it)."""
        with trio.fail_after(30):
            while len(matches := [line for line in self.lines if text in line]) < count:
                self._changed = trio.Event()
                await self._changed.wait()
        return matches[count - 1]


# -- `nursery-pipes serve` as a real process ---------------------------------------------------------

ENV = {**os.environ, "COLUMNS": "240", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class ServeProcess:
    process: trio.Process
    address: str
    lines: list[str] = field(default_factory=list)
    _buffer: bytes = b""

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    async def read_until(self, text: str, within: float = 30) -> str:
        """Read stderr lines until one contains ``text``; return it."""
        stream = self.process.stderr
        assert stream is not None
        with trio.fail_after(within):
            while True:
                while b"\n" in self._buffer:
                    raw, self._buffer = self._buffer.split(b"\n", 1)
                    line = raw.decode(errors="replace")
                    self.lines.append(line)
                    if text in line:
                        return line
                data = await stream.receive_some(4096)
                if not data:
                    raise AssertionError(f"server stderr ended before {text!r}: {self.lines}")
                self._buffer += data

    async def rest_of_stderr(self) -> str:
        stream = self.process.stderr
        assert stream is not None
        with trio.fail_after(30):
            while data := await stream.receive_some(4096):
                self._buffer += data
        self.lines += self._buffer.decode(errors="replace").splitlines()
        self._buffer = b""
        return "\n".join(self.lines)


async def session_processes(sid: int) -> list[str]:
    """Processes of the process session ``sid`` (the server and everything it started)."""
    done = await trio.run_process(["ps", "-eo", "pid=,sid=,args="], capture_stdout=True)
    rows = [line.split(None, 2) for line in done.stdout.decode().splitlines()]
    return [" ".join(row) for row in rows if len(row) >= 2 and row[1] == str(sid)]


async def assert_tree_gone(sid: int, within: float = 10.0) -> None:
    # Generous: under load an exited worker can sit <defunct> until init reaps it, which
    # took over 2 s when the suite shared the 2 cores with other runs. Returns as soon as
    # the tree is gone, so a passing run never waits for the deadline.
    deadline = trio.current_time() + within
    while True:
        left = await session_processes(sid)
        if not left:
            return
        assert trio.current_time() < deadline, f"left behind by the server: {left}"
        await trio.sleep(0.05)


@asynccontextmanager
async def serve_process(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[ServeProcess]:
    """``nursery-pipes serve`` on a free loopback port; killed (by pid) if still running at exit."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "nursery_pipes", "serve", "--listen", "127.0.0.1:0", "--testing-nodes", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**ENV, **(env or {})},
        start_new_session=True,
    )
    try:
        server = ServeProcess(process, "")
        line = await server.read_until("listening on", within=45)
        server.address = line.rsplit("listening on", 1)[1].strip()
        yield server
    finally:
        if process.returncode is None:
            # Stopped as an operator would (a killed server leaves multiprocessing's forkserver
            # directory behind in /tmp); killed only if it does not drain in time.
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(20):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stderr is not None:
            await process.stderr.aclose()
        await assert_tree_gone(process.pid)
