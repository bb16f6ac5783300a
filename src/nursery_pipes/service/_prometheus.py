"""``serve --metrics-listen HOST:PORT``: Prometheus metrics of the server (prometheus-client).

Everything about sessions and nodes is read when Prometheus scrapes, not counted on the hot
path: the collector takes a snapshot of the runtime's counters (``runtime.stats``: ended
sessions, plus the live ones as they are now) on the trio thread, then reads each live
worker's RSS and CPU from ``/proc``. gRPC calls and bytes are counted as they happen (per
call and per message, never per frame inside a session). Labels are node types, executors,
methods and status codes — never session ids, so the number of series stays bounded.

The HTTP endpoint is prometheus-client's own server, in a thread the exporter starts and
stops (``start``/``stop``); it outlives the service's restarts and follows the current runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..runtime import Runtime
from ..runtime._stats import INIT_BUCKETS, StatsSnapshot
from ._procfs import process_usage

__all__ = ["GrpcMetrics", "MetricsExporter"]


class GrpcMetrics:
    """Counters of the gRPC service, updated by the server as calls and messages go."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "nursery_pipes_grpc_calls",
            "gRPC calls handled, by method and final status code",
            ["method", "code"],
            registry=registry,
        )
        self.received_bytes = Counter(
            "nursery_pipes_grpc_received_bytes", "Bytes of request messages received", registry=registry
        )
        self.sent_bytes = Counter(
            "nursery_pipes_grpc_sent_bytes", "Bytes of response messages sent", registry=registry
        )
        self.chunk_latency = Histogram(
            "nursery_pipes_grpc_chunk_latency_seconds",
            "StreamPipeline: from a DataChunk's arrival to each ChunkResult it caused",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )


class _RuntimeCollector(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    def follow(self, runtime: Runtime | None, token: trio.lowlevel.TrioToken | None) -> None:
        with self._lock:
            self._runtime, self._token = runtime, token

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            runtime, token = self._runtime, self._token
        if runtime is None or token is None:
            return
        try:
            snap = trio.from_thread.run_sync(
                lambda: runtime.stats.snapshot(runtime.sessions.values()), trio_token=token
            )
        except (trio.RunFinishedError, RuntimeError):  # the runtime's trio run is over
            return
        yield from _families(snap)


def _families(snap: StatsSnapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "nursery_pipes_sessions_active", "Sessions running now", value=snap.sessions_active
    )
    started = CounterMetricFamily("nursery_pipes_sessions_started", "Sessions started")
    started.add_metric([], snap.sessions_started)
    yield started
    ended = CounterMetricFamily("nursery_pipes_sessions", "Sessions ended, by outcome", labels=["outcome"])
    for outcome, count in sorted(snap.sessions_ended.items()):
        ended.add_metric([outcome], count)
    yield ended

    labels = ["node_type", "executor"]
    frames = CounterMetricFamily(
        "nursery_pipes_node_frames", "Frames into and out of nodes", labels=[*labels, "direction"]
    )
    nbytes = CounterMetricFamily(
        "nursery_pipes_node_bytes", "Payload bytes into and out of nodes", labels=[*labels, "direction"]
    )
    process = CounterMetricFamily(
        "nursery_pipes_node_process_seconds", "Time nodes spent in process()/flush()", labels=labels
    )
    failures = CounterMetricFamily("nursery_pipes_node_failures", "Node failures", labels=labels)
    restarts = CounterMetricFamily(
        "nursery_pipes_node_restarts", "Nodes replaced by a fresh instance (supervision)", labels=labels
    )
    init = HistogramMetricFamily(
        "nursery_pipes_node_init_seconds", "Time nodes took to initialise", labels=labels
    )
    queued = GaugeMetricFamily(
        "nursery_pipes_node_queued_frames",
        "Frames waiting on the inputs of running nodes (where backpressure builds)",
        labels=labels,
    )
    for (node_type, executor), t in sorted(snap.nodes.items()):
        key = [node_type, executor]
        frames.add_metric([*key, "in"], t.frames_in)
        frames.add_metric([*key, "out"], t.frames_out)
        nbytes.add_metric([*key, "in"], t.bytes_in)
        nbytes.add_metric([*key, "out"], t.bytes_out)
        process.add_metric(key, t.processing_s)
        failures.add_metric(key, t.failures)
        restarts.add_metric(key, t.restarts)
        cumulative, buckets = 0, []
        for bound, count in zip([*INIT_BUCKETS, float("inf")], t.init_buckets, strict=True):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        init.add_metric(key, buckets, sum_value=t.init_sum)
        queued.add_metric(key, snap.queued_inputs.get((node_type, executor), 0))
    yield from (frames, nbytes, process, failures, restarts, init, queued)

    alive = GaugeMetricFamily("nursery_pipes_workers", "Worker processes running nodes", labels=["node_type"])
    rss = GaugeMetricFamily(
        "nursery_pipes_worker_rss_bytes", "Resident memory of those workers", labels=["node_type"]
    )
    cpu = GaugeMetricFamily(
        "nursery_pipes_worker_cpu_seconds", "CPU time those workers have used so far", labels=["node_type"]
    )
    for node_type, pids in sorted(snap.workers.items()):
        readings = [r for r in map(process_usage, pids) if r is not None]
        alive.add_metric([node_type], len(readings))
        rss.add_metric([node_type], sum(r.rss_bytes for r in readings))
        cpu.add_metric([node_type], sum(r.cpu_secs for r in readings))
    yield from (alive, rss, cpu)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class MetricsExporter:
    """The ``/metrics`` endpoint: ``start()`` it, ``follow()`` the runtime that is serving,
    ``stop()`` it. ``grpc`` is what the gRPC server counts into.

    >>> exporter = MetricsExporter()
    >>> port = exporter.start("127.0.0.1", 0)
    >>> import urllib.request
    >>> text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    >>> "nursery_pipes_grpc_calls" in text
    True
    >>> exporter.stop()
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.grpc = GrpcMetrics(self.registry)
        self._runtime = _RuntimeCollector()
        self.registry.register(self._runtime)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def follow(self, runtime: Runtime | None) -> None:
        """Report on ``runtime`` (call from its trio thread), or on nothing (None)."""
        self._runtime.follow(runtime, trio.lowlevel.current_trio_token() if runtime is not None else None)

    def start(self, host: str, port: int) -> int:
        """Serve on ``host:port`` in a thread of its own; returns the bound port."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()
