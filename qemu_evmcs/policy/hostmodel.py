"""QEMU's ``-cpu host`` (``--model host[,hv-passthrough]``): a guest model whose features differ per host.

Why it needs its own treatment: with ``-cpu host`` QEMU gives each guest its own host's KVM set -- every vmx
feature that host's KVM reports, and with ``hv-passthrough`` every enlightenment that host's KVM offers
(KVM_GET_SUPPORTED_HV_CPUID, hv-evmcs included) -- so the "same" configuration is a different guest on each
host. QEMU and libvirt let such a guest migrate between hosts with identical CPUs, but what an eVMCS L1 reads
also depends on the kernel's eVMCS filter: between a 5.10 and a 6.3 host with the very same CPU the guest's
VMX MSRs differ, and a live migration silently takes controls away.

- :func:`host_config`: the configuration ``-cpu host[,...]`` gets on one host;
- :func:`host_pool_notes`: why a host guest cannot migrate among these hosts (which features differ, which
  layer), for ``negotiate``/``baseline``;
- :func:`negotiate_model`: ``negotiate`` for any ``--model``; for ``host`` the notes plus the custom model
  (``max`` with the pool's common answer) that can migrate.
"""

from __future__ import annotations

from collections.abc import Sequence

from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.registry import registry
from qemu_evmcs.kvm.simkvm import SimKvm
from qemu_evmcs.core.views import diff_views
from qemu_evmcs.qemu.model_names import AUTO_MODEL
from qemu_evmcs.policy.negotiate import (
    STRATEGY_VARIANT,
    GuestConfig,
    GuestModel,
    Hosts,
    Negotiation,
    StartResult,
    load_guest_model,
    load_pool,
    negotiate,
    pool_groups,
    qemu_supported,
    start_guest,
    target_properties,
)
from qemu_evmcs.qemu.features import HV_FEATURES, PLUGIN_PERF_GLOBAL_CTRL, hv_feature_supported
from qemu_evmcs.qemu.models import qemu_props_to_features


def hv_passthrough_flags(profile: HostProfile, target: str = "qemu") -> frozenset[str]:
    """What ``hv-passthrough`` turns on for this host: every Hyper-V enlightenment its KVM offers, as QEMU's
    ``kvm_hyperv_expand_features`` decides (hv-evmcs from KVM's HV CPUID with eVMCS enabled). Real QEMU has no
    ``hv-evmcs-perf-global-ctrl``; the simulator (``target='simulator'``) does."""
    kvm = SimKvm(profile)
    if not (profile.kvm_hyperv or not kvm.version_at_least(kvm.facts.kvm_hyperv_config_since)):
        return frozenset()   # no KVM_CAP_HYPERV (CONFIG_KVM_HYPERV=n): nothing to pass through
    leaves = kvm.hv_cpuid()
    out = set()
    for feat in HV_FEATURES:
        if feat.skip_passthrough or (feat.prop == PLUGIN_PERF_GLOBAL_CTRL and target == "qemu"):
            continue
        if hv_feature_supported(feat, leaves, lambda since: kvm.version_at_least(getattr(kvm.facts, since))):
            out.add(feat.prop)
    return frozenset(out)


def host_hyperv(gm: GuestModel, profile: HostProfile, target: str = "qemu") -> frozenset[str]:
    """The hv-* flags the guest gets on ``profile``: the explicit ones, plus what ``hv-passthrough`` expands to."""
    flags = {k for k, v in gm.hyperv.items() if v and k != "hv-passthrough"}
    if gm.hyperv.get("hv-passthrough"):
        flags |= hv_passthrough_flags(profile, target)
    return frozenset(flags)


def host_config(gm: GuestModel, profile: HostProfile, design: str = "shipped", target: str = "qemu") -> GuestConfig:
    """``-cpu host[,items]`` on ``profile``: every vmx feature its KVM reports that QEMU can set (minus the items
    switched off), its own hv-* flags; QEMU's default ``check`` (nothing enforced: it is the host's set)."""
    settable = qemu_props_to_features(target_properties(target))
    vmx = gm.vmx & qemu_supported(profile) & settable
    hv = host_hyperv(gm, profile, target)
    return GuestConfig(model=gm.name, base="host", vmx=frozenset(vmx),
                       hyperv=tuple(sorted(hv - {PLUGIN_PERF_GLOBAL_CTRL})),
                       pv_perf_global_ctrl=PLUGIN_PERF_GLOBAL_CTRL in hv, enforce=False, design=design)


def host_starts(gm: GuestModel, profiles: Sequence[HostProfile], design: str = "shipped",
                target: str = "qemu") -> list[tuple[HostProfile, StartResult]]:
    """The host guest started on each profile (simulated QEMU start-up; guest-visible MSRs when it starts)."""
    return [(p, start_guest(host_config(gm, p, design, target), p)) for p in profiles]


def layer_of(feature: str, both: frozenset[str]) -> str:
    """Which layer makes ``feature`` differ between a host guest on two hosts: both hosts' KVM report it (so QEMU
    set it on both) -> the eVMCS filter of the two kernels; otherwise the hosts themselves (CPU or KVM nested
    support).

    :param both: :func:`supported_on_both` of the two hosts, computed once per pair by the caller
        (not once per differing bit: each :func:`qemu_supported` walks every word of the registry).
    """
    return "evmcs-filter" if feature in both else "host"


def supported_on_both(a: HostProfile, b: HostProfile) -> frozenset[str]:
    """The features QEMU treats as supported on both hosts (:func:`qemu_supported`), for :func:`layer_of`."""
    return qemu_supported(a) & qemu_supported(b)


def host_pool_notes(gm: GuestModel, profiles: Sequence[HostProfile], design: str = "shipped",
                    target: str = "qemu") -> list[str]:
    """Why a ``host`` guest cannot start on, or migrate among, these hosts (empty when it can)."""
    reg = registry()
    notes: list[str] = []
    started: list[tuple[HostProfile, StartResult]] = []
    for p, res in host_starts(gm, profiles, design, target):
        if not res.ok:
            notes.append(f"-cpu {gm.name} does not start on {p.name} (kernel {p.kernel}): {res.reason}")
        else:
            started.append((p, res))
    if len(started) < 2:
        return notes
    first, fres = started[0]
    for p, res in started[1:]:
        changes = diff_views(fres.guest_msrs, res.guest_msrs, reg)
        if not changes:
            continue
        by_layer: dict[str, set[str]] = {}
        both = supported_on_both(first, p)
        for c in changes:
            name = c.feature or c.label()
            by_layer.setdefault(layer_of(name, both), set()).add(f"{c.label()} ({c.change})")
        parts = []
        if "evmcs-filter" in by_layer:
            parts.append(f"the eVMCS filter of kernel {first.kernel} differs from {p.kernel}'s (both hosts' KVM "
                         f"report these, QEMU sets them on both): {', '.join(sorted(by_layer['evmcs-filter']))}")
        if "host" in by_layer:
            parts.append(f"the hosts' KVM report different VMX features: {', '.join(sorted(by_layer['host']))}")
        notes.append(f"a -cpu {gm.name} guest cannot live-migrate between {first.name} and {p.name}: its VMX MSRs "
                     f"differ ({'; '.join(parts)}); QEMU and libvirt would not stop it")
    return notes


def custom_for_host(gm: GuestModel, profiles: Sequence[HostProfile], target: str = "qemu") -> GuestModel:
    """The custom model a pool negotiates instead of ``host``: ``max`` asking for what the host guests ask for,
    with the hv-* flags every host offers (for ``hv-passthrough``: the pool's common passthrough set)."""
    hv = frozenset.intersection(*[host_hyperv(gm, p, target) for p in profiles]) if profiles else frozenset()
    hv -= {PLUGIN_PERF_GLOBAL_CTRL}
    return GuestModel(name=f"max (custom model for -cpu {gm.name} guests)", base="max", vmx=gm.vmx,
                      hyperv={f: True for f in sorted(hv | {"hv-vapic", "hv-evmcs"})})


def negotiate_model(model: str | GuestModel, hosts: Hosts, strategy: str = "pv-cpuid", *,
                    target: str = "qemu", auto_pick: GuestModel | str | None = None) -> Negotiation:
    """:func:`~qemu_evmcs.policy.negotiate.negotiate` for any ``--model``; for ``host`` the answer is the custom
    model that can migrate (:func:`custom_for_host`), with notes saying why ``host`` itself cannot.
    ``auto_pick``: see :func:`~qemu_evmcs.policy.negotiate.negotiate`."""
    if model == AUTO_MODEL:
        return negotiate(model, hosts, strategy, target=target, auto_pick=auto_pick)
    gm = load_guest_model(model)
    if not gm.per_host:
        return negotiate(gm, hosts, strategy, target=target)
    fleet = load_pool(hosts)
    profiles = [g.profile for g in pool_groups(fleet)]
    design = STRATEGY_VARIANT.get(strategy, "shipped")   # the variant names are the design names
    notes = host_pool_notes(gm, profiles, design, target)
    neg = negotiate(custom_for_host(gm, profiles, target), fleet, strategy, target=target)
    neg.notes[:0] = notes or [f"a -cpu {gm.name} guest sees the same VMX MSRs on every host of this pool; the "
                              f"custom model below pins that set"]
    return neg
