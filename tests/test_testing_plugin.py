"""The pytest plugin's runtime fixtures: make_runtime registers a test's own node classes."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from nursery_pipes import ConfigError, ManifestError, Node, TextFrame
from nursery_pipes.frames import Frame
from nursery_pipes.runtime import Runtime
from nursery_pipes.testing import RuntimeFactory, make_runtime, pytest_plugin

pytest_plugins = ["pytester"]


def manifest(node_type: str) -> dict[str, Any]:
    return {
        "version": "v1",
        "metadata": {"name": "plugin"},
        "nodes": [{"id": "n", "node_type": node_type, "params": {}}],
        "connections": [],
    }


def texts(frames: list[Frame]) -> list[str]:
    return [f.text for f in frames if isinstance(f, TextFrame)]


class WorkerShoutNode(Node[Any]):
    """Defined at the top level of this (importable) test module: may run in a worker."""

    executor = "multiprocess"

    def process(self, frame: Frame) -> Frame:
        assert isinstance(frame, TextFrame)
        return TextFrame(text=frame.text.upper())


async def test_a_class_defined_in_the_test_runs_in_process(make_runtime: RuntimeFactory) -> None:
    class Exclaim(Node[Any]):
        executor = "inprocess"

        def process(self, frame: Frame) -> Frame:
            assert isinstance(frame, TextFrame)
            return TextFrame(text=frame.text + "!")

    runtime = make_runtime(Exclaim)
    assert isinstance(runtime, Runtime)
    assert runtime.registry.info("Exclaim").origin == "test"
    assert "RaiseNode" in runtime.registry  # the fault-injection nodes come with it
    result = await runtime.run_pipeline(manifest("Exclaim"), {"n": TextFrame(text="hi")})
    assert texts(result.outputs["n"]) == ["hi!"]


async def test_a_module_level_class_runs_in_a_worker(make_runtime: RuntimeFactory) -> None:
    runtime = make_runtime(WorkerShoutNode)
    result = await runtime.run_pipeline(manifest("WorkerShoutNode"), {"n": TextFrame(text="hi")})
    assert texts(result.outputs["n"]) == ["HI"]
    assert result.assignments["n"].executor == "multiprocess"


def test_a_class_defined_in_the_test_cannot_go_to_a_worker(make_runtime: RuntimeFactory) -> None:
    class LocalNode(Node[Any]):  # no executor: the seed rule picks a worker for "*Node" names...
        def process(self, frame: Frame) -> Frame:
            return frame

    runtime = make_runtime(LocalNode)
    assignment = runtime.plan(manifest("LocalNode")).assignments["n"]
    assert assignment.executor == "inprocess"  # ...which cannot import it: in-process instead
    assert "is not importable by a worker process" in assignment.reason
    # asked for explicitly, it is an error naming the problem
    doc = manifest("LocalNode")
    doc["metadata"]["multiprocess"] = {"executor_overrides": {"n": "multiprocess"}}
    with pytest.raises(ManifestError, match="is not importable by a worker process") as info:
        runtime.plan(doc)
    assert "define it in a module, not in __main__ or a function" in str(info.value)


def test_each_runtime_sees_only_its_own_classes(
    make_runtime: RuntimeFactory, testing_runtime: Runtime
) -> None:
    mine = make_runtime(WorkerShoutNode)
    assert "WorkerShoutNode" in mine.registry
    assert "WorkerShoutNode" not in make_runtime().registry
    assert "WorkerShoutNode" not in testing_runtime.registry
    assert "RaiseNode" in testing_runtime.registry


def test_sections_configure_the_runtime() -> None:
    runtime = make_runtime(multiprocess={"grace_period_secs": 0.5}, limits={"max_sessions": 2})
    assert runtime.config.multiprocess.grace_period_secs == 0.5
    assert runtime.config.limits.max_sessions == 2
    assert runtime.config.nodes.testing is True
    plain = make_runtime(nodes={"testing": False})
    assert "RaiseNode" not in plain.registry
    with pytest.raises(ConfigError, match=r"make_runtime: .*unknown field `max_session`.*\$\.limits"):
        make_runtime(limits={"max_session": 2})
    with pytest.raises(ConfigError, match=r"make_runtime: .*unknown field `limit`"):
        make_runtime(limit={"max_sessions": 2})


def test_the_fixture_is_the_function(make_runtime: RuntimeFactory) -> None:
    from nursery_pipes import testing

    assert make_runtime is testing.make_runtime


def _docstring_example() -> str:
    doc = pytest_plugin.__doc__
    assert doc is not None
    return textwrap.dedent(doc.split("Example::", 1)[1])


def test_the_documented_example_passes_in_a_users_project(pytester: pytest.Pytester) -> None:
    """What the plugin's docstring shows, run as a user's test suite would run it."""
    pytester.makeconftest('pytest_plugins = ["nursery_pipes.testing.pytest_plugin"]\n')
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(test_user=_docstring_example())
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
