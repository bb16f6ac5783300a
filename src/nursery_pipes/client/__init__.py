"""A Python client for remotemedia.v1 servers (asyncio; from trio through trio-asyncio)."""

from ._client import (
    AuthenticationError,
    ChunkOutput,
    Client,
    RemoteError,
    RemoteResult,
    RemoteStream,
    StreamEvent,
    collect,
    raise_for_error,
    rejection,
)

__all__ = [
    "AuthenticationError",
    "ChunkOutput",
    "Client",
    "RemoteError",
    "RemoteResult",
    "RemoteStream",
    "StreamEvent",
    "collect",
    "raise_for_error",
    "rejection",
]
