"""Checking a node's ``params`` object against the node's typed params struct.

Each field is converted on its own so that *every* problem is reported, each
with its JSON path: unknown names (with a "did you mean"), wrong types,
out-of-range values, missing required params. Cross-field checks in the
struct's ``__post_init__`` run last, once the fields themselves are fine.

Part of the node API (a node's ``Params`` struct says what it takes), used by
manifest validation and by :func:`~nursery_pipes.nodes._calls.build_params`.
"""

from __future__ import annotations

import difflib
import functools
import re

import msgspec

from .._errors import ManifestIssue
from ._base import Params

__all__ = ["check_params"]

_MSGSPEC_PATH = re.compile(r" - at `\$(.*)`$")


def check_params(
    params_type: type[Params], raw: object, path: str
) -> tuple[Params | None, list[ManifestIssue]]:
    """Return the params struct instance (or None) and the list of problems found."""
    if not isinstance(raw, dict):
        return None, [ManifestIssue(path, f"params must be an object, got {_json_type(raw)}")]
    try:  # fast path: valid params need one conversion
        return msgspec.convert(raw, params_type), []
    except msgspec.ValidationError:
        pass
    fields = _fields(params_type)
    issues: list[ManifestIssue] = []
    for key in raw:
        if key not in fields:
            issues.append(ManifestIssue(f"{path}.{key}", _unknown_param(key, list(fields))))
    for name, info in fields.items():
        if name not in raw:
            if info.required:
                issues.append(ManifestIssue(f"{path}.{name}", f"missing required param {name!r}"))
            continue
        try:
            msgspec.convert(raw[name], info.type)
        except msgspec.ValidationError as exc:
            where, message = _locate(f"{path}.{name}", str(exc))
            if " got " not in message and where == f"{path}.{name}":
                message = f"{message}, got {_show(raw[name])}"
            issues.append(ManifestIssue(where, message))
    if issues:
        return None, issues
    try:
        return msgspec.convert(raw, params_type), []
    except msgspec.ValidationError as exc:
        return None, [ManifestIssue(*_locate(path, str(exc)))]


@functools.cache
def _fields(params_type: type[Params]) -> dict[str, msgspec.structs.FieldInfo]:
    # msgspec.structs.fields() re-evaluates annotations on every call: look once per type.
    return {f.name: f for f in msgspec.structs.fields(params_type)}


def _unknown_param(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown param {key!r} — did you mean {close[0]!r}?"
    if known:
        return f"unknown param {key!r} (this node takes: {', '.join(sorted(known))})"
    return f"unknown param {key!r} (this node takes no params)"


def _locate(path: str, message: str) -> tuple[str, str]:
    """Move msgspec's ``- at `$.x[0]``` suffix into the JSON path."""
    match = _MSGSPEC_PATH.search(message)
    if match:
        path = path + match.group(1)
        message = message[: match.start()]
    return path, message


def _json_type(value: object) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    text = msgspec.json.encode(value).decode() if _jsonable(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _jsonable(value: object) -> bool:
    try:
        msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError):
        return False
    return True
