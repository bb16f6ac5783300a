"""``nursery-pipes health``: a standard gRPC health check of a server, as an exit code.

For container health checks (deploy/Dockerfile's HEALTHCHECK) and scripts: exit 0 when the
server answers SERVING; 1 when it answers anything else (NOT_SERVING while it drains, an
unknown service), does not answer within the timeout, or refuses the connection (a draining
server has closed its listener). Plaintext only, like Kubernetes' own gRPC probe.
"""

from __future__ import annotations

import asyncio

from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from .._errors import InputError

__all__ = ["check_health"]


def check_health(address: str, service: str, timeout: float) -> tuple[bool, str]:
    """(serving?, what to print) for ``address`` (HOST:PORT); InputError for a bad address."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"server address must be host:port, got {address!r}")
    try:
        status = asyncio.run(
            asyncio.wait_for(_check(host.strip("[]") or "127.0.0.1", int(port), service), timeout)
        )
    except TimeoutError:
        return False, f"{address}: no answer within {timeout:g} s"
    except GRPCError as exc:
        return False, f"{address}: {exc.status.name}: {exc.message}"
    except OSError as exc:
        return False, f"{address}: unreachable ({exc.strerror or exc})"
    name = HealthCheckResponse.ServingStatus.Name(status)
    return status == HealthCheckResponse.SERVING, f"{address}: {name}"


async def _check(host: str, port: int, service: str) -> int:
    channel = Channel(host, port)
    try:
        reply = await HealthStub(channel).Check(HealthCheckRequest(service=service))
    finally:
        channel.close()
    return int(reply.status)
