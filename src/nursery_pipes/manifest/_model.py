"""Typed shape of a v1 manifest (msgspec structs), mirroring ``schema/manifest.v1.schema.json``.

The two are kept in agreement by ``tests/test_manifest_schema.py``: the structs
give a fast typed decode for valid manifests, the JSON Schema gives every
structural error at once (with its path) for invalid ones, and is shipped for
editors and other tools.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .._config import MAX_RESTARTS_LIMIT, WITHIN_SECS_LIMIT

__all__ = [
    "Capabilities",
    "ConnectionSpec",
    "CpuRequirement",
    "GpuRequirement",
    "ManifestDoc",
    "MetadataDoc",
    "MultiprocessConfig",
    "NodeSpec",
    "SupervisionConfig",
]

Executor = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]*$")]
"""An executor's name; whether the runtime has it is checked when the pipeline is planned."""
DataType = Literal["audio", "video", "tensor", "json", "text", "binary", "any"]
# ``(?!\n)``: Python's ``$`` also matches before a final newline, ECMA-262's (the schema's
# dialect) does not; the lookahead makes both reject "a\n". Keep in sync with the schema.
NODE_ID_PATTERN = r"^[a-zA-Z0-9_-]+$(?!\n)"
HOST_PATTERN = r"^[^\s:]+:[0-9]{1,5}$(?!\n)"
StrategyName = Literal["one_for_one", "one_for_all", "rest_for_one"]
"""A supervision strategy (``runtime.Strategy`` by value; the manifest layer sits below the runtime)."""
RestartName = Literal["permanent", "transient", "temporary"]
"""A node's restart type (``runtime.RestartType`` by value)."""


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, omit_defaults=True):
    pass


class GpuRequirement(_Strict, frozen=True):
    type: Literal["cuda", "rocm", "metal", "vulkan", "any"] = "any"
    min_memory_gb: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    required: bool = False


class CpuRequirement(_Strict, frozen=True):
    cores: Annotated[int, msgspec.Meta(ge=1)] = 1
    arch: Literal["x86_64", "aarch64", "arm", "any"] = "any"


class Capabilities(_Strict, frozen=True):
    gpu: GpuRequirement | None = None
    cpu: CpuRequirement | None = None
    memory_gb: Annotated[float, msgspec.Meta(ge=0)] | None = None


class MultiprocessConfig(_Strict, frozen=True):
    """``metadata.multiprocess``: per-session settings; unset fields fall back to runtime.toml."""

    max_processes_per_session: Annotated[int, msgspec.Meta(ge=1)] | None = None
    channel_capacity: Annotated[int, msgspec.Meta(ge=1, le=10000)] | None = None
    init_timeout_secs: Annotated[float, msgspec.Meta(ge=1, le=300)] | None = None
    close_timeout_secs: Annotated[float, msgspec.Meta(ge=1, le=300)] | None = None
    python_executable: str | None = None
    enable_backpressure: bool | None = None
    fuse_chains: bool | None = None
    """Run consecutive multiprocess nodes joined by their only edge in one worker (a fused
    run); None: runtime.toml's ``[multiprocess] fuse_chains`` (off by default)."""
    executor_overrides: dict[str, Executor] = msgspec.field(default_factory=dict)


class SupervisionConfig(_Strict, frozen=True):
    """``metadata.supervision``: how this session restarts failed nodes — a policy as a whole.

    The keys left out take these defaults (Elixir's ``Supervisor`` defaults), not
    runtime.toml's: a policy is one decision, and mixing the manifest's strategy with the
    server's intensity would make one nobody wrote (``runtime/_plan.py``,
    ``resolve_supervision``). Without ``metadata.supervision`` the server's default applies.
    """

    strategy: StrategyName = "one_for_one"
    max_restarts: Annotated[int, msgspec.Meta(ge=0, le=MAX_RESTARTS_LIMIT)] = 3
    """More than this many restarts within ``within_secs`` fails the session; 0: none."""
    within_secs: Annotated[float, msgspec.Meta(gt=0, le=WITHIN_SECS_LIMIT)] = 5.0


class NodeSpec(_Strict, frozen=True):
    """One node of a manifest."""

    id: Annotated[str, msgspec.Meta(pattern=NODE_ID_PATTERN)]
    node_type: Annotated[str, msgspec.Meta(min_length=1)]
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    capabilities: Capabilities | None = None
    host: Annotated[str, msgspec.Meta(pattern=HOST_PATTERN)] | None = None
    is_streaming: bool = False
    runtime_hint: Literal["rustpython", "cpython", "cpython_wasm", "auto"] | None = None
    input_types: list[DataType] = msgspec.field(default_factory=list)
    output_types: list[DataType] = msgspec.field(default_factory=list)
    restart: RestartName | None = None
    """None: the server's default restart type (runtime.toml ``[supervision] restart``)."""


class ConnectionSpec(_Strict, frozen=True):
    """A directed edge ``from`` → ``to`` between node ids."""

    from_: Annotated[str, msgspec.Meta(min_length=1)] = msgspec.field(name="from")
    to: Annotated[str, msgspec.Meta(min_length=1)]


class MetadataDoc(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    # Unknown keys are allowed here (kept separately by the parser), so no forbid_unknown_fields.
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    description: str = ""
    created_at: str = ""
    multiprocess: MultiprocessConfig | None = None
    supervision: SupervisionConfig | None = None


class ManifestDoc(_Strict, frozen=True):
    version: Literal["v1"]
    metadata: MetadataDoc
    nodes: Annotated[list[NodeSpec], msgspec.Meta(min_length=1)]
    connections: list[ConnectionSpec]
    schema: str | None = msgspec.field(default=None, name="$schema")


METADATA_KEYS = frozenset(f.encode_name for f in msgspec.structs.fields(MetadataDoc))
