"""Session metrics → remotemedia.v1 ``ExecutionMetrics``. Sans-I/O.

Here, not in :mod:`nursery_pipes.wire`, because it reads the runtime's
:class:`~nursery_pipes.runtime.SessionMetrics`: ``wire`` is shared with the
asyncio client and must not import the runtime (and with it trio). The server
is the only one that reports metrics.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ..runtime import SessionMetrics
from ..wire._messages import BETTERPROTO, Messages

__all__ = ["metrics_to_proto", "rss_bytes"]


def metrics_to_proto(
    metrics: SessionMetrics, ns: Messages = BETTERPROTO, *, serialization_ms: float = 0.0
) -> Any:
    nodes = {
        nid: ns.NodeMetrics(
            execution_time_ms=m.processing_s * 1000,
            items_processed=m.frames_in,
            custom_metrics=json.dumps(
                {
                    "executor": m.executor,
                    "frames_out": m.frames_out,
                    "bytes_in": m.bytes_in,
                    "bytes_out": m.bytes_out,
                    "init_ms": round(m.init_s * 1000, 3),
                    "pid": m.pid,
                    "state": m.state.value,
                    "restarts": m.restarts,
                }
            ),
        )
        for nid, m in metrics.nodes.items()
    }
    return ns.ExecutionMetrics(
        wall_time_ms=metrics.wall_time_s * 1000,
        cpu_time_ms=metrics.cpu_time_s * 1000,
        memory_used_bytes=rss_bytes(),
        node_metrics=nodes,
        serialization_time_ms=serialization_ms,
        data_type_breakdown=dict(metrics.data_type_breakdown),
    )


_rss_cache = [0.0, 0]  # (when, bytes): metrics ask often; reading /proc costs ~9 µs


def rss_bytes() -> int:
    """This process's resident set size in bytes (0 where /proc is missing); cached for 0.5 s."""
    now = time.monotonic()
    if now - _rss_cache[0] < 0.5:
        return int(_rss_cache[1])
    try:
        with open("/proc/self/statm", "rb") as f:
            value = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        value = 0
    _rss_cache[0], _rss_cache[1] = now, value
    return value
