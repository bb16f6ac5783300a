"""The nodes every runtime knows: pass-through, calculator, text/JSON transforms, audio, VAD.

All are synchronous, light (``executor = "inprocess"``) and streaming: they keep
state across ``process`` calls and emit what is still buffered on ``flush``. The
offline speech nodes of :mod:`nursery_pipes.nodes.speech` are registered with them
(those run in worker processes and need the ``speech`` extra).
``ALIASES`` maps the remotemedia names that differ from ours to our classes.
"""

from __future__ import annotations

from typing import Any

from .._base import Node
from ..speech import ReplyNode, SileroVADNode, SpeechRecognitionNode, TextToSpeechNode  # model libs: lazy
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
    "ReplyNode",
    "SileroVADNode",
    "SpeechRecognitionNode",
    "TextToSpeechNode",
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
    SileroVADNode,
    SpeechRecognitionNode,
    ReplyNode,
    TextToSpeechNode,
)

ALIASES: dict[str, type[Node[Any]]] = {
    "FastResampleNode": AudioResampleNode,
}
