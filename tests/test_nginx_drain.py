"""Two ``nursery-pipes serve`` replicas behind a real nginx (deploy/nginx/nursery-pipes.conf);
one is drained (SIGTERM) in the middle of a run of 20 sessions.

What must hold (issue 12, docs/scaling.md "Draining"):
- every session completes with all its results, in order — those running on the drained
  replica too (they finish there, within drain_timeout_secs);
- sessions started after the SIGTERM all run on the other replica: the drained one refuses
  connections, and nginx sends such a session to the next replica (seen here: nginx's
  ``$upstream_addr`` lists the refused replica, then the one that served it);
- the drained replica exits 0 once its last session ended, and nothing is left: no process
  of either replica or of nginx, no /dev/shm entry (the suite's leak check).

nginx must be installed (``make setup`` does it): without it this test fails, it does not skip.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio
from nginx_fixtures import MISSING, UPSTREAM_HEADER, Nginx, nginx_binary, running_nginx
from service_fixtures import (
    ServeProcess,
    manifest,
    open_stream,
    results_by_sink,
    serve_process,
    text_buffer,
)

from nursery_pipes import TextFrame
from nursery_pipes.client import ChunkOutput, Client

pytestmark = pytest.mark.timeout(60)

BEFORE = 10
"""Sessions started before the drain: nginx spreads them over both replicas."""
AFTER = 10
"""Sessions started once the drained replica has closed its listener."""
SHOUT = manifest(
    [("in", "PassThrough", {}), ("shout", "TextTransformNode", {"operation": "upper"})],
    [("in", "shout")],
    executors={"in": "inprocess", "shout": "multiprocess"},  # a worker process per session
    name="nginx-drain",
)
REPLICA_ENV = {
    "NURSERY_PIPES_SERVER__DRAIN_TIMEOUT_SECS": "30",  # longer than the test: the drain ends
    "NURSERY_PIPES_MULTIPROCESS__GRACE_PERIOD_SECS": "0.3",  # when the last session does
}


class Session:
    """One client session through nginx: chunks in two halves, with a gate in between."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.upstreams: list[str] = []
        self.sent: list[int] = []
        self.results: list[tuple[int, str]] = []
        self.ended = ""
        self.running = trio.Event()

    def text(self, seq: int) -> str:
        return f"session {self.index} chunk {seq}"

    async def run(self, port: int, first: int, gate: trio.Event | None, second: int) -> None:
        """Send ``first`` chunks (each answered before the next), wait for ``gate``, send
        ``second`` more, close; keep every result and how the stream ended."""

        async def on_asyncio() -> None:
            async with open_stream(port) as s:
                await s.init(SHOUT)
                await s.until("ready")
                self.upstreams = s.stream.initial_metadata.get(UPSTREAM_HEADER, "").split(", ")
                seq = 0
                for half, count in ((0, first), (1, second)):
                    if half == 1 and gate is not None:
                        self.running.set()
                        await trio_asyncio.trio_as_aio(gate.wait)()
                    for _ in range(count):
                        seq += 1
                        self.sent.append(seq)
                        await s.chunk("in", text_buffer(self.text(seq)), seq)
                        self.keep(await s.until("result"))
                await s.close()
                await s.end()  # nothing more to send (as the library's Client does on close)
                rest = await s.rest()
                self.keep(rest)
                self.ended = rest[-1][0] if rest else ""

        await trio_asyncio.aio_as_trio(on_asyncio)()

    def keep(self, items: list[tuple[str, Any]]) -> None:
        for seq, buffer in results_by_sink(items).get("shout", []):
            self.results.append((seq, buffer.text.text_data.decode()))

    def check(self) -> None:
        expected = [(seq, self.text(seq).upper()) for seq in self.sent]
        assert self.results == expected, f"session {self.index}: results {self.results}"
        assert self.ended == "closed", f"session {self.index} ended with {self.ended!r}"


class ClientSession(Session):
    """A session of the library's own :class:`Client` (it cannot tell where it ran: one that
    reached the drained replica would fail with UNAVAILABLE)."""

    async def run(self, port: int, first: int, gate: trio.Event | None, second: int) -> None:
        assert gate is None

        async def on_asyncio() -> None:
            async with Client(f"127.0.0.1:{port}") as client, client.stream(SHOUT) as stream:
                for seq in range(1, first + 1):
                    self.sent.append(await stream.send("in", TextFrame(text=self.text(seq))))
                await stream.close()
                async for event in stream:
                    if isinstance(event, ChunkOutput):
                        self.results.append((event.sequence, event.frame.text))
                    else:
                        self.ended = event.kind

        await trio_asyncio.aio_as_trio(on_asyncio)()


@pytest.fixture(name="nginx_installed")
def nginx_installed_fixture() -> None:
    if nginx_binary() is None:
        pytest.fail(MISSING, pytrace=False)


@pytest.mark.usefixtures("nginx_installed")
async def test_draining_a_replica_behind_nginx_loses_no_session(tmp_path: Path) -> None:
    async with (
        serve_process(env=REPLICA_ENV) as drained,
        serve_process(env=REPLICA_ENV) as staying,
        running_nginx(tmp_path / "nginx", [drained.address, staying.address]) as nginx,
        trio_asyncio.open_loop(),
    ):
        before = [Session(i) for i in range(BEFORE)]
        after = [(Session if i % 2 else ClientSession)(BEFORE + i) for i in range(AFTER)]
        after_done = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                for session in before:  # one at a time, so least_conn alternates
                    nursery.start_soon(session.run, nginx.port, 2, after_done, 2)
                    with trio.fail_after(20):
                        await session.running.wait()
                on_drained = [s for s in before if s.upstreams[-1] == drained.address]
                assert on_drained, f"no session reached {drained.address}: {_where(before)}"

                await _drain(drained)
                async with trio.open_nursery() as late:
                    for session in after:
                        late.start_soon(session.run, nginx.port, 3, None, 0)
                assert drained.process.returncode is None  # its sessions still run: it waits
                after_done.set()  # the sessions on the drained replica finish now
            with trio.fail_after(20):
                code = await drained.process.wait()
        except BaseException as exc:
            exc.add_note(_diagnosis(nginx, drained, staying))
            raise
        stderr = await drained.rest_of_stderr()

    for session in before + after:
        session.check()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    raw = [s for s in after if not isinstance(s, ClientSession)]
    for session in raw:  # nginx may have tried the drained replica first; it never served one
        assert session.upstreams[-1] == staying.address, _where(after)
    # nginx's own account of all 20 calls: the drained replica served only sessions that began
    # before its drain, and nginx did try it after the drain — the refused connection sent that
    # session on to the other replica.
    calls = nginx.calls()
    assert [c.status for c in calls] == [200] * (BEFORE + AFTER), calls
    assert sum(c.upstreams[-1] == drained.address for c in calls) == len(on_drained), calls
    assert [drained.address, staying.address] in [c.upstreams for c in calls], (
        f"nginx never tried the drained replica after its drain: {calls}"
    )


async def _drain(replica: ServeProcess) -> None:
    """SIGTERM, and wait for its announcement: from then on its listener is closed."""
    replica.process.send_signal(signal.SIGTERM)
    await replica.read_until("SIGTERM: draining", within=10)


def _where(sessions: list[Session]) -> dict[int, list[str]]:
    return {s.index: s.upstreams for s in sessions}


def _diagnosis(nginx: Nginx, *replicas: ServeProcess) -> str:
    lines = [f"replica {r.address} stderr so far:\n" + "\n".join(r.lines) for r in replicas]
    return "\n".join([*lines, nginx.logs()])
