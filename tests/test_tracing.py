"""OpenTelemetry traces (issue 13 §3): a real server, real clients sending W3C ``traceparent``
metadata, spans collected by the SDK's in-memory exporter — and once exported by OTLP/HTTP to a
collector stand-in, through ``serve``'s own setup.

What is checked: the session span joins the caller's trace under the caller's span (a new trace
without one); one init span per node instance, with its executor, pid and restart count; frame
spans for every node at sample ratio 1 and none at 0, multiprocess nodes included (timed in
their worker); a failing node gives ERROR spans naming it; supervision shows as span events;
``[tracing]`` parses, with clear errors; a missing ``otel`` extra is one line, exit 2.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from service_fixtures import Announcements, audio, manifest, mixed_audio_manifest, serving
from typer.testing import CliRunner

from nursery_pipes import ConfigError, NodeError, RuntimeConfig, TextFrame
from nursery_pipes._config import ServerConfig, TracingConfig, load_config
from nursery_pipes.cli import _app, _serve, app
from nursery_pipes.tracing import OpenTelemetryTracer, tracer_from_config, traces_url
from nursery_pipes.worker import SAMPLE_ALL, sampled, threshold_for

pytestmark = pytest.mark.timeout(60)

P = "nursery_pipes."
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


class Spans:
    """A tracer whose spans land in memory, and ways to look at them."""

    def __init__(self, ratio: float) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = OpenTelemetryTracer(provider, frame_sample_ratio=ratio)

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == "nursery_pipes." + name]

    def session(self) -> ReadableSpan:
        (span,) = self.named("session")
        return span

    def inits(self) -> dict[str, list[ReadableSpan]]:
        found: dict[str, list[ReadableSpan]] = {}
        for span in self.named("node.init"):
            found.setdefault(attr(span, "node.id"), []).append(span)
        return found

    def frames(self) -> dict[str, list[ReadableSpan]]:
        found: dict[str, list[ReadableSpan]] = {}
        for span in self.named("node.process"):
            found.setdefault(attr(span, "node.id"), []).append(span)
        return found


def attr(span: ReadableSpan, name: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(P + name)


def child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    assert span.parent is not None
    assert parent.context is not None
    return span.parent.span_id == parent.context.span_id and span.context.trace_id == parent.context.trace_id


async def stream_audio(
    served: Any, doc: dict[str, Any], values: list[float], *, entry: str = "src", **client: Any
) -> list[Any]:
    async def call() -> list[Any]:
        async with served.client(**client) as c, c.stream(doc) as stream:
            for value in values:
                await stream.send(entry, audio(value))
            await stream.close()
            return [event async for event in stream]

    result: list[Any] = await served.aio(call)
    return result


# -- a session's trace, over StreamPipeline and ExecutePipeline ---------------------------------


async def test_a_stream_joins_the_callers_trace_with_an_init_span_per_node_and_every_frame() -> None:
    spans = Spans(1.0)
    doc = mixed_audio_manifest()  # src, out in-process; gain, tap in worker processes
    async with serving(tracer=spans.tracer) as served:
        events = await stream_audio(served, doc, [0.1, 0.2, 0.3], metadata={"traceparent": TRACEPARENT})
        assert sum(1 for e in events if hasattr(e, "frame")) == 6  # out and tap, 3 each
    # (the server is drained and stopped: every span of the session has ended)
    session = spans.session()
    assert session.context is not None
    assert session.context.trace_id == TRACE_ID
    assert session.parent is not None
    assert session.parent.span_id == PARENT_ID
    assert session.parent.is_remote
    assert attr(session, "pipeline.name") == "grpc-test"
    assert attr(session, "pipeline.node_count") == 4
    assert attr(session, "session.outcome") == "completed"
    assert len(attr(session, "session.id")) == 16
    assert session.status.status_code is StatusCode.UNSET

    inits = spans.inits()
    assert sorted(inits) == ["gain", "out", "src", "tap"]
    for node_id, (init,) in inits.items():
        assert child_of(init, session)
        assert attr(init, "node.restarts") == 0
        assert attr(init, "node.type") == ("AudioGainNode" if node_id == "gain" else "PassThrough")
        worker = node_id in ("gain", "tap")
        assert attr(init, "node.executor") == ("multiprocess" if worker else "inprocess")
        pid = attr(init, "node.pid")
        assert (isinstance(pid, int) and pid != os.getpid()) if worker else pid is None

    frames = spans.frames()
    assert sorted(frames) == ["gain", "out", "src", "tap"]
    for node_id, node_frames in frames.items():
        assert sorted(attr(f, "frame.seq") for f in node_frames) == [1, 2, 3], node_id
        for frame in node_frames:
            assert child_of(frame, session)
            assert attr(frame, "frame.bytes_in") == attr(frame, "frame.bytes_out") == 640  # 160 f32
            assert frame.status.status_code is StatusCode.UNSET
            assert frame.start_time is not None
            assert frame.end_time is not None
            assert session.start_time is not None
            assert session.end_time is not None
            assert session.start_time <= frame.start_time <= frame.end_time <= session.end_time


async def test_no_frame_spans_at_ratio_zero() -> None:
    spans = Spans(0.0)
    async with serving(tracer=spans.tracer) as served:
        await stream_audio(served, mixed_audio_manifest(), [0.1, 0.2, 0.3])
    assert spans.frames() == {}
    assert sorted(spans.inits()) == ["gain", "out", "src", "tap"]
    assert attr(spans.session(), "session.outcome") == "completed"


async def test_execute_pipeline_joins_the_callers_trace_and_without_one_starts_a_new_one() -> None:
    spans = Spans(1.0)
    doc = manifest(
        [("in", "PassThrough", {}), ("shout", "TextTransformNode", {"operation": "upper"})],
        [("in", "shout")],
        executors={"in": "inprocess", "shout": "multiprocess"},
    )

    async def call(metadata: dict[str, str] | None) -> None:
        async with served.client(metadata=metadata) as client:
            result = await client.execute(doc, {"in": TextFrame(text="hi")})
            assert result.outputs["shout"].text == "HI"

    async with serving(tracer=spans.tracer) as served:
        await served.aio(call, {"traceparent": TRACEPARENT, "tracestate": "vendor=1"})
        await served.aio(call, None)
    joined, fresh = sorted(spans.named("session"), key=lambda s: s.parent is None)
    assert joined.context is not None
    assert joined.context.trace_id == TRACE_ID
    assert joined.parent is not None
    assert joined.parent.span_id == PARENT_ID
    assert joined.context.trace_state.get("vendor") == "1"
    assert fresh.parent is None
    assert fresh.context is not None
    assert fresh.context.trace_id != TRACE_ID
    for session in (joined, fresh):
        assert attr(session, "session.outcome") == "completed"
        inits = [s for s in spans.named("node.init") if child_of(s, session)]
        assert sorted(attr(s, "node.id") for s in inits) == ["in", "shout"]
        frames = [s for s in spans.named("node.process") if child_of(s, session)]
        assert sorted(attr(s, "node.id") for s in frames) == ["in", "shout"]


# -- failures and supervision --------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["inprocess", "thread", "multiprocess"])
async def test_a_node_that_fails_on_a_frame_gives_error_spans_naming_it(executor: str) -> None:
    spans = Spans(1.0)
    doc = manifest(
        [("src", "PassThrough", {}), ("boom", "RaiseNode", {"phase": "process", "after_frames": 1})],
        [("src", "boom")],
        executors={"src": "inprocess", "boom": executor},
    )
    async with serving(tracer=spans.tracer) as served:
        with pytest.raises(NodeError, match="boom"):
            await stream_audio(served, doc, [0.1, 0.2])
    session = spans.session()
    assert attr(session, "session.outcome") == "failed"
    assert session.status.status_code is StatusCode.ERROR
    assert session.status.description is not None
    assert "node 'boom' failed in process: RuntimeError: boom" in session.status.description
    assert [e.name for e in session.events] == ["node_failed", "exception"]
    failure = session.events[0].attributes or {}
    assert (failure[P + "node.id"], failure[P + "action"]) == ("boom", "escalate")
    (ok, failed) = sorted(spans.frames()["boom"], key=lambda s: attr(s, "frame.seq"))
    assert attr(ok, "frame.seq") == 1
    assert ok.status.status_code is StatusCode.UNSET
    assert attr(failed, "frame.seq") == 2
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description is not None
    assert "node 'boom' failed in process: RuntimeError: boom" in failed.status.description
    (init,) = spans.inits()["boom"]
    assert init.status.status_code is StatusCode.UNSET  # it was ready: init is not what failed


async def test_each_node_of_a_fused_run_gets_its_own_frame_spans_and_the_failing_one_the_error() -> None:
    """Three worker nodes fused in one process (fuse_chains): the worker times each node's part
    of a sampled frame and says which node it was; the one that raises has the error span."""
    spans = Spans(1.0)
    doc = manifest(
        [
            ("a", "PassThrough", {}),
            ("b", "RaiseNode", {"phase": "process", "after_frames": 1}),
            ("c", "PassThrough", {}),
        ],
        [("a", "b"), ("b", "c")],
        executors=dict.fromkeys("abc", "multiprocess"),
        fuse_chains=True,
    )
    async with serving(tracer=spans.tracer) as served:
        with pytest.raises(NodeError, match="node 'b' failed in process: RuntimeError: boom"):
            await stream_audio(served, doc, [0.1, 0.2], entry="a")
    frames = {
        node: sorted(spans, key=lambda s: attr(s, "frame.seq")) for node, spans in spans.frames().items()
    }
    assert {node: [attr(f, "frame.seq") for f in fs] for node, fs in frames.items()} == {
        "a": [1, 2],
        "b": [1, 2],
        "c": [1],
    }
    assert [f.status.status_code for f in frames["b"]] == [StatusCode.UNSET, StatusCode.ERROR]
    assert [f.status.status_code for f in frames["a"]] == [StatusCode.UNSET] * 2  # b raised, not a
    assert attr(frames["c"][0], "frame.bytes_in") == attr(frames["c"][0], "frame.bytes_out") == 640
    pids = {attr(init, "node.pid") for (init,) in spans.inits().values()}
    assert len(pids) == 1  # one worker for the run


@pytest.mark.parametrize("executor", ["inprocess", "multiprocess"])
async def test_a_node_that_fails_to_initialise_gives_an_error_init_span(executor: str) -> None:
    spans = Spans(0.0)
    doc = manifest(
        [("src", "PassThrough", {}), ("bad", "RaiseNode", {"phase": "initialize", "message": "no model"})],
        [("src", "bad")],
        executors={"src": "inprocess", "bad": executor},
    )
    async with serving(tracer=spans.tracer) as served:
        with pytest.raises(NodeError, match="no model"):
            await stream_audio(served, doc, [])
    (init,) = spans.inits()["bad"]
    assert init.status.status_code is StatusCode.ERROR
    assert init.status.description == "node 'bad' failed in initialize: RuntimeError: no model"
    assert spans.session().status.status_code is StatusCode.ERROR


async def test_a_restart_shows_as_span_events_and_a_second_init_span(tmp_path: Path) -> None:
    spans = Spans(1.0)
    doc = manifest(
        [
            ("src", "PassThrough", {}),
            ("flaky", "RaiseNode", {"phase": "process", "once": str(tmp_path / "fired")}),
        ],
        [("src", "flaky")],
        executors={"src": "inprocess", "flaky": "multiprocess"},
    )
    doc["metadata"]["supervision"] = {"strategy": "one_for_one", "max_restarts": 3}
    async with serving(tracer=spans.tracer) as served:
        await stream_audio(served, doc, [0.1, 0.2])
    session = spans.session()
    assert attr(session, "session.outcome") == "completed"
    events = {e.name: e for e in session.events}
    assert sorted(events) == ["frames_dropped", "node_failed", "node_restarted"]
    failed = events["node_failed"].attributes or {}
    assert failed[P + "node.id"] == "flaky"
    assert failed[P + "action"] == "restart"
    assert "node 'flaky' failed in process: RuntimeError: boom" in str(failed[P + "error"])
    assert (events["node_restarted"].attributes or {})[P + "node.restarts"] == 1
    assert list((events["frames_dropped"].attributes or {})[P + "frame.seqs"]) == [1]
    first, second = sorted(spans.inits()["flaky"], key=lambda s: attr(s, "node.restarts"))
    assert (attr(first, "node.restarts"), attr(second, "node.restarts")) == (0, 1)
    assert attr(first, "node.pid") != attr(second, "node.pid")  # a fresh worker process
    lost, served = sorted(spans.frames()["flaky"], key=lambda s: attr(s, "frame.seq"))
    assert (attr(lost, "frame.seq"), lost.status.status_code) == (1, StatusCode.ERROR)
    assert (attr(served, "frame.seq"), served.status.status_code) == (2, StatusCode.UNSET)  # fresh instance


# -- serve: the OTLP exporter, configuration, the missing extra --------------------------------------


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        type(self).received.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    """A stand-in OTLP/HTTP collector on loopback: what it was sent, decoded."""
    received: list[ExportTraceServiceRequest] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_serve_exports_spans_by_otlp_to_the_configured_endpoint(
    collector: tuple[str, list[ExportTraceServiceRequest]],
) -> None:
    url, received = collector
    config = RuntimeConfig(
        server=ServerConfig(listen="127.0.0.1:0", drain_timeout_secs=2),
        tracing=TracingConfig(enabled=True, otlp_endpoint=url, service_name="np-test"),
    )
    tracer = tracer_from_config(config.tracing)
    assert tracer is not None
    announced = Announcements()
    code: list[int] = []
    try:
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                code.append(await _serve._serve(config, announced, tracer))

            nursery.start_soon(serve)
            address = (await announced.wait_for("listening on")).rsplit(" ", 1)[1]
            async with serving_client(address, {"traceparent": TRACEPARENT}) as execute:
                await execute()
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        await trio.to_thread.run_sync(tracer.shutdown)  # flushes the batch to the collector
    assert code == [0]
    assert any(f"spans by OTLP/HTTP to {url}/v1/traces" in line for line in announced.lines)
    exported = [
        (resource.resource, span)
        for request in received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    (resource, session), *_ = [(r, s) for r, s in exported if s.name == "nursery_pipes.session"]
    assert session.trace_id == TRACE_ID.to_bytes(16, "big")
    assert session.parent_span_id == PARENT_ID.to_bytes(8, "big")
    service = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
    assert service == "np-test"
    # The default ratio (0.01) does not pick input sequence 1: no frame span.
    assert not sampled(1, threshold_for(TracingConfig().frame_sample_ratio))
    assert sorted(s.name for _, s in exported) == ["nursery_pipes.node.init", "nursery_pipes.session"]


def serving_client(address: str, metadata: dict[str, str]) -> Any:
    """An asyncio client on a trio-asyncio loop of its own, for a server ``_serve`` runs."""
    from contextlib import asynccontextmanager

    import trio_asyncio

    from nursery_pipes.client import Client

    @asynccontextmanager
    async def opened() -> Any:
        async with trio_asyncio.open_loop():

            async def execute() -> None:
                async def call() -> None:
                    async with Client(address, metadata=metadata) as client:
                        result = await client.execute(
                            manifest([("up", "TextTransformNode", {"operation": "upper"})]),
                            {"up": TextFrame(text="hi")},
                        )
                        assert result.outputs["up"].text == "HI"

                await trio_asyncio.aio_as_trio(call)()

            yield execute

    return opened()


README_TRACING = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_tracing_snippet_is_a_valid_runtime_toml() -> None:
    readme = README_TRACING.read_text(encoding="utf-8")
    block = readme.split("### Traces (OpenTelemetry)", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    config = load_config(text=block)
    assert config.tracing == TracingConfig(
        enabled=True,
        otlp_endpoint="http://127.0.0.1:4318",
        service_name="speech-gateway",
        frame_sample_ratio=0.05,
    )


def test_tracing_is_off_by_default_and_its_keys_are_checked() -> None:
    assert RuntimeConfig().tracing == TracingConfig(enabled=False, frame_sample_ratio=0.01)
    assert tracer_from_config(TracingConfig()) is None
    with pytest.raises(ConfigError, match=r"\[tracing.frame_sample_ratio\] Expected `float` <= 1.0"):
        load_config(text="[tracing]\nframe_sample_ratio = 1.5")
    with pytest.raises(ConfigError, match=r"\[tracing\] Object contains unknown field `endpoint`"):
        load_config(text='[tracing]\nendpoint = "http://x:4318"')
    with pytest.raises(ConfigError, match="otlp_endpoint: expected an http"):
        tracer_from_config(TracingConfig(enabled=True, otlp_endpoint="127.0.0.1:4318"))


def test_the_otlp_endpoint_is_a_base_url_like_otel_exporter_otlp_endpoint() -> None:
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("https://c:4318/") == "https://c:4318/v1/traces"
    assert traces_url("http://c:4318/custom/traces") == "http://c:4318/custom/traces"


def test_serve_flags_turn_tracing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[RuntimeConfig] = []

    def fake_serve(config: Any, flags: Any, announce: Any) -> int:
        seen.append(_serve.apply_overrides(RuntimeConfig(), env={}, flags=flags))
        return 0

    monkeypatch.setattr(_serve, "serve", fake_serve)
    result = CliRunner().invoke(
        app, ["serve", "--otlp-endpoint", "http://c:4318", "--frame-sample-ratio", "0.5"]
    )
    assert result.exit_code == 0, result.output
    assert seen[0].tracing == TracingConfig(
        enabled=True, otlp_endpoint="http://c:4318", frame_sample_ratio=0.5
    )


def test_tracing_without_the_otel_extra_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_app.console, "width", 300)  # rich wraps at 80 columns off a terminal
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "nursery_pipes.tracing._otel", raising=False)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # what an install without the extra sees
    result = CliRunner().invoke(app, ["serve", "--tracing", "--listen", "127.0.0.1:0"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "OpenTelemetry is not installed" in lines[0]
    assert lines[0].endswith("install the otel extra: pip install 'nursery-pipes[otel]'")
    assert "Traceback" not in result.output


def test_nothing_loads_opentelemetry_until_tracing_is_configured() -> None:
    code = (
        "import sys, nursery_pipes, nursery_pipes.runtime, nursery_pipes.service, nursery_pipes.tracing\n"
        "from nursery_pipes.cli import _serve, app\n"
        "from nursery_pipes._config import TracingConfig\n"
        "assert nursery_pipes.tracing.tracer_from_config(TracingConfig()) is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the sampling rule (sans-I/O) -------------------------------------------------------------------


def test_sampling_picks_the_ratio_spread_over_the_sequences() -> None:
    assert threshold_for(0.0) == 0
    assert threshold_for(1.0) == SAMPLE_ALL
    every = threshold_for(1.0)
    assert all(sampled(seq, every) for seq in range(1, 10_000))
    assert not any(sampled(seq, threshold_for(0.0)) for seq in range(1, 10_000))
    hundredth = threshold_for(0.01)
    picked = [seq for seq in range(1, 100_001) if sampled(seq, hundredth)]
    assert 900 <= len(picked) <= 1100
    # No beat with a pipeline's own period: each residue modulo a small period gets its share
    # (a source alternating two kinds of frame has both kinds sampled).
    for period in range(2, 13):
        shares = [sum(1 for seq in picked if seq % period == r) for r in range(period)]
        assert max(shares) - min(shares) <= 0.1 * len(picked) / period + 2, (period, shares)
    with pytest.raises(ValueError, match="between 0 and 1"):
        threshold_for(1.5)
