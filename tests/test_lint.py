"""Linters as tests (the qemu.qmp way): mypy --strict on the package and the tests, ruff on everything Python."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


def _scripts() -> list[str]:
    """Executable Python scripts under scripts/ (they have no .py suffix, so name them explicitly)."""
    out = []
    for path in sorted((ROOT / "scripts").iterdir()):
        if path.is_file() and path.read_text(encoding="utf-8", errors="replace").startswith("#!/usr/bin/env python"):
            out.append(str(path))
    return out


def test_mypy_strict() -> None:
    """The package and the tests, in one run (the tests call the package's API, so a wrong annotation on either
    side shows; one run costs a few seconds less than two)."""
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--strict", "qemu_evmcs", "tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff() -> None:
    if shutil.which("ruff") is None and subprocess.run([sys.executable, "-m", "ruff", "--version"],
                                                       capture_output=True, check=False).returncode != 0:
        pytest.fail("ruff is not installed (pip install -e '.[test]')")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "qemu_evmcs", "tests", *_scripts()], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
