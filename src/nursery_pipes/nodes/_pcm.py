"""PCM sample-format arithmetic shared by the audio and speech nodes.

Scaling conventions (the usual ones, so a round trip through float is exact):

- i16 ↔ f32 divides/multiplies by 32768: f32 -1.0 ↔ -32768, f32 1.0 → 32767 (clipped).
- i32 ↔ f32 divides/multiplies by 2**31 the same way.
- i16 ↔ i32 shifts by 16 bits (i32 → i16 truncates the low 16 bits, arithmetic shift).

Float → integer conversion rounds to nearest and saturates; NaN becomes 0 and ±inf
full scale, so no conversion ever wraps around or warns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ..frames import AudioFormat

__all__ = ["FULL_SCALE", "apply_gain", "convert_format", "from_float", "to_float64"]

FULL_SCALE: dict[AudioFormat, float] = {
    AudioFormat.F32: 1.0,
    AudioFormat.I16: 32768.0,
    AudioFormat.I32: 2147483648.0,
}

_INT_LIMITS: dict[AudioFormat, tuple[int, int]] = {
    AudioFormat.I16: (-(2**15), 2**15 - 1),
    AudioFormat.I32: (-(2**31), 2**31 - 1),
}


def to_float64(samples: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Samples as float64 in [-1, 1) full scale, whatever their format."""
    fmt = AudioFormat.from_dtype(samples.dtype)
    out = samples.astype(np.float64)
    if fmt is not AudioFormat.F32:
        out /= FULL_SCALE[fmt]
    return out


def from_float(values: npt.NDArray[np.floating[Any]], fmt: AudioFormat) -> npt.NDArray[Any]:
    """Full-scale floats to ``fmt``; integers are rounded and saturated, never wrapped."""
    if fmt is AudioFormat.F32:
        return values.astype(np.float32)
    low, high = _INT_LIMITS[fmt]
    # Work in float64: float32 cannot hold 2**31 - 1, and the clip must happen before the cast.
    scaled = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    scaled = np.rint(scaled * FULL_SCALE[fmt])
    np.clip(scaled, low, high, out=scaled)
    return scaled.astype(fmt.dtype)


def convert_format(samples: npt.NDArray[Any], fmt: AudioFormat) -> npt.NDArray[Any]:
    """Convert samples to ``fmt`` (returns the input itself when it already is ``fmt``)."""
    src = AudioFormat.from_dtype(samples.dtype)
    if src is fmt:
        return samples
    if src is AudioFormat.I16 and fmt is AudioFormat.I32:
        return samples.astype(np.int32) << 16
    if src is AudioFormat.I32 and fmt is AudioFormat.I16:
        return (samples >> 16).astype(np.int16)
    if src is AudioFormat.F32:
        return from_float(samples, fmt)
    # Integer → float32: divide in float64 (exact for i16, nearest f32 for i32).
    return (samples.astype(np.float64) / FULL_SCALE[src]).astype(np.float32)


def apply_gain(samples: npt.NDArray[Any], gain: float) -> npt.NDArray[Any]:
    """Multiply by a linear gain, keeping the format; integer formats saturate.

    Float samples are not clipped: f32 audio may legitimately exceed full scale
    between processing stages.
    """
    fmt = AudioFormat.from_dtype(samples.dtype)
    if fmt is AudioFormat.F32:
        with np.errstate(over="ignore"):  # overflow to ±inf is the IEEE answer, not an error
            return (samples * np.float32(gain)).astype(np.float32)
    low, high = _INT_LIMITS[fmt]
    scaled = np.rint(samples.astype(np.float64) * gain)
    np.clip(scaled, low, high, out=scaled)
    return scaled.astype(fmt.dtype)
