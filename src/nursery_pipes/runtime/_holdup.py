"""Which nodes hold a closing session up. Sans-I/O.

After ``close()`` a session ends once every node has processed what is queued
for it and flushed. When it has not ended ``close_timeout_secs`` later, the
session fails naming the nodes responsible. A node still running is in one of
three situations, told apart by what the supervisor sees of its edges (a
:class:`Flow`):

- **waiting for input** — nothing is queued for it and some input has not
  ended: its upstream is still at work. Not its fault.
- **waiting for output** — an output edge is full: its consumer is behind.
  Not its fault.
- **at work** — anything else: frames are queued for it, or every input has
  ended and it has not finished flushing. It holds the session up.

The snapshot of a worker's rings races with the worker, so when no running
node looks "at work", the graph decides: running nodes none of whose upstream
nodes still run. The answer always names at least one running node.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..executors import Flow
from ._plan import SessionPlan

__all__ = ["Flow", "holdups"]


def holdups(plan: SessionPlan, flows: Mapping[str, Flow]) -> tuple[list[str], list[str]]:
    """``flows`` has one entry per node still running. Returns (the nodes holding the session
    up, the nodes merely waiting), each in topological order."""
    running = [n for n in plan.order if n in flows]
    culprits = [n for n in running if not flows[n].waiting]
    if not culprits:
        alive = set(running)
        culprits = [n for n in running if not alive.intersection(plan.nodes[n].inputs)] or running
    return culprits, [n for n in running if n not in culprits]
