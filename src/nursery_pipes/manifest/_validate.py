"""Manifest validation: every problem at once, each with a JSON path. Sans-I/O.

First, nesting: a member of the document (a node's params, a metadata value, ...)
nested deeper than ``MAX_NESTING`` levels is reported alone (``_nesting.py``) —
everything below recurses into values. Then two layers:

1. **Structure** — a fast typed decode with msgspec. Valid manifests pay only
   for this. When it fails, the shipped JSON Schema (jsonschema) is run to list
   *every* structural problem, not just the first.
2. **Meaning** — what a schema cannot say: unique ids, connections naming
   existing nodes, no duplicate edges, an acyclic graph, registered node types
   (with "did you mean"), each node's params against its typed params, frame
   kinds that can flow along each edge, and executor_overrides naming nodes.
   These run on the raw document too, tolerantly, so a manifest with both kinds
   of problems reports both.

A manifest is valid or not on its own. What a runtime allows (its cap on
processes per session) is checked when it plans one (``runtime/_plan.py``).
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import msgspec

from .._errors import ManifestIssue
from ..nodes._params import check_params
from ..nodes._registry import NodeRegistry
from ._graph import find_cycle
from ._model import ManifestDoc
from ._nesting import nesting_issues

__all__ = ["json_error_issue", "load_schema", "schema_issues", "validate_document"]


@functools.cache
def load_schema() -> dict[str, Any]:
    """The manifest v1 JSON Schema shipped inside the package."""
    text = resources.files(__package__).joinpath("schema/manifest.v1.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _schema_validator() -> Any:
    import jsonschema

    # JSON Schema counts 5.0 as an "integer"; the typed model (msgspec) takes only true ints.
    # Check the model's way here so that every structural problem is listed, this one too.
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return jsonschema.validators.extend(base, type_checker=checker)(load_schema())


def json_error_issue(text: str | bytes, exc: Exception) -> ManifestIssue:
    """Turn a JSON decode error into "invalid JSON at line L, column C: reason".

    msgspec reports a byte offset ("... (byte N)"), or none for input that ends
    early or is not UTF-8 text. Columns count characters.
    """
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    located = _locate_json_error(raw, exc)
    if located is None:
        return ManifestIssue("", f"invalid JSON: {exc}")
    offset, reason = located
    line = raw.count(b"\n", 0, offset) + 1
    line_start = raw.rfind(b"\n", 0, offset) + 1
    column = len(raw[line_start:offset].decode("utf-8", "replace")) + 1
    return ManifestIssue("", f"invalid JSON at line {line}, column {column}: {reason}")


def _locate_json_error(raw: bytes, exc: Exception) -> tuple[int, str] | None:
    """Byte offset and reason of a JSON decode error, when they can be known.

    msgspec names the byte of a syntax error. Bad UTF-8 inside a string is reported
    differently by version (a UnicodeError before 0.23, a DecodeError without offset
    since), so it is located here from the text itself, whatever msgspec said.
    """
    message = str(exc)
    head, sep, tail = message.rpartition("(byte ")
    if not isinstance(exc, UnicodeError) and sep and tail.rstrip(")").isdigit():
        reason = head.strip().removeprefix("JSON is malformed:").strip() or "malformed JSON"
        offset = int(tail.rstrip(")"))
        # msgspec reports trailing characters one byte past the first of them.
        return (offset - 1 if reason == "trailing characters" else offset), reason
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return bad.start, f"not valid UTF-8 text ({bad.reason})"
    if "truncated" in message:
        return len(raw), "unexpected end of input"
    return None


def validate_document(obj: Any, registry: NodeRegistry) -> tuple[ManifestDoc | None, list[ManifestIssue]]:
    """Validate a decoded JSON document. Returns the typed manifest (if structurally valid)
    and every problem found."""
    too_deep = nesting_issues(obj)
    if too_deep:
        # Nothing below may look at such a document: conversion, the schema, messages that
        # quote values and the worker's pickled params all recurse once per level.
        return None, sorted(too_deep, key=_document_order)
    issues: list[ManifestIssue] = []
    doc: ManifestDoc | None = None
    try:
        doc = msgspec.convert(obj, ManifestDoc)
    except msgspec.ValidationError as exc:
        found = schema_issues(obj)
        issues.extend(found or [_msgspec_issue(exc)])
    issues.extend(_semantic_issues(obj, registry))
    return (doc if not issues else None), sorted(_dedupe(issues), key=_document_order)


def schema_issues(obj: Any) -> list[ManifestIssue]:
    """Every violation of the shipped JSON Schema, as path + message."""
    found = []
    for error in _schema_validator().iter_errors(obj):
        found.extend(_schema_error_issues(error))
    return sorted(set(found), key=_issue_order)


def _schema_error_issues(error: Any) -> list[ManifestIssue]:
    path = _json_path(error.absolute_path)
    validator = error.validator
    if validator in {"anyOf", "oneOf"} and error.context:
        best = min(error.context, key=lambda e: len(list(e.absolute_path)))
        return _schema_error_issues(best)
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [ManifestIssue(_join(path, missing), f"missing required field {missing!r}")]
    if validator == "additionalProperties":
        extras = _extra_keys(error)
        known = list(error.schema.get("properties", {}))
        return [ManifestIssue(_join(path, key), _unknown_field(key, known)) for key in extras]
    if validator == "const":
        return [
            ManifestIssue(path, f"must be {json.dumps(error.validator_value)}, got {_show(error.instance)}")
        ]
    if validator == "enum":
        choices = ", ".join(json.dumps(v) for v in error.validator_value)
        return [
            ManifestIssue(path, f"must be one of {choices}, got {_show(error.instance)}{_enum_hint(error)}")
        ]
    if validator == "type":
        return [
            ManifestIssue(path, f"must be {_type_words(error.validator_value)}, got {_kind(error.instance)}")
        ]
    if validator == "pattern" and path.endswith(".id"):
        return [
            ManifestIssue(
                path, f"node id {_show(error.instance)} may only contain letters, digits, '_' and '-'"
            )
        ]
    if validator == "pattern" and path.endswith(".host"):
        return [ManifestIssue(path, f"host must be name:port, got {_show(error.instance)}")]
    if validator == "pattern" and ".executor_overrides." in path:
        return [
            ManifestIssue(
                path,
                f"executor names are lower-case words (inprocess, thread, multiprocess, ...), got "
                f"{_show(error.instance)}",
            )
        ]
    if validator == "minItems" and error.validator_value == 1:
        return [ManifestIssue(path, "must contain at least one node")]
    if validator in {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}:
        words = {"minimum": "≥", "maximum": "≤", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[validator]
        return [ManifestIssue(path, f"must be {words} {error.validator_value}, got {_show(error.instance)}")]
    if validator in {"minLength", "maxLength"}:
        if error.validator_value == 1 and validator == "minLength":
            return [ManifestIssue(path, "must not be empty")]
        words = "at least" if validator == "minLength" else "at most"
        return [ManifestIssue(path, f"must be {words} {error.validator_value} characters long")]
    return [ManifestIssue(path, error.message)]


def _semantic_issues(obj: Any, registry: NodeRegistry) -> list[ManifestIssue]:
    if not isinstance(obj, Mapping):
        return [] if schema_issues(obj) else [ManifestIssue("", "manifest must be a JSON object")]
    raw_nodes = obj.get("nodes")
    nodes: list[Any] = raw_nodes if isinstance(raw_nodes, list) else []
    ids = _node_ids(nodes)
    issues = _duplicate_ids(nodes)
    issues += _node_types_and_params(nodes, registry)
    edges, conn_issues = _connections(obj.get("connections"), ids, nodes, registry)
    issues += conn_issues
    cycle = find_cycle(ids, edges)
    if cycle:
        issues.append(ManifestIssue("connections", "cycle: " + " → ".join(cycle)))
    issues += _override_issues(obj.get("metadata"), ids)
    return issues


def _node_ids(nodes: list[Any]) -> list[str]:
    seen: dict[str, None] = {}
    for node in nodes:
        if isinstance(node, Mapping) and isinstance(node.get("id"), str):
            seen.setdefault(node["id"], None)
    return list(seen)


def _duplicate_ids(nodes: list[Any]) -> list[ManifestIssue]:
    first: dict[str, int] = {}
    issues = []
    for i, node in enumerate(nodes):
        if not (isinstance(node, Mapping) and isinstance(node.get("id"), str)):
            continue
        nid = node["id"]
        if nid in first:
            issues.append(
                ManifestIssue(
                    f"nodes[{i}].id", f"duplicate node id {nid!r} (first used by nodes[{first[nid]}])"
                )
            )
        else:
            first[nid] = i
    return issues


def _node_types_and_params(nodes: list[Any], registry: NodeRegistry) -> list[ManifestIssue]:
    issues = []
    for i, node in enumerate(nodes):
        if not isinstance(node, Mapping):
            continue
        node_type = node.get("node_type")
        if not isinstance(node_type, str) or not node_type:
            continue
        cls = registry.get(node_type)
        if cls is None:
            issues.append(ManifestIssue(f"nodes[{i}].node_type", registry.unknown_message(node_type)))
            continue
        raw = node.get("params", {})
        if isinstance(raw, Mapping):
            issues += check_params(cls.Params, dict(raw), f"nodes[{i}].params")[1]
    return issues


def _connections(
    raw: Any, ids: list[str], nodes: list[Any], registry: NodeRegistry
) -> tuple[list[tuple[str, str]], list[ManifestIssue]]:
    if not isinstance(raw, list):
        return [], []
    known = set(ids)
    types = _types_by_id(nodes)
    edges: list[tuple[str, str]] = []
    seen: dict[tuple[str, str], int] = {}
    issues = []
    for k, conn in enumerate(raw):
        if not isinstance(conn, Mapping):
            continue
        src, dst = conn.get("from"), conn.get("to")
        bad = False
        for key, value in (("from", src), ("to", dst)):
            if isinstance(value, str) and value and value not in known:
                issues.append(ManifestIssue(f"connections[{k}].{key}", _unknown_node(value, ids)))
                bad = True
        if bad or not isinstance(src, str) or not isinstance(dst, str):
            continue
        if (src, dst) in seen:
            issues.append(
                ManifestIssue(
                    f"connections[{k}]",
                    f"duplicate connection {src} → {dst} (same as connections[{seen[src, dst]}])",
                )
            )
            continue
        seen[src, dst] = k
        edges.append((src, dst))
        issues += _kind_issue(k, src, dst, types, registry)
    return edges, issues


def _types_by_id(nodes: list[Any]) -> dict[str, str]:
    types: dict[str, str] = {}
    for n in nodes:
        if isinstance(n, Mapping) and isinstance(n.get("id"), str) and isinstance(n.get("node_type"), str):
            types.setdefault(n["id"], n["node_type"])  # a duplicate id is reported elsewhere
    return types


def _kind_issue(
    k: int, src: str, dst: str, types: dict[str, str], registry: NodeRegistry
) -> list[ManifestIssue]:
    a, b = registry.get(types.get(src, "")), registry.get(types.get(dst, ""))
    if a is None or b is None or a.produces & b.accepts:
        return []
    produced = ", ".join(sorted(kind.label for kind in a.produces)) or "nothing"
    accepted = ", ".join(sorted(kind.label for kind in b.accepts)) or "nothing"
    return [
        ManifestIssue(
            f"connections[{k}]",
            f"{src!r} ({types[src]}) produces {produced}, but {dst!r} ({types[dst]}) accepts only {accepted}",
        )
    ]


def _override_issues(metadata: Any, ids: list[str]) -> list[ManifestIssue]:
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("multiprocess"), Mapping):
        return []
    overrides = metadata["multiprocess"].get("executor_overrides")
    if not isinstance(overrides, Mapping):
        return []
    return [
        ManifestIssue(
            f"metadata.multiprocess.executor_overrides.{key}",
            f"{key!r} is not a node id of this manifest" + _did_you_mean(key, ids),
        )
        for key in overrides
        if key not in ids
    ]


def _unknown_node(name: str, ids: list[str]) -> str:
    return f"unknown node {name!r}" + (
        _did_you_mean(name, ids) or (f" (nodes are: {', '.join(ids)})" if ids else "")
    )


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" — did you mean {close[0]!r}?" if close else ""


def _enum_hint(error: Any) -> str:
    """ "did you mean" for a string close to one of an enum's strings ("one-for-one")."""
    if not isinstance(error.instance, str):
        return ""
    words = [v for v in error.validator_value if isinstance(v, str)]
    normalised = error.instance.strip().lower().replace("-", "_").replace(" ", "_")
    if normalised in words:
        return f" — did you mean {json.dumps(normalised)}?"
    close = difflib.get_close_matches(error.instance, words, n=1, cutoff=0.6)
    return f" — did you mean {json.dumps(close[0])}?" if close else ""


def _unknown_field(key: str, known: list[str]) -> str:
    return f"unknown field {key!r}" + (
        _did_you_mean(key, known) or (f" (allowed: {', '.join(known)})" if known else "")
    )


def _extra_keys(error: Any) -> list[str]:
    allowed = set(error.schema.get("properties", {}))
    instance = error.instance if isinstance(error.instance, Mapping) else {}
    return [key for key in instance if key not in allowed]


def _msgspec_issue(exc: msgspec.ValidationError) -> ManifestIssue:
    message, _, where = str(exc).partition(" - at `$")
    return ManifestIssue(where.rstrip("`").lstrip("."), message)


def _json_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {_show(value)}"
    return "an array" if isinstance(value, list) else "an object"


def _type_words(value: Any) -> str:
    names = {
        "object": "an object",
        "array": "an array",
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "a boolean",
        "null": "null",
    }
    if isinstance(value, list):
        return " or ".join(names.get(str(v), str(v)) for v in value)
    return names.get(value, str(value))


def _issue_order(issue: ManifestIssue) -> tuple[str, str]:
    return (issue.path, issue.message)


_TOP_LEVEL = {"": 0, "version": 1, "metadata": 2, "nodes": 3, "connections": 4}
_PATH_TOKEN = re.compile(r"\[(\d+)\]|\.?([^.\[]+)")


def _document_order(issue: ManifestIssue) -> tuple[Any, ...]:
    """Sort issues the way a reader meets them in the document: by path, numbers numerically."""
    tokens: list[tuple[int, int | str]] = []
    for index, name in _PATH_TOKEN.findall(issue.path):
        tokens.append((0, int(index)) if index else (1, name))
    top = tokens[0][1] if tokens else ""
    return (_TOP_LEVEL.get(str(top), 5), tokens)


def _dedupe(issues: list[ManifestIssue]) -> list[ManifestIssue]:
    seen: dict[ManifestIssue, None] = {}
    for issue in issues:
        seen.setdefault(issue, None)
    return list(seen)
