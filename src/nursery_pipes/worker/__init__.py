"""The worker side of multiprocess nodes and of worker-process children.

Light on purpose: imports no trio, grpclib or server code.
"""

from ._child import retire_child, run_child
from ._main import WorkerJob, WorkerStage, retire_after_node, run_node, warm_up
from ._sampling import SAMPLE_ALL, sampled, threshold_for

__all__ = [
    "SAMPLE_ALL",
    "WorkerJob",
    "WorkerStage",
    "retire_after_node",
    "retire_child",
    "run_child",
    "run_node",
    "sampled",
    "threshold_for",
    "warm_up",
]
