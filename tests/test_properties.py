"""Properties of the eVMCS filter and the guest view over random valid host profiles and every era.

Profiles are generated consistent the way the SDM requires (and profile validation checks): for control MSRs
allowed-0 is within allowed-1, the TRUE_ and non-TRUE forms share allowed-1, and the non-TRUE allowed-0 half is
the TRUE one plus the word's default1 (ALWAYSON) bits.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qemu_evmcs.core.evmcs_filter import filter_all
from qemu_evmcs.policy.explain import explain_host
from qemu_evmcs.qemu.attribution import LAYERS
from qemu_evmcs.core.kernel import era_table
from qemu_evmcs.core.msrval import feature_present, hex64
from qemu_evmcs.core.profile import HostProfile, profile_from_mapping
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


@SETTINGS
@given(profiles(), st.booleans(), st.booleans())
def test_explain_agrees_with_the_guest_view(p: HostProfile, perf: bool, evmcs: bool) -> None:
    exp = explain_host(p, evmcs=evmcs, pv_perf_global_ctrl=perf)
    g = guest_view(p, evmcs=evmcs, pv_perf_global_ctrl=perf)
    assert [m.name for m in exp.msrs] == [n for n in REG.msr_names() if n in p.msrs]
    for fe in exp.features:
        feat = REG.features[fe.name]
        assert fe.visible == (fe.msr in g and feature_present(feat, g, REG)), fe
        assert (fe.layer is None) == fe.visible
        assert fe.layer is None or fe.layer in LAYERS
        if not evmcs:
            assert fe.layer not in ("evmcs-filter", "perf-cpuid-gate")
        if not perf and not evmcs:
            assert fe.layer != "perf-cpuid-gate"
    for view in exp.msrs:
        if view.emulated:
            assert view.guest == g[view.name]
