"""Speech from an independent synthesiser (espeak-ng) for measuring recognisers.

Our own TTS voice flatters our recogniser (its audio is what the models of that
family have seen); espeak-ng is a formant synthesiser with nothing in common with
either, and its voices and speeds vary the speaker. It is a system program, not a
Python package: ``make test`` installs it (apt-get), and a missing one is an error
that says so — never a silent skip.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave

import numpy as np

from ..frames import AudioFrame
from ..nodes.speech._asr import normalize_words

__all__ = ["ESPEAK_MISSING", "espeak_ng", "word_errors"]

ESPEAK_MISSING = (
    "espeak-ng is not installed: `make test` installs it (`make espeak-ng`: apt-get install -y espeak-ng); "
    "the speech tests and benchmarks need it as an independent voice"
)


def espeak_ng(text: str, *, voice: str = "en-us", words_per_minute: int = 175) -> AudioFrame:
    """``text`` spoken by espeak-ng (``-v voice -s words_per_minute``): mono int16 at its 22050 Hz.

    ``voice`` takes espeak-ng's names and variants, e.g. ``en-gb``, ``en-us+f3`` (a female
    variant). The output is deterministic: the same arguments give the same samples.
    Raises :class:`FileNotFoundError` (saying how to install it) when espeak-ng is missing.
    """
    program = shutil.which("espeak-ng")
    if program is None:
        raise FileNotFoundError(ESPEAK_MISSING)
    done = subprocess.run(
        [program, "-v", voice, "-s", str(words_per_minute), "--stdout", text],
        capture_output=True,
        check=False,
        timeout=30,
    )
    if done.returncode != 0 or not done.stdout:
        message = done.stderr.decode(errors="replace").strip()
        raise ValueError(f"espeak-ng -v {voice} -s {words_per_minute} failed: {message or 'no audio'}")
    with wave.open(io.BytesIO(done.stdout)) as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        # espeak-ng streams a WAV header with unknown length: read what is there
        data = wav.readframes(wav.getnframes())
    samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").reshape(-1, channels)
    return AudioFrame.from_array(np.ascontiguousarray(samples, dtype=np.int16), rate)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """Word-level Levenshtein distance and the reference's length (WER = errors / length),
    words normalised as the recogniser spells them.

    >>> word_errors("Hello, how are you?", "oh are you")
    (2, 4)
    """
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1], len(ref)
