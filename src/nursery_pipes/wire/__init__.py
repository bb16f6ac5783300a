"""remotemedia.v1 messages ↔ library values (frames, manifest documents, errors).

Shared by the server and the client; imports no server code, no runtime and no trio
(the server's metrics conversion, which reads the runtime's types, is in ``service/_metrics.py``).
"""

from ._convert import (
    SUPERVISION_EVENT_KINDS,
    buffer_to_frame,
    error_response,
    frame_to_buffer,
    frames_to_buffer,
    manifest_from_proto,
    manifest_to_proto,
    supervision_event_to_proto,
)

__all__ = [
    "SUPERVISION_EVENT_KINDS",
    "buffer_to_frame",
    "error_response",
    "frame_to_buffer",
    "frames_to_buffer",
    "manifest_from_proto",
    "manifest_to_proto",
    "supervision_event_to_proto",
]
