"""The remote executor: a node with a ``host`` runs on that nursery_pipes server.

Two real servers on loopback (the far one runs the node), real gRPC between them; a TCP proxy
in between when a test needs to cut the connection.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import trio
from service_fixtures import audio, make_config, manifest, self_signed_cert, serving

from nursery_pipes import ManifestError, NodeError, Runtime, TensorFrame, TextFrame
from nursery_pipes._config import RemoteConfig, RuntimeConfig, load_config
from nursery_pipes.client import ChunkOutput
from nursery_pipes.remote import RemoteExecutor, SequenceMap
from nursery_pipes.runtime import (
    FramesDropped,
    NodeFailed,
    NodeProgress,
    NodeRestarted,
    Output,
    SignalHandled,
)

pytestmark = pytest.mark.slow


def near_config(*allowed: str, **mp: Any) -> RuntimeConfig:
    """The server a client talks to: it may send nodes to ``allowed`` hosts."""
    return msgspec.structs.replace(
        make_config(multiprocess=mp or None), remote=RemoteConfig(allowed_hosts=list(allowed))
    )


def chain(
    host: str | None, mid: tuple[str, dict[str, Any]] = ("TextTransformNode", {"operation": "upper"})
) -> dict[str, Any]:
    """in → mid (on ``host``) → out."""
    doc = manifest(
        [("in", "PassThrough", {}), ("mid", *mid), ("out", "PassThrough", {})],
        [("in", "mid"), ("mid", "out")],
    )
    if host is not None:
        doc["nodes"][1]["host"] = host
    return doc


WORDS = ["alpha", "beta", "gamma", "delta", "epsilon"]


async def stream_words(
    runtime: Runtime, doc: dict[str, Any], words: list[str] = WORDS
) -> list[tuple[str, int, str]]:
    async with runtime.open_session(doc) as session:
        for word in words:
            await session.send("in", TextFrame(text=word))
        await session.close()
        return [(o.node_id, o.seq, o.frame.text) async for o in session.outputs()]


async def drain(session: Any) -> None:
    async for _ in session.outputs():
        pass


# -- sans-I/O -------------------------------------------------------------------------------------


def test_sequence_map_gives_increasing_remote_numbers_and_maps_outputs_back() -> None:
    seqs = SequenceMap()
    assert [seqs.outgoing(local) for local in (3, 3, 3, 8)] == [1, 2, 3, 4]
    assert [seqs.incoming(r) for r in (1, 1, 3, 4, 4)] == [3, 3, 3, 8, 8]
    assert len(seqs) == 1  # only the last mapping is still needed


def test_sequence_map_forgets_the_oldest_beyond_its_limit() -> None:
    seqs = SequenceMap(limit=3)
    for local in range(10, 20):  # a sink that never answers: the map stays bounded
        seqs.outgoing(local)
    assert len(seqs) == 3
    assert seqs.incoming(1) == 17  # forgotten: the oldest still known


# -- planning: nothing connects before the host is allowed ----------------------------------------


async def test_a_host_not_allowed_is_refused_before_anything_connects() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        for allowed in ((), ("127.0.0.1:1",)):
            async with Runtime(near_config(*allowed)) as runtime:
                with pytest.raises(ManifestError) as caught:
                    await runtime.run_pipeline(chain(address), {"in": TextFrame(text="x")})
            issue = caught.value.issues[0]
            assert issue.path == "nodes[1].host"
            assert (
                f"node 'mid': host {address} is not in this server's [remote] allowed_hosts" in issue.message
            )
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever knocked
    finally:
        listener.close()


async def test_the_allow_list_is_empty_by_default() -> None:
    assert RuntimeConfig().remote.allowed_hosts == []
    async with Runtime(make_config()) as runtime:
        with pytest.raises(ManifestError, match="it lists no host"):
            await runtime.run_pipeline(chain("127.0.0.1:50051"), {"in": TextFrame(text="x")})


async def test_a_node_routed_to_remote_without_a_host_is_a_validation_error() -> None:
    doc = chain(None)
    doc["metadata"]["multiprocess"] = {"executor_overrides": {"mid": "remote"}}
    async with Runtime(near_config()) as runtime:
        with pytest.raises(ManifestError) as caught:
            await runtime.run_pipeline(doc, {"in": TextFrame(text="x")})
    assert caught.value.issues[0].path == "nodes[1]"
    assert "give the node a host" in caught.value.issues[0].message


def test_remote_config_parses_and_its_token_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(
        text='[remote]\nallowed_hosts = ["gpu-1.internal:50051"]\ntls = true\ntoken_env = "NP_TEST_REMOTE_TOKEN"\n'
    )
    assert config.remote.allowed_hosts == ["gpu-1.internal:50051"]
    assert RemoteExecutor(config).refuses_host("gpu-1.internal:50051") is None
    assert RemoteExecutor(config).refuses_host("gpu-1.internal:50052") is not None
    monkeypatch.delenv("NP_TEST_REMOTE_TOKEN", raising=False)
    from nursery_pipes import ConfigError

    with pytest.raises(
        ConfigError, match=r"remote\.token_env names the environment variable NP_TEST_REMOTE_TOKEN"
    ):
        config.remote.token_value()
    with pytest.raises(Exception, match=r"remote.allowed_hosts"):
        load_config(text='[remote]\nallowed_hosts = ["no-port"]\n')


# -- running ---------------------------------------------------------------------------------------


async def test_a_middle_node_on_another_server_gives_what_it_gives_locally() -> None:
    async with serving() as far, Runtime(near_config(far.address)) as near:
        local = await stream_words(near, chain(None))
        remote = await stream_words(near, chain(far.address))
        assert remote == local == [("out", i + 1, w.upper()) for i, w in enumerate(WORDS)]
        async with near.open_session(chain(far.address)) as session:
            await session.send("in", TextFrame(text="counted"))
            await session.close()
            await drain(session)
            mid = session.metrics().nodes["mid"]
        assert (mid.executor, mid.frames_in, mid.frames_out, mid.bytes_out) == ("remote", 1, 1, 7)
        one_shot = await near.run_pipeline(chain(far.address), {"in": TextFrame(text="solo")})
        assert [f.text for f in one_shot.outputs["out"]] == ["SOLO"]
        assert not far.runtime.sessions  # each remote session ended with its local one


async def test_remote_nodes_are_served_over_grpc_too() -> None:
    async with serving() as far, serving(near_config(far.address)) as near:

        async def run(doc: dict[str, Any]) -> list[tuple[str, int, str]]:
            async with near.client() as client, client.stream(doc) as stream:
                for word in WORDS:
                    await stream.send("in", TextFrame(text=word))
                await stream.close()
                return [
                    (e.node_id, e.sequence, e.frame.text) async for e in stream if isinstance(e, ChunkOutput)
                ]

        assert await near.aio(run, chain(far.address)) == await near.aio(run, chain(None))


async def test_one_input_many_outputs_keep_their_sequence_numbers() -> None:
    """A node before the remote one may send several frames for one input (same sequence):
    the remote server still sees increasing numbers, and the outputs come back with ours."""
    doc = manifest(
        [("in", "AudioChunkerNode", {"chunk_size": 160}), ("mid", "AudioGainNode", {"gain_db": 6.0})],
        [("in", "mid")],
    )

    async def run(runtime: Runtime, doc: dict[str, Any]) -> list[tuple[int, int, float]]:
        async with runtime.open_session(doc) as session:
            for value in (0.1, 0.2, 0.3):
                await session.send("in", audio(value, n=400))  # 3 chunks each: 160, 160, 80
            await session.close()
            return [
                (o.seq, o.frame.num_samples, round(float(o.frame.samples[0, 0]), 4))
                async for o in session.outputs()
            ]

    async with serving() as far, Runtime(near_config(far.address)) as near:
        local = await run(near, doc)
        doc["nodes"][1]["host"] = far.address
        assert await run(near, doc) == local
        seqs = [seq for seq, _, _ in local]
        assert len(set(seqs)) < len(seqs)  # chunks of one input share its number


async def test_the_remote_servers_init_progress_is_the_nodes_progress() -> None:
    seen: list[tuple[str, str, str]] = []
    doc = chain(None, ("ProgressNode", {"steps": 3}))
    async with serving() as far, Runtime(near_config(far.address)) as near:
        doc["nodes"][1]["host"] = far.address
        async with near.open_session(doc, wait_ready=False) as session:
            async for p in session.events():
                if isinstance(p, NodeProgress):
                    seen.append((p.node_id, p.state, p.message))
                    if p.node_id == "mid" and p.state == "ready":
                        break
            await session.close()
    mid = [(state, message) for node, state, message in seen if node == "mid"]
    assert mid[0] == ("starting", f"connecting to {far.address}")
    assert ("loading", f"{far.address}: step 3/3") in mid
    assert mid[-1][0] == "ready"


async def test_a_slow_remote_node_holds_the_sender_back() -> None:
    """Backpressure crosses the connection: with the far node taking 0.2 s a frame, the near
    session stops taking 64 KiB frames once the buffers on the way (queues on both sides and
    gRPC's 4 MiB flow-control window) are full, instead of buffering without bound."""
    doc = manifest([("mid", "SleepNode", {"process_seconds": 0.2})], channel_capacity=4)
    frame = TensorFrame(data=np.zeros(64 * 1024, dtype=np.uint8))
    sent = 0
    async with serving() as far, Runtime(near_config(far.address)) as near:
        doc["nodes"][0]["host"] = far.address
        async with near.open_session(doc) as session:
            with trio.move_on_after(3):
                for _ in range(1000):
                    await session.send("mid", frame)
                    sent += 1
            session.cancel()
    assert 40 < sent < 200  # ~64 in the window, a few in each queue, ~15 done; never all 1000


# -- failures --------------------------------------------------------------------------------------


async def test_a_remote_node_failure_names_the_node_and_the_host() -> None:
    doc = chain(None, ("RaiseNode", {"phase": "process", "after_frames": 1, "message": "kaput"}))
    async with serving() as far, Runtime(near_config(far.address)) as near:
        doc["nodes"][1]["host"] = far.address
        with pytest.raises(NodeError) as caught:
            await stream_words(near, doc)
    error = caught.value
    assert error.node_id == "mid"
    assert f"node 'mid' failed in process: on {far.address}: RuntimeError: kaput" in str(error)
    assert "RuntimeError: kaput" in (error.remote_traceback or "")


async def test_a_node_type_the_far_server_lacks_fails_initialise_naming_the_host() -> None:
    far_config = msgspec.structs.replace(
        make_config(), nodes=msgspec.structs.replace(make_config().nodes, testing=False)
    )
    doc = chain(None, ("SleepNode", {}))
    async with serving(far_config) as far, Runtime(near_config(far.address)) as near:
        doc["nodes"][1]["host"] = far.address
        with pytest.raises(NodeError) as caught:
            await stream_words(near, doc)
    assert (caught.value.node_id, caught.value.phase) == ("mid", "initialize")
    assert f"{far.address} refused the node: nodes[0].node_type: " in str(caught.value)


async def test_an_unreachable_host_fails_initialise_naming_it() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    async with Runtime(near_config(address)) as near:
        with pytest.raises(
            NodeError, match=rf"node 'mid' failed in initialize: on {address}: cannot connect"
        ):
            await stream_words(near, chain(address))


@asynccontextmanager
async def proxy(target: str) -> AsyncIterator[tuple[str, trio.CancelScope]]:
    """A TCP proxy to ``target``; cancelling the yielded scope cuts every connection."""
    host, port = target.rsplit(":", 1)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    cut = trio.CancelScope()

    async def pipe(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        async for data in src:
            await dst.send_all(data)

    async def handle(client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream(host, int(port)) as upstream, trio.open_nursery() as n:
            n.start_soon(pipe, client, upstream)
            n.start_soon(pipe, upstream, client)

    async with trio.open_nursery() as nursery:
        with cut:
            nursery.start_soon(trio.serve_listeners, handle, listeners)
            yield f"127.0.0.1:{listeners[0].socket.getsockname()[1]}", cut
        nursery.cancel_scope.cancel()


async def test_a_lost_connection_fails_the_node_and_the_remote_session_ends() -> None:
    async with serving() as far, proxy(far.address) as (address, cut), Runtime(near_config(address)) as near:
        async with near.open_session(chain(address)) as session:
            await session.send("in", TextFrame(text="one"))
            first = await session.outputs().__anext__()
            assert first.frame.text == "ONE"
            cut.cancel()
            await session.send("in", TextFrame(text="two"))
            await session.close()
            with pytest.raises(NodeError, match=rf"node 'mid' failed in process: on {address}: "):
                await drain(session)
        with trio.fail_after(10):
            while far.runtime.sessions:  # noqa: ASYNC110  (the far server cancels its session)
                await trio.sleep(0.02)


async def test_a_supervision_policy_restarts_a_remote_node_like_any_other(tmp_path: Path) -> None:
    fault = {"phase": "process", "after_frames": 2, "message": "once", "once": str(tmp_path / "fired")}
    doc = chain(None, ("RaiseNode", fault))
    doc["metadata"]["supervision"] = {"strategy": "one_for_one", "max_restarts": 2}
    async with serving() as far, Runtime(near_config(far.address)) as near:
        doc["nodes"][1]["host"] = far.address
        async with near.open_session(doc) as session:
            for word in WORDS[:3]:  # the third one fails the remote node
                await session.send("in", TextFrame(text=word))
            with trio.fail_after(10):
                while not any(isinstance(e, NodeRestarted) for e in session.supervision_log):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            for word in WORDS[3:]:  # a fresh remote node takes these
                await session.send("in", TextFrame(text=word))
            await session.close()
            outputs = [o.frame.text async for o in session.outputs()]
            log = list(session.supervision_log)
    assert outputs == ["alpha", "beta", "delta", "epsilon"]
    dropped = [e for e in log if isinstance(e, FramesDropped)]
    assert [(e.node_id, e.sequences) for e in dropped] == [("mid", (3,))]  # the lost frame is reported
    failed = [e for e in log if isinstance(e, NodeFailed)]
    assert f"on {far.address}: RuntimeError: once" in str(failed[0].error)


async def test_cancelling_the_session_ends_the_remote_one() -> None:
    doc = chain(None, ("SleepNode", {"process_seconds": 30}))
    async with serving() as far, Runtime(near_config(far.address)) as near:
        doc["nodes"][1]["host"] = far.address
        with trio.move_on_after(1):
            async with near.open_session(doc) as session:
                await session.send("in", TextFrame(text="stuck"))
                await drain(session)
        with trio.fail_after(10):
            while far.runtime.sessions:  # noqa: ASYNC110
                await trio.sleep(0.02)


async def test_a_signal_for_a_remote_node_is_forwarded_and_answered_with_our_sequences() -> None:
    doc = chain(None, ("SleepNode", {"process_seconds": 0.3}))
    doc["metadata"]["multiprocess"] = {"channel_capacity": 16}
    async with serving() as far, Runtime(near_config(far.address)) as near:
        doc["nodes"][1]["host"] = far.address
        async with near.open_session(doc) as session:
            for n in range(1, 6):
                await session.send("in", TextFrame(text=f"f{n}"))
            with trio.fail_after(10):  # the frames reach the far node's queue first
                while session.metrics().nodes["mid"].frames_in < 5:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            session.signal("interrupt", to=["mid"])
            await session.close()
            events = [e async for e in session.events()]
    [handled] = [e for e in events if isinstance(e, SignalHandled)]
    assert (handled.node_id, handled.name) == ("mid", "interrupt")
    delivered = {e.seq for e in events if isinstance(e, Output)}
    given_up = set(handled.dropped) | ({handled.aborted} if handled.aborted is not None else set())
    assert handled.dropped  # the far node still had frames queued: dropped there, reported here
    assert given_up <= {1, 2, 3, 4, 5}
    assert given_up | delivered == {1, 2, 3, 4, 5}
    assert not given_up & delivered


async def test_remote_nodes_over_tls_with_a_bearer_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[remote] ca_file and token_env: the far server wants TLS and a token, and gets both;
    without the token its refusal fails the node at init, naming the host."""
    cert, key = self_signed_cert(tmp_path)
    far_config = make_config(server={"tls_cert": str(cert), "tls_key": str(key), "auth_token": "s3cret"})
    monkeypatch.setenv("NP_TEST_REMOTE_TOKEN", "s3cret")
    async with serving(far_config) as far:
        remote = RemoteConfig(
            allowed_hosts=[far.address], ca_file=str(cert), token_env="NP_TEST_REMOTE_TOKEN"
        )
        near = msgspec.structs.replace(make_config(), remote=remote)
        async with Runtime(near) as runtime:
            assert await stream_words(runtime, chain(far.address)) == [
                ("out", i + 1, w.upper()) for i, w in enumerate(WORDS)
            ]
        tokenless = msgspec.structs.replace(
            make_config(), remote=RemoteConfig(allowed_hosts=[far.address], ca_file=str(cert))
        )
        async with Runtime(tokenless) as runtime:
            with pytest.raises(NodeError, match=rf"node 'mid' failed in initialize: on {far.address}: "):
                await stream_words(runtime, chain(far.address))


# -- consecutive nodes on one host: one remote session ---------------------------------------------


def run_of_two(
    host: str | None, second: tuple[str, dict[str, Any]] = ("TextTransformNode", {"suffix": "?"})
) -> dict[str, Any]:
    """in → m1 → m2 → out, m1 and m2 on ``host``."""
    doc = manifest(
        [("in", "PassThrough", {}), ("m1", "TextTransformNode", {"operation": "upper"}), ("m2", *second),
         ("out", "PassThrough", {})],
        [("in", "m1"), ("m1", "m2"), ("m2", "out")],
    )  # fmt: skip
    if host is not None:
        doc["nodes"][1]["host"] = doc["nodes"][2]["host"] = host
    return doc


async def test_the_planner_fuses_runs_of_remote_nodes_on_one_host() -> None:
    doc = manifest(
        [("a", "PassThrough", {}), ("b", "PassThrough", {}), ("c", "PassThrough", {}), ("d", "PassThrough", {}),
         ("e", "PassThrough", {})],
        [("a", "b"), ("b", "c"), ("c", "d"), ("a", "e")],
    )  # fmt: skip
    for index, host in ((1, "gpu:1"), (2, "gpu:1"), (3, "gpu:2"), (0, "gpu:1"), (4, "gpu:1")):
        doc["nodes"][index]["host"] = host
    async with Runtime(near_config("gpu:1", "gpu:2")) as runtime:
        plan = runtime.plan(doc)
    # a fans out (a → b, a → e): no run through it; b → c on gpu:1; d is on gpu:2
    assert {nid: n.chain for nid, n in plan.nodes.items()} == {
        "a": (),
        "b": ("b", "c"),
        "c": ("b", "c"),
        "d": (),
        "e": (),
    }


async def test_consecutive_nodes_on_one_host_run_as_one_remote_session() -> None:
    async with serving() as far, Runtime(near_config(far.address)) as near:
        local = await stream_words(near, run_of_two(None))
        assert far.runtime.stats.sessions_started == 0
        remote = await stream_words(near, run_of_two(far.address))
        assert remote == local == [("out", i + 1, w.upper() + "?") for i, w in enumerate(WORDS)]
        assert far.runtime.stats.sessions_started == 1  # m1 → m2 stayed on the far server
        async with near.open_session(run_of_two(far.address)) as session:
            await session.send("in", TextFrame(text="x"))
            await session.close()
            await drain(session)
            nodes = session.metrics().nodes
        assert (nodes["m1"].frames_in, nodes["m2"].frames_out) == (1, 1)
        assert {nodes["m1"].state.value, nodes["m2"].state.value} == {"stopped"}


async def test_a_failure_inside_a_remote_run_names_the_node_and_a_policy_restarts_the_run(
    tmp_path: Path,
) -> None:
    fault = {"phase": "process", "after_frames": 1, "message": "inner", "once": str(tmp_path / "fired")}
    async with serving() as far, Runtime(near_config(far.address)) as near:
        failing = run_of_two(far.address, ("RaiseNode", {**fault, "once": ""}))
        with pytest.raises(NodeError) as caught:
            await stream_words(near, failing)
        assert caught.value.node_id == "m2"  # the remote run's node that failed, not its head
        assert str(caught.value) == f"node 'm2' failed in process: on {far.address}: RuntimeError: inner"
        doc = run_of_two(far.address, ("RaiseNode", fault))
        doc["metadata"]["supervision"] = {"strategy": "one_for_one", "max_restarts": 2}
        async with near.open_session(doc) as session:
            await session.send("in", TextFrame(text="one"))
            await session.send("in", TextFrame(text="two"))  # fails m2 on the far server
            with trio.fail_after(10):
                while not any(isinstance(e, NodeRestarted) for e in session.supervision_log):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            await session.send("in", TextFrame(text="three"))
            await session.close()
            outputs = [o.frame.text async for o in session.outputs()]
        assert outputs == ["ONE", "THREE"]


async def test_a_signal_for_a_member_of_a_remote_run_is_answered() -> None:
    async with (
        serving() as far,
        Runtime(near_config(far.address)) as near,
        near.open_session(run_of_two(far.address)) as session,
    ):
        session.signal("mark", to=["m2"])
        with trio.fail_after(10):
            async for event in session.events():
                if isinstance(event, SignalHandled):
                    break
        session.cancel()
    assert (event.node_id, event.name, event.dropped) == ("m2", "mark", ())
