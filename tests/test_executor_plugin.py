"""Third-party executors: the example package, installed for real, and the plugin machinery's errors.

The happy path needs a real installation — a dist-info whose entry point
``importlib.metadata`` finds — so ``examples/executor_plugin`` is built and
installed into a temporary directory (with pip, or with uv where the venv has
no pip, as a ``uv sync`` venv has not), and a fresh interpreter with that
directory on its ``sys.path`` runs pipelines through the ``threadpool``
executor and reports what it saw as JSON. Nothing of the plugin is ever
imported into this process. The errors of ``executors/_registry.py`` are
simulated in-process with fake entry points.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from typer.testing import CliRunner

from nursery_pipes import ConfigError, Runtime, RuntimeConfig
from nursery_pipes.cli import app
from nursery_pipes.executors import ENTRY_POINT_GROUP, Executor, NodeHost, NodePorts, Placement

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "executor_plugin"

SHOUT = {
    "version": "v1",
    "metadata": {"name": "shout", "multiprocess": {"executor_overrides": {"up": "threadpool"}}},
    "nodes": [{"id": "up", "node_type": "TextTransformNode", "params": {"operation": "upper"}}],
    "connections": [],
}

# ---------------------------------------------------------------------------------------------
# The example package, installed for real


def _install_command(project: Path, target: Path) -> list[str]:
    """pip where this venv has it; else uv (PATH, or the one `make` puts in .tools/). No build
    isolation and no index: the build uses this venv's setuptools and needs no network."""
    args = ["--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(project)]
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    pinned = ROOT / ".tools" / "bin" / "uv"
    uv = shutil.which("uv") or (str(pinned) if pinned.exists() else None)
    if uv is None:
        pytest.fail("installing the example needs pip or uv in this environment; neither was found")
    # --no-cache: uv would otherwise reuse a build of the same directory made before an edit.
    return [uv, "pip", "install", "--quiet", "--no-cache", "--python", sys.executable, *args]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the installed example (package + dist-info with its entry point)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.fail(
            "building the example needs setuptools in this venv (the dev extra brings it, through grpcio-tools)"
        )
    tmp = tmp_path_factory.mktemp("plugin")
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in examples/.
    project = shutil.copytree(EXAMPLE, tmp / "project", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp / "site"
    began = time.perf_counter()
    done = subprocess.run(_install_command(project, site), capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, f"installing the example failed:\n{done.stdout}\n{done.stderr}"
    print(f"example installed in {time.perf_counter() - began:.1f} s")
    return site


def _run(args: list[str], site: Path | None, **env: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter; with ``site`` on its sys.path (PYTHONPATH) when given."""
    environ = {**os.environ, "COLUMNS": "1000", "NO_COLOR": "1", **env}  # rich must not wrap messages
    environ.pop("PYTHONPATH", None)
    if site is not None:
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=environ, timeout=50)


# The fresh interpreter's program. Nodes that must not stall the supervisor wait for the test to
# release them; every wait is bounded, so a broken executor fails the run instead of hanging it.
SCRIPT = """
import dataclasses, json, logging, sys, threading
import trio, trio.testing
from nursery_pipes import Node, NodeError, NodeInitTimeout, Runtime, TextFrame, load_config
from nursery_pipes.executors import available_executors

TRIO_THREAD = threading.get_ident()
COND = threading.Condition()
ACTIVE = [0, 0]  # calls blocked in Blocks.process now, and at most
RELEASE = threading.Event()
INIT_RELEASE = threading.Event()
CLEANED = []
WARNINGS = []


class Upper(Node):
    def initialize(self, progress):
        progress(0.5, "warming up")

    def process(self, frame):
        return TextFrame(text=frame.text.upper())

    def flush(self):  # a generator: each step is a call on the pool
        yield TextFrame(text=f"flushed on the trio thread: {threading.get_ident() == TRIO_THREAD}")


class Fails(Node):
    def process(self, frame):
        raise ValueError(f"cannot read {frame.text!r}")


class Blocks(Node):
    def process(self, frame):
        with COND:
            ACTIVE[0] += 1
            ACTIVE[1] = max(ACTIVE)
            COND.notify_all()
        released = RELEASE.wait(5)
        with COND:
            ACTIVE[0] -= 1
        return TextFrame(text=f"released={released}")


class SlowInit(Node):
    def initialize(self, progress):
        INIT_RELEASE.wait(5)

    def process(self, frame):
        return frame

    def cleanup(self):
        with COND:
            CLEANED.append(threading.current_thread().name)
            COND.notify_all()


class Warnings(logging.Handler):
    def emit(self, record):
        WARNINGS.append(record.getMessage())


def chain(node_id, node_type):
    return {
        "version": "v1",
        "metadata": {"name": node_id, "multiprocess": {"executor_overrides": {node_id: "threadpool"}}},
        "nodes": [{"id": node_id, "node_type": node_type}],
        "connections": [],
    }


def texts(frames):
    return [f.text for f in frames]


async def wait_for(predicate):
    def wait():
        with COND:
            return COND.wait_for(predicate, 5)
    assert await trio.to_thread.run_sync(wait), "timed out"


async def main():
    rt = Runtime(load_config(text="[multiprocess]\\ngrace_period_secs = 0.2"))
    for cls in (Upper, Fails, Blocks, SlowInit):
        rt.registry.register(cls)
    pool = rt.executors.get("threadpool")
    logging.getLogger("nursery_pipes.node").addHandler(Warnings())
    report = {
        "executors": sorted(available_executors()),
        "class": f"{type(pool).__module__}.{type(pool).__qualname__}",
    }
    if pool is None:  # not discovered: report the executors there are, and stop
        print(json.dumps(report))
        return
    report["module_file"] = sys.modules[type(pool).__module__].__file__

    result = await rt.run_pipeline(chain("up", "Upper"), {"up": [TextFrame(text="a"), TextFrame(text="b")]})
    assignment = result.assignments["up"]
    report["outputs"] = texts(result.outputs["up"])
    report["assignment"] = [assignment.executor, assignment.reason]
    report["node_executor"] = result.metrics.nodes["up"].executor
    report["progress"] = [[p.state, p.progress, p.message] for p in result.progress]

    try:
        await rt.run_pipeline(chain("bad", "Fails"), {"bad": TextFrame(text="x")})
    except NodeError as exc:
        report["failure"] = [exc.node_id, exc.phase, str(exc), "Traceback" in (exc.remote_traceback or "")]

    # Session A blocks a pool thread until session B has run through the same runtime.
    blocked = []

    async def session_a():
        out = await rt.run_pipeline(chain("wait", "Blocks"), {"wait": TextFrame(text="x")})
        blocked.extend(texts(out.outputs["wait"]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session_a)
        await wait_for(lambda: ACTIVE[0] == 1)
        other = await rt.run_pipeline(chain("up", "Upper"), {"up": TextFrame(text="b")})
        report["other_session"] = texts(other.outputs["up"])
        report["blocked_until_then"] = list(blocked)
        RELEASE.set()
    report["blocked_session"] = blocked

    # Three blocking sessions on a pool of 2: two calls run, the third waits for a thread.
    RELEASE.clear()
    ACTIVE[1] = 0
    three = []

    async def blocking(i):
        out = await rt.run_pipeline(chain(f"b{i}", "Blocks"), {f"b{i}": TextFrame(text="x")})
        three.extend(texts(out.outputs[f"b{i}"]))

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(blocking, i)
        await wait_for(lambda: ACTIVE[0] == 2)
        await trio.testing.wait_all_tasks_blocked(0.05)
        report["saturated"] = dataclasses.astuple(pool.statistics())
        RELEASE.set()
    report["three"] = three
    report["peak"] = ACTIVE[1]
    report["after"] = dataclasses.astuple(pool.statistics())

    # An initialize that overruns: reported at the deadline, stopped within the grace period,
    # its cleanup() run after it (on its thread) once it returns.
    plan = rt.plan(chain("slow", "SlowInit"))
    plan = dataclasses.replace(plan, settings=dataclasses.replace(plan.settings, init_timeout_secs=0.2))
    began = trio.current_time()
    try:
        async with rt.open_session(plan):
            pass
    except NodeInitTimeout as exc:
        report["init_timeout"] = [exc.node_id, exc.phase, str(exc)]
    report["init_timeout_s"] = trio.current_time() - began
    report["cleaned_while_init_ran"] = list(CLEANED)
    INIT_RELEASE.set()
    await wait_for(lambda: CLEANED)
    report["cleaned"] = CLEANED
    report["warnings"] = WARNINGS
    print(json.dumps(report))


trio.run(main)
"""


@pytest.fixture(scope="module")
def ran(plugin_site: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the fresh interpreter reported (it stops early if it has no threadpool executor)."""
    script = tmp_path_factory.mktemp("script") / "use_threadpool.py"
    script.write_text(SCRIPT)
    began = time.perf_counter()
    done = _run([str(script)], plugin_site, NURSERY_PIPES_THREADPOOL_SIZE="2")
    assert done.returncode == 0, f"the pipeline run failed:\n{done.stdout}\n{done.stderr}"
    print(f"pipelines run in {time.perf_counter() - began:.1f} s")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture
def report(ran: dict[str, Any]) -> dict[str, Any]:
    if "module_file" not in ran:
        pytest.fail(f"the threadpool executor was not discovered; the executors are {ran['executors']}")
    return ran


def test_the_installed_executor_is_discovered(ran: dict[str, Any], plugin_site: Path) -> None:
    assert ran["executors"] == ["inprocess", "multiprocess", "remote", "thread", "threadpool"]
    assert ran["class"] == "nursery_pipes_threadpool._executor.ThreadPoolExecutor"
    assert Path(ran["module_file"]).is_relative_to(plugin_site)  # the installed copy, not examples/


def test_a_node_runs_on_the_pool(report: dict[str, Any]) -> None:
    assert report["outputs"] == ["A", "B", "flushed on the trio thread: False"]
    assert report["assignment"] == [
        "threadpool",
        "manifest override (metadata.multiprocess.executor_overrides)",
    ]
    assert report["node_executor"] == "threadpool"
    assert report["progress"] == [["starting", 0.0, ""], ["loading", 0.5, "warming up"], ["ready", 1.0, ""]]


def test_a_failing_node_is_named_with_its_phase(report: dict[str, Any]) -> None:
    node_id, phase, message, has_traceback = report["failure"]
    assert (node_id, phase) == ("bad", "process")
    assert message == "node 'bad' failed in process: ValueError: cannot read 'x'"
    assert has_traceback


def test_a_blocked_pool_thread_does_not_stall_another_session(report: dict[str, Any]) -> None:
    assert report["other_session"] == ["B", "flushed on the trio thread: False"]
    assert report["blocked_until_then"] == []
    assert report["blocked_session"] == ["released=True"]


def test_the_pool_is_bounded_and_shared_by_sessions(report: dict[str, Any]) -> None:
    assert report["saturated"] == [2, 2, 1]  # size, busy, waiting for a thread
    assert report["peak"] == 2
    assert report["three"] == ["released=True"] * 3
    assert report["after"] == [2, 0, 0]


def test_an_initialize_that_overruns_is_abandoned_and_cleaned_up_after(report: dict[str, Any]) -> None:
    assert report["init_timeout"] == [
        "slow",
        "initialize",
        "node 'slow' failed in initialize: not ready after 0.2 s (init_timeout_secs)",
    ]
    # The deadline (0.2 s) plus the grace period (0.2 s), with room for a busy machine: never the
    # initialize itself, which blocks until the program releases it (or for 5 s).
    assert report["init_timeout_s"] < 1.0
    assert report["cleaned_while_init_ran"] == []  # never beside a running hook...
    assert report["cleaned"] == ["nursery-pipes threadpool slow.initialize"]  # ...but after it, on its thread
    assert any("node slow: a hook was still running" in w for w in report["warnings"])


def test_the_cli_finds_the_executor_only_where_it_is_installed(plugin_site: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "shout.json"
    manifest.write_text(json.dumps(SHOUT))
    text = tmp_path / "in.txt"
    text.write_text("hello")
    ran = _run(["-m", "nursery_pipes", "run", str(manifest), "-i", f"up={text}", "--json"], plugin_site)
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)
    assert summary["assignments"]["up"]["executor"] == "threadpool"
    assert summary["metrics"]["nodes"]["up"]["frames_out"] == 1
    missing = _run(["-m", "nursery_pipes", "validate", str(manifest), "--json"], None)
    assert missing.returncode == 2
    assert json.loads(missing.stdout)["errors"] == [
        {
            "path": "metadata.multiprocess.executor_overrides.up",
            "message": "node 'up' routes to the threadpool executor (manifest override "
            "(metadata.multiprocess.executor_overrides)), which this runtime does not have "
            "(available: inprocess, multiprocess, remote, thread)",
        }
    ]


def test_a_bad_pool_size_stops_the_runtime(plugin_site: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "shout.json"
    manifest.write_text(json.dumps(SHOUT))
    bad = _run(
        ["-m", "nursery_pipes", "validate", str(manifest)], plugin_site, NURSERY_PIPES_THREADPOOL_SIZE="0"
    )
    assert bad.returncode == 2
    assert "NURSERY_PIPES_THREADPOOL_SIZE='0': expected a whole number of threads" in bad.stderr


# ---------------------------------------------------------------------------------------------
# The plugin machinery's errors (executors/_registry.py), with simulated entry points: each is a
# ConfigError naming the entry point, raised when a Runtime is created — never a runtime that
# quietly lacks an executor a manifest may name.


class _Supervised(Executor):
    placement = Placement.SUPERVISOR

    async def run_node(self, host: NodeHost, ports: NodePorts, *, task_status: trio.TaskStatus[None]) -> None:
        raise NotImplementedError


class Gpu(_Supervised):
    name = "gpu"


class OtherGpu(_Supervised):
    name = "gpu"


class Thread(_Supervised):
    name = "thread"


class Shouting(_Supervised):
    name = "GPU"


class Nowhere(Executor):
    name = "nowhere"


HERE = Gpu.__module__


def fake_executors(monkeypatch: pytest.MonkeyPatch, *specs: tuple[str, str]) -> None:
    """``importlib.metadata.entry_points`` (as executors/_registry.py calls it) finds ``specs`` in
    the executors' group, and nothing in any other group."""

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        found = specs if group == ENTRY_POINT_GROUP else ()
        return [importlib.metadata.EntryPoint(name=n, value=v, group=group) for n, v in found]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_a_well_formed_entry_point_adds_an_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_executors(monkeypatch, ("gpu", f"{HERE}:Gpu"))
    executors = Runtime().executors
    assert list(executors) == ["inprocess", "thread", "multiprocess", "gpu"]
    assert type(executors["gpu"]) is Gpu


@pytest.fixture
def failing_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "np_plugin_needs_cuda.py").write_text("raise RuntimeError('no CUDA device')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "np_plugin_needs_cuda:Executor"


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        pytest.param(
            [("gpu", "np_missing_plugin_module:Gpu")],
            "entry point 'gpu' = 'np_missing_plugin_module:Gpu' (group nursery_pipes.executors) cannot be "
            "loaded: ModuleNotFoundError: No module named 'np_missing_plugin_module'",
            id="module-missing",
        ),
        pytest.param(
            [("gpu", "FAILING_IMPORT")],
            "entry point 'gpu' = 'np_plugin_needs_cuda:Executor' (group nursery_pipes.executors) cannot be "
            "loaded: RuntimeError: no CUDA device",
            id="import-raises",
        ),
        pytest.param(
            [("gpu", f"{HERE}:NoSuchExecutor")],
            f"entry point 'gpu' = '{HERE}:NoSuchExecutor' (group nursery_pipes.executors) cannot be loaded: "
            "AttributeError:",
            id="class-missing",
        ),
        pytest.param(
            [("gpu", "nursery_pipes.frames:TextFrame")],
            "entry point 'gpu' = 'nursery_pipes.frames:TextFrame' (group nursery_pipes.executors) is not an "
            "Executor subclass",
            id="not-an-executor",
        ),
        pytest.param(
            [("gpu", "nursery_pipes._version:__version__")],
            "entry point 'gpu' = 'nursery_pipes._version:__version__' (group nursery_pipes.executors) is not "
            "an Executor subclass",
            id="not-a-class",
        ),
        pytest.param(
            [("thread", f"{HERE}:Thread")],
            f"entry point 'thread' = '{HERE}:Thread' (group nursery_pipes.executors): the name 'thread' is "
            "taken by nursery_pipes.executors._thread.ThreadExecutor",
            id="clash-with-a-builtin",
        ),
        pytest.param(
            [("gpu", f"{HERE}:Gpu"), ("gpu", f"{HERE}:OtherGpu")],
            f"entry point 'gpu' = '{HERE}:OtherGpu' (group nursery_pipes.executors): the name 'gpu' is taken "
            f"by {HERE}.Gpu",
            id="clash-between-plugins",
        ),
        pytest.param(
            [("fast", f"{HERE}:Gpu")],
            f"entry point 'fast' = '{HERE}:Gpu' (group nursery_pipes.executors): the class's name attribute "
            "is 'gpu', not 'fast'",
            id="name-differs",
        ),
        pytest.param(
            [("GPU", f"{HERE}:Shouting")],
            f"entry point 'GPU' = '{HERE}:Shouting' (group nursery_pipes.executors): executor names are "
            "lower-case words",
            id="name-not-lower-case",
        ),
        pytest.param(
            [("nowhere", f"{HERE}:Nowhere")],
            f"entry point 'nowhere' = '{HERE}:Nowhere' (group nursery_pipes.executors): the class has no "
            "placement",
            id="no-placement",
        ),
    ],
)
def test_a_bad_entry_point_stops_the_runtime(
    monkeypatch: pytest.MonkeyPatch, failing_import: str, specs: list[tuple[str, str]], message: str
) -> None:
    fake_executors(monkeypatch, *[(n, failing_import if v == "FAILING_IMPORT" else v) for n, v in specs])
    with pytest.raises(ConfigError) as info:
        Runtime(RuntimeConfig())
    assert message in str(info.value)


def test_the_cli_reports_a_bad_entry_point_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_executors(monkeypatch, ("fast", f"{HERE}:Gpu"))
    result = CliRunner().invoke(app, ["nodes"], env={"COLUMNS": "1000"})
    assert result.exit_code == 2
    assert "error: entry point 'fast'" in result.output
    assert "the class's name attribute is 'gpu', not 'fast'" in result.output
    assert "Traceback" not in result.output
