"""Every pair and triple of the bundled real-CPU profiles, at distribution-era kernels, negotiates or says which
layer makes a guest impossible; and what it keeps is what every host's guest can see (issue 12).

Cost: every pair runs at every era pairing below; every triple runs twice (all hosts at one era, and three
different eras), the era rotating with the triple's index so that all eras are exercised across the triples.
Ten profiles make 120 triples: the twelve era assignments per triple the seven-profile set afforded would
triple this file's run time (the suite must stay cheap).

The independent expectation: the features of a pool are the intersection of what each host alone negotiates,
minus at most the PERF_GLOBAL_CTRL pair (its CPUID gate is set only when every host honours it, so a pre-6.1
host hides it from the whole pool). Nothing else may be lost by pooling, and nothing may be kept that one host
alone cannot have.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os

import pytest

from qemu_evmcs.core.profile import bundled_fleet_dir, load_profile
from qemu_evmcs.kvm.simkvm import guest_view
from qemu_evmcs.policy.negotiate import PERF_FEATURES, negotiate

MODEL = "Skylake-Server-evmcs"
REAL = sorted(n[:-5] for n in os.listdir(bundled_fleet_dir()) if n.endswith(".yaml"))
#: One kernel per eVMCS era a distribution shipped: Debian 10 (no eVMCS), Ubuntu 20.04 (enable-time filter),
#: Debian 11 (read-time deny-list), Ubuntu 22.04 GA (5.15.30: both 5.17 fixes), Debian 12, a 6.3+ kernel.
KERNELS = ("4.19.0", "5.4.0", "5.10.0", "5.15.30", "6.1.55", "6.8.0")
#: The precise reasons a pool may have no answer: a layer, named.
LAYER_REASONS = ("predates KVM_CAP_HYPERV_ENLIGHTENED_VMCS", "Hyper-V as L1 needs", "kvm_intel.nested=0",
                 "failed to set MSR")


@functools.cache
def _profile(name: str, kernel: str):  # type: ignore[no-untyped-def]
    # Profiles are frozen values: loading each (name, kernel) once keeps the YAML parsing out of the matrix.
    # This matrix is about the VMX layers, with one base model for every pool; the base model's CPUID (which
    # Skylake-Server-v5 fails on every CPU here but the Xeon W's, for AVX-512 or pku) is tested per real pool
    # in test_real_cpuid.py, so the profiles' cpu_features are left out here.
    p = load_profile(os.path.join(bundled_fleet_dir(), name + ".yaml")).with_kernel(kernel)
    return dataclasses.replace(p, cpu_features=None)


_SINGLE: dict[tuple[str, str], frozenset[str] | None] = {}


def _alone(name: str, kernel: str) -> frozenset[str] | None:
    key = (name, kernel)
    if key not in _SINGLE:
        neg = negotiate(MODEL, [_profile(name, kernel)])
        _SINGLE[key] = neg.guest_features if neg.ok else None
    return _SINGLE[key]


def _check(pool: list[tuple[str, str]]) -> None:
    neg = negotiate(MODEL, [_profile(n, k) for n, k in pool])
    singles = [_alone(n, k) for n, k in pool]
    if not neg.ok:
        assert "bit -1" not in neg.error and "no -cpu option controls" not in neg.error, (pool, neg.error)
        assert any(r in neg.error for r in LAYER_REASONS), (pool, neg.error)
        # A pool fails only where a host fails alone, or where the pool's intersection drops what Hyper-V needs.
        return
    assert all(s is not None for s in singles), pool
    common = frozenset.intersection(*[s for s in singles if s is not None])
    assert neg.guest_features <= common, (pool, sorted(neg.guest_features - common))
    assert common - neg.guest_features <= set(PERF_FEATURES), (pool, sorted(common - neg.guest_features))


#: Every real profile names its public source (VirtualBox's CPU database, honorarybot/VmxCaps's table, or an
#: InstLatx64 AIDA64 dump) in its provenance; the generations the bundled set must cover (issue 12), by profile:
#: Skylake server core = skylake-x (i9-7900X), Cascade Lake = cascadelake-w (Xeon W-3275), Ice Lake = icelake-u.
SOURCES = ("VirtualBox/virtualbox:", "honorarybot/VmxCaps:", "InstLatx64/InstLatx64:")
GENERATIONS = {"westmere-5.4", "sandybridge-5.4", "sandybridge-e-5.15", "ivybridge-5.10", "haswell-5.15",
               "broadwell-6.1", "skylake-client-6.3", "skylake-x-5.15", "cascadelake-w-6.8", "icelake-u-6.1"}


def test_the_real_fleet_covers_the_issue_generations() -> None:
    assert GENERATIONS <= set(REAL)
    for name in REAL:
        p = load_profile(os.path.join(bundled_fleet_dir(), name + ".yaml"))
        assert not p.synthetic and p.provenance and any(s in p.provenance for s in SOURCES), name


#: Kernel pairs: each era with itself, with the next one (an upgrade in progress) and the oldest with the newest.
KERNEL_PAIRS = ([(k, k) for k in KERNELS] + list(itertools.pairwise(KERNELS)) + [(KERNELS[1], KERNELS[-1])]
                + [(KERNELS[-1], KERNELS[1])])


@pytest.mark.parametrize("pair", list(itertools.combinations(REAL, 2)), ids="+".join)
def test_every_pair(pair: tuple[str, str]) -> None:
    for ka, kb in KERNEL_PAIRS:
        _check([(pair[0], ka), (pair[1], kb)])


TRIPLES = list(itertools.combinations(REAL, 3))


@pytest.mark.parametrize("triple", TRIPLES, ids="+".join)
def test_every_triple(triple: tuple[str, str, str]) -> None:
    i = TRIPLES.index(triple)
    _check([(n, KERNELS[i % len(KERNELS)]) for n in triple])                          # one kernel everywhere
    _check([(n, KERNELS[(i + 1 + j) % len(KERNELS)]) for j, n in enumerate(triple)])  # three different eras


def test_no_ept_is_named_as_the_layer() -> None:
    # Hyper-V as L1 needs EPT (the model's required set): a CPU whose secondary controls lack EPT cannot host it.
    # Ivy Bridge with PROCBASED_CTLS2 allowed-1 0x8ff minus bit 1 (EPT) = 0x8fd.
    ivb = _profile("ivybridge-5.10", "6.1.55")
    msrs = dict(ivb.msrs, IA32_VMX_PROCBASED_CTLS2=0x8fd00000000)
    no_ept = type(ivb)(**{**ivb.__dict__, "msrs": msrs, "name": "ivb-no-ept"})
    neg = negotiate(MODEL, [no_ept, _profile("broadwell-6.1", "6.1.55")])
    assert not neg.ok
    assert "vmx-ept" in neg.error and "Hyper-V as L1 needs" in neg.error


def test_haswell_is_partial_because_its_source_lacks_vmfunc() -> None:
    # VmxCaps's table has no IA32_VMX_VMFUNC row, but the i5-4600U enumerates VM functions: PROCBASED_CTLS2
    # allowed-1 is 0x7cff, and 0x7cff & (1 << 13) = 0x2000. So 0x491 is recorded unknown, never guessed, and
    # every pool answer with that host says so.
    hsw = _profile("haswell-5.15", "6.1.55")
    assert hsw.unknown_msrs == ("IA32_VMX_VMFUNC",) and "IA32_VMX_VMFUNC" not in hsw.msrs
    assert (hsw.msrs["IA32_VMX_PROCBASED_CTLS2"] >> 32) & (1 << 13)
    neg = negotiate(MODEL, [hsw, _profile("broadwell-6.1", "6.1.55")])
    assert neg.ok and any("haswell-5.15" in n and "IA32_VMX_VMFUNC unknown" in n for n in neg.notes), neg.notes


# --------------------------------------------------------------------------- the InstLatx64 (AIDA64) profiles
# Raw allowed-1 halves transcribed in the profiles (InstLatx64 AIDA64 dumps, MSR 0x48B / 0x481 / 0x483 / 0x484):
#   skylake-x (i9-7900X)      2nd 0x025d3fff  pin 0xff  exit 0x01ffffff  entry 0x0003ffff
#   cascadelake-w (W-3275)    2nd 0x025f7fff  pin 0xff  exit 0x01ffffff  entry 0x0003ffff
#   icelake-u (i7-1065G7)     2nd 0x335fbfff  pin 0xff  exit 0x037fffff  entry 0x0006ffff
# Linux masks (kvm-evmcs.md §2-3): 6.3+ allow-lists, PV PERF bit clear: pin 0x3f, 2nd (EVMCSv1_LEGACY row)
# 0xc51998fe, exit 0x03bfefff, entry 0x0007d3ff. 5.15.30 deny-lists: 2nd &= ~0x02026701, pin &= ~0xc0, exit &=
# ~(0x1000 | 0x400000), entry &= ~0x2000. 5.10 (5.6-5.14 era): 2nd &= ~0x1, exit &= ~0x1000, entry &= ~0x2000.
AIDA_RAW = {"skylake-x-5.15": (0x025D3FFF, 0xFF, 0x01FFFFFF, 0x0003FFFF),
            "cascadelake-w-6.8": (0x025F7FFF, 0xFF, 0x01FFFFFF, 0x0003FFFF),
            "icelake-u-6.1": (0x335FBFFF, 0xFF, 0x037FFFFF, 0x0006FFFF)}
AIDA_GUEST = {
    # 6.8: 0x025d3fff & 0xc51998fe = bits 1-7, 11, 12, 16, 19, 20 = 0x1918fe (shadow VMCS and PML are absent
    # on this part anyway); exit 0x01ffffff & 0x03bfefff = 0x01bfefff; entry 0x3ffff & 0x7d3ff = 0x3d3ff.
    ("skylake-x-5.15", "6.8.0"): (0x001918FE, 0x3F, 0x01BFEFFF, 0x0003D3FF),
    # Cascade Lake adds bits 14 (shadow VMCS) and 17 (PML); both are outside 0xc51998fe: the same 0x1918fe.
    ("cascadelake-w-6.8", "6.8.0"): (0x001918FE, 0x3F, 0x01BFEFFF, 0x0003D3FF),
    # 0x335fbfff & 0xc51998fe = 0x1918fe | bit 15 (ENCLS exiting) | bit 24 (PT uses GPA) = 0x011998fe;
    # exit 0x037fffff & 0x03bfefff = 0x033fefff; entry 0x6ffff & 0x7d3ff = 0x6d3ff.
    ("icelake-u-6.1", "6.8.0"): (0x011998FE, 0x3F, 0x033FEFFF, 0x0006D3FF),
    # 5.15.30: 0x025d3fff & ~0x02026701 = 0x005d18fe (bits 22 mode-based EPT and 18 EPT-#VE pass the deny-list);
    # pin 0xff & ~0xc0 = 0x3f; exit 0x01ffffff & ~0x401000 = 0x01bfefff; entry 0x3ffff & ~0x2000 = 0x3dfff.
    ("skylake-x-5.15", "5.15.30"): (0x005D18FE, 0x3F, 0x01BFEFFF, 0x0003DFFF),
    # 0x335fbfff & ~0x02026701 = 0x315d98fe (TSC scaling, bit 25, is on the old deny-list; ENCLV, bit 28, is not).
    ("icelake-u-6.1", "5.15.30"): (0x315D98FE, 0x3F, 0x033FEFFF, 0x0006DFFF),
    # 5.10: 0x025f7fff & ~0x1 = 0x025f7ffe, the rest of the secondary controls untouched; pin untouched.
    ("cascadelake-w-6.8", "5.10.0"): (0x025F7FFE, 0xFF, 0x01FFEFFF, 0x0003DFFF),
}


@pytest.mark.parametrize("case", sorted(AIDA_GUEST), ids="@".join)
def test_aida_profiles_guest_view_by_hand(case: tuple[str, str]) -> None:
    name, kernel = case
    raw = _profile(name, kernel).msrs
    r2nd, rpin, rexit, rentry = AIDA_RAW[name]
    assert (raw["IA32_VMX_PROCBASED_CTLS2"] >> 32, raw["IA32_VMX_TRUE_PINBASED_CTLS"] >> 32,
            raw["IA32_VMX_TRUE_EXIT_CTLS"] >> 32, raw["IA32_VMX_TRUE_ENTRY_CTLS"] >> 32) == (r2nd, rpin, rexit, rentry)
    got = guest_view(_profile(name, kernel))
    g2nd, gpin, gexit, gentry = AIDA_GUEST[case]
    assert hex(got["IA32_VMX_PROCBASED_CTLS2"]) == hex(g2nd << 32)
    assert hex(got["IA32_VMX_TRUE_PINBASED_CTLS"]) == hex(gpin << 32 | 0x16)
    assert hex(got["IA32_VMX_TRUE_EXIT_CTLS"]) == hex(gexit << 32 | 0x36DFB)
    assert hex(got["IA32_VMX_TRUE_ENTRY_CTLS"]) == hex(gentry << 32 | 0x11FB)
    assert "IA32_VMX_VMFUNC" not in got          # unknown (AIDA64 stops at 0x490), never invented


def test_aida_server_and_client_cores_pool_by_hand() -> None:
    # All three at 6.8: the secondary controls every guest can see, 0x1918fe & 0x1918fe & 0x011998fe = 0x1918fe,
    # restricted to Skylake-Server-v5's named secondary bits (qemu.md §2.4: 0-9, 11-14, 16, 17, 20 = 0x137bff):
    # 0x1918fe & 0x137bff = bits 1-7, 11, 12, 16, 20 = 0x1118fe (PT-conceal, bit 19, is not in the model).
    # Pin: 0x3f & the model's 0xff = 0x3f. Each host is partial (VMFUNC unknown) and the answer says so.
    pool = [_profile(n, "6.8.0") for n in ("skylake-x-5.15", "cascadelake-w-6.8", "icelake-u-6.1")]
    neg = negotiate(MODEL, pool)
    assert neg.ok, neg.error
    assert hex(neg.guest_msrs["IA32_VMX_PROCBASED_CTLS2"]) == hex(0x1118FE << 32)
    assert hex(neg.guest_msrs["IA32_VMX_TRUE_PINBASED_CTLS"]) == hex(0x3F << 32 | 0x16)
    for n in ("skylake-x-5.15", "cascadelake-w-6.8", "icelake-u-6.1"):
        assert any(f"host {n}: IA32_VMX_VMFUNC unknown" in note for note in neg.notes), (n, neg.notes)


def test_skylake_x_dump_lacks_shadow_vmcs_and_pml() -> None:
    # A server core without VMCS shadowing (bit 14) and PML (bit 17) looks like a dump taken under a hypervisor;
    # this one was not (CPUID.1:ECX bit 31 clear in the dump, see the provenance), and honorarybot/VmxCaps's
    # i9-9980XE column shows the same: 0x025d3fff & (1 << 14 | 1 << 17) = 0. Cascade Lake's Xeon W has both.
    sk, cl = (_profile(n, "6.1.55").msrs["IA32_VMX_PROCBASED_CTLS2"] >> 32 for n in ("skylake-x-5.15",
                                                                                      "cascadelake-w-6.8"))
    assert sk & (1 << 14 | 1 << 17) == 0 and cl & (1 << 14 | 1 << 17) == 1 << 14 | 1 << 17
    assert "hypervisor present" in (_profile("skylake-x-5.15", "6.1.55").provenance or "")
