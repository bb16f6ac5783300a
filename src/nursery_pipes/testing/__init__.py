"""Helpers for testing nodes and pipelines: hand drivers, fault-injection nodes, leak checks.

:func:`run_node` (async) and :func:`run_node_sync` drive one node without a
session, keeping the node contract (cleanup once initialize was called).
:func:`make_runtime` gives a test a runtime of its own, with its node classes.

The fault-injection nodes (sleep, raise, hang, exit, signal, ...) live in
:mod:`nursery_pipes.nodes.faults` and are re-exported here. They are never
registered by default; :func:`register_testing_nodes` or runtime.toml
``[nodes] testing = true`` enables them. pytest fixtures live in
:mod:`nursery_pipes.testing.pytest_plugin`.

For supervision trees of your own, :class:`SupervisorHarness` makes a child
fail on demand (raise, its worker process exits, SIGKILL), waits until the
supervisor has handled it, and :func:`assert_history` checks what it did.

:func:`espeak_ng` speaks text with an independent synthesiser (the system's espeak-ng),
for measuring speech recognition on voices we did not make.
"""

from ..nodes.faults import (
    TESTING_NODES,
    CpuBurnNode,
    ExitNode,
    ForwardKillNode,
    HangNode,
    KeepInputNode,
    LogNode,
    ProgressNode,
    RaiseNode,
    SignalNode,
    SleepNode,
    register_testing_nodes,
)
from ._drive import NodeRun, run_node, run_node_sync
from ._espeak import ESPEAK_MISSING, espeak_ng, word_errors
from ._factory import RuntimeFactory, make_runtime
from ._supervision import InjectedFault, SupervisorHarness, SupervisorStarter, assert_history

__all__ = [
    "ESPEAK_MISSING",
    "TESTING_NODES",
    "CpuBurnNode",
    "ExitNode",
    "ForwardKillNode",
    "HangNode",
    "InjectedFault",
    "KeepInputNode",
    "LogNode",
    "NodeRun",
    "ProgressNode",
    "RaiseNode",
    "RuntimeFactory",
    "SignalNode",
    "SleepNode",
    "SupervisorHarness",
    "SupervisorStarter",
    "assert_history",
    "espeak_ng",
    "make_runtime",
    "register_testing_nodes",
    "run_node",
    "run_node_sync",
    "word_errors",
]
