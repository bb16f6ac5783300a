"""Drive a node by hand, without a session: handy in unit tests of custom nodes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..frames import Frame
from ..nodes._base import Node, Params
from ..nodes._calls import iter_outputs, make_node, no_progress

__all__ = ["run_node_sync"]


def run_node_sync(
    cls: type[Node[Any]],
    frames: Iterable[Frame],
    params: Params | dict[str, Any] | None = None,
    *,
    flush: bool = True,
) -> list[Frame]:
    """Initialize a *synchronous* node, feed it ``frames``, flush, clean up; return all outputs.

    >>> import numpy as np
    >>> from nursery_pipes import AudioFrame
    >>> from nursery_pipes.nodes.builtin import AudioChunkerNode
    >>> audio = AudioFrame.from_array(np.arange(10, dtype=np.float32), sample_rate=8000)
    >>> [f.num_samples for f in run_node_sync(AudioChunkerNode, [audio], {"chunk_size": 4})]
    [4, 4, 2]
    """
    node = make_node(cls, params)
    outputs: list[Frame] = []
    result = node.initialize(no_progress)
    if result is not None:
        raise TypeError(f"{cls.__name__}.initialize is asynchronous; use the async harness")
    try:
        for frame in frames:
            outputs.extend(iter_outputs(node.process(frame), f"{cls.__name__}.process"))
        if flush:
            outputs.extend(iter_outputs(node.flush(), f"{cls.__name__}.flush"))
    finally:
        node.cleanup()
    return outputs
