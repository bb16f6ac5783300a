"""``serve --metrics-listen``: Prometheus metrics of a real server, scraped over HTTP after (and
during) real sessions, parsed with prometheus-client's own parser (issue 13 §1).

``_serve`` runs in this process (its signal handling needs the main thread); the scrape is a
plain HTTP GET from a thread."""

from __future__ import annotations

import os
import signal
import urllib.request
from typing import Any

import pytest
import trio
import trio_asyncio
from prometheus_client.parser import text_string_to_metric_families
from service_fixtures import Announcements, manifest

from nursery_pipes import RuntimeConfig, TextFrame
from nursery_pipes._config import MetricsConfig, ServerConfig
from nursery_pipes.cli import _serve
from nursery_pipes.client import Client

pytestmark = pytest.mark.timeout(60)

DOC = manifest(
    [("in", "PassThrough", {}), ("shout", "TextTransformNode", {"operation": "upper"})],
    [("in", "shout")],
    executors={"in": "inprocess", "shout": "multiprocess"},
)


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: (name, sorted labels) → value."""
    text = await trio.to_thread.run_sync(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_scrape_shows_sessions_nodes_workers_and_grpc_calls() -> None:
    config = RuntimeConfig(
        server=ServerConfig(listen="127.0.0.1:0", drain_timeout_secs=2),
        metrics=MetricsConfig(listen="127.0.0.1:0"),
    )
    announced = Announcements()
    code: list[int] = []

    async def serve() -> None:
        code.append(await _serve._serve(config, announced))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        url = (await announced.wait_for("metrics on ")).rsplit(" ", 1)[1]
        address = (await announced.wait_for("listening on")).rsplit(" ", 1)[1]
        before = await scrape(url)
        assert value(before, "nursery_pipes_sessions_active") == 0

        async with trio_asyncio.open_loop():

            async def unary() -> None:
                async with Client(address) as client:
                    for text in ("a", "bb"):
                        await client.execute(DOC, {"in": TextFrame(text=text)})

            await trio_asyncio.aio_as_trio(unary)()
            after = await scrape(url)

            live_samples: dict[Any, float] = {}

            async def streaming() -> None:
                async with Client(address) as client, client.stream(DOC) as stream:
                    await stream.send("in", TextFrame(text="live"))
                    live_samples.update(await trio_asyncio.trio_as_aio(scrape)(url))
                    await stream.close()
                    async for _ in stream:
                        pass

            await trio_asyncio.aio_as_trio(streaming)()
        final = await scrape(url)
        os.kill(os.getpid(), signal.SIGTERM)
    assert code == [0]

    # sessions, by outcome; none left running
    assert value(after, "nursery_pipes_sessions_total", outcome="completed") == 2
    assert value(after, "nursery_pipes_sessions_started_total") == 2
    assert value(after, "nursery_pipes_sessions_active") == 0
    # nodes by type and executor: two frames through each, an init time observed per session
    shout = {"node_type": "TextTransformNode", "executor": "multiprocess"}
    assert value(after, "nursery_pipes_node_frames_total", direction="in", **shout) == 2
    assert value(after, "nursery_pipes_node_frames_total", direction="out", **shout) == 2
    assert value(after, "nursery_pipes_node_bytes_total", direction="in", **shout) == 3  # "a" + "bb"
    assert (
        value(
            after,
            "nursery_pipes_node_frames_total",
            direction="in",
            node_type="PassThrough",
            executor="inprocess",
        )
        == 2
    )
    assert value(after, "nursery_pipes_node_init_seconds_count", **shout) == 2
    assert value(after, "nursery_pipes_node_init_seconds_bucket", le="+Inf", **shout) == 2
    assert value(after, "nursery_pipes_node_failures_total", **shout) == 0
    # gRPC: calls by method and code, bytes both ways
    assert value(after, "nursery_pipes_grpc_calls_total", method="ExecutePipeline", code="OK") == 2
    assert value(after, "nursery_pipes_grpc_received_bytes_total") > 0
    assert value(after, "nursery_pipes_grpc_sent_bytes_total") > 0
    # while a stream was live: one session, its worker with its memory and CPU
    assert value(live_samples, "nursery_pipes_sessions_active") == 1
    assert value(live_samples, "nursery_pipes_workers", node_type="TextTransformNode") == 1
    assert value(live_samples, "nursery_pipes_worker_rss_bytes", node_type="TextTransformNode") > 10e6
    assert value(live_samples, "nursery_pipes_worker_cpu_seconds", node_type="TextTransformNode") > 0
    # the stream's one chunk → its one result; the stream counted as a call; three sessions
    assert value(final, "nursery_pipes_grpc_chunk_latency_seconds_count") == 1
    assert 0 < value(final, "nursery_pipes_grpc_chunk_latency_seconds_sum") < 5
    assert value(final, "nursery_pipes_grpc_calls_total", method="StreamPipeline", code="OK") == 1
    assert value(final, "nursery_pipes_sessions_total", outcome="completed") == 3
    # no session ids in any label
    assert not any(dict(labels).get("session_id") for _, labels in live_samples)
