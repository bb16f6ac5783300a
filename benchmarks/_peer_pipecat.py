"""The peer row of bench_blocking: the same sessions as Pipecat pipelines in one asyncio loop.

Imported only when ``pipecat-ai`` is installed (``pip install -r benchmarks/requirements-peers.txt``,
best in a venv of its own: Pipecat needs protobuf < 7, the project's lock has 7). Never a
dependency of the runtime.

LIGHT pipelines (a pass-through processor, then a processor that records arrivals), each fed
a 20 ms ``InputAudioRawFrame`` every 20 ms on an absolute schedule, staggered like the
runtime's light sessions; latency from each frame's scheduled time to its arrival at the end
of its pipeline. Beside them one heavy pipeline, fed a frame every 400 ms, whose processor
takes 200 ms per frame either by calling ``time.sleep`` in ``process_frame`` (what a blocking
library call does: the event loop, shared by every pipeline, stops) or with ``await
asyncio.to_thread(time.sleep, …)`` (Pipecat's way to keep the loop free, the counterpart of
the thread executor). All pipelines are workers of one ``WorkerRunner``, in one loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from loguru import logger

logger.disable("pipecat")  # its import banner and debug lines would interleave with the tables

import pipecat  # noqa: E402
from pipecat.frames.frames import EndFrame, InputAudioRawFrame  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

VERSION = getattr(pipecat, "__version__", "?")
HEAVY = {
    "time.sleep in process_frame": "loop",
    "await asyncio.to_thread(time.sleep)": "thread",
}


class Forward(FrameProcessor):  # type: ignore[misc]
    """Passes every frame on (the light node)."""

    async def process_frame(self, frame: Any, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class Block(Forward):
    """Takes ``seconds`` per audio frame, blocking the loop or in a thread."""

    def __init__(self, seconds: float, how: str) -> None:
        super().__init__()
        self.seconds = seconds
        self.how = how

    async def process_frame(self, frame: Any, direction: FrameDirection) -> None:
        if isinstance(frame, InputAudioRawFrame):
            if self.how == "loop":
                time.sleep(self.seconds)  # noqa: ASYNC251 — blocking the loop is the point
            else:
                await asyncio.to_thread(time.sleep, self.seconds)
        await super().process_frame(frame, direction)


class Arrivals(Forward):
    """Records (scheduled time, arrival time) of every audio frame that reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, float]] = []

    async def process_frame(self, frame: Any, direction: FrameDirection) -> None:
        if isinstance(frame, InputAudioRawFrame) and "due" in frame.metadata:
            self.seen.append((frame.metadata["due"], asyncio.get_running_loop().time()))
        await super().process_frame(frame, direction)


def _worker(first: FrameProcessor, arrivals: Arrivals, name: str) -> PipelineWorker:
    return PipelineWorker(
        Pipeline([first, arrivals]),
        name=name,
        params=PipelineParams(audio_in_sample_rate=16000),
        enable_rtvi=False,
        enable_turn_tracking=False,
        idle_timeout_secs=None,
        cancel_on_idle_timeout=False,
        check_dangling_tasks=False,
    )


async def _feed(worker: PipelineWorker, due: list[float], samples: int) -> None:
    loop = asyncio.get_running_loop()
    pcm = bytes(samples * 2)  # 16-bit mono silence
    for t in due:
        await asyncio.sleep(max(0.0, t - loop.time()))
        frame = InputAudioRawFrame(audio=pcm, sample_rate=16000, num_channels=1)
        frame.metadata["due"] = t
        await worker.queue_frame(frame)
    await worker.queue_frame(EndFrame())


async def _run(
    how: str | None, light: int, seconds: float, block_s: float, period: float, samples: int
) -> tuple[list[float], list[float]]:
    loop = asyncio.get_running_loop()
    runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
    lights = [Arrivals() for _ in range(light)]
    workers = [_worker(Forward(), a, f"light-{i}") for i, a in enumerate(lights)]
    heavy = Arrivals()
    if how is not None:
        workers.append(_worker(Block(block_s, how), heavy, "heavy"))
    started = [asyncio.Event() for _ in workers]
    for worker, event in zip(workers, started, strict=True):

        async def on_started(_worker: Any, _frame: Any, event: asyncio.Event = event) -> None:
            event.set()

        worker.event_handler("on_pipeline_started")(on_started)
    await runner.add_workers(*workers)
    running = asyncio.create_task(runner.run())
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)

    start = loop.time() + 0.05
    frames = round(seconds / period)
    feeds = [
        _feed(w, [start + i * period / light + k * period for k in range(frames)], samples)
        for i, w in enumerate(workers[:light])
    ]
    if how is not None:
        heavy_due = [start + period / 2 + k * 0.4 for k in range(max(1, round(seconds / 0.4)))]
        feeds.append(_feed(workers[-1], heavy_due, samples))
    await asyncio.gather(*feeds)
    await asyncio.wait_for(running, 30)  # every pipeline ends once its EndFrame has gone through
    light_lat = [arrived - due for a in lights for due, arrived in a.seen]
    heavy_lat = [arrived - due for due, arrived in heavy.seen]
    return light_lat, heavy_lat


def measure(
    light: int, seconds: float, rounds: int, *, block_s: float, period: float, samples: int
) -> dict[str, Any]:
    configs: list[str | None] = [None, *HEAVY.values()]
    lat: dict[str | None, list[float]] = {c: [] for c in configs}
    own: dict[str | None, list[float]] = {c: [] for c in configs}
    for r in range(rounds):
        for how in configs[r % len(configs) :] + configs[: r % len(configs)]:
            light_lat, heavy_lat = asyncio.run(_run(how, light, seconds, block_s, period, samples))
            lat[how] += light_lat
            own[how] += heavy_lat

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] * 1000

    base = lat[None]
    result: dict[str, Any] = {
        "version": VERSION,
        "baseline": {
            "p50_ms": pct(base, 50),
            "p99_ms": pct(base, 99),
            "max_ms": pct(base, 100),
            "n": len(base),
        },
        "heavy": {},
    }
    for name, how in HEAVY.items():
        values = lat[how]
        result["heavy"][name] = {
            "p50_ms": pct(values, 50),
            "p99_ms": pct(values, 99),
            "max_ms": pct(values, 100),
            "n": len(values),
            "p50_vs_baseline": pct(values, 50) / pct(base, 50),
            "p99_vs_baseline": pct(values, 99) / pct(base, 99),
            "heavy_latency_p50_ms": pct(own[how], 50),
        }
    return result
