"""The eVMCS filter of every era against hand-computed values (kvm-evmcs.md §2-§4, vmx-dumps.md).

Every expected value below is a literal computed by hand from the masks; the comment shows the arithmetic
on the allowed-1 half (bits 63:32). Hosts: the Skylake dump (vmx-dumps.md Source 1) and a synthetic host
with every filterable bit set (tests/data/core/synthetic-full.yaml).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qemu_evmcs.core.evmcs_filter import filter_all, filter_msr, removals
from qemu_evmcs.core.kernel import era_table
from qemu_evmcs.core.profile import HostProfile, load_profile


CORE = Path(__file__).resolve().parent / "data" / "core"
SKYLAKE = load_profile(str(CORE / "skylake.yaml"))
FULL = load_profile(str(CORE / "synthetic-full.yaml"))

#: MSRs no era ever filters.
NEVER = ["IA32_VMX_BASIC", "IA32_VMX_MISC", "IA32_VMX_CR0_FIXED0", "IA32_VMX_CR0_FIXED1", "IA32_VMX_CR4_FIXED0",
         "IA32_VMX_CR4_FIXED1", "IA32_VMX_VMCS_ENUM", "IA32_VMX_EPT_VPID_CAP", "IA32_VMX_PROCBASED_CTLS3"]


def run(host: HostProfile, era_id: str, perf: bool = False) -> dict[str, int]:
    return filter_all(era_table().by_id(era_id), host.msrs, perf_global_ctrl=perf)


# ---- the worked example of vmx-dumps.md (6.3+, PERF bit clear) ------------------------------------------

def test_worked_example_63() -> None:
    g = run(SKYLAKE, "6.3+")
    assert g["IA32_VMX_PINBASED_CTLS"] == 0x3F00000016        # 0x7f & 0x3f: preemption timer (bit 38) gone
    assert g["IA32_VMX_TRUE_PINBASED_CTLS"] == 0x3F00000016
    assert g["IA32_VMX_PROCBASED_CTLS"] == 0xFFF9FFFE0401E172   # 0xfff9fffe & 0xfff9fffe: unchanged
    assert g["IA32_VMX_TRUE_PROCBASED_CTLS"] == 0xFFF9FFFE04006172
    assert g["IA32_VMX_PROCBASED_CTLS2"] == 0x1998FE00000000    # 0x1ffcff & 0xc51998fe
    assert g["IA32_VMX_EXIT_CTLS"] == 0x1BFEFFF00036DFF         # 0x1ffffff & 0x3bfefff
    assert g["IA32_VMX_TRUE_EXIT_CTLS"] == 0x1BFEFFF00036DFB
    assert g["IA32_VMX_ENTRY_CTLS"] == 0x3D3FF000011FF          # 0x3ffff & 0x7d3ff
    assert g["IA32_VMX_TRUE_ENTRY_CTLS"] == 0x3D3FF000011FB
    assert g["IA32_VMX_VMFUNC"] == 0                            # 0x1 & 0
    for name in NEVER:
        if name in SKYLAKE.msrs:
            assert g[name] == SKYLAKE.msrs[name]


def test_worked_example_removals() -> None:
    era = era_table().by_id("6.3+")
    def causes(msr: str) -> set[tuple[int, str]]:
        return {(r.bit, r.cause) for r in removals(era, msr, SKYLAKE.msrs[msr])}
    got = causes("IA32_VMX_PROCBASED_CTLS2")
    # VAPIC 0, PLE 10, VMFUNC 13, shadow VMCS 14, PML 17, EPT-#VE 18
    assert got == {(0, "evmcs-filter"), (10, "evmcs-filter"), (13, "evmcs-filter"), (14, "evmcs-filter"),
                   (17, "evmcs-filter"), (18, "evmcs-filter")}
    exit_ = causes("IA32_VMX_TRUE_EXIT_CTLS")
    assert exit_ == {(12, "perf-cpuid-gate"), (22, "evmcs-filter")}
    entry = causes("IA32_VMX_ENTRY_CTLS")
    assert entry == {(10, "evmcs-filter"), (11, "evmcs-filter"), (13, "perf-cpuid-gate")}
    assert [(r.bit, r.cause) for r in removals(era, "IA32_VMX_VMFUNC", 1)] == [(0, "evmcs-filter")]
    assert removals(era, "IA32_VMX_BASIC", SKYLAKE.msrs["IA32_VMX_BASIC"]) == []


def test_63_perf_bit_set() -> None:
    g = run(SKYLAKE, "6.3+", perf=True)
    assert g["IA32_VMX_EXIT_CTLS"] == 0x1BFFFFF00036DFF         # 0x1ffffff & 0x3bfffff
    assert g["IA32_VMX_ENTRY_CTLS"] == 0x3F3FF000011FF          # 0x3ffff & 0x7f3ff


def test_63_full_host() -> None:
    g = run(FULL, "6.3+")
    assert g["IA32_VMX_PINBASED_CTLS"] == 0x3F00000016          # 0xff & 0x3f: posted intr + preemption gone
    assert g["IA32_VMX_PROCBASED_CTLS"] == 0xFFF9FFFE0401E172   # 0xfffbfffe & 0xfff9fffe: tertiary (bit 49) gone
    assert g["IA32_VMX_TRUE_PROCBASED_CTLS"] == 0xFFF9FFFE04006172
    assert g["IA32_VMX_PROCBASED_CTLS2"] == 0xC51998FE00000000  # 0xffffffff & 0xc51998fe: TSC scaling gone too
    assert g["IA32_VMX_EXIT_CTLS"] == 0x3BFEFFF00036DFF         # the mask itself
    assert g["IA32_VMX_TRUE_ENTRY_CTLS"] == 0x7D3FF000011FB
    assert g["IA32_VMX_VMFUNC"] == 0x100000000                  # only bits 31:0 masked; bit 32 passes
    assert g["IA32_VMX_PROCBASED_CTLS3"] == 0x10                # 0x492 is never filtered
    p = run(FULL, "6.3+", perf=True)
    assert p["IA32_VMX_TRUE_EXIT_CTLS"] == 0x3BFFFFF00036DFB
    assert p["IA32_VMX_ENTRY_CTLS"] == 0x7F3FF000011FF


# ---- deny-list eras ----------------------------------------------------------------------------------------

SKYLAKE_EXPECTED = {
    # 4.20-5.5 (enable-time, old deny-lists): PIN 0x7f & ~0xc0 = 0x3f (both forms); EXIT 0x1ffffff & ~0x1000;
    # ENTRY 0x3ffff & ~0x2000; 2NDEXEC 0x1ffcff & ~0x02026701 = 0x1d98fe; VMFUNC 0x1 & ~0x1
    "4.20-5.5": {"IA32_VMX_PINBASED_CTLS": 0x3F00000016, "IA32_VMX_TRUE_PINBASED_CTLS": 0x3F00000016,
                 "IA32_VMX_EXIT_CTLS": 0x1FFEFFF00036DFF, "IA32_VMX_TRUE_EXIT_CTLS": 0x1FFEFFF00036DFB,
                 "IA32_VMX_ENTRY_CTLS": 0x3DFFF000011FF, "IA32_VMX_TRUE_ENTRY_CTLS": 0x3DFFF000011FB,
                 "IA32_VMX_PROCBASED_CTLS2": 0x1D98FE00000000, "IA32_VMX_VMFUNC": 0},
    # 5.6-5.14 (31de3d2500e4): only PERF x2 and VAPIC (2NDEXEC 0x1ffcff & ~0x1 = 0x1ffcfe); PIN, VMFUNC untouched
    "5.6-5.14": {"IA32_VMX_PINBASED_CTLS": 0x7F00000016, "IA32_VMX_TRUE_PINBASED_CTLS": 0x7F00000016,
                 "IA32_VMX_EXIT_CTLS": 0x1FFEFFF00036DFF, "IA32_VMX_TRUE_EXIT_CTLS": 0x1FFEFFF00036DFB,
                 "IA32_VMX_ENTRY_CTLS": 0x3DFFF000011FF, "IA32_VMX_TRUE_ENTRY_CTLS": 0x3DFFF000011FB,
                 "IA32_VMX_PROCBASED_CTLS2": 0x1FFCFE00000000, "IA32_VMX_VMFUNC": 0x1},
    # 5.15-5.16: full deny-list, but TRUE_PINBASED forgotten (0x7f stays)
    "5.15-5.16": {"IA32_VMX_PINBASED_CTLS": 0x3F00000016, "IA32_VMX_TRUE_PINBASED_CTLS": 0x7F00000016,
                  "IA32_VMX_EXIT_CTLS": 0x1FFEFFF00036DFF, "IA32_VMX_TRUE_EXIT_CTLS": 0x1FFEFFF00036DFB,
                  "IA32_VMX_ENTRY_CTLS": 0x3DFFF000011FF, "IA32_VMX_TRUE_ENTRY_CTLS": 0x3DFFF000011FB,
                  "IA32_VMX_PROCBASED_CTLS2": 0x1D98FE00000000, "IA32_VMX_VMFUNC": 0},
    # 5.17-6.0: + TRUE_PINBASED, + SAVE_VMX_PREEMPTION_TIMER: EXIT 0x1ffffff & ~(0x1000 | 0x400000) = 0x1bfefff
    "5.17-6.0": {"IA32_VMX_PINBASED_CTLS": 0x3F00000016, "IA32_VMX_TRUE_PINBASED_CTLS": 0x3F00000016,
                 "IA32_VMX_EXIT_CTLS": 0x1BFEFFF00036DFF, "IA32_VMX_TRUE_EXIT_CTLS": 0x1BFEFFF00036DFB,
                 "IA32_VMX_ENTRY_CTLS": 0x3DFFF000011FF, "IA32_VMX_TRUE_ENTRY_CTLS": 0x3DFFF000011FB,
                 "IA32_VMX_PROCBASED_CTLS2": 0x1D98FE00000000, "IA32_VMX_VMFUNC": 0},
    # 6.1-6.2 with the PERF bit clear: same numbers as 5.17-6.0 (PERF now removed by the gate)
    "6.1-6.2": {"IA32_VMX_PINBASED_CTLS": 0x3F00000016, "IA32_VMX_TRUE_PINBASED_CTLS": 0x3F00000016,
                "IA32_VMX_EXIT_CTLS": 0x1BFEFFF00036DFF, "IA32_VMX_TRUE_EXIT_CTLS": 0x1BFEFFF00036DFB,
                "IA32_VMX_ENTRY_CTLS": 0x3DFFF000011FF, "IA32_VMX_TRUE_ENTRY_CTLS": 0x3DFFF000011FB,
                "IA32_VMX_PROCBASED_CTLS2": 0x1D98FE00000000, "IA32_VMX_VMFUNC": 0},
}


@pytest.mark.parametrize("era_id", sorted(SKYLAKE_EXPECTED))
def test_skylake_per_era(era_id: str) -> None:
    g = run(SKYLAKE, era_id)
    for name, value in SKYLAKE_EXPECTED[era_id].items():
        assert g[name] == value, f"{era_id} {name}: {g[name]:#x} != {value:#x}"
    # before 6.3 the primary proc-based controls are never filtered
    assert g["IA32_VMX_PROCBASED_CTLS"] == SKYLAKE.msrs["IA32_VMX_PROCBASED_CTLS"]
    assert g["IA32_VMX_TRUE_PROCBASED_CTLS"] == SKYLAKE.msrs["IA32_VMX_TRUE_PROCBASED_CTLS"]
    for name in NEVER:
        if name in SKYLAKE.msrs:
            assert g[name] == SKYLAKE.msrs[name]


def test_pre_420_filters_nothing() -> None:
    assert run(FULL, "pre-4.20") == dict(FULL.msrs)


def test_61_perf_bit_opens_the_gate() -> None:
    g = run(SKYLAKE, "6.1-6.2", perf=True)
    assert g["IA32_VMX_EXIT_CTLS"] == 0x1BFFFFF00036DFF   # 0x1ffffff & ~0x400000: only SAVE_PREEMPT gone
    assert g["IA32_VMX_ENTRY_CTLS"] == 0x3FFFF000011FF    # entry mask is 0 in 6.1-6.2
    # before 6.1 the perf flag changes nothing: PERF is in the deny-list
    assert run(SKYLAKE, "5.17-6.0", perf=True) == run(SKYLAKE, "5.17-6.0")


FULL_EXPECTED = {
    # all-ones allowed-1 halves show each era's mask directly: 2NDEXEC ~0x02026701 = 0xfdfd98fe
    "4.20-5.5": {"IA32_VMX_TRUE_PINBASED_CTLS": 0x3F00000016, "IA32_VMX_PROCBASED_CTLS2": 0xFDFD98FE00000000,
                 "IA32_VMX_EXIT_CTLS": 0xFFFFEFFF00036DFF, "IA32_VMX_ENTRY_CTLS": 0xFFFFDFFF000011FF,
                 "IA32_VMX_VMFUNC": 0x100000000, "IA32_VMX_PROCBASED_CTLS": 0xFFFBFFFE0401E172},
    "5.6-5.14": {"IA32_VMX_TRUE_PINBASED_CTLS": 0xFF00000016, "IA32_VMX_PROCBASED_CTLS2": 0xFFFFFFFE00000000,
                 "IA32_VMX_EXIT_CTLS": 0xFFFFEFFF00036DFF, "IA32_VMX_ENTRY_CTLS": 0xFFFFDFFF000011FF,
                 "IA32_VMX_VMFUNC": 0x100000001, "IA32_VMX_PROCBASED_CTLS": 0xFFFBFFFE0401E172},
    "5.15-5.16": {"IA32_VMX_TRUE_PINBASED_CTLS": 0xFF00000016, "IA32_VMX_PINBASED_CTLS": 0x3F00000016,
                  "IA32_VMX_PROCBASED_CTLS2": 0xFDFD98FE00000000, "IA32_VMX_EXIT_CTLS": 0xFFFFEFFF00036DFF,
                  "IA32_VMX_ENTRY_CTLS": 0xFFFFDFFF000011FF, "IA32_VMX_VMFUNC": 0x100000000},
    # 5.17: EXIT ~(0x1000 | 0x400000) = 0xffbfefff
    "5.17-6.0": {"IA32_VMX_TRUE_PINBASED_CTLS": 0x3F00000016, "IA32_VMX_PROCBASED_CTLS2": 0xFDFD98FE00000000,
                 "IA32_VMX_TRUE_EXIT_CTLS": 0xFFBFEFFF00036DFB, "IA32_VMX_TRUE_ENTRY_CTLS": 0xFFFFDFFF000011FB,
                 "IA32_VMX_VMFUNC": 0x100000000, "IA32_VMX_TRUE_PROCBASED_CTLS": 0xFFFBFFFE04006172},
    "6.1-6.2": {"IA32_VMX_TRUE_PINBASED_CTLS": 0x3F00000016, "IA32_VMX_PROCBASED_CTLS2": 0xFDFD98FE00000000,
                "IA32_VMX_TRUE_EXIT_CTLS": 0xFFBFEFFF00036DFB, "IA32_VMX_TRUE_ENTRY_CTLS": 0xFFFFDFFF000011FB,
                "IA32_VMX_VMFUNC": 0x100000000, "IA32_VMX_TRUE_PROCBASED_CTLS": 0xFFFBFFFE04006172},
}


@pytest.mark.parametrize("era_id", sorted(FULL_EXPECTED))
def test_full_host_per_era(era_id: str) -> None:
    g = run(FULL, era_id)
    for name, value in FULL_EXPECTED[era_id].items():
        assert g[name] == value, f"{era_id} {name}: {g[name]:#x} != {value:#x}"
    assert g["IA32_VMX_PROCBASED_CTLS3"] == 0x10


def test_61_full_host_perf_on() -> None:
    g = run(FULL, "6.1-6.2", perf=True)
    assert g["IA32_VMX_EXIT_CTLS"] == 0xFFBFFFFF00036DFF   # only SAVE_VMX_PREEMPTION_TIMER (bit 54) gone
    assert g["IA32_VMX_ENTRY_CTLS"] == 0xFFFFFFFF000011FF


def test_every_era_is_covered_here() -> None:
    ids = {e.id for e in era_table().eras}
    assert ids == set(SKYLAKE_EXPECTED) | {"6.3+", "pre-4.20"}


def test_filter_msr_single_values() -> None:
    era = era_table().by_id("6.3+")
    # allowed-0 half untouched even when it has bits outside the mask (bit 6 of a must-be-1 half)
    assert filter_msr(era, "IA32_VMX_PINBASED_CTLS", 0xFF000000FF) == 0x3F000000FF
    assert filter_msr(era, "IA32_VMX_VMFUNC", 0xFFFFFFFFFFFFFFFF) == 0xFFFFFFFF00000000
    assert filter_msr(era, "IA32_VMX_BASIC", 0xFFFFFFFFFFFFFFFF) == 0xFFFFFFFFFFFFFFFF
