"""EVC-style admission, eVMCS-aware: can a host join a pool without shrinking what guests see?

VMware EVC and Hyper-V's processor compatibility mode refuse a host that lacks a feature of the cluster's
baseline (peers.md A.7). With eVMCS the baseline that matters is the *guest-visible* one: a candidate that
lacks posted interrupts costs nothing when every eVMCS guest has them filtered anyway, while a candidate on a
kernel that filters more (or ignores the PV PERF_GLOBAL_CTRL bit) shrinks the pool's guests although its
hardware has every feature.

The candidate is admitted when the pool's negotiated configuration (same strategy) starts on it and shows the
guest exactly the same VMX MSRs -- running guests can then migrate to it unchanged. Otherwise the report
names what admitting it would cost: the guest-visible features and hv-* flags the re-negotiated pool loses.

``--model host`` is per host (:mod:`qemu_evmcs.policy.hostmodel`): nothing is negotiated for the pool, each
host's QEMU gives a ``-cpu host`` guest its own KVM set. The candidate is admitted when such a guest starts on
it and sees exactly the VMX MSRs it sees on every pool host where it starts, so guests migrate both ways
unchanged (the check QEMU and libvirt do not make, :func:`admit_host`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.hostgroup import Fleet
from qemu_evmcs.core.views import diff_views
from qemu_evmcs.policy.hostmodel import host_config, host_starts, layer_of, supported_on_both
from qemu_evmcs.policy.negotiate import (
    STRATEGY_VARIANT,
    GuestModel,
    Hosts,
    Negotiation,
    load_guest_model,
    load_pool,
    max_model,
    negotiate,
    pool_groups,
    qemu_supported,
    start_guest,
)
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.registry import registry

if TYPE_CHECKING:
    from typing import Any


@dataclass
class Admission:
    """The answer for one candidate."""

    candidate: str
    strategy: str
    admit: bool
    reason: str
    #: Why the candidate is refused, without the cost (``reason`` is ``refuse X: <why>; admitting it would cost``).
    why: str = ""
    cost_features: list[str] = field(default_factory=list)
    cost_hyperv: list[str] = field(default_factory=list)
    cost_pv_perf_global_ctrl: bool = False
    pool: Negotiation | None = None
    with_candidate: Negotiation | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "admit": self.admit, "candidate": self.candidate,
            "design": STRATEGY_VARIANT.get(self.strategy, self.strategy), "reason": self.reason,
            "cost": {"vmx": self.cost_features, "hyperv": self.cost_hyperv,
                     "pv_perf_global_ctrl": self.cost_pv_perf_global_ctrl},
            "pool_guest_features": sorted(self.pool.guest_features) if self.pool else [],
        }


def admit(pool: Hosts, candidate: HostProfile | Fleet,
          model: str | GuestModel | None = None, strategy: str = "pv-cpuid", *, target: str = "qemu") -> Admission:
    """Decide whether ``candidate`` may join ``pool`` (model default: every feature QEMU can set).

    ``pool``: see :data:`~qemu_evmcs.policy.negotiate.Hosts` (a fleet of any size: the pool is negotiated once per
    distinct profile). ``candidate``: one loaded host, or a fleet's first host (paths and names are loaded by
    :func:`qemu_evmcs.fleet.sources.load_hosts_fleet`). ``target``: the QEMU the
    pool's guests run on (:data:`~qemu_evmcs.policy.negotiate.TARGETS`; real QEMU by default).

    :raise NegativeAnswer: never; a pool without a safe answer is an ``InputError``-free refusal.
    """
    gm = load_guest_model(model) if model is not None else max_model()
    hosts = load_pool(pool)
    cand_fleet = load_pool(candidate if isinstance(candidate, Fleet) else [candidate])
    fp, names = next(iter(cand_fleet.members.items()))
    cand = cand_fleet.distinct[fp]
    if cand.name != names[0]:   # a host of another Fleet: its group's representative, renamed
        cand = replace(cand, name=names[0])
    if gm.per_host:
        return admit_host(gm, hosts, cand, strategy, target=target)
    joined = Fleet(distinct=dict(hosts.distinct), members={k: list(v) for k, v in hosts.members.items()},
                   source=hosts.source)
    joined.add(cand)
    base = negotiate(gm, hosts, strategy, target=target)
    if not base.ok or base.config is None:
        why = f"the pool itself has no safe answer: {base.error.removeprefix('no safe answer: ')}"
        return Admission(cand.name, strategy, False, why, why=why, pool=base)
    joined_neg = negotiate(gm, joined, strategy, target=target)
    reg = registry()
    res = Admission(cand.name, strategy, False, "", pool=base, with_candidate=joined_neg)
    if not joined_neg.ok or joined_neg.config is None:
        why = joined_neg.error.removeprefix("no safe answer: ")
        res.why = res.reason = f"with {cand.name} the pool has no safe answer: {why}"
        res.cost_features = reg.in_order(base.guest_features)
        return res
    # guest_features is computed on each access: once per side here, not once per registry feature
    res.cost_features = reg.in_order(base.guest_features - joined_neg.guest_features)
    res.cost_hyperv = sorted(set(base.config.hyperv) - set(joined_neg.config.hyperv))
    res.cost_pv_perf_global_ctrl = base.config.pv_perf_global_ctrl and not joined_neg.config.pv_perf_global_ctrl
    start = start_guest(base.config, cand)
    if start.ok and not diff_views(base.guest_msrs, start.guest_msrs):
        res.admit = True
        supported = qemu_supported(cand)
        res.reason = (f"{cand.name} runs the pool's configuration with identical guest-visible VMX MSRs"
                      + (" (it lacks only controls eVMCS hides anyway)"
                         if base.config.vmx <= supported and not gm.vmx <= supported else ""))
        if cand.unknown_note():
            res.reason += f" (note: {cand.unknown_note()})"
        return res
    if start.ok:
        changes = list(dict.fromkeys(f"{c.label()} {c.change}"
                                     for c in diff_views(base.guest_msrs, start.guest_msrs)))
        why = "guest-visible VMX MSRs would differ: " + ", ".join(changes[:12]) + (
            f" and {len(changes) - 12} more" if len(changes) > 12 else "")
    else:
        why = start.reason
    costs = []
    if res.cost_features:
        costs.append("guest loses " + ", ".join(res.cost_features))
    if res.cost_hyperv:
        costs.append("hv flags lost: " + ", ".join(res.cost_hyperv))
    if res.cost_pv_perf_global_ctrl:
        costs.append("CPUID 0x4000000A.EBX bit 0 must be cleared")
    res.why = why
    res.reason = f"refuse {cand.name}: {why}" + ("; admitting it would cost: " + "; ".join(costs) if costs else "")
    if cand.unknown_note():
        res.reason += f" (note: {cand.unknown_note()})"
    return res


def admit_host(gm: GuestModel, hosts: Fleet, cand: HostProfile, strategy: str = "pv-cpuid", *,
               target: str = "qemu") -> Admission:
    """``admit --model host``: the candidate's own ``-cpu host`` guest against each pool host's (see the module
    docstring). ``cost_features``: the features pool guests see that they would lose migrating to it."""
    design = STRATEGY_VARIANT.get(strategy, "shipped")   # the variant names are the design names
    res = Admission(cand.name, strategy, False, "")
    mine = start_guest(host_config(gm, cand, design, target), cand)
    if not mine.ok:
        res.why = f"-cpu {gm.name} does not start on {cand.name} (kernel {cand.kernel}): {mine.reason}"
        res.reason = f"refuse {cand.name}: {res.why}"
        return res
    lost: set[str] = set()
    differ: list[str] = []
    started = 0
    for p, theirs in host_starts(gm, [g.profile for g in pool_groups(hosts)], design, target):
        if not theirs.ok:
            continue   # no -cpu host guest runs there, none migrates from or to it
        started += 1
        changes = diff_views(theirs.guest_msrs, mine.guest_msrs)
        if not changes:
            continue
        lost |= {c.feature for c in changes if c.change == "lost" and c.feature}
        both = supported_on_both(p, cand)
        layers = sorted({layer_of(c.feature or c.label(), both) for c in changes})
        why = {"evmcs-filter": f"the eVMCS filters of kernels {p.kernel} and {cand.kernel} differ",
               "host": "the hosts' KVM report different VMX features"}
        labels = list(dict.fromkeys(f"{c.label()} {c.change}" for c in changes))
        differ.append(f"{p.name}: {', '.join(labels[:8])}" + (f" and {len(labels) - 8} more" if len(labels) > 8
                                                               else "") + f" ({'; '.join(why[x] for x in layers)})")
    res.cost_features = registry().in_order(lost)
    if not started:
        res.why = f"the pool itself has no -cpu {gm.name} guest: it starts on none of the pool's hosts"
        res.reason = f"refuse {cand.name}: {res.why}"
        return res
    if not differ:
        res.admit = True
        plural = "s" if started != 1 else ""
        res.reason = (f"a -cpu {gm.name} guest sees the same VMX MSRs on {cand.name} as on every pool host where it "
                      f"starts ({started} distinct profile{plural}); each host gives it its own KVM set, so this is "
                      f"what decides migration")
        return res
    res.why = (f"a -cpu {gm.name} guest's VMX MSRs differ between {cand.name} and " + "; ".join(differ[:3])
               + (f"; and {len(differ) - 3} more hosts" if len(differ) > 3 else "")
               + " (QEMU and libvirt would let it migrate)")
    res.reason = f"refuse {cand.name}: {res.why}"
    return res
