"""Every error nursery_pipes raises on purpose.

The hierarchy is flat and named by meaning, so callers can catch what they
can act on::

    NurseryPipesError
    ├── ManifestError          the manifest is wrong; .issues lists every problem with its JSON path
    ├── ConfigError            runtime.toml (or a flag/env override) is wrong; names the key
    ├── FrameError             a frame's bytes disagree with its declared format/shape
    │   └── FrameKindError     a frame of a kind the node does not take (also an InputError)
    ├── RegistryError          a node class is malformed, or registration clashes
    ├── InputError             input addressed to a node that cannot take it
    ├── ResourceLimitError     a per-session or global limit would be exceeded (nothing started)
    └── SessionError           a running session failed; .node_id names the culprit if one node was
        ├── NodeError              a node raised; .node_id, .phase, .remote_traceback
        │   ├── NodeInitTimeout    a node did not become ready within init_timeout_secs
        │   ├── NodeCloseTimeout   after close(), a node did not finish within close_timeout_secs
        │   └── NodeCrashed        a node's worker process died; .exitcode / .signal
        └── SessionClosedError     the session no longer accepts input (closed, cancelled or failed)

Errors caused by the user say *what* was wrong and *where* (JSON path, node id,
exit code or signal). Errors from libraries we call are translated at the
boundary with ``raise ... from exc`` so the original stays attached.
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "FrameError",
    "FrameKindError",
    "InputError",
    "ManifestError",
    "ManifestIssue",
    "NodeCloseTimeout",
    "NodeCrashed",
    "NodeError",
    "NodeInitTimeout",
    "NurseryPipesError",
    "RegistryError",
    "ResourceLimitError",
    "SessionClosedError",
    "SessionError",
]


class NurseryPipesError(Exception):
    """Base class of every error raised on purpose by nursery_pipes."""


@dataclass(frozen=True, slots=True, order=True)
class ManifestIssue:
    """One problem found in a manifest: where (a JSON path such as ``nodes[2].id``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ManifestError(NurseryPipesError, ValueError):
    """The manifest is invalid. ``issues`` holds *every* problem found, not just the first."""

    def __init__(self, issues: Sequence[ManifestIssue], source: str | None = None) -> None:
        self.issues: tuple[ManifestIssue, ...] = tuple(issues)
        self.source = source
        where = f" ({source})" if source else ""
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        count = len(self.issues)
        super().__init__(f"invalid manifest{where}: {count} problem{'s' * (count != 1)}\n{lines}")


class ConfigError(NurseryPipesError, ValueError):
    """The runtime configuration is invalid; the message names the file and key."""


class FrameError(NurseryPipesError, ValueError):
    """A frame's data disagrees with its declared format, shape or encoding."""


class RegistryError(NurseryPipesError):
    """A node class is malformed, a name clashes, or a node module failed to load."""


class InputError(NurseryPipesError, ValueError):
    """Input was addressed to a node that does not exist or cannot take input."""


class FrameKindError(FrameError, InputError):
    """Input for a node that does not take frames of that kind (text for an audio-only node).

    A FrameError — the data does not fit the node, which the gRPC API reports as
    TYPE_VALIDATION — and an InputError, as it was before it had a class of its own.
    """


class ResourceLimitError(NurseryPipesError):
    """Starting this would exceed a per-session or global limit. Nothing was started."""


class SessionError(NurseryPipesError):
    """A session failed. ``node_id`` names the node responsible, when there is one."""

    def __init__(self, message: str, *, node_id: str | None = None) -> None:
        super().__init__(message)
        self.node_id = node_id


class NodeError(SessionError):
    """A node raised. ``phase`` is where (initialize, process, flush, cleanup)."""

    def __init__(
        self,
        node_id: str,
        phase: str,
        message: str,
        *,
        remote_traceback: str | None = None,
    ) -> None:
        super().__init__(f"node {node_id!r} failed in {phase}: {message}", node_id=node_id)
        self.phase = phase
        self.remote_traceback = remote_traceback
        self.restarts = 0
        """Restarts within the policy's window before this failure made the supervisor give up."""
        self.gave_up = ""
        """Why the session's supervision policy gave up (set when it had restarted nodes)."""

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} — {self.gave_up}" if self.gave_up else text


class NodeInitTimeout(NodeError):
    """A node did not become ready within ``init_timeout_secs``."""

    def __init__(self, node_id: str, timeout: float) -> None:
        super().__init__(node_id, "initialize", f"not ready after {timeout:g} s (init_timeout_secs)")
        self.timeout = timeout


class NodeCloseTimeout(NodeError):
    """After close(), nodes did not finish their queued input and flush within ``close_timeout_secs``.

    ``node_ids`` are the nodes that hold the session up (every input of theirs has ended, yet
    they still run), the first is ``node_id``; ``waiting`` are the nodes still running only
    because they wait for those.
    """

    def __init__(self, node_ids: Sequence[str], timeout: float, *, waiting: Sequence[str] = ()) -> None:
        first, *others = node_ids
        message = f"not finished {timeout:g} s after close (close_timeout_secs): still processing its input or flushing"
        if others:
            message += f"; so are {', '.join(repr(n) for n in others)}"
        if waiting:
            message += f"; waiting for {'them' if others else 'it'}: {', '.join(repr(n) for n in waiting)}"
        super().__init__(first, "flush", message)
        self.node_ids = tuple(node_ids)
        self.waiting = tuple(waiting)
        self.timeout = timeout


class NodeCrashed(NodeError):
    """A node's worker process died. Exactly one of ``exitcode``/``signal`` is set."""

    def __init__(
        self, node_id: str, phase: str, *, exitcode: int | None = None, signal: int | None = None
    ) -> None:
        self.exitcode = exitcode
        self.signal = signal
        super().__init__(node_id, phase, f"worker process {describe_exit(exitcode, signal)}")


class SessionClosedError(SessionError):
    """The session no longer accepts input: it was closed, cancelled or has failed."""


def describe_exit(exitcode: int | None, signal: int | None) -> str:
    """Human text for how a process ended: ``exited with code 3`` / ``killed by SIGKILL (9)``."""
    if signal is not None:
        try:
            name = _signal.Signals(signal).name
        except ValueError:
            name = f"signal {signal}"
        hint = " (out of memory?)" if signal == _signal.SIGKILL else ""
        return f"killed by {name} ({signal}){hint}"
    return f"exited with code {exitcode}"
