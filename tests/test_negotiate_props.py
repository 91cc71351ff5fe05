"""Property tests: what a negotiated configuration shows the guest, against an independent bit-level oracle.

The old property ("it starts everywhere, with identical views") is the check the negotiator runs itself
before it says ok. Here the guest's pin-based, secondary and VM-entry MSRs on the two Skylake hosts are
recomputed from first principles for any model: QEMU's make_vmx_msr_value over the model's bits that the
host has and neither era filters, with the constants written out below.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from host_helpers import host_profiles
from qemu_evmcs.policy.negotiate import (
    STRATEGIES,
    GuestModel,
    max_model,
    negotiate,
    qemu_property_features,
    start_guest,
)
from qemu_evmcs.core.profile import bundled_profile_dir
from qemu_evmcs.core.registry import registry

CAPABLE = [h for h in host_profiles(bundled_profile_dir()) if h.is_intel and h.nested]
FEATURES = sorted(qemu_property_features())


# i7-6700K allowed-1 halves (vmx-dumps.md Source 1; the skylake-5.10 and skylake-6.3 profiles), what each era
# lets an eVMCS guest see (kvm-evmcs.md §2-3: 5.10 = 5.6-5.14 clears only VIRTUALIZE_APIC_ACCESSES and the two
# LOAD_PERF controls; 6.3 = allow-lists, PERF without the PV bit, which a 5.10 host cannot honour), and QEMU's
# default1 bits (qemu.md §2.2: PIN 0x16, CTLS2 0, ENTRY 0x11ff).
#            word        MSR                           host      5.10 keeps      6.3 keeps    default1
ORACLE = [("pinbased", "IA32_VMX_TRUE_PINBASED_CTLS", 0x7F, 0xFFFFFFFF, 0x3F, 0x16),
          ("secondary", "IA32_VMX_PROCBASED_CTLS2", 0x1FFCFF, 0xFFFFFFFF & ~0x1, 0xC51998FE, 0x0),
          ("entry", "IA32_VMX_TRUE_ENTRY_CTLS", 0x3FFFF, 0xFFFFFFFF & ~0x2000, 0x7D3FF, 0x11FF)]
SKYLAKE_PAIR = host_profiles("skylake-5.10", "skylake-6.3")
REG = registry()


def _expected(model_vmx: set[str]) -> dict[str, int]:
    out = {}
    for word, msr, host, keep_510, keep_63, default1 in ORACLE:
        bits = 0
        for name in model_vmx:
            feat = REG.get(name)
            if feat is not None and feat.word == word:
                bits |= feat.mask
        kept = bits & host & keep_510 & keep_63
        out[msr] = (kept | default1) << 32 | (default1 & ~kept)
    return out


@settings(max_examples=40, deadline=None)
@given(dropped=st.sets(st.sampled_from(FEATURES), max_size=12),
       strategy=st.sampled_from(STRATEGIES),
       pv=st.sampled_from(["auto", "off"]))
def test_negotiated_guest_view_matches_the_bit_oracle(dropped: set[str], strategy: str, pv: str) -> None:
    base = max_model()
    keep = {"vmx-ept", "vmx-unrestricted-guest", "vmx-secondary-ctls"}  # Hyper-V as L1 needs SLAT
    model = GuestModel(name="prop", base="max", vmx=base.vmx - (dropped - keep), hyperv=base.hyperv,
                       pv_perf_global_ctrl=pv)
    neg = negotiate(model, SKYLAKE_PAIR, strategy)
    assert neg.ok, neg.error
    assert neg.config is not None
    expected = _expected(set(model.vmx))
    for host in SKYLAKE_PAIR:
        view = start_guest(neg.config, host)
        assert view.ok
        assert {k: hex(view.guest_msrs[k]) for k in expected} == {k: hex(v) for k, v in expected.items()}, host.name


@settings(max_examples=40, deadline=None)
@given(hosts=st.lists(st.sampled_from(CAPABLE), min_size=1, max_size=4, unique_by=lambda h: h.name),
       dropped=st.sets(st.sampled_from(FEATURES), max_size=12),
       strategy=st.sampled_from(STRATEGIES))
def test_negotiated_config_never_asks_for_more_than_the_model(hosts: list[object], dropped: set[str],
                                                              strategy: str) -> None:
    """Across any pool: the -cpu only ever switches model features off (a subset, never an addition)."""
    base = max_model()
    keep = {"vmx-ept", "vmx-unrestricted-guest", "vmx-secondary-ctls"}
    model = GuestModel(name="prop", base="max", vmx=base.vmx - (dropped - keep), hyperv=base.hyperv)
    neg = negotiate(model, hosts, strategy)  # type: ignore[arg-type]
    assert neg.ok and neg.config is not None, neg.error
    assert neg.config.vmx <= model.vmx
