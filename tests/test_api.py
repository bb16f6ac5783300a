"""The public API: __all__ matches what is exported, documented examples run, the worker side stays light."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import subprocess
import sys

import pytest

import nursery_pipes

PUBLIC_PACKAGES = [
    "nursery_pipes",
    "nursery_pipes.frames",
    "nursery_pipes.manifest",
    "nursery_pipes.nodes",
    "nursery_pipes.runtime",
    "nursery_pipes.testing",
    "nursery_pipes.executors",
    "nursery_pipes.ipc",
    "nursery_pipes.worker",
]


@pytest.mark.parametrize("name", PUBLIC_PACKAGES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    declared = set(module.__all__)
    for attr in declared:
        assert getattr(module, attr) is not None, f"{name}.{attr} is in __all__ but missing"
    public = {n for n in vars(module) if not n.startswith("_") and not _is_module(getattr(module, n))}
    lazy = set(getattr(module, "_LAZY", {}))
    assert public - declared - {"annotations", "TYPE_CHECKING", "Any", "importlib"} == set(), (
        "exported but not in __all__"
    )
    assert declared - public - lazy - {"__version__"} == set(), "in __all__ but not defined"


def _is_module(obj: object) -> bool:
    return type(obj).__name__ == "module"


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(nursery_pipes.__path__, "nursery_pipes."):
        if "._proto" in info.name or info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules())
def test_documented_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {name}"


def test_worker_side_imports_no_trio_grpc_or_cli() -> None:
    code = (
        "import sys, nursery_pipes.worker, nursery_pipes.nodes.builtin, nursery_pipes.nodes.faults\n"
        "heavy = [m for m in ('trio', 'grpclib', 'betterproto', 'typer', 'rich', 'jsonschema', 'trio_parallel',"
        " 'opentelemetry')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_the_asyncio_client_loads_no_trio_runtime_or_server() -> None:
    # (grpclib.server itself is loaded: the generated betterproto module defines the
    # *ServiceBase classes on grpclib's server module. Our server code is not.)
    code = (
        "import sys, nursery_pipes.client\n"
        "unwanted = ['trio', 'trio_asyncio', 'trio_parallel', 'typer', 'rich'] + [\n"
        "    'nursery_pipes.' + p for p in\n"
        "    ('runtime', 'executors', 'service', 'worker', 'ipc', 'cli', 'testing', '_api')]\n"
        "print(','.join(m for m in unwanted if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_a_runtime_loads_no_grpc_code_until_a_remote_node_runs() -> None:
    """Every runtime loads its executors' classes, the remote one included: its gRPC client
    (grpclib, protobuf, trio-asyncio: ~0.3 s) is imported only when a remote node runs."""
    code = (
        "import sys, nursery_pipes.runtime as r\n"
        "r.Runtime()\n"
        "print(','.join(m for m in ('grpclib', 'betterproto', 'google.protobuf', 'trio_asyncio') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
