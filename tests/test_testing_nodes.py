"""The misbehaving test-only nodes: in-process (cancellable, refusing to kill) and in a worker."""

from __future__ import annotations

import ast
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import nursery_pipes
from nursery_pipes._errors import ManifestError
from nursery_pipes.frames import Frame, TextFrame
from nursery_pipes.nodes import faults
from nursery_pipes.nodes._base import Node
from nursery_pipes.nodes._calls import iter_outputs, make_node, no_progress
from nursery_pipes.nodes._registry import NodeRegistry, builtin_registry
from nursery_pipes.nodes.faults import (
    TESTING_NODES,
    CpuBurnNode,
    ExitNode,
    HangNode,
    ProgressNode,
    RaiseNode,
    SignalNode,
    SleepNode,
    register_testing_nodes,
)
from nursery_pipes.testing import run_node_sync

SRC = Path(nursery_pipes.__file__).resolve().parents[1]
FRAMES = [TextFrame(text=str(i)) for i in range(5)]


def texts(frames: list[Frame]) -> list[str]:
    return [f.text for f in frames if isinstance(f, TextFrame)]


def worker_node(cls: type[Node[Any]], params: dict[str, Any]) -> Node[Any]:
    """The node as a worker process would see it (blocking behaviour)."""
    return make_node(cls, params, executor="multiprocess")


def drive(node: Node[Any], frames: list[Frame]) -> list[Frame]:
    assert node.initialize(no_progress) is None
    out: list[Frame] = []
    try:
        for frame in frames:
            out.extend(iter_outputs(node.process(frame), "process"))
        out.extend(iter_outputs(node.flush(), "flush"))
    finally:
        node.cleanup()
    return out


# --- registration and import weight ---------------------------------------------------------


def test_registration_is_opt_in() -> None:
    registry = NodeRegistry()
    register_testing_nodes(registry)
    assert sorted(registry.names()) == sorted(cls.node_type for cls in TESTING_NODES)
    for cls in TESTING_NODES:
        assert cls.executor is None
        assert cls.description().startswith("Test node")
        assert registry.info(cls.node_type).origin == "nursery_pipes.testing"
    assert not set(registry.names()) & set(builtin_registry().names())


def test_module_does_not_import_trio_at_import_time() -> None:
    tree = ast.parse(Path(faults.__file__).read_text())
    top_level = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    names = {alias.name for node in top_level for alias in node.names}
    names |= {node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "trio" for name in names)
    # And for real, whatever the parent packages do: importing it adds no trio.
    code = (
        "import sys, nursery_pipes.nodes._base\n"
        "before = 'trio' in sys.modules\n"
        "import nursery_pipes.nodes.faults\n"
        "print(before, 'trio' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True
    )
    before, after = result.stdout.split()
    assert after == before


def test_runtime_with_testing_nodes_never_imports_the_testing_package() -> None:
    # The testing package is for test code (pytest fixtures, harnesses); a server run with
    # `[nodes] testing = true` and the workers it starts only need the node classes.
    code = (
        "import sys\n"
        "from nursery_pipes._config import NodesConfig, RuntimeConfig\n"
        "from nursery_pipes.nodes._registry import import_ref\n"
        "from nursery_pipes.runtime import Runtime\n"
        "registry = Runtime(RuntimeConfig(nodes=NodesConfig(testing=True))).registry\n"
        "print(import_ref(registry['RaiseNode']), 'nursery_pipes.testing' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["nursery_pipes.nodes.faults:RaiseNode", "False"]


def test_only_the_testing_package_imports_itself() -> None:
    """The layering rule (import-linter's contract, checked here too): production code —
    everything outside nursery_pipes.testing — never imports nursery_pipes.testing."""
    root = SRC / "nursery_pipes"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[:2] == ("nursery_pipes", "testing") or "_proto" in parts:
            continue
        package = parts[:-1]  # of a module, and of an __init__ alike
        for node in ast.walk(ast.parse(path.read_text())):
            for name in _imported(node, package):
                if name == "nursery_pipes.testing" or name.startswith("nursery_pipes.testing."):
                    offenders.append(f"{'.'.join(parts)} imports {name}")
    assert offenders == []


def _imported(node: ast.AST, package: tuple[str, ...]) -> list[str]:
    """Absolute names an import statement refers to (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = package[: len(package) - node.level + 1]
        base = ".".join([*anchor, *([base] if base else [])])
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


# --- SleepNode ------------------------------------------------------------------------------


def test_sleep_node_zero_is_synchronous_pass_through() -> None:
    assert texts(run_node_sync(SleepNode, FRAMES)) == [f.text for f in FRAMES]


def test_sleep_node_blocks_in_a_worker() -> None:
    node = worker_node(SleepNode, {"init_seconds": 0.01, "process_seconds": 0.01})
    began = time.monotonic()
    assert texts(drive(node, FRAMES[:2])) == ["0", "1"]
    assert time.monotonic() - began >= 0.03


async def test_sleep_node_in_process_sleeps_with_trio(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = make_node(SleepNode, {"init_seconds": 30, "process_seconds": 2.5})
    began = trio.current_time()
    init = node.initialize(no_progress)
    assert inspect.isawaitable(init)
    await init
    assert trio.current_time() - began == pytest.approx(30)
    pending = node.process(FRAMES[0])
    assert inspect.isawaitable(pending)
    assert await pending is FRAMES[0]
    assert trio.current_time() - began == pytest.approx(32.5)


async def test_sleep_node_in_process_is_cancellable(autojump_clock: trio.testing.MockClock) -> None:
    node = make_node(SleepNode, {"process_seconds": 3600})
    pending = node.process(FRAMES[0])
    assert inspect.isawaitable(pending)
    with trio.move_on_after(1) as scope:
        await pending
    assert scope.cancelled_caught


# --- RaiseNode ------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["initialize", "process", "flush", "cleanup"])
def test_raise_node_phases(phase: str) -> None:
    with pytest.raises(RuntimeError, match=r"^kaboom$"):
        run_node_sync(RaiseNode, FRAMES, {"phase": phase, "message": "kaboom"})


def test_raise_node_after_frames_passes_earlier_frames() -> None:
    node = make_node(RaiseNode, {"phase": "process", "after_frames": 2})
    assert node.process(FRAMES[0]) is FRAMES[0]
    assert node.process(FRAMES[1]) is FRAMES[1]
    with pytest.raises(RuntimeError, match="boom"):
        node.process(FRAMES[2])


def test_raise_node_requires_phase() -> None:
    with pytest.raises(ManifestError, match="phase"):
        make_node(RaiseNode, {})
    with pytest.raises(ManifestError, match="phase"):
        make_node(HangNode, {"phase": "cleanup"})


# --- HangNode -------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["initialize", "process", "flush"])
async def test_hang_node_in_process_hangs_cancellably(
    phase: str, autojump_clock: trio.testing.MockClock
) -> None:
    node = make_node(HangNode, {"phase": phase, "after_frames": 1})
    hook: Any = None
    if phase == "initialize":
        hook = node.initialize(no_progress)
    else:
        assert node.initialize(no_progress) is None
        assert node.process(FRAMES[0]) is FRAMES[0]  # after_frames=1: the first one passes
        hook = node.process(FRAMES[1]) if phase == "process" else node.flush()
    assert inspect.isawaitable(hook)
    with trio.move_on_after(1e6) as scope:
        await hook
    assert scope.cancelled_caught


# --- nodes that kill their process ----------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "params", "message"),
    [
        (ExitNode, {"phase": "process"}, "ExitNode refuses to exit the supervisor process"),
        (ExitNode, {"phase": "cleanup"}, "ExitNode refuses"),
        (SignalNode, {"phase": "initialize"}, "SignalNode refuses to signal the supervisor"),
        (SignalNode, {"phase": "flush", "signal": "SIGSEGV"}, "SignalNode refuses"),
    ],
)
def test_killers_refuse_in_process(cls: type[Node[Any]], params: dict[str, Any], message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        run_node_sync(cls, FRAMES, params)


def test_signal_node_validates_name() -> None:
    with pytest.raises(ManifestError, match="unknown signal name 'SIGNOPE'"):
        make_node(SignalNode, {"phase": "process", "signal": "SIGNOPE"})


DRIVER = """
import json, sys
from nursery_pipes.frames import TextFrame
from nursery_pipes.nodes._calls import iter_outputs, make_node, no_progress
from nursery_pipes.nodes import faults
node = make_node(
    getattr(faults, sys.argv[1]), json.loads(sys.argv[2]), executor="multiprocess", in_worker_process=True
)
node.initialize(no_progress)
for i in range(3):
    for out in iter_outputs(node.process(TextFrame(text=str(i))), "process"):
        print("out", out.text, flush=True)
list(iter_outputs(node.flush(), "flush"))
node.cleanup()
print("done", flush=True)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def worker() -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(node: str, params: dict[str, Any]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, node, json.dumps(params)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=_env(),
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_exit_node_exits_a_worker(worker: Any) -> None:
    proc = worker("ExitNode", {"code": 7, "phase": "process", "after_frames": 1})
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 7
    assert stdout.split("\n")[0] == "out 0"
    assert "done" not in stdout


@pytest.mark.parametrize(("name", "signum"), [("SIGKILL", signal.SIGKILL), ("SIGSEGV", signal.SIGSEGV)])
def test_signal_node_kills_a_worker(worker: Any, name: str, signum: int) -> None:
    proc = worker("SignalNode", {"signal": name, "phase": "flush"})
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signum
    assert stdout.split() == ["out", "0", "out", "1", "out", "2"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_hang_node_in_a_worker_ignores_sigterm(worker: Any) -> None:
    proc = worker("HangNode", {"phase": "process", "after_frames": 1})
    assert proc.stdout is not None
    assert proc.stdout.readline() == "out 0\n"
    # Wait until SIGTERM is ignored (deterministic: read the kernel's view, no sleep guess).
    deadline = time.monotonic() + 20
    while not _ignores(proc.pid, signal.SIGTERM):
        assert proc.poll() is None, "worker died instead of hanging"
        assert time.monotonic() < deadline, "worker never ignored SIGTERM"
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.1)
    proc.kill()
    assert proc.wait(timeout=10) == -signal.SIGKILL


def _ignores(pid: int, signum: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


# --- ProgressNode ---------------------------------------------------------------------------


def test_progress_node_reports_steps_synchronously() -> None:
    reports: list[tuple[float, str]] = []
    node = worker_node(ProgressNode, {"steps": 4})
    assert node.initialize(lambda f, m="": reports.append((f, m))) is None
    assert reports == [(0.25, "step 1/4"), (0.5, "step 2/4"), (0.75, "step 3/4"), (1.0, "step 4/4")]
    assert node.process(FRAMES[0]) is FRAMES[0]


def test_progress_node_sleeps_between_steps_in_a_worker() -> None:
    reports: list[float] = []
    node = worker_node(ProgressNode, {"steps": 3, "step_seconds": 0.01})
    began = time.monotonic()
    node.initialize(lambda f, m="": reports.append(f))
    assert time.monotonic() - began >= 0.03
    assert reports == pytest.approx([1 / 3, 2 / 3, 1.0])


async def test_progress_node_in_process_uses_trio_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports: list[tuple[float, float, str]] = []
    node = make_node(ProgressNode, {"steps": 2, "step_seconds": 5})
    began = trio.current_time()
    init = node.initialize(lambda f, m="": reports.append((trio.current_time() - began, f, m)))
    assert inspect.isawaitable(init)
    assert reports == []
    await init
    assert reports == [(pytest.approx(5), 0.5, "step 1/2"), (pytest.approx(10), 1.0, "step 2/2")]


# --- CpuBurnNode ----------------------------------------------------------------------------


def test_cpu_burn_node_does_real_work_per_frame() -> None:
    node = make_node(CpuBurnNode, {"milliseconds": 20})
    assert isinstance(node, CpuBurnNode)
    node.initialize(no_progress)
    assert node.units_per_frame > 0
    began = time.process_time()
    assert node.process(FRAMES[0]) is FRAMES[0]
    spent = time.process_time() - began
    assert 0.005 <= spent <= 1.0  # calibrated to ~20 ms of CPU; generous for loaded machines


def test_cpu_burn_node_zero_is_free() -> None:
    node = make_node(CpuBurnNode, {"milliseconds": 0})
    assert isinstance(node, CpuBurnNode)
    node.initialize(no_progress)
    assert node.units_per_frame == 0
    assert texts(run_node_sync(CpuBurnNode, FRAMES[:2], {"milliseconds": 0})) == ["0", "1"]
