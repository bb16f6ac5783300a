"""Bounding JSON nesting without recursion (frames/_nesting.py), checked against a reference."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nursery_pipes.frames import _nesting
from nursery_pipes.frames._nesting import deeper_than, value_deeper_than


def depth_of(value: Any) -> int:
    """Reference (recursive; only for the small values generated here)."""
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


# Strings full of the characters that matter: brackets, quotes, backslashes (escaped by json.dumps).
TRICKY = st.text(alphabet='[]{}"\\ ab\u00e9\U0001f600', max_size=8)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES, limit=st.integers(0, 6), chunk=st.sampled_from([1, 2, 3, 7, 64, 1 << 20]))
def test_text_scan_agrees_with_the_reference(value: Any, limit: int, chunk: int) -> None:
    text = json.dumps(value, ensure_ascii=False)
    original = _nesting._CHUNK
    _nesting._CHUNK = chunk  # tiny chunks: state must carry across every kind of boundary
    try:
        found = deeper_than(text, limit)
    finally:
        _nesting._CHUNK = original
    assert (found is not None) == (depth_of(value) > limit)
    if found is not None:
        raw = text.encode()
        assert raw[found : found + 1] in (b"[", b"{")
        assert depth_of(json.loads(_close(raw[: found + 1]))) == limit + 1


def _close(prefix: bytes) -> str:
    """Close every container still open in ``prefix`` (a JSON text cut after a bracket)."""
    closers = []
    in_string = escaped = False
    for ch in prefix.decode():
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            closers.append("]" if ch == "[" else "}")
        elif ch in "]}":
            closers.pop()
    text = prefix.decode()
    if text.endswith("{"):
        text += '"k":0'
    return text.rstrip(",:") + "".join(reversed(closers))


@settings(max_examples=200, deadline=None)
@given(value=JSON_VALUES, limit=st.integers(0, 6))
def test_value_walk_agrees_with_the_reference(value: Any, limit: int) -> None:
    assert value_deeper_than(value, limit) == (depth_of(value) > limit)


def test_ten_thousand_levels() -> None:
    text = "[" * 10_000 + "]" * 10_000
    assert deeper_than(text, 128) == 128  # the 129th bracket, counting from 0
    assert deeper_than(text.encode(), 10_000) is None
    assert value_deeper_than(json_like_deep(10_000), 64)
    assert not value_deeper_than(json_like_deep(64), 64)


def json_like_deep(depth: int) -> Any:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"s": "[" * 500 + '\\"{' * 300, "t": ["]]]"]})
    assert deeper_than(text, 2) is None
    assert deeper_than(text, 1) is not None


def test_a_value_that_contains_itself_is_too_deep_not_endless() -> None:
    loop: list[Any] = []
    loop.append(loop)
    cyclic: dict[str, Any] = {}
    cyclic["me"] = cyclic
    assert value_deeper_than(loop, 64)
    assert value_deeper_than(cyclic, 64)


@pytest.mark.parametrize("value", [1, "[[[[", None, [], {}, [[1], {"a": [2]}]])
def test_shallow_values(value: Any) -> None:
    assert deeper_than(json.dumps(value), 3) is None
    assert not value_deeper_than(value, 3)
    assert value_deeper_than(nested(4), 3)
