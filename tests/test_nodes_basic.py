"""Built-in basic nodes: PassThrough/Echo, CalculatorNode, TextTransformNode, JsonTransformNode."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from nursery_pipes._errors import ManifestError
from nursery_pipes.frames import AudioFrame, BinaryFrame, Frame, JsonFrame, TextFrame
from nursery_pipes.nodes._base import describe_params
from nursery_pipes.nodes._calls import make_node
from nursery_pipes.nodes.builtin import (
    ALIASES,
    BUILTIN_NODES,
    AudioResampleNode,
    CalculatorNode,
    Echo,
    JsonTransformNode,
    PassThrough,
    TextTransformNode,
)
from nursery_pipes.testing._drive import run_node_sync


def calc(value: Any) -> Any:
    (out,) = run_node_sync(CalculatorNode, [JsonFrame(value=value)])
    assert isinstance(out, JsonFrame)
    return out.value


# --- registry-facing facts ------------------------------------------------------------------


def test_builtins_are_sync_described_and_placed() -> None:
    names = [cls.node_type for cls in BUILTIN_NODES]
    assert len(names) == len(set(names))
    for cls in BUILTIN_NODES:
        heavy = cls.__module__.startswith("nursery_pipes.nodes.speech")
        assert cls.executor == ("multiprocess" if heavy else "inprocess"), cls
        assert cls.description(), cls
        describe_params(cls.Params)  # every param struct is describable


def test_aliases() -> None:
    assert dict(ALIASES) == {"FastResampleNode": AudioResampleNode}
    assert not set(ALIASES) & {cls.node_type for cls in BUILTIN_NODES}


def test_builtin_package_exports() -> None:
    import nursery_pipes.nodes.builtin as builtin

    public = {name for name in vars(builtin) if not name.startswith("_")}
    public -= {"annotations", "Any", "Node"}
    assert set(builtin.__all__) == public


# --- pass-through ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [PassThrough, Echo])
def test_pass_through_any_kind(cls: type[PassThrough] | type[Echo]) -> None:
    frames: list[Frame] = [
        TextFrame(text="hi", language="en", metadata={"k": "v"}),
        JsonFrame(value=[1, 2]),
        BinaryFrame(data=b"\x00\x01"),
        AudioFrame.from_array(np.zeros(4, np.int16), 8000),
    ]
    out = run_node_sync(cls, frames)
    assert len(out) == len(frames)
    assert all(a is b for a, b in zip(out, frames, strict=True))


# --- calculator -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "a", "b", "result"),
    [
        ("add", 2, 3, 5),
        ("subtract", 2, 5, -3),
        ("multiply", 4, -3, -12),
        ("divide", 1, 4, 0.25),
        ("divide", 6, 3, 2.0),
        ("add", 0.5, 0.25, 0.75),
        ("multiply", 10**20, 10**20, 10**40),
    ],
)
def test_calculator_results(op: str, a: float, b: float, result: float) -> None:
    value = calc({"operation": op, "operands": [a, b]})
    assert value == {"result": result, "operation": op, "operands": [a, b]}
    assert type(value["result"]) is type(result)


def test_calculator_int_results_stay_int_and_divide_is_float() -> None:
    assert isinstance(calc({"operation": "add", "operands": [1, 2]})["result"], int)
    assert isinstance(calc({"operation": "divide", "operands": [4, 2]})["result"], float)


def test_calculator_keeps_metadata() -> None:
    frame = JsonFrame(value={"operation": "add", "operands": [1, 1]}, metadata={"req": "7"})
    (out,) = run_node_sync(CalculatorNode, [frame])
    assert dict(out.metadata) == {"req": "7"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"operation": "divide", "operands": [1, 0]}, "division by zero: operands [1, 0]"),
        ({"operation": "divide", "operands": [1.5, 0.0]}, "division by zero: operands [1.5, 0.0]"),
        ({"operation": "pow", "operands": [1, 2]}, "unknown operation 'pow'"),
        ({"operation": None, "operands": [1, 2]}, "unknown operation None"),
        ({"operands": [1, 2]}, "missing key 'operation'"),
        ({"operation": "add"}, "missing key 'operands'"),
        ({"operation": "add", "operands": [1]}, "operands must be a list of two numbers, got [1]"),
        ({"operation": "add", "operands": [1, 2, 3]}, "list of two numbers"),
        ({"operation": "add", "operands": 3}, "list of two numbers, got 3"),
        ({"operation": "add", "operands": [True, 2]}, "operands[0] must be a number, got a bool"),
        ({"operation": "add", "operands": [1, "2"]}, "operands[1] must be a number, got a string"),
        ({"operation": "add", "operands": [1, None]}, "operands[1] must be a number, got null"),
        ({"operation": "multiply", "operands": [1e308, 1e308]}, "multiply result is not finite"),
        ({"operation": "divide", "operands": [10**400, 3]}, "divide result out of range"),
        ([1, 2], "must be a JSON object"),
        ("add", "got a string"),
        (None, "got null"),
    ],
)
def test_calculator_errors(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        calc(value)


def test_calculator_takes_no_params() -> None:
    with pytest.raises(ManifestError, match="unknown param"):
        make_node(CalculatorNode, {"precision": 2})


@given(
    st.sampled_from(["add", "subtract", "multiply"]),
    st.integers(-(10**12), 10**12),
    st.integers(-(10**12), 10**12),
)
def test_calculator_integer_arithmetic_is_exact(op: str, a: int, b: int) -> None:
    expected = {"add": a + b, "subtract": a - b, "multiply": a * b}[op]
    assert calc({"operation": op, "operands": [a, b]})["result"] == expected


# --- text -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "text", "expected"),
    [
        ({}, " Hello World ", " Hello World "),
        ({"operation": "upper"}, "straße", "STRASSE"),
        ({"operation": "lower"}, "ABC", "abc"),
        ({"operation": "title"}, "hello world", "Hello World"),
        ({"operation": "strip"}, "  x \n", "x"),
        ({"operation": "reverse"}, "abc", "cba"),
        ({"operation": "strip", "prefix": "[", "suffix": "]"}, " a ", "[a]"),
    ],
)
def test_text_transform(params: dict[str, Any], text: str, expected: str) -> None:
    (out,) = run_node_sync(TextTransformNode, [TextFrame(text=text, language="de")], params)
    assert isinstance(out, TextFrame)
    assert out.text == expected
    assert out.language == "de"


def test_text_transform_language_override_and_metadata() -> None:
    frame = TextFrame(text="x", language="de", metadata={"a": "b"})
    (out,) = run_node_sync(TextTransformNode, [frame], {"language": "en"})
    assert isinstance(out, TextFrame)
    assert (out.language, dict(out.metadata)) == ("en", {"a": "b"})
    (out,) = run_node_sync(TextTransformNode, [frame], {"language": ""})
    assert isinstance(out, TextFrame)
    assert out.language == ""


def test_text_transform_rejects_unknown_operation() -> None:
    with pytest.raises(ManifestError, match="operation"):
        make_node(TextTransformNode, {"operation": "shout"})


# --- JSON -----------------------------------------------------------------------------------


def jt(value: Any, **params: Any) -> Any:
    (out,) = run_node_sync(JsonTransformNode, [JsonFrame(value=value)], params)
    assert isinstance(out, JsonFrame)
    return out.value


def test_json_transform_identity_by_default() -> None:
    assert jt({"a": 1, "b": [2]}) == {"a": 1, "b": [2]}


def test_json_transform_select_ignores_missing_keys() -> None:
    assert jt({"a": 1, "b": 2, "c": 3}, select=["c", "a", "zz"]) == {"a": 1, "c": 3}
    assert jt({"a": 1}, select=[]) == {}


def test_json_transform_rename_keeps_position_and_replaces() -> None:
    out = jt({"a": 1, "b": 2, "c": 3}, rename={"a": "c"})
    assert list(out.items()) == [("c", 1), ("b", 2)]
    assert jt({"a": 1, "b": 2}, rename={"a": "b", "b": "a"}) == {"b": 1, "a": 2}
    assert jt({"a": 1}, rename={"missing": "x"}) == {"a": 1}


def test_json_transform_order_select_rename_set() -> None:
    value = {"a": 1, "b": 2, "c": 3}
    out = jt(value, select=["a", "b"], rename={"a": "x"}, set={"b": 0, "y": None})
    assert out == {"x": 1, "b": 0, "y": None}


def test_json_transform_non_object_names_type() -> None:
    with pytest.raises(ValueError, match="needs a JSON object, got an array"):
        jt([1, 2])
    with pytest.raises(ValueError, match="got a number"):
        jt(3.5)


def test_json_transform_rename_collision_rejected_at_params_time() -> None:
    with pytest.raises(ManifestError, match="rename maps both"):
        make_node(JsonTransformNode, {"rename": {"a": "x", "b": "x"}})


@given(
    st.dictionaries(st.sampled_from("abcdef"), st.integers(), max_size=6),
    st.lists(st.sampled_from("abcdefg"), max_size=4) | st.none(),
    st.dictionaries(st.sampled_from("abcdef"), st.sampled_from("uvwxyz"), max_size=3),
)
def test_json_transform_properties(
    value: dict[str, int], select: list[str] | None, rename: dict[str, str]
) -> None:
    assume(len(set(rename.values())) == len(rename))  # else rejected at params time (tested above)
    out = jt(value, select=select, rename=rename)
    kept = {k: v for k, v in value.items() if select is None or k in select}
    targets = {rename[k] for k in kept if k in rename}
    # Every kept value survives under its (possibly renamed) key unless a rename replaced it,
    # and nothing else appears.
    for key, item in kept.items():
        if key in rename or key not in targets:
            assert out[rename.get(key, key)] == item
    assert len(out) <= len(kept)
    assert set(out) <= {rename.get(k, k) for k in kept}
