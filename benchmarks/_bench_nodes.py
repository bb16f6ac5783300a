"""Benchmark-only nodes that timestamp frames inside worker processes.

Imported by the benchmarks (registered with ``runtime.registry.register``) and
by worker processes (``load_ref("_bench_nodes:...")``): the benchmark puts this
directory on ``sys.path`` before any worker starts, and trio-parallel's
forkserver/spawn children inherit the parent's ``sys.path`` (multiprocessing's
preparation data). Like the worker module, this imports no trio.

All times are ``time.perf_counter_ns()``: CLOCK_MONOTONIC, system-wide on
Linux, so a worker's stamp can be subtracted from the supervisor's.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from nursery_pipes.frames import AudioFrame, Frame, JsonFrame, TensorFrame
from nursery_pipes.nodes._base import Node

now = time.perf_counter_ns

# Set by the instrumented decode in the worker (see instrument_worker): when the
# worker's receive returned (after the semaphore wake-up and the slot's header read).
_last_arrival = [0]


def instrument_worker() -> None:
    """Wrap the worker loop's ``decode_frame`` to stamp the moment a frame left the ring.

    Benchmark-side instrumentation of THIS worker process only (a module global is
    rebound, no source is changed); costs ~0.2 µs per frame.
    """
    from nursery_pipes.worker import _main

    original = _main.decode_frame
    if getattr(original, "_bench", False):
        return

    def decode_frame(*args: Any, **kwargs: Any) -> Frame:
        _last_arrival[0] = now()
        return original(*args, **kwargs)

    decode_frame._bench = True  # type: ignore[attr-defined]
    _main.decode_frame = decode_frame  # type: ignore[assignment]


class HopStampNode(Node):
    """Audio in, the same audio out, with three int64 stamps written over its first 24 bytes:
    worker had the frame (left the ring), process() started, process() returns."""

    zero_copy = True

    def __init__(self, params: Any, context: Any) -> None:
        super().__init__(params, context)
        instrument_worker()

    def process(self, frame: Frame) -> Frame:
        t_proc = now()
        assert isinstance(frame, AudioFrame)
        samples = np.array(frame.samples)  # 4 KiB copy, ~1 µs: the input is a read-only slot view
        stamps = samples.reshape(-1).view(np.int64)
        stamps[0] = _last_arrival[0]
        stamps[1] = t_proc
        stamps[2] = now()
        return AudioFrame(samples=samples, sample_rate=frame.sample_rate)


class ArrivalNode(Node):
    """Anything in; out a tiny JSON frame with the arrival time (process() entry) and the
    sender's ``t_send`` metadata if any. Reads its input in place (zero copy)."""

    zero_copy = True

    def process(self, frame: Frame) -> Frame:
        t_recv = now()
        return JsonFrame(
            value={"t_recv": t_recv, "t_send": int(frame.metadata.get("t_send", 0)), "nbytes": frame.nbytes}
        )


class ArrivalCopyNode(ArrivalNode):
    """ArrivalNode as a default node gets its input: copied out of shared memory first."""

    zero_copy = False


class SendStampNode(Node):
    """Tensor in, the same tensor out, stamped ``t_send`` (metadata) as process() returns;
    the worker then writes it into the next ring (one copy from the input slot)."""

    zero_copy = True

    def process(self, frame: Frame) -> Frame:
        assert isinstance(frame, TensorFrame)
        return TensorFrame(data=frame.data, layout=frame.layout, metadata={"t_send": str(now())})


BENCH_NODES = (HopStampNode, ArrivalNode, ArrivalCopyNode, SendStampNode)


def register(registry: Any) -> None:
    for cls in BENCH_NODES:
        if cls.node_type not in registry:
            registry.register(cls, origin="benchmarks")
