"""While a node's code runs, a thread that takes the signals arriving for it and tells the node
at once (:meth:`~nursery_pipes.Node.cancel_work`), so long work can stop mid-call.

Only for nodes that override ``cancel_work``. The worker's main thread runs the node; between
two pieces of node code (before each output, before each frame) it reads the control ring
itself. While a piece runs it cannot, so this thread does, and keeps what it took for the
main thread, which still gives each signal to ``on_signal`` in order.

Who may touch the control ring: the watcher only while the main thread has said ``busy()``,
and only under its lock; ``idle()`` clears the flag and then takes the lock once, so when it
returns the watcher is out of the ring and will not go back in before the next ``busy()``.

Cost: nothing per frame for other nodes; for a node that opts in, two Event operations per
piece of node code, and a wake-up every ``poll_s`` while it runs.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from ..ipc import Consumer, RingError

__all__ = ["BusyWatch"]

POLL_S = 0.005
"""How often the watcher looks at the control ring while node code runs (a look is a
semaphore value read: a signal reaches ``cancel_work`` within this time)."""


class BusyWatch:
    """The watcher thread of one worker; ``cancel`` is called (on the watcher's thread) with each
    signal it takes, as the JSON the supervisor sent."""

    def __init__(
        self, control: Consumer, cancel: Callable[[dict[str, Any]], None], poll_s: float = POLL_S
    ) -> None:
        self._control = control
        self._cancel = cancel
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._busy = False
        self._running = threading.Event()  # set while busy (or to let the thread end)
        self._quiet = threading.Event()  # set when not busy: ends a poll wait at once
        self._closed = False
        self._broken = False  # the ring was aborted or closed: nothing more to take
        self._pending: deque[dict[str, Any]] = deque()
        self.took = False
        """The watcher took a signal since the last ``busy()``."""
        self._thread = threading.Thread(target=self._watch, name="nursery-pipes-signals", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def take_pending(self) -> list[dict[str, Any]]:
        """The signals the watcher took, oldest first (main thread, while idle)."""
        taken = list(self._pending)
        self._pending.clear()
        return taken

    def busy(self) -> None:
        """Node code is about to run: watch the control ring."""
        self.took = False
        self._quiet.clear()
        self._busy = True
        self._running.set()

    def idle(self) -> None:
        """Node code is done: stop watching; on return the ring is the main thread's again."""
        self._busy = False
        self._running.clear()
        self._quiet.set()
        with self._lock:  # the watcher is not inside the ring now, and sees _busy False next
            pass

    def close(self) -> None:
        self._closed = True
        self._quiet.set()
        self._running.set()
        self._thread.join()

    def _watch(self) -> None:
        while True:
            self._running.wait()
            if self._closed:
                return
            with self._lock:
                if self._busy and not self._broken:
                    self._take()
            self._quiet.wait(self._poll_s)

    def _take(self) -> None:
        control = self._control
        try:
            while control.ready() and (taken := control.try_receive()) is not None:
                with taken:
                    sent = msgspec.json.decode(taken.meta)
                self._pending.append(sent)
                self.took = True
                self._cancel(sent)
        except RingError:  # aborted or closed (the node is being stopped): the main thread sees it
            self._broken = True
