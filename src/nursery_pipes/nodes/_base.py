"""The node API: what a pipeline node is, seen from the code that writes one.

A node is a class with typed params and four hooks, each sync or async::

    class Gain(Node[GainParams]):
        accepts = produces = frozenset({FrameKind.AUDIO})

        def process(self, frame):          # 0..N outputs per input
            return replace(frame, samples=frame.samples * self.params.gain)

- ``initialize(progress)``: load models; may call ``progress(fraction, message)``.
- ``process(frame)``: return ``None``, one frame, an iterable of frames, or be a
  (sync or async) generator that yields frames as they are ready (streaming).
- ``flush()``: end of stream; same return forms as ``process``.
- ``cleanup()``: release resources; always called once ``initialize`` began.
- ``on_signal(signal)``: a control signal overtook the queued frames (see
  :mod:`._signals`); return True to drop them and abort the frame in flight.

Params are a :class:`Params` struct (msgspec) given as the generic argument:
``Node[GainParams]`` makes ``GainNode.Params`` that struct and ``self.params``
an instance of it, validated before the session starts.
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar, Union, get_args, get_origin

import msgspec
import numpy as np
import numpy.typing as npt

from ..frames import Frame, FrameKind
from ._signals import DROPPING_SIGNALS, Signal

__all__ = [
    "ALL_KINDS",
    "ExecutorName",
    "NoParams",
    "Node",
    "NodeContext",
    "Params",
    "ProcessResult",
    "ProgressReporter",
]

ExecutorName = str
"""An executor's name: ``inprocess``, ``thread``, ``multiprocess``, or one a package registers."""

ALL_KINDS: frozenset[FrameKind] = frozenset(FrameKind)


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Note for subclasses: msgspec applies kw_only per class; pass `kw_only=True` in a
    # subclass that puts a required field after one with a default.
    """Base for node parameter structs. Fields are typed; give each a default unless required.

    Constraints use ``typing.Annotated[int, msgspec.Meta(ge=1)]``; cross-field checks go in
    ``__post_init__`` (raise ``ValueError`` with a message naming the field).
    """


class NoParams(Params):
    """For nodes that take no params."""


P = TypeVar("P", bound=Params)

ProcessResult = (
    Frame | Iterable[Frame] | AsyncIterator[Frame] | Awaitable[Frame | Iterable[Frame] | None] | None
)


class ProgressReporter(Protocol):
    """``progress(0.4, "loading weights")``: fraction in 0..1 and an optional message."""

    def __call__(self, fraction: float, message: str = "") -> None: ...


@dataclass(frozen=True, slots=True)
class NodeContext:
    """What a node knows about where it runs."""

    node_id: str
    node_type: str
    session_id: str
    executor: ExecutorName
    logger: logging.Logger
    in_worker_process: bool = False
    """It runs in a worker process of its own (not in the supervisor's process)."""
    allocate_output: Callable[[tuple[int, ...], np.dtype[Any]], npt.NDArray[Any]] | None = field(
        default=None, repr=False, compare=False
    )
    """Set by the executor that runs the node (see :meth:`output_array`); None: plain arrays."""
    send_signal: Callable[[str, tuple[str, ...] | None, dict[str, Any]], None] | None = field(
        default=None, repr=False, compare=False
    )
    """Set by the executor that runs the node (see :meth:`signal`)."""

    def signal(
        self, name: str, *, to: Iterable[str] | None = None, payload: dict[str, Any] | None = None
    ) -> None:
        """Send a control signal to the nodes ``to`` (None: every other node of the session),
        ahead of the frames queued for them — e.g. a voice-activity node interrupting the
        speech synthesis downstream when the user starts talking. Returns at once; each
        target's :meth:`Node.on_signal` runs before it takes its next frame."""
        if self.send_signal is None:
            raise RuntimeError(f"node {self.node_id!r}: this context cannot send signals (no session)")
        self.send_signal(name, None if to is None else tuple(to), dict(payload or {}))

    def output_array(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        """A new writable array to build one output frame in, for nodes that produce big frames.

        In a worker process the array *is* the shared memory the frame is sent through, so
        emitting a frame over the whole array (``AudioFrame.from_array(out, ...)``,
        ``TensorFrame(data=out)``) costs no copy; anywhere else it is ``np.empty``. Rules, in
        a worker: emit that frame as the call's next output (emitting another output first
        gives the array back; emitting its frame after that is an error naming the node);
        one such array at a time; do not keep it after the call returns — like an input of a
        ``zero_copy`` node, its memory is reused, and the worker fails a node that keeps it.
        A frame over part of the array, or with more than 256 bytes of metadata, is copied.
        (The contents start undefined.)

        >>> import numpy as np
        >>> from nursery_pipes import AudioFrame, Node
        >>> from nursery_pipes.testing import run_node_sync
        >>> class Tone(Node):
        ...     def process(self, frame):
        ...         out = self.context.output_array(16000, np.float32)  # 1 s at 16 kHz
        ...         np.sin(np.arange(16000, dtype=np.float32) * 0.2, out=out)
        ...         return AudioFrame.from_array(out, sample_rate=16000)
        >>> run_node_sync(Tone, [AudioFrame.from_array(np.zeros(1, np.float32), 16000)])[0].duration
        1.0
        """
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dt = np.dtype(dtype)
        if self.allocate_output is not None:
            return self.allocate_output(shape, dt)
        return np.empty(shape, dt)


class Node(Generic[P]):
    """Base class of every pipeline node. See the module docstring for the contract."""

    node_type: ClassVar[str]
    """Name used in manifests; defaults to the class name."""
    Params: ClassVar[type[Params]] = NoParams
    accepts: ClassVar[frozenset[FrameKind]] = ALL_KINDS
    produces: ClassVar[frozenset[FrameKind]] = ALL_KINDS
    executor: ClassVar[ExecutorName | None] = None
    """Preferred executor; ``None`` lets the routing rules decide."""
    zero_copy: ClassVar[bool] = False
    """In a worker process, hand ``process()`` frames whose arrays are views into shared
    memory (no copy). Only for nodes that never keep an input frame, or a view of its
    data, after ``process()`` returns: the memory is reused for later frames."""
    fusible: ClassVar[bool] = True
    """Where a session fuses runs of multiprocess nodes (``fuse_chains``), this node may share
    a worker with its neighbours. ``False`` for a node that should keep a process — and a
    core — of its own, e.g. a model run that takes much of a frame period: fused, the nodes
    of a run take turns on one core."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "node_type" not in cls.__dict__:
            cls.node_type = cls.__name__
        params = _params_from_generic(cls)
        if params is not None and "Params" not in cls.__dict__:
            cls.Params = params

    def __init__(self, params: P, context: NodeContext) -> None:
        self.params: P = params
        self.context = context

    @property
    def log(self) -> logging.Logger:
        return self.context.logger

    def initialize(self, progress: ProgressReporter) -> Awaitable[None] | None:
        """Prepare (load models, open devices). Runs once, before any frame."""
        return None

    def process(self, frame: Frame) -> ProcessResult:
        """Turn one input frame into 0..N output frames."""
        raise NotImplementedError(f"{type(self).__name__} must implement process()")

    def flush(self) -> ProcessResult:
        """End of stream: emit whatever is still buffered."""
        return None

    def cleanup(self) -> Awaitable[None] | None:
        """Release resources. Called once initialize() has begun, whatever happened after."""
        return None

    def on_signal(self, signal: Signal) -> bool:
        """A control signal for this node, ahead of the frames queued for it.

        Return True to drop those frames and abort the frame in flight (outputs it has not
        sent yet are discarded; a generator is closed at its next ``yield``); both are
        reported as dropped. Runs where the other hooks run, never at the same time as one
        (between frames, or between two outputs of a generator). Default: True for
        ``interrupt`` and ``cancel_turn``, False for anything else. Keep it short.
        """
        return signal.name in DROPPING_SIGNALS

    def cancel_work(self, signal: Signal) -> None:
        """A control signal arrived while one of this node's hooks is running: ask that work
        to stop soon, if the signal means it should (the node's own rule, as in
        :meth:`on_signal`). Only for nodes whose work is long and can be stopped — a model run
        (onnxruntime's ``RunOptions.terminate``), a loop that checks a flag.

        Called from *another thread*, at once, while the hook runs: do nothing here but set
        what the work looks at. The signal still reaches :meth:`on_signal` as usual right
        after the hook returns or raises; if that drops the frame, an exception the stopped
        work raised is part of the abort, not a failure. Worker processes and the
        ``thread`` executor call it (only for nodes that override it); an ``inprocess``
        node's hooks run on the event loop, where nothing else runs meanwhile. Default:
        nothing (a signal waits for the hook to finish).
        """

    @classmethod
    def description(cls) -> str:
        # The class's own docstring only: inspect.getdoc() would fall back to a base class's
        # (for an undocumented node, Node's own docstring).
        doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
        return doc.splitlines()[0] if doc else ""


def _params_from_generic(cls: type) -> type[Params] | None:
    for base in cls.__dict__.get("__orig_bases__", ()):
        args = get_args(base)
        if args and isinstance(args[0], type) and issubclass(args[0], Params):
            return args[0]
    return None


def param_fields(params: type[Params]) -> tuple[msgspec.structs.FieldInfo, ...]:
    return msgspec.structs.fields(params)


def describe_params(params: type[Params]) -> list[dict[str, Any]]:
    """Name, type and default of each param, for ``nursery-pipes nodes`` and GetVersion."""
    rows = []
    for f in param_fields(params):
        default: Any = f.default
        if default is msgspec.NODEFAULT:
            default = f.default_factory() if f.default_factory is not msgspec.NODEFAULT else None
            required = f.default_factory is msgspec.NODEFAULT
        else:
            required = False
        rows.append({"name": f.name, "type": _type_name(f.type), "default": default, "required": required})
    return rows


def _type_name(tp: Any) -> str:
    """A reader's name for a param type: ``int ≥ 1``, ``'f32' | 'i16'``, ``list[str] | None``."""
    metadata = getattr(tp, "__metadata__", None)
    if metadata is not None:
        return _type_name(tp.__origin__) + "".join(_bounds(m) for m in metadata)
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin is not None and args:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _bounds(meta: Any) -> str:
    parts = []
    for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        value = getattr(meta, attr, None)
        if value is not None:
            # typing caches Annotated[...] by equality, and Meta(ge=0) == Meta(ge=0.0): which of
            # the two a class gets depends on import order, so whole floats print as integers.
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            parts.append(f" {sign} {value}")
    return "".join(parts)


def cancels_work(node: Node[Any]) -> bool:
    """The node overrides :meth:`Node.cancel_work` (executors call it only then)."""
    return type(node).cancel_work is not Node.cancel_work
