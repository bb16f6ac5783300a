"""nursery_pipes_threadpool: the ``threadpool`` executor for nursery_pipes.

Synchronous nodes run in the supervisor process with their hook calls on one
bounded pool of threads shared by every session (see :mod:`._executor`). The
package registers the executor through its entry point; importing it is never
needed to use it::

    [project.entry-points."nursery_pipes.executors"]
    threadpool = "nursery_pipes_threadpool:ThreadPoolExecutor"
"""

from ._executor import (
    SIZE_VARIABLE,
    PoolStatistics,
    ThreadPoolExecutor,
    default_pool_size,
    pool_size_from_env,
)

__all__ = ["SIZE_VARIABLE", "PoolStatistics", "ThreadPoolExecutor", "default_pool_size", "pool_size_from_env"]
