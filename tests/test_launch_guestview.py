"""Verification tells the truth about the guest (issue 13): with a host profile, a requested vmx feature the
eVMCS filter hides from the L1 guest is reported ``hidden`` and the report is not ok.

Expectations from the Linux constants, not from the code: 6.3's EVMCS1_SUPPORTED_PINCTRL is
PIN_BASED_EXT_INTR_MASK | PIN_BASED_NMI_EXITING | PIN_BASED_VIRTUAL_NMIS (bits 0, 3, 5), so the preemption
timer (bit 6) is hidden there; 5.7-5.14 kernels filter only the PERF_GLOBAL_CTRL controls and APIC-access
virtualization on guest reads (nested_evmcs_filter_control_msr of that time), so on 5.10 it is visible.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from test_json_schema import check, schemas

from qemu_evmcs.core.profile import load_host_profile as load_host
from qemu_evmcs.launch.guestview import apply_guest_view
from qemu_evmcs.launch.cpuarg import parse_cpu_arg
from qemu_evmcs.launch.verify import STATUS_APPLIED, FeatureOutcome, LaunchReport


def _report(cpu: str) -> LaunchReport:
    """What verify_cpu reports when QEMU applied every requested option (the simulator under KVM does)."""
    spec = parse_cpu_arg(cpu)
    rep = LaunchReport(cpu_arg=cpu, model=spec.model, qom_path="/machine/unattached/device[0]",
                       kvm_enabled=True, kvm_present=True)
    rep.features = [FeatureOutcome(name=n, requested=v, effective=v, expanded=v, status=STATUS_APPLIED)
                    for n, v in spec.tracked().items()]
    return rep


CPU = "Skylake-Server-v5,vmx=on,vmx-preemption-timer=on,vmx-ept=on,hv-vapic=on,hv-evmcs=on"


def test_hidden_on_63() -> None:
    rep = _report(CPU)
    assert rep.ok
    apply_guest_view(rep, parse_cpu_arg(CPU), load_host("skylake-6.3"))
    status = {f.name: (f.status, f.layer) for f in rep.features}
    assert status["vmx-preemption-timer"] == ("hidden", "evmcs-filter")
    assert status["vmx-ept"] == ("applied", None) and status["hv-evmcs"] == ("applied", None)
    assert not rep.ok and rep.to_dict()["ok"] is False
    assert rep.summary_lines()[0].endswith("4 of 5 requested vmx/hv options applied")
    assert rep.to_dict()["host"] == {"name": "skylake-6.3", "kernel": "6.3.0"}
    check(rep.to_dict(), schemas()["launch-report"])
    no_host = _report(CPU)
    check(no_host.to_dict(), schemas()["launch-report"])      # host: null without a profile


def test_visible_on_510() -> None:
    rep = _report(CPU)
    apply_guest_view(rep, parse_cpu_arg(CPU), load_host("skylake-5.10"))
    assert rep.ok and rep.host == "skylake-5.10"


def test_without_evmcs_the_filter_does_not_apply() -> None:
    cpu = "Skylake-Server-v5,vmx=on,vmx-preemption-timer=on"
    rep = _report(cpu)
    apply_guest_view(rep, parse_cpu_arg(cpu), load_host("skylake-6.3"))
    assert rep.ok


def test_perf_controls_hidden_by_the_cpuid_gate_on_63() -> None:
    """6.1+: VM_{EXIT,ENTRY}_LOAD_IA32_PERF_GLOBAL_CTRL reach the guest only with 0x4000000A.EBX bit 0,
    which real QEMU never sets."""
    cpu = "Skylake-Server-v5,vmx=on,vmx-exit-load-perf-global-ctrl=on,hv-vapic=on,hv-evmcs=on"
    rep = _report(cpu)
    apply_guest_view(rep, parse_cpu_arg(cpu), load_host("skylake-6.3"))
    assert {f.name: f.layer for f in rep.features if f.status == "hidden"} == {
        "vmx-exit-load-perf-global-ctrl": "perf-cpuid-gate"}


def test_wrapper_reports_hidden_with_the_simulator(tmp_path: Path) -> None:
    """End to end, the issue's case: vmx-preemption-timer=on on a 6.3 host was '4 of 4 ... applied', ok true."""
    report = tmp_path / "r.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qemu_evmcs.launch", "--simulate", "skylake-6.3", "--report-json", str(report),
         "--", "-accel", "kvm", "-cpu", CPU, "-display", "none"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:        # the report is written before its summary lines are printed
            lines.append(line)
            if "model features dropped" in line or line.startswith("qemu-evmcs-launch:   hidden"):
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    text = "".join(lines)
    assert "4 of 5 requested vmx/hv options applied" in text, text
    assert "hidden vmx-preemption-timer: QEMU applied it, but the L1 guest on skylake-6.3" in text
    data = json.loads(report.read_text())
    check(data, schemas()["launch-report"])       # docs/json.md
    assert data["ok"] is False
    assert [f["status"] for f in data["features"] if f["name"] == "vmx-preemption-timer"] == ["hidden"]
