"""gRPC service (remotemedia.v1 on grpclib + betterproto, served from trio): issue 4's benchmarks.

The client is THIS process: plain asyncio + grpclib + the generated betterproto messages
(``nursery_pipes._proto.remotemedia.v1``), no trio, no trio-asyncio. Every server is another
process: our real server (``nursery-pipes serve --listen 127.0.0.1:0``) and the raw echo
servers of ``_grpc_echo.py`` (same method paths, same message types, no runtime behind them).

1. Unary ``ExecutePipeline`` of a 1-node PassThrough manifest (in-process node), one 4 KiB
   BinaryBuffer in, the same out: p50/p99 per call vs the raw asyncio unary echo.
   Goal (issue 4): ≤ 2 × the raw echo.
2. ``StreamPipeline``, 4 KiB BinaryBuffer chunks through a PassThrough node: chunks/s with the
   client sending as fast as HTTP/2 flow control allows while a second task reads the results
   (then CLOSE, read to StreamClosed), and per-chunk round trip with one chunk in flight
   (send → its ChunkResult), vs the raw asyncio bidirectional echo. Goal: ≥ 70 % of the raw
   chunks/s; the added p50 is reported. Every chunk must come back exactly once, in order
   (the product's "never lost"): losses are counted, reported and fail a goal.
3. 10 concurrent streaming sessions (10 client connections), PassThrough → AudioGainNode with
   the gain node routed to a worker process (``metadata.multiprocess.executor_overrides``),
   20 ms 16 kHz mono f32 chunks at real-time pace (phases staggered by 2 ms): client-side
   per-chunk latency (send → ChunkResult), loss (every chunk must come back once, with the
   gain applied). Goal (ours; the issue names none): p99 ≤ 20 ms (one chunk period) and no loss.
4. The bridge (informational): the same raw echo served several ways (``_grpc_echo.py``) —
   plain asyncio; trio-asyncio with an asyncio handler; trio-asyncio with the handler body in
   trio hopping per recv/send through our ``TrioStream``; that plus our stream task layout
   (inbound task → memory channel → sender task); plain asyncio with betterproto's pure-Python
   codec; and, as measured PROPOSALS, a bridge without per-message hops (asyncio reader/writer
   pumps) and google.protobuf (upb) messages on the server side. Server and client CPU per
   chunk/call come from /proc/PID/stat and process_time. Plus (4b) betterproto per-message
   build/encode/decode with and without ``betterproto_rust_codec`` (switched off in a child
   process), and (5) each step of our server's unary and streaming paths timed in-process in a
   child process (the same functions the server calls), so a miss can be attributed.

Rounds are interleaved (every target once per round, in rotated order) because other work
may load this 2-vCPU VM; streaming numbers are the median over rounds, unary percentiles pool
every round's calls. The 1-minute load average is reported.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# --serde-child runs in a subprocess (maybe without the rust codec): handle it before any import.
if __name__ == "__main__" and "--serde-child" in sys.argv and "--no-rust-codec" in sys.argv:
    sys.modules["betterproto_rust_codec"] = None  # type: ignore[assignment]

import betterproto  # noqa: E402
import numpy as np  # noqa: E402
from _common import finish, parse_args, percentile, print_table, time_per_call  # noqa: E402
from grpclib.client import Channel  # noqa: E402
from grpclib.const import Cardinality  # noqa: E402

from nursery_pipes._proto.remotemedia import v1 as pb  # noqa: E402

STREAM_PATH = "/remotemedia.v1.StreamingPipelineService/StreamPipeline"
PAYLOAD_BYTES = 4096
UNARY_GOAL = 2.0  # ≤ 2 × raw
STREAM_GOAL = 0.70  # ≥ 70 % of raw chunks/s
SESSIONS = 10
CHUNK_MS = 20
SAMPLE_RATE = 16000
SESSION_P99_GOAL_MS = float(CHUNK_MS)
GAIN_DB = 20 * np.log10(2.0)  # × 2 exactly enough for allclose

PY = sys.executable
ECHO = str(HERE / "_grpc_echo.py")
LOADS: list[float] = []


def load_now() -> float:
    value = os.getloadavg()[0]
    LOADS.append(value)
    return value


# -- server processes ------------------------------------------------------------------------------


@dataclass
class ServerProc:
    name: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    host: str = ""
    port: int = 0
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))

    def launch(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "300", **self.env},
        )

    def wait_listening(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.tail.append(line.rstrip())
            if "listening on" in line:
                address = line.rsplit("listening on", 1)[1].strip()
                host, _, port = address.rpartition(":")
                self.host, self.port = host.strip("[]"), int(port)
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {' | '.join(self.tail)}")

    def _drain(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.tail.append(line.rstrip())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far (its own threads; not children)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code


def real_server() -> ServerProc:
    script = Path(PY).parent / "nursery-pipes"
    cmd = [str(script)] if script.exists() else [PY, "-m", "nursery_pipes"]
    return ServerProc("nursery_pipes server", [*cmd, "serve", "--listen", "127.0.0.1:0"])


def echo_server(mode: str, *, rust: bool = True, codec: str = "betterproto") -> ServerProc:
    cmd = [PY, ECHO, "--mode", mode, "--codec", codec] + ([] if rust else ["--no-rust-codec"])
    return ServerProc(f"echo {mode} {codec}{'' if rust else ' (no rust codec)'}", cmd)


def start_all(servers: list[ServerProc]) -> None:
    for server in servers:
        server.launch()
    try:
        for server in servers:
            server.wait_listening()
    except BaseException:
        for server in servers:
            server.stop()
        raise


# -- messages ----------------------------------------------------------------------------------------


def node(node_id: str, node_type: str, params: dict[str, Any] | None = None) -> pb.NodeManifest:
    return pb.NodeManifest(id=node_id, node_type=node_type, params=json.dumps(params or {}))


def passthrough_manifest() -> pb.PipelineManifest:
    return pb.PipelineManifest(
        version="v1",
        metadata=pb.ManifestMetadata(name="bench-grpc-passthrough"),
        nodes=[node("p", "PassThrough")],
    )


def gain_manifest() -> pb.PipelineManifest:
    return pb.PipelineManifest(
        version="v1",
        metadata=pb.ManifestMetadata(
            name="bench-grpc-sessions",
            multiprocess=pb.MultiprocessConfig(
                executor_overrides={"in": "inprocess", "gain": "multiprocess"}, init_timeout_secs=60
            ),
        ),
        nodes=[node("in", "PassThrough"), node("gain", "AudioGainNode", {"gain_db": GAIN_DB})],
        connections=[pb.Connection(from_="in", to="gain")],
    )


def binary_buffer() -> pb.DataBuffer:
    return pb.DataBuffer(
        binary=pb.BinaryBuffer(data=os.urandom(PAYLOAD_BYTES), mime_type="application/octet-stream")
    )


def execute_request(buffer: pb.DataBuffer) -> pb.ExecuteRequest:
    return pb.ExecuteRequest(manifest=passthrough_manifest(), data_inputs={"p": buffer}, client_version="1.0")


def data_request(node_id: str, buffer: pb.DataBuffer, seq: int) -> pb.StreamRequest:
    return pb.StreamRequest(data_chunk=pb.DataChunk(node_id=node_id, buffer=buffer, sequence=seq))


# -- client: unary -----------------------------------------------------------------------------------


async def unary_round(channel: Channel, request: pb.ExecuteRequest, calls: int) -> list[float]:
    """Seconds per ExecutePipeline call (sequential), checking every answer."""
    stub = pb.PipelineExecutionServiceStub(channel)
    expected = request.data_inputs["p"].binary.data
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        response = await stub.execute_pipeline(request)
        out.append(time.perf_counter() - start)
        kind, found = betterproto.which_one_of(response, "outcome")
        value: Any = found
        if kind != "result" or value.data_outputs["p"].binary.data != expected:
            raise RuntimeError(f"bad ExecutePipeline answer: {kind} {str(value)[:300]}")
    return out


# -- client: streams -----------------------------------------------------------------------------------


class Stream:
    """One StreamPipeline call, raw grpclib (what any remotemedia.v1 client does)."""

    def __init__(self, channel: Channel, manifest: pb.PipelineManifest) -> None:
        self.channel = channel
        self.manifest = manifest
        self.seq = 0
        self.ready: pb.StreamReady | None = None
        self.close_sent = False
        self.closed_seen = False
        self.other: list[str] = []

    async def __aenter__(self) -> Stream:
        self.call = self.channel.request(
            STREAM_PATH, Cardinality.STREAM_STREAM, pb.StreamRequest, pb.StreamResponse
        )
        self.stream = await self.call.__aenter__()
        await self.stream.send_request()
        await self.stream.send_message(
            pb.StreamRequest(init=pb.StreamInit(manifest=self.manifest, client_version="1.0"))
        )
        while self.ready is None:
            response = await self.stream.recv_message()
            if response is None:
                raise RuntimeError("stream ended before StreamReady")
            kind, found = betterproto.which_one_of(response, "response")
            value: Any = found
            if kind == "ready":
                self.ready = value
            elif kind in ("error", "stream_error"):
                raise RuntimeError(f"stream init failed: {value}")
        return self

    async def send(self, node_id: str, buffer: pb.DataBuffer) -> int:
        self.seq += 1
        await self.stream.send_message(data_request(node_id, buffer, self.seq))
        return self.seq

    async def close(self) -> None:
        """StreamControl CLOSE: the server flushes, then answers StreamClosed."""
        self.close_sent = True
        await self.stream.send_message(
            pb.StreamRequest(control=pb.StreamControl(command=pb.StreamControlCommand.COMMAND_CLOSE))
        )

    async def result(self) -> pb.ChunkResult | None:
        """The next ChunkResult (metrics and other events are skipped); None at StreamClosed."""
        while True:
            response = await self.stream.recv_message()
            if response is None:
                raise RuntimeError("stream ended without StreamClosed")
            kind, found = betterproto.which_one_of(response, "response")
            value: Any = found
            if kind == "result":
                return value
            if kind == "closed":
                self.closed_seen = True
                return None
            if kind in ("error", "stream_error"):
                raise RuntimeError(f"unexpected {kind}: {str(value)[:300]}")
            self.other.append(kind)

    async def __aexit__(self, *exc: Any) -> None:
        try:
            if exc[0] is None:
                if not self.close_sent:
                    await self.close()
                while not self.closed_seen:
                    await self.result()
                await self.stream.end()
            else:
                await self.stream.cancel()
        finally:
            await self.call.__aexit__(*exc)


@dataclass
class Tally:
    """What came back on a stream, checked against what was sent (1..sent)."""

    sent: int = 0
    received: int = 0
    out_of_order: int = 0
    duplicates: int = 0
    seen: set[int] = field(default_factory=set)
    last: int = 0
    missing_seen: list[int] = field(default_factory=list)
    merged: bool = False

    def add(self, seq: int) -> None:
        if seq in self.seen:
            self.duplicates += 1
            return
        if seq < self.last:
            self.out_of_order += 1
        self.seen.add(seq)
        self.last = max(self.last, seq)
        self.received += 1

    @property
    def lost(self) -> int:
        return self.sent - self.received

    def missing(self, limit: int = 10) -> list[int]:
        """Sequences that never came back (for a merged tally: those of the merged streams)."""
        if self.merged:
            return self.missing_seen[:limit]
        return [s for s in range(1, self.sent + 1) if s not in self.seen][:limit]

    def merge(self, stream: Tally) -> None:
        """Add one finished stream's tally (sequences restart at 1 on every stream)."""
        self.merged = True
        self.missing_seen += stream.missing() if stream.lost else []
        self.sent += stream.sent
        self.received += stream.received
        self.out_of_order += stream.out_of_order
        self.duplicates += stream.duplicates


async def stream_throughput(channel: Channel, buffer: pb.DataBuffer, chunks: int, total: Tally) -> float:
    """chunks/s: one task sends as fast as flow control allows (then CLOSE), another reads every
    result until StreamClosed. Rate = results received / (last result − first send)."""
    tally = Tally()
    async with Stream(channel, passthrough_manifest()) as stream:
        last = 0.0

        async def sender() -> None:
            for _ in range(chunks):
                await stream.send("p", buffer)
            await stream.close()
            tally.sent += chunks

        async def reader() -> None:
            nonlocal last
            while (result := await stream.result()) is not None:
                last = time.perf_counter()
                tally.add(result.sequence)

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(sender(), reader()), timeout=60 + chunks / 500)
    total.merge(tally)
    return tally.received / (last - start)


async def stream_pingpong(channel: Channel, buffer: pb.DataBuffer, chunks: int, total: Tally) -> list[float]:
    """Seconds from send to its ChunkResult, one chunk in flight (a lost one times out after 2 s)."""
    out = []
    tally = Tally()
    async with Stream(channel, passthrough_manifest()) as stream:
        for _ in range(chunks):
            start = time.perf_counter()
            seq = await stream.send("p", buffer)
            tally.sent += 1
            try:
                result = await asyncio.wait_for(stream.result(), timeout=2.0)
            except TimeoutError:
                continue  # counted as lost
            if result is None:
                raise RuntimeError("StreamClosed before CLOSE")
            tally.add(result.sequence)
            if result.sequence == seq:
                out.append(time.perf_counter() - start)
    total.merge(tally)
    return out


# -- client: concurrent real-time sessions -------------------------------------------------------------


async def realtime_session(
    host: str, port: int, index: int, seconds: float, opened: asyncio.Barrier
) -> dict[str, Any]:
    channel = Channel(host, port)
    samples_per_chunk = SAMPLE_RATE * CHUNK_MS // 1000
    chunks = int(seconds * 1000 / CHUNK_MS)
    rng = np.random.default_rng(index)
    sent_at: dict[int, float] = {}
    inputs: dict[int, np.ndarray] = {}
    latencies: list[float] = []
    server_ms: list[float] = []
    problems: list[str] = []
    duplicates = 0
    executors: dict[str, str] = {}
    try:
        try:
            stream = await Stream(channel, gain_manifest()).__aenter__()
        except BaseException:
            await opened.abort()  # the others must not wait for this one
            raise
        async with AsyncExitStack() as stack:
            stack.push_async_exit(stream)  # exits the already-entered stream
            executors = {a.node_id: a.executor for a in stream.ready.assignments} if stream.ready else {}
            await opened.wait()  # every session is ready: start the clock together
            t0 = time.perf_counter() + index * CHUNK_MS / 1000 / SESSIONS

            async def sender() -> None:
                for k in range(chunks):
                    delay = t0 + k * CHUNK_MS / 1000 - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    audio = (rng.standard_normal(samples_per_chunk) * 0.1).astype(np.float32)
                    buffer = pb.DataBuffer(
                        audio=pb.AudioBuffer(
                            samples=audio.tobytes(),
                            sample_rate=SAMPLE_RATE,
                            channels=1,
                            format=pb.AudioFormat.F32,
                            num_samples=samples_per_chunk,
                        )
                    )
                    stream.seq += 1
                    sent_at[stream.seq] = time.perf_counter()
                    inputs[stream.seq] = audio
                    await stream.stream.send_message(data_request("in", buffer, stream.seq))
                await stream.close()

            async def reader() -> None:
                nonlocal duplicates
                while (result := await stream.result()) is not None:
                    now = time.perf_counter()
                    start = sent_at.pop(result.sequence, None)
                    if start is None:
                        duplicates += 1
                        continue
                    latencies.append(now - start)
                    server_ms.append(result.processing_time_ms)
                    out = result.data_outputs.get("gain")
                    expected = inputs.pop(result.sequence)
                    if out is None:
                        problems.append(f"seq {result.sequence}: no 'gain' output")
                        continue
                    samples = np.frombuffer(out.audio.samples, dtype=np.float32)
                    if samples.shape != expected.shape or not np.allclose(samples, expected * 2.0, rtol=1e-5):
                        problems.append(f"seq {result.sequence}: wrong samples")

            await asyncio.wait_for(asyncio.gather(sender(), reader()), timeout=seconds + 30)
    finally:
        channel.close()
    return {
        "latencies": latencies,
        "server_ms": server_ms,
        "sent": chunks,
        "received": len(latencies),
        "lost": len(sent_at),
        "duplicates": duplicates,
        "problems": problems,
        "executors": executors,
    }


async def realtime_sessions(server: ServerProc, seconds: float) -> dict[str, Any]:
    opened = asyncio.Barrier(SESSIONS)
    start = time.perf_counter()
    results = await asyncio.gather(
        *(realtime_session(server.host, server.port, i, seconds, opened) for i in range(SESSIONS)),
        return_exceptions=True,
    )
    wall = time.perf_counter() - start
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    ok = [r for r in results if isinstance(r, dict)]
    latencies = [x for r in ok for x in r["latencies"]]
    server_ms = [x for r in ok for x in r["server_ms"]]
    sent = sum(r["sent"] for r in ok) + (SESSIONS - len(ok)) * int(seconds * 1000 / CHUNK_MS)
    received = sum(r["received"] for r in ok)
    return {
        "sessions": SESSIONS,
        "seconds": seconds,
        "wall_s": wall,
        "sent": sent,
        "received": received,
        "lost": sent - received,
        "duplicates": sum(r["duplicates"] for r in ok),
        "bad_outputs": sum(len(r["problems"]) for r in ok),
        "errors": errors,
        "executors": ok[0]["executors"] if ok else {},
        "latency_ms": _ms_summary(latencies),
        "server_processing_ms": _ms_summary([x / 1000 for x in server_ms]),
    }


def _ms_summary(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan"), "n": 0}
    return {
        "p50": percentile(seconds, 50) * 1000,
        "p95": percentile(seconds, 95) * 1000,
        "p99": percentile(seconds, 99) * 1000,
        "max": max(seconds) * 1000,
        "n": len(seconds),
    }


# -- serialisation (child process) ------------------------------------------------------------------


def serde_child(sample_path: str, number: int) -> None:
    """Print per-message µs for this process's betterproto codec: build (client side), encode, decode."""
    samples = json.loads(Path(sample_path).read_text(encoding="utf-8"))
    data4k = os.urandom(PAYLOAD_BYTES)
    data64k = os.urandom(64 * 1024)
    audio = os.urandom(4 * SAMPLE_RATE * CHUNK_MS // 1000)

    def chunk4k() -> pb.StreamRequest:
        return data_request("p", pb.DataBuffer(binary=pb.BinaryBuffer(data=data4k)), 12345)

    def chunk64k() -> pb.StreamRequest:
        return data_request("p", pb.DataBuffer(binary=pb.BinaryBuffer(data=data64k)), 12345)

    def chunk_audio() -> pb.StreamRequest:
        buffer = pb.DataBuffer(
            audio=pb.AudioBuffer(
                samples=audio, sample_rate=SAMPLE_RATE, channels=1, format=pb.AudioFormat.F32
            )
        )
        return data_request("in", buffer, 12345)

    def result4k() -> pb.StreamResponse:
        buffer = pb.DataBuffer(binary=pb.BinaryBuffer(data=data4k))
        return pb.StreamResponse(
            result=pb.ChunkResult(sequence=12345, data_outputs={"p": buffer}, total_items_processed=7)
        )

    def request4k() -> pb.ExecuteRequest:
        return execute_request(pb.DataBuffer(binary=pb.BinaryBuffer(data=data4k)))

    builders = {
        "StreamRequest(DataChunk, 4 KiB binary)": chunk4k,
        "StreamRequest(DataChunk, 64 KiB binary)": chunk64k,
        "StreamRequest(DataChunk, 20 ms f32 audio)": chunk_audio,
        "StreamResponse(ChunkResult, 4 KiB binary)": result4k,
        "ExecuteRequest(1-node manifest, 4 KiB)": request4k,
    }
    messages: dict[str, tuple[betterproto.Message, Any]] = {
        name: (build(), build) for name, build in builders.items()
    }
    for name, (kind, hexdata) in samples.items():  # exact messages our server sent
        messages[name] = (getattr(pb, kind)().parse(bytes.fromhex(hexdata)), None)
    module = sys.modules.get("betterproto_rust_codec")
    out: dict[str, Any] = {"rust_codec": module is not None}
    sys.path.insert(0, str(HERE))
    from _grpc_echo import Upb

    upb = Upb()
    for name, (message, build) in messages.items():
        data = bytes(message)
        cls = type(message)
        n = max(1, number // 8) if len(data) > 16384 else number

        def best(fn: Any, n: int = n) -> float:
            return min(time_per_call(fn, repeat=3, number=n)) * 1e6

        out[name] = {
            "bytes": len(data),
            "build_us": best(build) if build is not None else None,
            "encode_us": best(lambda: bytes(message)),  # noqa: B023
            "decode_us": best(lambda: cls().parse(data)),  # noqa: B023
        }
        upb_cls = getattr(upb, cls.__name__, None)
        if upb_cls is not None:  # the same bytes through google.protobuf (upb), for comparison
            parsed = upb_cls.FromString(data)
            out[name]["upb_encode_us"] = best(parsed.SerializeToString)
            out[name]["upb_decode_us"] = best(lambda: upb_cls.FromString(data))  # noqa: B023
    print(json.dumps(out))


def serde(samples: dict[str, tuple[str, str]], number: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(samples, handle)
        path = handle.name
    try:
        results = {}
        for label, extra in (("rust", []), ("pure-python", ["--no-rust-codec"])):
            done = subprocess.run(
                [PY, __file__, "--serde-child", path, str(number), *extra],
                capture_output=True,
                text=True,
                check=True,
            )
            results[label] = json.loads(done.stdout.strip().splitlines()[-1])
        return results
    finally:
        os.unlink(path)


# -- where the server's time goes (child process: trio + the runtime, in-process) ---------------------


def breakdown_child(number: int) -> None:
    """Median µs of each server-side step of ExecutePipeline and of one streamed chunk, measured
    in-process on the same functions the server calls (no sockets), plus the bridge's hops."""
    import trio
    import trio_asyncio

    from nursery_pipes._config import RuntimeConfig
    from nursery_pipes.runtime import Output, Runtime
    from nursery_pipes.service import _streaming
    from nursery_pipes.service._execution import execute
    from nursery_pipes.service._metrics import metrics_to_proto, rss_bytes
    from nursery_pipes.wire import _convert
    from nursery_pipes.wire._messages import UPB

    out: dict[str, float] = {}

    def med(samples: list[float]) -> float:
        return statistics.median(samples) * 1e6

    async def timed(label: str, fn: Any, n: int = number) -> Any:
        samples, value = [], None
        for _ in range(n):
            start = time.perf_counter()
            value = fn()
            if hasattr(value, "__await__"):
                value = await value
            samples.append(time.perf_counter() - start)
        out[label] = med(samples)
        return value

    async def main() -> None:
        async with Runtime(RuntimeConfig()) as runtime:
            data = bytes(execute_request(binary_buffer()))
            request = await timed(
                "unary: decode ExecuteRequest (upb)", lambda: UPB.ExecuteRequest.FromString(data)
            )
            doc = await timed(
                "unary: manifest_from_proto", lambda: _convert.manifest_from_proto(request.manifest)
            )
            plan = await timed("unary: runtime.plan(manifest)", lambda: runtime.plan(doc))
            inputs = await timed(
                "unary: buffer_to_frame",
                lambda: {k: _convert.buffer_to_frame(v) for k, v in request.data_inputs.items()},
            )
            result = await timed(
                "unary: runtime.run_pipeline (1 in-process node)", lambda: runtime.run_pipeline(plan, inputs)
            )
            await timed("unary: metrics_to_proto (upb)", lambda: metrics_to_proto(result.metrics, UPB))
            await timed("  of which rss_bytes (/proc/self/statm)", rss_bytes)
            await timed(
                "  a betterproto message construction, e.g. NodeResult(...) (client side)",
                lambda: pb.NodeResult(node_id="p", status=pb.NodeStatus.SUCCESS),
            )
            response = await timed(
                "unary: execute() whole (the lines above + response build)",
                lambda: execute(runtime, request, True),
            )
            await timed("unary: encode ExecuteResponse (upb)", lambda: response.SerializeToString())
            # one streamed chunk, as _streaming does it
            chunk_data = bytes(data_request("p", binary_buffer(), 1))
            request2 = await timed(
                "stream: decode StreamRequest(DataChunk) (upb)",
                lambda: UPB.StreamRequest.FromString(chunk_data),
            )
            chunk = request2.data_chunk
            targets = await timed("stream: _targets(chunk)", lambda: _streaming._targets(chunk))
            frame = await timed("stream: buffer_to_frame", lambda: _convert.buffer_to_frame(targets[0][1]))
            async with runtime.open_session(plan) as session:
                events = session.events().__aiter__()
                seq = 0

                async def through() -> Any:
                    nonlocal seq
                    seq += 1
                    await session.send("p", frame, seq=seq)
                    while not isinstance(event := await events.__anext__(), Output):
                        pass
                    return event

                event = await timed("stream: session.send → Output event (PassThrough)", through)
                state = _streaming._State()
                settings = _streaming.StreamSettings()
                response2 = await timed(
                    "stream: _response_for (frame_to_buffer + ChunkResult)",
                    lambda: _streaming._response_for(event, session, state, settings),
                )
                await timed(
                    "  of which frame_to_buffer (upb)", lambda: _convert.frame_to_buffer(event.frame, UPB)
                )
                await timed("stream: encode StreamResponse (upb)", lambda: response2.SerializeToString())
                await session.close()
                async for _ in events:
                    pass
            async with trio_asyncio.open_loop():

                async def aio_noop() -> None:
                    return None

                async def trio_noop() -> None:
                    return None

                hop = trio_asyncio.aio_as_trio(aio_noop)
                await timed("bridge: aio_as_trio hop (trio awaits asyncio)", hop)

                async def from_aio() -> None:
                    back = trio_asyncio.trio_as_aio(trio_noop)
                    samples = []
                    for _ in range(number):
                        start = time.perf_counter()
                        await back()
                        samples.append(time.perf_counter() - start)
                    out["bridge: trio_as_aio hop (asyncio awaits trio)"] = med(samples)

                await trio_asyncio.aio_as_trio(from_aio)()

    trio.run(main)
    print(json.dumps(out))


def breakdown(number: int) -> dict[str, float]:
    done = subprocess.run(
        [PY, __file__, "--breakdown-child", str(number)], capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- the run ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    rounds: int
    unary_calls: int  # per round per target
    tput_chunks: int
    ping_chunks: int
    session_seconds: float
    session_rounds: int


async def capture_samples(real: ServerProc, buffer: pb.DataBuffer) -> dict[str, tuple[str, str]]:
    """The exact bytes our server answers with, for the serialisation table."""
    channel = Channel(real.host, real.port)
    try:
        stub = pb.PipelineExecutionServiceStub(channel)
        response = await stub.execute_pipeline(execute_request(buffer))
        async with Stream(channel, passthrough_manifest()) as stream:
            await stream.send("p", buffer)
            result = await stream.result()
        return {
            "ExecuteResponse (our server's)": ("ExecuteResponse", bytes(response).hex()),
            "StreamResponse(ChunkResult, our server's)": (
                "StreamResponse",
                bytes(pb.StreamResponse(result=result)).hex(),
            ),
        }
    finally:
        channel.close()


async def measure(plan: Plan, targets: dict[str, ServerProc], real: ServerProc) -> dict[str, Any]:
    buffer = binary_buffer()
    request = execute_request(buffer)
    channels = {name: Channel(s.host, s.port) for name, s in targets.items()}
    names = list(targets)
    unary_names = [n for n in names if n in UNARY_TARGETS]
    unary: dict[str, list[float]] = {n: [] for n in unary_names}
    unary_round_p50: dict[str, list[float]] = {n: [] for n in unary_names}
    unary_cpu: dict[str, list[float]] = {n: [] for n in unary_names}  # server CPU s per call, per round
    tput: dict[str, list[float]] = {n: [] for n in names}
    tput_cpu: dict[str, list[float]] = {n: [] for n in names}  # server CPU s per chunk, per round
    client_cpu: dict[str, list[float]] = {n: [] for n in names}  # client CPU s per chunk, per round
    ping: dict[str, list[float]] = {n: [] for n in names}
    ping_round_p50: dict[str, list[float]] = {n: [] for n in names}
    tput_tally = {n: Tally() for n in names}
    ping_tally = {n: Tally() for n in names}
    try:
        # warm-up: connections, imports, first sessions
        for name, channel in channels.items():
            if name in unary:
                await unary_round(channel, request, 50)
            await stream_throughput(channel, buffer, 500, Tally())
            await stream_pingpong(channel, buffer, 50, Tally())
        for r in range(plan.rounds):
            load_now()
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                server = targets[name]
                if name in unary:
                    cpu = server.cpu_s()
                    samples = await unary_round(channels[name], request, plan.unary_calls)
                    unary_cpu[name].append((server.cpu_s() - cpu) / plan.unary_calls)
                    unary[name] += samples
                    unary_round_p50[name].append(percentile(samples, 50))
                cpu, mine = server.cpu_s(), time.process_time()
                tput[name].append(
                    await stream_throughput(channels[name], buffer, plan.tput_chunks, tput_tally[name])
                )
                tput_cpu[name].append((server.cpu_s() - cpu) / plan.tput_chunks)
                client_cpu[name].append((time.process_time() - mine) / plan.tput_chunks)
                samples = await stream_pingpong(channels[name], buffer, plan.ping_chunks, ping_tally[name])
                ping[name] += samples
                ping_round_p50[name].append(percentile(samples, 50))
            print(
                f"  round {r + 1}/{plan.rounds}: load {LOADS[-1]:.2f}; chunks/s "
                + ", ".join(f"{n} {tput[n][-1]:.0f}" for n in names)
                + "; lost "
                + ", ".join(f"{n} {tput_tally[n].lost}" for n in names if tput_tally[n].lost)
                + "; unary p50 ms "
                + ", ".join(f"{n} {unary_round_p50[n][-1] * 1000:.2f}" for n in unary_names),
                file=sys.stderr,
                flush=True,
            )
        samples_hex = await capture_samples(real, buffer)
    finally:
        for channel in channels.values():
            channel.close()
    return {
        "unary": unary,
        "unary_round_p50": unary_round_p50,
        "unary_cpu": unary_cpu,
        "tput": tput,
        "tput_cpu": tput_cpu,
        "client_cpu": client_cpu,
        "ping": ping,
        "ping_round_p50": ping_round_p50,
        "tput_tally": tput_tally,
        "ping_tally": ping_tally,
        "samples": samples_hex,
    }


UNARY_TARGETS = ("raw", "trio-asyncio", "trio-hop", "raw-no-rust", "raw-upb", "real")


BRIDGE = {
    "raw": "plain asyncio (raw baseline)",
    "trio-asyncio": "trio-asyncio loop, asyncio handler",
    "trio-hop": "trio-asyncio, handler in trio, TrioStream hop per recv/send",
    "trio-tasks": "trio-hop + our stream task layout (inbound → channel → sender)",
    "trio-pump": "PROPOSAL: trio-tasks with asyncio reader/writer pumps, no per-message hop",
    "raw-no-rust": "plain asyncio, betterproto pure-Python codec (server side)",
    "raw-upb": "PROPOSAL: plain asyncio, google.protobuf (upb) messages server side",
    "trio-pump-upb": "PROPOSAL: trio-pump + upb messages server side",
    "real": "nursery_pipes server (PassThrough session)",
}


def main() -> None:
    args = parse_args(__doc__ or "")
    plan = (
        Plan(
            rounds=1,
            unary_calls=200,
            tput_chunks=1200,
            ping_chunks=200,
            session_seconds=3.0,
            session_rounds=1,
        )
        if args.quick
        else Plan(
            rounds=5,
            unary_calls=250,
            tput_chunks=8000,
            ping_chunks=1000,
            session_seconds=10.0,
            session_rounds=3,
        )
    )
    load_start = load_now()
    real = real_server()
    targets = {
        "raw": echo_server("asyncio"),
        "real": real,
        "trio-asyncio": echo_server("trio-asyncio"),
        "trio-hop": echo_server("trio-hop"),
        "trio-tasks": echo_server("trio-tasks"),
        "trio-pump": echo_server("trio-pump"),
        "raw-no-rust": echo_server("asyncio", rust=False),
        "raw-upb": echo_server("asyncio", codec="upb"),
        "trio-pump-upb": echo_server("trio-pump", codec="upb"),
    }
    servers = list(targets.values())
    start_all(servers)
    print(
        "servers: " + ", ".join(f"{n} pid {s.pid} :{s.port}" for n, s in targets.items()),
        file=sys.stderr,
        flush=True,
    )
    codes: dict[str, int | None] = {}
    try:
        measured = asyncio.run(measure(plan, targets, real))
        # the echo servers are done: stop them so the sessions run beside our server only
        for name, server in targets.items():
            if server is not real:
                codes[name] = server.stop()
        load_now()
        session_rounds = []
        for r in range(plan.session_rounds):
            load = load_now()
            session_rounds.append(
                {"load_avg_1min": load, **asyncio.run(realtime_sessions(real, plan.session_seconds))}
            )
            print(
                f"  sessions round {r + 1}/{plan.session_rounds}: load {load:.2f}; "
                f"p99 {session_rounds[-1]['latency_ms']['p99']:.2f} ms, lost {session_rounds[-1]['lost']}",
                file=sys.stderr,
                flush=True,
            )
        load_now()
        sessions = {
            "rounds": session_rounds,
            "p99_ms_median": statistics.median(r["latency_ms"]["p99"] for r in session_rounds),
            "sent": sum(r["sent"] for r in session_rounds),
            "lost": sum(r["lost"] for r in session_rounds),
            "duplicates": sum(r["duplicates"] for r in session_rounds),
            "bad_outputs": sum(r["bad_outputs"] for r in session_rounds),
            "errors": [e for r in session_rounds for e in r["errors"]],
            "executors": session_rounds[0]["executors"],
        }
    finally:
        for name, server in targets.items():
            if name not in codes:
                codes[name] = server.stop()
    serde_results = serde(measured["samples"], 150 if args.quick else 1000)
    steps = breakdown(150 if args.quick else 1000)
    report(args.quick, plan, measured, sessions, serde_results, steps, codes, load_start)


def _rounded(value: Any) -> Any:
    """Floats to 4 significant digits, recursively (a readable JSON line)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _opt(value: float | None) -> Any:
    return "-" if value is None else value


def report(
    quick: bool,
    plan: Plan,
    m: dict[str, Any],
    sessions: dict[str, Any],
    serde_results: dict[str, Any],
    steps: dict[str, float],
    codes: dict[str, int | None],
    load_start: float,
) -> None:
    ms, us = 1000.0, 1e6
    med = statistics.median
    # 1. unary
    u = {
        name: {
            "p50": percentile(v, 50) * ms,
            "p99": percentile(v, 99) * ms,
            "mean": statistics.fmean(v) * ms,
            "n": len(v),
            "server_cpu_us_per_call": med(m["unary_cpu"][name]) * us,
        }
        for name, v in m["unary"].items()
    }
    u_ratio50 = u["real"]["p50"] / u["raw"]["p50"]
    u_ratio99 = u["real"]["p99"] / u["raw"]["p99"]
    print_table(
        f"1. Unary ExecutePipeline, 1-node PassThrough, {PAYLOAD_BYTES} B BinaryBuffer "
        f"({plan.rounds} rounds × {plan.unary_calls} calls per server, pooled)",
        ["server", "p50 ms", "p99 ms", "mean ms", "calls", "p50 / raw", "p99 / raw", "server CPU µs/call"],
        [
            (
                BRIDGE[name],
                u[name]["p50"],
                u[name]["p99"],
                u[name]["mean"],
                u[name]["n"],
                u[name]["p50"] / u["raw"]["p50"],
                u[name]["p99"] / u["raw"]["p99"],
                u[name]["server_cpu_us_per_call"],
            )
            for name in ("raw", "real")
        ],
    )
    # 2. + 4. streams
    tput = {n: med(v) for n, v in m["tput"].items()}
    tput_best = {n: max(v) for n, v in m["tput"].items()}
    server_cpu = {n: med(v) * us for n, v in m["tput_cpu"].items()}
    client_cpu = {n: med(v) * us for n, v in m["client_cpu"].items()}
    ping50 = {n: med(v) * ms for n, v in m["ping_round_p50"].items()}
    ping99 = {n: percentile(v, 99) * ms for n, v in m["ping"].items()}
    tallies = {
        n: {
            "sent": m["tput_tally"][n].sent + m["ping_tally"][n].sent,
            "lost": m["tput_tally"][n].lost + m["ping_tally"][n].lost,
            "duplicates": m["tput_tally"][n].duplicates + m["ping_tally"][n].duplicates,
            "out_of_order": m["tput_tally"][n].out_of_order + m["ping_tally"][n].out_of_order,
            "missing": m["tput_tally"][n].missing() + m["ping_tally"][n].missing(),
        }
        for n in m["tput"]
    }
    s_ratio = tput["real"] / tput["raw"]
    added_p50 = ping50["real"] - ping50["raw"]
    print_table(
        f"2. StreamPipeline, {PAYLOAD_BYTES} B BinaryBuffer chunks through PassThrough (median of {plan.rounds} rounds; "
        f"{plan.tput_chunks} chunks per throughput round, {plan.ping_chunks} one-in-flight round trips per round)",
        [
            "server",
            "chunks/s",
            "best",
            "/ raw",
            "server CPU µs/chunk",
            "client CPU µs/chunk",
            "RT p50 ms",
            "RT p99 ms",
            "added p50 ms",
            "lost / sent",
        ],
        [
            (
                BRIDGE[n],
                tput[n],
                tput_best[n],
                tput[n] / tput["raw"],
                server_cpu[n],
                client_cpu[n],
                ping50[n],
                ping99[n],
                ping50[n] - ping50["raw"],
                f"{tallies[n]['lost']} / {tallies[n]['sent']}",
            )
            for n in ("raw", "real")
        ],
    )
    for n in ("raw", "real"):
        t = tallies[n]
        if t["lost"] or t["duplicates"] or t["out_of_order"]:
            print(
                f"   {BRIDGE[n]}: LOST {t['lost']} of {t['sent']} chunks (no error sent), {t['duplicates']} duplicated, "
                f"{t['out_of_order']} out of order; first missing sequences {t['missing']}"
            )
    p99_median = sessions["p99_ms_median"]
    s_ok = (
        p99_median <= SESSION_P99_GOAL_MS
        and sessions["lost"] == 0
        and not sessions["errors"]
        and sessions["bad_outputs"] == 0
        and sessions["duplicates"] == 0
    )
    rows = []
    for i, r in enumerate(sessions["rounds"], 1):
        lat, srv = r["latency_ms"], r["server_processing_ms"]
        rows.append(
            (
                i,
                r["load_avg_1min"],
                lat["p50"],
                lat["p95"],
                lat["p99"],
                lat["max"],
                srv["p50"],
                srv["p99"],
                f"{r['received']} / {r['sent']}",
                r["lost"],
                r["bad_outputs"],
            )
        )
    print_table(
        f"3. {SESSIONS} concurrent sessions, PassThrough → AudioGainNode (executors: "
        f"{', '.join(f'{k}={v}' for k, v in sessions['executors'].items())}), {CHUNK_MS} ms chunks, real time, "
        f"{plan.session_seconds:g} s per round; client latency = send → ChunkResult, server = its processing_time_ms",
        [
            "round",
            "load 1m",
            "client p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "server p50 ms",
            "server p99 ms",
            "received / sent",
            "lost",
            "bad",
        ],
        rows,
    )
    errors = sessions["errors"]
    print(
        f"   median p99 {p99_median:.2f} ms over {len(rows)} round(s); lost {sessions['lost']} of {sessions['sent']}, "
        f"duplicates {sessions['duplicates']}, errors {errors or 'none'}"
    )
    order = (
        "raw",
        "trio-asyncio",
        "trio-hop",
        "trio-tasks",
        "trio-pump",
        "raw-no-rust",
        "raw-upb",
        "trio-pump-upb",
        "real",
    )
    print_table(
        "4. The bridge: the same echo served different ways (same client, same interleaved rounds)",
        [
            "server",
            "chunks/s",
            "/ raw",
            "server CPU µs/chunk",
            "RT p50 ms",
            "RT p50 - raw ms",
            "lost",
            "unary p50 ms",
            "unary - raw ms",
            "server CPU µs/call",
        ],
        [
            (
                BRIDGE[n],
                tput[n],
                tput[n] / tput["raw"],
                server_cpu[n],
                ping50[n],
                ping50[n] - ping50["raw"],
                tallies[n]["lost"],
                _opt(u[n]["p50"] if n in u else None),
                _opt(u[n]["p50"] - u["raw"]["p50"] if n in u else None),
                _opt(u[n]["server_cpu_us_per_call"] if n in u else None),
            )
            for n in order
        ],
    )
    rust, pure = serde_results["rust"], serde_results["pure-python"]
    serde_rows = []
    for name in [k for k in rust if k != "rust_codec"]:
        r, p = rust[name], pure[name]
        serde_rows.append(
            (
                name,
                r["bytes"],
                _opt(r["build_us"]),
                _opt(p["build_us"]),
                r["encode_us"],
                p["encode_us"],
                r["decode_us"],
                p["decode_us"],
                _opt(r.get("upb_encode_us")),
                _opt(r.get("upb_decode_us")),
            )
        )
    print_table(
        f"4b. betterproto per message, µs (rust codec loaded: {rust['rust_codec']} / {pure['rust_codec']}); "
        "build = constructing the message objects; rust = with betterproto_rust_codec, py = without; "
        "upb = the same bytes through google.protobuf (upb), for comparison",
        [
            "message",
            "bytes",
            "build rust",
            "build py",
            "encode rust",
            "encode py",
            "decode rust",
            "decode py",
            "encode upb",
            "decode upb",
        ],
        serde_rows,
    )
    print_table(
        "5. Where our server's time goes: each step it runs, in-process (no sockets), median µs",
        ["step", "µs"],
        list(steps.items()),
    )
    unary_ok = u_ratio50 <= UNARY_GOAL and u_ratio99 <= UNARY_GOAL
    stream_ok = s_ratio >= STREAM_GOAL
    t = tallies["real"]
    stream_clean = t["lost"] == 0 and t["duplicates"] == 0 and t["out_of_order"] == 0
    goals = {
        "unary_p50_p99_vs_raw": unary_ok,
        "stream_chunks_per_s_vs_raw": stream_ok,
        "stream_no_loss": stream_clean,
        "sessions_p99_no_loss": s_ok,
    }
    print(f"\nload average (1 min): start {load_start:.2f}, during {min(LOADS):.2f}–{max(LOADS):.2f}")
    print(f"server exit codes (SIGTERM): {codes}")
    print(
        f"goal 1: unary ≤ {UNARY_GOAL:g} × raw — {'met' if unary_ok else 'MISSED'} "
        f"(p50 {u_ratio50:.2f} ×, p99 {u_ratio99:.2f} ×)\n"
        f"goal 2: stream ≥ {STREAM_GOAL:.0%} of raw chunks/s — {'met' if stream_ok else 'MISSED'} "
        f"({s_ratio:.1%}; added p50 {added_p50:.3f} ms)\n"
        f"        stream: every chunk back once, in order — {'met' if stream_clean else 'MISSED'} "
        f"(lost {t['lost']} of {t['sent']}, duplicates {t['duplicates']}, out of order {t['out_of_order']})\n"
        f"goal 3: {SESSIONS} sessions p99 ≤ {SESSION_P99_GOAL_MS:g} ms, no loss — {'met' if s_ok else 'MISSED'} "
        f"(median p99 {p99_median:.2f} ms, lost {sessions['lost']} of {sessions['sent']})"
    )
    finish(
        "grpc",
        _rounded(
            {
                "quick": quick,
                "payload_bytes": PAYLOAD_BYTES,
                "rounds": plan.rounds,
                "load_avg_1min": {"start": load_start, "min": min(LOADS), "max": max(LOADS)},
                "unary_ms": {
                    "real": u["real"],
                    "raw_echo": u["raw"],
                    "ratio_p50": u_ratio50,
                    "ratio_p99": u_ratio99,
                    "by_server": u,
                    "round_p50_ms": {k: [x * ms for x in v] for k, v in m["unary_round_p50"].items()},
                },
                "stream": {
                    "chunks_per_s": {"real": tput["real"], "raw_echo": tput["raw"], "ratio": s_ratio},
                    "chunks_per_s_rounds": m["tput"],
                    "server_cpu_us_per_chunk": {"real": server_cpu["real"], "raw_echo": server_cpu["raw"]},
                    "client_cpu_us_per_chunk": {"real": client_cpu["real"], "raw_echo": client_cpu["raw"]},
                    "roundtrip_p50_ms": {
                        "real": ping50["real"],
                        "raw_echo": ping50["raw"],
                        "added": added_p50,
                    },
                    "roundtrip_p99_ms": {"real": ping99["real"], "raw_echo": ping99["raw"]},
                    "delivery": tallies,
                },
                "sessions": sessions,
                "bridge": {
                    name: {
                        "what": BRIDGE[name],
                        "chunks_per_s": tput[name],
                        "ratio_to_raw": tput[name] / tput["raw"],
                        "server_cpu_us_per_chunk": server_cpu[name],
                        "roundtrip_p50_ms": ping50[name],
                        "lost": tallies[name]["lost"],
                        "unary_p50_ms": u[name]["p50"] if name in u else None,
                    }
                    for name in order
                },
                "serde_us": serde_results,
                "server_steps_us": steps,
                "goal": {
                    "unary_ratio_max": UNARY_GOAL,
                    "stream_ratio_min": STREAM_GOAL,
                    "stream_chunks_per_s_issue_estimate": 8000,
                    "sessions_p99_ms_max": SESSION_P99_GOAL_MS,
                    "sessions_lost_max": 0,
                },
                "goal_met_by_goal": goals,
                "goal_met": all(goals.values()),
                "server_exit_codes": codes,
            }
        ),
    )


if __name__ == "__main__":
    if "--breakdown-child" in sys.argv:
        breakdown_child(int(sys.argv[sys.argv.index("--breakdown-child") + 1]))
    elif "--serde-child" in sys.argv:
        at = sys.argv.index("--serde-child")
        serde_child(sys.argv[at + 1], int(sys.argv[at + 2]))
    else:
        main()
