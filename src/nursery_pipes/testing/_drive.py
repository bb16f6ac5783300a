"""Drive a node by hand, without a session: handy in unit tests of custom nodes.

The node contract holds here as in a session: ``cleanup()`` runs exactly once
whenever ``initialize()`` was called — after a failure in any hook too. The
node's own exceptions come out unchanged (a session would wrap them in a
``NodeError`` naming the phase); if ``cleanup()`` also fails, that is added to
the first error as a note rather than hiding it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from .._errors import FrameKindError
from ..frames import Frame
from ..nodes._base import Node, Params
from ..nodes._calls import iter_outputs, make_node, no_progress

__all__ = ["run_node_sync"]


def run_node_sync(
    cls: type[Node[Any]],
    frames: Iterable[Frame],
    params: Params | Mapping[str, Any] | None = None,
    *,
    flush: bool = True,
) -> list[Frame]:
    """Initialize a *synchronous* node, feed it ``frames``, flush, clean up; return all outputs.

    ``cleanup()`` runs once ``initialize()`` was called, whatever happens after. For
    nodes with async hooks, and to see progress reports, use :func:`run_node`.

    >>> import numpy as np
    >>> from nursery_pipes import AudioFrame
    >>> from nursery_pipes.nodes.builtin import AudioChunkerNode
    >>> audio = AudioFrame.from_array(np.arange(10, dtype=np.float32), sample_rate=8000)
    >>> [f.num_samples for f in run_node_sync(AudioChunkerNode, [audio], {"chunk_size": 4})]
    [4, 4, 2]
    """
    node = make_node(cls, dict(params) if isinstance(params, Mapping) else params)
    outputs: list[Frame] = []
    failed: BaseException | None = None
    try:
        _synchronous(node.initialize(no_progress), f"{cls.node_type}.initialize")
        for frame in frames:
            check_accepts(node, frame)
            outputs.extend(iter_outputs(node.process(frame), f"{cls.node_type}.process"))
        if flush:
            outputs.extend(iter_outputs(node.flush(), f"{cls.node_type}.flush"))
    except BaseException as exc:
        failed = exc
        raise
    finally:
        _cleanup_sync(node, failed)
    return outputs


def check_accepts(node: Node[Any], frame: Frame) -> None:
    """Refuse a frame the node does not take, as a session refuses it from a client."""
    accepts = type(node).accepts
    if frame.kind not in accepts:
        accepted = ", ".join(sorted(k.label for k in accepts))
        raise FrameKindError(
            f"node {node.context.node_id!r} ({node.context.node_type}) accepts {accepted} frames, "
            f"not {frame.kind.label}"
        )


def cleanup_failed(failed: BaseException, node: Node[Any], exc: BaseException) -> None:
    """Keep the first error; say on it that cleanup() failed too."""
    failed.add_note(f"{node.context.node_type}.cleanup() also failed: {type(exc).__name__}: {exc}")


def _synchronous(result: object, where: str) -> None:
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited, on purpose: no "never awaited" warning
        raise TypeError(f"{where} is asynchronous; use `await nursery_pipes.testing.run_node(...)`")


def _cleanup_sync(node: Node[Any], failed: BaseException | None) -> None:
    try:
        _synchronous(node.cleanup(), f"{node.context.node_type}.cleanup")
    except Exception as exc:
        if failed is None:
            raise
        cleanup_failed(failed, node, exc)
