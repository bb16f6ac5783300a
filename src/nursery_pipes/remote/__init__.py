"""Nodes on other servers: the ``remote`` executor (a node whose manifest entry has ``host``).

Registered through the ``nursery_pipes.executors`` entry point like any third-party
executor, so the core never imports gRPC code; see :mod:`._executor` for what crosses the
connection and ``[remote]`` in runtime.toml for the allow-list, TLS and token.
"""

from ._executor import RemoteExecutor
from ._sequence import SequenceMap

__all__ = ["RemoteExecutor", "SequenceMap"]
