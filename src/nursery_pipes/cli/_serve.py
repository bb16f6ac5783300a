"""``nursery-pipes serve``: the gRPC server, with signals for graceful drain.

Configuration precedence: command-line flags > environment > runtime.toml > defaults.
Environment variables are ``NURSERY_PIPES_<SECTION>__<KEY>`` (e.g.
``NURSERY_PIPES_SERVER__LISTEN=0.0.0.0:50051``, ``NURSERY_PIPES_LIMITS__MAX_SESSIONS=8``);
values are read as TOML values when they parse as one (numbers, booleans), else as strings.
"""

from __future__ import annotations

import logging
import os
import signal
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from .._config import RuntimeConfig, load_config
from .._errors import ConfigError, NurseryPipesError
from .._logging import configure as configure_logging
from .._logging import unconfigure as unconfigure_logging

if TYPE_CHECKING:
    from ..runtime import Tracer
    from ..service._prometheus import MetricsExporter

__all__ = ["ENV_PREFIX", "apply_overrides", "serve", "sole_leaf"]

ENV_PREFIX = "NURSERY_PIPES_"
_FLAG_NAMES = {
    "logging.format": "--log-format",
    "logging.level": "--log-level",
    "metrics.listen": "--metrics-listen",
    "monitor.enabled": "--monitor/--no-monitor",
    "tracing.enabled": "--tracing",
}


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(
    config: RuntimeConfig, *, env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None
) -> RuntimeConfig:
    """A new config with environment variables, then flags (``{"server.listen": ...}``), applied."""
    doc: dict[str, Any] = msgspec.to_builtins(config)
    for name, text in (os.environ if env is None else env).items():
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        _set(doc, section, key, _env_value(text), f"environment variable {name}")
    for dotted, value in (flags or {}).items():
        if value is not None:
            section, _, key = dotted.partition(".")
            flag = _FLAG_NAMES.get(dotted, f"--{key.replace('_', '-')}")
            _set(doc, section, key, value, flag)
    try:
        return msgspec.convert(doc, RuntimeConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"configuration override: {exc}") from None


def _set(doc: dict[str, Any], section: str, key: str, value: Any, origin: str) -> None:
    if section not in doc or not isinstance(doc[section], dict):
        raise ConfigError(f"{origin}: unknown configuration section {section!r}")
    if key not in doc[section]:
        raise ConfigError(f"{origin}: unknown key {key!r} in [{section}]")
    doc[section][key] = value


SERVICE_RESTARTS = 3
"""How often ``serve`` brings its service (runtime + gRPC server) back after a crash ..."""
SERVICE_WINDOW_SECS = 60.0
"""... within this many seconds, before it gives up and exits 1 for the service manager."""


def serve(config_path: Path | None, flags: Mapping[str, Any], announce: Any) -> int:
    """Run the server until SIGTERM/SIGINT (drain) — a second signal stops at once.

    Exit code 0 after a drain or a stop; 1 when the service crashed more than
    :data:`SERVICE_RESTARTS` times within :data:`SERVICE_WINDOW_SECS`.
    """
    from ..tracing import tracer_from_config

    config = apply_overrides(load_config(config_path), flags=flags)
    config.auth_token_value()  # fails closed, before anything starts: a named but unset variable
    tracer = tracer_from_config(config.tracing)  # a missing otel extra: one line, exit 2
    configure_logging(config.logging.format, config.logging.level)
    if config.logging.format == "json":  # stderr carries JSON lines only: announcements too
        announce = logging.getLogger("nursery_pipes.serve").info
    try:
        return trio.run(_serve, config, announce, tracer)
    finally:
        unconfigure_logging()
        if tracer is not None:
            tracer.shutdown()  # sends the spans still batched


class _Serving:
    """What the signal watcher and the service's lives share (docs/design.md §4, the tree)."""

    def __init__(self) -> None:
        self.server: Any = None
        """The running life's Server (None between lives)."""
        self.draining = False
        """A signal asked to drain: a life ending now (or about to start) is the last."""
        self.startup_error: BaseException | None = None
        self.exporter: MetricsExporter | None = None
        """The /metrics endpoint (``[metrics] listen``): it outlives the service's lives."""


async def _serve(config: RuntimeConfig, announce: Any, tracer: Tracer | None = None) -> int:
    """The top of the server's supervision tree: a supervisor restarts the service — a fresh
    runtime and gRPC server on the same address — when it crashes after it was listening
    (one_for_one, at most SERVICE_RESTARTS within SERVICE_WINDOW_SECS); beside it, the
    signal watcher, which outlives the service's lives."""
    from ..runtime import ChildFailed, ChildSpec, Strategy, SupervisionPolicy, Supervisor
    from ..service import parse_listen

    parse_listen(config.server.listen)  # a bad address is reported before anything starts
    serving = _Serving()
    if config.metrics.listen:
        serving.exporter = _start_metrics(config.metrics.listen, announce)
    if tracer is not None:
        announce(f"tracing: {_tracing_summary(config)}")
    supervisor = Supervisor(
        SupervisionPolicy(
            Strategy.ONE_FOR_ONE, max_restarts=SERVICE_RESTARTS, within_secs=SERVICE_WINDOW_SECS
        ),
        on_failure=lambda record: announce(f"{record.reason}; it failed with {record.error!r}"),
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, serving, nursery.cancel_scope, announce)
            await supervisor.run(
                [ChildSpec.task("service", _service_life, config, serving, announce, tracer)]
            )
            nursery.cancel_scope.cancel()  # the service is done: stop watching signals
    except (ChildFailed, BaseExceptionGroup) as exc:
        error = sole_leaf(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if not isinstance(error, ChildFailed):
            raise
        announce(f"giving up: {error}")
        return 1
    finally:
        if serving.exporter is not None:
            serving.exporter.stop()
    if serving.startup_error is not None:
        raise serving.startup_error
    announce("stopped")
    return 0


async def _service_life(
    config: RuntimeConfig, serving: _Serving, announce: Any, tracer: Tracer | None = None
) -> None:
    """One life of the service: a runtime, its gRPC server, until drained or stopped.

    A configuration error before it listens, or the server failing to take its address (a bad
    TLS file, an address that cannot be bound), is not restarted: it ends ``serve`` with a one-line error (exit 2). Any other failure —
    the runtime's shared tasks, the server once listening — is raised to the supervisor,
    which starts the next life."""
    from ..runtime import Runtime
    from ..service import Server, parse_listen

    if serving.draining:
        return  # a signal came between two lives: nothing runs, nothing to drain
    host, _ = parse_listen(config.server.listen)
    phase = "starting"  # → "binding" (the server takes its address) → "listening"

    def started(port: int) -> None:
        nonlocal phase
        phase = "listening"
        announce(f"listening on {host}:{port}")

    try:
        async with Runtime(config, tracer=tracer) as runtime:
            exporter = serving.exporter
            server = Server(runtime, metrics=exporter.grpc if exporter is not None else None)
            serving.server = server
            if exporter is not None:
                exporter.follow(runtime)
            try:
                phase = "binding"
                await server.serve(task_status=_Started(started))
            finally:
                serving.server = None
                if exporter is not None:
                    exporter.follow(None)
    except BaseException as exc:
        if _is_a_stop(exc):
            raise
        leaf = sole_leaf(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if (phase != "listening" and isinstance(leaf, NurseryPipesError)) or (
            phase == "binding" and isinstance(leaf, OSError)
        ):
            serving.startup_error = _startup_error(leaf, config)
            return
        # A crash: the supervisor decides, and is told what failed, unwrapped.
        if isinstance(leaf, Exception) and leaf is not exc:
            raise leaf from None
        raise


def _is_a_stop(exc: BaseException) -> bool:
    """Cancelled (a second signal), KeyboardInterrupt and the like: not a failure to report."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(Exception)[1] is not None
    return not isinstance(exc, Exception)


def _start_metrics(listen: str, announce: Any) -> MetricsExporter:
    from ..service import parse_listen
    from ..service._prometheus import MetricsExporter

    host, port = parse_listen(listen)
    exporter = MetricsExporter()
    try:
        bound = exporter.start(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
    announce(f"metrics on http://{host}:{bound}/metrics")
    return exporter


def _tracing_summary(config: RuntimeConfig) -> str:
    from ..tracing import traces_url

    tracing = config.tracing
    where = (
        traces_url(tracing.otlp_endpoint) if tracing.otlp_endpoint else "the OTEL_EXPORTER_OTLP_* endpoint"
    )
    return f"spans by OTLP/HTTP to {where}, frames of {tracing.frame_sample_ratio:.2%} of inputs sampled"


def _startup_error(error: NurseryPipesError | OSError, config: RuntimeConfig) -> NurseryPipesError:
    """What a failure to take the address means to the user: a bad TLS file or an address
    that cannot be bound is a mistake to report in one line (exit 2), not a traceback."""
    if isinstance(error, NurseryPipesError):
        return error
    return ConfigError(f"cannot listen on {config.server.listen}: {error.strerror or error}")


def sole_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside ``group`` and its nested groups, or None if there are several."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


class _Started:
    def __init__(self, callback: Any) -> None:
        self._callback = callback

    def started(self, value: Any = None) -> None:
        self._callback(value)


async def _watch_signals(serving: _Serving, scope: trio.CancelScope, announce: Any) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not serving.draining:
                serving.draining = True
                server = serving.server
                if server is None:
                    announce(f"{name}: stopping (the service is between restarts)")
                    continue
                server.drain()  # first: once the line below is out, new connections are refused
                announce(
                    f"{name}: draining — no new sessions, running ones get "
                    f"{server.config.server.drain_timeout_secs:g} s"
                )
            else:
                announce(f"{name} again: stopping now")
                scope.cancel()
                return
