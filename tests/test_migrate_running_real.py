"""``migrate-check --from-running`` against a real QEMU (issue 13): the running guest's configuration comes from
standard QMP (QOM properties, ``unavailable-features``, ``query-kvm``), the source host from
``--source-profile``; no ``x-evmcs-*`` command, no ``--model``.

The QEMU runs under TCG, which filters every vmx bit (they end up in ``unavailable-features``), and refuses
``hv-vpindex`` at vCPU init, so the guest here has hv-relaxed, hv-vapic and hv-evmcs only.

Expected verdicts by hand from the kernels' eVMCS filters (kvm-evmcs.md): Skylake-Server-v5 turns the
VMX-preemption timer on (QEMU's model, qemu.md §2.4). A 5.10 host (era 5.7-5.14) filters only the PERF_GLOBAL_CTRL
controls and APIC-access virtualization on guest reads, so its guest sees the timer; 6.3's EVMCS1_SUPPORTED_PINCTRL
(ext-intr, NMI, virtual NMI) lacks it. So 5.10 -> 6.3 is unsafe and loses vmx-preemption-timer -- unless the
running guest was started with it off, which only its QOM properties can tell.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from launch_helpers import qemu_path
from proc_helpers import unix_listening, wait_until
from qemu_evmcs.cli.main import run

pytestmark = pytest.mark.qemu

HV = "hv-relaxed=on,hv-vapic=on,hv-evmcs=on"


def _qemu(cpu: str) -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="mr-", dir="/tmp")
    sock = os.path.join(d, "qmp")
    proc = subprocess.Popen([qemu_path(), "-accel", "tcg", "-machine", "q35", "-S", "-nodefaults", "-display", "none",
                             "-cpu", cpu, "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: unix_listening(sock) or proc.poll() is not None)
        assert proc.poll() is None and unix_listening(sock), "QEMU did not start"
        yield sock
    finally:
        proc.kill()
        proc.communicate()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def default_timer() -> Iterator[str]:
    yield from _qemu(f"Skylake-Server-v5,vmx=on,{HV}")


@pytest.fixture(scope="module")
def no_timer() -> Iterator[str]:
    yield from _qemu(f"Skylake-Server-v5,vmx=on,-vmx-preemption-timer,-vmx-exit-save-preemption-timer,{HV}")


@pytest.fixture
def check(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, dict[str, Any] | None, str]]:
    def _check(*args: str) -> tuple[int, dict[str, Any] | None, str]:
        rc = run(["migrate-check", *args])
        out, err = capsys.readouterr()
        return rc, (json.loads(out) if "--json" in args and out.startswith("{") else None), err
    return _check


def test_510_to_63_loses_the_preemption_timer(default_timer: str, check: Callable[..., Any]) -> None:
    rc, data, err = check("--from-running", default_timer, "--source-profile", "skylake-5.10", "--to",
                           "skylake-6.3", "--json")
    assert rc == 1 and data is not None, err
    assert data["verdict"] == "unsafe"
    lost = {c["feature"] for c in data["lost"]}
    assert "vmx-preemption-timer" in lost
    assert any("query-kvm: enabled=false" in n for n in data["notes"])


def test_configuration_comes_from_the_running_guest(no_timer: str, check: Callable[..., Any]) -> None:
    """Started with the timer off: moving to 6.3 no longer loses it (the -cpu was read, not a --model)."""
    rc, data, err = check("--from-running", no_timer, "--source-profile", "skylake-5.10", "--to", "skylake-6.3",
                           "--json")
    assert data is not None, err
    lost = {c["feature"] for c in data["lost"]}
    assert "vmx-preemption-timer" not in lost and "vmx-exit-save-preemption-timer" not in lost


def test_same_host_is_fine(default_timer: str, check: Callable[..., Any]) -> None:
    rc, data, err = check("--from-running", default_timer, "--source-profile", "skylake-6.3", "--to",
                           "skylake-6.3", "--json")
    assert rc == 0 and data is not None and data["verdict"] == "fine", err


def test_usage_errors_are_exit_2(default_timer: str, check: Callable[..., Any]) -> None:
    rc, _, err = check("--from-running", default_timer, "--to", "skylake-6.3")
    assert rc == 2 and "give --source-profile PROFILE" in err
    rc, _, err = check("--from-running", default_timer, "--model", "max", "--source-profile", "skylake-6.3",
                        "--to", "skylake-6.3")
    assert rc == 2 and err.startswith("error: --model")
    rc, _, err = check("--from-running", "/nonexistent/qmp.sock", "--source-profile", "skylake-6.3", "--to",
                        "skylake-6.3")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: --from-running /nonexistent/qmp.sock")
