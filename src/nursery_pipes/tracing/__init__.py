"""OpenTelemetry traces of sessions: the ``otel`` extra (docs/design.md §4, "Traces").

``nursery-pipes serve --tracing`` (runtime.toml ``[tracing]``) builds a tracer with
:func:`tracer_from_config`; a program that embeds a runtime passes one itself::

    from nursery_pipes.tracing import OpenTelemetryTracer
    runtime = Runtime(config, tracer=OpenTelemetryTracer(provider, frame_sample_ratio=0.05))

Importing this package loads no OpenTelemetry: :class:`OpenTelemetryTracer` is loaded on first
use, and :func:`tracer_from_config` says in one line (a ``ConfigError``) when the extra is
missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._setup import tracer_from_config, traces_url

if TYPE_CHECKING:
    from ._otel import OpenTelemetryTracer

__all__ = ["OpenTelemetryTracer", "tracer_from_config", "traces_url"]


def __getattr__(name: str) -> Any:
    if name == "OpenTelemetryTracer":
        from ._otel import OpenTelemetryTracer

        return OpenTelemetryTracer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
