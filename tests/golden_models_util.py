"""Golden-file comparison for the CPU-model tests (validate, baseline).

``QEMU_EVMCS_REGEN=1 pytest tests/test_validate.py tests/test_baseline.py`` rewrites the expected files;
a missing golden file is written on first run (virtinst's ``diff_compare`` style) and the test passes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).parent / "golden"


def regen() -> bool:
    """Is regeneration requested?"""
    return os.environ.get("QEMU_EVMCS_REGEN", "") in ("1", "true", "yes")


def check_golden(relpath: str, data: Any) -> None:
    """Compare ``data`` (rendered as sorted JSON) with ``tests/golden/<relpath>``."""
    path = GOLDEN / relpath
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if regen() or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"{path} differs; rerun with QEMU_EVMCS_REGEN=1 if the change is intended"
