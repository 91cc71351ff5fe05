"""Property tests: a negotiated configuration starts on every pool host, with identical guest views."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from qemu_evmcs.policy.negotiate import (
    STRATEGIES,
    GuestModel,
    diff_views,
    load_hosts,
    max_model,
    negotiate,
    qemu_property_features,
    start_guest,
    visible_features,
)
from qemu_evmcs.core.profile import bundled_profile_dir

CAPABLE = [h for h in load_hosts([bundled_profile_dir()]) if h.is_intel and h.nested]
FEATURES = sorted(qemu_property_features())


@settings(max_examples=40, deadline=None)
@given(hosts=st.lists(st.sampled_from(CAPABLE), min_size=1, max_size=4, unique_by=lambda h: h.name),
       dropped=st.sets(st.sampled_from(FEATURES), max_size=12),
       strategy=st.sampled_from(STRATEGIES),
       pv=st.sampled_from(["auto", "off"]))
def test_negotiated_config_starts_everywhere_identically(hosts: list[object], dropped: set[str], strategy: str,
                                                         pv: str) -> None:
    base = max_model()
    keep = {"vmx-ept", "vmx-unrestricted-guest", "vmx-secondary-ctls"}  # Hyper-V as L1 needs SLAT
    model = GuestModel(name="prop", base="max", vmx=base.vmx - (dropped - keep), hyperv=base.hyperv,
                       pv_perf_global_ctrl=pv)
    neg = negotiate(model, hosts, strategy)  # type: ignore[arg-type]
    assert neg.ok, neg.error
    assert neg.config is not None
    starts = [start_guest(neg.config, h) for h in hosts]  # type: ignore[arg-type]
    assert all(s.ok for s in starts)
    for s in starts[1:]:
        assert diff_views(starts[0].guest_msrs, s.guest_msrs) == []
    # What the -cpu asks for is exactly what the guest sees.
    assert neg.config.vmx <= visible_features(starts[0].guest_msrs)
    assert neg.config.vmx <= model.vmx
