"""Project-wide test setup: every test is checked for leaked processes, threads and /dev/shm entries."""

from __future__ import annotations

import pytest

pytest_plugins = ["nursery_pipes.testing.pytest_plugin"]


@pytest.fixture(autouse=True)
def _no_leaks(no_leaks: None) -> None:
    """Every test of this suite runs under the leak check (see nursery_pipes.testing)."""
