"""Text, JSON and per-pool libvirt files of a :class:`~qemu_evmcs.policy.plan.FleetPlan` (``fleet plan``).

Why beside :mod:`~qemu_evmcs.output.render`: a pool's answer is printed with the same writers as
``negotiate`` (``-cpu`` string, libvirt fragment, negotiation JSON), so the plan never disagrees with what
``negotiate --hosts fleet.db --pool NAME`` prints for the same pool.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.output.atomicio import check_output_target, write_output
from qemu_evmcs.output.render import cpu_string, libvirt_xml
from qemu_evmcs.policy.negotiate import names_text
from qemu_evmcs.policy.plan import FleetPlan, MigrationSummary, PoolMigration, PoolPlan
from qemu_evmcs.core.regexcache import regex

if TYPE_CHECKING:
    from typing import Any


def _hosts(n: int) -> str:
    return f"{n:,} host" + ("" if n == 1 else "s")


def pool_json(p: PoolPlan, cpu: str | None) -> dict[str, Any]:
    """One pool: its answer (or why none), who is left out and why, the best upgrades."""
    neg = p.negotiation
    return {
        "pool": p.name,
        "host_count": p.host_count,
        "ok": p.ok,
        "error": (neg.error if neg is not None and not neg.ok else
                  "" if neg is not None else "no host of the pool can run an eVMCS guest"),
        "cpu": cpu,
        "guest_feature_count": len(p.features),
        "dropped": [{"feature": d.feature, "cause": d.cause} for d in neg.drops] if neg is not None else [],
        "notes": list(neg.notes) if neg is not None else [],
        "left_out": [{"layer": x.layer, "reason": x.reason, "host_count": len(x.hosts), "hosts": list(x.hosts)}
                     for x in p.left_out],
        "upgrades": [{"hosts": list(u.hosts), "kernel": u.kernel, "to_kernel": u.to_kernel, "gain": list(u.gain),
                      "joins": u.joins} for u in p.upgrades],
    }


def migration_json(m: PoolMigration) -> dict[str, Any]:
    """One pool-to-pool migration verdict, counted in destination hosts."""
    return {"from": m.source, "to": m.destination, "verdict": m.verdict, "host_counts": dict(m.hosts),
            "reason": m.reason, "lost": list(m.lost)}


def summary_json(s: MigrationSummary) -> dict[str, Any]:
    """Where one pool's guests can migrate, counted in pools and hosts."""
    return {"from": s.source, "pool_counts": dict(s.pools), "host_counts": dict(s.hosts),
            "examples": dict(s.examples), "lost": list(s.lost)}


class _CpuStrings:
    """``-cpu`` strings, rendered once per answer (pools with the same profiles share one)."""

    def __init__(self) -> None:
        self._memo: dict[int, str | None] = {}

    def __call__(self, p: PoolPlan) -> str | None:
        neg = p.negotiation
        key = id(neg)
        if key not in self._memo:
            self._memo[key] = cpu_string(neg).strip() if neg is not None and neg.ok else None
        return self._memo[key]


def plan_json(plan: FleetPlan) -> dict[str, Any]:
    """The whole plan as one JSON object (``pairs`` only when the plan computed every pool pair)."""
    cpu = _CpuStrings()
    out: dict[str, Any] = {
        "design": plan.design, "model": plan.model, "ok": all(p.ok for p in plan.pools),
        "host_count": sum(p.host_count for p in plan.pools), "pool_count": len(plan.pools),
        "pools": [pool_json(p, cpu(p)) for p in plan.pools],
        "migrations": [summary_json(s) for s in plan.summaries], "notes": list(plan.notes)}
    if plan.migrations:
        out["pairs"] = [migration_json(m) for m in plan.migrations]
    return out


def _counts(c: Mapping[str, int], unit: str) -> str:
    return ", ".join(f"{v} {n:,}" for v, n in c.items()) + f" {unit}"


def plan_text(plan: FleetPlan) -> str:
    """The readable plan: one block per pool with where its guests can migrate; every pair if computed."""
    cpu = _CpuStrings()
    hosts = sum(p.host_count for p in plan.pools)
    summaries = {s.source: s for s in plan.summaries}
    lines = [f"fleet plan: {_hosts(hosts)} in {len(plan.pools)} pool(s); model {plan.model}, design {plan.design}"]
    for p in plan.pools:
        lines.append("")
        neg = p.negotiation
        answered = p.host_count - sum(len(x.hosts) for x in p.left_out)
        if neg is not None and neg.ok:
            lines.append(f"pool {p.name} ({_hosts(p.host_count)}): answer for {_hosts(answered)}, "
                         f"the guest sees {len(p.features)} VMX features")
            lines.append(f"  -cpu {cpu(p)}")
        else:
            why = neg.error if neg is not None else "no host of the pool can run an eVMCS guest"
            lines.append(f"pool {p.name} ({_hosts(p.host_count)}): no answer: {why}")
        for x in p.left_out:
            lines.append(f"  left out ({x.layer}): {names_text(list(x.hosts), 5)}: {x.reason}")
        for u in p.upgrades:
            gain = (f"+{len(u.gain)} features ({', '.join(u.gain[:6])}{', ...' if len(u.gain) > 6 else ''})"
                    if u.gain else "")
            what = "joins the answer" + (f", {gain}" if gain else "") if u.joins else gain
            lines.append(f"  upgrade {names_text(list(u.hosts), 3)} ({u.kernel} -> {u.to_kernel}): {what}")
        s = summaries.get(p.name)
        if s is not None and s.pools:
            lines.append(f"  migrations to other pools: {_counts(s.pools, 'pools')}; {_counts(s.hosts, 'hosts')}"
                         if s.hosts else f"  migrations to other pools: {_counts(s.pools, 'pools')}")
            for verdict, example in s.examples.items():
                lines.append(f"    e.g. {verdict}: {example}")
            if s.lost:
                lines.append(f"    lost somewhere: {', '.join(s.lost)}")
    if plan.migrations:
        lines.append("")
        lines.append("migrations between pools (a guest of the first pool's answer onto the second pool's hosts):")
        for m in plan.migrations:
            head = f"  {m.source} -> {m.destination}: {m.verdict}" + (f" ({_counts(m.hosts, 'hosts')})"
                                                                     if m.hosts else "")
            if m.verdict != "fine":
                head += f": {m.reason}"
            if m.lost:
                head += f"; loses {', '.join(m.lost)}"
            lines.append(head)
    for n in plan.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines) + "\n"


def plan_cpu_lines(plan: FleetPlan) -> str:
    """``POOL: -cpu VALUE`` for each pool with an answer (``POOL: no answer: ...`` otherwise)."""
    cpu = _CpuStrings()
    out = []
    for p in plan.pools:
        text = cpu(p)
        out.append(f"{p.name}: {text}" if text is not None else f"{p.name}: no answer")
    return "\n".join(out) + "\n"


_UNSAFE_FILE_CHARS = regex(r"[^A-Za-z0-9._-]")


def pool_file_name(pool: str) -> str:
    """A file name for a pool's fragment: characters outside ``[A-Za-z0-9._-]`` become ``_``."""
    name = _UNSAFE_FILE_CHARS.sub("_", pool).strip(".") or "_"
    return f"{name}.xml"


def write_libvirt_fragments(plan: FleetPlan, out_dir: str, *, force: bool) -> list[str]:
    """One libvirt fragment per pool with an answer, ``OUT_DIR/POOL.xml``; returns the paths written.

    The directory is created if missing; each file is written atomically and refused if it exists unless
    ``force`` (never anything but a regular file is replaced).
    """
    check_output_target(out_dir, force=True, kind="dir")
    try:
        os.makedirs(out_dir, mode=0o755, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the directory: {err.strerror or err}", file=out_dir) from None
    written: list[str] = []
    seen: set[str] = set()
    for p in plan.pools:
        neg = p.negotiation
        if neg is None or not neg.ok:
            continue
        name = pool_file_name(p.name)
        if name in seen:
            name = name[:-4] + f"-{len(seen)}.xml"
        seen.add(name)
        path = os.path.join(out_dir, name)
        label = p.name.replace("--", "- -")      # "--" may not appear inside an XML comment
        write_output(path, f"<!-- qemu-evmcs fleet plan: pool {label} -->\n" + libvirt_xml(neg), force=force,
                     mode=0o644)
        written.append(path)
    return written
