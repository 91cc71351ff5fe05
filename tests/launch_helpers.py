"""Shared helpers for the launch tests (real QEMU under TCG)."""

from __future__ import annotations

import os
import shutil

import pytest

QEMU = "qemu-system-x86_64"
#: A small, fast TCG machine: no devices, no display, paused.
BASE_ARGS = ["-accel", "tcg", "-machine", "q35", "-nodefaults", "-display", "none", "-S"]


def qemu_path() -> str:
    """The emulator path; in CI (CI=true) a missing binary FAILS, elsewhere it skips with a reason."""
    path = shutil.which(QEMU)
    if path is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{QEMU} is required in CI but is not on PATH")
        pytest.skip(f"{QEMU} not installed (install qemu-system-x86 to run these tests)")
    return path


def qemu_argv(cpu: str = "qemu64", *extra: str) -> list[str]:
    return [qemu_path(), *BASE_ARGS, "-cpu", cpu, *extra]
