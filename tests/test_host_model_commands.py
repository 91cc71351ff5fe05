"""``--model host`` in admit and compare-designs (issue 16): per host, as migrate-check --model host.

Hand-derived expectations (the same facts as tests/test_model_names.py, which says where they come from):
skylake-5.10 and skylake-6.3 are the same i7-6700K MSRs; era 5.6-5.14 hides from an eVMCS L1 only the
PERF_GLOBAL_CTRL controls and APIC-access virtualization, era 6.3+ (allow-list) additionally the preemption
timer (pin 6), exit save-preemption-timer (exit 22), PLE (2nd 10), VMFUNC (2nd 13), shadow VMCS (2nd 14), PML
(2nd 17) and EPTP switching (VMFUNC 0). A -cpu host guest asks for every feature its host's KVM reports, so its
5.10 view has exactly those 7 more than its 6.3 view. cascadelake-5.4 sanitizes at enable time: -cpu host
writes TRUE_PINBASED 0xff00000016 (allowed-1 0xff of the profile) and KVM refuses it (kvm-evmcs.md §10.3).
skylake-client-6.3 is the i7-6700K again (VirtualBox CPU database) on 6.3.
"""

from __future__ import annotations

from host_helpers import host_profiles
from qemu_evmcs.policy.admit import admit
from qemu_evmcs.policy.designs import compare_designs

FILTER_63_NOT_510 = ["vmx-preemption-timer", "vmx-ple", "vmx-vmfunc", "vmx-shadow-vmcs", "vmx-pml",
                     "vmx-exit-save-preemption-timer", "vmx-eptp-switching"]   # registry (word, bit) order


def test_admit_host_refuses_a_kernel_whose_filter_differs() -> None:
    res = admit(host_profiles("skylake-5.10"), host_profiles("skylake-6.3")[0], "host")
    assert not res.admit
    assert res.cost_features == FILTER_63_NOT_510      # what 5.10 host guests lose on the candidate
    assert "the eVMCS filters of kernels 5.10.46 and 6.3.0 differ" in res.why
    # The custom-model treatment (max) would negotiate the pool and compare that configuration instead: not this.
    assert "-cpu host" in res.why


def test_admit_host_same_cpu_same_kernel_is_admitted() -> None:
    res = admit(host_profiles("skylake-6.3"), host_profiles("skylake-client-6.3")[0], "host")
    assert res.admit and "-cpu host guest sees the same VMX MSRs" in res.reason


def test_admit_host_candidate_where_it_aborts() -> None:
    res = admit(host_profiles("skylake-6.3"), host_profiles("cascadelake-5.4")[0], "host")
    assert not res.admit
    assert "does not start on cascadelake-5.4" in res.why
    assert "error: failed to set MSR 0x48d to 0xff00000016" in res.why


def test_admit_host_pool_where_it_never_starts() -> None:
    res = admit(host_profiles("cascadelake-5.4"), host_profiles("skylake-6.3")[0], "host")
    assert not res.admit and "starts on none of the pool's hosts" in res.why


def test_compare_designs_host_is_judged_per_host() -> None:
    cmp = compare_designs(host_profiles("skylake-5.10", "skylake-6.3"), ["host"])
    assert cmp.notes and "per host" in cmp.notes[0]
    # naive/shipped/revision: 5.10 -> 6.3 loses the 7 controls (unsafe); 6.3 -> 5.10 only gains (fine).
    for d in ("naive", "shipped", "revision"):
        assert cmp.totals[d] == {"fine": 1, "blocked": 0, "unsafe": 1, "source_fails": 0, "wrong": 1}, d
    row = next(r for r in cmp.rows if r.source_group == "skylake-5.10")
    v = row.verdicts["shipped"]
    assert v is not None and {c.feature for c in v.lost} == set(FILTER_63_NOT_510)   # each in both MSR forms
    # vmx-msrs: that design's QEMU refuses a -cpu asking for what the eVMCS L1 cannot see; -cpu host asks for
    # vmx-apicv-xapic, hidden on every era, so it starts on neither host.
    assert cmp.totals["vmx-msrs"]["source_fails"] == 2
