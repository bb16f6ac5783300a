"""Helpers for testing nodes and pipelines: a hand driver, fault-injection nodes, leak checks.

The fault-injection nodes (sleep, raise, hang, exit, signal, ...) are never
registered by default; :func:`register_testing_nodes` or runtime.toml
``[nodes] testing = true`` enables them. pytest fixtures live in
:mod:`nursery_pipes.testing.pytest_plugin`.
"""

from ._drive import run_node_sync
from ._nodes import TESTING_NODES, register_testing_nodes

__all__ = ["TESTING_NODES", "register_testing_nodes", "run_node_sync"]
