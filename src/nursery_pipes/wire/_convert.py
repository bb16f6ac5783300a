"""remotemedia.v1 messages ↔ library values. Sans-I/O.

The gRPC layer speaks protobuf; everything behind it speaks frames, manifest
dicts and our exceptions. This module is the only place that knows both.

Conventions (recorded in docs/design.md, "gRPC API"):

- ``AudioBuffer.format`` unspecified means f32; ``channels`` 0 means mono;
  ``num_samples`` is the total number of samples across all channels (as
  upstream's common.proto defines it: 320 for 160 stereo frames); when set on
  input it must match the bytes, and outputs always set it.
- ``DataBuffer.metadata`` travels as the frame's metadata.
- A manifest arrives as ``PipelineManifest`` and is turned into the JSON
  document form, so validation errors carry the same JSON paths a file would
  (``nodes[1].params.chunk_size``); ``params`` is a JSON string on the wire.
  ``metadata.supervision`` and each of its keys cross only when present
  (proto3 ``optional``): an empty object is a policy of defaults, and
  ``max_restarts`` 0 is a value; a node's ``restart`` is "" when not set.
- A sink that produced several frames in a unary ``ExecutePipeline`` is
  returned as one buffer: audio concatenated (same format), text joined,
  JSON as an array of the values, binary concatenated; tensors and video
  frames must be single (else an error names the sink).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import (
    FrameError,
    InputError,
    ManifestError,
    ManifestIssue,
    NodeError,
    NurseryPipesError,
    ResourceLimitError,
)
from .._proto.remotemedia import v1 as pb
from ..frames import (
    AudioFormat,
    AudioFrame,
    BinaryFrame,
    Frame,
    JsonFrame,
    TensorFrame,
    TextFrame,
    VideoFrame,
)
from ..manifest._nesting import text_issue
from ._messages import BETTERPROTO, Messages, conn_from, has, optional, which

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

SUPERVISION_EVENT_KINDS = frozenset({"failed", "restarted", "stopped", "dropped"})
"""``SupervisionEvent.kind``: what supervision did about a node (docs/design.md §4)."""

_HINTS = {
    pb.DataTypeHint.AUDIO: "audio",
    pb.DataTypeHint.VIDEO: "video",
    pb.DataTypeHint.TENSOR: "tensor",
    pb.DataTypeHint.JSON: "json",
    pb.DataTypeHint.TEXT: "text",
    pb.DataTypeHint.BINARY: "binary",
    pb.DataTypeHint.ANY: "any",
}
_HINTS_BACK = {v: k for k, v in _HINTS.items()}
_RUNTIME = {
    pb.RuntimeHint.RUSTPYTHON: "rustpython",
    pb.RuntimeHint.CPYTHON: "cpython",
    pb.RuntimeHint.CPYTHON_WASM: "cpython_wasm",
    pb.RuntimeHint.AUTO: "auto",
}
_RUNTIME_BACK = {v: k for k, v in _RUNTIME.items()}


# -- data ------------------------------------------------------------------------------------------


def buffer_to_frame(buffer: Any, where: str = "buffer") -> Frame:
    """Decode a DataBuffer (either implementation); a FrameError says what disagrees
    (``where`` names the field)."""
    kind, value = which(buffer, "data_type")
    metadata = dict(buffer.metadata)
    try:
        return _decode(kind, value, metadata)
    except FrameError as exc:
        raise FrameError(f"{where}: {exc}") from None
    except (ValueError, OverflowError) as exc:  # bytes off the wire that no frame check caught
        raise FrameError(f"{where}: cannot decode {kind or 'buffer'}: {exc}") from exc


def _decode(kind: str, value: Any, metadata: dict[str, str]) -> Frame:
    if kind == "audio":
        return _audio(value, metadata)
    if kind == "video":
        fmt = value.format or int(pb.PixelFormat.RGB24)
        return VideoFrame.from_bytes(
            value.pixel_data,
            width=value.width,
            height=value.height,
            format=int(fmt),
            frame_number=value.frame_number,
            timestamp_us=value.timestamp_us,
            metadata=metadata,
        )
    if kind == "tensor":
        if not value.dtype:
            raise FrameError("tensor dtype is not set")
        return TensorFrame.from_bytes(
            value.data,
            shape=list(value.shape),
            dtype=int(value.dtype),
            layout=value.layout,
            metadata=metadata,
        )
    if kind == "json":
        return JsonFrame.from_bytes(value.json_payload, schema_type=value.schema_type, metadata=metadata)
    if kind == "text":
        return TextFrame.from_bytes(
            value.text_data, encoding=value.encoding or "utf-8", language=value.language, metadata=metadata
        )
    if kind == "binary":
        return BinaryFrame.from_bytes(value.data, mime_type=value.mime_type, metadata=metadata)
    raise FrameError("no data set (one of audio, video, tensor, json, text, binary is required)")


def _audio(value: Any, metadata: dict[str, str]) -> AudioFrame:
    if value.sample_rate == 0:
        raise FrameError("audio sample_rate is not set")
    try:
        fmt = AudioFormat(int(value.format)) if value.format else AudioFormat.F32
    except ValueError:  # a value this side's AudioFormat does not know (proto3 keeps unknown enums)
        known = ", ".join(f"{f.value} ({f.name.lower()})" for f in AudioFormat)
        raise FrameError(f"audio format {int(value.format)} is not one of {known}") from None
    channels = value.channels or 1
    frame = AudioFrame.from_bytes(
        value.samples, sample_rate=value.sample_rate, channels=channels, format=fmt, metadata=metadata
    )
    total = frame.num_samples * channels
    if value.num_samples and value.num_samples != total:
        raise FrameError(
            f"audio num_samples is {value.num_samples} but the {len(value.samples)} bytes hold "
            f"{total} samples ({fmt.name.lower()}, {channels} channel(s); num_samples counts "
            "the samples of all channels)"
        )
    return frame


def frame_to_buffer(frame: Frame, ns: Messages = BETTERPROTO) -> Any:
    """A DataBuffer (of the ``ns`` implementation) holding ``frame``."""
    metadata = dict(frame.metadata)
    if isinstance(frame, AudioFrame):
        return ns.DataBuffer(
            audio=ns.AudioBuffer(
                samples=frame.to_bytes(),
                sample_rate=frame.sample_rate,
                channels=frame.channels,
                format=int(frame.format),
                num_samples=frame.num_samples * frame.channels,  # all channels (upstream's meaning)
            ),
            metadata=metadata,
        )
    if isinstance(frame, VideoFrame):
        return ns.DataBuffer(
            video=ns.VideoFrame(
                pixel_data=frame.to_bytes(),
                width=frame.width,
                height=frame.height,
                format=int(frame.format),
                frame_number=frame.frame_number,
                timestamp_us=frame.timestamp_us,
            ),
            metadata=metadata,
        )
    if isinstance(frame, TensorFrame):
        return ns.DataBuffer(
            tensor=ns.TensorBuffer(
                data=frame.to_bytes(),
                shape=list(frame.data.shape),
                dtype=int(frame.dtype),
                layout=frame.layout,
            ),
            metadata=metadata,
        )
    if isinstance(frame, JsonFrame):
        return ns.DataBuffer(
            json=ns.JsonData(json_payload=frame.to_bytes().decode(), schema_type=frame.schema_type),
            metadata=metadata,
        )
    if isinstance(frame, TextFrame):
        return ns.DataBuffer(
            text=ns.TextBuffer(text_data=frame.to_bytes(), encoding="utf-8", language=frame.language),
            metadata=metadata,
        )
    if isinstance(frame, BinaryFrame):
        return ns.DataBuffer(
            binary=ns.BinaryBuffer(data=frame.data, mime_type=frame.mime_type), metadata=metadata
        )
    raise TypeError(f"cannot convert {type(frame).__name__}")


def frames_to_buffer(node_id: str, frames: Sequence[Frame], ns: Messages = BETTERPROTO) -> Any:
    """One buffer for everything a sink produced (see the module docstring)."""
    if len(frames) == 1:
        return frame_to_buffer(frames[0], ns)
    if not frames:
        return ns.DataBuffer()
    first = frames[0]
    if all(isinstance(f, AudioFrame) for f in frames):
        audio = [f for f in frames if isinstance(f, AudioFrame)]
        layout = {(f.sample_rate, f.channels, f.format) for f in audio}
        if len(layout) == 1:
            joined = AudioFrame(
                samples=np.concatenate([f.samples for f in audio]),
                sample_rate=audio[0].sample_rate,
                metadata=first.metadata,
            )
            return frame_to_buffer(joined, ns)
    elif all(isinstance(f, TextFrame) for f in frames):
        texts = [f for f in frames if isinstance(f, TextFrame)]
        return frame_to_buffer(
            TextFrame(
                text="".join(t.text for t in texts), language=texts[0].language, metadata=first.metadata
            ),
            ns,
        )
    elif all(isinstance(f, JsonFrame) for f in frames):
        values = [f.value for f in frames if isinstance(f, JsonFrame)]
        return frame_to_buffer(JsonFrame(value=values, schema_type="array", metadata=first.metadata), ns)
    elif all(isinstance(f, BinaryFrame) for f in frames):
        blobs = [f for f in frames if isinstance(f, BinaryFrame)]
        return frame_to_buffer(
            BinaryFrame(
                data=b"".join(b.data for b in blobs), mime_type=blobs[0].mime_type, metadata=first.metadata
            ),
            ns,
        )
    raise InputError(
        f"sink {node_id!r} produced {len(frames)} frames that cannot be joined into one DataBuffer "
        "(use StreamPipeline to receive them one by one)"
    )


# -- manifests -------------------------------------------------------------------------------------


def manifest_from_proto(manifest: Any) -> dict[str, Any]:
    """The JSON document form of a wire manifest (validated afterwards, like a file)."""
    issues: list[ManifestIssue] = []
    metadata: dict[str, Any] = {"name": manifest.metadata.name}
    # Both JSON texts are checked for nesting before json.loads, which recurses once per level.
    too_deep = text_issue(manifest.metadata.extra_json, "metadata.extra_json", levels_above=1)
    if too_deep is not None:
        issues.append(too_deep)
    elif manifest.metadata.extra_json:
        try:
            extra = json.loads(manifest.metadata.extra_json)
        except json.JSONDecodeError as exc:
            issues.append(ManifestIssue("metadata.extra_json", f"is not valid JSON: {exc.msg}"))
        else:
            if isinstance(extra, dict):
                metadata.update(extra)
            else:
                issues.append(ManifestIssue("metadata.extra_json", "must be a JSON object"))
    if manifest.metadata.description:
        metadata["description"] = manifest.metadata.description
    if manifest.metadata.created_at:
        metadata["created_at"] = manifest.metadata.created_at
    if has(manifest.metadata, "multiprocess"):
        metadata["multiprocess"] = _multiprocess_from_proto(manifest.metadata.multiprocess)
    supervision = optional(manifest.metadata, "supervision")
    if supervision is not None:
        metadata["supervision"] = _supervision_from_proto(supervision, issues)
    nodes = [_node_from_proto(i, node, issues) for i, node in enumerate(manifest.nodes)]
    if issues:
        raise ManifestError(issues)
    return {
        "version": manifest.version,
        "metadata": metadata,
        "nodes": nodes,
        "connections": [{"from": conn_from(c), "to": c.to} for c in manifest.connections],
    }


def _multiprocess_from_proto(mp: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in (
        "max_processes_per_session",
        "channel_capacity",
        "init_timeout_secs",
        "close_timeout_secs",
        "python_executable",
    ):
        value = getattr(mp, field)
        if value:
            out[field] = value
    for flag in ("enable_backpressure", "fuse_chains"):  # presence: false is a value
        value = optional(mp, flag)
        if value is not None:
            out[flag] = value
    if mp.executor_overrides:
        out["executor_overrides"] = dict(mp.executor_overrides)
    return out


def _supervision_from_proto(config: Any, issues: list[ManifestIssue]) -> dict[str, Any]:
    """The keys that are present, so that left-out ones take their defaults in validation."""
    out: dict[str, Any] = {}
    for field in ("strategy", "max_restarts", "within_secs"):
        value = optional(config, field)
        if value is not None:
            out[field] = value
    within = out.get("within_secs")
    if within is not None and not math.isfinite(within):
        # JSON cannot say NaN, a double can, and no schema bound rejects it (NaN compares false).
        issues.append(
            ManifestIssue("metadata.supervision.within_secs", f"must be a finite number, got {within}")
        )
    return out


def _node_from_proto(index: int, node: Any, issues: list[ManifestIssue]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": node.id, "node_type": node.node_type}
    too_deep = text_issue(node.params, f"nodes[{index}].params")
    if too_deep is not None:
        issues.append(too_deep)
    elif node.params.strip():
        try:
            out["params"] = json.loads(node.params)
        except json.JSONDecodeError as exc:
            issues.append(
                ManifestIssue(
                    f"nodes[{index}].params",
                    f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                )
            )
    if has(node, "capabilities"):
        out["capabilities"] = _capabilities_from_proto(node.capabilities)
    if node.host:
        out["host"] = node.host
    if node.is_streaming:
        out["is_streaming"] = True
    if node.runtime_hint:
        out["runtime_hint"] = _RUNTIME.get(node.runtime_hint, "auto")
    if node.input_types:
        out["input_types"] = [_HINTS.get(h, "any") for h in node.input_types]
    if node.output_types:
        out["output_types"] = [_HINTS.get(h, "any") for h in node.output_types]
    if node.restart:
        out["restart"] = node.restart
    return out


def _capabilities_from_proto(caps: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if has(caps, "gpu"):
        out["gpu"] = {
            "type": caps.gpu.type or "any",
            "min_memory_gb": caps.gpu.min_memory_gb,
            "required": caps.gpu.required,
        }
    if has(caps, "cpu"):
        out["cpu"] = {"cores": caps.cpu.cores or 1, "arch": caps.cpu.arch or "any"}
    if caps.memory_gb:
        out["memory_gb"] = caps.memory_gb
    return out


def manifest_to_proto(doc: Mapping[str, Any]) -> pb.PipelineManifest:
    """The wire form of a manifest document (for clients)."""
    meta = dict(doc.get("metadata", {}))
    known = {"name", "description", "created_at", "multiprocess", "supervision"}
    metadata = pb.ManifestMetadata(
        name=meta.get("name", ""),
        description=meta.get("description", ""),
        created_at=meta.get("created_at", ""),
    )
    extra = {k: v for k, v in meta.items() if k not in known}
    if extra:
        metadata.extra_json = json.dumps(extra)
    if "multiprocess" in meta:
        mp = meta["multiprocess"]
        metadata.multiprocess = pb.MultiprocessConfig(
            max_processes_per_session=mp.get("max_processes_per_session", 0),
            channel_capacity=mp.get("channel_capacity", 0),
            init_timeout_secs=int(mp.get("init_timeout_secs", 0)),
            close_timeout_secs=int(mp.get("close_timeout_secs", 0)),
            python_executable=mp.get("python_executable", ""),
            enable_backpressure=mp.get("enable_backpressure"),
            executor_overrides=dict(mp.get("executor_overrides", {})),
            fuse_chains=mp.get("fuse_chains"),
        )
    if meta.get("supervision") is not None:  # null: no policy, like a missing key
        sup = meta["supervision"]
        # Only the keys present, each with presence: {} is a policy (of defaults), not "unset".
        metadata.supervision = pb.SupervisionConfig(
            strategy=sup.get("strategy"),
            max_restarts=sup.get("max_restarts"),
            within_secs=sup.get("within_secs"),
        )
    return pb.PipelineManifest(
        version=doc.get("version", ""),
        metadata=metadata,
        nodes=[_node_to_proto(n) for n in doc.get("nodes", [])],
        connections=[pb.Connection(from_=c["from"], to=c["to"]) for c in doc.get("connections", [])],
    )


def _node_to_proto(node: Mapping[str, Any]) -> pb.NodeManifest:
    out = pb.NodeManifest(
        id=node["id"],
        node_type=node["node_type"],
        params=json.dumps(node.get("params", {})),
        host=node.get("host") or "",
        is_streaming=bool(node.get("is_streaming", False)),
        restart=node.get("restart") or "",
    )
    caps = node.get("capabilities")
    if caps:
        out.capabilities = pb.CapabilityRequirements(memory_gb=caps.get("memory_gb") or 0.0)
        if caps.get("gpu"):
            out.capabilities.gpu = pb.GpuRequirement(**caps["gpu"])
        if caps.get("cpu"):
            out.capabilities.cpu = pb.CpuRequirement(**caps["cpu"])
    if node.get("runtime_hint"):
        out.runtime_hint = _RUNTIME_BACK[node["runtime_hint"]]
    out.input_types = [_HINTS_BACK[t] for t in node.get("input_types", [])]
    out.output_types = [_HINTS_BACK[t] for t in node.get("output_types", [])]
    return out


# -- errors ----------------------------------------------------------------------------------------


def error_response(exc: BaseException, ns: Messages = BETTERPROTO) -> Any:
    """Our exceptions as ErrorResponse with the right ErrorType; anything else is INTERNAL."""
    if isinstance(exc, ManifestError):
        return ns.ErrorResponse(
            error_type=int(pb.ErrorType.VALIDATION),
            message=str(exc),
            context="manifest",
            issues=[ns.ValidationIssue(path=i.path, message=i.message) for i in exc.issues],
        )
    if isinstance(exc, FrameError):
        return ns.ErrorResponse(
            error_type=int(pb.ErrorType.TYPE_VALIDATION), message=str(exc), context="data"
        )
    if isinstance(exc, InputError):
        return ns.ErrorResponse(error_type=int(pb.ErrorType.VALIDATION), message=str(exc), context="data")
    if isinstance(exc, ResourceLimitError):
        return ns.ErrorResponse(error_type=int(pb.ErrorType.RESOURCE_LIMIT), message=str(exc))
    if isinstance(exc, NodeError):
        return ns.ErrorResponse(
            error_type=int(pb.ErrorType.NODE_EXECUTION),
            message=str(exc),
            failing_node_id=exc.node_id or "",
            context=exc.phase,
            stack_trace=exc.remote_traceback or "",
        )
    if isinstance(exc, NurseryPipesError):
        return ns.ErrorResponse(
            error_type=int(pb.ErrorType.NODE_EXECUTION),
            message=str(exc),
            failing_node_id=getattr(exc, "node_id", None) or "",
        )
    return ns.ErrorResponse(
        error_type=int(pb.ErrorType.INTERNAL), message=f"internal error: {type(exc).__name__}: {exc}"
    )


# -- supervision -----------------------------------------------------------------------------------


def supervision_event_to_proto(
    kind: str,
    node_id: str,
    message: str = "",
    *,
    restarts: int = 0,
    dropped_sequences: Iterable[int] = (),
    error: BaseException | None = None,
    ns: Messages = BETTERPROTO,
) -> Any:
    """A ``SupervisionEvent`` (of the ``ns`` implementation) from plain values.

    ``kind`` is one of :data:`SUPERVISION_EVENT_KINDS`; ``restarts`` counts the node's
    restarts so far; ``dropped_sequences`` are the ``DataChunk`` sequences whose frames were
    lost; ``error`` (for "failed") is the node's exception, converted as the call's error
    would be (:func:`error_response`). Plain values, so that the wire layer needs none of
    the runtime's types.
    """
    if kind not in SUPERVISION_EVENT_KINDS:
        raise ValueError(
            f"supervision event kind must be one of {sorted(SUPERVISION_EVENT_KINDS)}, got {kind!r}"
        )
    fields: dict[str, Any] = {
        "node_id": node_id,
        "kind": kind,
        "message": message,
        "restarts": restarts,
        "dropped_sequences": list(dropped_sequences),
    }
    if error is not None:
        fields["error"] = error_response(error, ns)  # (upb: sub-messages only via the constructor)
    return ns.SupervisionEvent(**fields)
