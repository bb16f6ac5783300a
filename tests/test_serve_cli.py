"""``nursery-pipes serve`` as a real process, and ``nursery-pipes run --server`` against it.

Every server here is started in its own process session (``start_new_session``), so "no
process left" is checked for the whole tree: after the server exits, nothing may remain in
its session (workers, forkserver, anything).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import soundfile
import trio
import trio_asyncio
from service_fixtures import (
    ENV,
    health_status,
    manifest,
    open_stream,
    pids_of_session,
    serve_process,
    text_buffer,
)

from nursery_pipes import TextFrame
from nursery_pipes.cli._demo import make_vad_audio
from nursery_pipes.client import Client

pytestmark = pytest.mark.timeout(60)

VAD_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "voice_activity.json"


async def nursery_pipes(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(45):
        return await trio.run_process(
            [sys.executable, "-m", "nursery_pipes", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**ENV, **(env or {})},
        )


MIXED_TEXT = manifest(
    [
        ("in", "PassThrough", {}),
        ("shout", "TextTransformNode", {"operation": "upper", "suffix": "!"}),
        ("echo", "PassThrough", {}),
    ],
    [("in", "shout"), ("in", "echo")],
    executors={"in": "inprocess", "shout": "multiprocess", "echo": "inprocess"},
    name="mixed-text",
)


# -- serve: start, serve, drain, stop ------------------------------------------------------------------


async def test_serve_announces_serves_and_drains_on_sigterm() -> None:
    async with serve_process() as server:
        assert server.address.startswith("127.0.0.1:")

        async def use() -> tuple[bool, str]:
            async with Client(server.address) as client:
                version = await client.version()
                result = await client.execute(MIXED_TEXT, {"in": TextFrame(text="hello")})
            return version.compatible, result.outputs["shout"].text

        async with trio_asyncio.open_loop():
            compatible, shouted = await trio_asyncio.aio_as_trio(use)()
        assert compatible
        assert shouted == "HELLO!"
        healthy = await nursery_pipes("health", "--server", server.address)
        assert (healthy.returncode, healthy.stdout.decode().strip()) == (0, f"{server.address}: SERVING")
        unknown = await nursery_pipes("health", "--server", server.address, "--service", "no.Such")
        assert unknown.returncode == 1
        assert "NOT_FOUND" in unknown.stderr.decode()

        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            code = await server.process.wait()
        stderr = await server.rest_of_stderr()
    assert code == 0, stderr
    assert "SIGTERM: draining" in stderr
    assert "stopped" in stderr
    assert "Traceback" not in stderr


async def test_second_signal_stops_at_once() -> None:
    """A stream keeps the server draining (30 s allowed); a second signal ends it now, and the
    session's worker goes with it."""
    busy = manifest(
        [("src", "PassThrough", {}), ("slow", "SleepNode", {"process_seconds": 60})],
        [("src", "slow")],
        executors={"src": "inprocess", "slow": "multiprocess"},
    )
    env = {
        "NURSERY_PIPES_SERVER__DRAIN_TIMEOUT_SECS": "30",
        "NURSERY_PIPES_MULTIPROCESS__GRACE_PERIOD_SECS": "0.3",
    }
    async with (
        serve_process(env=env) as server,
        trio_asyncio.open_loop(),
    ):
        session: list[str] = []
        in_flight = trio.Event()
        client_done = trio.Event()

        async def client() -> None:
            try:
                async with open_stream(server.port) as s:
                    await s.init(busy)
                    (*_, (_, ready)) = await s.until("ready")
                    session.append(ready.session_id)
                    await s.chunk("src", text_buffer("x"), 1)
                    in_flight.set()
                    await s.rest()
            except Exception:  # the server went away under the call: expected here
                pass
            finally:
                client_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_asyncio.aio_as_trio(client))
            await in_flight.wait()
            assert len(await pids_of_session(session[0])) == 1

            server.process.send_signal(signal.SIGTERM)
            await server.read_until("SIGTERM: draining")
            with pytest.raises(ConnectionRefusedError):  # draining: new connections must go elsewhere
                await trio_asyncio.aio_as_trio(health_status)(server.port)
            unhealthy = await nursery_pipes("health", "--server", server.address)
            assert unhealthy.returncode == 1
            assert "unreachable" in unhealthy.stderr.decode()
            assert server.process.returncode is None  # still draining: the stream runs

            began = trio.current_time()
            server.process.send_signal(signal.SIGINT)
            with trio.fail_after(15):
                code = await server.process.wait()
            stopped_in = trio.current_time() - began
            with trio.fail_after(10):
                await client_done.wait()
        stderr = await server.rest_of_stderr()
    assert "SIGINT again: stopping now" in stderr
    assert "stopped" in stderr.rsplit("stopping now", 1)[1]  # the runtime still shut down in order
    assert code == 0, stderr
    assert stopped_in < 10, stderr  # not the 30 s drain deadline, nor the 60 s node
    assert "Traceback" not in stderr
    assert await pids_of_session(session[0]) == []


# -- serve: bad configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "toml", "message"),
    [
        (["--listen", "nonsense"], {}, None, "listen address must be host:port"),
        (["--listen", "127.0.0.1:70000"], {}, None, "listen address must be host:port"),
        (["--listen", "no.such.host.invalid:5000"], {}, None, "cannot listen on no.such.host.invalid:5000"),
        (["--tls-cert", "/etc/hostname"], {}, None, "TLS needs both server.tls_cert and server.tls_key"),
        (
            ["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"],
            {},
            None,
            "cannot load TLS certificate/key",
        ),
        (["--config", "/nonexistent/runtime.toml"], {}, None, "cannot read config file"),
        ([], {}, "[server]\nlisten = 5\n", "server.listen"),
        ([], {}, "[server]\nnope = 1\n", "nope"),
        ([], {}, "[server\n", "invalid TOML"),
        ([], {"NURSERY_PIPES_SERVER__NOPE": "1"}, None, "unknown key 'nope' in [server]"),
        ([], {"NURSERY_PIPES_LIMITS__MAX_SESSIONS": "0"}, None, "max_sessions"),
        (["--warm-pool", "-1"], {}, None, "--warm-pool"),
        # auth fails closed: a token variable that is named but unset or empty stops the server
        (["--auth-token-env", "NP_UNSET_TOKEN"], {}, None, "NP_UNSET_TOKEN, which is not set"),
        (
            [],
            {"NURSERY_PIPES_SERVER__AUTH_TOKEN_ENV": "NP_EMPTY", "NP_EMPTY": " "},
            None,
            "NP_EMPTY, which is empty",
        ),
        (["--no-such-flag"], {}, None, "No such option"),
    ],
)
async def test_bad_flags_and_config_exit_2_without_traceback(
    tmp_path: Path, args: list[str], env: dict[str, str], toml: str | None, message: str
) -> None:
    if toml is not None:
        config = tmp_path / "runtime.toml"
        config.write_text(toml, encoding="utf-8")
        args = [*args, "--config", str(config)]
    done = await nursery_pipes("serve", *args, env=env)
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert message in stderr, stderr
    assert "Traceback" not in stderr
    assert "listening on" not in stderr


async def test_address_in_use_is_a_clear_error() -> None:
    async with serve_process() as first:
        done = await nursery_pipes("serve", "--listen", first.address)
        stderr = done.stderr.decode()
        assert done.returncode == 2, stderr
        assert f"cannot listen on {first.address}" in stderr
        assert "address already in use" in stderr.lower()
        assert "Traceback" not in stderr
        first.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await first.process.wait() == 0


# -- run --server ------------------------------------------------------------------------------------


def _outputs_and_files(done: subprocess.CompletedProcess[bytes], out_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The ``outputs`` of a ``run --json`` summary, and the files written: audio as samples
    (float WAV headers carry a timestamp), the rest as bytes."""
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert summary["ok"] is True
    files: dict[str, Any] = {}
    for path in sorted(out_dir.iterdir()):
        if path.suffix == ".wav":
            samples, rate = soundfile.read(path, dtype="float32")
            files[path.name] = (rate, samples.tobytes())
        else:
            files[path.name] = path.read_bytes()
    return summary["outputs"], files


async def test_run_against_server_matches_local_run(tmp_path: Path) -> None:
    """The same manifests and inputs, run locally and through ``serve``: the same outputs."""
    text_in = tmp_path / "lines.txt"
    text_in.write_text("hello server\n", encoding="utf-8")
    text_manifest = tmp_path / "text.json"
    text_manifest.write_text(json.dumps(MIXED_TEXT), encoding="utf-8")

    wav = tmp_path / "speech.wav"
    make_vad_audio(seconds=2.0).to_wav(wav)
    vad = json.loads(VAD_EXAMPLE.read_text(encoding="utf-8"))
    vad["metadata"]["multiprocess"]["executor_overrides"] = {
        "mono": "inprocess",
        "resample": "multiprocess",
        "vad": "multiprocess",
    }
    vad_manifest = tmp_path / "vad.json"
    vad_manifest.write_text(json.dumps(vad), encoding="utf-8")

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(manifest([("x y", "Nope", {})])), encoding="utf-8")
    jobs = [(text_manifest, f"in={text_in}"), (vad_manifest, f"mono={wav}")]
    done: dict[str, subprocess.CompletedProcess[bytes]] = {}

    async def run(key: str, *args: str) -> None:
        done[key] = await nursery_pipes("run", *args)

    async with serve_process() as server, trio.open_nursery() as nursery:  # all runs at once
        for n, (doc, spec) in enumerate(jobs):
            for where, extra in (("local", []), ("remote", ["--server", server.address])):
                out = tmp_path / f"{where}{n}"
                nursery.start_soon(run, f"{where}{n}", str(doc), "-i", spec, "-o", str(out), "--json", *extra)
        # the human-readable form; a bad manifest locally and remotely
        nursery.start_soon(
            run, "human", str(text_manifest), "-i", f"in={text_in}", "--server", server.address
        )
        nursery.start_soon(run, "bad-local", str(bad))
        nursery.start_soon(run, "bad-remote", str(bad), "--server", server.address)

    for n in range(len(jobs)):
        local = _outputs_and_files(done[f"local{n}"], tmp_path / f"local{n}")
        remote = _outputs_and_files(done[f"remote{n}"], tmp_path / f"remote{n}")
        assert remote == local
        summary = json.loads(done[f"remote{n}"].stdout)
        assert summary["session_id"]
        assert summary["latency_ms"]["p50"] >= 0
    assert "speech" in str(local[0]) or local[0]["vad"]  # the VAD found speech: outputs are not trivial
    summary = json.loads(done["remote1"].stdout)
    assert {nid: a["executor"] for nid, a in summary["assignments"].items()} == {
        "mono": "inprocess",
        "resample": "multiprocess",
        "vad": "multiprocess",
    }

    stdout = done["human"].stdout.decode()
    assert done["human"].returncode == 0, done["human"].stderr.decode()
    assert "HELLO SERVER!" in stdout
    assert "chunk latency" in stdout

    # a bad manifest: the same validation error from the server as locally, exit 2
    for key in ("bad-local", "bad-remote"):
        stderr = done[key].stderr.decode()
        assert done[key].returncode == 2, stderr
        assert "nodes[0].id" in stderr
        assert "nodes[0].node_type" in stderr
        assert "Traceback" not in stderr


async def test_run_against_server_with_token(tmp_path: Path) -> None:
    doc = tmp_path / "m.json"
    doc.write_text(
        json.dumps(manifest([("up", "TextTransformNode", {"operation": "upper"})])), encoding="utf-8"
    )
    text_in = tmp_path / "in.txt"
    text_in.write_text("secret\n", encoding="utf-8")
    token_env = {"SERVE_TOKEN": "t0ken"}
    async with serve_process("--auth-token-env", "SERVE_TOKEN", env=token_env) as server:
        ok = await nursery_pipes(
            "run", str(doc), "-i", f"up={text_in}", "--json",
            "--server", server.address, "--token-env", "SERVE_TOKEN",
            env=token_env,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr.decode()
        assert json.loads(ok.stdout)["outputs"]["up"][0]["text"] == "SECRET"

        denied = await nursery_pipes("run", str(doc), "-i", f"up={text_in}", "--server", server.address)
        stderr = denied.stderr.decode()
        assert denied.returncode == 2, stderr
        assert "missing bearer token" in stderr
        assert "Traceback" not in stderr

        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await server.process.wait() == 0


async def test_run_against_server_reports_a_refused_call_without_traceback(tmp_path: Path) -> None:
    """The server ends the call (a chunk over its size limit): one clear line, exit 1."""
    wav = tmp_path / "speech.wav"
    make_vad_audio(seconds=0.5).to_wav(wav)  # 20 ms stereo f32 chunks: ~7 KB messages
    doc = tmp_path / "m.json"
    doc.write_text(json.dumps(manifest([("echo", "PassThrough", {})])), encoding="utf-8")
    async with serve_process(env={"NURSERY_PIPES_SERVER__MAX_MESSAGE_BYTES": "2000"}) as server:
        done = await nursery_pipes("run", str(doc), "-i", f"echo={wav}", "--server", server.address)
        stderr = done.stderr.decode()
        assert done.returncode == 1, stderr
        assert "the server ended the call with RESOURCE_EXHAUSTED" in stderr
        assert "exceeds this server's limit of 2000 bytes" in stderr
        assert "Traceback" not in stderr
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await server.process.wait() == 0


async def test_run_against_server_reports_a_rejected_chunk_and_carries_on(tmp_path: Path) -> None:
    """A chunk the server rejects (text for an audio-only node) is a warning, not a failure:
    the other source's outputs come back, the run exits 0, --json lists the rejection."""
    doc = tmp_path / "m.json"
    doc.write_text(
        json.dumps(
            manifest(
                [("up", "TextTransformNode", {"operation": "upper"}), ("g", "AudioGainNode", {})],
                executors={"up": "inprocess", "g": "inprocess"},
            )
        ),
        encoding="utf-8",
    )
    text_in = tmp_path / "in.txt"
    text_in.write_text("still here\n", encoding="utf-8")
    inputs = ["-i", f"g={text_in}", "-i", f"up={text_in}"]
    async with serve_process() as server:
        as_json = await nursery_pipes("run", str(doc), *inputs, "--json", "--server", server.address)
        human = await nursery_pipes("run", str(doc), *inputs, "--server", server.address)
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await server.process.wait() == 0
    assert as_json.returncode == 0, as_json.stderr.decode()
    summary = json.loads(as_json.stdout)
    assert summary["outputs"]["up"][0]["text"] == "STILL HERE"
    (rejected,) = summary["rejected"]
    assert rejected.startswith("DataChunk sequence 1 rejected (the stream goes on)")
    assert "node 'g' (AudioGainNode) accepts audio frames, not text" in rejected
    assert human.returncode == 0, human.stderr.decode()
    assert "warning:" in human.stderr.decode()
    assert "STILL HERE" in human.stdout.decode()


async def test_run_against_server_shows_what_its_supervision_did(tmp_path: Path) -> None:
    """A worker node fails once on the server; the manifest's policy restarts it. run
    --server prints it and lists it in --json, and every other input's output comes back."""
    doc = tmp_path / "m.json"
    flaky = {"phase": "process", "after_frames": 1, "once": str(tmp_path / "fired")}
    document = manifest([("flaky", "RaiseNode", flaky)], executors={"flaky": "multiprocess"})
    document["metadata"]["supervision"] = {"strategy": "one_for_one", "max_restarts": 2}
    doc.write_text(json.dumps(document), encoding="utf-8")
    inputs: list[str] = []
    for word in ("one", "two", "three"):
        (tmp_path / f"{word}.txt").write_text(word, encoding="utf-8")
        inputs += ["-i", f"flaky={tmp_path / f'{word}.txt'}"]
    async with serve_process("--testing-nodes") as server:
        as_json = await nursery_pipes("run", str(doc), *inputs, "--json", "--server", server.address)
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await server.process.wait() == 0
    assert as_json.returncode == 0, as_json.stderr.decode()
    summary = json.loads(as_json.stdout)
    assert [f["text"] for f in summary["outputs"]["flaky"]] == ["one", "three"]
    kinds = [(r["kind"], r["node_id"], r["dropped_sequences"]) for r in summary["supervision"]]
    assert kinds == [("failed", "flaky", []), ("dropped", "flaky", [2]), ("restarted", "flaky", [])]


# -- remote nodes: examples/remote.json ----------------------------------------------------------------

REMOTE_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "remote.json"


async def test_the_remote_example_runs_its_middle_node_on_a_second_server(tmp_path: Path) -> None:
    """examples/remote.json, its "shout" node on a second server: from the CLI, and through a
    server over gRPC, the outputs are the ones of running it all locally."""
    lines = tmp_path / "lines.txt"
    lines.write_text("hello remote\nsecond line\n", encoding="utf-8")
    doc = json.loads(REMOTE_EXAMPLE.read_text(encoding="utf-8"))
    local = json.loads(json.dumps(doc))
    del local["nodes"][1]["host"]
    (tmp_path / "local.json").write_text(json.dumps(local), encoding="utf-8")
    done: dict[str, subprocess.CompletedProcess[bytes]] = {}

    async def run(key: str, *args: str) -> None:
        done[key] = await nursery_pipes(
            "run", *args, "-i", f"in={lines}", "-o", str(tmp_path / key), "--json"
        )

    async with (
        serve_process() as far
    ):  # the example names 127.0.0.1:50052; the test's far server is elsewhere
        doc["nodes"][1]["host"] = far.address
        (tmp_path / "remote.json").write_text(json.dumps(doc), encoding="utf-8")
        config = tmp_path / "remote.toml"
        example_config = (REMOTE_EXAMPLE.parent / "remote.toml").read_text(encoding="utf-8")
        config.write_text(example_config.replace("127.0.0.1:50052", far.address), encoding="utf-8")
        async with serve_process("--config", str(config)) as near, trio.open_nursery() as nursery:
            nursery.start_soon(run, "local", str(tmp_path / "local.json"))
            nursery.start_soon(run, "cli", str(tmp_path / "remote.json"), "--config", str(config))
            nursery.start_soon(run, "grpc", str(tmp_path / "remote.json"), "--server", near.address)
            nursery.start_soon(run, "refused", str(tmp_path / "remote.json"))  # no allow-list here

    expected = _outputs_and_files(done["local"], tmp_path / "local")
    assert expected[0]["out"][0]["text"] == "HELLO REMOTE\nSECOND LINE!"
    for key in ("cli", "grpc"):
        assert _outputs_and_files(done[key], tmp_path / key) == expected
        assigned = json.loads(done[key].stdout)["assignments"]["shout"]
        assert assigned["executor"] == "remote"
    refused = done["refused"]
    assert refused.returncode == 2
    [error] = json.loads(refused.stdout)["errors"]
    assert error["path"] == "nodes[1].host"
    assert error["message"].startswith(
        f"node 'shout': host {far.address} is not in this server's [remote] allowed_hosts"
    )
