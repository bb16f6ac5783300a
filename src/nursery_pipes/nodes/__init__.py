"""The node API, the registry of node types, and executor routing."""

from ._base import ALL_KINDS, Node, NodeContext, NoParams, Params, ProgressReporter
from ._registry import NodeInfo, NodeRegistry, default_registry, register_node
from ._routing import Assignment, RoutingRule, RoutingTable, route
from ._signals import CANCEL_TURN, FLUSH, INTERRUPT, Signal

__all__ = [
    "ALL_KINDS",
    "CANCEL_TURN",
    "FLUSH",
    "INTERRUPT",
    "Assignment",
    "NoParams",
    "Node",
    "NodeContext",
    "NodeInfo",
    "NodeRegistry",
    "Params",
    "ProgressReporter",
    "RoutingRule",
    "RoutingTable",
    "Signal",
    "default_registry",
    "register_node",
    "route",
]
