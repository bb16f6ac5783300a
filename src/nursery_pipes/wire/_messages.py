"""Two implementations of the same remotemedia.v1 messages, and the few places they differ.

- **betterproto** (``nursery_pipes._proto``, generated and committed): typed
  dataclasses — the message layer of Python code that *uses* the API (the
  client, tests, user programs).
- **upb** (``google.protobuf``'s C implementation), with classes built at run
  time from the descriptor set generated alongside the betterproto code
  (``_proto/remotemedia_v1.binpb``): what the *server* uses on its
  per-message path. betterproto 2.0.0b7 costs ~110 µs to decode a 4 KiB
  DataChunk and ~80 µs to build a ChunkResult, upb well under 1 µs each
  (``benchmarks/bench_grpc.py``, section 4b) — the difference between a
  server that keeps up and one that does not.

Both speak the same wire format, so either side can talk to the other. The
conversions in :mod:`._convert` take a :class:`Messages` namespace and use
the helpers below where the two APIs differ (oneofs, presence of
sub-messages and optional fields, the ``from`` field of Connection); enum
fields are set as plain ints, which both accept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from typing import Any

import betterproto
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message as UpbMessage

from .._proto.remotemedia import v1 as pb

__all__ = [
    "BETTERPROTO",
    "UPB",
    "Messages",
    "conn_from",
    "has",
    "new_pool",
    "optional",
    "upb_messages",
    "which",
]

PACKAGE = "remotemedia.v1"


class Messages:
    """A namespace of message classes: ``ns.DataBuffer(audio=ns.AudioBuffer(...))``."""

    def __init__(self, name: str, lookup: Callable[[str], Any], package: str = PACKAGE) -> None:
        self.name = name
        self._lookup = lookup
        self._package = package

    def __getattr__(self, item: str) -> Any:
        if item.startswith("_"):
            raise AttributeError(item)  # (introspection: __wrapped__, __iter__, ...)
        try:
            cls = self._lookup(item)
        except (KeyError, AttributeError):
            raise AttributeError(f"{self._package} has no message {item!r}") from None
        setattr(self, item, cls)  # cached: the next lookup is a plain attribute
        return cls

    def __repr__(self) -> str:
        return f"<Messages {self.name}>"


def new_pool(*packages: str) -> Any:
    """A new descriptor pool holding proto ``packages`` (default: remotemedia.v1), each from the
    descriptor set generated beside the betterproto code (``remotemedia_v1.binpb``, ...)."""
    pool = descriptor_pool.DescriptorPool()
    for package in packages or (PACKAGE,):
        name = package.replace(".", "_") + ".binpb"
        data = resources.files("nursery_pipes._proto").joinpath(name).read_bytes()
        for proto in descriptor_pb2.FileDescriptorSet.FromString(data).file:
            pool.Add(proto)
    return pool


def upb_messages(package: str) -> Messages:
    """The upb classes of one proto package (a pool of its own), e.g. the server's
    ``nursery_pipes.v1`` monitor messages."""
    pool = functools.cache(lambda: new_pool(package))

    def lookup(name: str) -> Any:
        return message_factory.GetMessageClass(pool().FindMessageTypeByName(f"{package}.{name}"))

    return Messages(f"upb {package}", lookup, package)


BETTERPROTO = Messages("betterproto", lambda name: getattr(pb, name))
UPB = upb_messages(PACKAGE)


def which(message: Any, group: str) -> tuple[str, Any]:
    """The set member of a oneof: (field name, value), or ("", None)."""
    if isinstance(message, UpbMessage):
        name = message.WhichOneof(group)
        return (name, getattr(message, name)) if name else ("", None)
    found: tuple[str, Any] = betterproto.which_one_of(message, group)
    return found


def has(message: Any, field: str) -> bool:
    """Is the (non-oneof) sub-message ``field`` set?"""
    if isinstance(message, UpbMessage):
        return bool(message.HasField(field))
    value = getattr(message, field)
    # betterproto never leaves a sub-message None: a parsed one knows whether it was on the
    # wire; one built in code counts if it encodes to anything.
    return bool(betterproto.serialized_on_wire(value)) or bool(bytes(value))


def optional(message: Any, field: str) -> Any:
    """A proto3 ``optional`` scalar, or None when unset."""
    if isinstance(message, UpbMessage):
        return getattr(message, field) if message.HasField(field) else None
    return getattr(message, field)


def conn_from(connection: Any) -> str:
    """``Connection.from`` (betterproto renames it ``from_``)."""
    if isinstance(connection, UpbMessage):
        return str(getattr(connection, "from"))
    return str(connection.from_)
