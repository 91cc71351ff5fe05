"""compare-designs: every ordered host pair, every model, every design of the 2022 thread.

For each design the source guest is configured as that design would configure it for the source host alone
(:func:`~qemu_evmcs.policy.migrate.source_config`), then migrated to the destination
(:func:`~qemu_evmcs.policy.migrate.check_migration`). Totals count allowed (``fine``), ``blocked`` and ``unsafe``
host pairs per design; "wrong" cases are unsafe verdicts and blocks that were unnecessary (the destination
could have shown identical VMX MSRs). Hosts with identical :meth:`~qemu_evmcs.core.profile.HostProfile.fingerprint`
are simulated once and counted with their multiplicity: the work is proportional to the square of the number
of *distinct* profiles, never to the number of hosts. A group is named after its first host; JSON lists each
group's hosts once (``groups``) and rows refer to groups by name.

``--model host`` gets its per-host treatment (:func:`~qemu_evmcs.policy.migrate.migrate_host`, as
``migrate-check --model host``): no design configures a ``-cpu host`` guest for the pool, each side's QEMU gives
it its own host's KVM set (under the design's KVM ABI and VMM), so a pair is judged on the two host guests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.errors import NegativeAnswer
from qemu_evmcs.policy.migrate import DESIGNS, MigrationVerdict, check_migration, migrate_host, source_config
from qemu_evmcs.policy.negotiate import (
    GuestConfig,
    GuestModel,
    Hosts,
    evmcs_incapable_reason,
    load_guest_model,
    load_pool,
    max_model,
    names_text,
    pool_groups,
)

if TYPE_CHECKING:
    from typing import Any, Protocol


@dataclass
class DesignGroup:
    """Hosts with one fingerprint, named after the first of them.

    :ivar excluded: why no eVMCS guest can run there (``None``: it takes part in the comparison).
    """

    name: str
    fingerprint: str
    hosts: Sequence[str]
    excluded: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return {"name": self.name, "fingerprint": self.fingerprint, "host_count": len(self.hosts),
                "hosts": list(self.hosts), "excluded": self.excluded}


@dataclass
class PairResult:
    """One (model, source group, destination group) row.

    :ivar source: every host of the source group (``source_group``: the group's name).
    """

    model: str
    source: Sequence[str]
    destination: Sequence[str]
    weight: int
    verdicts: dict[str, MigrationVerdict | None] = field(default_factory=dict)
    source_fails: dict[str, str] = field(default_factory=dict)
    source_group: str = ""
    destination_group: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain data (verdict summaries, no MSR dumps); hosts are listed once per group, not per row."""
        out: dict[str, Any] = {"model": self.model, "source": self.source_group or self.source[0],
                               "destination": self.destination_group or self.destination[0],
                               "pairs": self.weight, "designs": {}}
        for d in DESIGNS:
            v = self.verdicts.get(d)
            if v is None:
                out["designs"][d] = {"verdict": "source-fails", "reason": self.source_fails.get(d, "")}
            else:
                out["designs"][d] = {"verdict": v.verdict, "wrong": v.wrong, "unnecessary_block": v.unnecessary,
                                     "lost": [c.to_json() for c in v.lost], "reason": v.reason}
        return out


@dataclass
class DesignComparison:
    """All rows plus per-design totals (counted in ordered host pairs)."""

    rows: list[PairResult]
    excluded: list[str]
    totals: dict[str, dict[str, int]]
    wrong: dict[str, list[str]]
    groups: list[DesignGroup] = field(default_factory=list)
    #: How a model was treated, when not as a custom model (``-cpu host``: per host).
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain data (``notes`` only when there are some)."""
        out: dict[str, Any] = {"designs": list(DESIGNS), "totals": self.totals, "wrong": self.wrong,
                               "excluded": self.excluded, "groups": [g.to_json() for g in self.groups],
                               "rows": [r.to_json() for r in self.rows]}
        if self.notes:
            out["notes"] = self.notes
        return out


def _group_names(groups: Sequence[DesignGroup]) -> None:
    """Make group names unique (two groups whose first hosts share a name: profile objects given twice)."""
    used: set[str] = set()
    for g in groups:
        if g.name in used:
            g.name = f"{g.name}#{g.fingerprint[:8]}"
        used.add(g.name)


if TYPE_CHECKING:
    class ProgressBar(Protocol):
        """What :func:`compare_designs` reports progress to (:class:`qemu_evmcs.output.progress.Progress` is one)."""

        def update(self, amount: int = 1) -> None:
            """``amount`` more units done."""

    #: Opens a progress bar for ``total`` units under ``label``: the caller (CLI) decides where it is drawn.
    ProgressFactory = Callable[[int, str], AbstractContextManager[ProgressBar]]


class _NoBar:
    def update(self, amount: int = 1) -> None:
        """Nothing to draw."""


def _no_progress(total: int, label: str) -> AbstractContextManager[ProgressBar]:
    return nullcontext(_NoBar())


def compare_designs(hosts: Hosts, models: Sequence[str | GuestModel] = (), *,
                    progress: ProgressFactory | None = None) -> DesignComparison:
    """Run every design over every ordered host pair (identical profiles once) and model.

    ``hosts``: see :data:`~qemu_evmcs.core.hostgroup.Hosts`. ``progress``: opens a bar over the group pairs
    (the CLI's draws on stderr when it is a terminal; default: none).
    """
    fleet = load_pool(hosts)
    gms = [load_guest_model(m) for m in models] or [max_model()]
    all_groups = [DesignGroup(g.profile.name, g.fingerprint, g.hosts, evmcs_incapable_reason(g.profile))
                  for g in pool_groups(fleet)]
    _group_names(all_groups)
    reps = {g.fingerprint: g.profile for g in pool_groups(fleet)}
    excluded = [f"{g.hosts[0]}" + (f" (+{len(g.hosts) - 1:,} with the same profile)" if len(g.hosts) > 1 else "")
                + f": {g.excluded}" for g in all_groups if g.excluded]
    groups = [g for g in all_groups if not g.excluded]
    totals = {d: {"fine": 0, "blocked": 0, "unsafe": 0, "source_fails": 0, "wrong": 0} for d in DESIGNS}
    wrong: dict[str, list[str]] = {d: [] for d in DESIGNS}
    rows: list[PairResult] = []
    # Progress in the unit that moves: host pairs (a group pair weighs n x m hosts).
    nhosts = sum(len(g.hosts) for g in groups)
    with (progress or _no_progress)(len(gms) * nhosts * nhosts, "comparing designs (host pairs)") as bar:
        for gm in gms:
            configs: dict[tuple[str, str], GuestConfig | str] = {}
            for g in groups if not gm.per_host else ():
                for d in DESIGNS:
                    try:
                        # Each design with its VMM side (PV bit, revision request): the simulated QEMU.
                        configs[(g.fingerprint, d)] = source_config(gm, reps[g.fingerprint], d, target="simulator")
                    except NegativeAnswer as err:
                        configs[(g.fingerprint, d)] = str(err)
            for sg in groups:
                src = reps[sg.fingerprint]
                for dg in groups:
                    bar.update(len(sg.hosts) * len(dg.hosts))
                    dst = reps[dg.fingerprint]
                    weight = len(sg.hosts) * len(dg.hosts)
                    if sg is dg:
                        weight = len(sg.hosts) * (len(sg.hosts) - 1)
                        if weight == 0:
                            continue
                    row = PairResult(gm.name, sg.hosts, dg.hosts, weight, source_group=sg.name,
                                     destination_group=dg.name)
                    for d in DESIGNS:
                        cfg = configs.get((sg.fingerprint, d), "")
                        if isinstance(cfg, str) and not gm.per_host:
                            row.verdicts[d], row.source_fails[d] = None, cfg
                            totals[d]["source_fails"] += weight
                            continue
                        try:
                            v = (migrate_host(gm, src, dst, d, target="simulator") if isinstance(cfg, str)
                                 else check_migration(cfg, src, dst))
                        except NegativeAnswer as err:
                            row.verdicts[d], row.source_fails[d] = None, str(err)
                            totals[d]["source_fails"] += weight
                            continue
                        row.verdicts[d] = v
                        totals[d][v.verdict] += weight
                        if v.wrong:
                            totals[d]["wrong"] += weight
                            what = ("unsafe: " + ", ".join(sorted({c.label() for c in v.lost}))
                                    if v.verdict == "unsafe" else "blocked unnecessarily: " + v.reason.split("; ")[0])
                            wrong[d].append(f"{gm.name}: {sg.name} -> {dg.name}: {what}")
                    rows.append(row)
    notes = [f"-cpu {gm.name}: per host, as migrate-check --model {gm.name}: no design configures it for the pool; "
             f"each side's QEMU gives the guest its own host's KVM set, so a pair is judged on the two host guests "
             f"(QEMU and libvirt do not compare them)" for gm in gms if gm.per_host]
    return DesignComparison(rows=rows, excluded=excluded, totals=totals, wrong=wrong, groups=all_groups, notes=notes)


def comparison_text(cmp: DesignComparison) -> str:
    """Human report: totals table (host pairs), then the wrong cases per design (group pairs, a group named
    after its first host), then the groups of more than one host."""
    lines = [f"note: {n}" for n in cmp.notes]
    lines += [f"{'design':<10} {'allowed':>8} {'blocked':>8} {'unsafe':>7} {'no-start':>9} {'wrong':>6}"]
    for d in DESIGNS:
        t = cmp.totals[d]
        lines.append(f"{d:<10} {t['fine']:>8} {t['blocked']:>8} {t['unsafe']:>7} {t['source_fails']:>9} "
                     f"{t['wrong']:>6}")
    for d in DESIGNS:
        if cmp.wrong[d]:
            lines.append(f"{d} gets wrong:")
            lines += [f"  {w}" for w in cmp.wrong[d]]
        else:
            lines.append(f"{d}: no wrong verdicts")
    for e in cmp.excluded:
        lines.append(f"excluded (no eVMCS): {e}")
    multi = [g for g in cmp.groups if len(g.hosts) > 1]
    if multi:
        lines.append(f"{len(cmp.groups)} distinct host profiles; groups of more than one host:")
        lines += [f"  {g.name}: {len(g.hosts):,} hosts ({names_text(g.hosts, 3)})" for g in multi]
    return "\n".join(lines) + "\n"
