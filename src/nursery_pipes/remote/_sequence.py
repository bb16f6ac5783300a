"""Sequence numbers across a remote hop (sans-I/O).

Inside a session a frame carries the sequence number of the client input that caused it, so
the frames on one edge have *non-decreasing* numbers: a node that turns one input into three
outputs sends three frames with the same number. A remotemedia.v1 server wants every
DataChunk's sequence to *increase*. So the remote executor numbers what it sends 1, 2, 3…
and maps each remote number back to the local one when the remote node's outputs come back.

Invariant relied on: a node processes its inputs in order, so the outputs for remote number
``r`` come before those of any later number. Once an output for ``r`` arrives, every
mapping below ``r`` is finished and can be forgotten. A node that never answers some inputs
(a filter, a sink) would let mappings pile up: at most ``limit`` are kept, the oldest
forgotten first, and an output whose mapping was forgotten takes the oldest number still
known — late enough that no client still waits on the exact one.
"""

from __future__ import annotations

from collections import deque

__all__ = ["SequenceMap"]


class SequenceMap:
    """Local sequence numbers out, remote ones back.

    >>> seqs = SequenceMap()
    >>> [seqs.outgoing(local) for local in (7, 7, 9)]
    [1, 2, 3]
    >>> seqs.incoming(2), seqs.incoming(3), seqs.incoming(3)
    (7, 9, 9)
    """

    def __init__(self, limit: int = 65536) -> None:
        self._pending: deque[tuple[int, int]] = deque()
        self._next = 0
        self._last_local = 0
        self._answered = 0
        self._limit = limit

    def outgoing(self, local: int) -> int:
        """The remote number of the next frame sent, which carries ``local``."""
        self._next += 1
        self._pending.append((self._next, local))
        if len(self._pending) > self._limit:
            self._pending.popleft()
        return self._next

    def incoming(self, remote: int) -> int:
        """The local number of an output the remote node sent for its input ``remote``."""
        pending = self._pending
        self._answered = max(self._answered, remote)
        while len(pending) > 1 and pending[0][0] < remote:
            pending.popleft()
        # pending[0] is now the mapping of ``remote`` — or, if that one was forgotten, the
        # oldest still known (see the module docstring); with nothing pending, the last one.
        if pending:
            self._last_local = pending[0][1]
        return self._last_local

    def local_of(self, remote: int) -> int:
        """The local number of a frame sent and not answered yet (what a remote node reports
        dropping); the oldest one known if that mapping was forgotten."""
        for sent, local in self._pending:
            if sent == remote:
                return local
        return self._pending[0][1] if self._pending else self._last_local

    def unanswered(self) -> tuple[int, ...]:
        """The local numbers of the frames sent that no output has answered yet (in order,
        each once): what is lost if the remote node fails now. A frame the node answered with
        nothing counts until a later frame is answered."""
        seqs: list[int] = []
        for remote, local in self._pending:
            if remote > self._answered and (not seqs or seqs[-1] != local):
                seqs.append(local)
        return tuple(seqs)

    def __len__(self) -> int:
        return len(self._pending)
