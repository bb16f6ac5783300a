"""Runtime configuration (``runtime.toml``) and how it combines with a manifest.

Precedence for per-session settings: the manifest's ``metadata.multiprocess``
> runtime.toml ``[multiprocess]`` > built-in defaults. Global limits
(``[limits]``) always win: a manifest asking for more is a validation error.

The supervision policy is chosen whole, not key by key: the manifest's
``metadata.supervision`` > runtime.toml ``[supervision]`` (when it sets any of
strategy / max_restarts / within_secs) > fail-fast (``runtime.FAIL_FAST``:
one_for_all, no restarts — a failed node fails the session). Keys a policy
leaves out take the same defaults wherever it is written: one_for_one, 3
restarts within 5 s. A node's restart type: its manifest ``restart`` >
``[supervision] restart`` > transient. (``runtime/_plan.py`` resolves both.)

Example ``runtime.toml`` (every key optional)::

    [server]
    listen = "127.0.0.1:50051"

    [limits]
    max_sessions = 64
    max_processes = 64
    max_processes_per_session = 16
    max_threads = 64

    [multiprocess]
    channel_capacity = 100
    init_timeout_secs = 30
    close_timeout_secs = 30
    grace_period_secs = 2.0
    warm_pool = 0

    [supervision]                      # the default policy of sessions whose manifest sets none
    strategy = "one_for_one"
    max_restarts = 3
    within_secs = 5
    restart = "transient"              # restart type of nodes whose manifest names none

    [routing]
    default = "inprocess"
    explicit = { SpeechRecognitionNode = "multiprocess" }
    rules = [{ pattern = "*Model*", executor = "multiprocess", priority = 20 }]

    [nodes]
    modules = ["my_company.pipeline_nodes"]

    [remote]                           # nodes with a "host" run on another nursery_pipes server
    allowed_hosts = ["gpu-1.internal:50051"]   # the only hosts a manifest may name (default: none)
    tls = true
    token_env = "NURSERY_PIPES_REMOTE_TOKEN"
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from ._errors import ConfigError

__all__ = [
    "LimitsConfig",
    "MultiprocessDefaults",
    "NodesConfig",
    "RemoteConfig",
    "RoutingConfig",
    "RoutingRuleConfig",
    "RuntimeConfig",
    "ServerConfig",
    "SupervisionDefaults",
    "TracingConfig",
    "load_config",
]

Executor = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]*$")]
"""An executor's name: a built-in one or one a package registers (checked by the runtime)."""
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
MAX_RESTARTS_LIMIT = 1000
WITHIN_SECS_LIMIT = 3600.0
"""Bounds of a supervision policy, wherever it is written (runtime.toml, a manifest and its
JSON Schema, which ``tests/test_manifest_schema.py`` holds to the same numbers)."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class ServerConfig(_Section, frozen=True):
    listen: str = "127.0.0.1:50051"
    max_message_bytes: PositiveInt = 64 * 1024 * 1024
    tls_cert: str = ""
    tls_key: str = ""
    auth_token: str = ""
    """Bearer token clients must send; empty disables auth. Prefer ``auth_token_env``."""
    auth_token_env: str = ""
    """Name of an environment variable holding the bearer token."""
    drain_timeout_secs: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    metrics_interval_secs: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    """How often a stream gets StreamMetrics."""
    stall_timeout_secs: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """A stream whose client reads no response for this long is ended (its session cancelled)."""


class LimitsConfig(_Section, frozen=True):
    max_sessions: PositiveInt = 64
    max_processes: PositiveInt = 64
    """Worker processes across all sessions of this runtime."""
    max_processes_per_session: PositiveInt = 16
    """The cap no manifest may exceed."""
    max_threads: PositiveInt = 64
    """Node threads (the ``thread`` executor) across all sessions of this runtime."""

    def session_processes_refusal(self, requested: int) -> str | None:
        """Why a session may not use ``requested`` worker processes, or None if it may.

        The one rule for the per-session cap: the plan applies it to what a manifest asks for
        (``runtime._plan.resolve_settings``), and :class:`RuntimeConfig` to runtime.toml's own
        default, so that a manifest asking nothing always fits.
        """
        cap = self.max_processes_per_session
        if requested <= cap:
            return None
        return (
            f"{requested} exceeds this server's limit of {cap} processes per session "
            "(limits.max_processes_per_session)"
        )


class MultiprocessDefaults(_Section, frozen=True):
    max_processes_per_session: PositiveInt = 10
    channel_capacity: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 100
    init_timeout_secs: Annotated[float, msgspec.Meta(ge=1, le=300)] = 30.0
    close_timeout_secs: Annotated[float, msgspec.Meta(ge=1, le=300)] = 30.0
    """After close(), how long nodes may take to process what is queued and flush."""
    enable_backpressure: bool = True
    python_executable: str = ""
    grace_period_secs: Annotated[float, msgspec.Meta(ge=0, le=60)] = 2.0
    worker_type: Literal["forkserver", "spawn"] = "forkserver"
    warm_pool: Annotated[int, msgspec.Meta(ge=0, le=256)] = 0
    slot_count: Annotated[int, msgspec.Meta(ge=2, le=1024)] = 8
    slot_size: Annotated[int, msgspec.Meta(ge=4096)] = 256 * 1024
    checksums: bool = False
    share_fan_out: bool = True
    """A ``zero_copy`` node that sends a big frame to two or more ordinary nodes (which copy
    what they read) sends it to all of them by reference, keeping its input slot until they
    have read it, instead of by reference to one and copied to the others. False: the latter
    (its upstream keeps every ring slot free for pipelining; each other reader costs a copy)."""
    fuse_chains: bool = False
    """Consecutive multiprocess nodes joined by their only edge run in one worker process
    (a fused run): a frame goes from one to the next as a Python object — no ring, no copy, no
    wake-up — at the price of isolation (a failure restarts the whole run) and of parallelism
    (the run's nodes take turns on one core). A manifest may ask either way
    (``metadata.multiprocess.fuse_chains``)."""


class SupervisionDefaults(_Section, frozen=True):
    """``[supervision]``: what sessions get when their manifest says nothing.

    The three policy keys describe one policy, like a manifest's ``metadata.supervision``:
    setting any of them gives the server a default policy, whose unset keys take the
    manifest's defaults (``manifest.SupervisionConfig``: one_for_one, 3, 5 s); setting none
    keeps fail-fast. None here means "not set", so that the two cases stay apart.
    """

    strategy: Literal["one_for_one", "one_for_all", "rest_for_one"] | None = None
    max_restarts: Annotated[int, msgspec.Meta(ge=0, le=MAX_RESTARTS_LIMIT)] | None = None
    within_secs: Annotated[float, msgspec.Meta(gt=0, le=WITHIN_SECS_LIMIT)] | None = None
    restart: Literal["permanent", "transient", "temporary"] = "transient"
    """The restart type of nodes whose manifest entry names none. transient keeps today's
    behaviour under fail-fast; temporary would let any node fail without failing its session."""

    @property
    def sets_policy(self) -> bool:
        """Does this section set a default policy (else sessions fail fast)?"""
        return (self.strategy, self.max_restarts, self.within_secs) != (None, None, None)


class RoutingRuleConfig(_Section, frozen=True):
    pattern: str
    executor: Executor
    priority: int = 0


class RoutingConfig(_Section, frozen=True):
    default: Executor = "inprocess"
    seed_rule: bool = True
    """The seed's rule: node types named ``*Node`` with no declared executor go to multiprocess."""
    explicit: dict[str, Executor] = msgspec.field(default_factory=dict)
    rules: list[RoutingRuleConfig] = msgspec.field(default_factory=list)


class NodesConfig(_Section, frozen=True):
    modules: list[str] = msgspec.field(default_factory=list)
    entry_points: bool = True
    testing: bool = False
    """Register the fault-injection nodes of ``nursery_pipes.testing`` (never in production)."""


class MetricsConfig(_Section, frozen=True):
    """``[metrics]``: the Prometheus endpoint of ``nursery-pipes serve``."""

    listen: str = ""
    """``HOST:PORT`` to serve ``/metrics`` on (port 0: any free port); empty: no endpoint."""


class MonitorConfig(_Section, frozen=True):
    """``[monitor]``: the ``nursery_pipes.v1.Monitor`` service (what ``nursery-pipes top`` reads),
    served beside remotemedia.v1 on the server's own address."""

    enabled: bool = True
    """On by default: it is read-only, costs nothing until a client asks (a snapshot is taken
    per request), and is what an operator opens first. With a bearer token configured it
    requires the token, like the pipeline methods."""
    max_watchers: PositiveInt = 16
    """Watch calls served at once; more are refused (RESOURCE_EXHAUSTED)."""


class LoggingConfig(_Section, frozen=True):
    """``[logging]``: how ``nursery-pipes serve`` logs (a library user configures their own)."""

    format: Literal["text", "json"] = "text"
    """``text``: ``time LEVEL logger [session=… node=…] message``; ``json``: one object per line."""
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"


HostPort = Annotated[str, msgspec.Meta(pattern=r"^[^\s:]+:[0-9]{1,5}$(?!\n)")]
"""``name:port``, as a manifest's node ``host`` is written (manifest/_model.py HOST_PATTERN)."""


class RemoteConfig(_Section, frozen=True):
    """``[remote]``: the remote executor, which runs a node whose manifest entry has a ``host``
    on that other nursery_pipes server.

    A manifest comes from a client, so it must never choose where this server connects:
    ``allowed_hosts`` lists the only ``HOST:PORT`` values a manifest may name, exactly as
    written there. Empty (the default): no remote node is allowed at all.
    """

    allowed_hosts: list[HostPort] = msgspec.field(default_factory=list)
    tls: bool = False
    """Connect with TLS (verified against the system's CAs, or ``ca_file``)."""
    ca_file: str = ""
    """PEM file of the CAs that sign the remote servers' certificates (implies ``tls``)."""
    token_env: str = ""
    """Name of an environment variable holding the bearer token sent to remote servers."""

    def token_value(self) -> str:
        """The bearer token for remote servers ("" = none). Fails closed like the server's own:
        ``token_env`` naming an unset or empty variable is a ConfigError."""
        name = self.token_env
        if not name:
            return ""
        token = os.environ.get(name, "").strip()
        if not token:
            state = "is empty" if name in os.environ else "is not set"
            raise ConfigError(f"remote.token_env names the environment variable {name}, which {state}")
        return token


class TracingConfig(_Section, frozen=True):
    """``[tracing]``: OpenTelemetry spans of ``nursery-pipes serve`` (the ``otel`` extra).

    Off by default. The standard ``OTEL_*`` variables apply where the OpenTelemetry SDK reads
    them (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``); a key set here wins.
    """

    enabled: bool = False
    otlp_endpoint: str = ""
    """Base URL of an OTLP/HTTP collector (``http://127.0.0.1:4318``; ``/v1/traces`` is added);
    empty: the SDK's ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, else ``http://localhost:4318``."""
    service_name: str = ""
    """``service.name`` of the spans; empty: ``OTEL_SERVICE_NAME``, else ``nursery-pipes``."""
    frame_sample_ratio: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.01
    """The share of input sequences whose processing gets a span in every node (0: none)."""


class RuntimeConfig(_Section, frozen=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    multiprocess: MultiprocessDefaults = msgspec.field(default_factory=MultiprocessDefaults)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    supervision: SupervisionDefaults = msgspec.field(default_factory=SupervisionDefaults)
    nodes: NodesConfig = msgspec.field(default_factory=NodesConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    monitor: MonitorConfig = msgspec.field(default_factory=MonitorConfig)
    remote: RemoteConfig = msgspec.field(default_factory=RemoteConfig)
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)

    def __post_init__(self) -> None:
        refusal = self.limits.session_processes_refusal(self.multiprocess.max_processes_per_session)
        if refusal:
            raise ValueError(f"multiprocess.max_processes_per_session: {refusal}")

    def auth_token_value(self) -> str:
        """The bearer token clients must send ("" = no authentication).

        Fails closed: ``auth_token_env`` naming a variable that is unset or empty is a
        ConfigError, never a server without authentication.
        """
        name = self.server.auth_token_env
        if name:
            token = os.environ.get(name, "").strip()
            if not token:
                state = "is empty" if name in os.environ else "is not set"
                raise ConfigError(
                    f"server.auth_token_env names the environment variable {name}, which {state}; "
                    "refusing to serve without authentication (set it, or remove auth_token_env)"
                )
            return token
        return self.server.auth_token


def load_config(path: str | os.PathLike[str] | None = None, *, text: str | None = None) -> RuntimeConfig:
    """Load runtime.toml (or defaults when ``path`` and ``text`` are None)."""
    if path is None and text is None:
        return RuntimeConfig()
    where = os.fspath(path) if path is not None else "<runtime.toml>"
    if text is None:
        try:
            text = Path(where).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {where}: {exc.strerror}") from exc
    try:
        raw = msgspec.toml.decode(text)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None
    except RecursionError:  # the TOML parser recurses per level of nested arrays / inline tables
        raise ConfigError(f"{where}: invalid TOML: arrays or inline tables nested too deeply") from None
    _fit_default_to_cap(raw)
    try:
        return msgspec.convert(raw, RuntimeConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {_locate(str(exc))}") from None


def _fit_default_to_cap(raw: object) -> None:
    """A cap set below the built-in per-session default lowers that default too, unless the
    file sets it: lowering ``[limits]`` alone must not fail on a key the user never wrote."""
    if not isinstance(raw, dict):
        return
    limits, mp = raw.get("limits"), raw.setdefault("multiprocess", {})
    if not (isinstance(limits, dict) and isinstance(mp, dict)) or "max_processes_per_session" in mp:
        return
    cap = limits.get("max_processes_per_session")
    default = MultiprocessDefaults().max_processes_per_session
    if isinstance(cap, int) and not isinstance(cap, bool) and 1 <= cap < default:
        mp["max_processes_per_session"] = cap


def _locate(message: str) -> str:
    head, sep, tail = message.partition(" - at `$")
    if not sep:
        return message
    return f"[{tail.rstrip('`').lstrip('.')}] {head}"
