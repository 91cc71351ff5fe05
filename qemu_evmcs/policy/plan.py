"""``fleet plan``: per pool of an inventory, the negotiated answer, who is left out, migrations between pools,
and the hosts whose kernel upgrade would widen the pool's guest feature set the most.

Why one module: an operator with an imported fleet wants every pool's answer at once, not a file per pool
exported by hand and run through ``negotiate`` one by one. Everything here is computed once per distinct
host profile (a 100,000-host inventory has a few dozen), so the plan costs what its groups cost:

- **answer**: :func:`~qemu_evmcs.policy.negotiate.negotiate` over the pool's hosts that can run an eVMCS
  guest at all; the others are *left out* with the layer that excludes them (CPU vendor, kernel without
  eVMCS, ``kvm_intel.nested=0``), never silently.
- **migrations**: a guest configured with pool A's answer, moved to each distinct host of pool B
  (:func:`~qemu_evmcs.policy.migrate.check_migration`): ``fine`` only if fine on every host of B; ``unsafe``
  if unsafe on any; otherwise ``blocked``; counted in hosts.
- **upgrades**: for each group not on the newest eVMCS era, the pool re-negotiated with that group booted on
  the newest era's first release; the gain is the features the pool's guests would additionally see. A QEMU
  upgrade is not modelled (one QEMU model snapshot is bundled) and the plan says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from qemu_evmcs.core.errors import NegativeAnswer
from qemu_evmcs.core.hostgroup import Fleet, HostGroup
from qemu_evmcs.core.kernel import era_table
from qemu_evmcs.policy.migrate import DESIGN_STRATEGY, check_migration
from qemu_evmcs.policy.negotiate import GuestModel, Negotiation, evmcs_incapable_reason, negotiate

#: Pool label for inventory hosts imported without ``--pool``.
NO_POOL = "(none)"

#: How many upgrade suggestions a pool lists at most.
MAX_UPGRADES = 3


@dataclass(frozen=True)
class LeftOut:
    """Hosts of a pool that cannot run an eVMCS guest, with the layer that decides it."""

    layer: str
    reason: str
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class PoolMigration:
    """A guest of ``source`` pool's answer moved to ``destination`` pool's hosts."""

    source: str
    destination: str
    verdict: str                  # fine | blocked | unsafe | no-answer
    hosts: Mapping[str, int]      # verdict -> number of destination hosts
    reason: str                   # the first non-fine reason (or why fine)
    lost: tuple[str, ...] = ()    # features the guest loses where unsafe


@dataclass(frozen=True)
class Upgrade:
    """A group whose kernel upgrade would widen the pool: more features for its guests, or the group's hosts
    joining the answer (``joins``: they are left out today because their kernel has no eVMCS)."""

    hosts: tuple[str, ...]
    kernel: str
    to_kernel: str
    gain: tuple[str, ...]
    joins: bool = False


@dataclass
class PoolPlan:
    """One pool's plan."""

    name: str
    host_count: int
    negotiation: Negotiation | None
    left_out: list[LeftOut] = field(default_factory=list)
    upgrades: list[Upgrade] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Does the pool have an answer?"""
        return self.negotiation is not None and self.negotiation.ok


@dataclass
class FleetPlan:
    """Every pool's plan and the migration matrix between pools."""

    design: str
    model: str
    pools: list[PoolPlan]
    migrations: list[PoolMigration]
    notes: list[str] = field(default_factory=list)


def _layer_of(reason: str) -> str:
    if "has no eVMCS (Intel VMX only)" in reason:
        return "CPU"
    if "nested=0" in reason:
        return "KVM nested support"
    return "kernel"


def split_pools(fleet: Fleet) -> dict[str, Fleet]:
    """The fleet's hosts by inventory pool (hosts without one under :data:`NO_POOL`), groups kept."""
    out: dict[str, Fleet] = {}
    for fp, hosts in fleet.members.items():
        prof = fleet.distinct[fp]
        for h in hosts:
            pool = fleet.pools.get(h, NO_POOL)
            part = out.get(pool)
            if part is None:
                part = out[pool] = Fleet(source=f"{fleet.source} pool {pool}")
            part.distinct.setdefault(fp, prof)
            part.members.setdefault(fp, []).append(h)
    return dict(sorted(out.items()))


def _capable(pool: Fleet) -> tuple[Fleet, list[LeftOut], list[HostGroup]]:
    """``(capable hosts, left-out hosts by layer and reason, left-out groups whose kernel decides it)``."""
    keep = Fleet(source=pool.source)
    left: dict[tuple[str, str], list[str]] = {}
    by_kernel: list[HostGroup] = []
    for g in pool.host_groups():
        why = evmcs_incapable_reason(g.profile)
        if why is None:
            keep.distinct[g.fingerprint] = g.profile
            keep.members[g.fingerprint] = list(g.hosts)
        else:
            # The reason names the group's representative; say it once for the group.
            text = why.split(": ", 1)[1] if why.startswith("host ") else why
            layer = _layer_of(why)
            left.setdefault((layer, text), []).extend(g.hosts)
            if layer == "kernel":
                by_kernel.append(g)
    return keep, [LeftOut(layer, reason, tuple(hosts)) for (layer, reason), hosts in left.items()], by_kernel


def _newest_kernel() -> str:
    first = era_table().eras[-1].first
    return f"{first.major}.{first.minor}"


def _upgrades(model: GuestModel, pool: Fleet, neg: Negotiation, strategy: str, target: str,
              left_by_kernel: Sequence[HostGroup]) -> list[Upgrade]:
    newest = era_table().eras[-1]
    to_kernel = _newest_kernel()
    have = neg.guest_features
    out: list[Upgrade] = []
    for g in left_by_kernel:
        upgraded = g.profile.with_kernel(to_kernel)
        if evmcs_incapable_reason(upgraded) is not None:
            continue
        trial = Fleet(distinct=dict(pool.distinct), members={k: list(v) for k, v in pool.members.items()},
                      source=pool.source)
        trial.distinct[g.fingerprint] = upgraded
        trial.members[g.fingerprint] = list(g.hosts)
        after = negotiate(model, trial, strategy, target=target)
        if after.ok:
            out.append(Upgrade(tuple(g.hosts), g.profile.kernel, to_kernel,
                               tuple(sorted(after.guest_features - have)), joins=True))
    for g in pool.host_groups():
        if g.profile.era.id == newest.id:
            continue
        trial = Fleet(source=pool.source)
        for other in pool.host_groups():
            prof = g.profile.with_kernel(to_kernel) if other.fingerprint == g.fingerprint else other.profile
            trial.distinct[other.fingerprint] = prof
            trial.members[other.fingerprint] = list(other.hosts)
        after = negotiate(model, trial, strategy, target=target)
        gain = tuple(sorted(after.guest_features - have)) if after.ok else ()
        if gain:
            out.append(Upgrade(tuple(g.hosts), g.profile.kernel, to_kernel, gain))
    out.sort(key=lambda u: (not u.joins, -len(u.gain), -len(u.hosts), u.hosts[0]))
    return out[:MAX_UPGRADES]


def _migration(src_name: str, src: PoolPlan, src_group: HostGroup | None, dst_name: str,
               dst_groups: Sequence[HostGroup]) -> PoolMigration:
    neg = src.negotiation
    if neg is None or not neg.ok or neg.config is None or src_group is None:
        return PoolMigration(src_name, dst_name, "no-answer", {}, f"pool {src_name} has no answer")
    if not dst_groups:
        return PoolMigration(src_name, dst_name, "no-answer", {},
                             f"pool {dst_name} has no host that can run an eVMCS guest")
    counts = {"fine": 0, "blocked": 0, "unsafe": 0}
    first_reason: dict[str, str] = {}
    lost: set[str] = set()
    for g in dst_groups:
        try:
            v = check_migration(neg.config, src_group.profile, g.profile)
        except NegativeAnswer as err:     # pragma: no cover - the answer starts on its own pool by construction
            verdict, reason = "blocked", str(err)
        else:
            verdict, reason = v.verdict, v.reason
            lost.update(c.feature for c in v.lost if c.feature)
        counts[verdict] += g.count
        first_reason.setdefault(verdict, f"{g.hosts[0]}: {reason}")
    verdict = "unsafe" if counts["unsafe"] else "blocked" if counts["blocked"] else "fine"
    return PoolMigration(src_name, dst_name, verdict, {k: n for k, n in counts.items() if n},
                         first_reason.get(verdict, ""), tuple(sorted(lost)) if verdict == "unsafe" else ())


def plan_fleet(fleet: Fleet, model: GuestModel, *, design: str = "shipped", target: str = "qemu",
               upgrades: bool = True, tick: Callable[[], None] | None = None) -> FleetPlan:
    """The plan of every pool of ``fleet`` (see the module docstring).

    :param design: ``shipped``, ``revision`` or ``vmx-msrs`` (the negotiation strategy of each).
    :param tick: called once per pool planned (for a progress bar counted in pools).
    """
    strategy = DESIGN_STRATEGY[design]
    pools = split_pools(fleet)
    plans: list[PoolPlan] = []
    capable_of: dict[str, Fleet] = {}
    for name, pool in pools.items():
        keep, left, left_by_kernel = _capable(pool)
        capable_of[name] = keep
        neg = negotiate(model, keep, strategy, target=target) if keep.members else None
        plan = PoolPlan(name, pool.host_count, neg, left)
        if upgrades and neg is not None and neg.ok:
            plan.upgrades = _upgrades(model, keep, neg, strategy, target, left_by_kernel)
        plans.append(plan)
        if tick is not None:
            tick()
    migrations: list[PoolMigration] = []
    for src in plans:
        src_groups = capable_of[src.name].host_groups()
        for dst in plans:
            if dst.name == src.name:
                continue
            migrations.append(_migration(src.name, src, src_groups[0] if src_groups else None, dst.name,
                                         capable_of[dst.name].host_groups()))
    notes = ["upgrades: kernel upgrades only (to the newest eVMCS era's first release, "
             f"{_newest_kernel()}); a QEMU upgrade is not modelled: one QEMU model snapshot is bundled"]
    return FleetPlan(design, model.name, plans, migrations, notes)
