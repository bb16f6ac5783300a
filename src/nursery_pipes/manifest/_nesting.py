"""How deeply a manifest may nest, checked before anything recurses into it. Sans-I/O.

A node's ``params`` and each ``metadata`` value are free-form JSON. Each such
value — and every other member of the document (``nodes[i].<field>``,
``connections[k].<field>``, a top-level key) — may nest at most
:data:`MAX_NESTING` (64) levels deep: far more than any real configuration
needs, and far less than the recursion that decoding, msgspec conversion,
jsonschema, ``repr`` and pickling (the worker gets its params pickled) can
take. A deeper one is a validation issue at the member's path::

    nodes[0].params: nested deeper than 64 levels

Checked twice, never recursively (``frames/_nesting.py`` has the scanners):

- on JSON *text* (:func:`text_issue`), before it is decoded — a manifest file
  or JSON string, or a value that arrives as JSON text (``params`` on the
  wire); for a whole document the path is found by a tokenizer that runs only
  when the text is too deep;
- on a decoded document (:func:`nesting_issues`), for manifests built in
  Python, before validation converts, checks or prints any part of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .._errors import ManifestIssue
from ..frames._nesting import JsonText, deeper_than, value_deeper_than

__all__ = ["MAX_NESTING", "nesting_issues", "text_issue"]

MAX_NESTING = 64
"""How deeply a manifest member (a node's params, a metadata value, ...) may nest."""

_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:,]', re.DOTALL)
_LIST_MEMBERS = ("nodes", "connections")
"""Top-level arrays whose items are objects with members of their own."""

Part = str | int


def _message() -> str:
    return f"nested deeper than {MAX_NESTING} levels"


def nesting_issues(doc: Any) -> list[ManifestIssue]:
    """Every member of a decoded document that nests deeper than :data:`MAX_NESTING`."""
    return [
        ManifestIssue(json_path(parts), _message())
        for parts, value in _members(doc)
        if value_deeper_than(value, MAX_NESTING)
    ]


def text_issue(text: JsonText, path: str = "", *, levels_above: int = 0) -> ManifestIssue | None:
    """An issue if JSON ``text`` nests too deeply, else None.

    ``path`` is where the text sits in the manifest; with ``levels_above`` 0 the text is one
    member's value (a node's ``params`` on the wire), with 1 an object whose values are
    members (``extra_json``: metadata keys), and a whole document is checked with
    :func:`document_text_issue`.
    """
    if deeper_than(text, MAX_NESTING + levels_above) is None:
        return None
    return ManifestIssue(path, _message())


def document_text_issue(text: JsonText) -> ManifestIssue | None:
    """An issue naming the member that nests too deeply in a whole manifest document's text."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    # A member of an item of nodes/connections sits 3 containers down (document, array, item).
    offset = deeper_than(raw, MAX_NESTING + 3)
    if offset is None:
        return None
    return ManifestIssue(json_path(_member_of(_path_at(raw, offset))), _message())


def json_path(parts: list[Part]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _members(doc: Any) -> list[tuple[list[Part], Any]]:
    """The document's members, each with its path: what the nesting limit applies to."""
    if not isinstance(doc, Mapping):
        return [([], doc)]
    found: list[tuple[list[Part], Any]] = []
    for key, value in doc.items():
        if key in _LIST_MEMBERS and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    found += [([key, i, str(k)], v) for k, v in item.items()]
                else:
                    found.append(([key, i], item))
        elif key == "metadata" and isinstance(value, Mapping):
            found += [(["metadata", str(k)], v) for k, v in value.items()]
        else:
            found.append(([str(key)], value))
    return found


def _member_of(parts: list[Part]) -> list[Part]:
    """The member a path lies in (the prefix :func:`_members` would name)."""
    if not parts or isinstance(parts[0], int):
        return []  # the document itself is not an object: it is the one member
    if parts[:1] == ["metadata"] and len(parts) > 1 and isinstance(parts[1], str):
        return parts[:2]
    if parts[:1] and parts[0] in _LIST_MEMBERS and len(parts) > 1:
        return parts[:3] if len(parts) > 2 and isinstance(parts[2], str) else parts[:2]
    return parts[:1]


def _path_at(raw: bytes, offset: int) -> list[Part]:
    """The path, from the document root, of the container that opens at byte ``offset``.

    Runs only for text already known to be too deep, up to ``offset``; the tokenizer takes
    strings whole, so brackets and escaped quotes inside them never count.
    """
    stack: list[list[Any]] = []  # per open container: [is_object, key or index]
    last_string = b'""'
    for match in _TOKEN.finditer(raw, 0, offset):
        token = match.group()
        first = token[:1]
        if first == b'"':
            last_string = token
        elif first in b"[{":
            stack.append([first == b"{", 0])
        elif first in b"]}":
            if stack:
                stack.pop()
        elif first == b":" and stack:
            stack[-1][1] = _key(last_string)
        elif first == b"," and stack and not stack[-1][0]:
            stack[-1][1] += 1
    return [entry[1] for entry in stack]


def _key(token: bytes) -> str:
    try:
        key = json.loads(token)
    except ValueError:
        return token.decode("utf-8", "replace").strip('"')
    return key if isinstance(key, str) else str(key)
