"""The remotemedia.v1 gRPC service (grpclib + betterproto), served from inside trio.

Importing this package imports trio-asyncio, which changes asyncio's event
loop policy for the whole process: only the server and the CLI's ``serve``
import it.
"""

from ._server import Server, parse_listen

__all__ = ["Server", "parse_listen"]
