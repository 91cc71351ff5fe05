"""compare-designs: every ordered host pair, every model, every design of the 2022 thread.

For each design the source guest is configured as that design would configure it for the source host alone
(:func:`~qemu_evmcs.migrate.source_config`), then migrated to the destination
(:func:`~qemu_evmcs.migrate.check_migration`). Totals count allowed (``fine``), ``blocked`` and ``unsafe``
host pairs per design; "wrong" cases are unsafe verdicts and blocks that were unnecessary (the destination
could have shown identical VMX MSRs). Hosts with identical :meth:`~qemu_evmcs.profile.HostProfile.fingerprint`
are simulated once and counted with their multiplicity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import NegativeAnswer
from .migrate import DESIGNS, MigrationVerdict, check_migration, source_config
from .negotiate import GuestConfig, GuestModel, evmcs_incapable_reason, load_guest_model, load_hosts, max_model
from .profile import HostProfile


@dataclass
class PairResult:
    """One (model, source group, destination group) row."""

    model: str
    source: list[str]
    destination: list[str]
    weight: int
    verdicts: dict[str, MigrationVerdict | None] = field(default_factory=dict)
    source_fails: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain data (verdict summaries, no MSR dumps)."""
        out: dict[str, Any] = {"model": self.model, "source": self.source, "destination": self.destination,
                               "pairs": self.weight, "designs": {}}
        for d in DESIGNS:
            v = self.verdicts.get(d)
            if v is None:
                out["designs"][d] = {"verdict": "source-fails", "reason": self.source_fails.get(d, "")}
            else:
                out["designs"][d] = {"verdict": v.verdict, "wrong": v.wrong, "unnecessary_block": v.unnecessary,
                                     "lost": sorted({c.label() for c in v.lost}), "reason": v.reason}
        return out


@dataclass
class DesignComparison:
    """All rows plus per-design totals."""

    rows: list[PairResult]
    excluded: list[str]
    totals: dict[str, dict[str, int]]
    wrong: dict[str, list[str]]

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return {"designs": list(DESIGNS), "totals": self.totals, "wrong": self.wrong, "excluded": self.excluded,
                "rows": [r.to_json() for r in self.rows]}


def _groups(hosts: Sequence[HostProfile]) -> list[tuple[HostProfile, list[str]]]:
    seen: dict[str, tuple[HostProfile, list[str]]] = {}
    for h in hosts:
        fp = h.fingerprint()
        if fp in seen:
            seen[fp][1].append(h.name)
        else:
            seen[fp] = (h, [h.name])
    return list(seen.values())


def compare_designs(hosts: Sequence[str | HostProfile],
                    models: Sequence[str | GuestModel] = ()) -> DesignComparison:
    """Run every design over every ordered host pair (identical profiles once) and model."""
    pool = load_hosts(hosts)
    gms = [load_guest_model(m) for m in models] or [max_model()]
    excluded = [f"{h.name}: {r}" for h in pool for r in [evmcs_incapable_reason(h)] if r]
    capable = [h for h in pool if not evmcs_incapable_reason(h)]
    groups = _groups(capable)
    totals = {d: {"fine": 0, "blocked": 0, "unsafe": 0, "source-fails": 0, "wrong": 0} for d in DESIGNS}
    wrong: dict[str, list[str]] = {d: [] for d in DESIGNS}
    rows: list[PairResult] = []
    for gm in gms:
        configs: dict[tuple[str, str], GuestConfig | str] = {}
        for src, _ in groups:
            for d in DESIGNS:
                try:
                    configs[(src.fingerprint(), d)] = source_config(gm, src, d)
                except NegativeAnswer as err:
                    configs[(src.fingerprint(), d)] = str(err)
        for src, src_names in groups:
            for dst, dst_names in groups:
                weight = len(src_names) * len(dst_names)
                if src is dst:
                    weight = len(src_names) * (len(src_names) - 1)
                    if weight == 0:
                        continue
                row = PairResult(gm.name, src_names, dst_names, weight)
                for d in DESIGNS:
                    cfg = configs[(src.fingerprint(), d)]
                    if isinstance(cfg, str):
                        row.verdicts[d], row.source_fails[d] = None, cfg
                        totals[d]["source-fails"] += weight
                        continue
                    try:
                        v = check_migration(cfg, src, dst)
                    except NegativeAnswer as err:
                        row.verdicts[d], row.source_fails[d] = None, str(err)
                        totals[d]["source-fails"] += weight
                        continue
                    row.verdicts[d] = v
                    totals[d][v.verdict] += weight
                    if v.wrong:
                        totals[d]["wrong"] += weight
                        what = ("unsafe: " + ", ".join(sorted({c.label() for c in v.lost})) if v.verdict == "unsafe"
                                else "blocked unnecessarily: " + v.reason.split("; ")[0])
                        wrong[d].append(f"{gm.name}: {src.name} -> {dst.name}: {what}")
                rows.append(row)
    return DesignComparison(rows=rows, excluded=excluded, totals=totals, wrong=wrong)


def comparison_text(cmp: DesignComparison) -> str:
    """Human report: totals table, then the wrong cases per design."""
    lines = [f"{'design':<10} {'allowed':>8} {'blocked':>8} {'unsafe':>7} {'no-start':>9} {'wrong':>6}"]
    for d in DESIGNS:
        t = cmp.totals[d]
        lines.append(f"{d:<10} {t['fine']:>8} {t['blocked']:>8} {t['unsafe']:>7} {t['source-fails']:>9} "
                     f"{t['wrong']:>6}")
    for d in DESIGNS:
        if cmp.wrong[d]:
            lines.append(f"{d} gets wrong:")
            lines += [f"  {w}" for w in cmp.wrong[d]]
        else:
            lines.append(f"{d}: no wrong verdicts")
    for e in cmp.excluded:
        lines.append(f"excluded (no eVMCS): {e}")
    return "\n".join(lines) + "\n"
