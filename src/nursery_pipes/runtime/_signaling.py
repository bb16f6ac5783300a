"""Routing a session's control signals to their target nodes, and what the targets report.

A signal comes from the session's user (:meth:`Session.signal`) or from a node
(``NodeContext.signal``, from any thread or a worker process's events). The router numbers
it, checks its targets, and hands it to each target beside its frames, never behind them:

- a node placed in the supervisor gets it in its :class:`~nursery_pipes.executors.Mailbox`,
  which its pump reads before each frame and each output;
- a node in a worker process gets it through its control ring, and the worker is woken
  if it sleeps on an input (``ShmTransport.signal``).

Each target answers once it ran ``on_signal``: :class:`SignalHandled` (what it dropped, and
the frame it aborted), plus :class:`FramesDropped` for those frames, so a client that only
knows about dropped frames still learns what will never produce an output.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import trio

from .._errors import InputError
from ..executors import NodePorts, ShmPorts, ShmTransport, SupervisorPorts
from ..nodes._signals import Signal, signal_name_problem
from ._events import EventQueue, FramesDropped, SignalHandled, SignalSent

__all__ = ["SignalRouter"]


class SignalRouter:
    def __init__(self, node_ids: Iterable[str], events: EventQueue) -> None:
        self._nodes = tuple(node_ids)
        self._events = events
        self._count = 0
        self.ports: Mapping[str, NodePorts] = {}
        self.transport: ShmTransport | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    def attach(self, ports: Mapping[str, NodePorts], transport: ShmTransport | None) -> None:
        """The session is wired: signals can be delivered from now on."""
        self.ports, self.transport = ports, transport
        self._token = trio.lowlevel.current_trio_token()

    def send(
        self, name: str, to: Iterable[str] | None, payload: Mapping[str, Any] | None, origin: str = "client"
    ) -> Signal:
        """Number the signal and deliver it to every target now (never blocks)."""
        problem = signal_name_problem(name)
        if problem:
            raise InputError(problem)
        targets = self._targets(to, origin)
        if not self.ports:
            raise InputError(f"signal {name!r}: the session has not started its nodes yet")
        self._count += 1
        signal = Signal(name, dict(payload or {}), origin, self._count)
        for node_id in targets:
            self._deliver(node_id, signal)
        self._events.put_control(SignalSent(name, signal.id, origin, targets))
        return signal

    def from_node(self, origin: str, name: str, to: tuple[str, ...] | None, payload: dict[str, Any]) -> None:
        """A node sends a signal (any thread): routed on the trio thread, soon."""
        token = self._token
        if token is None:
            return

        def route() -> None:
            try:
                self.send(name, to, payload, origin)
            except InputError as exc:  # the node named a node that is not there: its mistake
                logging.getLogger(f"nursery_pipes.node.{origin}").warning(
                    "node %s: signal %r not sent: %s", origin, name, exc
                )

        with contextlib.suppress(trio.RunFinishedError):  # the session's run is over
            token.run_sync_soon(route)

    def handled(self, node_id: str, signal: Signal, dropped: tuple[int, ...], aborted: int | None) -> None:
        """Node ``node_id`` ran ``on_signal``: report it, and the frames it gave up."""
        self._events.put_control(
            SignalHandled(node_id, signal.name, signal.id, signal.origin, dropped, aborted)
        )
        lost = dropped if aborted is None else (aborted, *dropped)
        if lost:
            why = f"dropped by signal {signal.name!r} (from {signal.origin})"
            self._events.put_control(FramesDropped(node_id, lost, why))

    def _targets(self, to: Iterable[str] | None, origin: str) -> tuple[str, ...]:
        if to is None:
            return tuple(n for n in self._nodes if n != origin)
        targets = tuple(dict.fromkeys(to))
        unknown = [t for t in targets if t not in self._nodes]
        if unknown:
            raise InputError(
                f"signal for unknown node {unknown[0]!r} (this pipeline's nodes are: {', '.join(self._nodes)})"
            )
        return targets

    def _deliver(self, node_id: str, signal: Signal) -> None:
        ports = self.ports[node_id]
        if isinstance(ports, SupervisorPorts):
            ports.signals.put(signal)
        else:
            assert isinstance(ports, ShmPorts)
            assert self.transport is not None
            self.transport.signal(ports, signal)
