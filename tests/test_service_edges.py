"""The server's edges, as a hostile or broken client meets them: every method of every service
(ours, health, reflection) refuses oversized and malformed bodies cleanly — a gRPC status a
client can act on, one log line, no traceback — and an unauthenticated stream is turned away
before anything it sends is read.
"""

from __future__ import annotations

import logging

import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_pb2 import HealthCheckRequest
from service_fixtures import (
    ALL_METHOD_PATHS,
    STREAM_PATH,
    BytesCodec,
    Served,
    health_status,
    served_fixture,  # noqa: F401  (the `served` fixture)
)

pytestmark = pytest.mark.timeout(60)

SMALL_LIMIT = 4096


async def call_raw(
    served: Served,
    path: str,
    body: bytes | None,
    *,
    metadata: dict[str, str] | None = None,
    end: bool = True,
) -> tuple[list[bytes], Status, str]:
    """One call that sends ``body`` (or nothing), then reads replies until the status.
    Returns (replies, status, status message)."""

    async def call() -> tuple[list[bytes], Status, str]:
        channel = Channel("127.0.0.1", served.port, codec=BytesCodec())  # type: ignore[arg-type]
        replies: list[bytes] = []
        try:
            async with channel.request(
                path, Cardinality.STREAM_STREAM, bytes, bytes, metadata=metadata
            ) as stream:
                if body is None:
                    await stream.send_request()  # headers only: no message, not half-closed
                else:
                    await stream.send_message(body, end=end)
                try:
                    while (reply := await stream.recv_message()) is not None:
                        replies.append(reply)
                        if body is None:  # the refusal arrived without us sending anything
                            await stream.cancel()
                            return replies, Status.OK, ""
                    await stream.recv_trailing_metadata()
                except GRPCError as exc:
                    return replies, exc.status, exc.message or ""
                return replies, Status.OK, ""
        finally:
            channel.close()

    with trio.fail_after(10):
        return await served.aio(call)


def server_log(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(("grpclib", "nursery_pipes"))]


def assert_no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    with_trace = [r for r in server_log(caplog) if r.exc_info or "Traceback" in r.getMessage()]
    assert not with_trace, [f"{r.name}: {r.getMessage()}" for r in with_trace]


@pytest.mark.parametrize("served", [{"server": {"max_message_bytes": SMALL_LIMIT}}], indirect=True)
@pytest.mark.parametrize("path", ALL_METHOD_PATHS)
async def test_oversized_body_is_refused_before_it_is_read(
    served: Served, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Health and reflection obey max_message_bytes like our own services: a body over the
    limit is refused from its length prefix (not decoded, not buffered)."""
    caplog.set_level(logging.INFO)
    # A well-formed HealthCheckRequest (field 1, a string): decoded, it would be answered.
    body = HealthCheckRequest(service="x" * (2 * SMALL_LIMIT)).SerializeToString()
    _, status, message = await call_raw(served, path, body)
    assert status == Status.RESOURCE_EXHAUSTED, (status, message)
    assert f"limit of {SMALL_LIMIT} bytes" in message
    assert_no_tracebacks(caplog)
    assert await served.aio(health_status, served.port, "") == 1  # SERVING: the server goes on


MALFORMED = {
    "bad-varint": b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    "truncated-length": b"\x0a\xff",
    "wrong-wire-type": b"\x0f\x00",
}


@pytest.mark.parametrize("path", ALL_METHOD_PATHS)
@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_body_is_invalid_argument_and_one_log_line(
    served: Served, path: str, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    _, status, message = await call_raw(served, path, body)
    assert status == Status.INVALID_ARGUMENT, (status, message)
    assert "cannot decode" in message
    assert_no_tracebacks(caplog)
    lines = [r for r in server_log(caplog) if r.levelno >= logging.WARNING]
    assert len(lines) <= 1, [r.getMessage() for r in lines]
    assert await served.aio(health_status, served.port, "") == 1


@pytest.mark.parametrize("served", [{"server": {"auth_token": "s3cret"}}], indirect=True)
async def test_unauthenticated_stream_is_refused_before_its_first_message(served: Served) -> None:
    """The refusal arrives although the client has sent no message at all: nothing the client
    sends is read (or decoded) before its token is checked."""
    from nursery_pipes._proto.remotemedia import v1 as pb

    replies, status, _ = await call_raw(served, STREAM_PATH, None)
    assert status == Status.OK
    (reply,) = replies
    error = pb.StreamResponse().parse(reply).error
    assert error.error_type == pb.ErrorType.AUTHENTICATION
    assert "missing bearer token" in error.message
