"""Golden files were written from the code; these tests check a representative set of them (at least one per
command) against values computed by hand, so a golden file cannot silently enshrine a wrong answer.
tests/golden/README says which ones and how.

Sources of the arithmetic: the i7-6700K dump (vmx-dumps.md Source 1, the skylake-* profiles), the era masks
(kvm-evmcs.md §2-3), QEMU's Skylake-Server-v5 VMX features (qemu.md §2.4) and QEMU's dependency table (kvm.c).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_qemu_features import QEMU_HV_DEPENDENCIES

GOLDEN = Path(__file__).parent / "golden"


def _load(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


def _hexes(msrs: dict[str, str], want: dict[str, int]) -> tuple[dict[str, str], dict[str, str]]:
    """(golden values, hand values) of the MSRs in ``want``, both as hex for a readable diff."""
    return {k: hex(int(msrs[k], 16)) for k in want}, {k: hex(v) for k, v in want.items()}


# --------------------------------------------------------------------------- guest-msrs

#: Bits KVM reports on the i7-6700K that QEMU never writes into a guest's MSRs (issue 13: no QEMU property, not a
#: field QEMU copies from KVM; kvm.c kvm_msr_entry_add_vmx): 2nd 19 (PT conceal), exit 24 and entry 17 (PT
#: conceal), BASIC 49 (dual monitor), MISC 14, 15, 28 (PT in VMX, SMBASE, SMM_MONITOR_CTL).
NO_QEMU_2ND, NO_QEMU_EXIT, NO_QEMU_ENTRY = ~(1 << 19), ~(1 << 24), ~(1 << 17)
NO_QEMU_BASIC, NO_QEMU_MISC = ~(1 << 49), ~(1 << 14 | 1 << 15 | 1 << 28)


def test_guest_msrs_skylake_63() -> None:
    """6.3 allow-lists on the i7-6700K, PV bit clear (vmx-dumps.md's worked example), then what QEMU writes."""
    d = _load("core/guest-msrs--skylake-6.3.json")
    assert (d["era"], d["evmcs"], d["pv_perf_global_ctrl"]) == ("6.3+", True, False)
    got, want = _hexes(d["msrs"], {
        "IA32_VMX_PINBASED_CTLS": (0x7F & 0x3F) << 32 | 0x16,                   # 0x3f00000016
        "IA32_VMX_TRUE_PINBASED_CTLS": (0x7F & 0x3F) << 32 | 0x16,
        "IA32_VMX_PROCBASED_CTLS": (0xFFF9FFFE & 0xFFF9FFFE) << 32 | 0x0401E172,  # unchanged
        "IA32_VMX_PROCBASED_CTLS2": (0x1FFCFF & 0xC51998FE & NO_QEMU_2ND) << 32,  # 0x1198fe00000000
        "IA32_VMX_EXIT_CTLS": (0x1FFFFFF & 0x3BFEFFF & NO_QEMU_EXIT) << 32 | 0x36DFF,  # 0xbfefff00036dff
        "IA32_VMX_TRUE_EXIT_CTLS": (0x1FFFFFF & 0x3BFEFFF & NO_QEMU_EXIT) << 32 | 0x36DFB,
        "IA32_VMX_ENTRY_CTLS": (0x3FFFF & 0x7D3FF & NO_QEMU_ENTRY) << 32 | 0x11FF,  # 0x1d3ff000011ff
        "IA32_VMX_TRUE_ENTRY_CTLS": (0x3FFFF & 0x7D3FF & NO_QEMU_ENTRY) << 32 | 0x11FB,
        "IA32_VMX_VMFUNC": 0x1 & 0,                                               # EPTP switching gone
        "IA32_VMX_BASIC": 0xDA040000000004 & NO_QEMU_BASIC,                       # not filtered; 0xd8040000000004
        "IA32_VMX_MISC": 0x7004C1E7 & NO_QEMU_MISC,                               # not filtered; 0x600401e7
    })
    assert got == want
    assert int(d["host_msrs"]["IA32_VMX_PROCBASED_CTLS2"], 16) == 0x1FFCFF00000000  # the dump itself


def test_guest_msrs_skylake_510() -> None:
    """5.6-5.14 (31de3d2500e4): only VIRTUALIZE_APIC_ACCESSES and the two LOAD_PERF controls are cleared."""
    d = _load("core/guest-msrs--skylake-5.10.json")
    assert d["era"] == "5.6-5.14"
    got, want = _hexes(d["msrs"], {
        "IA32_VMX_TRUE_PINBASED_CTLS": 0x7F00000016,                              # pin-based untouched
        # then what QEMU writes: the 5.10 filter keeps bits that have no QEMU property and that 6.3's allow-lists
        # drop anyway: 2nd 18 (EPT-violation #VE), entry 10 (SMM), 11 (deactivate dual-monitor) -- without them
        # and NO_QEMU_* (2nd 19, exit 24, entry 17)
        "IA32_VMX_PROCBASED_CTLS2": (0x1FFCFF & ~0x1 & ~(1 << 18) & NO_QEMU_2ND) << 32,  # 0x13fcfe00000000
        "IA32_VMX_EXIT_CTLS": (0x1FFFFFF & ~0x1000 & NO_QEMU_EXIT) << 32 | 0x36DFF,      # 0xffefff00036dff
        "IA32_VMX_TRUE_ENTRY_CTLS": (0x3FFFF & ~0x2000 & ~(1 << 10 | 1 << 11) & NO_QEMU_ENTRY) << 32 | 0x11FB,
        # = 0x1d3ff000011fb
        "IA32_VMX_VMFUNC": 0x1,                                                   # VMFUNC untouched
    })
    assert got == want


# --------------------------------------------------------------------------- explain

def test_explain_skylake_63_attributes_the_filtered_bits() -> None:
    # Allowed-1 bits the host has (0x7f / 0x1ffcff / 0x1ffffff / 0x3ffff / 0x1) and 6.3 drops: pin 6; 2nd 0, 10,
    # 13, 14, 17, 18; exit 22; entry 10, 11; vmfunc 0 -- and, PV bit clear, exit 12 + entry 13 by the gate.
    d = _load("core/explain--skylake-6.3.json")
    layers: dict[str, set[str]] = {}
    for f in d["features"]:
        layers.setdefault(str(f["layer"]), set()).add(f["name"])
    assert layers["evmcs-filter"] == {
        "vmx-preemption-timer", "vmx-apicv-xapic", "vmx-ple", "vmx-vmfunc", "vmx-shadow-vmcs", "vmx-pml",
        "vmx-ept-violation-ve", "vmx-exit-save-preemption-timer", "vmx-entry-smm", "vmx-entry-deact-dual-monitor",
        "vmx-eptp-switching"}
    assert layers["perf-cpuid-gate"] == {"vmx-exit-load-perf-global-ctrl", "vmx-entry-load-perf-global-ctrl"}
    # the 7 bits of NO_QEMU_* above: kept by the filter, never written by QEMU (issue 13)
    assert layers["qemu"] == {"vmx-pt-conceal-vmx", "vmx-exit-pt-conceal-pip", "vmx-entry-pt-conceal-pip",
                              "vmx-basic-dual-monitor", "vmx-misc-pt", "vmx-misc-smbase", "vmx-misc-smm-monitor-ctl"}
    assert sum(1 for f in d["features"] if f["visible"]) == 72     # as negotiate --model max (test_feature_counts)
    pin7 = next(f for f in d["features"] if f["name"] == "vmx-posted-intr")
    assert (pin7["visible"], pin7["layer"]) == (False, "kvm")  # 0x7f has no bit 7: the host never offered it


# --------------------------------------------------------------------------- negotiate and compare-designs

# Skylake-Server-v5's VMX features (qemu.md §2.4) that some host of {skylake-5.10, skylake-6.3} hides: 5.10
# hides apicv-xapic and the LOAD_PERF pair; 6.3 hides pin 6, 2nd 0/13/14/17, exit 22, entry/exit PERF (PV bit
# impossible: 5.10 cannot honour it), eptp-switching; the host lacks pin 7 and 2nd 8/9 altogether.
MIXED_OFF = {"vmx-preemption-timer", "vmx-posted-intr", "vmx-apicv-xapic", "vmx-apicv-register", "vmx-apicv-vid",
             "vmx-vmfunc", "vmx-shadow-vmcs", "vmx-pml", "vmx-exit-load-perf-global-ctrl",
             "vmx-exit-save-preemption-timer", "vmx-entry-load-perf-global-ctrl", "vmx-eptp-switching"}


def test_negotiate_mixed_pool() -> None:
    d = _load("negotiate/mixed-pv-cpuid.json")
    assert d["ok"] is True and d["pv_perf_global_ctrl"] is False
    assert set(d["vmx_off"]) == MIXED_OFF
    # hv-emsr-bitmap needs 0x4000000A.EAX bit 19 from KVM, which 5.10 does not report (added in 5.17).
    assert [x["feature"] for x in d["hv_dropped"]] == ["hv-emsr-bitmap"]
    items = d["cpu"].split(",")
    assert items[:2] == ["Skylake-Server-v5", "vmx=on"] and items[-1] == "enforce=on"
    assert {i[1:] for i in items if i.startswith("-")} == MIXED_OFF
    assert {i.split("=")[0] for i in items if i.startswith("hv-")} == {
        "hv-relaxed", "hv-vapic", "hv-time", "hv-vpindex", "hv-synic", "hv-stimer", "hv-evmcs"}


def test_compare_designs_510_to_63() -> None:
    """What a guest started on 5.10 with its own view loses on 6.3: everything 5.10 shows and 6.3 filters, of
    the model's features the host has -- pin 6, exit 22 (both forms), 2nd 13, 14, 17 and VMFUNC 0."""
    d = _load("negotiate/compare-designs.json")
    row = next(r for r in d["rows"] if (r["source"], r["destination"]) == ("skylake-5.10", "skylake-6.3"))
    lost = {(x["msr"], x["bit"]) for x in row["designs"]["shipped"]["lost"]}
    assert row["designs"]["shipped"]["verdict"] == "unsafe"
    assert lost == {("IA32_VMX_PINBASED_CTLS", 6), ("IA32_VMX_TRUE_PINBASED_CTLS", 6),
                    ("IA32_VMX_EXIT_CTLS", 22), ("IA32_VMX_TRUE_EXIT_CTLS", 22),
                    ("IA32_VMX_PROCBASED_CTLS2", 13), ("IA32_VMX_PROCBASED_CTLS2", 14),
                    ("IA32_VMX_PROCBASED_CTLS2", 17), ("IA32_VMX_VMFUNC", 0)}
    # The naive design asks for hv-emsr-bitmap, which 5.10 cannot give: the guest never starts there.
    assert row["designs"]["naive"]["verdict"] == "source-fails"


# --------------------------------------------------------------------------- baseline

def test_baseline_groups() -> None:
    """test_baseline's pool: synthetic hosts with every registry feature, minus what each was built without.
    The model (Skylake-Server-evmcs) only wants features no era filters, so a 6.3 host with everything shows all
    it wants; sky-510-no1g was built without vmx-ept-1gb and vmx-xsaves and shows exactly those two fewer; a host
    with nested=0 starts nothing."""
    d = _load("baseline/skylake-server-evmcs.json")
    groups = {g["name"]: g for g in d["groups"]}
    assert set(groups["sky-63"]["evmcs"]) == set(d["wanted"])
    assert set(d["wanted"]) - set(groups["sky-510-no1g"]["evmcs"]) == {"vmx-ept-1gb", "vmx-xsaves"}
    assert (groups["nested-off"]["starts"], groups["nested-off"]["evmcs"]) == (False, [])
    assert d["not_starting"] == ["nested-off"]


def test_baseline_pool_515_true_pinbased_forgotten() -> None:
    """pool.json, csl-515 (kernel 5.15 = 5.15.0, era 5.15-5.16): 8d68bad6d869 (5.15) filters PINBASED_CTLS on guest
    reads with EVMCS1_UNSUPPORTED_PINCTRL = posted interrupts (bit 7) | preemption timer (bit 6), but TRUE_PINBASED
    only from f80ae0ef089a (5.17, 5.15.24; kvm-evmcs.md §10.3). The host was built with every feature, so the
    L1 reads pin allowed-1 with bits 6-7 in TRUE_PINBASED only: not visible (core.views: set in every MSR of the
    word). KVM reports both (unfiltered view). Regenerated when baseline took core.views' rule: before, it read
    the TRUE form only and listed both as seen."""
    d = _load("baseline/pool.json")
    g = next(g for g in d["groups"] if g["name"] == "csl-515")
    assert g["era"] == "5.15-5.16"
    for feat in ("vmx-posted-intr", "vmx-preemption-timer"):
        assert feat in g["unfiltered"] and feat not in g["evmcs"], feat
    # bit 0 (external-interrupt exiting), 3 (NMI exiting) and 5 (virtual NMIs) are in no deny-list: still seen
    assert {"vmx-intr-exit", "vmx-nmi-exit", "vmx-vnmi"} <= set(g["evmcs"])


# --------------------------------------------------------------------------- validate

def test_validate_dependencies() -> None:
    """tests/data/models/dependencies.yaml: every QEMU Hyper-V dependency its hyperv: block breaks is named
    (QEMU 7.2 kvm.c, as written out in test_qemu_features.QEMU_HV_DEPENDENCIES)."""
    d = _load("validate/dependencies.json")
    model = Path(__file__).parent / "data" / "models" / "dependencies.yaml"
    text = model.read_text()
    messages = " ".join(str(x["message"]) for f in d["files"] for x in f["findings"])
    for flag, deps in QEMU_HV_DEPENDENCIES.items():
        if f"{flag}: on" in text:
            for dep in deps:
                if f"{dep}: on" not in text:
                    assert flag in messages and dep in messages, (flag, dep)
    # vmx-xsaves: on with xsaves: off -- QEMU's feature_dependencies[] drops it (qemu.md §2; run on the real QEMU
    # in test_qemu_features).
    xsaves = [str(x["message"]) for f in d["files"] for x in f["findings"] if "vmx-xsaves" in str(x["message"])]
    assert any("xsaves" in m.replace("vmx-xsaves", "") for m in xsaves), xsaves


def test_validate_enable_time_eras_abort() -> None:
    """dependencies.json, vmx-posted-intr (from base Skylake-Server-v5): on 4.20-5.5 (and 5.4.y's
    4.20-5.5+7a601e2cf615) nested_enable_evmcs() clears EVMCS1_UNSUPPORTED_PINCTRL = posted-intr | preemption
    timer from the vCPU's pin controls when eVMCS is enabled (kvm-evmcs.md §4.2); QEMU then writes TRUE_PINBASED
    with bit 7 set and KVM_SET_MSRS refuses it: QEMU aborts (§10.3, 'failed to set MSR 0x48d'). So those eras are
    named as an abort, not as a hidden feature; from 5.17 (f80ae0ef089a) the read-time filter hides it."""
    d = _load("validate/dependencies.json")
    msg = next(str(x["message"]) for f in d["files"] for x in f["findings"]
               if str(x["message"]).startswith("vmx-posted-intr "))
    assert "4.20-5.5, 4.20-5.5+7a601e2cf615 (enable-time eVMCS filter: QEMU aborts, 'failed to set MSR')" in msg
    assert "5.17-6.0, 6.1-6.2, 6.3+ (eVMCS filter)" in msg
