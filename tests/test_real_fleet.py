"""Every pair and triple of the bundled real-CPU profiles, at distribution-era kernels, negotiates or says which
layer makes a guest impossible; and what it keeps is what every host's guest can see (issue 12).

The independent expectation: the features of a pool are the intersection of what each host alone negotiates,
minus at most the PERF_GLOBAL_CTRL pair (its CPUID gate is set only when every host honours it, so a pre-6.1
host hides it from the whole pool). Nothing else may be lost by pooling, and nothing may be kept that one host
alone cannot have.
"""

from __future__ import annotations

import itertools
import os

import pytest

from qemu_evmcs.core.profile import bundled_fleet_dir, load_profile
from qemu_evmcs.policy.negotiate import PERF_FEATURES, negotiate

MODEL = "Skylake-Server-evmcs"
REAL = sorted(n[:-5] for n in os.listdir(bundled_fleet_dir()) if n.endswith(".yaml"))
#: One kernel per eVMCS era a distribution shipped: Debian 10 (no eVMCS), Ubuntu 20.04 (enable-time filter),
#: Debian 11 (read-time deny-list), Ubuntu 22.04 GA (5.15.30: both 5.17 fixes), Debian 12, a 6.3+ kernel.
KERNELS = ("4.19.0", "5.4.0", "5.10.0", "5.15.30", "6.1.55", "6.8.0")
#: The precise reasons a pool may have no answer: a layer, named.
LAYER_REASONS = ("predates KVM_CAP_HYPERV_ENLIGHTENED_VMCS", "Hyper-V as L1 needs", "kvm_intel.nested=0",
                 "failed to set MSR")


def _profile(name: str, kernel: str):  # type: ignore[no-untyped-def]
    return load_profile(os.path.join(bundled_fleet_dir(), name + ".yaml")).with_kernel(kernel)


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


#: Every real profile names its public source (VirtualBox's CPU database, or honorarybot/VmxCaps's table) in its
#: provenance; the generations the bundled set must cover (issue 12), by profile.
SOURCES = ("VirtualBox/virtualbox:", "honorarybot/VmxCaps:")
GENERATIONS = {"westmere-5.4", "sandybridge-5.4", "sandybridge-e-5.15", "ivybridge-5.10", "haswell-5.15",
               "broadwell-6.1", "skylake-client-6.3"}


def test_the_real_fleet_covers_seven_generations() -> None:
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


@pytest.mark.parametrize("triple", list(itertools.combinations(REAL, 3)), ids="+".join)
def test_every_triple(triple: tuple[str, str, str]) -> None:
    for i, k in enumerate(KERNELS):
        _check([(n, k) for n in triple])                                          # one kernel everywhere
        _check([(n, KERNELS[(i + j) % len(KERNELS)]) for j, n in enumerate(triple)])   # mixed kernels


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
