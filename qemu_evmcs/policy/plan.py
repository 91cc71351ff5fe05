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
from dataclasses import dataclass, field, replace

from qemu_evmcs.core.hostgroup import Fleet, HostGroup
from qemu_evmcs.core.errors import KvmError
from qemu_evmcs.core.kernel import era_table
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.msrval import feature_set
from qemu_evmcs.kvm.simkvm import guest_view
from qemu_evmcs.policy.migrate import verdict_from_view
from qemu_evmcs.policy.negotiate import (DESIGN_STRATEGY_OF, GuestModel, Negotiation, evmcs_incapable_reason,
                                         negotiate)

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
    #: What the answer's guest sees on every answered host (empty without an answer).
    features: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        """Does the pool have an answer?"""
        return self.negotiation is not None and self.negotiation.ok


@dataclass(frozen=True)
class MigrationSummary:
    """Where a guest of one pool's answer can go: destination pools and hosts counted by verdict, with one
    example destination per verdict that is not ``fine``."""

    source: str
    pools: Mapping[str, int]          # verdict -> number of destination pools
    hosts: Mapping[str, int]          # verdict -> number of destination hosts
    examples: Mapping[str, str]       # verdict -> "POOL: reason" (blocked, unsafe)
    lost: tuple[str, ...] = ()        # features lost on some unsafe destination


@dataclass
class FleetPlan:
    """Every pool's plan, where each pool's guests can migrate (summary), and optionally every pool pair."""

    design: str
    model: str
    pools: list[PoolPlan]
    summaries: list[MigrationSummary]
    migrations: list[PoolMigration]
    notes: list[str] = field(default_factory=list)


def _layer_of(profile: HostProfile) -> str:
    """The layer that keeps an incapable host out, from the profile (never parsed back out of the reason's
    text): the CPU vendor, KVM's nested support (a kernel upgrade would not help), or the kernel."""
    if not profile.is_intel:
        return "CPU"
    if not profile.nested:
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
            layer = _layer_of(g.profile)
            left.setdefault((layer, text), []).extend(g.hosts)
            if layer == "kernel":
                by_kernel.append(g)
    return keep, [LeftOut(layer, reason, tuple(hosts)) for (layer, reason), hosts in left.items()], by_kernel


def _newest_kernel() -> str:
    first = era_table().eras[-1].first
    return f"{first.major}.{first.minor}"


def _fleet_of(groups: Sequence[HostGroup], source: str) -> Fleet:
    out = Fleet(source=source)
    for g in groups:
        out.distinct[g.fingerprint] = g.profile
        out.members[g.fingerprint] = list(g.hosts)
    return out


@dataclass
class _Planner:
    """Memoised answers: everything is keyed by profiles (fingerprints), never by host names, so a fleet of
    400 pools over a few dozen distinct profiles costs what those profiles cost."""

    model: GuestModel
    strategy: str
    target: str
    answers: dict[tuple[str, ...], Negotiation] = field(default_factory=dict)
    alone: dict[tuple[str, bool], frozenset[str]] = field(default_factory=dict)
    gains: dict[tuple[tuple[str, ...], str], tuple[str, ...] | None] = field(default_factory=dict)
    #: Fingerprints of groups that stand for one candidate era of hosts whose era is unknown.
    ambiguous: set[str] = field(default_factory=set)
    verdicts: dict[tuple[object, str], tuple[str, str, tuple[str, ...]]] = field(default_factory=dict)

    def answer(self, pool: Fleet) -> Negotiation:
        """The pool's negotiation, shared by every pool with the same distinct profiles."""
        key = tuple(sorted(pool.members))
        neg = self.answers.get(key)
        if neg is None:
            neg = self.answers[key] = negotiate(self.model, pool, self.strategy, target=self.target)
        return neg

    def features_alone(self, g: HostGroup, upgraded: bool) -> frozenset[str]:
        """A superset of what any configuration shows a guest on this group's hosts (booted on the newest
        kernel if ``upgraded``): the ``-cpu host`` guest view (PV PERF_GLOBAL_CTRL bit set only for the
        simulator target, the only QEMU that can set it) within the model's features. Cheap (one filter
        application), and sound for pruning: a negotiated guest never sees more."""
        key = (g.fingerprint, upgraded)
        got = self.alone.get(key)
        if got is None:
            prof = g.profile.with_kernel(_newest_kernel()) if upgraded else g.profile
            try:
                view = guest_view(prof, evmcs=True, pv_perf_global_ctrl=self.target == "simulator")
                got = feature_set(view) & self.model.vmx
            except KvmError:
                got = frozenset()
            self.alone[key] = got
        return got

    def verdict(self, neg: Negotiation, dst: HostGroup) -> tuple[str, str, tuple[str, ...]]:
        """A guest of ``neg``'s answer moved onto ``dst``'s hosts: ``(verdict, reason, lost features)``."""
        assert neg.config is not None
        key = (neg.config, dst.fingerprint)
        got = self.verdicts.get(key)
        if got is None:
            v = verdict_from_view(neg.config, neg.guest_msrs, "the pool", dst.profile)
            lost = tuple(sorted({c.feature for c in v.lost if c.feature})) if v.verdict == "unsafe" else ()
            got = self.verdicts[key] = (v.verdict, v.reason, lost)
        return got

    def upgrades(self, pool: Fleet, neg: Negotiation, left_by_kernel: Sequence[HostGroup]) -> list[Upgrade]:
        """The groups whose kernel upgrade widens the pool (see the module docstring), best first."""
        newest = era_table().eras[-1]
        to_kernel = _newest_kernel()
        have = neg.guest_features
        groups = pool.host_groups()
        out: list[Upgrade] = []
        for g in left_by_kernel:
            upgraded = g.profile.with_kernel(to_kernel)
            if evmcs_incapable_reason(upgraded) is not None:
                continue
            trial = _fleet_of(groups, pool.source)
            trial.distinct[g.fingerprint] = upgraded
            trial.members[g.fingerprint] = list(g.hosts)
            after = negotiate(self.model, trial, self.strategy, target=self.target)
            if after.ok:
                out.append(Upgrade(tuple(g.hosts), g.profile.kernel, to_kernel,
                                   tuple(sorted(after.guest_features - have)), joins=True))
        composition = tuple(sorted(pool.members))
        for g in groups:
            if g.profile.era.id == newest.id:
                continue
            key = (composition, g.fingerprint)
            if key not in self.gains:
                self.gains[key] = self._gain(groups, g, have, pool.source)
            gain = self.gains[key]
            if gain:
                out.append(Upgrade(tuple(g.hosts), g.profile.kernel, to_kernel, gain))
        out.sort(key=lambda u: (not u.joins, -len(u.gain), -len(u.hosts), u.hosts[0]))
        return out[:MAX_UPGRADES]


    def _gain(self, groups: Sequence[HostGroup], g: HostGroup, have: frozenset[str],
              source: str) -> tuple[str, ...] | None:
        # A feature can only be gained if the upgraded group shows it alone and every other group does too:
        # checked on memoised single-group views before the (costly) whole-pool negotiation.
        maybe = self.features_alone(g, True) - have
        for other in groups:
            if other.fingerprint != g.fingerprint:
                maybe &= self.features_alone(other, False)
        if not maybe:
            return None
        trial = _fleet_of(groups, source)
        trial.distinct[g.fingerprint] = g.profile.with_kernel(_newest_kernel())
        after = negotiate(self.model, trial, self.strategy, target=self.target)
        return tuple(sorted(after.guest_features - have)) if after.ok else None


#: Severity of a verdict, for the worst over a host's candidate eras.
_RANK = {"fine": 0, "blocked": 1, "unsafe": 2}

#: How :meth:`HostProfile.candidate_profiles` names a host once per candidate era.
CANDIDATE_SUFFIX = " (if era "


def _migration(planner: _Planner, src: PoolPlan, dst: PoolPlan, dst_groups: Sequence[HostGroup]) -> PoolMigration:
    neg = src.negotiation
    if neg is None or not neg.ok or neg.config is None:
        return PoolMigration(src.name, dst.name, "no-answer", {}, "the source pool has no answer")
    if not dst_groups:
        return PoolMigration(src.name, dst.name, "no-answer", {},
                             f"pool {dst.name} has no host that can run an eVMCS guest")
    counts = {"fine": 0, "blocked": 0, "unsafe": 0}
    first_reason: dict[str, str] = {}
    lost: set[str] = set()
    # A host of unknown era stands once per candidate era ("h (if era X)"): it counts once, with the worst
    # verdict over its candidates (the migration must be safe whichever era it is in).
    worst: dict[str, str] = {}
    for g in dst_groups:
        verdict, reason, glost = planner.verdict(neg, g)
        first_reason.setdefault(verdict, f"{g.hosts[0]}: {reason}")
        lost.update(glost)
        if g.fingerprint in planner.ambiguous:
            for h in g.hosts:
                base = h.split(CANDIDATE_SUFFIX, 1)[0]
                if _RANK[verdict] > _RANK.get(worst.get(base, "fine"), 0) or base not in worst:
                    worst[base] = verdict
        else:
            counts[verdict] += g.count
    for verdict in worst.values():
        counts[verdict] += 1
    verdict = "unsafe" if counts["unsafe"] else "blocked" if counts["blocked"] else "fine"
    return PoolMigration(src.name, dst.name, verdict, {k: n for k, n in counts.items() if n},
                         first_reason.get(verdict, ""), tuple(sorted(lost)))


def _summary(source: str, row: Mapping[str, PoolMigration], skip: str | None = None) -> MigrationSummary:
    """Counts over one row of destination verdicts (``skip``: the source pool itself)."""
    pools: dict[str, int] = {}
    hosts: dict[str, int] = {}
    examples: dict[str, str] = {}
    lost: set[str] = set()
    for dst, m in row.items():
        if dst == skip:
            continue
        pools[m.verdict] = pools.get(m.verdict, 0) + 1
        for verdict, n in m.hosts.items():
            hosts[verdict] = hosts.get(verdict, 0) + n
        if m.verdict in ("blocked", "unsafe"):
            examples.setdefault(m.verdict, f"{dst}: {m.reason}")
        lost.update(m.lost)
    return MigrationSummary(source, pools, hosts, examples, tuple(sorted(lost)))


def plan_fleet(fleet: Fleet, model: GuestModel, *, design: str = "shipped", target: str = "qemu",
               upgrades: bool = True, all_pairs: bool = False,
               tick: Callable[[], None] | None = None) -> FleetPlan:
    """The plan of every pool of ``fleet`` (see the module docstring).

    :param design: ``shipped``, ``revision`` or ``vmx-msrs`` (the negotiation strategy of each).
    :param all_pairs: also return every ordered pool pair's verdict (the summaries are always computed; the
        verdicts are memoised per answer and destination pool, so pools sharing an answer cost one).
    :param tick: called once per pool planned (for a progress bar counted in pools).
    """
    planner = _Planner(model, DESIGN_STRATEGY_OF[design], target)
    # a kernel build of unknown era is planned once per candidate era ("host (if era X)"); host counts
    # stay counts of real hosts
    expanded = fleet.with_candidates()
    if expanded is not fleet:
        planner.ambiguous = {fp for fp, p in expanded.distinct.items() if CANDIDATE_SUFFIX in p.name}
    real_counts = {name: pool.host_count for name, pool in split_pools(fleet).items()} if expanded is not fleet \
        else None
    pools = split_pools(expanded)
    plans: list[PoolPlan] = []
    capable_of: dict[str, list[HostGroup]] = {}
    for name, pool in pools.items():
        keep, left, left_by_kernel = _capable(pool)
        capable_of[name] = keep.host_groups()
        neg = planner.answer(keep) if keep.members else None
        plan = PoolPlan(name, real_counts[name] if real_counts is not None else pool.host_count, neg, left,
                        features=neg.guest_features if neg is not None and neg.ok else frozenset())
        if upgrades and neg is not None and neg.ok:
            plan.upgrades = planner.upgrades(keep, neg, left_by_kernel)
        plans.append(plan)
        if tick is not None:
            tick()
    # Pools with the same answer migrate alike: one row of verdicts per distinct answer, shared; a pool's
    # summary is its answer's row without the pool itself.
    by_answer: dict[int, dict[str, PoolMigration]] = {}
    summaries: list[MigrationSummary] = []
    pairs: list[PoolMigration] = []
    for src in plans:
        key = id(src.negotiation)
        row = by_answer.get(key)
        if row is None:
            row = by_answer[key] = {dst.name: _migration(planner, src, dst, capable_of[dst.name]) for dst in plans}
        summaries.append(_summary(src.name, row, skip=src.name))
        if all_pairs:
            pairs += [replace(m, source=src.name) for dst, m in row.items() if dst != src.name]
    notes = ["upgrades: kernel upgrades only (to the newest eVMCS era's first release, "
             f"{_newest_kernel()}); a QEMU upgrade is not modelled: one QEMU model snapshot is bundled"]
    return FleetPlan(design, model.name, plans, summaries, pairs, notes)
