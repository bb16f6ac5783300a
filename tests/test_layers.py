"""The layer contracts of docs/design.md §1 hold (pyproject.toml ``[tool.importlinter]``).

``make lint`` and ``make test`` run ``lint-imports`` too; this test makes a plain
``pytest`` run catch a broken contract as well.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_imports_keep_the_layer_contracts() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"  # the dev extra installs it
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
