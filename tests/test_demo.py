"""The README's first command runs the main job: a real server, a real speech pipeline, printed results.

Both of the demo's paths run every time: the speech one (the setup command installs the speech
extra, so its absence is a failure here, not a quiet switch to the fallback) and the
voice-activity fallback that users without the extra get (forced by patching the detection).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nursery_pipes.cli._demo import speech_available
from nursery_pipes.frames import AudioFrame

WITHOUT_SPEECH_EXTRA = (
    "import nursery_pipes.cli._demo as demo; demo.speech_available = lambda: False; "
    "from nursery_pipes.cli import main; main()"
)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("speech", [True, False], ids=["speech", "without-speech-extra"])
def test_demo_runs_end_to_end(tmp_path: Path, speech: bool) -> None:
    if speech:
        assert speech_available(), "the speech extra is not installed (make setup installs '.[dev,speech]')"
        command = [sys.executable, "-m", "nursery_pipes"]
    else:
        command = [sys.executable, "-c", WITHOUT_SPEECH_EXTRA]
    out = tmp_path / "demo"
    done = subprocess.run(
        [*command, "demo", "--keep", str(out)],
        capture_output=True,
        text=True,
        timeout=170,
        env={**os.environ, "COLUMNS": "200"},
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert "Traceback" not in text
    assert "server drained and exited with code 0" in text
    assert "listening on 127.0.0.1:" in text
    assert (out / "input.wav").is_file()
    assert (out / "manifest.json").is_file()
    if speech:  # the real main job
        assert "what time is it" in text  # heard
        assert "My name is Nursery Pipes." in text  # answered
        reply = AudioFrame.from_wav(out / "reply.wav")
        assert reply.duration > 2.0
        assert "tts→multiprocess" in text
        # barge-in: the third question starts while the second answer plays, and cuts it off
        assert "barge-in: the user spoke over answer 2" in " ".join(text.split())
    else:
        assert "speech segments found" in text
        assert (out / "speech.wav").is_file()
