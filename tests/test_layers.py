"""The layer contracts of docs/design.md §1 hold (pyproject.toml ``[tool.importlinter]``), and
the document's layer table says what the contract says.

``make lint`` and ``make test`` run ``lint-imports`` too; this test makes a plain
``pytest`` run catch a broken contract as well.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
DESIGN = ROOT / "docs" / "design.md"


def test_imports_keep_the_layer_contracts() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"  # the dev extra installs it
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo", str(PYPROJECT)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def contract_layers() -> list[set[str]]:
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    return [{name.strip() for name in layer.split("|")} for layer in layers]


def documented_layers() -> list[set[str]]:
    """The ``| n | `package/` ... |`` rows of the table in §1, grouped by n."""
    section = DESIGN.read_text().split("## 1. Architecture", 1)[1].split("\n## ", 1)[0]
    grouped: dict[int, set[str]] = {}
    for number, packages in re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.MULTILINE):
        names = {re.sub(r"(/|\.py)$", "", name) for name in re.findall(r"`([^`]+)`", packages)}
        grouped.setdefault(int(number), set()).update(names)
    return [grouped[n] for n in sorted(grouped)]


def test_the_design_documents_the_contracts_layers() -> None:
    assert documented_layers() == contract_layers()
