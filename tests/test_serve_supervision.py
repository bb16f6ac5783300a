"""The top of the server's supervision tree (docs/design.md §4): ``nursery-pipes serve``
brings its service — a fresh runtime and gRPC server — back when it crashes after listening,
gives up (exit 1) past its restart intensity, and a signal still drains or stops it.

The crash injected is a bug in the runtime's shared part: its warm-pool keeper raises, which
ends the runtime (a warm-up worker dying is not such a crash: the keeper absorbs that, see
tests/test_multiprocess.py). ``_serve`` runs in this process (trio's signal handling needs the
main thread, which pytest-trio has), so the fault is injected by replacing the keeper.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio_asyncio
from service_fixtures import UPPER, Announcements

from nursery_pipes import RuntimeConfig, TextFrame
from nursery_pipes._config import MultiprocessDefaults, ServerConfig
from nursery_pipes._errors import ConfigError
from nursery_pipes.cli import _serve
from nursery_pipes.client import Client
from nursery_pipes.executors._pool import WorkerPool

pytestmark = pytest.mark.timeout(60)


def config() -> RuntimeConfig:
    return RuntimeConfig(
        server=ServerConfig(listen="127.0.0.1:0", drain_timeout_secs=2),
        multiprocess=MultiprocessDefaults(warm_pool=1, grace_period_secs=0.2),
    )


def crashing_keeper(monkeypatch: pytest.MonkeyPatch, crash: Callable[[int], trio.Event | None]) -> list[int]:
    """Replace the warm-pool keeper: life ``n`` (0-based) of it crashes once ``crash(n)`` is set
    (never, if None). Returns the list of lives started."""
    original = WorkerPool._keep_warm
    lives: list[int] = []

    async def keep_warm(self: WorkerPool) -> None:
        life = len(lives)
        lives.append(life)
        event = crash(life)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(original, self)
            if event is None:
                return
            await event.wait()
            raise RuntimeError(f"keeper bug in life {life} (injected)")

    monkeypatch.setattr(WorkerPool, "_keep_warm", keep_warm)
    return lives


async def shout(address: str) -> str:
    async def call() -> Any:
        async with Client(address) as client:
            return await client.execute(UPPER, {"up": TextFrame(text="still here")})

    async with trio_asyncio.open_loop():
        result = await trio_asyncio.aio_as_trio(call)()
    return str(result.outputs["up"].text)


def address(line: str) -> str:
    return line.rsplit(" ", 1)[1]


async def test_a_crashed_service_comes_back_and_still_drains_on_sigterm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crash_first = trio.Event()
    lives = crashing_keeper(monkeypatch, lambda life: crash_first if life == 0 else None)
    announced = Announcements()
    code: list[int] = []

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _serve_into(code, announced))
        first = address(await announced.wait_for("listening on"))
        assert await shout(first) == "STILL HERE"

        crash_first.set()
        failed = await announced.wait_for("service failed")
        second = address(await announced.wait_for("listening on", count=2))
        assert failed == (
            "service failed: one_for_one restarts service (restart 1 of at most 3 within 60 s); it failed"
            " with RuntimeError('keeper bug in life 0 (injected)')"
        )
        assert await shout(second) == "STILL HERE"  # the new life serves

        os.kill(os.getpid(), signal.SIGTERM)
    assert code == [0]
    assert lives == [0, 1]
    assert "SIGTERM: draining" in " ".join(announced.lines)
    assert announced.lines[-1] == "stopped"


async def test_a_service_that_keeps_crashing_gives_up_with_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    at_once = trio.Event()
    at_once.set()
    lives = crashing_keeper(monkeypatch, lambda life: at_once)  # even before it listens
    announced = Announcements()

    code = await _serve._serve(config(), announced)

    assert code == 1
    assert lives == [0, 1, 2, 3]  # the first life and SERVICE_RESTARTS more
    assert sum("; it failed with RuntimeError" in line for line in announced.lines) == 4
    assert "giving up" in announced.lines[-1]
    assert "keeper bug in life 3 (injected)" in announced.lines[-1]


async def test_a_startup_failure_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """An address that cannot be bound is the user's mistake: one clear error, no restarts."""
    lives = crashing_keeper(monkeypatch, lambda life: None)
    taken = trio.socket.socket()
    await taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    announced = Announcements()
    bad = RuntimeConfig(server=ServerConfig(listen=f"127.0.0.1:{port}"))
    try:
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            await _serve._serve(bad, announced)
    finally:
        taken.close()
    assert lives == []  # no warm pool configured: the keeper never ran
    assert not any("service failed" in line for line in announced.lines)


async def _serve_into(code: list[int], announce: Announcements) -> None:
    code.append(await _serve._serve(config(), announce))
