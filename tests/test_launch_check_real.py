"""``launch --check`` with a real emulator asks that binary (issue 13): models and properties come from
``query-cpu-definitions`` and ``qom-list-properties`` on ``-machine none``, and a ``-cpu`` the binary would reject
is refused before the guest's QEMU starts, in the words QEMU itself prints for the same ``-cpu`` (taken here from
the installed QEMU, not from our code)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launch_helpers import BASE_ARGS, qemu_path

pytestmark = pytest.mark.qemu


def _qemu_own_error(cpu: str) -> str:
    """The last stderr line of the installed QEMU given this ``-cpu`` (``-machine none``: applied, not run)."""
    proc = subprocess.run([qemu_path(), "-machine", "none", "-display", "none", "-nodefaults", "-cpu", cpu],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    return proc.stderr.strip().splitlines()[-1].removeprefix("qemu-system-x86_64: ")


def _check(tmp_path: Path, cpu: str) -> subprocess.CompletedProcess[str]:
    """``--check`` the guest's command line; its -pidfile shows whether the guest's QEMU ever started."""
    return subprocess.run([sys.executable, "-m", "qemu_evmcs.launch", "--emulator", qemu_path(), "--check", "--",
                           *BASE_ARGS, "-cpu", cpu, "-pidfile", str(tmp_path / "guest.pid")],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("cpu", [
    "max,vmx=on,hv-vapic=on,hv-evmcs=on,hv-evmcs-perf-global-ctrl=on",    # this project's proposed option
    "Skylake-Server-v5,vmx=on,vmx-nested-exception=off",                   # a newer QEMU's property
    "Sapphire-Rapids-v9,vmx=on",                                           # no such model
])
def test_refused_before_starting_in_qemus_words(tmp_path: Path, cpu: str) -> None:
    r = _check(tmp_path, cpu)
    assert r.returncode == 1, r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith("error: --check: qemu-system-x86_64 ") and line.endswith(_qemu_own_error(cpu)), line
    assert not (tmp_path / "guest.pid").exists()          # nothing of the guest was started


def test_every_unknown_property_is_listed(tmp_path: Path) -> None:
    r = _check(tmp_path, "max,vmx=on,hv-evmcs-perf-global-ctrl=on,x-hv-evmcs-revision=2")
    assert r.returncode == 1
    assert "max-x86_64-cpu.hv-evmcs-perf-global-ctrl=on" in r.stderr and "(and 1 more: " in r.stderr
    assert "Property 'max-x86_64-cpu.x-hv-evmcs-revision' not found" in r.stderr


def test_accepted_configuration_starts(tmp_path: Path) -> None:
    """What the binary has passes the check, and the guest's QEMU starts (then we stop it)."""
    proc = subprocess.Popen([sys.executable, "-m", "qemu_evmcs.launch", "--emulator", qemu_path(), "--check", "--",
                             *BASE_ARGS, "-cpu", "qemu64,vmx=on", "-pidfile", str(tmp_path / "guest.pid")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "requested vmx/hv options applied" in line:
                break
        assert (tmp_path / "guest.pid").exists()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 128 + 15
