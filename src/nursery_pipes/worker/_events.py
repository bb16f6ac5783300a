"""Worker → supervisor events over a ring: progress, ready, stats, failure, done. Sans-I/O codec.

A worker that runs a fused run of nodes says which node an event is about (``node``: its
place in the run; absent for the head, or a worker running one node).

Each event is one slot whose metadata blob is a small JSON object with a
``type`` field; the payload is empty. Progress, ready, failed and done are
sent blocking (they must arrive); stats are cumulative, so a stats event that
finds the ring full is simply skipped. So are log records and the timings of
sampled frames (``frame``, for tracing): they must never hold a node up.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import msgspec

from ..ipc import Producer, SlotHeader

__all__ = ["EventSender", "decode_event"]

EVENT_KIND = 0  # not a frame kind: these slots carry control events
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])


def decode_event(meta: memoryview | bytes) -> dict[str, Any]:
    return _decoder.decode(meta)


class EventSender:
    def __init__(self, producer: Producer) -> None:
        self._producer = producer

    def _send(self, event: dict[str, Any], *, required: bool = True, node: int = 0) -> bool:
        """Send ``event``; a non-required one is dropped (False) when the ring is full. ``node``:
        which node of the worker's fused run it is about (0, the head, is left out)."""
        if node:
            event["node"] = node
        meta = _encoder.encode(event)
        header = SlotHeader(kind=EVENT_KIND, meta_len=len(meta))
        if required:
            self._producer.send(header, meta)
            return True
        return self._producer.try_send(header, meta)

    def progress(self, state: str, fraction: float, message: str = "", *, node: int = 0) -> None:
        self._send(
            {"type": "progress", "state": state, "progress": float(fraction), "message": str(message)},
            node=node,
        )

    def ready(self, pid: int, init_s: float) -> None:
        self._send({"type": "ready", "pid": pid, "init_s": init_s})

    def stats(self, stats: dict[str, Any], *, node: int = 0, required: bool = False) -> None:
        """Cumulative counters: dropped when the ring is full, unless ``required`` (the last)."""
        self._send({"type": "stats", **stats}, required=required, node=node)

    def log(self, message: str, *, level: int = logging.WARNING, logger: str = "") -> bool:
        """A log record for the supervisor's log; False if dropped (the events ring is full)."""
        return self._send(
            {"type": "log", "message": message, "level": level, "logger": logger}, required=False
        )

    def frame(
        self,
        seq: int,
        start_ns: int,
        end_ns: int,
        bytes_in: int,
        bytes_out: int,
        error: str = "",
        *,
        node: int = 0,
    ) -> bool:
        """A sampled frame's processing (wall-clock ns, for a tracing span); False if dropped."""
        return self._send(
            {
                "type": "frame",
                "seq": seq,
                "start_ns": start_ns,
                "end_ns": end_ns,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "error": error,
            },
            required=False,
            node=node,
        )

    def failed(self, phase: str, exc: BaseException, *, node: int = 0) -> None:
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        tb = "".join(traceback.format_exception(exc))
        self._send({"type": "failed", "phase": phase, "message": message, "traceback": tb}, node=node)

    def signal_handled(
        self, signal: dict[str, Any], dropped: list[int], aborted: int | None, *, node: int = 0
    ) -> None:
        """The node ran ``on_signal`` for ``signal`` (as decoded from the control ring)."""
        self._send({"type": "signal", "signal": signal, "dropped": dropped, "aborted": aborted}, node=node)

    def send_signal(
        self, name: str, to: tuple[str, ...] | None, payload: dict[str, Any], *, node: int = 0
    ) -> None:
        """The node sends a signal (``NodeContext.signal``): the supervisor routes it."""
        self._send(
            {"type": "send_signal", "name": name, "to": None if to is None else list(to), "payload": payload},
            node=node,
        )

    def done(self, stats: dict[str, Any]) -> None:
        self._send({"type": "done", **stats})
