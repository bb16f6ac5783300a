"""The library entry points that use the process-wide default runtime."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .nodes._registry import default_registry
from .runtime._runtime import ManifestSource, PipelineInputs, PipelineResult, Runtime
from .runtime._session import Session

__all__ = ["default_runtime", "open_session", "run_pipeline", "run_pipeline_sync"]


@functools.cache
def default_runtime() -> Runtime:
    """The runtime used by the module-level functions: built-in defaults, and the process-wide
    :func:`~nursery_pipes.nodes.default_registry`, which sees every ``@register_node`` class —
    also one declared after this runtime was made (a ``Runtime()`` of your own does not)."""
    return Runtime(registry=default_registry())


@asynccontextmanager
async def open_session(
    manifest: ManifestSource, *, runtime: Runtime | None = None, wait_ready: bool = True
) -> AsyncIterator[Session]:
    """Start a streaming session; yields it once all nodes are ready (see :meth:`Runtime.open_session`).

    >>> import trio
    >>> from nursery_pipes import TextFrame, open_session
    >>> manifest = {"version": "v1", "metadata": {"name": "shout"},
    ...             "nodes": [{"id": "up", "node_type": "TextTransformNode",
    ...                        "params": {"operation": "upper"}}], "connections": []}
    >>> async def main():
    ...     async with open_session(manifest) as session:
    ...         await session.send("up", TextFrame(text="hello"))
    ...         await session.close()                    # end of input: flush and drain
    ...         async for out in session.outputs():
    ...             print(out.node_id, out.seq, out.frame.text)
    >>> trio.run(main)
    up 1 HELLO
    """
    async with (runtime or default_runtime()).open_session(manifest, wait_ready=wait_ready) as session:
        yield session


async def run_pipeline(
    manifest: ManifestSource, inputs: PipelineInputs, *, runtime: Runtime | None = None
) -> PipelineResult:
    """Run a manifest on ``inputs`` (frames keyed by source node id) and collect the sink outputs.

    >>> import numpy as np, trio
    >>> from nursery_pipes import AudioFrame, run_pipeline
    >>> manifest = {"version": "v1", "metadata": {"name": "chunks"},
    ...             "nodes": [{"id": "chunk", "node_type": "AudioChunkerNode", "params": {"chunk_size": 160}}],
    ...             "connections": []}
    >>> audio = AudioFrame.from_array(np.zeros(400, dtype=np.float32), sample_rate=16000)
    >>> result = trio.run(run_pipeline, manifest, {"chunk": audio})
    >>> [f.num_samples for f in result.outputs["chunk"]]
    [160, 160, 80]
    """
    return await (runtime or default_runtime()).run_pipeline(manifest, inputs)


def run_pipeline_sync(
    manifest: ManifestSource, inputs: PipelineInputs, *, runtime: Runtime | None = None
) -> PipelineResult:
    """:func:`run_pipeline` for synchronous code (runs its own trio loop)."""
    return trio.run(functools.partial(run_pipeline, manifest, inputs, runtime=runtime))
