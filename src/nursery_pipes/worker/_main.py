"""The worker side of a multiprocess node: one node, one process, rings in and out.

trio-parallel runs :func:`run_node` in a fresh worker process. It imports no
trio, grpclib or server code (``test_worker_side_imports_no_trio_grpc_or_cli``
in ``tests/test_api.py`` checks), only the node's own module, numpy and the
ring transport.

Life of a worker:

1. title the process (``ps`` shows session and node), arm the parent-death
   watchdog, attach to the rings the supervisor created;
2. build the node, report ``starting``, run ``initialize`` (its progress calls
   go to the supervisor), report ``ready``;
3. receive frames (one input: try it, else sleep on its doorbell; several:
   ``wait_any`` on their doorbells — the supervisor also rings them after it
   sends a signal, so an idle worker never wakes on its own), call
   ``process``, write every output to every output ring (blocking when a ring
   is full: backpressure) — an output of a ``zero_copy`` node that is (part
   of) its big input goes to the first ring by reference, not by copy
   (``ipc/_ownership.py``) — or, where at least two output rings' readers copy
   their input anyway (``WorkerJob.share_outputs``), to every ring by reference,
   the input frame kept (its slot not returned) until every reader is done;
4. when every input has ended: ``flush``, end every output ring, ``cleanup``,
   report ``done`` with the counters.

Fused runs (``WorkerJob.run``, ``[multiprocess] fuse_chains``): the worker runs a chain of
nodes a → b → c joined by their only edges, reading a's input rings and writing c's output
rings. Each output of a goes straight into b's ``process`` (and so on, depth first), as the
object a made: no ring, no copy, no wake-up between them. Every node keeps its own counters,
signals (``"stage"`` in the control ring's JSON) and failures; the events say which node
they are about. A signal that drops work aborts the frame in flight of that node only if
it is at work on it; nothing is ever queued between two nodes of a run.

Restarts: a worker may be the replacement of one that died. The supervisor
first repairs the rings (``ShmTransport.recover``); this worker then attaches
to the same rings like any other: each input starts at the first frame its
predecessor had not taken (an input it had read to the end is ended), each
output at the next position (one it had ended stays ended). An input frame is
held until ``process()`` and its outputs are done, so what a dead worker held
is exactly what it was processing: the repair reports those frames.

Stop requests: the supervisor aborts the node's rings; a blocked receive or
loan raises ``RingAbortedError`` and the worker cleans up and returns. A node
stuck in its own code does not notice — the supervisor kills it after the
grace period. Failures are reported as an event (phase, message, Python
traceback) before the job returns; crashes are seen by the supervisor as the
process's exit code or signal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import logging
import math
import os
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from ..frames import Frame, FrameKind
from ..ipc import (
    FLAG_EXTERNAL,
    Consumer,
    EncodedFrame,
    EndOfStream,
    Loan,
    Producer,
    Received,
    Ring,
    RingAbortedError,
    RingSpec,
    SlotHeader,
    decode_frame,
    encode_frame,
    slot_array,
    wait_any,
)
from ..nodes._base import Node, NodeContext, cancels_work
from ..nodes._calls import iter_outputs
from ..nodes._registry import load_ref
from ..nodes._signals import FLUSH, Signal
from ._busy import BusyWatch
from ._events import EventSender
from ._sampling import sampled
from ._watchdog import arm_watchdog

__all__ = ["WorkerJob", "retire_after_node", "run_node", "warm_up"]

_ran_a_node = False

SIGNAL_POLL_S = 0.02
"""Only for inputs without a doorbell (rings not made by ``ShmTransport.edge``): how long a
worker with nothing to do waits on them before it looks for signals again. With doorbells (the
rule), the supervisor rings them after a signal and an idle worker sleeps until something comes."""


_LABELS = {kind: kind.label for kind in FrameKind}


class _SignalAbort(Exception):
    """A signal dropped the frame in flight of node ``stage`` of the run: its remaining outputs
    go nowhere."""

    def __init__(self, stage: int = 0) -> None:
        super().__init__(stage)
        self.stage = stage


def _new_stats() -> dict[str, Any]:
    return {
        "frames_in": 0,
        "frames_out": 0,
        "bytes_in": 0,
        "bytes_out": 0,
        "processing_s": 0.0,
        "init_s": 0.0,
        "kinds_out": {},
        "frames_in_place": 0,
        "frames_forwarded": 0,
        "frames_shared": 0,
    }


@dataclass(frozen=True)
class WorkerStage:
    """A node after the head of a fused run, run by the head's worker (picklable)."""

    node_id: str
    node_type: str
    import_ref: str
    params: dict[str, Any]


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker needs to run one node — or a fused run of nodes, ``run`` after
    this one (picklable)."""

    session_id: str
    node_id: str
    node_type: str
    import_ref: str
    params: dict[str, Any]
    inputs: tuple[RingSpec, ...]
    outputs: tuple[RingSpec, ...]
    events: RingSpec
    supervisor_pid: int
    parent_is_forkserver: bool
    stats_interval_s: float = 0.5
    copy_inputs: bool = True
    log_level: int = logging.WARNING
    """Records at this level and above, from any logger in the worker, go to the supervisor."""
    control: RingSpec | None = None
    """Control signals from the supervisor, taken ahead of the inputs (see :meth:`_Runner._signals`)."""
    trace_threshold: int = 0
    """Frames whose input sequence passes ``sampled(seq, trace_threshold)`` are timed and sent
    to the supervisor as ``frame`` events (its tracing makes the spans); 0: none."""
    share_outputs: bool = False
    """An output that lies in the big input frame goes to every output ring by reference (fan-out
    by reference, ``ipc/_ownership.py``) instead of by reference to the first and copied to the
    others: set when at least two of the rings' readers copy their input anyway."""
    run: tuple[WorkerStage, ...] = ()
    """The nodes after this one in its fused run, in order: each output of one goes into the
    next one's ``process``; the last one's outputs go to ``outputs``."""
    extra: dict[str, Any] = field(default_factory=dict)


def warm_up() -> int:
    """A no-op job that makes trio-parallel start (and cache) a worker: the warm pool."""
    import numpy  # noqa: F401 - pay the import before any session needs this worker

    return os.getpid()


def retire_after_node() -> bool:
    """trio-parallel's ``retire`` hook: a worker that ran a node never serves anyone else."""
    return _ran_a_node


def run_node(job: WorkerJob) -> dict[str, Any]:
    """Run one node to completion in this process; returns its final counters."""
    global _ran_a_node
    _ran_a_node = True
    _set_title(job)
    arm_watchdog(job.supervisor_pid, parent_is_forkserver=job.parent_is_forkserver)
    rings: list[Ring] = []
    events_ring = Ring.attach(job.events)
    rings.append(events_ring)
    events = EventSender(events_ring.producer())
    forward = _ForwardLogs(events)
    root = logging.getLogger()
    root.addHandler(forward)
    root.setLevel(job.log_level)
    runner = _Runner(job, events)
    try:
        runner.attach(rings)
        return runner.run()
    finally:
        root.removeHandler(forward)
        for ring in rings:
            ring.close()


class _ForwardLogs(logging.Handler):
    """Sends the worker's log records to the supervisor (the events ring), which logs them
    tagged with the node's session and node ids. Never blocks the node: when the events ring
    is full a record is dropped (and the next one that gets through says how many)."""

    def __init__(self, events: EventSender) -> None:
        super().__init__()
        self._events = events
        self.dropped = 0
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if self.dropped:
                message = f"{message} [{self.dropped} earlier log record(s) of this worker dropped]"
            if self._events.log(message, level=record.levelno, logger=record.name):
                self.dropped = 0
            else:
                self.dropped += 1
        except Exception:  # logging must never break the node
            self.handleError(record)


LOAN_META_BYTES = 256
"""Room for a frame's metadata blob in front of an output_array() payload (the payload's place
in the slot depends on it, so it is fixed when the array is lent). A frame with more metadata
is copied instead."""


def _padded_meta(meta: bytes) -> bytes:
    """The metadata blob padded to LOAN_META_BYTES with JSON whitespace (``{}`` if empty)."""
    meta = meta or b"{}"
    return meta + b" " * (LOAN_META_BYTES - len(meta))


class OutputArrayError(RuntimeError):
    """A node broke a rule of ``NodeContext.output_array`` in a worker process."""

    def __init__(self, node_type: str, what: str) -> None:
        super().__init__(f"{node_type} {what} (see NodeContext.output_array)")


def _still_held(view: weakref.ref[Any]) -> bool:
    """Is the array over an input slot still referenced? (Only asked when it looked so: a
    reference cycle that is garbage already is collected first, so it is not blamed.)"""
    gc.collect()
    return view() is not None


class KeptInputError(RuntimeError):
    """A ``zero_copy`` node kept its input frame, or a view of its data, past ``process()``.

    That memory is a shared-memory slot the next frames are written to: the worker stops
    rather than return the slot, so the node never sees it change under it."""

    def __init__(self, node_type: str, run: tuple[str, ...] = ()) -> None:
        who = (
            f"{node_type} declares zero_copy = True but kept"
            if not run
            else f"{node_type} and the nodes fused after it ({', '.join(run)}) all declare "
            "zero_copy = True, and one of them kept"
        )
        super().__init__(
            f"{who} its input frame (or a view of its data) after process() returned; the shared "
            "memory behind it would be reused for the next frame. Keep a copy "
            "(np.array(frame.samples)), or remove zero_copy = True"
        )


class _Runner:
    def __init__(self, job: WorkerJob, events: EventSender) -> None:
        self.job = job
        self.events = events
        self.inputs: list[Consumer] = []
        self.outputs: list[Producer] = []
        self.control: Consumer | None = None
        self.watch: BusyWatch | None = None
        """Takes signals while node code runs, for a node that can cancel its work."""
        self.active: list[Consumer] = []
        """Inputs that have not ended (the frame loop's, and what a dropping signal drains)."""
        self.phase = "initialize"
        self.node: Node[Any] | None = None
        """The head of the run (the one node of a worker that runs one)."""
        self.nodes: list[Node[Any]] = []
        """Every node of the run built so far, in order."""
        self.ids = [job.node_id, *(stage.node_id for stage in job.run)]
        self.types = [job.node_type, *(stage.node_type for stage in job.run)]
        self.last = len(job.run)
        """The run's last node: its outputs go to the output rings."""
        self.stage = 0
        """The node of the run whose code runs now (or last raised): what a failure names."""
        self.stage_stats: list[dict[str, Any]] = [_new_stats() for _ in self.ids]
        self.stats = self.stage_stats[0]
        self._tail = self.stage_stats[-1]
        """The last node's counters: the output rings' frames, forwarded, shared, in place."""
        self._accepts: list[frozenset[FrameKind]] = []
        self._dropping: dict[int, tuple[dict[str, Any], list[int]] | None] = {}
        """Nodes of the run a signal told to drop the frame they are at work on: each stops at
        its next output. The value: the signal and the queued frames it dropped, when whether
        the node gives anything up is known only at its next output (it waits for the nodes
        after it: it has one, or it is done with the frame); None once reported."""
        self._tracing = False
        """The frame in flight is sampled for tracing: each node's part is timed."""
        self.last_seq = 0
        self._input: Received | None = None
        """The input frame being processed: an output whose payload lies in its external segment
        (the input passed on, re-wrapped, or sliced) goes on by reference (ipc/_ownership.py)."""
        self._from: Consumer | None = None
        """The input ring ``_input`` came from."""
        self._shares: list[tuple[Producer, int]] = []
        """Where the frame being processed was shared: (output, ring position) of each reference."""
        self._kept: dict[Consumer, deque[tuple[Received, list[tuple[Producer, int]]]]] = {}
        """Per input ring, in order: frames processed and shared, kept (their slots not returned,
        which would let the segment be written) until every reference was read."""
        self._kept_count = 0
        self._keep_limit: dict[Consumer, int] = {}
        """At most ``slot_count - 1`` kept per input ring (beyond: forward and copy)."""
        self._can_share = False
        self._next_stats = 0.0
        self._unsent_stats = False
        """Frames were processed since the counters last went to the supervisor."""
        self._loaned: tuple[Loan, npt.NDArray[Any]] | None = None
        """The output_array() loan on the first output ring, and the array over it."""
        self._lent: list[weakref.ref[npt.NDArray[Any]]] = []
        """Arrays output_array() lent during the current call (checked when it returns)."""
        self._given_back: list[weakref.ref[npt.NDArray[Any]]] = []
        """Of those, the ones given back because another frame came first: emitting one now
        would send memory another frame has been written to."""

    def attach(self, rings: list[Ring]) -> None:
        if self.job.control is not None:
            ring = Ring.attach(self.job.control)
            rings.append(ring)
            self.control = ring.consumer()
        for spec in self.job.inputs:
            ring = Ring.attach(spec)
            rings.append(ring)
            consumer = ring.consumer()
            self.inputs.append(consumer)
            self._kept[consumer] = deque()
            self._keep_limit[consumer] = spec.slot_count - 1
        for spec in self.job.outputs:
            ring = Ring.attach(spec)
            rings.append(ring)
            self.outputs.append(ring.producer())
        self._can_share = (
            self.job.share_outputs and len(self.outputs) > 1 and all(o.has_doorbell for o in self.outputs)
        )

    def run(self) -> dict[str, Any]:
        try:
            refs = [(self.job.import_ref, self.job.params), *((s.import_ref, s.params) for s in self.job.run)]
            for stage, (ref, params) in enumerate(refs):  # built and initialized in order
                self.stage = stage
                self.events.progress("starting", 0.0, node=stage)
                self.nodes.append(self._build(stage, ref, params))
                self._initialize(stage, self.nodes[stage])
            self.node = self.nodes[0]
            self.events.ready(os.getpid(), self.stats["init_s"])  # the others': in their counters
            self._accepts = [type(node).accepts for node in self.nodes]
            if self.control is not None and any(cancels_work(node) for node in self.nodes):
                self.watch = BusyWatch(self.control, self._cancel_work)
            self.phase = "process"
            self._loop(self.node)
            self.phase = "flush"
            for stage, node in enumerate(self.nodes):  # each one's flush outputs go through the rest
                self._emit_all(stage, node.flush, "flush")
            for out in self.outputs:
                if not out.eos_sent:  # a predecessor that died after ending it
                    out.end_of_stream()
        except RingAbortedError:
            return {"status": "stopped", **self.stats}
        except BaseException as exc:
            self.events.failed(self.phase, exc, node=self.stage)
            return {"status": "failed", "phase": self.phase, **self.stats}
        finally:
            if self.watch is not None:
                self.watch.close()
            for stage, node in enumerate(self.nodes):  # built: cleanup() is owed even if initialize failed
                self._cleanup(stage, node)
        for stage in range(1, len(self.nodes)):  # the other nodes' last counters, before "done"
            self.events.stats(self.stage_stats[stage], node=stage, required=True)
        self.events.done(self.stats)
        return {"status": "done", **self.stats}

    def _build(self, stage: int, ref: str, raw: dict[str, Any]) -> Node[Any]:
        cls = load_ref(ref)
        params = msgspec.convert(raw, cls.Params)
        node_id = self.ids[stage]
        context = NodeContext(
            node_id=node_id,
            node_type=self.types[stage],
            session_id=self.job.session_id,
            executor="multiprocess",
            logger=logging.getLogger(f"nursery_pipes.node.{node_id}"),
            in_worker_process=True,
            # Only the run's last node writes into the output rings: the others' arrays are plain.
            allocate_output=self._loan_output if stage == self.last else None,
            send_signal=lambda name, to, payload: self.events.send_signal(name, to, payload, node=stage),
        )
        return cls(params, context)

    def _initialize(self, stage: int, node: Node[Any]) -> None:
        started = time.perf_counter()
        result = node.initialize(
            lambda fraction, message="": self.events.progress("loading", fraction, message, node=stage)
        )
        if result is not None:
            raise TypeError(
                f"{self.types[stage]}.initialize is asynchronous; async nodes must run in-process"
            )
        self.stage_stats[stage]["init_s"] = time.perf_counter() - started

    def _loop(self, node: Node[Any]) -> None:
        threshold = self.job.trace_threshold
        active = self.active = list(self.inputs)  # an input a predecessor read to its end is ended
        single = len(active) == 1
        control = self.control
        # Inputs have doorbells (ShmTransport.edge), which the supervisor also rings after it
        # sends a signal: the worker waits on them with no timeout, and idle means asleep.
        # Without (a ring made elsewhere), it polls for signals every SIGNAL_POLL_S.
        doorbells = all(c.has_doorbell for c in active)
        poll = None if control is None or doorbells else SIGNAL_POLL_S
        while active:
            if self._kept_count:
                self._return_kept()
            if control is not None and self._signal_waiting(control):  # ahead of every frame queued
                self._signals(None)
                continue
            ready = active if single else wait_any(active, self._idle_timeout(poll), also=self._awaited())
            for consumer in ready:
                try:
                    received = self._receive(consumer, single, doorbells, poll)
                except EndOfStream:
                    active.remove(consumer)
                    continue
                if received is None:
                    continue
                self._unsent_stats = True
                # The input slot is held until process() and every output are done; then the
                # frame is marked finished. If they raise, or the process dies, it stays
                # unfinished, and the supervisor's repair of the ring reports this frame as
                # dropped (ipc/_repair.py). Copied or not, the frame is held until then.
                began = time.perf_counter()
                self._from = consumer
                traced = threshold and sampled(received.header.seq, threshold)
                if traced and self.last:
                    self._tracing = True  # a fused run: each node times its own part
                    try:
                        writing, view = self._process(node, received)
                    finally:
                        self._tracing = False
                elif traced:
                    writing, view = self._process_traced(node, received)
                else:
                    writing, view = self._process(node, received)
                received.finish()  # its outputs are out: a repair does not report it dropped
                if view is not None and view() is not None and _still_held(view):
                    raise KeptInputError(self.job.node_type, tuple(self.types[1:]))  # the slot stays taken
                if self._lent:
                    self._check_lent()
                if self._shares:  # read elsewhere by reference: kept until every reader is done
                    self._kept[consumer].append((received, self._shares))
                    self._kept_count += 1
                    self._shares = []
                else:
                    received.release()
                self.stats["processing_s"] += time.perf_counter() - began - writing
            self._maybe_stats()

    def _return_kept(self) -> None:
        """Return the slots of kept (shared) frames whose every reference has been read, in
        ring order."""
        for kept in self._kept.values():
            while kept and all(out.returned(pos) for out, pos in kept[0][1]):
                kept.popleft()[0].release()
                self._kept_count -= 1

    def _awaited(self) -> list[Producer]:
        """Whose doorbells also end an idle wait: the outputs, when shared frames are kept and
        an input ring has no slot left for its producer — then only a reader returning a
        share lets anything go on. Otherwise the next frame wakes this worker, and it returns
        what was read then: the readers' rings wait in the doorbells, costing no wake-up."""
        if self._kept_count and any(c.holds_every_slot for c in self._kept if self._kept[c]):
            return self.outputs
        return []

    def _may_share(self) -> bool:
        """May the frame being processed be kept, shared? Not beyond its input ring's limit
        (``_can_share`` said whether this worker shares at all)."""
        consumer = self._from
        if consumer is None:
            return False
        if len(self._kept[consumer]) >= self._keep_limit[consumer]:
            self._return_kept()
        return len(self._kept[consumer]) < self._keep_limit[consumer]

    def _share(self, received: Received, encoded: EncodedFrame, seq: int) -> bool:
        """Send a frame that lies in the input frame's segment to every output by reference
        (``Producer.share``; any output that refuses gets a copy). False, nothing sent: it
        cannot go by reference."""
        header = encoded.header(seq)
        first, *rest = self.outputs
        pos = first.share(received, header, encoded.meta, encoded.payload)
        if pos is None:
            return False
        shares = self._shares
        shares.append((first, pos))
        for out in rest:
            pos = out.share(received, header, encoded.meta, encoded.payload)
            if pos is None:
                out.send_frame(encoded, seq)
            else:
                shares.append((out, pos))
        self._tail["frames_shared"] += 1
        return True

    def _idle_timeout(self, poll: float | None) -> float | None:
        """How long an idle wait may last: ``poll``, shortened so that the counters of the
        frames processed last reach the supervisor within ``stats_interval_s``."""
        if not self._unsent_stats:
            return poll
        due = max(0.0, self._next_stats - time.monotonic())
        return due if poll is None else min(poll, due)

    def _receive(
        self, consumer: Consumer, single: bool, doorbell: bool, poll: float | None
    ) -> Received | None:
        """The next frame of ``consumer``, or None: nothing came (look for signals, try again).

        A single input with a doorbell: if nothing is there, sleep until the doorbell rings —
        a frame, the end of stream, an abort, or a signal the supervisor sent — then return
        None, so that the loop looks at the control ring first. The wait ends early when the
        counters of the last frames are due (``stats_interval_s``)."""
        if not single:
            return consumer.try_receive()
        if doorbell:
            received = consumer.try_receive()
            if received is not None:
                return received
            timeout = self._idle_timeout(None)
            if awaited := self._awaited():  # shares kept, no slot left upstream: a share read too
                wait_any([consumer], timeout, also=awaited)
                rung = True  # a frame, a share read, or the counters due: try, then the loop
            else:
                rung = consumer.wait(timeout)
            control = self.control  # rung: a frame, unless a signal came (it goes first)
            if rung and (control is None or not self._signal_waiting(control)):
                received = consumer.try_receive()
            return received  # None: timed out, a signal, or a share read (the loop sees to them)
        try:
            return consumer.receive(poll)
        except TimeoutError:  # nothing came: look for signals, then wait again
            return None

    def _signals(self, in_flight: int | None, busy: int = -1) -> None:
        """Give each node of the run its signals from the control ring. One that asks to drop:
        for the head, the queued input frames are dropped (nothing is ever queued for the
        others); a node at work on the frame in flight (``busy``: the stages ``0..busy`` are)
        is marked in ``_dropping``: it stops at its next output (:class:`_SignalAbort`). Node
        ``busy`` holds the output it just made (or its call was cancelled): that is given up
        now. A node before it waits for the nodes after it: it gives up its frame only if it
        has another output — known, and reported, when it comes (:meth:`_stop_dropping`)."""
        assert self.control is not None
        for sent in self._signals_sent():
            stage = sent.get("stage", 0)
            node = self.nodes[stage]
            self.phase, phase = "on_signal", self.phase
            self.stage, running = stage, self.stage
            drop = bool(node.on_signal(Signal(sent["name"], sent["payload"], sent["origin"], sent["id"])))
            self.phase, self.stage = phase, running
            dropped = self._drop_queued() if drop and stage == 0 else []
            if drop and stage < busy and stage not in self._dropping:
                self._dropping[stage] = (sent, dropped)  # reported at its next output, or its end
                continue
            aborted = drop and stage == busy and stage not in self._dropping
            if aborted:
                self._dropping[stage] = None
            self.events.signal_handled(sent, dropped, in_flight if aborted else None, node=stage)
            if sent["name"] == FLUSH and not drop:
                with contextlib.suppress(_SignalAbort):
                    self._emit_all(stage, node.flush, "flush")
                self.stage = running

    def _signal_waiting(self, control: Consumer) -> bool:
        return control.ready() or (self.watch is not None and self.watch.pending)

    def _signals_sent(self) -> Iterator[dict[str, Any]]:
        """The signals sent to this node, in order: those the watcher took, then the ring's."""
        assert self.control is not None
        if self.watch is not None:
            yield from self.watch.take_pending()
        while (taken := self.control.try_receive()) is not None:
            with taken:
                sent: dict[str, Any] = msgspec.json.decode(taken.meta)
            yield sent

    def _cancel_work(self, sent: dict[str, Any]) -> None:
        """On the watcher's thread, while node code runs: tell the node a signal came — if it
        is the node of the run whose code runs now (another one is not at work)."""
        stage = sent.get("stage", 0)
        if stage != self.stage or stage >= len(self.nodes):
            return
        try:
            self.nodes[stage].cancel_work(Signal(sent["name"], sent["payload"], sent["origin"], sent["id"]))
        except Exception:  # the signal still reaches on_signal once the code returns
            logging.getLogger(f"nursery_pipes.node.{self.ids[stage]}").exception(
                "%s.cancel_work failed for signal %r; it is delivered when the hook returns",
                self.types[stage],
                sent["name"],
            )

    def _watched(self, step: Callable[[], Any], in_flight: int | None, stage: int) -> Any:
        """Run a piece of node code with the watcher on. If it raises after the watcher gave the
        node a signal, the signals are delivered now: one that drops makes the error part of
        the abort (the node stopped its work on request), not a failure."""
        watch = self.watch
        assert watch is not None
        watch.busy()
        try:
            return step()
        except Exception:
            watch.idle()
            if watch.took:
                self._signals(in_flight, stage)
                if stage in self._dropping:
                    self._stop_dropping(stage, in_flight)
                    raise _SignalAbort(stage) from None
            raise
        finally:
            watch.idle()

    def _watched_outputs(
        self, hook: Any, args: tuple[Any, ...], where: str, in_flight: int | None, stage: int
    ) -> Generator[Frame, None, None]:
        """:func:`iter_outputs` of a hook, each piece of the node's code run :meth:`_watched`."""
        result = self._watched(functools.partial(hook, *args), in_flight, stage)
        outputs = iter_outputs(result, where)
        try:
            while (
                frame := self._watched(functools.partial(next, outputs, None), in_flight, stage)
            ) is not None:
                yield frame
                self.stage = stage  # back from the nodes after it
        finally:
            outputs.close()

    def _drop_queued(self) -> list[int]:
        """Take and return every frame waiting on the inputs now (the ends of stream count)."""
        dropped = []
        for consumer in list(self.active):
            while True:
                try:
                    received = consumer.try_receive()
                except EndOfStream:
                    self.active.remove(consumer)
                    break
                if received is None:
                    break
                dropped.append(received.header.seq)
                received.release()
        return dropped

    def _process(self, node: Node[Any], received: Received) -> tuple[float, weakref.ref[Any] | None]:
        """Process one input frame and write its outputs. Returns the time spent writing and,
        for a zero-copy node, a weak reference to the array over the input slot: alive after
        this returns only if the node kept (a view of) its input."""
        frame = decode_frame(received.header, received.meta, received.payload, copy=self.job.copy_inputs)
        view = None
        if not self.job.copy_inputs and (array := slot_array(frame)) is not None:
            view = weakref.ref(array)
            del array
        self.stage = 0
        if frame.kind not in self._accepts[0]:
            self._refuse(0, frame)
        self.stats["frames_in"] += 1
        self.stats["bytes_in"] += frame.nbytes
        self.last_seq = received.header.seq
        self._input = received
        try:
            if self._tracing:  # a fused run: each node times its own part
                return self._traced(0, node, frame), view
            return self._write_outputs(0, node.process, "process", frame), view
        except _SignalAbort:  # dropped by a signal (reported): the frame is done with
            self._abandon_loan()
            return 0.0, view
        finally:
            self._input = None
            if self._dropping:  # (after a failure: nothing else was given up)
                for stage in list(self._dropping):
                    self._stop_dropping(stage, None)

    def _refuse(self, stage: int, frame: Frame) -> None:
        """Node ``stage`` does not accept ``frame``'s kind: a TypeError naming it."""
        accepted = ", ".join(sorted(k.label for k in self._accepts[stage]))
        raise TypeError(f"{self.types[stage]} does not accept {frame.kind.label} frames (accepts {accepted})")

    def _feed(self, stage: int, frame: Frame) -> None:
        """An output of node ``stage - 1`` of the run goes into node ``stage``'s ``process``
        (and its outputs on, depth first); its time, less what it passes on, is its own."""
        began = time.perf_counter()
        self.stage = stage
        if frame.kind not in self._accepts[stage]:
            self._refuse(stage, frame)
        stats = self.stage_stats[stage]
        stats["frames_in"] += 1
        stats["bytes_in"] += frame.nbytes
        node = self.nodes[stage]
        try:
            if self._tracing:
                writing = self._traced(stage, node, frame)
            else:
                writing = self._write_outputs(stage, node.process, "process", frame)
        except _SignalAbort as abort:
            if abort.stage != stage:
                raise  # an earlier node of the run dropped its frame: this one's part goes too
            self._dropping.pop(stage, None)
            writing = 0.0
            if stage == self.last:
                self._abandon_loan()
        stats["processing_s"] += time.perf_counter() - began - writing
        self.stage = stage - 1

    def _traced(self, stage: int, node: Node[Any], frame: Frame) -> float:
        """Node ``stage`` of a fused run processes a sampled frame: its part (its own process
        call with the run's nodes after it nested inside) is sent as a ``frame`` event."""
        stats, started = self.stage_stats[stage], time.time_ns()
        counted = stats["bytes_in"] - frame.nbytes, stats["bytes_out"]
        try:
            writing = self._write_outputs(stage, node.process, "process", frame)
        except (RingAbortedError, _SignalAbort):
            raise
        except BaseException as exc:  # its error if it raised; a node after it says so itself
            self._frame_event(self.last_seq, started, counted, exc if self.stage == stage else None, stage)
            raise
        self._frame_event(self.last_seq, started, counted, None, stage)
        return writing

    def _process_traced(self, node: Node[Any], received: Received) -> tuple[float, weakref.ref[Any] | None]:
        """:meth:`_process` of a sampled frame, timed for the supervisor's tracing: from taking
        the frame to its last output written, or to the error that fails the node."""
        stats, started = self.stats, time.time_ns()
        counted = stats["bytes_in"], stats["bytes_out"]
        try:
            result = self._process(node, received)
        except RingAbortedError:
            raise  # stopped on request: the frame never finished, and nothing failed
        except BaseException as exc:
            self._frame_event(received.header.seq, started, counted, exc, 0)
            raise
        self._frame_event(received.header.seq, started, counted, None, 0)
        return result

    def _frame_event(
        self, seq: int, started: int, counted: tuple[int, int], error: BaseException | None, stage: int
    ) -> None:
        message = (
            ""
            if error is None
            else f"{type(error).__name__}: {error}"
            if str(error)
            else type(error).__name__
        )
        stats = self.stage_stats[stage]
        self.events.frame(
            seq,
            started,
            time.time_ns(),
            stats["bytes_in"] - counted[0],
            stats["bytes_out"] - counted[1],
            message,
            node=stage,
        )

    def _emit_all(self, stage: int, hook: Any, phase: str, *args: Any) -> None:
        """Call a hook of node ``stage`` and pass each output on as it comes; time the node's
        work, not the writes (nor the nodes after it in a fused run)."""
        began = time.perf_counter()
        self.stage = stage
        try:
            writing = self._write_outputs(stage, hook, phase, *args)
        except _SignalAbort as abort:
            if abort.stage != stage:
                raise
            self._dropping.pop(stage, None)
            writing = 0.0
        self.stage_stats[stage]["processing_s"] += time.perf_counter() - began - writing
        if self._lent:
            self._check_lent()

    def _write_outputs(self, stage: int, hook: Any, phase: str, *args: Any) -> float:
        """Call a hook of node ``stage`` and pass each output on: into the output rings (the
        run's last node), else into the next node's ``process``. Between two outputs, the
        signals come first; one that drops this node's frame stops it (:class:`_SignalAbort`).
        Returns the time spent passing outputs on."""
        where = f"{self.types[stage]}.{phase}"
        writing = 0.0
        control = self.control
        in_flight = self.last_seq if phase == "process" else None
        outputs: Generator[Frame, None, None] = (
            iter_outputs(hook(*args), where)
            if self.watch is None
            else self._watched_outputs(hook, args, where, in_flight, stage)
        )
        last = stage == self.last
        for frame in outputs:
            if control is not None and self._signal_waiting(control) and self.nodes:
                self._signals(in_flight, stage)
            if self._dropping and stage in self._dropping:
                self._stop_dropping(stage, in_flight)  # this output and the rest are given up
                outputs.close()  # the node's generator stops at its yield
                raise _SignalAbort(stage)
            paused = time.perf_counter()
            if last:
                self._write(frame)
            else:
                self._count_out(self.stage_stats[stage], frame, frame.nbytes)
                self._feed(stage + 1, frame)
                self.stage = stage
            writing += time.perf_counter() - paused
        if self._dropping and stage in self._dropping:  # it had no other output: nothing given up
            self._stop_dropping(stage, None)
        if last:
            self._abandon_loan()
        return writing

    def _stop_dropping(self, stage: int, aborted: int | None) -> None:
        """Node ``stage`` is no longer dropping; a signal whose answer waited for it is
        answered now: ``aborted`` is the frame it gave up, or None if it had nothing left."""
        deferred = self._dropping.pop(stage, None)
        if deferred is not None:
            sent, dropped = deferred
            self.events.signal_handled(sent, dropped, aborted, node=stage)

    def _abandon_loan(self) -> None:
        if self._loaned is not None:  # output_array() whose frame was never emitted: give it back
            loan, base = self._loaned
            self._loaned = None
            self._lent.append(weakref.ref(base))
            loan.discard()
        self._given_back.clear()

    def _loan_output(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        """``NodeContext.output_array`` in a worker: the payload of a slot of the first output
        ring, lent until the frame built on it is written (see :meth:`_write_loaned`)."""
        if self._loaned is not None:
            raise OutputArrayError(
                self.types[self.last],
                "asked output_array() again before emitting the frame built on the previous one",
            )
        nbytes = math.prod(shape) * dtype.itemsize
        if not self.outputs or nbytes == 0:
            return np.empty(shape, dtype)
        loan = self.outputs[0].loan(nbytes, LOAN_META_BYTES)
        base = np.frombuffer(loan.payload, dtype=dtype)
        self._loaned = (loan, base)
        return base.reshape(shape)

    def _check_lent(self) -> None:
        """After a call: a node may not keep an array from output_array() (its memory is a
        slot, published or reused). Like a kept input, it fails the node, naming it."""
        lent, self._lent = self._lent, []
        for ref in lent:
            if ref() is not None and _still_held(ref):
                raise OutputArrayError(
                    self.types[self.last], "kept an array from output_array() after the call returned"
                )

    @staticmethod
    def _count_out(stats: dict[str, Any], frame: Frame, nbytes: int) -> None:
        stats["frames_out"] += 1
        stats["bytes_out"] += nbytes
        kinds = stats["kinds_out"]
        label = _LABELS[frame.kind]
        kinds[label] = kinds.get(label, 0) + 1

    def _write(self, frame: Frame) -> None:
        """Write an output of the run's last node to every output ring."""
        encoded = encode_frame(frame)
        # counted first: nothing but the commits before the release
        self._count_out(self._tail, frame, encoded.payload.nbytes)
        if self._given_back and any(ref() is slot_array(frame) for ref in self._given_back):
            raise OutputArrayError(
                self.types[self.last],
                "emitted the frame built on output_array() after another output; emit it first",
            )
        seq = self.last_seq
        if self._loaned is not None:
            rest = self._write_loaned(frame, encoded, encoded.header(seq))
            if rest is None:
                return
            encoded = rest
        outputs = self.outputs
        received = self._input
        if (
            received is not None
            and received.header.flags & FLAG_EXTERNAL  # a small input never goes by reference
            and self._can_share
            and self._may_share()
            and self._share(received, encoded, seq)
        ):
            return  # to every output by reference; the input frame is kept until they are read
        if (
            received is not None
            and received.header.flags & FLAG_EXTERNAL
            and outputs
            and outputs[0].forward(received, encoded.header(seq), encoded.meta, encoded.payload)
        ):
            # (Part of) the input frame's external segment: it went on by reference (a zero_copy
            # node passing its input on). Other outputs get a copy. See ipc/_ownership.py.
            self._tail["frames_forwarded"] += 1
            outputs = outputs[1:]
        for out in outputs:
            out.send_frame(encoded, seq)  # one copy, header packed from the fields

    def _write_loaned(self, frame: Frame, encoded: EncodedFrame, header: SlotHeader) -> EncodedFrame | None:
        """Write a frame while an output_array() loan is out. A frame over exactly the lent
        memory is committed in place (copied only to the other outputs): returns None. A frame
        over part of it (a slice, a strided view) or with more metadata than the loan has room
        for is copied out and the loan given back; another frame gives the loan back unused
        (the node may not emit the array's frame later): both return what to write instead."""
        assert self._loaned is not None
        loan, base = self._loaned
        self._loaned = None
        self._lent.append(weakref.ref(base))
        if slot_array(frame) is not base:  # another frame: the array goes unused, or comes late
            self._given_back.append(self._lent[-1])
            loan.discard()
            return encoded
        if encoded.payload.nbytes == loan.nbytes and len(encoded.meta) <= LOAN_META_BYTES:
            for out in self.outputs[1:]:
                with out.loan(encoded.payload.nbytes, len(encoded.meta)) as other:
                    other.meta[:] = encoded.meta
                    other.payload[:] = encoded.payload
                    other.commit(header)
            loan.meta[:] = _padded_meta(encoded.meta)
            loan.commit(header)
            self._tail["frames_in_place"] += 1
            return None
        copied = dataclasses.replace(encoded, payload=memoryview(bytes(encoded.payload)))
        loan.discard()  # the copy goes to the same slot next
        return copied

    def _maybe_stats(self) -> None:
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.job.stats_interval_s
            self._unsent_stats = False
            for stage, stats in enumerate(self.stage_stats):
                self.events.stats(stats, node=stage)

    def _cleanup(self, stage: int, node: Node[Any]) -> None:
        try:
            node.cleanup()
        except Exception as exc:
            self.events.log(
                f"cleanup() raised {type(exc).__name__}: {exc}",
                logger=f"nursery_pipes.node.{self.ids[stage]}",
            )


def _set_title(job: WorkerJob) -> None:
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - a declared dependency
        return
    setproctitle.setproctitle(
        f"nursery-pipes worker session={job.session_id} node={job.node_id} ({job.node_type})"
    )
