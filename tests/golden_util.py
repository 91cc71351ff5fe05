"""Golden-file comparison with a regenerate switch.

``compare_or_regen(name, actual, regen=...)`` compares ``actual`` with
``tests/golden/<name>``; with ``regen`` true (pytest ``--regen-golden`` or
``QEMU_EVMCS_REGEN=1``) it rewrites the file instead. A missing golden file is
a failure, not a silent pass, so CI never "passes" by writing its own
expectations.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest


GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
ENV_REGEN = "QEMU_EVMCS_REGEN"


def regen_from_env() -> bool:
    """``QEMU_EVMCS_REGEN=1`` asks for regeneration."""
    return os.environ.get(ENV_REGEN, "") == "1"


def compare_or_regen(name: str, actual: str, *, regen: bool) -> None:
    """Assert ``actual`` equals ``tests/golden/<name>``, or rewrite that file when ``regen``."""
    path = GOLDEN_DIR / name
    if regen:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"golden file {path} is missing; run pytest --regen-golden (or {ENV_REGEN}=1) to create it")
    expected = path.read_text(encoding="utf-8")
    if expected != actual:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            fromfile=f"golden/{name}", tofile="actual"))
        pytest.fail(f"output differs from golden/{name} (regenerate with --regen-golden if intended):\n{diff}")
