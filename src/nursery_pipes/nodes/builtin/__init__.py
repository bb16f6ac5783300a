"""The nodes every runtime knows: pass-through, calculator, text/JSON transforms, audio, VAD.

All are synchronous, light (``executor = "inprocess"``) and streaming: they keep
state across ``process`` calls and emit what is still buffered on ``flush``.
``ALIASES`` maps the remotemedia names that differ from ours to our classes.
"""

from __future__ import annotations

from typing import Any

from .._base import Node
from ._audio import (
    AudioChunkerNode,
    AudioChunkerParams,
    AudioFormatNode,
    AudioFormatParams,
    AudioGainNode,
    AudioGainParams,
    AudioNormalizeNode,
    AudioNormalizeParams,
    AudioResampleNode,
    AudioResampleParams,
)
from ._basic import (
    CalculatorNode,
    Echo,
    JsonTransformNode,
    JsonTransformParams,
    PassThrough,
    TextTransformNode,
    TextTransformParams,
)
from ._vad import EnergyVADNode, EnergyVADParams

__all__ = [
    "ALIASES",
    "BUILTIN_NODES",
    "AudioChunkerNode",
    "AudioChunkerParams",
    "AudioFormatNode",
    "AudioFormatParams",
    "AudioGainNode",
    "AudioGainParams",
    "AudioNormalizeNode",
    "AudioNormalizeParams",
    "AudioResampleNode",
    "AudioResampleParams",
    "CalculatorNode",
    "Echo",
    "EnergyVADNode",
    "EnergyVADParams",
    "JsonTransformNode",
    "JsonTransformParams",
    "PassThrough",
    "TextTransformNode",
    "TextTransformParams",
]

BUILTIN_NODES: tuple[type[Node[Any]], ...] = (
    PassThrough,
    Echo,
    CalculatorNode,
    TextTransformNode,
    JsonTransformNode,
    AudioChunkerNode,
    AudioResampleNode,
    AudioGainNode,
    AudioNormalizeNode,
    AudioFormatNode,
    EnergyVADNode,
)

ALIASES: dict[str, type[Node[Any]]] = {
    "FastResampleNode": AudioResampleNode,
}
