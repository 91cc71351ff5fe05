"""Properties of the eVMCS filter and the guest view over random valid host profiles and every era.

Profiles are generated consistent the way the SDM requires (and profile validation checks): for control MSRs
allowed-0 is within allowed-1, the TRUE_ and non-TRUE forms share allowed-1, and the non-TRUE allowed-0 half is
the TRUE one plus the word's default1 (ALWAYSON) bits.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qemu_evmcs.core.evmcs_filter import filter_all
from qemu_evmcs.policy.explain import explain_host
from qemu_evmcs.core.kernel import era_table
from qemu_evmcs.core.msrval import hex64
from qemu_evmcs.core.profile import HostProfile, bundled_profile_dir, load_profile, profile_from_mapping
from qemu_evmcs.core.registry import MASK32, MASK64, registry
from qemu_evmcs.kvm.simkvm import NOT_EMULATED_MSRS, HvCpuid, SimKvm, guest_view


REG = registry()
U32 = st.integers(0, MASK32)
U64 = st.integers(0, MASK64)
#: First and last release of every era that has the capability (plus a late 6.x).
RELEASES = sorted({str(v) for e in era_table().eras if e.evmcs_cap for v in (e.first, e.last) if v is not None}
                  | {"6.13"})
#: kvm-evmcs.md §2 allow-list constants (6.3+), allowed-1 half, PERF bit set / clear.
MASKS_63 = {
    "pinbased": (0x3F, 0x3F), "procbased": (0xFFF9FFFE, 0xFFF9FFFE), "secondary": (0xC51998FE, 0xC51998FE),
    "exit": (0x03BFFFFF, 0x03BFEFFF), "entry": (0x0007F3FF, 0x0007D3FF),
}


@st.composite
def profiles(draw: Any) -> HostProfile:
    msrs: dict[str, str] = {}
    for msr in REG.msrs.values():
        if msr.true:  # a non-TRUE control MSR and its TRUE twin
            ao = REG.words[msr.word or ""].always_on
            a1 = draw(U32) | ao
            true_lo = draw(U32) & a1
            msrs[msr.true] = hex64(true_lo | a1 << 32)
            msrs[msr.name] = hex64(true_lo | ao | a1 << 32)
        elif msr.layout == "ctl" and not msr.is_true_form:  # PROCBASED_CTLS2
            a1 = draw(U32)
            msrs[msr.name] = hex64((draw(U32) & a1) | a1 << 32)
        elif not msr.is_true_form:
            msrs[msr.name] = hex64(draw(U64))
    # The TRUE twins are always generated, and KVM reports them only with IA32_VMX_BASIC bit 55 set.
    msrs["IA32_VMX_BASIC"] = hex64(int(msrs["IA32_VMX_BASIC"], 16) | 1 << 55)
    dropped = draw(st.sets(st.sampled_from(sorted(msrs)), max_size=3))
    data = {"name": "random", "vendor": "GenuineIntel", "kernel": draw(st.sampled_from(RELEASES)),
            "msrs": {k: v for k, v in msrs.items() if k not in dropped}}
    return profile_from_mapping(data)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(profiles(), st.booleans())
def test_guest_view_is_a_subset_and_keeps_allowed0(p: HostProfile, perf: bool) -> None:
    g = guest_view(p, pv_perf_global_ctrl=perf)
    for name, value in g.items():
        host = p.msrs[name]
        assert value & ~host == 0, name  # bitwise subset
        if REG.msrs[name].layout == "ctl":
            assert value & MASK32 == host & MASK32, name  # allowed-0 half untouched
        elif REG.msrs[name].layout in ("info", "fixed"):
            assert value == host, name


@SETTINGS
@given(profiles(), st.booleans())
def test_filter_is_idempotent(p: HostProfile, perf: bool) -> None:
    for era in era_table().eras:
        once = filter_all(era, p.msrs, perf_global_ctrl=perf)
        assert filter_all(era, once, perf_global_ctrl=perf) == once


@SETTINGS
@given(profiles())
def test_perf_bit_on_is_a_superset_of_off(p: HostProfile) -> None:
    on, off = guest_view(p, pv_perf_global_ctrl=True), guest_view(p, pv_perf_global_ctrl=False)
    assert on.keys() == off.keys()
    for name in on:
        assert off[name] & ~on[name] == 0, name
    if not SimKvm(p).honours_perf_cpuid_bit():
        assert on == off


@SETTINGS
@given(profiles(), st.booleans())
def test_63_guest_view_within_the_allow_lists(p: HostProfile, perf: bool) -> None:
    p63 = p.with_kernel("6.3")
    g = guest_view(p63, pv_perf_global_ctrl=perf)
    for name, value in g.items():
        msr = REG.msrs[name]
        if msr.word in MASKS_63:
            mask = MASKS_63[msr.word][0 if perf else 1]
            assert (value >> 32) & ~mask == 0, name
    if "IA32_VMX_VMFUNC" in g:
        assert g["IA32_VMX_VMFUNC"] & MASK32 == 0


@SETTINGS
@given(profiles())
def test_host_reads_unfiltered_from_57(p: HostProfile) -> None:
    kvm = SimKvm(p)
    v = kvm.create_vcpu()
    v.set_hv_cpuid(HvCpuid(hyperv_enabled=True))
    v.enable_evmcs()
    if kvm.era.filter_at == "read":
        for name in v.msrs:
            if name in NOT_EMULATED_MSRS:
                continue
            assert v.get_msr(name, host_initiated=True) == p.msrs[name]


# explain on the real i7-6700K dump (skylake-6.3 profile = vmx-dumps.md Source 1) against that file's worked
# example, computed by hand from the 6.3 allow-lists (PIN 0x3f, 2NDEXEC 0xc51998fe, EXIT 0x3bfefff / 0x3bfffff
# with the PV bit, ENTRY 0x7d3ff / 0x7f3ff, VMFUNC 0). Was: explain compared with guest_view, from which explain
# itself is computed.
#   0x481/0x48d 0x7f00000016       & 0x3f       -> 0x3f00000016         (pin 6 preemption timer)
#   0x48b       0x1ffcff00000000   & 0xc51998fe -> 0x1998fe00000000     (2nd 0, 10, 13, 14, 17, 18)
#   0x483       0x1ffffff00036dff  & 0x3bfefff  -> 0x1bfefff00036dff    (exit 12 PERF gate, 22)
#   0x484       0x3ffff000011ff    & 0x7d3ff    -> 0x3d3ff000011ff      (entry 10, 11; 13 PERF gate)
#   0x491       0x1                & 0          -> 0                    (EPTP switching)
#   with the PV bit: exit 0x1ffffff & 0x3bfffff = 0x1bfffff, entry 0x3ffff & 0x7f3ff = 0x3f3ff
# Then what QEMU writes (issue 13, one rule of what a guest can be given): no QEMU property for 2nd 19, exit 24,
# entry 17 (the PT-conceal controls), so a -cpu host guest reads them clear:
#   0x1998fe & ~0x80000 = 0x1198fe; exit 0x1bfefff & ~0x1000000 = 0xbfefff (PV: 0xbfffff);
#   entry 0x3d3ff & ~0x20000 = 0x1d3ff (PV: 0x1f3ff)
QEMU_NEVER_WRITES = {"vmx-pt-conceal-vmx", "vmx-exit-pt-conceal-pip", "vmx-entry-pt-conceal-pip",
                     "vmx-basic-dual-monitor", "vmx-misc-pt", "vmx-misc-smbase", "vmx-misc-smm-monitor-ctl"}
SKYLAKE_63_FILTERED = {"vmx-preemption-timer", "vmx-apicv-xapic", "vmx-ple", "vmx-vmfunc", "vmx-shadow-vmcs",
                       "vmx-pml", "vmx-ept-violation-ve", "vmx-exit-save-preemption-timer", "vmx-entry-smm",
                       "vmx-entry-deact-dual-monitor", "vmx-eptp-switching"}
PERF_GATED = {"vmx-exit-load-perf-global-ctrl", "vmx-entry-load-perf-global-ctrl"}


@pytest.mark.parametrize("perf", [False, True])
def test_explain_matches_the_worked_example(perf: bool) -> None:
    exp = explain_host(load_profile(os.path.join(bundled_profile_dir(), "skylake-6.3.yaml")), evmcs=True,
                       pv_perf_global_ctrl=perf)
    guest = {m.name: m.guest for m in exp.msrs if m.emulated}
    exit_hi, entry_hi = (0x0BFFFFF, 0x1F3FF) if perf else (0x0BFEFFF, 0x1D3FF)
    names = ("IA32_VMX_PINBASED_CTLS", "IA32_VMX_TRUE_PINBASED_CTLS", "IA32_VMX_PROCBASED_CTLS2",
             "IA32_VMX_EXIT_CTLS", "IA32_VMX_ENTRY_CTLS", "IA32_VMX_VMFUNC")
    assert {k: hex(guest[k]) for k in names} == {
        "IA32_VMX_PINBASED_CTLS": hex(0x3F00000016),
        "IA32_VMX_TRUE_PINBASED_CTLS": hex(0x3F00000016),
        "IA32_VMX_PROCBASED_CTLS2": hex(0x1FFCFF00000000 & (0xC51998FE << 32) & ~(1 << (19 + 32))),
        "IA32_VMX_EXIT_CTLS": hex(exit_hi << 32 | 0x36DFF),
        "IA32_VMX_ENTRY_CTLS": hex(entry_hi << 32 | 0x11FF),
        "IA32_VMX_VMFUNC": hex(0),
    }
    by_layer: dict[str, set[str]] = {}
    for fe in exp.features:
        assert (fe.layer is None) == fe.visible, fe
        if fe.layer is not None:
            by_layer.setdefault(fe.layer, set()).add(fe.name)
    assert by_layer["evmcs-filter"] == SKYLAKE_63_FILTERED
    assert by_layer.get("perf-cpuid-gate", set()) == (set() if perf else PERF_GATED)
    assert by_layer["qemu"] == QEMU_NEVER_WRITES
    visible = {fe.name for fe in exp.features if fe.visible}
    assert not visible & (SKYLAKE_63_FILTERED | (set() if perf else PERF_GATED))
    assert (PERF_GATED <= visible) == perf
