#!/usr/bin/env python
"""Regenerate the betterproto code (and descriptor sets) for the protos under ``protos/``.

    .venv/bin/python scripts/generate_protos.py            # rewrite src/nursery_pipes/_proto
    .venv/bin/python scripts/generate_protos.py --check    # exit 1 if the committed code is stale
    .venv/bin/python scripts/generate_protos.py --out DIR  # write (or --check) DIR instead

Input: every ``*.proto`` under ``protos/`` (e.g. ``protos/remotemedia/v1/common.proto``), in
a directory that spells its package (``remotemedia.v1`` → ``remotemedia/v1/``).
Output: one Python package per proto package under ``src/nursery_pipes/_proto/``, so that
``from nursery_pipes._proto.remotemedia.v1 import StreamRequest`` works, and one descriptor set
per proto package beside them (``remotemedia_v1.binpb``, ``nursery_pipes_v1.binpb``): the
server builds its upb classes and its reflection answers from them. A set per package keeps
remotemedia.v1's exactly what its protos say, whatever extension services sit beside it.

Toolchain: grpcio-tools' bundled protoc + the ``protoc-gen-python_betterproto`` plugin of
``betterproto[compiler]==2.0.0b7`` (which itself formats its output with isort + black).
The output is left exactly as the plugin writes it (already black-formatted; the directory is
excluded from ruff and mypy), so the only inputs that affect it are the .proto files and the
versions of grpcio-tools, betterproto, black, isort and jinja2 in the venv. Nothing in it
depends on time, paths or hash order; ``normalise`` below is the single place to fix that up
should a future plugin version embed something unstable.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_DIR = ROOT / "src" / "nursery_pipes" / "_proto"
PLUGIN_NAME = "protoc-gen-python_betterproto"
PACKAGE_LINE = re.compile(r"^package\s+([A-Za-z_][\w.]*)\s*;", re.MULTILINE)
MAX_DIFF_LINES = 60


def proto_files(proto_root: Path = PROTO_ROOT) -> list[str]:
    """The .proto files to compile, as sorted paths relative to the include root."""
    return sorted(p.relative_to(proto_root).as_posix() for p in proto_root.rglob("*.proto"))


def packages(proto_root: Path = PROTO_ROOT) -> dict[str, list[str]]:
    """Proto package → its files (as :func:`proto_files` gives them). A file must declare a
    package and sit in the directory that spells it, or its descriptor set would be ambiguous."""
    found: dict[str, list[str]] = {}
    for name in proto_files(proto_root):
        match = PACKAGE_LINE.search((proto_root / name).read_text(encoding="utf-8"))
        if match is None:
            raise SystemExit(f"{name}: no package declaration")
        package = match.group(1)
        if Path(name).parent.as_posix() != package.replace(".", "/"):
            raise SystemExit(f"{name}: package {package} must live in {package.replace('.', '/')}/")
        found.setdefault(package, []).append(name)
    return found


def descriptor_set_name(package: str) -> str:
    """``remotemedia.v1`` → ``remotemedia_v1.binpb``."""
    return package.replace(".", "_") + ".binpb"


def find_plugin() -> str:
    """Locate betterproto's protoc plugin: next to this interpreter first, then on PATH."""
    candidate = Path(sys.executable).parent / PLUGIN_NAME
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(PLUGIN_NAME)
    if found is None:
        raise SystemExit(
            f"{PLUGIN_NAME} not found; install the dev extras "
            '(pip install "betterproto[compiler]==2.0.0b7" grpcio-tools)'
        )
    return found


def normalise(text: str) -> str:
    """Make generated text byte-stable (LF line endings, exactly one trailing newline)."""
    text = text.replace("\r\n", "\n")
    return text.rstrip("\n") + "\n" if text.strip() else ""


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc + betterproto into ``out_dir`` (created if needed); return files written.

    ``out_dir`` should be empty or a previous output of this function.
    """
    files = proto_files(proto_root)
    if not files:
        raise SystemExit(f"no .proto files under {proto_root}")
    out_dir.mkdir(parents=True, exist_ok=True)
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={proto_root}"]
    env = dict(os.environ, PYTHONHASHSEED="0")
    env.pop("BETTERPROTO_DUMP", None)
    runs = [[f"--plugin={PLUGIN_NAME}={find_plugin()}", f"--python_betterproto_out={out_dir}", *files]]
    # The descriptors too, a set per package: the server's upb messages and its reflection
    # service describe the API from them.
    for package, names in packages(proto_root).items():
        runs.append([f"--descriptor_set_out={out_dir / descriptor_set_name(package)}", *names])
    for args in runs:
        proc = subprocess.run(
            [*protoc, *args], cwd=proto_root, env=env, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"protoc failed with exit code {proc.returncode}")
    written = generated_files(out_dir)
    for path in written:
        if path.suffix != ".py":
            continue
        raw = path.read_text(encoding="utf-8")
        fixed = normalise(raw)
        if fixed != raw:
            path.write_text(fixed, encoding="utf-8", newline="\n")
    return written


def generated_files(tree: Path) -> list[Path]:
    """The generated files of a tree (``*.py`` and the descriptor set, not ``__pycache__``), sorted."""
    if not tree.is_dir():
        return []
    return sorted(
        p
        for p in tree.rglob("*")
        if p.is_file() and p.suffix in {".py", ".binpb"} and "__pycache__" not in p.parts
    )


def compare_trees(expected: Path, actual: Path) -> list[str]:
    """Differences between a fresh generation (``expected``) and a committed tree (``actual``).

    Returns human-readable lines; an empty list means identical.
    """
    exp = {p.relative_to(expected).as_posix(): p for p in generated_files(expected)}
    act = {p.relative_to(actual).as_posix(): p for p in generated_files(actual)}
    problems: list[str] = []
    for name in sorted(exp.keys() - act.keys()):
        problems.append(f"missing: {name}")
    for name in sorted(act.keys() - exp.keys()):
        problems.append(f"unexpected (stale) file: {name}")
    for name in sorted(exp.keys() & act.keys()):
        if not name.endswith(".py"):
            if exp[name].read_bytes() != act[name].read_bytes():
                problems.append(f"differs: {name} (binary)")
            continue
        a = exp[name].read_text(encoding="utf-8").splitlines(keepends=True)
        b = act[name].read_text(encoding="utf-8").splitlines(keepends=True)
        if a == b:
            continue
        diff = list(difflib.unified_diff(b, a, f"committed/{name}", f"regenerated/{name}", n=2))
        changed = sum(1 for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---")))
        problems.append(f"differs: {name} ({changed} changed lines)")
        shown = diff[:MAX_DIFF_LINES]
        problems.extend("    " + line.rstrip("\n") for line in shown)
        if len(diff) > MAX_DIFF_LINES:
            problems.append(f"    ... {len(diff) - MAX_DIFF_LINES} more diff lines")
    return problems


def sync_tree(fresh: Path, target: Path) -> None:
    """Make ``target``'s generated files identical to ``fresh`` (removes stale modules)."""
    fresh_files = {p.relative_to(fresh).as_posix(): p for p in generated_files(fresh)}
    for old in generated_files(target):
        if old.relative_to(target).as_posix() not in fresh_files:
            old.unlink()
    for name, src in fresh_files.items():
        dst = target / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        data = src.read_bytes()
        if not dst.is_file() or dst.read_bytes() != data:
            dst.write_bytes(data)
    # Drop directories left empty by removed modules (never the target itself).
    for d in sorted((p for p in target.rglob("*") if p.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temp dir and compare; exit 1 if the committed code differs",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=OUT_DIR,
        help=f"generated-code directory (default: {OUT_DIR.relative_to(ROOT)})",
    )
    args = parser.parse_args(argv)
    target: Path = args.out.resolve()

    with tempfile.TemporaryDirectory(prefix="nursery-pipes-protos-") as tmp:
        fresh = Path(tmp) / "_proto"
        generate(fresh)
        if args.check:
            problems = compare_trees(fresh, target)
            if problems:
                print(f"generated protobuf code in {target} is out of date:")
                print("\n".join(problems))
                print("run: .venv/bin/python scripts/generate_protos.py")
                return 1
            print(f"generated protobuf code in {target} is up to date")
            return 0
        sync_tree(fresh, target)
    for path in generated_files(target):
        print(f"generated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
