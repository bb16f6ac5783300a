"""Small built-in nodes: pass-through, the remotemedia calculator, text and JSON transforms."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import msgspec

from ...frames import Frame, FrameKind, JsonFrame, TextFrame
from .._base import ALL_KINDS, Node, NoParams, Params

__all__ = [
    "CalculatorNode",
    "Echo",
    "JsonTransformNode",
    "JsonTransformParams",
    "PassThrough",
    "TextTransformNode",
    "TextTransformParams",
]

_JSON_KINDS = frozenset({FrameKind.JSON})
_TEXT_KINDS = frozenset({FrameKind.TEXT})


def json_type_name(value: object) -> str:
    """How a value reads in JSON terms, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class PassThrough(Node[NoParams]):
    """Forward every frame unchanged (any kind); handy as a placeholder or a tap point."""

    accepts = ALL_KINDS
    produces = ALL_KINDS
    executor = "inprocess"
    zero_copy = True  # keeps nothing between calls: may read inputs in place

    def process(self, frame: Frame) -> Frame:
        return frame


class Echo(PassThrough):
    """Forward every frame unchanged (any kind); the remotemedia name for PassThrough."""


# ---------------------------------------------------------------------------------------------
# CalculatorNode

_OPERATIONS = ("add", "subtract", "multiply", "divide")


class CalculatorNode(Node[NoParams]):
    """Arithmetic on JSON: {"operation": "add", "operands": [a, b]} → {"result": ..., ...}.

    ``operation`` is one of add, subtract, multiply, divide; ``operands`` two numbers.
    The output echoes both next to ``result``. Integer results stay integers for
    add/subtract/multiply; divide always gives a float. Any malformed request
    (missing keys, unknown operation, non-numeric operands, division by zero, a
    non-finite result) is an error naming what was wrong.
    """

    accepts = _JSON_KINDS
    produces = _JSON_KINDS
    executor = "inprocess"
    zero_copy = True  # keeps nothing between calls: may read inputs in place

    def process(self, frame: Frame) -> Frame:
        if not isinstance(frame, JsonFrame):  # the graph only routes JSON here
            raise ValueError(f"CalculatorNode takes JSON frames, got {frame.kind.label}")
        operation, a, b = _parse_request(frame.value)
        result = _calculate(operation, a, b)
        value = {"result": result, "operation": operation, "operands": [a, b]}
        return replace(frame, value=value, schema_type="")


def _parse_request(value: object) -> tuple[str, int | float, int | float]:
    if not isinstance(value, dict):
        raise ValueError(
            'calculator input must be a JSON object {"operation": ..., "operands": [a, b]}, '
            f"got {json_type_name(value)}"
        )
    for key in ("operation", "operands"):
        if key not in value:
            raise ValueError(f"calculator input is missing key {key!r} (got keys {sorted(value)})")
    operation = value["operation"]
    if operation not in _OPERATIONS:
        raise ValueError(f"unknown operation {operation!r} (expected one of {', '.join(_OPERATIONS)})")
    operands = value["operands"]
    if not (isinstance(operands, list | tuple) and len(operands) == 2):
        raise ValueError(f"operands must be a list of two numbers, got {operands!r}")
    for index, item in enumerate(operands):
        # bool is a subclass of int in Python but not a number in JSON.
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise ValueError(f"operands[{index}] must be a number, got {json_type_name(item)}: {item!r}")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"operands[{index}] must be a finite number, got {item!r}")
    return operation, operands[0], operands[1]


def _calculate(operation: str, a: int | float, b: int | float) -> int | float:
    if operation == "add":
        result = a + b
    elif operation == "subtract":
        result = a - b
    elif operation == "multiply":
        result = a * b
    else:
        if b == 0:
            raise ValueError(f"division by zero: operands [{a!r}, {b!r}]")
        try:
            result = a / b
        except OverflowError:
            raise ValueError(f"divide result out of range: operands [{a!r}, {b!r}]") from None
    if isinstance(result, float) and not math.isfinite(result):
        raise ValueError(f"{operation} result is not finite: operands [{a!r}, {b!r}]")
    return result


# ---------------------------------------------------------------------------------------------
# Text


class TextTransformParams(Params, kw_only=True):
    operation: Literal["upper", "lower", "title", "strip", "reverse", "none"] = "none"
    """Applied first; ``reverse`` reverses code points (combining marks are not kept together)."""
    prefix: str = ""
    suffix: str = ""
    language: str | None = None
    """Language tag of the output; ``None`` keeps the input's."""


_TEXT_OPERATIONS: dict[str, Callable[[str], str]] = {
    "upper": str.upper,
    "lower": str.lower,
    "title": str.title,
    "strip": str.strip,
    "reverse": lambda text: text[::-1],
    "none": lambda text: text,
}


class TextTransformNode(Node[TextTransformParams]):
    """Transform text: upper/lower/title/strip/reverse, then add a prefix and suffix.

    ``language`` replaces the output's language tag (``None`` keeps the input's).
    """

    accepts = _TEXT_KINDS
    produces = _TEXT_KINDS
    executor = "inprocess"
    zero_copy = True  # keeps nothing between calls: may read inputs in place

    def process(self, frame: Frame) -> Frame:
        if not isinstance(frame, TextFrame):
            raise ValueError(f"TextTransformNode takes text frames, got {frame.kind.label}")
        p = self.params
        text = p.prefix + _TEXT_OPERATIONS[p.operation](frame.text) + p.suffix
        language = frame.language if p.language is None else p.language
        return replace(frame, text=text, language=language)


# ---------------------------------------------------------------------------------------------
# JSON


class JsonTransformParams(Params, kw_only=True):
    select: list[str] | None = None
    """Keep only these top-level keys (missing ones are ignored); ``None`` keeps all."""
    rename: dict[str, str] = msgspec.field(default_factory=dict)
    """Old key → new key, applied after ``select``; a renamed key replaces an existing one."""
    set: dict[str, Any] = msgspec.field(default_factory=dict)
    """Constant keys added (or overwritten) last."""

    def __post_init__(self) -> None:
        targets: dict[str, str] = {}
        for old, new in self.rename.items():
            if new in targets:
                raise ValueError(
                    f"rename maps both {targets[new]!r} and {old!r} to {new!r}; "
                    "the result would depend on the input's key order"
                )
            targets[new] = old
        try:
            msgspec.json.encode(self.set)
        except (TypeError, msgspec.EncodeError) as exc:
            raise ValueError(f"set values must be JSON values: {exc}") from None


class JsonTransformNode(Node[JsonTransformParams]):
    """Reshape a JSON object: keep selected keys, rename keys, then set constant keys.

    Steps run in that order. Renames are simultaneous (``{"a": "b", "b": "a"}`` swaps),
    and a key renamed onto an existing key replaces it. Input that is not a JSON object
    is an error naming the type received.
    """

    accepts = _JSON_KINDS
    produces = _JSON_KINDS
    executor = "inprocess"
    zero_copy = True  # keeps nothing between calls: may read inputs in place

    def process(self, frame: Frame) -> Frame:
        if not isinstance(frame, JsonFrame):
            raise ValueError(f"JsonTransformNode takes JSON frames, got {frame.kind.label}")
        value = frame.value
        if not isinstance(value, dict):
            raise ValueError(f"JsonTransformNode needs a JSON object, got {json_type_name(value)}")
        return replace(frame, value=self.transform(value))

    def transform(self, value: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        if p.select is not None:
            wanted = set(p.select)
            value = {k: v for k, v in value.items() if k in wanted}
        if p.rename:
            # Keys keep their position; a key that a rename lands on is replaced.
            targets = {p.rename[k] for k in value if k in p.rename}
            value = {p.rename.get(k, k): v for k, v in value.items() if k in p.rename or k not in targets}
        return {**value, **p.set}
