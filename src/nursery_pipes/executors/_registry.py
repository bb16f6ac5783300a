"""Executors by name: the built-ins and those installed packages register.

A third-party package registers an executor class in the entry-point group
``nursery_pipes.executors``::

    [project.entry-points."nursery_pipes.executors"]
    threadpool = "my_package:ThreadPoolExecutor"

Its name is then valid wherever an executor is named — a manifest's
``metadata.multiprocess.executor_overrides``, runtime.toml ``[routing]``, a
node class's ``executor`` — exactly like a built-in one. A runtime makes one
instance of each executor from its config (:func:`create_executors`).
"""

from __future__ import annotations

import re
from importlib import metadata

from .._config import RuntimeConfig
from .._errors import ConfigError
from ._abc import Executor, Placement

__all__ = ["ENTRY_POINT_GROUP", "available_executors", "create_executors"]

ENTRY_POINT_GROUP = "nursery_pipes.executors"
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def _builtins() -> dict[str, type[Executor]]:
    from ._inprocess import InProcessExecutor
    from ._multiprocess import MultiprocessExecutor
    from ._thread import ThreadExecutor

    return {cls.name: cls for cls in (InProcessExecutor, ThreadExecutor, MultiprocessExecutor)}


def available_executors() -> dict[str, type[Executor]]:
    """Every executor class by name: the built-ins, then the installed entry points.

    A plugin that cannot be loaded, is not an Executor, or takes a name already taken is a
    ConfigError naming its entry point: better to refuse to start than to run without it.
    """
    executors = _builtins()
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {entry.name!r} = {entry.value!r} (group {ENTRY_POINT_GROUP})"
        try:
            cls = entry.load()
        except Exception as exc:
            raise ConfigError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}") from exc
        _check(cls, entry.name, where, executors)
        executors[entry.name] = cls
    return executors


def _check(cls: object, name: str, where: str, taken: dict[str, type[Executor]]) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise ConfigError(f"{where} is not an Executor subclass")
    if not _NAME.match(name):
        raise ConfigError(f"{where}: executor names are lower-case words ({_NAME.pattern})")
    if getattr(cls, "name", None) != name:
        raise ConfigError(
            f"{where}: the class's name attribute is {getattr(cls, 'name', None)!r}, not {name!r}"
        )
    if not isinstance(getattr(cls, "placement", None), Placement):
        raise ConfigError(f"{where}: the class has no placement (Placement.SUPERVISOR or SHARED_MEMORY)")
    if name in taken:
        raise ConfigError(
            f"{where}: the name {name!r} is taken by {taken[name].__module__}.{taken[name].__qualname__}"
        )


def create_executors(config: RuntimeConfig) -> dict[str, Executor]:
    """One instance of every available executor, for one runtime."""
    return {name: cls(config) for name, cls in available_executors().items()}
