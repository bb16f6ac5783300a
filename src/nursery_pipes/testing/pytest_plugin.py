"""pytest fixtures for testing nursery_pipes nodes and pipelines.

Enable in a ``conftest.py`` with ``pytest_plugins = ["nursery_pipes.testing.pytest_plugin"]``
(and pytest-trio for async tests). Fixtures:

- ``no_leaks`` — fails the test if it left child processes, threads, /dev/shm
  entries or FIFO directories behind (and cleans them up);
- ``testing_runtime`` — a :class:`~nursery_pipes.Runtime` with the
  fault-injection nodes of :mod:`nursery_pipes.testing` registered;
- ``autojump_clock`` — a trio ``MockClock`` that skips idle time, for timeout
  tests that must not really wait (pass it to ``@pytest.mark.trio`` tests by
  requesting it, as pytest-trio does for a fixture named ``autojump_clock``).

Example::

    async def test_my_node(testing_runtime):
        result = await testing_runtime.run_pipeline(MANIFEST, {"in": frames})
        assert result.outputs["out"] == expected
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio.testing

from .._config import NodesConfig, RuntimeConfig
from ..runtime import Runtime
from ._leaks import find_leaks, snapshot

__all__ = ["autojump_clock", "no_leaks", "testing_runtime"]


@pytest.fixture
def no_leaks() -> Iterator[None]:
    before = snapshot()
    yield
    problems = find_leaks(before)
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def testing_runtime() -> Runtime:
    return Runtime(RuntimeConfig(nodes=NodesConfig(testing=True)))


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)
