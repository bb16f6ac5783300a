"""The public :class:`Manifest`: a validated pipeline description."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from .._errors import ManifestError, ManifestIssue
from ..nodes._base import Params
from ..nodes._params import check_params
from ..nodes._registry import NodeRegistry, default_registry
from ._graph import Graph
from ._model import (
    METADATA_KEYS,
    ConnectionSpec,
    ManifestDoc,
    MultiprocessConfig,
    NodeSpec,
    RestartName,
    SupervisionConfig,
)
from ._nesting import document_text_issue
from ._validate import json_error_issue, validate_document

__all__ = ["Manifest"]


class Manifest:
    """A validated v1 pipeline manifest.

    Building one checks every rule and raises :class:`ManifestError` listing
    *all* problems, each with its JSON path:

    >>> from nursery_pipes import Manifest, ManifestError
    >>> m = Manifest.from_dict({
    ...     "version": "v1", "metadata": {"name": "demo"},
    ...     "nodes": [{"id": "in", "node_type": "PassThrough"},
    ...               {"id": "up", "node_type": "TextTransformNode", "params": {"operation": "upper"}}],
    ...     "connections": [{"from": "in", "to": "up"}]})
    >>> m.graph.sources, m.graph.sinks
    (('in',), ('up',))
    >>> try:
    ...     Manifest.from_json('{"version": "v2", "metadata": {"name": "x"}, "nodes": [], "connections": []}')
    ... except ManifestError as exc:
    ...     for issue in exc.issues:
    ...         print(issue)
    version: must be "v1", got "v2"
    nodes: must contain at least one node
    """

    __slots__ = ("_doc", "_extra", "_graph", "_params", "_registry", "source")

    def __init__(
        self,
        doc: ManifestDoc,
        extra_metadata: Mapping[str, Any],
        params: Mapping[str, Params],
        registry: NodeRegistry,
        source: str | None = None,
    ) -> None:
        # Use the from_* constructors; this one trusts its (already validated) arguments.
        self._doc = doc
        self._extra = dict(extra_metadata)
        self._params = dict(params)
        self._registry = registry
        self._graph = Graph([n.id for n in doc.nodes], [(c.from_, c.to) for c in doc.connections])
        self.source = source

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def from_json(
        cls,
        text: str | bytes,
        *,
        registry: NodeRegistry | None = None,
        source: str | None = None,
    ) -> Manifest:
        """Parse and validate JSON text."""
        return cls.from_dict(decode_json(text, source), registry=registry, source=source)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        registry: NodeRegistry | None = None,
    ) -> Manifest:
        """Read, parse and validate a manifest file."""
        where = os.fspath(path)
        return cls.from_json(read_file(where), registry=registry, source=where)

    @classmethod
    def from_dict(
        cls,
        obj: Any,
        *,
        registry: NodeRegistry | None = None,
        source: str | None = None,
    ) -> Manifest:
        """Validate an already-decoded JSON document (dicts, lists, str, numbers).

        A manifest is valid or not on its own: a runtime's limits (its cap on processes per
        session) are checked when it plans the manifest (:meth:`Runtime.plan`)."""
        reg = registry if registry is not None else default_registry()
        doc, issues = validate_document(obj, reg)
        if issues or doc is None:
            raise ManifestError(issues or [ManifestIssue("", "invalid manifest")], source)
        params = {}
        for i, node in enumerate(doc.nodes):
            value, _ = check_params(reg[node.node_type].Params, node.params, f"nodes[{i}].params")
            assert value is not None  # validate_document already reported any problem
            params[node.id] = value
        extra = {k: v for k, v in obj["metadata"].items() if k not in METADATA_KEYS}
        return cls(doc, extra, params, reg, source)

    @classmethod
    def parse(
        cls, value: Manifest | str | bytes | Mapping[str, Any] | os.PathLike[str], **kwargs: Any
    ) -> Manifest:
        """Accept a Manifest, JSON text/bytes, a dict, or a path (``os.PathLike``)."""
        if isinstance(value, Manifest):
            return value
        if isinstance(value, os.PathLike):
            return cls.from_file(value, **kwargs)
        if isinstance(value, (str, bytes)):
            return cls.from_json(value, **kwargs)
        return cls.from_dict(value, **kwargs)

    # -- accessors ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._doc.metadata.name

    @property
    def description(self) -> str:
        return self._doc.metadata.description

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        return tuple(self._doc.nodes)

    @property
    def connections(self) -> tuple[ConnectionSpec, ...]:
        return tuple(self._doc.connections)

    @property
    def graph(self) -> Graph:
        return self._graph

    @property
    def multiprocess(self) -> MultiprocessConfig:
        """``metadata.multiprocess`` as written (unset fields are None)."""
        return self._doc.metadata.multiprocess or MultiprocessConfig()

    @property
    def supervision(self) -> SupervisionConfig | None:
        """``metadata.supervision`` with its defaults filled in, or None when the manifest has
        none (then the server's default policy applies: runtime.toml ``[supervision]``, else
        fail-fast)."""
        return self._doc.metadata.supervision

    @property
    def restart_types(self) -> dict[str, RestartName]:
        """Node id → restart type, for the nodes that name one (the others get the server's
        default)."""
        return {n.id: n.restart for n in self._doc.nodes if n.restart is not None}

    @property
    def extra_metadata(self) -> dict[str, Any]:
        """Metadata keys nursery_pipes does not know, kept as given."""
        return dict(self._extra)

    @property
    def registry(self) -> NodeRegistry:
        return self._registry

    def node(self, node_id: str) -> NodeSpec:
        for spec in self._doc.nodes:
            if spec.id == node_id:
                return spec
        raise KeyError(node_id)

    def params(self, node_id: str) -> Params:
        """The node's validated params (defaults filled in)."""
        return self._params[node_id]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self._doc)
        out["metadata"].update(self._extra)
        out.pop("$schema", None)
        for node in out["nodes"]:
            node.setdefault("params", {})
        return out

    def to_json(self, *, indent: int = 2) -> str:
        return msgspec.json.format(msgspec.json.encode(self.to_dict()), indent=indent).decode()

    def __repr__(self) -> str:
        return f"<Manifest {self.name!r}: {len(self._doc.nodes)} nodes, {len(self._doc.connections)} connections>"


def read_file(path: str) -> bytes:
    """The bytes of a manifest file, or a ManifestError naming the file and why it can't be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ManifestError([ManifestIssue("", f"cannot read manifest file: {exc.strerror}")], path) from None


def decode_json(text: str | bytes, source: str | None = None) -> Any:
    """JSON text → a document, or a ManifestError saying where the JSON is broken (or which
    member nests too deeply to decode safely)."""
    too_deep = document_text_issue(text)
    if too_deep is not None:
        raise ManifestError([too_deep], source)
    try:
        return msgspec.json.decode(text)
    except (msgspec.DecodeError, UnicodeError) as exc:  # UnicodeError: not UTF-8 text
        raise ManifestError([json_error_issue(text, exc)], source) from None
