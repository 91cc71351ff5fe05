"""Shared helpers for the launch tests (real QEMU under TCG)."""

from __future__ import annotations

from needs import need_program

QEMU = "qemu-system-x86_64"
#: A small, fast TCG machine: no devices, no display, paused.
BASE_ARGS = ["-accel", "tcg", "-machine", "q35", "-nodefaults", "-display", "none", "-S"]


def qemu_path() -> str:
    """The emulator path; in CI (CI=true) a missing binary FAILS, elsewhere it skips with a reason."""
    return need_program(QEMU, "apt-get install qemu-system-x86")


def qemu_argv(cpu: str = "qemu64", *extra: str) -> list[str]:
    return [qemu_path(), *BASE_ARGS, "-cpu", cpu, *extra]
