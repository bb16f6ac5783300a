"""A runtime for a test: its own registry with the test's node classes, settings as keywords."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import msgspec

from .._config import RuntimeConfig
from .._errors import ConfigError
from ..nodes._base import Node
from ..runtime import Runtime

__all__ = ["RuntimeFactory", "make_runtime"]

TEST_ORIGIN = "test"


class RuntimeFactory(Protocol):
    """The type of :func:`make_runtime` (and of the ``make_runtime`` fixture), for annotations."""

    def __call__(self, *node_classes: type[Node[Any]], **sections: Mapping[str, Any]) -> Runtime: ...


def make_runtime(*node_classes: type[Node[Any]], **sections: Mapping[str, Any]) -> Runtime:
    """A new :class:`~nursery_pipes.Runtime` with ``node_classes`` registered in its own registry.

    ``sections`` are runtime.toml sections as mappings (``multiprocess={"grace_period_secs":
    0.5}``); the fault-injection nodes are registered unless ``nodes={"testing": False}``.
    Nothing registered here is seen by any other runtime.

    A class defined inside a test function runs in-process only (give it ``executor =
    "inprocess"``: routing sends undeclared ``*Node`` names to worker processes); one that
    runs in a worker must be importable, i.e. defined at the top level of a module.

    >>> import trio
    >>> from nursery_pipes import Node, TextFrame
    >>> class Exclaim(Node):
    ...     executor = "inprocess"
    ...     def process(self, frame):
    ...         return TextFrame(text=frame.text + "!")
    >>> runtime = make_runtime(Exclaim, limits={"max_sessions": 4})
    >>> manifest = {"version": "v1", "metadata": {"name": "t"}, "connections": [],
    ...             "nodes": [{"id": "x", "node_type": "Exclaim", "params": {}}]}
    >>> trio.run(runtime.run_pipeline, manifest, {"x": TextFrame(text="hi")}).outputs["x"][0].text
    'hi!'
    >>> "RaiseNode" in runtime.registry, runtime.config.limits.max_sessions
    (True, 4)
    """
    runtime = Runtime(_config(sections))
    for cls in node_classes:
        runtime.registry.register(cls, origin=TEST_ORIGIN)
    return runtime


def _config(sections: Mapping[str, Mapping[str, Any]]) -> RuntimeConfig:
    raw: dict[str, Any] = {name: dict(values) for name, values in sections.items()}
    raw["nodes"] = {"testing": True, **raw.get("nodes", {})}
    try:
        return msgspec.convert(raw, RuntimeConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"make_runtime: {exc}") from None
