"""Which frames get a tracing span: a decision on the input sequence number, the same everywhere.

Every node of a session decides by the sequence number of the client input a frame carries
(the ``seq`` of its envelope or slot header), with the same rule, so a sampled input is traced
through every node it reaches — in the supervisor and in every worker process — and an
unsampled one costs each node one multiplication and a comparison. Sans-I/O: this module is
imported by the worker side and by the supervisor's executors alike.

The rule is a multiplicative hash (Knuth's, with the 64-bit golden ratio) of the sequence,
compared with a threshold: ``sampled(seq, threshold_for(r))`` holds for a share ``r`` of any
long run of sequence numbers — and, since ``seq × φ`` is equidistributed modulo 1 along any
arithmetic progression, for the same share of every residue class modulo a period: sampling
does not beat with a pipeline's own rhythm (a source that alternates two kinds of frame has
both kinds sampled), as "every ``1/r``-th sequence" would.
"""

from __future__ import annotations

__all__ = ["SAMPLE_ALL", "sampled", "threshold_for"]

_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1
SAMPLE_ALL = 1 << 64
"""The threshold that samples every sequence (ratio 1.0)."""


def threshold_for(ratio: float) -> int:
    """The threshold of a sample ``ratio`` (0..1): 0 samples nothing, :data:`SAMPLE_ALL` all."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"a sample ratio is between 0 and 1, got {ratio!r}")
    return SAMPLE_ALL if ratio >= 1.0 else int(ratio * SAMPLE_ALL)


def sampled(seq: int, threshold: int) -> bool:
    """Does the frame of input sequence ``seq`` get a span? (Callers test ``threshold`` first:
    0 means tracing is off, and then nothing is hashed.)"""
    return (seq * _GOLDEN) & _MASK < threshold
