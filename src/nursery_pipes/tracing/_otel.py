"""The OpenTelemetry implementation of the runtime's tracing seam (``runtime/_trace.py``).

Spans (each ``nursery_pipes.*`` attribute below is set on it):

- ``nursery_pipes.session`` — one per session, from its start to its end; its parent is the
  caller's trace context (W3C ``traceparent``/``tracestate`` from the gRPC metadata, through
  ``opentelemetry.propagate``), else it starts a new trace. ``session.id``, ``pipeline.name``,
  ``pipeline.node_count``, ``session.outcome`` (completed, failed, cancelled). A failed
  session's status is ERROR with the error, which names the node. Supervision's events
  (``node_failed``, ``node_restarted``, ``frames_dropped``) are span events on it.
- ``nursery_pipes.node.init`` — a child per node instance's initialisation: ``node.id``,
  ``node.type``, ``node.executor``, ``node.restarts``, ``node.pid`` (worker processes); ERROR
  when it fails (an init timeout included), ``node.init_cancelled`` when it was stopped.
- ``nursery_pipes.node.process`` — a child per *sampled* frame and node (the input sequences
  ``worker.sampled`` picks at ``frame_sample_ratio``): ``node.id``, ``frame.seq``,
  ``frame.bytes_in``, ``frame.bytes_out``, timed where the node runs — in the supervisor, or in
  its worker process, which sends the timing over its events ring. ERROR if it failed.

Spans are started and ended explicitly with explicit parents: nothing here touches the
OpenTelemetry *current* context, which trio tasks would not carry as asyncio tasks do.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode

from .._version import __version__
from ..executors import NO_NODE_TRACE, NodeTrace
from ..runtime import FramesDropped, InitTrace, NodeFailed, NodeRestarted, SessionTrace, Tracer
from ..worker import threshold_for

__all__ = ["OpenTelemetryTracer", "otlp_provider"]

DEFAULT_SERVICE_NAME = "nursery-pipes"
_P = "nursery_pipes."


def otlp_provider(url: str | None, service_name: str = "") -> TracerProvider:
    """A provider whose spans are batched (a thread of the SDK's) and posted by OTLP/HTTP to
    ``url`` (None: where the ``OTEL_EXPORTER_OTLP_*`` variables say). ``service.name``:
    ``service_name``, else ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``, else
    nursery-pipes."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    resource = Resource.create({"service.name": service_name} if service_name else {})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    return provider


class OpenTelemetryTracer(Tracer):
    """Traces each session with OpenTelemetry spans (see the module docstring).

    ``provider``: where the spans go (None: the global provider,
    ``opentelemetry.trace.get_tracer_provider()``). ``frame_sample_ratio``: the share of input
    sequences whose frames get a span in every node they reach (0: none, 1: all).
    """

    def __init__(
        self, provider: trace.TracerProvider | None = None, *, frame_sample_ratio: float = 0.01
    ) -> None:
        self._provider = provider
        self._tracer = (provider or trace.get_tracer_provider()).get_tracer("nursery_pipes", __version__)
        self.threshold = threshold_for(frame_sample_ratio)

    def session(
        self, session_id: str, pipeline: str, node_count: int, context: Mapping[str, str]
    ) -> SessionTrace:
        span = self._tracer.start_span(
            "nursery_pipes.session",
            context=propagate.extract(context),
            attributes={
                _P + "session.id": session_id,
                _P + "pipeline.name": pipeline,
                _P + "pipeline.node_count": node_count,
            },
        )
        # A trace the caller's sampler dropped is not recorded here either: no frame is timed.
        return _SessionTrace(self._tracer, span, self.threshold if span.is_recording() else 0)

    def shutdown(self) -> None:
        """Send the spans still batched and stop the provider this tracer was given (not the
        global one). Call it once, at exit."""
        shutdown = getattr(self._provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


class _SessionTrace(SessionTrace):
    def __init__(self, tracer: trace.Tracer, span: Span, threshold: int) -> None:
        self._tracer = tracer
        self._span = span
        self._context = trace.set_span_in_context(span)
        self._threshold = threshold

    def node_init(self, node_id: str, node_type: str, executor: str, restarts: int) -> InitTrace:
        span = self._tracer.start_span(
            "nursery_pipes.node.init",
            context=self._context,
            attributes={
                _P + "node.id": node_id,
                _P + "node.type": node_type,
                _P + "node.executor": executor,
                _P + "node.restarts": restarts,
            },
        )
        return _InitTrace(span)

    def frames(self, node_id: str) -> NodeTrace:
        if not self._threshold:
            return NO_NODE_TRACE
        return _NodeTrace(self._tracer, self._context, node_id, self._threshold)

    def event(self, event: NodeFailed | NodeRestarted | FramesDropped) -> None:
        if isinstance(event, NodeFailed):
            self._span.add_event(
                "node_failed",
                {
                    _P + "node.id": event.node_id,
                    _P + "error": str(event.error),
                    _P + "action": event.action,
                    _P + "restarting": list(event.restarting),
                    _P + "node.restarts": event.restarts,
                },
            )
        elif isinstance(event, NodeRestarted):
            self._span.add_event(
                "node_restarted",
                {
                    _P + "node.id": event.node_id,
                    _P + "node.restarts": event.restarts,
                    _P + "cause": event.cause,
                },
            )
        else:
            self._span.add_event(
                "frames_dropped",
                {
                    _P + "node.id": event.node_id,
                    _P + "frame.seqs": list(event.sequences),
                    _P + "reason": event.reason,
                },
            )

    def end(self, outcome: str, error: BaseException | None) -> None:
        span = self._span
        span.set_attribute(_P + "session.outcome", outcome)
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
        span.end()


class _InitTrace(InitTrace):
    def __init__(self, span: Span) -> None:
        self._span: Span | None = span

    def ready(self, pid: int | None) -> None:
        span, self._span = self._span, None
        if span is None:
            return
        if pid is not None:
            span.set_attribute(_P + "node.pid", pid)
        span.end()

    def failed(self, error: BaseException) -> None:
        span, self._span = self._span, None
        if span is None:
            return  # ready before: a later failure is the session's
        if isinstance(error, Exception):
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
        else:  # cancelled (the session stopped) before it was ready: not the node's error
            span.set_attribute(_P + "node.init_cancelled", True)
        span.end()


class _NodeTrace(NodeTrace):
    def __init__(self, tracer: trace.Tracer, context: Context, node_id: str, threshold: int) -> None:
        self._tracer = tracer
        self._context = context
        self.node_id = node_id
        self.threshold = threshold

    def frame(
        self, seq: int, start_ns: int, end_ns: int, bytes_in: int, bytes_out: int, error: str = ""
    ) -> None:
        span = self._tracer.start_span(
            "nursery_pipes.node.process",
            context=self._context,
            start_time=start_ns,
            attributes={
                _P + "node.id": self.node_id,
                _P + "frame.seq": seq,
                _P + "frame.bytes_in": bytes_in,
                _P + "frame.bytes_out": bytes_out,
            },
        )
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end_ns)
