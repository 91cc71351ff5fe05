"""``qemu-evmcs-launch`` as a user runs it: its own help, the drop-in ``--help``, and ``--simulate`` end to end
(the era failures QEMU had, named after the simulator rather than the Python interpreter running it)."""

from __future__ import annotations

import os
import pty
import signal
import stat
import subprocess
import sys
from pathlib import Path

from proc_helpers import PATIENCE

from qemu_evmcs.launch.wrapper import _FLAG_OPTS, _VALUE_OPTS, WRAPPER_HELP

LAUNCH = [sys.executable, "-m", "qemu_evmcs.launch"]
#: The simulated emulator is a Python program: at load 10 its start-up can outlast the default 10 s QMP budget,
#: which is not what these tests are about (generous; the runs end on the emulator's exit or greeting).
SIM_BUDGET = ["--qmp-timeout", "300"]
HOST_EVMCS = ["-accel", "kvm", "-cpu", "host,vmx=on,hv-evmcs=on,hv-vapic=on", "-display", "none", "-S"]


def _fake_emulator(tmp_path: Path) -> str:
    """A stand-in emulator that prints its arguments (the wrapper exec's it for --help)."""
    path = tmp_path / "fake-qemu"
    path.write_text(f"#!{sys.executable}\nimport sys\nprint('FAKE-QEMU', *sys.argv[1:])\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_wrapper_help_lists_every_wrapper_option() -> None:
    res = subprocess.run([*LAUNCH, "--wrapper-help"], capture_output=True, text=True, timeout=PATIENCE)
    assert (res.returncode, res.stderr) == (0, "")
    assert res.stdout == WRAPPER_HELP
    for opt in (*_VALUE_OPTS, *_FLAG_OPTS, "--negotiate"):
        assert f"\n  {opt} " in res.stdout, opt
    assert "--wrapper-help" in res.stdout.splitlines()[3]  # in the usage lines, not only the option list


def test_help_passes_through_to_the_emulator_silently(tmp_path: Path) -> None:
    fake = _fake_emulator(tmp_path)
    for opt in ("--help", "-h", "-help"):
        res = subprocess.run([*LAUNCH, "--emulator", fake, opt], capture_output=True, text=True, timeout=PATIENCE)
        # Drop-in: exactly the emulator's output, nothing added when not on a terminal (scripts, libvirt).
        assert (res.returncode, res.stdout, res.stderr) == (0, f"FAKE-QEMU {opt}\n", ""), opt


def test_help_on_a_terminal_points_at_wrapper_help(tmp_path: Path) -> None:
    fake = _fake_emulator(tmp_path)
    master, slave = pty.openpty()
    try:
        res = subprocess.run([*LAUNCH, "--emulator", fake, "--help"], stdout=subprocess.PIPE, stderr=slave,
                             text=True, timeout=PATIENCE)
        os.close(slave)
        slave = -1
        err = os.read(master, 4096).decode()
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert res.returncode == 0 and res.stdout == "FAKE-QEMU --help\n"
    assert err.strip() == ("qemu-evmcs-launch: wrapper options: qemu-evmcs-launch --wrapper-help; "
                           "the emulator's help follows")


def test_simulated_pre57_abort_names_the_simulator() -> None:
    # cascadelake-5.4: QEMU's KVM_SET_MSRS of 0x48d fails after enable-time sanitization; QEMU aborts.
    res = subprocess.run([*LAUNCH, *SIM_BUDGET, "--simulate", "cascadelake-5.4", *HOST_EVMCS], capture_output=True,
                         text=True, timeout=PATIENCE, stdin=subprocess.DEVNULL)
    lines = res.stderr.splitlines()
    assert res.returncode == 128 + signal.SIGABRT
    assert lines[0] == "qemu-system-x86_64: error: failed to set MSR 0x48d to 0xff00000016"
    assert lines[-1].startswith("error: qemu-evmcs-sim was killed by signal 6 (SIGABRT) before QMP was ready: ")
    assert "python" not in res.stderr


def test_simulated_startup_error_names_the_simulator() -> None:
    res = subprocess.run([*LAUNCH, *SIM_BUDGET, "--simulate", "skylake-6.3", "-accel", "kvm", "-cpu",
                          "host,hv-evmcs=on", "-display", "none"], capture_output=True, text=True, timeout=PATIENCE,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        "qemu-system-x86_64: Hyper-V enlightened VMCS (hv-evmcs) requires Hyper-V virtual APIC (hv-vapic)",
        "error: qemu-evmcs-sim exited with status 1 before QMP was ready: qemu-system-x86_64: Hyper-V enlightened "
        "VMCS (hv-evmcs) requires Hyper-V virtual APIC (hv-vapic)",
    ]


def test_simulated_510_starts_and_is_verified() -> None:
    proc = subprocess.Popen([*LAUNCH, *SIM_BUDGET, "--simulate", "skylake-5.10", *HOST_EVMCS], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line == "qemu-evmcs-launch: cpu host (kvm): 3 of 3 requested vmx/hv options applied\n", line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 128 + signal.SIGTERM
