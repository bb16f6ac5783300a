"""How deeply JSON nests, found without recursion. Sans-I/O.

Every JSON tool at hand — msgspec's decoder and encoder, ``json``,
jsonschema, ``repr``, pickle — recurses once per level and raises
``RecursionError`` somewhere below Python's recursion limit; where exactly
depends on how deep the caller's own stack already is (a trio task inside a
gRPC handler has less room than a script). So nursery_pipes bounds nesting
itself, *before* any of them sees a value, with limits far below what they
can take anywhere:

- :data:`MAX_JSON_DEPTH` (128) for :class:`~nursery_pipes.JsonFrame` values;
- ``manifest.MAX_NESTING`` (64) for a node's ``params`` and each metadata value.

Depth counts containers: ``1`` and ``"a"`` are 0 deep, ``[]`` and ``{}`` 1,
``[[1]]`` 2.

:func:`deeper_than` scans JSON *text*: it counts ``[``/``{`` first (C speed;
text with no more brackets than the limit cannot be too deep — the common
case costs two ``bytes.count`` calls), and only otherwise runs a vectorised
scan that skips string contents (escapes included), in chunks so memory
stays small. :func:`value_deeper_than` walks a decoded value iteratively, with
a stack, and never descends below the limit: a value that contains itself is
simply "too deep".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_JSON_DEPTH", "deeper_than", "value_deeper_than"]

MAX_JSON_DEPTH = 128
"""How deeply a JsonFrame's value may nest (see the module docstring)."""

_CHUNK = 1 << 20
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN_SQUARE, _OPEN_CURLY, _CLOSE_SQUARE, _CLOSE_CURLY = b"[{]}"
_DELTA = np.zeros(256, dtype=np.int8)
_DELTA[[ord("["), ord("{")]] = 1
_DELTA[[ord("]"), ord("}")]] = -1

JsonText = bytes | bytearray | memoryview | str


def deeper_than(data: JsonText, limit: int) -> int | None:
    """The byte offset of the first ``[``/``{`` (outside strings) that opens level ``limit + 1``,
    or None when the text never nests deeper than ``limit``. The text need not be valid JSON
    (the parser that runs afterwards says what else is wrong with it)."""
    if isinstance(data, str):
        if data.count("[") + data.count("{") <= limit:
            return None
        raw = data.encode("utf-8", "surrogatepass")
    else:
        raw = bytes(data)  # no copy for bytes
        if raw.count(b"[") + raw.count(b"{") <= limit:
            return None
    scan = _Scan(limit)
    buf = np.frombuffer(raw, dtype=np.uint8)
    for start in range(0, len(buf), _CHUNK):
        found = scan.chunk(buf[start : start + _CHUNK])
        if found is not None:
            return start + found
    return None


class _Scan:
    """State carried from one chunk to the next: inside a string?, backslashes just before, depth."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_string = False
        self.backslashes = 0
        self.depth = 0

    def chunk(self, chunk: npt.NDArray[np.uint8]) -> int | None:
        # Work on the brackets and quotes only, not on every byte: a bracket is inside a string
        # iff an odd number of real (unescaped) quotes came before it.
        real = self._unescaped(chunk, np.flatnonzero(chunk == _QUOTE))
        brackets = np.flatnonzero(
            (chunk == _OPEN_SQUARE)
            | (chunk == _OPEN_CURLY)
            | (chunk == _CLOSE_SQUARE)
            | (chunk == _CLOSE_CURLY)
        )
        delta = _DELTA[chunk[brackets]].astype(np.int64)
        delta[(np.searchsorted(real, brackets) + self.in_string) % 2 == 1] = 0
        depth = np.cumsum(delta)
        depth += self.depth
        too_deep = np.flatnonzero(depth > self.limit)
        if too_deep.size:  # the first level past the limit is always entered by an opening bracket
            return int(brackets[too_deep[0]])
        self.in_string = (int(real.size) + self.in_string) % 2 == 1
        if depth.size:
            self.depth = int(depth[-1])
        return None

    def _unescaped(self, chunk: npt.NDArray[np.uint8], quotes: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        """The quotes not escaped by a backslash: those after an even run of backslashes."""
        backslash = chunk == _BACKSLASH
        carried = self.backslashes
        if not backslash.any():
            self.backslashes = 0
            return quotes[1:] if carried % 2 and quotes.size and quotes[0] == 0 else quotes
        positions = np.arange(len(chunk))
        # Where the last byte that is not a backslash sits, at or before each position (-1: none).
        last_other = np.maximum.accumulate(np.where(backslash, -1, positions))
        before = quotes - 1
        run = before - last_other[np.maximum(before, 0)]
        run[last_other[np.maximum(before, 0)] < 0] += carried  # the run began in an earlier chunk
        run[before < 0] = carried
        tail = last_other[-1]
        self.backslashes = carried + len(chunk) if tail < 0 else int(len(chunk) - 1 - tail)
        real: npt.NDArray[np.intp] = quotes[run % 2 == 0]
        return real


def value_deeper_than(value: Any, limit: int) -> bool:
    """Whether a decoded value (dicts, lists, tuples and scalars) nests deeper than ``limit``.
    Iterative; never looks below level ``limit + 1``."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        depth += 1
        if depth > limit:
            return True
        stack.extend((child, depth) for child in children if isinstance(child, (Mapping, list, tuple)))
    return False
