"""Executors that run nodes outside the supervisor's trio loop: worker processes over shared memory."""

from ._multiprocess import MultiprocessExecutor
from ._pool import WorkerPool
from ._transport import RingGeometry, ShmPort, ShmTransport, WorkerWiring

__all__ = ["MultiprocessExecutor", "RingGeometry", "ShmPort", "ShmTransport", "WorkerPool", "WorkerWiring"]
