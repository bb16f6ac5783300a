"""Drive a node by hand, without a session: handy in unit tests of custom nodes.

The node contract holds here as in a session: ``cleanup()`` runs exactly once
whenever ``initialize()`` was called — after a failure in any hook too. The
node's own exceptions come out unchanged (a session would wrap them in a
``NodeError`` naming the phase); if ``cleanup()`` also fails, that is added to
the first error as a note rather than hiding it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import trio

from .._errors import FrameKindError
from ..frames import Frame
from ..nodes._base import Node, Params
from ..nodes._calls import aiter_outputs, iter_outputs, make_node, no_progress

__all__ = ["NodeRun", "run_node", "run_node_sync"]


@dataclass(frozen=True)
class NodeRun:
    """What :func:`run_node` returns."""

    outputs: list[Frame] = field(default_factory=list)
    """Every frame from ``process`` and ``flush``, in order."""
    progress: list[tuple[float, str]] = field(default_factory=list)
    """Each ``progress(fraction, message)`` report from ``initialize``, in order."""


async def run_node(
    cls: type[Node[Any]],
    frames: Iterable[Frame] | AsyncIterable[Frame] = (),
    params: Params | Mapping[str, Any] | None = None,
    *,
    flush: bool = True,
    cleanup_timeout: float = 2.0,
) -> NodeRun:
    """Initialize a node, feed it ``frames``, flush, clean up — as the in-process executor does.

    Any hook may be sync or async; ``process``/``flush`` may return nothing, a frame,
    frames, or be a (sync or async) generator: outputs are flattened by the executors'
    own helpers. ``cleanup()`` runs once ``initialize()`` was called, whatever happens
    after — also when the caller is cancelled: it runs shielded, for at most
    ``cleanup_timeout`` seconds (overrunning is a ``trio.TooSlowError``, unless the run
    already failed). No init timeout: bound the call yourself (``trio.fail_after``).

    >>> import trio
    >>> from nursery_pipes import Node, TextFrame
    >>> class Stutter(Node):
    ...     async def initialize(self, progress):
    ...         progress(0.5, "warming up")
    ...         await trio.sleep(0)
    ...     async def process(self, frame):        # an async generator: streams its outputs
    ...         yield frame
    ...         yield TextFrame(text=frame.text + "!")
    >>> run = trio.run(run_node, Stutter, [TextFrame(text="hi")])
    >>> [f.text for f in run.outputs]
    ['hi', 'hi!']
    >>> run.progress
    [(0.5, 'warming up')]
    """
    node = make_node(cls, dict(params) if isinstance(params, Mapping) else params)
    run = NodeRun()

    def report(fraction: float, message: str = "") -> None:
        run.progress.append((fraction, message))

    failed: BaseException | None = None
    try:
        initialized = node.initialize(report)
        if inspect.isawaitable(initialized):
            await initialized
        async with aclosing(_each(frames)) as inputs:
            async for frame in inputs:
                _check_accepts(node, frame)
                await _collect(node.process(frame), f"{cls.node_type}.process", run.outputs)
        if flush:
            await _collect(node.flush(), f"{cls.node_type}.flush", run.outputs)
    except BaseException as exc:  # Cancelled too: cleanup still runs, then it propagates
        failed = exc
        raise
    finally:
        await _cleanup(node, failed, cleanup_timeout)
    return run


async def _each(frames: Iterable[Frame] | AsyncIterable[Frame]) -> AsyncGenerator[Frame, None]:
    if isinstance(frames, AsyncIterable):
        async for frame in frames:
            yield frame
    else:
        for frame in frames:
            yield frame


async def _collect(result: object, where: str, outputs: list[Frame]) -> None:
    async with aclosing(aiter_outputs(result, where)) as frames:
        async for frame in frames:
            outputs.append(frame)


async def _cleanup(node: Node[Any], failed: BaseException | None, limit: float) -> None:
    # Shielded, as the in-process executor does it: a cancelled run still cleans up, within
    # a bound. A sync cleanup() cannot be interrupted; only an awaitable one gets the deadline.
    where = f"{node.context.node_type}.cleanup()"
    with trio.CancelScope(shield=True):
        try:
            result = node.cleanup()
            if inspect.isawaitable(result):
                with trio.move_on_after(limit) as scope:
                    await result
                if scope.cancelled_caught:
                    raise trio.TooSlowError(f"{where} did not finish within {limit:g} s")
        except Exception as exc:
            if failed is None:
                raise
            _cleanup_failed(failed, node, exc)


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
            _check_accepts(node, frame)
            outputs.extend(iter_outputs(node.process(frame), f"{cls.node_type}.process"))
        if flush:
            outputs.extend(iter_outputs(node.flush(), f"{cls.node_type}.flush"))
    except BaseException as exc:
        failed = exc
        raise
    finally:
        _cleanup_sync(node, failed)
    return outputs


def _check_accepts(node: Node[Any], frame: Frame) -> None:
    """Refuse a frame the node does not take, as a session refuses it from a client."""
    accepts = type(node).accepts
    if frame.kind not in accepts:
        accepted = ", ".join(sorted(k.label for k in accepts))
        raise FrameKindError(
            f"node {node.context.node_id!r} ({node.context.node_type}) accepts {accepted} frames, "
            f"not {frame.kind.label}"
        )


def _cleanup_failed(failed: BaseException, node: Node[Any], exc: BaseException) -> None:
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
        _cleanup_failed(failed, node, exc)
