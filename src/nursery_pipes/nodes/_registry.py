"""Which node types a runtime knows, and where they came from.

Node types are only ever what the *server* registered — built-ins, the
``nursery_pipes.nodes`` entry-point group, modules named in runtime.toml, or
classes registered in code. A manifest names a type; it can never make the
runtime import a module.

Each runtime has its own registry (:func:`build_registry`), so what one runtime
— or one test — registers is never seen by another. The exception is the
process-wide :func:`default_registry` of the module-level API, which follows
:func:`register_node` declarations.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

from .._errors import RegistryError
from ._base import Node, Params, describe_params

__all__ = ["NodeInfo", "NodeRegistry", "build_registry", "default_registry", "register_node"]

_EXECUTOR = re.compile(r"^[a-z][a-z0-9_-]*$")

ENTRY_POINT_GROUP = "nursery_pipes.nodes"

N = TypeVar("N", bound=type[Node[Any]])


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A registered node type, as shown by ``nursery-pipes nodes``."""

    node_type: str
    import_ref: str
    executor: str | None
    accepts: tuple[str, ...]
    produces: tuple[str, ...]
    params: tuple[dict[str, Any], ...]
    description: str
    origin: str


class NodeRegistry:
    """A mapping of node type names to node classes.

    >>> from nursery_pipes import Node, NodeRegistry
    >>> class Shout(Node):
    ...     def process(self, frame):
    ...         return frame
    >>> registry = NodeRegistry()
    >>> registry.register(Shout)
    <class 'nursery_pipes.nodes._registry.Shout'>
    >>> "Shout" in registry
    True
    """

    def __init__(self) -> None:
        self._nodes: dict[str, type[Node[Any]]] = {}
        self._origins: dict[str, str] = {}

    def register(self, cls: N, *, name: str | None = None, origin: str = "code", replace: bool = False) -> N:
        """Add a node class (also usable as a decorator through :func:`register_node`)."""
        _check_node_class(cls)
        key = name or cls.node_type
        existing = self._nodes.get(key)
        if existing is not None and existing is not cls and not replace:
            raise RegistryError(
                f"node type {key!r} is already registered by {_ref(existing)} "
                f"(from {self._origins[key]}); cannot register {_ref(cls)} under the same name"
            )
        self._nodes[key] = cls
        self._origins[key] = origin
        return cls

    def get(self, node_type: str) -> type[Node[Any]] | None:
        return self._nodes.get(node_type)

    def __getitem__(self, node_type: str) -> type[Node[Any]]:
        try:
            return self._nodes[node_type]
        except KeyError:
            raise RegistryError(self.unknown_message(node_type)) from None

    def __contains__(self, node_type: object) -> bool:
        return node_type in self._nodes

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._nodes))

    def __len__(self) -> int:
        return len(self._nodes)

    def names(self) -> list[str]:
        return sorted(self._nodes)

    def suggest(self, node_type: str) -> str | None:
        """The closest registered name, for "did you mean" messages."""
        matches = difflib.get_close_matches(node_type, list(self._nodes), n=1, cutoff=0.6)
        if not matches:
            lowered = {name.lower(): name for name in self._nodes}
            hit = lowered.get(node_type.lower())
            return hit
        return matches[0]

    def unknown_message(self, node_type: str) -> str:
        hint = self.suggest(node_type)
        if hint:
            return f"unknown node_type {node_type!r} — did you mean {hint!r}?"
        return f"unknown node_type {node_type!r} (see `nursery-pipes nodes` for the registered types)"

    def copy(self) -> NodeRegistry:
        clone = NodeRegistry()
        clone._nodes = dict(self._nodes)
        clone._origins = dict(self._origins)
        return clone

    def update(self, other: NodeRegistry) -> None:
        for name in other._nodes:
            self.register(other._nodes[name], name=name, origin=other._origins[name])

    def info(self, node_type: str) -> NodeInfo:
        cls = self[node_type]
        return NodeInfo(
            node_type=node_type,
            import_ref=_ref(cls),
            executor=cls.executor,
            accepts=tuple(sorted(k.label for k in cls.accepts)),
            produces=tuple(sorted(k.label for k in cls.produces)),
            params=tuple(describe_params(cls.Params)),
            description=cls.description(),
            origin=self._origins[node_type],
        )

    def load_module(self, module_name: str) -> list[str]:
        """Import a module named in configuration and register every node class it defines."""
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise RegistryError(f"cannot import node module {module_name!r}: {exc}") from exc
        found = [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, Node)
            and obj.__module__ == module.__name__
            and not inspect.isabstract(obj)
            and not obj.__dict__.get("abstract", False)
        ]
        if not found:
            raise RegistryError(f"node module {module_name!r} defines no Node subclasses")
        for cls in found:
            self.register(cls, origin=f"module {module_name}")
        return [cls.node_type for cls in found]

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Register what installed distributions publish in the ``nursery_pipes.nodes`` group.

        An entry point may name a Node subclass or a module (all its node classes).
        """
        added: list[str] = []
        for ep in metadata.entry_points(group=group):
            try:
                target = ep.load()
            except Exception as exc:
                dist = ep.dist.name if ep.dist else "?"
                raise RegistryError(f"entry point {ep.name!r} of {dist} failed to load: {exc}") from exc
            origin = f"entry point {ep.name}"
            if inspect.ismodule(target):
                added.extend(self.load_module(target.__name__))
            elif inspect.isclass(target) and issubclass(target, Node):
                added.append(self.register(target, origin=origin).node_type)
            else:
                raise RegistryError(f"entry point {ep.name!r} ({ep.value}) is not a Node subclass or module")
        return added


def _ref(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def import_ref(cls: type[Node[Any]]) -> str:
    """``module:QualName`` — how a worker process finds the class again."""
    return _ref(cls)


def load_ref(ref: str) -> type[Node[Any]]:
    module_name, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (inspect.isclass(obj) and issubclass(obj, Node)):
        raise RegistryError(f"{ref} is not a Node subclass")
    return obj


def _check_node_class(cls: object) -> None:
    if not (inspect.isclass(cls) and issubclass(cls, Node)):
        raise RegistryError(f"{cls!r} is not a subclass of nursery_pipes.Node")
    if not isinstance(cls.node_type, str) or not cls.node_type:
        raise RegistryError(f"{_ref(cls)}.node_type must be a non-empty string")
    if not (inspect.isclass(cls.Params) and issubclass(cls.Params, Params)):
        raise RegistryError(f"{_ref(cls)}.Params must be a subclass of nursery_pipes.Params")
    if cls.executor is not None and not (isinstance(cls.executor, str) and _EXECUTOR.match(cls.executor)):
        raise RegistryError(
            f"{_ref(cls)}.executor is {cls.executor!r}; expected an executor name (inprocess, thread, "
            "multiprocess, or one a package registers) or None"
        )
    if cls.process is Node.process:
        raise RegistryError(f"{_ref(cls)} does not implement process()")


DECLARED_ORIGIN = "@register_node"

# Classes declared with @register_node, by node type. Declaring a type again replaces the earlier
# class (a module reloaded, a notebook cell run twice): only the latest declaration is kept.
_DECLARED: dict[str, type[Node[Any]]] = {}
# The default runtime's registry (see default_registry), built on first use. Invariant: once
# built, it holds every class in _DECLARED — register_node adds new declarations to it.
_DEFAULT: NodeRegistry | None = None


def register_node(cls: N) -> N:
    """Class decorator: declare a node type for every runtime this process creates from now on.

    Declared classes are registered by each :class:`~nursery_pipes.Runtime` built
    afterwards (with or without a config), and — whenever the decorator runs — by
    the default runtime that the module-level ``run_pipeline`` / ``open_session``
    use (see :func:`default_registry`). A runtime that already exists does not
    change: its node types are fixed when it is built (add to one runtime with
    ``runtime.registry.register(cls)``).

    A name already taken by a built-in (or, once the default registry exists, an
    entry point) is an error here; declaring the same name again replaces the
    earlier declaration.

    >>> from nursery_pipes import Node, register_node
    >>> @register_node
    ... class Doubler(Node):
    ...     def process(self, frame):
    ...         return [frame, frame]
    """
    _check_node_class(cls)
    name = cls.node_type
    previous = _DECLARED.get(name)
    # Check the name before recording the class, so a clash is reported at the decorator and does
    # not make every later runtime fail. Without a default registry yet, check the built-ins.
    target = _DEFAULT if _DEFAULT is not None else builtin_registry()
    redeclared = previous is not None and target.get(name) is previous
    target.register(cls, origin=DECLARED_ORIGIN, replace=redeclared)
    _DECLARED[name] = cls
    return cls


def declared_nodes() -> tuple[type[Node[Any]], ...]:
    """Classes declared with :func:`register_node` so far (the latest per node type)."""
    return tuple(_DECLARED.values())


def default_registry() -> NodeRegistry:
    """The registry of the default runtime (the module-level ``run_pipeline`` / ``open_session``).

    Built-ins, installed entry points and every class declared with
    :func:`register_node` — also those declared after it was built: the module-level
    API has no runtime object a user could rebuild, so it follows the process's
    declarations. :meth:`Manifest.parse <nursery_pipes.Manifest.parse>` validates
    against it when given no registry. Each :class:`~nursery_pipes.Runtime` builds
    its own registry instead (:func:`build_registry`).
    """
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = build_registry()
    return _DEFAULT


def build_registry(
    *, entry_points: bool = True, modules: Iterable[str] = (), testing: bool = False
) -> NodeRegistry:
    """A new registry: built-ins, then entry points, configured ``modules``, the fault-injection
    nodes when ``testing``, then classes declared with :func:`register_node`.

    A name registered twice by different classes is a :class:`RegistryError` naming both.
    """
    registry = builtin_registry()
    if entry_points:
        registry.load_entry_points()
    for module in modules:
        registry.load_module(module)
    if testing:
        from .faults import register_testing_nodes

        register_testing_nodes(registry)
    for cls in declared_nodes():
        if registry.get(cls.node_type) is not cls:  # a configured module may have declared it
            registry.register(cls, origin=DECLARED_ORIGIN)
    return registry


def builtin_registry() -> NodeRegistry:
    from .builtin import ALIASES, BUILTIN_NODES

    registry = NodeRegistry()
    for cls in BUILTIN_NODES:
        registry.register(cls, origin="built-in")
    for alias, cls in ALIASES.items():
        registry.register(cls, name=alias, origin="built-in (remotemedia name)")
    return registry
