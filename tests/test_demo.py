"""The README's first command runs the main job: a real server, a real speech pipeline, printed results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nursery_pipes.cli._demo import speech_available
from nursery_pipes.frames import AudioFrame


@pytest.mark.timeout(180)
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "nursery_pipes", "demo", "--keep", str(out)],
        capture_output=True, text=True, timeout=170, env={**os.environ, "COLUMNS": "200"},
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert "Traceback" not in text
    assert "server drained and exited with code 0" in text
    assert "listening on 127.0.0.1:" in text
    assert (out / "input.wav").is_file()
    assert (out / "manifest.json").is_file()
    if speech_available():  # the setup command installs the speech extra: the real main job
        assert "what time is it" in text  # heard
        assert "My name is Nursery Pipes." in text  # answered
        reply = AudioFrame.from_wav(out / "reply.wav")
        assert reply.duration > 2.0
        assert "tts→multiprocess" in text
    else:
        assert "speech segments found" in text
        assert (out / "speech.wav").is_file()
