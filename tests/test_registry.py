"""The node registry: registration rules, clashes, configured modules and entry points."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

from nursery_pipes._api import default_runtime, run_pipeline
from nursery_pipes._config import load_config
from nursery_pipes._errors import ManifestError, RegistryError
from nursery_pipes.frames import Frame, FrameKind, TextFrame
from nursery_pipes.nodes import NodeInfo, NodeRegistry, NoParams, Params, register_node
from nursery_pipes.nodes import _registry as registry_module
from nursery_pipes.nodes._base import Node
from nursery_pipes.nodes._registry import ENTRY_POINT_GROUP, builtin_registry, default_registry, load_ref
from nursery_pipes.runtime._runtime import Runtime, registry_from_config


class GainParams(Params, kw_only=True):
    gain: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    label: str
    tags: list[str] = msgspec.field(default_factory=list)


class Gain(Node[GainParams]):
    """Multiply audio by a constant.

    Second paragraph is not part of the description.
    """

    accepts = frozenset({FrameKind.AUDIO})
    produces = frozenset({FrameKind.AUDIO, FrameKind.JSON})
    executor = "inprocess"

    def process(self, frame: Frame) -> Frame:
        return frame


class Other(Node[Any]):
    node_type = "Gain"  # clashes with Gain's name

    def process(self, frame: Frame) -> Frame:
        return frame


class Plain(Node[Any]):
    def process(self, frame: Frame) -> Frame:
        return frame


def test_register_and_look_up() -> None:
    registry = NodeRegistry()
    assert registry.register(Gain) is Gain
    registry.register(Plain, name="Alias", origin="tests")
    assert "Gain" in registry
    assert "Nope" not in registry
    assert registry.get("Gain") is Gain
    assert registry.get("Nope") is None
    assert registry["Alias"] is Plain
    assert list(registry) == registry.names() == ["Alias", "Gain"]
    assert len(registry) == 2
    with pytest.raises(RegistryError, match="unknown node_type 'Gainn' — did you mean 'Gain'"):
        registry["Gainn"]


def test_params_come_from_the_generic_argument() -> None:
    assert Gain.Params is GainParams
    assert Plain.Params is NoParams
    assert Gain.node_type == "Gain"
    assert Other.node_type == "Gain"
    assert Gain.description() == "Multiply audio by a constant."
    assert Plain.description() == ""


def test_clash_names_both_classes() -> None:
    registry = NodeRegistry()
    registry.register(Gain, origin="first place")
    registry.register(Gain)  # the same class again is fine
    with pytest.raises(RegistryError) as info:
        registry.register(Other)
    message = str(info.value)
    assert f"node type 'Gain' is already registered by {__name__}:Gain" in message
    assert "(from code)" in message
    assert f"cannot register {__name__}:Other under the same name" in message
    registry.register(Other, replace=True, origin="override")
    assert registry["Gain"] is Other
    assert registry.info("Gain").origin == "override"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: 42, "42 is not a subclass of nursery_pipes.Node"),
        (lambda: dict, "is not a subclass of nursery_pipes.Node"),
        (lambda: type("NoProcess", (Node,), {}), "NoProcess does not implement process()"),
        (
            lambda: type("BadExec", (Plain,), {"executor": "GPU 1"}),
            "BadExec.executor is 'GPU 1'; expected an executor name (inprocess, thread, multiprocess, "
            "or one a package registers) or None",
        ),
        (
            lambda: type("BadParams", (Plain,), {"Params": dict}),
            "BadParams.Params must be a subclass of nursery_pipes.Params",
        ),
        (
            lambda: type("StructParams", (Plain,), {"Params": type("S", (msgspec.Struct,), {})}),
            "StructParams.Params must be a subclass of nursery_pipes.Params",
        ),
        (
            lambda: type("Unnamed", (Plain,), {"node_type": ""}),
            "Unnamed.node_type must be a non-empty string",
        ),
    ],
)
def test_malformed_classes_are_rejected(make: Any, message: str) -> None:
    cls = make()
    with pytest.raises(RegistryError) as info:
        NodeRegistry().register(cls)
    assert message in str(info.value)
    with pytest.raises(RegistryError):
        register_node(cls)


def test_suggest() -> None:
    registry = builtin_registry()
    assert registry.suggest("PasThrough") == "PassThrough"
    assert registry.suggest("audiochunkernode") == "AudioChunkerNode"
    assert registry.suggest("ECHO") == "Echo"  # too short for difflib: the case-insensitive fallback
    assert registry.suggest("QuantumTeleporter") is None
    assert registry.unknown_message("QuantumTeleporter") == (
        "unknown node_type 'QuantumTeleporter' (see `nursery-pipes nodes` for the registered types)"
    )


def test_info_rows() -> None:
    registry = NodeRegistry()
    registry.register(Gain, origin="tests")
    registry.register(Plain)
    info = registry.info("Gain")
    assert info == NodeInfo(
        node_type="Gain",
        import_ref=f"{__name__}:Gain",
        executor="inprocess",
        accepts=("audio",),
        produces=("audio", "json"),
        params=(
            {"name": "gain", "type": "float ≥ 0", "default": 1.0, "required": False},
            {"name": "label", "type": "str", "default": None, "required": True},
            {"name": "tags", "type": "list[str]", "default": [], "required": False},
        ),
        description="Multiply audio by a constant.",
        origin="tests",
    )
    plain = registry.info("Plain")
    assert plain.executor is None
    assert plain.params == ()
    assert len(plain.accepts) == len(FrameKind)
    assert load_ref(info.import_ref) is Gain


def test_builtins_and_remotemedia_aliases() -> None:
    registry = builtin_registry()
    for name in (
        "PassThrough",
        "Echo",
        "CalculatorNode",
        "FastResampleNode",
        "AudioResampleNode",
        "EnergyVADNode",
    ):
        assert name in registry
    assert registry["FastResampleNode"] is registry["AudioResampleNode"]
    assert registry.info("FastResampleNode").origin == "built-in (remotemedia name)"
    assert registry.info("PassThrough").origin == "built-in"


def test_copy_and_update() -> None:
    a = NodeRegistry()
    a.register(Gain)
    b = a.copy()
    b.register(Plain)
    assert "Plain" not in a
    c = NodeRegistry()
    c.update(b)
    assert c.names() == ["Gain", "Plain"]
    d = NodeRegistry()
    d.register(Other)
    with pytest.raises(RegistryError):
        d.update(a)


# ---------------------------------------------------------------------------------------------
# Modules named in configuration


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for throwaway node modules (removed from sys.modules after)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("np_test_nodes_"):
            del sys.modules[name]


def write_module(directory: Path, source: str) -> str:
    name = f"np_test_nodes_{uuid.uuid4().hex[:10]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


GOOD_MODULE = """
    from nursery_pipes.frames import Frame
    from nursery_pipes.nodes import Node, Params
    from nursery_pipes.nodes.builtin import PassThrough  # imported, not defined here: not registered


    class UpperParams(Params, kw_only=True):
        times: int = 1


    class Upper(Node[UpperParams]):
        '''Upper-case text.'''

        def process(self, frame: Frame) -> Frame:
            return frame


    class _Base(Node):
        abstract = True  # a helper base, not a node type


    class Lower(_Base):
        node_type = "LowerCaseNode"

        def process(self, frame: Frame) -> Frame:
            return frame


    def helper():
        return 1
"""


def test_load_module_registers_its_node_classes(module_dir: Path) -> None:
    name = write_module(module_dir, GOOD_MODULE)
    registry = NodeRegistry()
    added = registry.load_module(name)
    assert sorted(added) == ["LowerCaseNode", "Upper"]
    assert registry.names() == ["LowerCaseNode", "Upper"]
    assert "PassThrough" not in registry
    assert registry.info("Upper").origin == f"module {name}"
    assert registry.info("Upper").params[0]["name"] == "times"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise RuntimeError('broken at import')", "cannot import node module '{name}': broken at import"),
        ("def oops(:\n    pass", "cannot import node module '{name}': "),
        ("import no_such_dependency_xyz", "No module named 'no_such_dependency_xyz'"),
        ("X = 1", "node module '{name}' defines no Node subclasses"),
        (
            "from nursery_pipes.nodes import Node\nclass Lazy(Node):\n    pass",
            "{name}:Lazy does not implement process()",
        ),
    ],
)
def test_load_module_failures(module_dir: Path, source: str, message: str) -> None:
    name = write_module(module_dir, source)
    with pytest.raises(RegistryError) as info:
        NodeRegistry().load_module(name)
    assert message.format(name=name) in str(info.value)


def test_load_module_that_does_not_exist() -> None:
    with pytest.raises(RegistryError, match="cannot import node module 'np_no_such_module_abc'"):
        NodeRegistry().load_module("np_no_such_module_abc")


def test_load_module_clash_with_builtin(module_dir: Path) -> None:
    name = write_module(
        module_dir,
        """
        from nursery_pipes.nodes import Node

        class PassThrough(Node):
            def process(self, frame):
                return frame
        """,
    )
    with pytest.raises(RegistryError) as info:
        builtin_registry().load_module(name)
    assert "nursery_pipes.nodes.builtin._basic:PassThrough" in str(info.value)
    assert f"{name}:PassThrough" in str(info.value)


def test_registry_from_config_loads_modules_and_testing_nodes(module_dir: Path) -> None:
    name = write_module(module_dir, GOOD_MODULE)
    config = load_config(text=f'[nodes]\nmodules = ["{name}"]\nentry_points = false\ntesting = true')
    registry = registry_from_config(config)
    assert {"Upper", "LowerCaseNode", "RaiseNode", "SleepNode", "PassThrough"} <= set(registry)
    assert registry.info("RaiseNode").origin == "nursery_pipes.testing"
    plain = registry_from_config(load_config(text="[nodes]\nentry_points = false"))
    assert "RaiseNode" not in plain


# ---------------------------------------------------------------------------------------------
# Entry points (the nursery_pipes.nodes group), simulated


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, *specs: tuple[str, str]) -> list[str]:
    calls: list[str] = []

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        calls.append(group)
        return [importlib.metadata.EntryPoint(name=n, value=v, group=group) for n, v in specs]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return calls


def test_entry_points_register_classes_and_modules(module_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cls_module = write_module(module_dir, GOOD_MODULE)
    whole_module = write_module(
        module_dir,
        """
        from nursery_pipes.nodes import Node

        class Tts(Node):
            def process(self, frame):
                return frame
        """,
    )
    calls = fake_entry_points(monkeypatch, ("upper", f"{cls_module}:Upper"), ("tts", whole_module))
    registry = NodeRegistry()
    added = registry.load_entry_points()
    assert calls == [ENTRY_POINT_GROUP]
    assert added == ["Upper", "Tts"]
    assert registry.info("Upper").origin == "entry point upper"
    assert "LowerCaseNode" not in registry  # only the class the entry point names


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "np_missing_dist_module:Node",
            "entry point 'bad' of ? failed to load: No module named 'np_missing_dist_module'",
        ),
        (
            "nursery_pipes.frames:TextFrame",
            "entry point 'bad' (nursery_pipes.frames:TextFrame) is not a Node subclass or module",
        ),
        ("nursery_pipes._version:__version__", "is not a Node subclass or module"),
    ],
)
def test_entry_point_failures(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    fake_entry_points(monkeypatch, ("bad", value))
    with pytest.raises(RegistryError) as info:
        NodeRegistry().load_entry_points()
    assert message in str(info.value)


def test_entry_points_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_entry_points(monkeypatch, ("bad", "np_missing_dist_module:Node"))
    registry_from_config(load_config(text="[nodes]\nentry_points = false"))
    assert calls == []
    with pytest.raises(RegistryError):
        registry_from_config(load_config())


# ---------------------------------------------------------------------------------------------
# Which runtime sees what: each Runtime its own registry; @register_node and the default runtime


@pytest.fixture
def declarations(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process with no @register_node declarations and no default runtime yet (restored after)."""
    monkeypatch.setattr(registry_module, "_DECLARED", {})
    monkeypatch.setattr(registry_module, "_DEFAULT", None)
    default_runtime.cache_clear()
    yield
    default_runtime.cache_clear()  # the next one is built on the restored default registry


def shout_manifest(node_type: str) -> dict[str, Any]:
    return {
        "version": "v1",
        "metadata": {"name": "scope"},
        "nodes": [{"id": "n", "node_type": node_type, "params": {}}],
        "connections": [],
    }


class Shout(Node[Any]):
    executor = "inprocess"

    def process(self, frame: Frame) -> Frame:
        assert isinstance(frame, TextFrame)
        return TextFrame(text=frame.text.upper())


def test_each_runtime_has_its_own_registry(declarations: None) -> None:
    a, b = Runtime(), Runtime()
    configured = Runtime(load_config(text="[nodes]\nentry_points = false"))
    a.registry.register(Shout)
    assert "Shout" in a.registry
    assert "Shout" not in b.registry
    assert "Shout" not in configured.registry
    assert "Shout" not in default_runtime().registry
    assert "Shout" not in default_registry()
    with pytest.raises(ManifestError, match="unknown node_type 'Shout'"):
        b.manifest(shout_manifest("Shout"))


async def test_register_node_reaches_later_runtimes_and_the_default_runtime(declarations: None) -> None:
    mine = Runtime()
    default = default_runtime()
    manifest = shout_manifest("Late")

    @register_node
    class Late(Shout):
        pass

    # A runtime that exists keeps the node types it was built with ...
    assert "Late" not in mine.registry
    # ... the module-level API follows the process's declarations, whenever they happen ...
    assert default_runtime() is default
    assert default.registry["Late"] is Late
    assert default_registry().info("Late").origin == "@register_node"
    result = await run_pipeline(manifest, {"n": TextFrame(text="late")})
    assert [f.text for f in result.outputs["n"] if isinstance(f, TextFrame)] == ["LATE"]
    # ... and every runtime built afterwards has them, whatever its config.
    assert Runtime().registry["Late"] is Late
    assert Runtime(load_config(text="[nodes]\nentry_points = false")).registry["Late"] is Late
    assert registry_module.declared_nodes() == (Late,)


def test_declaring_a_node_type_again_replaces_it(declarations: None) -> None:
    """A module reloaded or a notebook cell run twice: the latest class wins, everywhere."""

    def declare() -> type[Node[Any]]:
        @register_node
        class Twice(Shout):
            pass

        return Twice

    first = declare()
    assert default_registry()["Twice"] is first
    second = declare()
    assert second is not first
    assert default_registry()["Twice"] is second
    assert Runtime().registry["Twice"] is second
    assert registry_module.declared_nodes() == (second,)


def test_register_node_refuses_a_builtin_name_at_the_decorator(declarations: None) -> None:
    for default_exists in (False, True):
        if default_exists:
            default_registry()
        with pytest.raises(RegistryError) as info:

            @register_node
            class PassThrough(Shout):
                pass

        assert "nursery_pipes.nodes.builtin._basic:PassThrough" in str(info.value)
        assert "PassThrough" in str(info.value)
        assert registry_module.declared_nodes() == ()  # nothing recorded: later runtimes still build
        assert Runtime().registry["PassThrough"] is builtin_registry()["PassThrough"]


def test_a_declared_node_clashing_with_a_configured_module_names_both(
    declarations: None, module_dir: Path
) -> None:
    name = write_module(module_dir, GOOD_MODULE)

    @register_node
    class Upper(Shout):
        pass

    with pytest.raises(RegistryError) as info:
        Runtime(load_config(text=f'[nodes]\nmodules = ["{name}"]'))
    assert f"{name}:Upper" in str(info.value)
    assert "Upper" in str(info.value)


def test_a_module_that_declares_its_nodes_is_registered_once(declarations: None, module_dir: Path) -> None:
    name = write_module(
        module_dir,
        """
        from nursery_pipes.nodes import Node, register_node

        @register_node
        class Declared(Node):
            def process(self, frame):
                return frame
        """,
    )
    importlib.import_module(name)  # declares Declared
    registry = Runtime(load_config(text=f'[nodes]\nmodules = ["{name}"]')).registry
    assert registry.info("Declared").origin == f"module {name}"


README_MODULE = """
    import dataclasses

    import numpy as np
    import trio

    from nursery_pipes import AudioFrame, FrameKind, Node, Params, register_node, run_pipeline

    class GainParams(Params):
        gain: float = 1.0

    @register_node
    class MyGainNode(Node[GainParams]):
        '''Multiply audio by a constant.'''
        accepts = produces = frozenset({FrameKind.AUDIO})
        executor = "multiprocess"

        def process(self, frame):
            return dataclasses.replace(frame, samples=frame.samples * self.params.gain)

    MANIFEST = {
        "version": "v1",
        "metadata": {"name": "gain"},
        "nodes": [{"id": "gain", "node_type": "MyGainNode", "params": {"gain": 2.0}}],
        "connections": [],
    }

    async def main():
        audio = AudioFrame.from_array(np.ones(4, dtype=np.float32), sample_rate=8000)
        result = await run_pipeline(MANIFEST, {"gain": audio})
        return result.outputs["gain"][0].samples.ravel().tolist(), result.assignments["gain"].executor
"""


async def test_the_readme_flow_declare_then_run_with_the_module_level_api(
    declarations: None, module_dir: Path
) -> None:
    """README "Writing a node": a module declares a node (in a worker process) and runs a
    pipeline with the module-level API — the default runtime already existed before."""
    default_runtime()
    module = importlib.import_module(write_module(module_dir, README_MODULE))
    samples, executor = await module.main()
    assert samples == [2.0, 2.0, 2.0, 2.0]
    assert executor == "multiprocess"
