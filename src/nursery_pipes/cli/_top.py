"""``nursery-pipes top --server HOST:PORT``: a live view of a server's sessions, nodes and workers,
from its Monitor service (``nursery_pipes.v1.Monitor``, Watch).

- On a terminal, one screen (rich Live, the alternate screen like top) redrawn at each
  snapshot; otherwise (a pipe, a file) one rendering after another, like ``top -b``.
- ``--once``: two snapshots ``--interval`` apart (so the rates are real), one rendering, exit 0.
- ``--json``: one JSON object per snapshot and line (with ``--once``: one).
- The server cannot be watched at the start (unreachable, no Monitor, wrong token, no answer):
  one line saying why, exit 2. Lost while watching: said on screen, and watched again with a
  growing pause (0.5 s … 5 s) until it answers or Ctrl-C, which exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.rule import Rule

from .._errors import NurseryPipesError
from ..client import Client
from ._topview import NO_RATES, Rates, rates, render, to_json

__all__ = ["BACKOFF_SECS", "run_top"]

MONITOR = "nursery_pipes.v1.Monitor"
BACKOFF_SECS = (0.5, 1.0, 2.0, 4.0, 5.0)
"""Pauses before watching again after the server was lost (the last one repeats)."""


class CannotWatch(Exception):
    """Why the server cannot be watched (one line for the user)."""


class _Silent(Exception):
    """The server sent no snapshot for several intervals."""


def _why(exc: BaseException, address: str) -> str:
    if isinstance(exc, GRPCError):
        if exc.status is Status.UNIMPLEMENTED and "[monitor]" in (exc.message or ""):
            return f"{address}: {exc.message}"  # a nursery_pipes server with its monitor off
        # Other servers: UNIMPLEMENTED, or from grpclib's the UNKNOWN its client makes of that.
        if exc.status is Status.UNIMPLEMENTED or exc.message == "Missing content-type header":
            return f"{address} does not serve {MONITOR} (not a nursery_pipes server, or an older one)"
        if exc.status is Status.UNAUTHENTICATED:
            return f"{address} refused the call: {exc.message} — pass --token-env VAR"
        return f"{address} ended the call with {exc.status.name}: {exc.message or ''}".rstrip(": ")
    if isinstance(exc, StreamTerminatedError):
        return f"lost the connection to {address}: {exc}"
    if isinstance(exc, _Silent):
        return f"no answer from {address} within {exc} s"
    if isinstance(exc, OSError):
        why = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)
        return f"cannot reach server {address}: {why}"
    return f"{address}: {exc!r}"


_LOST = (GRPCError, StreamTerminatedError, OSError, _Silent)


async def _snapshots(address: str, token: str | None, interval: float) -> AsyncGenerator[Any, None]:
    """One Watch call's snapshots; a silent server (no snapshot within a few intervals) is a
    :class:`_Silent`, whatever else goes wrong is the client's error (see :data:`_LOST`)."""
    patience = max(5.0, 3 * interval)
    async with Client(address, token=token) as client, aclosing(client.watch(interval)) as watch:
        while True:
            try:
                async with asyncio.timeout(patience):
                    snapshot = await anext(watch)
            except StopAsyncIteration:
                raise StreamTerminatedError("the server ended the watch") from None
            except TimeoutError:
                raise _Silent(f"{patience:g}") from None
            yield snapshot


def run_top(
    *,
    address: str,
    interval: float,
    once: bool,
    as_json: bool,
    token: str | None,
    console: Console,
    out: Console,
) -> int:
    """Exit code: 0 (Ctrl-C, or --once done), 1 (--once: lost the server between its two
    snapshots), 2 (the server cannot be watched)."""
    try:
        Client(address)  # checks the address (host:port); connects nowhere
    except NurseryPipesError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(file=out.file, width=max(out.width, 160))  # a pipe or file: don't cut columns
    try:
        return asyncio.run(_top(address, interval, once, as_json, token, console, out))
    except KeyboardInterrupt:  # Ctrl-C: the way out of a live view
        return 0
    except CannotWatch as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2


async def _top(
    address: str,
    interval: float,
    once: bool,
    as_json: bool,
    token: str | None,
    console: Console,
    out: Console,
) -> int:
    watch = _snapshots(address, token, interval)
    try:
        first = await anext(watch)
    except _LOST as exc:
        raise CannotWatch(_why(exc, address)) from None
    if once:
        try:
            second = await anext(watch)
        except _LOST as exc:
            await watch.aclose()
            console.print(
                f"[bold red]error:[/] {escape(_why(exc, address))}", highlight=False, soft_wrap=True
            )
            return 1
        await watch.aclose()
        _show(out, second, rates(first, second), address, as_json)
        return 0
    view = _View(out, address, as_json)
    with view:
        view.show(first, NO_RATES)
        previous = first
        pause = 0
        task = asyncio.current_task()
        assert task is not None
        baseline = task.cancelling()
        while True:
            why = "the server ended the watch"  # (_snapshots raises instead: never seen)
            try:
                async for snapshot in watch:
                    view.show(snapshot, rates(previous, snapshot))
                    previous, pause = snapshot, 0
            except _LOST as exc:
                why = _why(exc, address)
                # grpclib raises "Connection lost" in the waiting task by cancelling it
                # (grpclib.utils.Wrapper) and never uncancels it: asyncio.run would then take
                # Ctrl-C for a plain cancellation and end with a CancelledError traceback.
                while task.cancelling() > baseline:
                    task.uncancel()
            finally:
                await watch.aclose()
            delay = BACKOFF_SECS[min(pause, len(BACKOFF_SECS) - 1)]
            pause += 1
            view.show(previous, NO_RATES, status=f"{why} — watching again in {delay:g} s (Ctrl-C to quit)")
            await asyncio.sleep(delay)
            watch = _snapshots(address, token, interval)


def _show(out: Console, snapshot: Any, rates_: Rates, address: str, as_json: bool, status: str = "") -> None:
    if as_json:  # a lost server is a line of its own, without the stale snapshot
        doc = {"status": status} if status else to_json(snapshot, rates_)
        out.print(json.dumps(doc), soft_wrap=True, highlight=False, markup=False)
    else:
        out.print(render(snapshot, rates_, address=address, status=status))


class _View:
    """Where renderings go: a Live screen on a terminal, else one after another."""

    def __init__(self, out: Console, address: str, as_json: bool) -> None:
        self._out = out
        self._address = address
        self._json = as_json
        self._live: Live | None = None
        if out.is_terminal and not as_json:
            self._live = Live(console=out, screen=True, auto_refresh=False, redirect_stderr=False)

    def __enter__(self) -> _View:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def show(self, snapshot: Any, rates_: Rates, *, status: str = "") -> None:
        if self._live is not None:
            screen: RenderableType = render(snapshot, rates_, address=self._address, status=status)
            self._live.update(screen, refresh=True)
            return
        if not self._json:
            self._out.print(Rule(style="dim"))
        _show(self._out, snapshot, rates_, self._address, self._json, status)
        self._out.file.flush()
