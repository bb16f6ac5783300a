"""``nursery-pipes top`` and the Monitor service it reads (``nursery_pipes.v1.Monitor``, issue 13 §4).

Real servers on loopback sockets, a live stream through worker processes, ``top`` run as the
user runs it (a subprocess) or through typer's CliRunner where no server is involved; rates
and the rendering are pure functions, tested with plain tests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from rich.console import Console
from service_fixtures import (
    Served,
    audio,
    make_config,
    manifest,
    served_fixture,  # noqa: F401  (the `served` fixture)
    serving,
)
from typer.testing import CliRunner

from nursery_pipes._proto.nursery_pipes import v1 as npb
from nursery_pipes.cli import app
from nursery_pipes.cli._topview import NO_RATES, rates, render, to_json
from nursery_pipes.service._monitor import watch_interval

pytestmark = pytest.mark.timeout(60)

DOC = manifest(
    [("src", "PassThrough", {}), ("gain", "AudioGainNode", {"gain_db": 6.0206}), ("tap", "PassThrough", {})],
    [("src", "gain"), ("gain", "tap")],
    executors={"src": "inprocess", "gain": "multiprocess", "tap": "multiprocess"},
    name="top-test",
)
PACE = 0.05
"""Seconds between the live stream's frames (20 frames/s)."""


@asynccontextmanager
async def live_stream(served: Served) -> AsyncIterator[dict[str, Any]]:
    """A StreamPipeline session of DOC fed a 160-sample frame every PACE s until the block ends;
    yields its session id and where its nodes run (StreamReady's assignments)."""
    info: dict[str, Any] = {"stop": False}
    ready = trio.Event()

    async def run() -> None:  # asyncio side
        async with served.client() as client, client.stream(DOC) as stream:
            info["session_id"] = stream.session_id
            info["pids"] = {a.node_id: a.pid for a in stream.ready.assignments}
            ready.set()

            async def read() -> None:
                async for _ in stream:
                    pass

            reader = asyncio.ensure_future(read())
            while not info["stop"]:
                await stream.send("src", audio(0.25))
                await asyncio.sleep(PACE)
            await stream.close()
            await reader

    async with trio.open_nursery() as nursery:
        nursery.start_soon(served.aio, run)
        with trio.fail_after(20):
            await ready.wait()
        try:
            yield info
        finally:
            info["stop"] = True


async def snapshot(served: Served, **client: Any) -> Any:
    async def ask() -> npb.ServerSnapshot:
        async with served.client(**client) as c:
            return await c.snapshot()

    return await served.aio(ask)


async def run_top(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            [sys.executable, "-m", "nursery_pipes", "top", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
        )


# -- the Monitor service, on a real server --------------------------------------------------------------


async def test_a_snapshot_shows_the_live_session_its_nodes_and_growing_counters(served: Served) -> None:
    async with live_stream(served) as info:
        with trio.fail_after(20):  # worker nodes report their counters every 0.5 s while busy
            while True:
                first = await snapshot(served)
                if all(n.frames_in > 0 for s in first.sessions for n in s.nodes):
                    break
                await trio.sleep(0.1)
        await trio.sleep(1.0)  # ~20 more frames
        second = await snapshot(served)
    after = await snapshot(served)

    server = first.server
    assert server.version.startswith("nursery_pipes ")
    assert server.pid == os.getpid()  # (the test's server runs in this process)
    assert server.rss_bytes > 10e6
    assert server.cpu_secs > 0
    assert (server.sessions_active, server.sessions_started, server.worker_processes) == (1, 1, 2)
    assert (server.max_sessions, server.max_processes, server.draining) == (64, 64, False)
    (session,) = first.sessions
    assert session.session_id == info["session_id"]
    assert (session.pipeline, session.state, session.error) == ("top-test", "executing", "")
    assert [(n.node_id, n.node_type, n.executor) for n in session.nodes] == [
        ("src", "PassThrough", "inprocess"),
        ("gain", "AudioGainNode", "multiprocess"),
        ("tap", "PassThrough", "multiprocess"),
    ]
    src, gain, tap = session.nodes
    assert src.pid == 0
    assert src.rss_bytes == 0
    assert gain.pid == info["pids"]["gain"]
    assert tap.pid == info["pids"]["tap"]
    assert len({os.getpid(), gain.pid, tap.pid}) == 3
    assert gain.rss_bytes > 10e6
    assert tap.rss_bytes > 10e6
    assert gain.init_secs > 0

    (later,) = second.sessions
    assert second.server.uptime_secs - first.server.uptime_secs >= 1.0
    assert later.age_secs > session.age_secs
    assert later.frames_in >= session.frames_in + 10  # 20 frames/s for a second (the client's count)
    for old, new in zip(session.nodes, later.nodes, strict=True):
        assert new.frames_in > old.frames_in > 0, new.node_id
        assert new.frames_in <= later.frames_in  # no node has seen more than the client sent
        assert new.bytes_in == new.frames_in * 640  # 160 f32 samples a frame
        assert new.frames_out <= new.frames_in
        assert (new.restarts, new.failures) == (0, 0)
    assert later.nodes[1].processing_secs > 0
    assert later.nodes[1].cpu_secs > 0

    # the session ended: no session left, counted as completed
    assert after.sessions == []
    assert (after.server.sessions_active, after.server.sessions_completed) == (0, 1)
    assert after.server.worker_processes == 0


async def test_watch_sends_a_snapshot_every_interval(served: Served) -> None:
    async def watch(interval: float, count: int) -> list[float]:
        times = []
        async with served.client() as client:
            async for snap in client.watch(interval):
                times.append(snap.server.uptime_secs)
                if len(times) == count:
                    return times
        raise AssertionError("the watch ended")

    times = await served.aio(watch, 0.25, 4)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.25 <= gap < 1.0 for gap in gaps), gaps
    times = await served.aio(watch, 0.01, 3)  # faster than the server allows: 0.25 s
    assert all(b - a >= 0.25 for a, b in itertools.pairwise(times)), times
    times = await served.aio(watch, math.nan, 2)  # not a number: the default, 1 s
    assert 1.0 <= times[1] - times[0] < 2.0


def test_watch_interval_is_clamped() -> None:
    assert watch_interval(0) == watch_interval(-3) == watch_interval(math.nan) == 1.0
    assert watch_interval(math.inf) == 1.0
    assert watch_interval(0.01) == 0.25
    assert watch_interval(2.5) == 2.5
    assert watch_interval(1e9) == 60.0


async def test_a_draining_server_keeps_reporting_its_sessions_to_its_watchers(served: Served) -> None:
    """The drain closes the listener at once (new connections are refused), but a Watch already
    running goes on: its watcher sees ``draining`` and the sessions still finishing."""
    seen: list[Any] = []
    watching = trio.Event()

    async def watch() -> None:
        async with served.client() as client:
            async for snap in client.watch(0.25):
                seen.append(snap)
                watching.set()
                if snap.server.draining:
                    return

    with trio.fail_after(20):
        async with live_stream(served) as info, trio.open_nursery() as nursery:
            nursery.start_soon(served.aio, watch)
            await watching.wait()
            served.server.drain()
    draining = seen[-1]
    assert not seen[0].server.draining
    assert draining.server.draining
    assert [s.session_id for s in draining.sessions] == [info["session_id"]]


@pytest.mark.parametrize("served", [{"server": {"auth_token": "s3cret"}}], indirect=True)
async def test_with_a_bearer_token_the_monitor_wants_it(served: Served) -> None:
    with pytest.raises(GRPCError) as caught:
        await snapshot(served)
    assert caught.value.status == Status.UNAUTHENTICATED
    assert "missing bearer token" in (caught.value.message or "")
    with pytest.raises(GRPCError, match="wrong bearer token"):
        await snapshot(served, token="guess")
    assert (await snapshot(served, token="s3cret")).server.sessions_active == 0

    done = await run_top("-s", served.address, "--once", "--interval", "0.25")
    assert done.returncode == 2
    assert b"missing bearer token" in done.stderr
    assert b"--token-env" in done.stderr
    done = await run_top(
        "-s", served.address, "--once", "--interval", "0.25", "--token-env", "NP_T", env={"NP_T": "s3cret"}
    )
    assert done.returncode == 0, done.stderr
    assert b"no sessions running" in done.stdout


async def test_watch_calls_are_capped() -> None:
    async with serving(monitor={"max_watchers": 1}) as served:
        first_arrived = trio.Event()
        release = trio.Event()
        outcome: dict[str, Any] = {}

        async def keep_watching() -> None:
            async with served.client() as client:
                async for _ in client.watch(0.25):
                    first_arrived.set()
                    if release.is_set():
                        return

        async def second_watch() -> None:
            async with served.client() as client:
                try:
                    async for _ in client.watch(0.25):
                        outcome["second"] = "served"
                        return
                except GRPCError as exc:
                    outcome["second"] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(served.aio, keep_watching)
            with trio.fail_after(10):
                await first_arrived.wait()
            await served.aio(second_watch)
            release.set()
        refused = outcome["second"]
        assert isinstance(refused, GRPCError)
        assert refused.status == Status.RESOURCE_EXHAUSTED
        assert "monitor.max_watchers" in (refused.message or "")
        await served.aio(second_watch)  # the first one has gone: room again
        assert outcome["second"] == "served"


# -- top, as the user runs it ---------------------------------------------------------------------------


async def test_top_once_shows_sessions_nodes_executors_and_rates(served: Served) -> None:
    async with live_stream(served) as info:
        shown = await run_top("-s", served.address, "--once", "--interval", "0.5")
        as_json = await run_top("-s", served.address, "--once", "--json", "--interval", "0.5")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.decode()
    assert f"{served.address} · nursery_pipes" in text
    assert "sessions: 1 running" in text
    assert "workers: 2" in text
    assert info["session_id"] in text
    assert "top-test" in text
    for node, executor in (("src", "inprocess"), ("gain", "multiprocess"), ("tap", "multiprocess")):
        row = next(line for line in text.splitlines() if f" {node} " in line)
        assert executor in row, row
    assert str(info["pids"]["gain"]) in text

    assert as_json.returncode == 0, as_json.stderr
    (line,) = as_json.stdout.decode().splitlines()
    doc = json.loads(line)
    assert 0.5 <= doc["interval_secs"] < 2.0
    (session,) = doc["sessions"]
    assert session["session_id"] == info["session_id"]
    assert 2 < session["frames_in_per_s"] < 40  # the stream sends 20 frames/s
    gain = next(n for n in session["nodes"] if n["node_id"] == "gain")
    assert gain["executor"] == "multiprocess"
    assert gain["pid"] == info["pids"]["gain"]
    assert gain["frames_in_per_s"] is not None
    assert gain["cpu_percent"] is not None


@pytest.mark.parametrize("served", [{"monitor": {"enabled": False}}], indirect=True)
async def test_top_says_when_the_monitor_is_off(served: Served) -> None:
    done = await run_top("-s", served.address, "--once")
    assert done.returncode == 2
    assert b"nursery_pipes.v1.Monitor is off on this server ([monitor] enabled = false" in done.stderr
    assert b"Traceback" not in done.stderr
    assert len(done.stderr.decode().strip().splitlines()) == 1


def test_top_says_when_the_server_cannot_be_reached() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(app, ["top", "--server", f"127.0.0.1:{port}", "--once"])
    assert result.exit_code == 2, result.output
    assert f"cannot reach server 127.0.0.1:{port}: Connection refused" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


def test_top_says_when_the_address_is_not_host_port() -> None:
    result = CliRunner().invoke(app, ["top", "--server", "localhost", "--once"])
    assert result.exit_code == 2, result.output
    assert "server address must be host:port, got 'localhost'" in result.output


async def test_top_gives_up_on_a_server_that_never_answers() -> None:
    """A socket that takes connections (the kernel completes them) but never speaks: one line
    after a few intervals (at least 5 s), exit 2 — never a hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        done = await run_top("-s", f"127.0.0.1:{silent.getsockname()[1]}", "--once", "--interval", "0.25")
    assert done.returncode == 2
    assert b"no answer from 127.0.0.1:" in done.stderr
    assert b"within 5 s" in done.stderr


async def test_top_shows_a_lost_server_and_watches_it_again_until_ctrl_c() -> None:
    """Piped (not a terminal), top prints one rendering after another: the server's, then that
    it was lost and when it tries again, then the new server's; Ctrl-C (SIGINT) exits 0."""
    output = bytearray()
    grew = trio.Event()

    async def wait_for(predicate: Any, what: str) -> None:
        nonlocal grew
        with trio.fail_after(20):
            while not predicate(output.decode(errors="replace")):
                await grew.wait()
                grew = trio.Event()
        assert predicate(output.decode(errors="replace")), what

    async def read(stream: Any) -> None:
        async for chunk in stream:
            output.extend(chunk)
            grew.set()

    async with serving() as first:
        port = first.port
        command = [sys.executable, "-m", "nursery_pipes", "top", "-s", first.address, "--interval", "0.25"]
        proc = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"}
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, proc.stdout)
                await wait_for(lambda t: t.count("no sessions running") >= 2, "two renderings")
                # leaving the block stops the first server
                nursery.cancel_scope.cancel()
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, proc.stdout)
            await wait_for(lambda t: "watching again in" in t, "the loss, on screen")
            async with serving(make_config(server={"listen": f"127.0.0.1:{port}"})):

                def back(text: str) -> bool:  # a rendering after the last "watching again" one
                    tail = text.rsplit("watching again in", 1)[1]
                    return tail.count("no sessions running") >= 2

                await wait_for(back, "the server again")
            proc.send_signal(signal.SIGINT)
            with trio.fail_after(10):
                code = await proc.wait()
            nursery.cancel_scope.cancel()
        assert proc.stderr is not None
        errors = await proc.stderr.receive_some()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, errors
    assert b"Traceback" not in (errors or b"")
    text = output.decode()
    assert "lost the connection to" in text or "cannot reach server" in text


def test_serve_no_monitor_turns_the_service_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from nursery_pipes import RuntimeConfig
    from nursery_pipes.cli import _serve

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(_serve, "serve", lambda config, flags, announce: seen.append(dict(flags)) or 0)
    for args, expected in (([], None), (["--no-monitor"], False), (["--monitor"], True)):
        assert CliRunner().invoke(app, ["serve", *args]).exit_code == 0
        assert seen.pop()["monitor.enabled"] is expected
    assert RuntimeConfig().monitor.enabled  # on by default
    off = _serve.apply_overrides(RuntimeConfig(), env={}, flags={"monitor.enabled": False})
    assert not off.monitor.enabled
    env = {"NURSERY_PIPES_MONITOR__ENABLED": "false", "NURSERY_PIPES_MONITOR__MAX_WATCHERS": "2"}
    from_env = _serve.apply_overrides(RuntimeConfig(), env=env)
    assert (from_env.monitor.enabled, from_env.monitor.max_watchers) == (False, 2)


# -- rates and rendering: pure functions ----------------------------------------------------------------


def snap(uptime: float, *sessions: Any, pid: int = 100, cpu: float = 1.0) -> Any:
    return npb.ServerSnapshot(
        server=npb.ServerInfo(version="nursery_pipes 0", uptime_secs=uptime, pid=pid, cpu_secs=cpu),
        sessions=list(sessions),
    )


def session(sid: str, frames: tuple[int, int], *nodes: Any) -> Any:
    return npb.SessionSnapshot(
        session_id=sid,
        pipeline="p",
        state="executing",
        frames_in=frames[0],
        frames_out=frames[1],
        nodes=list(nodes),
    )


def node(nid: str, frames_in: int, frames_out: int, *, pid: int = 0, cpu: float = 0.0, rss: int = 0) -> Any:
    return npb.NodeSnapshot(
        node_id=nid,
        node_type="T",
        executor="multiprocess" if pid else "inprocess",
        state="processing",
        pid=pid,
        frames_in=frames_in,
        frames_out=frames_out,
        cpu_secs=cpu,
        rss_bytes=rss,
    )


def test_rates_are_counter_differences_over_the_servers_clock() -> None:
    before = snap(
        10.0, session("a", (100, 50), node("x", 100, 100, pid=7, cpu=1.0, rss=1), node("y", 40, 20))
    )
    after = snap(
        12.0, session("a", (140, 90), node("x", 130, 130, pid=7, cpu=1.5, rss=1), node("y", 60, 30)), cpu=2.0
    )
    r = rates(before, after)
    assert r.seconds == 2.0
    assert (r.sessions["a"].frames_in, r.sessions["a"].frames_out) == (20.0, 20.0)
    x, y = r.nodes[("a", "x")], r.nodes[("a", "y")]
    assert (x.frames_in, x.frames_out, x.cpu_percent) == (15.0, 15.0, 25.0)
    assert (y.frames_in, y.frames_out, y.cpu_percent) == (10.0, 5.0, None)  # in the server: no CPU of its own
    assert r.server_cpu_percent == 50.0


def test_a_counter_that_went_down_was_reset_by_a_restart() -> None:
    before = snap(10.0, session("a", (100, 100), node("x", 100, 100, pid=7, cpu=5.0, rss=1)))
    after = snap(11.0, session("a", (110, 110), node("x", 4, 3, pid=8, cpu=0.1, rss=1)))
    x = rates(before, after).nodes[("a", "x")]
    assert (x.frames_in, x.frames_out) == (4.0, 3.0)  # counted from zero, never negative
    assert x.cpu_percent is None  # another process: its CPU time is not comparable


def test_no_rates_across_server_lives_or_for_new_sessions() -> None:
    before = snap(10.0, session("a", (1, 1), node("x", 1, 1)))
    assert rates(before, snap(3.0, session("a", (2, 2), node("x", 2, 2)))) == NO_RATES  # clock went back
    assert rates(before, snap(11.0, session("a", (2, 2), node("x", 2, 2)), pid=101)) == NO_RATES  # other pid
    r = rates(
        before, snap(11.0, session("a", (2, 2), node("x", 2, 2)), session("b", (5, 5), node("x", 5, 5)))
    )
    assert set(r.sessions) == {"a"}
    assert set(r.nodes) == {("a", "x")}


def test_render_shows_what_an_operator_needs() -> None:
    before = snap(
        10.0, session("0123456789abcdef", (0, 0), node("asr", 10, 5, pid=4242, cpu=1, rss=50_000_000))
    )
    now = snap(
        11.0,
        session(
            "0123456789abcdef",
            (0, 0),
            npb.NodeSnapshot(
                node_id="asr",
                node_type="SpeechRecognitionNode",
                executor="multiprocess",
                state="processing",
                pid=4242,
                frames_in=30,
                frames_out=9,
                queued_in=7,
                restarts=2,
                rss_bytes=50_000_000,
                cpu_secs=1.5,
                processing_secs=0.6,
            ),
        ),
    )
    now.server.draining = True
    console = Console(width=200, record=True, color_system=None)
    console.print(render(now, rates(before, now), address="host:1", status="lost — watching again in 1 s"))
    text = console.export_text()
    assert "host:1 · nursery_pipes 0" in text
    assert "DRAINING" in text
    assert "lost — watching again in 1 s" in text
    row = next(line for line in text.splitlines() if "asr" in line)
    for cell in (
        "SpeechRecognitionNode",
        "multiprocess",
        "4242",
        "20.0",
        "4.0",
        "30/9",
        "7",
        "2",
        "20.00",
        "50.0 MB",
        "50.0",
    ):
        assert cell in row, (cell, row)
    now.sessions[0].nodes.append(npb.NodeSnapshot(node_id="far", executor="remote", host="gpu-box:50051"))
    console = Console(width=200, record=True, color_system=None)
    console.print(render(now, NO_RATES, address="host:1"))
    far = next(line for line in console.export_text().splitlines() if " far " in line)
    assert "remote" in far
    assert "gpu-box:50051" in far
    assert "server" not in far
    empty = Console(width=120, record=True, color_system=None)
    empty.print(render(snap(1.0), NO_RATES, address="h:2"))
    assert "no sessions running" in empty.export_text()


def test_json_carries_every_field_and_the_rates() -> None:
    before = snap(1.0, session("a", (0, 0), node("x", 0, 0, pid=3, rss=1)))
    after = snap(2.0, session("a", (5, 5), node("x", 5, 4, pid=3, cpu=0.5, rss=1)))
    doc = json.loads(json.dumps(to_json(after, rates(before, after))))
    assert doc["interval_secs"] == 1.0
    (s,) = doc["sessions"]
    assert (s["frames_in_per_s"], s["state"]) == (5.0, "executing")
    (n,) = s["nodes"]
    assert (n["frames_in_per_s"], n["frames_out_per_s"], n["cpu_percent"], n["queued_in"]) == (
        5.0,
        4.0,
        50.0,
        0,
    )
    assert to_json(after, NO_RATES)["sessions"][0]["nodes"][0]["frames_in_per_s"] is None
