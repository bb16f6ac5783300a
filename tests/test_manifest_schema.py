"""The shipped JSON Schema and the validator's structural layer (msgspec ``ManifestDoc``) agree.

Corpora under ``tests/data/manifests``:

- ``good/``: valid manifests — the schema, the msgspec model and the full validator accept them;
- ``bad/``: structural problems — the schema and the model both reject them, and the full
  validator reports the path named in ``bad/expected.json``;
- ``semantic/``: manifests the schema (and the model) accept but a runtime refuses before it runs
  them — rules no schema can express — each with its expected issue path in
  ``semantic/expected.json``. All but one are the validator's; ``max_processes_above_cap`` is a
  runtime's limit, which only planning checks (``Runtime.plan``).

Hypothesis then perturbs valid documents at random and checks that schema and model still agree.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, get_args

import jsonschema
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nursery_pipes import Manifest, ManifestError, Runtime, RuntimeConfig
from nursery_pipes._config import MAX_RESTARTS_LIMIT, WITHIN_SECS_LIMIT, LimitsConfig, SupervisionDefaults
from nursery_pipes.manifest import load_schema
from nursery_pipes.manifest._model import (
    Capabilities,
    ConnectionSpec,
    CpuRequirement,
    GpuRequirement,
    ManifestDoc,
    MetadataDoc,
    MultiprocessConfig,
    NodeSpec,
    SupervisionConfig,
)
from nursery_pipes.manifest._validate import _schema_validator
from nursery_pipes.nodes import NodeRegistry
from nursery_pipes.nodes._registry import builtin_registry
from nursery_pipes.testing import register_testing_nodes

DATA = Path(__file__).parent / "data" / "manifests"
CAP = 16  # the runtime's limits.max_processes_per_session for the semantic corpus


def corpus_registry() -> NodeRegistry:
    registry = builtin_registry()
    register_testing_nodes(registry)  # the built-ins include the product brief's SpeechRecognitionNode
    return registry


REGISTRY = corpus_registry()
VALIDATOR = jsonschema.Draft202012Validator(load_schema())


def corpus(folder: str) -> list[Path]:
    return sorted(p for p in (DATA / folder).glob("*.json") if p.name != "expected.json")


def expected_paths(folder: str) -> dict[str, str]:
    paths: dict[str, str] = json.loads((DATA / folder / "expected.json").read_text())
    return paths


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def model_accepts(doc: Any) -> bool:
    try:
        msgspec.convert(doc, ManifestDoc)
    except msgspec.ValidationError:
        return False
    return True


def full_issue_paths(doc: Any) -> list[str]:
    try:
        Manifest.from_dict(doc, registry=REGISTRY)
    except ManifestError as exc:
        return [issue.path for issue in exc.issues]
    return []


@functools.cache
def runtime() -> Runtime:
    return Runtime(RuntimeConfig(limits=LimitsConfig(max_processes_per_session=CAP)), registry=REGISTRY)


def planned_issue_paths(doc: Any) -> list[str]:
    """What a runtime refuses before running ``doc``: validation, then its plan (its limits)."""
    try:
        runtime().plan(doc)
    except ManifestError as exc:
        return [issue.path for issue in exc.issues]
    return []


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert load_schema() is schema  # loaded once


def test_corpora_sizes_and_expectations_match_files() -> None:
    assert len(corpus("good")) >= 15
    assert len(corpus("bad")) >= 30
    for folder in ("bad", "semantic"):
        assert sorted(expected_paths(folder)) == [p.stem for p in corpus(folder)]


@pytest.mark.parametrize("path", corpus("good"), ids=lambda p: p.stem)
def test_good_manifests_are_accepted_by_schema_model_and_validator(path: Path) -> None:
    doc = load(path)
    assert VALIDATOR.is_valid(doc), [e.message for e in VALIDATOR.iter_errors(doc)]
    assert model_accepts(doc)
    assert full_issue_paths(doc) == []
    # Also straight from the file, as the CLI reads it.
    Manifest.from_file(path, registry=REGISTRY)


@pytest.mark.parametrize("path", corpus("bad"), ids=lambda p: p.stem)
def test_bad_manifests_are_rejected_by_schema_and_model(path: Path) -> None:
    doc = load(path)
    assert not VALIDATOR.is_valid(doc)
    assert not model_accepts(doc)
    assert expected_paths("bad")[path.stem] in full_issue_paths(doc)


@pytest.mark.parametrize("path", corpus("semantic"), ids=lambda p: p.stem)
def test_semantic_manifests_pass_the_schema_but_not_a_runtime(path: Path) -> None:
    doc = load(path)
    assert VALIDATOR.is_valid(doc), [e.message for e in VALIDATOR.iter_errors(doc)]
    assert model_accepts(doc)
    assert expected_paths("semantic")[path.stem] in planned_issue_paths(doc)


def test_model_fields_mirror_schema_properties() -> None:
    schema = load_schema()
    defs = schema["$defs"]
    caps = defs["capabilities"]["properties"]
    pairs: list[tuple[type[msgspec.Struct], dict[str, Any]]] = [
        (ManifestDoc, schema),
        (MetadataDoc, defs["metadata"]),
        (MultiprocessConfig, defs["multiprocess"]),
        (SupervisionConfig, defs["supervision"]),
        (NodeSpec, defs["node"]),
        (ConnectionSpec, defs["connection"]),
        (Capabilities, defs["capabilities"]),
        (GpuRequirement, caps["gpu"]),
        (CpuRequirement, caps["cpu"]),
    ]
    for struct, part in pairs:
        names = {f.encode_name for f in msgspec.structs.fields(struct)}
        assert names == set(part["properties"]), struct.__name__
        required = {f.encode_name for f in msgspec.structs.fields(struct) if f.required}
        assert required == set(part.get("required", [])), struct.__name__


def test_supervision_defaults_and_bounds_are_the_same_in_schema_model_and_runtime_toml() -> None:
    """The schema documents the defaults a left-out key takes; the model applies them. The
    bounds are one pair of constants for the model and runtime.toml; the schema repeats them."""
    part = load_schema()["$defs"]["supervision"]["properties"]
    defaults = SupervisionConfig()
    assert part["strategy"]["default"] == defaults.strategy == "one_for_one"
    assert part["max_restarts"]["default"] == defaults.max_restarts == 3
    assert part["within_secs"]["default"] == defaults.within_secs == 5.0
    assert (part["max_restarts"]["minimum"], part["max_restarts"]["maximum"]) == (0, MAX_RESTARTS_LIMIT)
    assert (part["within_secs"]["exclusiveMinimum"], part["within_secs"]["maximum"]) == (0, WITHIN_SECS_LIMIT)
    for key, bad in [("max_restarts", MAX_RESTARTS_LIMIT + 1), ("within_secs", WITHIN_SECS_LIMIT + 0.5)]:
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({key: bad}, SupervisionConfig)
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({key: bad}, SupervisionDefaults)
    restart = load_schema()["$defs"]["node"]["properties"]["restart"]["enum"]
    strategies = part["strategy"]["enum"]
    toml_fields = {f.name: f.type for f in msgspec.structs.fields(SupervisionDefaults)}
    assert set(restart) - {None} == set(get_args(toml_fields["restart"]))
    strategy_literal, _none = get_args(toml_fields["strategy"])
    assert set(strategies) == set(get_args(strategy_literal))


def test_integral_float_for_an_integer_field() -> None:
    """JSON Schema counts 5.0 as an integer, msgspec does not. The validator sides with the
    typed model and says so at the path, via its stricter schema check."""
    doc = load(DATA / "good" / "minimal.json")
    doc["metadata"]["multiprocess"] = {"channel_capacity": 5.0}
    assert VALIDATOR.is_valid(doc)  # standard JSON Schema semantics
    assert not _schema_validator().is_valid(doc)
    assert not model_accepts(doc)
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(doc, registry=REGISTRY)
    assert [(i.path, i.message) for i in info.value.issues] == [
        ("metadata.multiprocess.channel_capacity", "must be an integer or null, got the number 5.0")
    ]


# ---------------------------------------------------------------------------------------------
# Property-based agreement on perturbed documents

GOOD_DOCS = [load(p) for p in corpus("good")]

INTERESTING_STRINGS = st.sampled_from(
    ["v1", "v2", "", "in", "n0", "a b", "x\n", "inprocess", "multiprocess", "remote", "cuda", "tpu", "any",
     "x86_64", "auto", "audio", "sound", "host:80", "host", "h:123456", "PassThrough", "one_for_one",
     "rest_for_one", "permanent", "temporary"]
)  # fmt: skip


def leaves(integral_floats: bool) -> st.SearchStrategy[Any]:
    floats = st.floats(allow_nan=False, allow_infinity=False)
    if not integral_floats:
        floats = floats.filter(lambda x: not x.is_integer())
    return (
        st.none()
        | st.booleans()
        | st.sampled_from([-1, 0, 1, 2, 255, 256, 300, 301, 10000, 10001])
        | st.integers()
        | floats
        | st.sampled_from([0.5, 1.5, 300.5, -0.1])
        | INTERESTING_STRINGS
        | st.text(max_size=8)
    )


def json_values(integral_floats: bool) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves(integral_floats),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=6) | INTERESTING_STRINGS, children, max_size=3)
        ),
        max_leaves=8,
    )


def locations(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += locations(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += locations(child, (*prefix, index))
    return found


KNOWN_KEYS = st.sampled_from(
    ["version", "metadata", "nodes", "connections", "name", "description", "multiprocess", "id",
     "node_type", "params", "host", "capabilities", "gpu", "cpu", "memory_gb", "cores", "arch", "type",
     "from", "to", "channel_capacity", "executor_overrides", "runtime_hint", "is_streaming", "extra",
     "supervision", "strategy", "max_restarts", "within_secs", "restart"]
)  # fmt: skip


@st.composite
def perturbed(draw: st.DrawFn, *, integral_floats: bool) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(GOOD_DOCS)))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(locations(doc)))
        if not where:
            doc = draw(json_values(integral_floats)) if draw(st.integers(0, 9)) == 0 else doc
            continue
        parent = doc
        for part in where[:-1]:
            parent = parent[part]
        last = where[-1]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[last] = draw(json_values(integral_floats))
        elif action == "delete":
            del parent[last]
        elif isinstance(parent[last], dict):
            parent[last][draw(KNOWN_KEYS)] = draw(json_values(integral_floats))
        elif isinstance(parent[last], list):
            parent[last].append(draw(json_values(integral_floats)))
    return doc


@settings(max_examples=150, deadline=None)
@given(perturbed(integral_floats=False))
def test_property_schema_and_model_agree(doc: Any) -> None:
    assert VALIDATOR.is_valid(doc) == model_accepts(doc), doc


@settings(max_examples=80, deadline=None)
@given(perturbed(integral_floats=True))
def test_property_strict_schema_check_and_model_agree(doc: Any) -> None:
    # With integral floats anywhere: the validator's own (strict-integer) schema check still agrees.
    assert _schema_validator().is_valid(doc) == model_accepts(doc), doc


@settings(max_examples=60, deadline=None)
@given(perturbed(integral_floats=True))
def test_property_validator_rejects_exactly_when_structure_is_wrong_or_meaning_is(doc: Any) -> None:
    structural_ok = model_accepts(doc)
    paths = full_issue_paths(doc)
    if not structural_ok:
        assert paths, doc  # a structural problem is always reported
