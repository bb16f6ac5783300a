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
from typing import Annotated, Any

import msgspec
import numpy as np

from nursery_pipes.frames import AudioFrame, Frame, JsonFrame, TensorFrame
from nursery_pipes.nodes._base import Node, Params

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


# ------------------------------------------------------------------ heavy stages (bench_parallel,
# bench_blocking): the same work wherever they run, so executors can be compared. The work per
# frame is a number of units fixed by the benchmark (calibrate(), once, in its own process),
# never re-measured inside a node: a node calibrating under contention would do less work.

MATRIX = 256
"""One unit of GIL-releasing work: a 256×256 float64 matrix product into a preallocated
array (~0.65 ms here). BLAS runs without the GIL; the Python around each call is < 1 % of
the unit. The benchmarks pin OpenBLAS to one thread (``OPENBLAS_NUM_THREADS=1``, set before
numpy is imported, inherited by workers), so a stage is one core's work wherever it runs;
:func:`calibrate` refuses to run otherwise.

Why not FFTs: numpy's FFTs allocate and free large temporaries on every call. On a
process's main thread — where in-process nodes and worker processes run — glibc hands that
memory back to the kernel each time (strace: brk up, brk down, per call) and it faults in
again on the next call; on a node thread's arena it does not. So a 32 Ki-point FFT costs
~1.3-2× more CPU on a main thread here, which would credit the thread executor with the
allocator's doing."""
PY_ITERATIONS = 1000
"""One unit of GIL-holding work: a pure-Python loop of this many multiply-adds (~35 µs here)."""


class WorkParams(Params, kw_only=True):
    units: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Units of work per frame."""


class MatrixWork:
    """Owns the operands, so a unit allocates nothing."""

    def __init__(self) -> None:
        self.a = np.random.default_rng(0).standard_normal((MATRIX, MATRIX)) / MATRIX
        self.out = np.empty_like(self.a)

    def __call__(self, units: int) -> None:
        a, out = self.a, self.out
        for _ in range(units):
            np.matmul(a, a, out=out)


def python_units(units: int) -> int:
    total = 0
    for _ in range(units):
        for i in range(PY_ITERATIONS):
            total += i * i
    return total


def calibrate(kind: str, milliseconds: float) -> int:
    """Units of ``kind`` ("numpy" or "python") that take ``milliseconds`` of CPU on this
    machine: the cheapest of 20 batches of ~5 ms (thread CPU time), so that load from other
    processes while calibrating does not shrink the work."""
    work = MatrixWork() if kind == "numpy" else python_units
    work(3)  # warm up caches
    batch, began = 1, time.thread_time()
    while time.thread_time() - began < 0.005:
        work(batch)
        batch += 1
    best = float("inf")
    process_began, thread_began = time.process_time(), time.thread_time()
    for _ in range(20):
        began = time.thread_time()
        work(batch)
        best = min(best, (time.thread_time() - began) / batch)
    if time.process_time() - process_began > 1.3 * (time.thread_time() - thread_began):
        raise RuntimeError(
            "the numpy work ran on more than one core (BLAS threads): set OPENBLAS_NUM_THREADS=1 "
            "before numpy is imported"
        )
    return max(1, round(milliseconds / 1000 / best))


class NumpyWorkNode(Node[WorkParams]):
    """``units`` 256×256 matrix products per frame (the GIL is released), then the frame."""

    def __init__(self, params: WorkParams, context: Any) -> None:
        super().__init__(params, context)
        self._work = MatrixWork()

    def process(self, frame: Frame) -> Frame:
        self._work(self.params.units)
        return frame


class PythonWorkNode(Node[WorkParams]):
    """``units`` pure-Python loops per frame (the GIL is held throughout), then the frame."""

    def process(self, frame: Frame) -> Frame:
        python_units(self.params.units)
        return frame


class BlockParams(Params, kw_only=True):
    seconds: Annotated[float, msgspec.Meta(ge=0.0)] = 0.2


class BlockingSleepNode(Node[BlockParams]):
    """``time.sleep(seconds)`` per frame, then the frame: a call that blocks its thread
    without the GIL and without CPU, like blocking I/O. (The testing SleepNode sleeps with
    ``trio.sleep`` when it runs in-process; this one blocks wherever it runs.)"""

    def process(self, frame: Frame) -> Frame:
        time.sleep(self.params.seconds)
        return frame


class StampedFailNode(Node):
    """Audio in, the same audio out; an audio frame whose first sample is negative makes it
    raise, with the moment of failure (``perf_counter_ns``) in the message, so the time from
    failure to a replacement being ready can be measured wherever the node runs."""

    def process(self, frame: Frame) -> Frame:
        assert isinstance(frame, AudioFrame)
        if float(frame.samples.reshape(-1)[0]) < 0:
            raise RuntimeError(f"injected failure t_ns={now()}")
        return frame


class ProduceParams(Params, kw_only=True):
    nbytes: Annotated[int, msgspec.Meta(ge=1)] = 1 << 20
    loaned: bool = True


class ProduceNode(Node[ProduceParams]):
    """Per input, a new uint8 tensor of ``nbytes``, every byte written (a decoder or a model
    filling its output): built in ``NodeContext.output_array`` (``loaned``), or in a new array
    the worker then copies into shared memory."""

    def process(self, frame: Frame) -> Frame:
        n = self.params.nbytes
        out = self.context.output_array(n, np.uint8) if self.params.loaned else np.empty(n, np.uint8)
        out.fill(len(frame.metadata))
        return TensorFrame(data=out)


class FirstByteNode(Node):
    """An ordinary node (not ``zero_copy``: its worker copies each input out of shared memory)
    that reduces a big tensor to a small result, like a detector: its first byte."""

    def process(self, frame: Frame) -> Frame:
        assert isinstance(frame, TensorFrame)
        return TensorFrame(data=np.array(frame.data[:1]))


BENCH_NODES = (
    FirstByteNode,
    ProduceNode,
    StampedFailNode,
    HopStampNode,
    ArrivalNode,
    ArrivalCopyNode,
    SendStampNode,
    NumpyWorkNode,
    PythonWorkNode,
    BlockingSleepNode,
)


def register(registry: Any) -> None:
    for cls in BENCH_NODES:
        if cls.node_type not in registry:
            registry.register(cls, origin="benchmarks")
