"""runtime.toml ``[tracing]`` → a tracer, without importing OpenTelemetry until it is asked for."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .._config import TracingConfig
from .._errors import ConfigError

if TYPE_CHECKING:
    from ._otel import OpenTelemetryTracer

__all__ = ["tracer_from_config", "traces_url"]

EXTRA_HINT = "pip install 'nursery-pipes[otel]'"


def traces_url(endpoint: str) -> str:
    """``[tracing] otlp_endpoint`` (a collector's base URL, like ``OTEL_EXPORTER_OTLP_ENDPOINT``)
    → the URL spans are posted to: ``/v1/traces`` added unless the path already says where."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"[tracing] otlp_endpoint: expected an http(s) URL such as http://127.0.0.1:4318, got {endpoint!r}"
        )
    if parts.path.rstrip("/"):
        return endpoint
    return endpoint.rstrip("/") + "/v1/traces"


def tracer_from_config(config: TracingConfig) -> OpenTelemetryTracer | None:
    """The tracer ``[tracing]`` asks for (spans batched and exported by OTLP/HTTP), or None
    when tracing is off. A ``ConfigError`` — one line — when the ``otel`` extra is missing or
    the endpoint is not a URL. Call the tracer's ``shutdown()`` at exit: it sends what is left."""
    if not config.enabled:
        return None
    url = traces_url(config.otlp_endpoint) if config.otlp_endpoint else None
    try:
        from ._otel import OpenTelemetryTracer, otlp_provider
    except ImportError as exc:
        raise ConfigError(
            f"tracing is enabled ([tracing] enabled, serve --tracing), but OpenTelemetry is not "
            f"installed ({exc}); install the otel extra: {EXTRA_HINT}"
        ) from None
    return OpenTelemetryTracer(
        otlp_provider(url, config.service_name), frame_sample_ratio=config.frame_sample_ratio
    )
