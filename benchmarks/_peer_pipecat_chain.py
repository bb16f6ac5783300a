"""The peer row of bench_chain: 5 pass-through processors in one Pipecat pipeline, one asyncio loop.

Imported only when ``pipecat-ai`` is installed (see ``benchmarks/requirements-peers.txt``: a
venv of its own, ``.venv-peers``). Never a dependency of the runtime.

The pipeline (``Forward`` ×4, then ``Arrival``, itself a pass-through that also notes when a
frame reaches it) runs as a ``PipelineWorker`` of a ``WorkerRunner`` in an asyncio loop that
lives in a thread of its own for the whole benchmark, so that bench_chain can interleave it,
round by round, with the runtime's sessions (trio, in the main thread, idle meanwhile). The
frame is an ``OutputAudioRawFrame`` (a Pipecat ``DataFrame``: queued through every
processor) holding the payload ``bytes``; frames are passed by reference, nothing is copied.
Latency: ``perf_counter_ns`` just before ``queue_frame`` to the arrival at the 5th processor,
one frame in flight at a time; a fresh frame object per send, made before the clock starts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from loguru import logger

logger.disable("pipecat")  # its import banner and debug lines would interleave with the tables

import pipecat  # noqa: E402
from pipecat.frames.frames import EndFrame, OutputAudioRawFrame  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

VERSION = getattr(pipecat, "__version__", "?")
FRAME_TYPE = "OutputAudioRawFrame (DataFrame), payload bytes by reference"


class Forward(FrameProcessor):  # type: ignore[misc]
    """Passes every frame on."""

    async def process_frame(self, frame: Any, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class Arrival(Forward):
    """The 5th pass-through: also resolves the waiting future when the payload frame arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: asyncio.Future[int] | None = None

    async def process_frame(self, frame: Any, direction: FrameDirection) -> None:
        if isinstance(frame, OutputAudioRawFrame) and self.waiting is not None:
            arrived = time.perf_counter_ns()
            if not self.waiting.done():
                self.waiting.set_result(arrived)
        await super().process_frame(frame, direction)


class PipecatChain:
    """A 5-processor Pipecat pipeline kept running in a thread; :meth:`measure` from any thread."""

    def __init__(self, nodes: int = 5) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pipecat-loop", daemon=True)
        self.thread.start()
        self.arrival = Arrival()
        processors = [Forward() for _ in range(nodes - 1)] + [self.arrival]
        self.worker = PipelineWorker(
            Pipeline(processors),
            name="chain",
            params=PipelineParams(audio_out_sample_rate=16000),
            enable_rtvi=False,
            enable_turn_tracking=False,
            idle_timeout_secs=None,
            cancel_on_idle_timeout=False,
            check_dangling_tasks=False,
        )
        self.running: asyncio.Task[None] | None = None
        self._call(self._start(), 60)

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
        started = asyncio.Event()

        async def on_started(_worker: Any, _frame: Any) -> None:
            started.set()

        self.worker.event_handler("on_pipeline_started")(on_started)
        await runner.add_workers(self.worker)
        self.running = asyncio.create_task(runner.run())
        await asyncio.wait_for(started.wait(), 30)

    async def _measure(self, payload: bytes, n: int) -> list[int]:
        loop = asyncio.get_running_loop()
        out = []
        for _ in range(n):
            frame = OutputAudioRawFrame(audio=payload, sample_rate=16000, num_channels=1)
            self.arrival.waiting = loop.create_future()
            t0 = time.perf_counter_ns()
            await self.worker.queue_frame(frame)
            arrived = await asyncio.wait_for(self.arrival.waiting, 30)
            out.append(arrived - t0)
        self.arrival.waiting = None
        return out

    def measure(self, payload: bytes, n: int) -> list[int]:
        """Nanoseconds per frame, send → arrival at the 5th processor, one frame in flight."""
        result: list[int] = self._call(self._measure(payload, n))
        return result

    async def _stop(self) -> None:
        await self.worker.queue_frame(EndFrame())
        if self.running is not None:
            await asyncio.wait_for(self.running, 30)

    def close(self) -> None:
        try:
            self._call(self._stop(), 60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
