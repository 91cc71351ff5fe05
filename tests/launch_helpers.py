"""Shared helpers for the launch tests (real QEMU under TCG)."""

from __future__ import annotations

import os
import shutil
import time

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


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a reaped child has no /proc entry)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def pid_exists(pid: int) -> bool:
    """True if /proc still has the pid at all (zombie included): an unreaped child shows up here."""
    return os.path.exists(f"/proc/{pid}")


def children_of(ppid: int) -> list[int]:
    """Pids whose parent is ``ppid`` (from /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == ppid:
            out.append(int(name))
    return out


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_exists(pid):
            return True
        time.sleep(0.02)
    return not pid_exists(pid)
