"""Log lines say which session and node they are about (nursery_pipes/_logging.py), wherever
the node runs — in-process, in a thread, in a worker process — and ``serve --log-format json``
writes nothing but JSON lines to stderr."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio_asyncio
from service_fixtures import manifest

from nursery_pipes import Runtime, RuntimeConfig, TextFrame
from nursery_pipes._config import NodesConfig
from nursery_pipes._logging import configure, unconfigure
from nursery_pipes.client import Client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure("json", "INFO", stream=stream)
    try:
        yield stream
    finally:
        unconfigure()
        logging.getLogger().setLevel(logging.WARNING)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize("executor", ["inprocess", "thread", "multiprocess"])
async def test_a_nodes_log_lines_carry_its_session_and_node(executor: str, json_log: io.StringIO) -> None:
    doc = manifest(
        [("src", "PassThrough", {}), ("talk", "LogNode", {"message": "saw frame {n}"})],
        [("src", "talk")],
        executors={"src": "inprocess", "talk": executor},
    )
    rt = Runtime(RuntimeConfig(nodes=NodesConfig(testing=True)))
    async with rt.open_session(doc) as session:
        for text in ("a", "b"):
            await session.send("src", TextFrame(text=text))
        await session.close()
        _ = [o async for o in session.outputs()]
    lines = [r for r in records(json_log) if r["message"].startswith("saw frame")]
    assert [r["message"] for r in lines] == ["saw frame 1", "saw frame 2"]
    for r in lines:
        assert (r["session_id"], r["node_id"], r["level"]) == (session.id, "talk", "INFO")
        assert r["logger"] == "nursery_pipes.node.talk"


async def test_outside_a_session_the_ids_are_dashes(json_log: io.StringIO) -> None:
    logging.getLogger("nursery_pipes.test").warning("no session here")
    (line,) = records(json_log)
    assert (line["session_id"], line["node_id"], line["level"]) == ("-", "-", "WARNING")


async def test_serve_log_format_json_writes_only_json_lines_tagged_with_ids() -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "nursery_pipes", "serve", "--listen", "127.0.0.1:0", "--testing-nodes",
         "--log-format", "json", "--log-level", "info"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stderr is not None
    buffer = b""

    async def next_line() -> dict[str, Any]:
        nonlocal buffer
        with trio.fail_after(45):
            while b"\n" not in buffer:
                data = await process.stderr.receive_some(4096)  # type: ignore[union-attr]
                assert data, f"stderr ended: {buffer!r}"
                buffer += data
        raw, buffer = buffer.split(b"\n", 1)
        parsed: dict[str, Any] = json.loads(raw)  # every line is JSON
        return parsed

    try:
        first = await next_line()
        while "listening on" not in first["message"]:
            first = await next_line()
        address = first["message"].rsplit(" ", 1)[1]
        doc = manifest(
            [("src", "PassThrough", {}), ("talk", "LogNode", {"message": "worker saw {n}"})],
            [("src", "talk")],
            executors={"src": "inprocess", "talk": "multiprocess"},
        )

        async def call() -> None:
            async with Client(address) as client:
                await client.execute(doc, {"src": TextFrame(text="x")})

        async with trio_asyncio.open_loop():
            await trio_asyncio.aio_as_trio(call)()
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await process.wait()
        with trio.fail_after(10):
            while data := await process.stderr.receive_some(4096):
                buffer += data
        rest = [json.loads(line) for line in buffer.decode().splitlines()]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()
    assert process.returncode == 0
    talk = [r for r in rest if r["message"].startswith("worker saw")]
    assert [(r["message"], r["node_id"], r["logger"]) for r in talk] == [
        ("worker saw 1", "talk", "nursery_pipes.node.talk")
    ]
    assert talk[0]["session_id"] != "-"
    assert any(r["message"].startswith("SIGTERM: draining") for r in rest)
