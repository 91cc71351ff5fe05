"""Stable point releases decide the era (kvm-evmcs.md §10.3): every stable series boundary, by hand.

Values are what an eVMCS L1 guest reads on tests/data/core/skylake.yaml, computed by hand from the Linux masks:
  host TRUE_PINBASED 0x7f00000016 (allowed-1 0x7f: bit 6 preemption timer, bit 7 posted interrupts)
  host TRUE_EXIT     0x01ffffff00036dfb (bit 12 LOAD_PERF_GLOBAL_CTRL 0x1000, bit 22 SAVE_PREEMPT_TIMER 0x400000)
  host 2NDEXEC       allowed-1 0x1ffcff; old deny-list EVMCS1_UNSUPPORTED_2NDEXEC 0x02026701 -> 0x1d98fe;
                     31de3d2500e4 alone clears only VIRTUALIZE_APIC_ACCESSES (bit 0) -> 0x1ffcfe
  host VMFUNC        0x1 (EPTP switching), cleared by EVMCS1_UNSUPPORTED_VMFUNC
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qemu_evmcs.core.kernel import era_of, era_table, merge_rules, rules_by_msr
from qemu_evmcs.core.profile import load_profile
from qemu_evmcs.kvm.simkvm import SimKvm, guest_view
from qemu_evmcs.policy.explain import explain_host

SKYLAKE = load_profile(str(Path(__file__).resolve().parent / "data" / "core" / "skylake.yaml"))

PIN_KEEP, PIN_OLD = 0x7F00000016, 0x3F00000016          # 0x7f & ~0xc0 = 0x3f
EXIT_PERF_ONLY = 0x1FFEFFF00036DFB                      # 0x1ffffff & ~0x1000
EXIT_PERF_TIMER = 0x1BFEFFF00036DFB                     # 0x1ffffff & ~(0x1000 | 0x400000)
SEC_VAPIC_ONLY, SEC_DENY = 0x1FFCFE00000000, 0x1D98FE00000000


def view(kernel: str) -> dict[str, int]:
    return dict(guest_view(SKYLAKE.with_kernel(kernel)))


def test_5_4_179_180_enable_time_gains_the_preemption_timer_exit_control() -> None:
    # 5.4.y never got 31de3d2500e4 or 8d68bad6d869 or f80ae0ef089a; 5.4.180 got only 7a601e2cf615.
    assert era_of("5.4.179").id == "4.20-5.5"
    assert era_of("5.4.180").id == "4.20-5.5+7a601e2cf615"
    assert era_of("5.4.180").filter_at == "enable"
    assert view("5.4.179")["IA32_VMX_TRUE_EXIT_CTLS"] == EXIT_PERF_ONLY
    assert view("5.4.180")["IA32_VMX_TRUE_EXIT_CTLS"] == EXIT_PERF_TIMER
    # enable-time: once eVMCS is on, even host (KVM_GET_MSRS) reads lose it
    vcpu = SimKvm(SKYLAKE.with_kernel("5.4.210")).create_vcpu()
    vcpu.enable_evmcs()
    assert vcpu.get_msr("IA32_VMX_TRUE_EXIT_CTLS", host_initiated=True) == EXIT_PERF_TIMER
    assert vcpu.get_msr("IA32_VMX_TRUE_PINBASED_CTLS", host_initiated=True) == PIN_OLD


def test_5_10_70_71_vmfunc_and_shadow_vmcs_hidden_from_71() -> None:
    g70, g71 = view("5.10.70"), view("5.10.71")
    assert (era_of("5.10.70").id, era_of("5.10.71").id) == ("5.6-5.14", "5.15-5.16")
    assert g70["IA32_VMX_PROCBASED_CTLS2"] == SEC_VAPIC_ONLY and g70["IA32_VMX_VMFUNC"] == 0x1
    assert g70["IA32_VMX_PINBASED_CTLS"] == PIN_KEEP
    assert g71["IA32_VMX_PROCBASED_CTLS2"] == SEC_DENY and g71["IA32_VMX_VMFUNC"] == 0
    assert g71["IA32_VMX_PINBASED_CTLS"] == PIN_OLD and g71["IA32_VMX_TRUE_PINBASED_CTLS"] == PIN_KEEP


@pytest.mark.parametrize("before, after", [("5.10.100", "5.10.101"), ("5.15.23", "5.15.24"),
                                           ("5.16.9", "5.16.10")])
def test_5_17_fixes_reach_the_stable_series(before: str, after: str) -> None:
    assert era_of(before).id == "5.15-5.16" and era_of(after).id == "5.17-6.0"
    gb, ga = view(before), view(after)
    assert gb["IA32_VMX_TRUE_PINBASED_CTLS"] == PIN_KEEP and ga["IA32_VMX_TRUE_PINBASED_CTLS"] == PIN_OLD
    assert gb["IA32_VMX_TRUE_EXIT_CTLS"] == EXIT_PERF_ONLY and ga["IA32_VMX_TRUE_EXIT_CTLS"] == EXIT_PERF_TIMER
    assert gb["IA32_VMX_PROCBASED_CTLS2"] == ga["IA32_VMX_PROCBASED_CTLS2"] == SEC_DENY


@pytest.mark.parametrize("kernel", ["6.1", "6.1.1", "6.1.55", "6.1.160"])
def test_6_1_y_never_gets_the_allow_list(kernel: str) -> None:
    assert era_of(kernel).id == "6.1-6.2" and not era_of(kernel).backports
    g = view(kernel)
    assert g["IA32_VMX_TRUE_PROCBASED_CTLS"] == SKYLAKE.msrs["IA32_VMX_TRUE_PROCBASED_CTLS"]  # 6.3+ only
    assert g["IA32_VMX_TRUE_EXIT_CTLS"] == EXIT_PERF_TIMER
    # the PV bit opens PERF_GLOBAL_CTRL: 0x1ffffff & ~0x400000
    pv = guest_view(SKYLAKE.with_kernel(kernel), pv_perf_global_ctrl=True)
    assert pv["IA32_VMX_TRUE_EXIT_CTLS"] == 0x1BFFFFF00036DFB


@pytest.mark.parametrize("kernel, era", [("4.19.300", "pre-4.20"), ("5.10", "5.6-5.14"), ("5.10.0", "5.6-5.14"),
                                         ("5.15", "5.15-5.16"), ("5.15.0", "5.15-5.16"), ("5.16", "5.15-5.16"),
                                         ("5.17.1", "5.17-6.0"), ("6.0.19", "5.17-6.0"), ("6.3.8", "6.3+")])
def test_mainline_releases_have_no_backports(kernel: str, era: str) -> None:
    assert era_of(kernel).id == era and era_of(kernel).backports == ()


def test_explain_names_the_deciding_backport() -> None:
    exp = explain_host(SKYLAKE.with_kernel("5.10.197"))
    by = {f.name: f for f in exp.features}
    assert not by["vmx-vmfunc"].visible and not by["vmx-shadow-vmcs"].visible
    assert "hidden since 5.10.71, backport of 8d68bad6d869" in by["vmx-shadow-vmcs"].reason
    assert "hidden since 5.10.101, backport of 7a601e2cf615" in by["vmx-exit-save-preemption-timer"].reason
    # already hidden by 5.10's own mainline filter (31de3d2500e4): no backport named
    assert "backport" not in by["vmx-exit-load-perf-global-ctrl"].reason
    exp70 = explain_host(SKYLAKE.with_kernel("5.10.70"))
    assert next(f for f in exp70.features if f.name == "vmx-shadow-vmcs").visible


def test_backport_effects_rebuild_the_mainline_eras() -> None:
    # The data's two descriptions of one change must agree: 5.6-5.14 + 8d68bad6d869 is mainline 5.15's filter,
    # and 5.15 + f80ae0ef089a + 7a601e2cf615 is mainline 5.17's.
    t = era_table()

    def plus(era: str, *commits: str) -> object:
        return rules_by_msr(merge_rules(t.by_id(era).rules, [r for c in commits for r in t.backport(c).effect]))
    assert plus("5.6-5.14", "8d68bad6d869") == rules_by_msr(t.by_id("5.15-5.16").rules)
    assert plus("5.15-5.16", "f80ae0ef089a", "7a601e2cf615") == rules_by_msr(t.by_id("5.17-6.0").rules)
    assert plus("5.6-5.14") != rules_by_msr(t.by_id("5.15-5.16").rules)
