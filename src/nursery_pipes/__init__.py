"""nursery_pipes: run media/ML pipeline manifests under trio supervision.

Light nodes run as trio tasks; heavy Python nodes each get a worker process,
with frames handed over POSIX shared memory. See README.md and docs/design.md.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ._config import RuntimeConfig, load_config
from ._errors import (
    ConfigError,
    FrameError,
    FrameKindError,
    InputError,
    ManifestError,
    ManifestIssue,
    NodeCloseTimeout,
    NodeCrashed,
    NodeError,
    NodeInitTimeout,
    NurseryPipesError,
    RegistryError,
    ResourceLimitError,
    SessionClosedError,
    SessionError,
)
from ._logging import ContextFilter as LogContextFilter
from ._version import __version__
from .frames import (
    AudioFormat,
    AudioFrame,
    BinaryFrame,
    Frame,
    FrameKind,
    JsonFrame,
    PixelFormat,
    TensorDtype,
    TensorFrame,
    TextFrame,
    VideoFrame,
)
from .manifest import Graph, Manifest
from .nodes import (
    Assignment,
    Node,
    NodeContext,
    NodeRegistry,
    NoParams,
    Params,
    ProgressReporter,
    register_node,
)

if TYPE_CHECKING:
    from ._api import default_runtime, open_session, run_pipeline, run_pipeline_sync
    from .runtime import (
        ChildFailed,
        ChildSpec,
        FailureRecord,
        NodeProgress,
        Output,
        PipelineResult,
        RestartType,
        Runtime,
        Session,
        SessionMetrics,
        SessionState,
        StateChanged,
        Strategy,
        SupervisionPolicy,
        Supervisor,
        WorkerCrashed,
    )

# The runtime (trio) is imported on first use, so that worker processes, which
# import nursery_pipes.frames / .nodes / .worker, never load trio or grpclib.
_LAZY = {
    "default_runtime": "._api",
    "open_session": "._api",
    "run_pipeline": "._api",
    "run_pipeline_sync": "._api",
    "ChildFailed": ".runtime",
    "ChildSpec": ".runtime",
    "FailureRecord": ".runtime",
    "NodeProgress": ".runtime",
    "Output": ".runtime",
    "PipelineResult": ".runtime",
    "RestartType": ".runtime",
    "Runtime": ".runtime",
    "Session": ".runtime",
    "SessionMetrics": ".runtime",
    "SessionState": ".runtime",
    "StateChanged": ".runtime",
    "Strategy": ".runtime",
    "SupervisionPolicy": ".runtime",
    "Supervisor": ".runtime",
    "WorkerCrashed": ".runtime",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nursery_pipes' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Assignment",
    "AudioFormat",
    "AudioFrame",
    "BinaryFrame",
    "ChildFailed",
    "ChildSpec",
    "ConfigError",
    "FailureRecord",
    "Frame",
    "FrameError",
    "FrameKind",
    "FrameKindError",
    "Graph",
    "InputError",
    "JsonFrame",
    "LogContextFilter",
    "Manifest",
    "ManifestError",
    "ManifestIssue",
    "NoParams",
    "Node",
    "NodeCloseTimeout",
    "NodeContext",
    "NodeCrashed",
    "NodeError",
    "NodeInitTimeout",
    "NodeProgress",
    "NodeRegistry",
    "NurseryPipesError",
    "Output",
    "Params",
    "PipelineResult",
    "PixelFormat",
    "ProgressReporter",
    "RegistryError",
    "ResourceLimitError",
    "RestartType",
    "Runtime",
    "RuntimeConfig",
    "Session",
    "SessionClosedError",
    "SessionError",
    "SessionMetrics",
    "SessionState",
    "StateChanged",
    "Strategy",
    "SupervisionPolicy",
    "Supervisor",
    "TensorDtype",
    "TensorFrame",
    "TextFrame",
    "VideoFrame",
    "WorkerCrashed",
    "__version__",
    "default_runtime",
    "load_config",
    "open_session",
    "register_node",
    "run_pipeline",
    "run_pipeline_sync",
]
