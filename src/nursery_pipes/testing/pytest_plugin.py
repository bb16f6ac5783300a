"""pytest fixtures for testing nursery_pipes nodes and pipelines.

Enable in a ``conftest.py`` with ``pytest_plugins = ["nursery_pipes.testing.pytest_plugin"]``
(and pytest-trio for async tests). Fixtures:

- ``make_runtime`` — a factory: ``make_runtime(MyNode, ..., **sections)`` gives a new
  :class:`~nursery_pipes.Runtime` whose own registry holds your node classes and the
  fault-injection nodes; keyword arguments are runtime.toml sections
  (``multiprocess={"grace_period_secs": 0.5}``; ``nodes={"testing": False}`` leaves the
  fault-injection nodes out). See :func:`nursery_pipes.testing.make_runtime`.
- ``testing_runtime`` — ``make_runtime()``: a runtime with the fault-injection nodes;
- ``no_leaks`` — fails the test if it left child processes, threads, /dev/shm
  entries or FIFO directories behind (and cleans them up);
- ``autojump_clock`` — a trio ``MockClock`` that skips idle time, for timeout
  tests that must not really wait (pass it to ``@pytest.mark.trio`` tests by
  requesting it, as pytest-trio does for a fixture named ``autojump_clock``).
- ``start_supervisor`` — (trio tests) ``await start_supervisor(specs, policy)`` runs a
  :class:`~nursery_pipes.testing.SupervisorHarness` in the background of the test, once
  every child has started, and stops it after the test: inject faults into its children
  and assert on its history (example in :mod:`nursery_pipes.testing._supervision`).

Every runtime these fixtures make has a registry of its own: a node class a test
registers is never seen by another test. (``@register_node`` is different: it
declares a class for the whole process, like an installed entry point — use it in
your package, not in tests.)

Node classes defined in a test module work in-process; a class defined inside a
test function has no import path, so it can only run in-process — declare
``executor = "inprocess"``, or routing sends a name ending in ``Node`` to a worker
process and the plan refuses it. A node that runs in a worker process must be
defined at the top level of an importable module (a test module is fine).

Example::

    import trio
    from nursery_pipes import Node, TextFrame

    MANIFEST = {
        "version": "v1",
        "metadata": {"name": "exclaim"},
        "nodes": [{"id": "x", "node_type": "Exclaim", "params": {}}],
        "connections": [],
    }

    class Exclaim(Node):
        executor = "inprocess"

        def process(self, frame):
            return TextFrame(text=frame.text + "!")

    async def test_exclaim(make_runtime):
        runtime = make_runtime(Exclaim)
        result = await runtime.run_pipeline(MANIFEST, {"x": TextFrame(text="hi")})
        assert result.outputs["x"][0].text == "hi!"
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
import trio.testing

from ..runtime import FAIL_FAST, ChildSpec, Runtime, SupervisionPolicy, Supervisor
from . import _factory
from ._factory import RuntimeFactory
from ._leaks import find_leaks, snapshot
from ._supervision import SupervisorHarness, SupervisorStarter

__all__ = ["autojump_clock", "make_runtime", "no_leaks", "start_supervisor", "testing_runtime"]


@pytest.fixture
def no_leaks() -> Iterator[None]:
    before = snapshot()
    yield
    problems = find_leaks(before)
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def make_runtime() -> RuntimeFactory:
    return _factory.make_runtime


@pytest.fixture
def testing_runtime(make_runtime: RuntimeFactory) -> Runtime:
    return make_runtime()


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
async def start_supervisor(nursery: trio.Nursery) -> SupervisorStarter:
    # pytest-trio's ``nursery`` fixture, as requested by this fixture: it lives until this
    # fixture's teardown (after the test), which cancels the supervisor and its children.
    async def start(
        specs: Sequence[ChildSpec], policy: SupervisionPolicy | Supervisor = FAIL_FAST
    ) -> SupervisorHarness:
        harness = SupervisorHarness(policy)
        await nursery.start(harness.run, specs)
        return harness

    return start
