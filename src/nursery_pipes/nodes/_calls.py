"""Calling node hooks the same way everywhere, whatever form the node author chose.

``process``/``flush`` may return ``None``, a frame, an iterable of frames, a
generator, an awaitable of any of those, or an async generator. These helpers
flatten all of that. The synchronous ones are used by worker processes (no
trio there); :func:`aiter_outputs` is used by the in-process executor.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncGenerator, Generator
from typing import Any

from .._errors import ManifestError, ManifestIssue
from ..frames import Frame
from ._base import Node, NodeContext, Params, ProgressReporter
from ._params import check_params

__all__ = ["aiter_outputs", "build_params", "check_frame", "iter_outputs", "make_node"]


def iter_outputs(result: Any, where: str) -> Generator[Frame, None, None]:
    """Flatten a synchronous hook result into frames (no awaitables allowed here)."""
    if result is None:
        return
    if isinstance(result, Frame):
        yield result
        return
    if inspect.isawaitable(result) or hasattr(result, "__aiter__"):
        if inspect.iscoroutine(result):
            result.close()
        raise TypeError(f"{where} is asynchronous; async nodes must run in-process (executor 'inprocess')")
    try:
        iterator = iter(result)
    except TypeError:
        raise TypeError(
            f"{where} returned {type(result).__name__}, expected a Frame, frames or None"
        ) from None
    for item in iterator:
        yield check_frame(item, where)


async def aiter_outputs(result: Any, where: str) -> AsyncGenerator[Frame, None]:
    """Flatten any hook result, awaiting and async-iterating as needed."""
    if inspect.isawaitable(result):
        result = await result
    if result is None:
        return
    if hasattr(result, "__aiter__"):
        try:
            async for item in result:
                yield check_frame(item, where)
        finally:
            if hasattr(result, "aclose"):
                await result.aclose()  # a node's async generator: run its finally blocks now
        return
    for frame in iter_outputs(result, where):
        yield frame


def check_frame(item: object, where: str) -> Frame:
    if not isinstance(item, Frame):
        raise TypeError(f"{where} produced {type(item).__name__}, expected a Frame")
    return item


def build_params(params_type: type[Params], raw: dict[str, Any] | None, path: str = "params") -> Params:
    """Validate raw params (from a manifest) into the node's params struct; all problems at once."""
    value, issues = check_params(params_type, raw or {}, path)
    if issues or value is None:
        raise ManifestError(issues or [ManifestIssue(path, "invalid params")])
    return value


def make_node(
    cls: type[Node[Any]],
    params: Params | dict[str, Any] | None = None,
    *,
    node_id: str | None = None,
    session_id: str = "local",
    executor: str = "inprocess",
    in_worker_process: bool = False,
) -> Node[Any]:
    """Instantiate a node outside a session (tests, tools); ``executor`` and
    ``in_worker_process`` say where it believes it runs (see :class:`NodeContext`)."""
    if not isinstance(params, Params):
        params = build_params(cls.Params, params)
    nid = node_id or cls.node_type
    context = NodeContext(
        node_id=nid,
        node_type=cls.node_type,
        session_id=session_id,
        executor=executor,
        logger=logging.getLogger(f"nursery_pipes.node.{nid}"),
        in_worker_process=in_worker_process,
    )
    return cls(params, context)


def no_progress(fraction: float, message: str = "") -> None:
    """A progress reporter that discards reports."""


_: ProgressReporter = no_progress
