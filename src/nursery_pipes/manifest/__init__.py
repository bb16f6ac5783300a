"""Pipeline manifests: parsing, validation (all problems at once, with JSON paths) and the graph."""

from ._graph import CycleError, Graph
from ._manifest import Manifest
from ._model import Capabilities, ConnectionSpec, MultiprocessConfig, NodeSpec, SupervisionConfig
from ._nesting import MAX_NESTING
from ._validate import load_schema

__all__ = [
    "MAX_NESTING",
    "Capabilities",
    "ConnectionSpec",
    "CycleError",
    "Graph",
    "Manifest",
    "MultiprocessConfig",
    "NodeSpec",
    "SupervisionConfig",
    "load_schema",
]
