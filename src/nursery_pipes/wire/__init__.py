"""remotemedia.v1 messages ↔ library values (frames, manifest documents, errors, metrics).

Shared by the server and the client; imports no server code (and no trio-asyncio).
"""

from ._convert import (
    buffer_to_frame,
    error_response,
    frame_to_buffer,
    frames_to_buffer,
    manifest_from_proto,
    manifest_to_proto,
    metrics_to_proto,
)

__all__ = [
    "buffer_to_frame",
    "error_response",
    "frame_to_buffer",
    "frames_to_buffer",
    "manifest_from_proto",
    "manifest_to_proto",
    "metrics_to_proto",
]
