"""Golden-file comparison for the CPU-model tests (validate, baseline): JSON data in, shared helper underneath.

``QEMU_EVMCS_REGEN=1`` (or ``pytest --regen-golden`` through the ``golden`` fixture) rewrites the expected
files. A missing golden file is a failure (see ``golden_util``), never a silent pass.
"""

from __future__ import annotations

import json
from typing import Any

from golden_util import compare_or_regen, regen_from_env


def check_golden(relpath: str, data: Any) -> None:
    """Compare ``data`` (rendered as sorted JSON) with ``tests/golden/<relpath>``."""
    compare_or_regen(relpath, json.dumps(data, indent=2, sort_keys=True) + "\n", regen=regen_from_env())
