"""``validate --qemu-models``: QEMU's models as eVMCS guests per era, checked by hand for Skylake-Client-v4.

Hand derivation (README "Kernel eras"; QEMU 7.2's Skylake-Client-v4 defaults with vmx=on include the preemption
timer, virtualize APIC accesses, VMFUNC + EPTP switching, shadow VMCS, PML, exit save-preemption-timer and the
PERF_GLOBAL_CTRL exit/entry controls, but no posted interrupts, APIC-register/VID virtualization, PLE or TSC
scaling -- client parts):
- 5.6-5.14 hides PERF_GLOBAL_CTRL (exit, entry) and virtualize APIC accesses: 3 lost;
- 6.3+ allow-list also hides the preemption timer, exit save-preemption-timer, VMFUNC, EPTP switching, shadow
  VMCS and PML: 9 lost;
- 4.20-5.5 filters at enable time: QEMU's unfiltered KVM_SET_MSRS is refused, QEMU aborts.
"""

from __future__ import annotations

from qemu_evmcs.policy.qemu_models import qemu_models_report

LOST_510 = {"vmx-exit-load-perf-global-ctrl", "vmx-entry-load-perf-global-ctrl", "vmx-apicv-xapic"}
LOST_63 = LOST_510 | {"vmx-preemption-timer", "vmx-exit-save-preemption-timer", "vmx-vmfunc", "vmx-eptp-switching",
                      "vmx-shadow-vmcs", "vmx-pml"}


def test_skylake_client_v4_row_by_hand() -> None:
    report = qemu_models_report()
    row = next(r for r in report.rows if r.name == "Skylake-Client-v4")
    assert row.outcome["pre-4.20"] == "refused"
    assert row.outcome["4.20-5.5"] == "aborts"
    assert row.outcome["5.6-5.14"] == "starts" and set(row.lost["5.6-5.14"]) == LOST_510
    assert row.outcome["6.3+"] == "starts" and set(row.lost["6.3+"]) == LOST_63
    text = report.render()
    line = next(x for x in text.splitlines() if x.startswith("Skylake-Client-v4 "))
    assert line.split()[1:] == ["no", "ABORT", "-3"] + line.split()[4:] and line.split()[-1] == "-9"


def test_amd_models_and_newer_qemu_models() -> None:
    report = qemu_models_report()
    epyc = next(r for r in report.rows if r.name == "EPYC")
    assert set(epyc.outcome.values()) == {"refused"} and "not Intel" in epyc.note
    newer = {m: (q, v) for m, q, v in report.newer}
    assert newer["SapphireRapids"] == ("8.0", True)   # qemu commit 7eb061b06e, v8.0.0 (model-releases.yaml)
    assert "Skylake-Client-v4" not in newer
