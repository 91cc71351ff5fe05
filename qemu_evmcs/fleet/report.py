"""The fleet report: ONE self-contained HTML file (inline CSS, SVG and JS; nothing fetched).

Sections:

1. **Host groups**: hosts grouped by :meth:`HostProfile.fingerprint` (G1 = the largest group), labelled by
   CPU, kernel (major.minor and eVMCS era) and host count.
2. **Feature visibility heatmap**: VMX feature x host group, two panels side by side: *unfiltered* (what
   QEMU and libvirt see: KVM's system-fd MSRs) and *eVMCS* (what the L1 Hyper-V guest reads, guest CPUID
   0x4000000A.EBX bit 0 clear as QEMU leaves it). Cell states: visible, hidden by the eVMCS filter,
   hidden by the PERF_GLOBAL_CTRL CPUID gate, not reported by KVM, or eVMCS cannot be enabled; the legend
   says what each colour means. Only features that differ between groups or views are drawn; those every
   group sees alike are listed under the charts (a fleet of uniform rows hides the few that matter).
3. **Pool partition**: groups whose eVMCS guests see identical VMX feature sets can share a migration
   pool; one row per such class.
4. **Design comparison**: for each design of the 2022 KVM thread (and the naive one), the migration
   verdict for every ordered pair of groups (:func:`qemu_evmcs.policy.designs.compare_designs`), as matrices with
   source/destination axes, a one-line description of each design and a legend of the verdicts.

Layout (checked by looking at headless-Chromium screenshots of the bundled profiles and of a 2,000-host
make-fleet fleet): the group table, the key to the charts' G1, G2, ... columns, comes first; text is at
least 10 px for up to 30 groups (cells shrink, labels rotate beyond).

The page's script only adds hover details; it records ``window.__reportOk = true`` and
``data-rendered="ok"`` on ``<html>`` when done, and logs any error to the console
(``data-rendered="error"``), so a headless browser can check it.
"""

from __future__ import annotations

import dataclasses
import html
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.output.atomicio import check_output_target, write_output
from qemu_evmcs.core.cpugen import generation
from qemu_evmcs.core.hostgroup import Fleet
from qemu_evmcs.fleet.sources import load_fleet
from qemu_evmcs.output.render import cpu_string
from qemu_evmcs.policy.designs import compare_designs
from qemu_evmcs.policy.negotiate import GuestModel, max_model, negotiate
from qemu_evmcs.policy.plan import PoolPlan, plan_fleet
from qemu_evmcs.policy.migrate import DESIGNS
from qemu_evmcs.policy.resolve import compute_host_views
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.registry import registry

if TYPE_CHECKING:
    from typing import Any

#: Cell states of the heatmap: state -> (legend text, colour).
STATES: dict[str, tuple[str, str]] = {
    "vis": ("visible", "#2e7d32"),
    "flt": ("hidden by the eVMCS filter", "#e65100"),
    "prf": ("hidden by the PERF_GLOBAL_CTRL CPUID gate", "#f9a825"),
    "nrp": ("not reported by KVM", "#d7dbe0"),
    "nev": ("eVMCS cannot be enabled", "#8e24aa"),
}
#: What each colour means, for the legend (a platform engineer's words).
STATE_HELP: dict[str, str] = {
    "vis": "the guest sees the feature",
    "flt": "KVM reports it to QEMU/libvirt, but KVM's eVMCS filter of this kernel hides it from the "
           "Hyper-V guest (the guest cannot use it: a vmx-* property set for it is silently lost)",
    "prf": "hidden only because the guest's Hyper-V CPUID 0x4000000A.EBX bit 0 is clear (QEMU never sets it); "
           "Linux 6.1+ would expose it with the bit set",
    "nrp": "KVM does not report it on this group (the CPU or KVM's nested support lacks it, or nested=0): "
           "no guest gets it",
    "nev": "KVM reports it, but no eVMCS guest can start on this group (see the group's reason)",
}
VERDICTS: dict[str, tuple[str, str]] = {
    "fine": ("allowed: identical guest-visible VMX MSRs", "#2e7d32"),
    "blocked": ("blocked (refused before it starts: safe)", "#f9a825"),
    "unsafe": ("allowed but UNSAFE: the guest loses features", "#c62828"),
    "source-fails": ("guest does not start on the source", "#9e9e9e"),
    "self": ("same group", "#ffffff"),
}
#: One line per design of the 2022 KVM thread (and the naive baseline), for the report.
DESIGN_HELP: dict[str, str] = {
    "naive": "no negotiation: the model as is, eVMCSv1 updated in place by the kernel, QEMU without enforce",
    "shipped": "what Linux merged (6.1): PERF_GLOBAL_CTRL behind the PV CPUID bit; guest negotiated per source host",
    "revision": "never merged: KVM_CAP_HYPERV_ENLIGHTENED_VMCS2 with an eVMCS revision number (strict)",
    "vmx-msrs": "never implemented: KVM_GET_EVMCS_VMX_MSRS returns the filtered MSRs to QEMU",
}
#: compare-designs costs O(groups^2); larger fleets show the largest groups only.
DEFAULT_MAX_DESIGN_GROUPS = 24


@dataclass
class Group:
    """One fingerprint group and its simulated views."""

    gid: str
    fingerprint: str
    profile: HostProfile
    hosts: Sequence[str]
    #: What an operator recognises, shown on every chart axis: CPU generation, kernel, knobs, host count.
    label: str
    #: The longer form for tables and tooltips (model name, full kernel release).
    detail: str
    era: str
    evmcs_ok: bool
    reason: str | None
    unfiltered: frozenset[str]
    guest: frozenset[str]
    states: dict[str, str]


def _short_cpu(p: HostProfile) -> str:
    name = p.model_name or p.vendor
    for junk in ("(synthetic)", "Intel(R) ", "(R)", "(TM)", " CPU", " Processor"):
        name = name.replace(junk, "")
    name = name.split("@")[0].strip()
    return " ".join(name.split())


def _views(p: HostProfile) -> tuple[bool, str | None, frozenset[str], frozenset[str], dict[str, str]]:
    """(eVMCS ok, reason, unfiltered, guest, state per feature) with resolve.compute_host_views."""
    v = compute_host_views(p, pv_perf_global_ctrl=False)
    states: dict[str, str] = {}
    for name in registry().features:
        if name not in v.kvm:
            states[name] = "nrp"
        elif not v.evmcs_ok:
            states[name] = "nev"
        elif name in v.guest:
            states[name] = "vis"
        else:
            layer = v.hidden.get(name, ("evmcs-filter", ""))[0]
            states[name] = "prf" if layer == "perf-cpuid-gate" else "flt"
    return v.evmcs_ok, v.evmcs_reason, v.kvm, v.guest, states


def _operator_label(prof: HostProfile, hosts: int) -> str:
    """``Skylake 5.10 nested=0 ×1,234``: generation (or a short model name), kernel series, knobs, hosts."""
    knobs = []
    if not prof.nested:
        knobs.append("nested=0")
    if not prof.kvm_hyperv:
        knobs.append("KVM_HYPERV=n")
    cpu = generation(prof) or _short_cpu(prof)
    return " ".join([cpu, f"{prof.version.major}.{prof.version.minor}", *knobs, f"×{hosts:,}"])


def build_groups(fleet: Fleet) -> list[Group]:
    """Groups, largest first, with their views (computed once per fingerprint) and operator labels (made
    unique with ``#2``, ``#3`` where two groups would read alike)."""
    out: list[Group] = []
    seen: dict[str, int] = {}
    for i, g in enumerate(fleet.groups()):
        fp, prof, hosts = g.fingerprint, g.profile, g.hosts
        ok, reason, kvm, guest, states = _views(prof)
        label = _operator_label(prof, len(hosts))
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} #{seen[label]}"
        detail = (f"{_short_cpu(prof)} · kernel {prof.kernel} · {len(hosts):,} host{'s' if len(hosts) != 1 else ''}"
                  + ("" if prof.nested else " · nested=0") + ("" if prof.kvm_hyperv else " · KVM_HYPERV=n"))
        out.append(Group(gid=f"G{i + 1}", fingerprint=fp, profile=prof, hosts=hosts, label=label, detail=detail,
                         era=prof.era_label, evmcs_ok=ok, reason=reason, unfiltered=kvm, guest=guest, states=states))
    return out


def partition(groups: Sequence[Group]) -> tuple[list[list[Group]], list[Group]]:
    """Classes of eVMCS-capable groups with identical guest-visible sets (largest first), and the rest."""
    classes: dict[frozenset[str], list[Group]] = {}
    incapable: list[Group] = []
    for g in groups:
        if not g.evmcs_ok:
            incapable.append(g)
            continue
        classes.setdefault(g.guest, []).append(g)
    ordered = sorted(classes.values(), key=lambda cl: (-sum(len(g.hosts) for g in cl), cl[0].gid))
    return ordered, incapable


def design_matrix(groups: Sequence[Group], max_groups: int) -> dict[str, Any] | None:
    """Verdict matrices per design for the largest ``max_groups`` eVMCS-capable groups (``None``: module absent)."""
    chosen = [g for g in groups if g.evmcs_ok][:max_groups]
    reps = [dataclasses.replace(g.profile, name=g.gid) for g in chosen]
    ids = [g.gid for g in chosen]
    cells: dict[str, dict[str, dict[str, Any]]] = {d: {} for d in DESIGNS}
    totals: dict[str, dict[str, int]] = {}
    if reps:
        cmp = compare_designs(reps)
        totals = cmp.totals
        for row in cmp.rows:
            src, dst = row.source[0], row.destination[0]
            for d in DESIGNS:
                v = row.verdicts.get(d)
                if v is None:
                    cells[d][f"{src}>{dst}"] = {"v": "source-fails", "why": row.source_fails.get(d, "")}
                else:
                    cells[d][f"{src}>{dst}"] = {"v": v.verdict, "wrong": bool(v.wrong), "why": v.reason}
    # Totals weighted by host counts: every ordered pair of hosts, not of groups.
    weight = {g.gid: len(g.hosts) for g in chosen}
    host_totals: dict[str, dict[str, int]] = {}
    for d in DESIGNS:
        t = {"fine": 0, "blocked": 0, "unsafe": 0, "source-fails": 0, "wrong": 0}
        for key, cell in cells[d].items():
            s, e = key.split(">")
            w = weight[s] * (weight[e] if s != e else weight[s] - 1)
            t[cell["v"]] += w
            if cell.get("wrong"):
                t["wrong"] += w
        host_totals[d] = t
    # Hosts and groups: for each verdict, the source groups (and their hosts) that have at least one
    # destination group with that verdict; host pairs are kept for the "pairs" details only.
    by_source: dict[str, dict[str, dict[str, int]]] = {}
    for d in DESIGNS:
        counts: dict[str, dict[str, int]] = {v: {"groups": 0, "hosts": 0}
                                              for v in ("fine", "blocked", "unsafe", "source-fails")}
        for s in ids:
            for v in {cells[d][f"{s}>{e}"]["v"] for e in ids if f"{s}>{e}" in cells[d]}:
                counts[v]["groups"] += 1
                counts[v]["hosts"] += weight[s]
        by_source[d] = counts
    return {"designs": list(DESIGNS), "groups": ids, "labels": {g.gid: g.label for g in chosen},
            "cells": cells, "group_pair_totals": totals, "source_totals": by_source,
            "host_pair_totals": host_totals, "omitted": max(0, sum(1 for g in groups if g.evmcs_ok) - len(ids))}


# =========================================================================== HTML

_CSS = """
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:18px 24px;color:#1d2329;
background:#fbfbfc}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:26px 0 6px;border-bottom:1px solid #d0d5db;padding-bottom:3px}
.meta{color:#5a6570}table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;vertical-align:top}
tbody tr:nth-child(odd){background:#f0f2f5}.num{text-align:right;font-variant-numeric:tabular-nums}
.panels{display:flex;flex-wrap:wrap;gap:18px}
.panel{background:#fff;border:1px solid #d0d5db;padding:8px;overflow-x:auto}
.panel h3{margin:0 0 4px;font-size:14px}.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:12px;height:12px;vertical-align:-2px;margin-right:4px;border:1px solid #888}
svg text{font-family:inherit}#tip{position:fixed;pointer-events:none;background:#1d2329;color:#fff;padding:4px 7px;
border-radius:3px;font-size:12px;display:none;max-width:520px;z-index:9}.gid{font-weight:600}
.designs{display:flex;flex-wrap:wrap;gap:14px}.bad{color:#c62828;font-weight:600}.ok{color:#2e7d32;font-weight:600}
dl.key{display:grid;grid-template-columns:max-content 1fr;gap:3px 10px;margin:6px 0 10px;max-width:1100px}
dl.key dt{white-space:nowrap;font-weight:600}dl.key dd{margin:0;color:#3a4550}
.panel .sub{color:#5a6570;font-size:12px;margin:0 0 4px;max-width:560px}.uniform{max-width:1100px;color:#3a4550}
code.cpu{display:block;max-width:1100px;white-space:pre-wrap;word-break:break-all;user-select:all;background:#eef1f4;
padding:3px 5px;font-size:11px}.answer{margin-top:3px}ul.reasons{margin:2px 0;padding-left:18px}
details.why li:target{background:#fff3c4}
"""

_JS = """
(function(){
  var root=document.documentElement;
  function fail(e){root.setAttribute('data-rendered','error');console.error('report error: '+(e&&e.message||e));}
  window.addEventListener('error',function(ev){fail(ev.error||ev.message);});
  try{
    var data=JSON.parse(document.getElementById('report-data').textContent);
    var tip=document.getElementById('tip');
    var cells=document.querySelectorAll('[data-tip]');
    if(cells.length===0){throw new Error('no cells rendered');}
    document.addEventListener('mousemove',function(ev){
      var t=ev.target&&ev.target.getAttribute&&ev.target.getAttribute('data-tip');
      if(t){tip.textContent=t;tip.style.display='block';tip.style.left=(ev.clientX+12)+'px';tip.style.top=(ev.clientY+12)+'px';}
      else{tip.style.display='none';}
    });
    var n=document.getElementById('summary-groups');
    if(n){n.textContent=String(data.groups);}
    window.__reportOk=true;
    root.setAttribute('data-rendered','ok');
  }catch(e){fail(e);}
})();
"""


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _label_px(labels: Sequence[str], size: float = 10) -> int:
    """Room for the longest label at ``size`` px (about 0.6 em a character)."""
    return 8 + int(0.6 * size * max((len(x) for x in labels), default=4))


def _heatmap_svg(groups: Sequence[Group], features: Sequence[str], view: str) -> str:
    """One panel: rows = features, columns = groups, each column labelled as an operator knows the group
    (generation, kernel, knobs, hosts); the group id and the long form are the label's tooltip."""
    n = max(1, len(groups))
    cw = 20 if n <= 30 else 14 if n <= 60 else 11
    ch = 15
    top = _label_px([g.label for g in groups])
    left = 8 + int(6.6 * max((len(f) for f in features), default=8))
    width = left + cw * len(groups) + 6
    height = top + ch * len(features) + 4
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(view)} heatmap">']
    for j, g in enumerate(groups):
        x = left + j * cw + cw / 2
        tip = _e(f"{g.gid}: {g.detail}")
        out.append(f'<text x="{x + 3:.1f}" y="{top - 4}" font-size="10" class="glabel" '
                   f'transform="rotate(-90 {x + 3:.1f} {top - 4})" data-tip="{tip}"><title>{tip}</title>'
                   f'{_e(g.label)}</text>')
    for i, f in enumerate(features):
        y = top + i * ch
        out.append(f'<text x="{left - 5}" y="{y + ch - 4}" font-size="11" text-anchor="end">{_e(f)}</text>')
        for j, g in enumerate(groups):
            st = g.states[f]
            if view == "unfiltered":
                st = "nrp" if f not in g.unfiltered else "vis"
            out.append(f'<rect x="{left + j * cw}" y="{y}" width="{cw - 2}" height="{ch - 2}" '
                       f'fill="{STATES[st][1]}" data-tip="{_e(f"{g.label} ({g.gid}) | {f}: {STATES[st][0]}")}"/>')
    out.append("</svg>")
    return "".join(out)


def _legend(items: dict[str, tuple[str, str]], keys: Sequence[str], helps: dict[str, str] | None = None,
            extra: str = "") -> str:
    if helps is not None:
        return '<dl class="key">' + "".join(
            f'<dt><i class="sw" style="background:{items[k][1]}"></i>{_e(items[k][0])}</dt><dd>{_e(helps[k])}</dd>'
            for k in keys) + extra + "</dl>"
    return '<div class="legend">' + "".join(
        f'<span><i class="sw" style="background:{items[k][1]}"></i>{_e(items[k][0])}</span>' for k in keys) + \
        extra + "</div>"


def _cell_id(design: str, src: str, dst: str) -> str:
    return f"why-{design}-{src}-{dst}"


def _design_svg(design: str, dm: dict[str, Any]) -> str:
    ids: list[str] = dm["groups"]
    labels: dict[str, str] = dm["labels"]
    cells: dict[str, dict[str, Any]] = dm["cells"][design]
    c = 22 if len(ids) <= 16 else 15
    fs = 10 if c >= 22 else 8.5
    room = _label_px([labels[g] for g in ids], fs)
    left, top = room + 16, room + 16
    size_w = left + c * len(ids) + 6
    size_h = top + c * len(ids) + 6
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size_w}" height="{size_h}" '
           f'viewBox="0 0 {size_w} {size_h}" role="img" aria-label="{_e(design)} migration matrix">',
           f'<text x="{left}" y="11" font-size="11" fill="#5a6570">to (destination) &#8594;</text>',
           f'<text x="11" y="{top + 4}" font-size="11" fill="#5a6570" transform="rotate(90 11 {top + 4})">'
           "from (source) &#8594;</text>"]
    for j, gid in enumerate(ids):
        x = left + j * c + c / 2
        out.append(f'<text x="{x + 3:.1f}" y="{top - 4}" font-size="{fs}" class="glabel" '
                   f'transform="rotate(-90 {x + 3:.1f} {top - 4})"><title>{_e(gid)}</title>{_e(labels[gid])}</text>')
        out.append(f'<text x="{left - 4}" y="{top + j * c + c / 2 + 3.5:.1f}" font-size="{fs}" text-anchor="end" '
                   f'class="glabel"><title>{_e(gid)}</title>{_e(labels[gid])}</text>')
    for i, src in enumerate(ids):
        for j, dst in enumerate(ids):
            cell = cells.get(f"{src}>{dst}")
            v = cell["v"] if cell else "self"
            tip = f"{design}: {src} -> {dst}: {VERDICTS[v][0]}"
            if cell and cell.get("why"):
                tip += f" ({cell['why']})"
            if cell and cell.get("wrong"):
                tip += " [WRONG]"
            stroke = ' stroke="#000" stroke-width="2"' if cell and cell.get("wrong") else ""
            rect = (f'<rect x="{left + j * c + 1}" y="{top + i * c + 1}" width="{c - 3}" height="{c - 3}" '
                    f'fill="{VERDICTS[v][1]}"{stroke} data-tip="{_e(tip)}"/>')
            if v in ("blocked", "unsafe"):   # a link to the features and layer that decide it
                rect = f'<a href="#{_cell_id(design, src, dst)}">{rect}</a>'
            out.append(rect)
            if v == "self":
                out.append(f'<line x1="{left + j * c + 3}" y1="{top + i * c + c - 3}" x2="{left + j * c + c - 3}" '
                           f'y2="{top + i * c + 3}" stroke="#b0b6bd" stroke-width="1"/>')
    out.append("</svg>")
    return "".join(out)


def _why_list(dm: dict[str, Any]) -> str:
    """The target of each blocked or unsafe cell's link: the features and the layer that decide it."""
    labels: dict[str, str] = dm["labels"]
    out = []
    for d in dm["designs"]:
        items = []
        for key, cell in dm["cells"][d].items():
            if cell["v"] not in ("blocked", "unsafe"):
                continue
            src, dst = key.split(">")
            items.append(f'<li id="{_cell_id(d, src, dst)}"><b>{_e(cell["v"])}</b>: {_e(labels[src])} &#8594; '
                         f'{_e(labels[dst])}: {_e(cell.get("why", ""))}</li>')
        if items:
            out.append(f"<details class=why><summary>{_e(d)}: {len(items)} blocked or unsafe group pairs, "
                       f"with the features and layer that decide each</summary><ul>{''.join(items)}</ul></details>")
    return "".join(out)


def _pool_answers(fleet: Fleet, model: GuestModel) -> str:
    """Each inventory pool's answer (``fleet plan``), pools with the same answer in one row."""
    plan = plan_fleet(fleet, model, upgrades=False)
    rows: dict[str, list[PoolPlan]] = {}
    for p in plan.pools:
        neg = p.negotiation
        key = cpu_string(neg).strip() if neg is not None and neg.ok else ""
        rows.setdefault(key, []).append(p)
    out = ["<h2>Pool answers</h2><p class=meta>Each inventory pool's negotiated guest configuration (model max, "
           "design shipped, for a released QEMU), as <code>qemu-evmcs fleet plan</code> gives it; pools with the "
           "same answer share a row. Select the line to copy it.</p><table><thead><tr><th>pools</th>"
           "<th class=num>hosts</th><th>answer</th></tr></thead><tbody>"]
    for key, pools in sorted(rows.items(), key=lambda kv: -sum(p.host_count for p in kv[1])):
        names = ", ".join(p.name for p in pools[:12]) + (f" and {len(pools) - 12} more" if len(pools) > 12 else "")
        n = sum(p.host_count for p in pools)
        if key:
            answer = f'-cpu <code class="cpu">{_e(key)}</code>'
        else:
            first = pools[0]
            why = first.negotiation.error if first.negotiation is not None else \
                "no host of the pool can run an eVMCS guest"
            answer = f'<span class=bad>no answer</span>: {_e(why)}'
        parts = [f"<tr><td>{_e(names)}</td><td class=num>{n:,}</td><td>{answer}"]
        left = {x.reason for p in pools for x in p.left_out}
        if left:
            parts.append("<ul class=reasons>" + "".join(f"<li>left out: {_e(r)}</li>" for r in sorted(left)) + "</ul>")
        out.append("".join(parts) + "</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(fleet: Fleet, *, max_design_groups: int = DEFAULT_MAX_DESIGN_GROUPS,
                title: str = "qemu-evmcs fleet report") -> str:
    """The whole report as one HTML string."""
    groups = build_groups(fleet)
    reg = registry()
    shown = [f for f in reg.features if any(f in g.unfiltered for g in groups)]
    if not shown:
        shown = list(reg.features)[:1]
    classes, incapable = partition(groups)
    dm = design_matrix(groups, max_design_groups)
    hosts = fleet.host_count
    # Rows that differ carry the information. A feature is drawn unless every group that can run an eVMCS
    # guest shows it in both views and every other group either reports it too or reports no VMX at all
    # (nested=0, AMD): those are listed under the heatmap instead.
    def _uniform(f: str) -> bool:
        for g in groups:
            if g.evmcs_ok:
                if f not in g.unfiltered or g.states[f] != "vis":
                    return False
            elif g.unfiltered and f not in g.unfiltered:
                return False
        return True

    uniform = [f for f in shown if _uniform(f)]
    varying = [f for f in shown if f not in uniform]
    rows = varying or shown
    parts: list[str] = []
    parts.append(f"<!DOCTYPE html><html lang=\"en\" data-rendered=\"pending\"><head><meta charset=\"utf-8\">"
                 f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_e(title)}</title>"
                 f"<style>{_CSS}</style></head><body><div id=\"tip\"></div>")
    npools = len(set(fleet.pools.values()))
    parts.append(f"<h1>{_e(title)}</h1><p class=\"meta\">{hosts:,} hosts"
                 + (f" in {npools:,} pools" if npools else "")
                 + f", <span id=\"summary-groups\">{len(groups)}</span> distinct host groups, from "
                 f"{_e(fleet.source)}; generated {_e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}. Hosts with identical "
                 f"profiles (CPU, kernel, KVM settings, VMX MSRs) form one group, labelled by CPU generation, "
                 f"kernel series, KVM knobs and host count (×N); every chart has one column per group. Hover a "
                 f"label or cell for details; click a blocked or unsafe cell for what decides it.</p>")
    # 1. groups: the key to the charts' columns
    parts.append("<h2>Host groups</h2><details open><summary>one row per distinct profile, largest first"
                 "</summary><table><thead><tr><th>group</th><th>CPU · kernel release · hosts</th>"
                 "<th>eVMCS era</th><th class=num>KVM features</th><th>eVMCS guest features</th>"
                 "<th>example hosts</th></tr></thead><tbody>")
    for g in groups:
        ex = ", ".join(g.hosts[:3]) + (f" … (+{len(g.hosts) - 3:,})" if len(g.hosts) > 3 else "")
        guest = str(len(g.guest)) if g.evmcs_ok else f'<span class="bad">no eVMCS</span>: {_e(g.reason or "")}'
        parts.append(f"<tr><td class=gid title=\"{_e(g.gid)}\">{_e(g.label)}</td><td>{_e(g.detail)}</td>"
                     f"<td>{_e(g.era)}</td><td class=num>{len(g.unfiltered)}</td><td>{guest}</td>"
                     f"<td>{_e(ex)}</td></tr>")
    parts.append("</tbody></table></details>")
    # 2. heatmap
    parts.append("<h2>VMX feature visibility by host group</h2><p class=meta>One row per VMX feature, one column "
                 "per host group. Left: what QEMU and libvirt see (KVM's system-fd MSRs). Right: what the L1 "
                 "Hyper-V guest reads with Enlightened VMCS on (guest CPUID 0x4000000A.EBX bit 0 clear, as QEMU "
                 "leaves it). A row that is green on the left and not on the right is a feature the guest "
                 "silently loses. The colours:</p>")
    parts.append(_legend(STATES, list(STATES), STATE_HELP))
    sub = (f"{len(rows)} features that differ between groups or views"
           + (f"; {len(uniform)} that every group sees alike are listed below the charts" if uniform and varying
              else ""))
    parts.append('<div class="panels"><div class="panel" id="heat-unfiltered"><h3>unfiltered (QEMU / libvirt view)'
                 f"</h3><p class=sub>{_e(sub)}</p>" + _heatmap_svg(groups, rows, "unfiltered")
                 + '</div><div class="panel" id="heat-evmcs"><h3>eVMCS-filtered (L1 Hyper-V guest view)</h3>'
                 f"<p class=sub>{_e(sub)}</p>" + _heatmap_svg(groups, rows, "evmcs") + "</div></div>")
    if uniform and varying:
        parts.append(f'<details class="uniform"><summary>{len(uniform)} features not drawn: visible in both views on '
                     "every group that can run an eVMCS guest (and reported on every other group with nested VMX)"
                     "</summary><p>" + _e(", ".join(uniform)) + "</p></details>")
    # 3. partition
    parts.append("<h2>Pool partition</h2><p class=meta>Groups whose eVMCS guests see identical VMX feature sets can "
                 "share a migration pool (a guest using everything it sees migrates freely inside a class).</p>"
                 "<table><thead><tr><th>pool class</th><th class=num>hosts</th><th class=num>features</th>"
                 "<th>groups</th></tr></thead><tbody>")
    model = max_model()
    for k, cl in enumerate(classes):
        n = sum(len(g.hosts) for g in cl)
        neg = negotiate(model, [g.profile for g in cl], "pv-cpuid")
        answer = (f'<div class="answer">-cpu <code class="cpu">{_e(cpu_string(neg).strip())}</code></div>'
                  if neg.ok else f'<div class="answer bad">no answer: {_e(neg.error)}</div>')
        parts.append(f"<tr><td class=gid>P{k + 1}</td><td class=num>{n:,}</td><td class=num>{len(cl[0].guest)}</td>"
                     f"<td>{_e(', '.join(g.label for g in cl))}{answer}</td></tr>")
    if incapable:
        n = sum(len(g.hosts) for g in incapable)
        reasons: dict[str, list[Group]] = {}
        for g in incapable:   # one line per distinct reason, with the groups it applies to
            text = (g.reason or "").split(": ", 1)[1] if (g.reason or "").startswith("host ") else (g.reason or "")
            reasons.setdefault(text, []).append(g)
        why = "".join(f"<li>{_e(r)}: {_e(', '.join(g.label for g in gs))} "
                      f"({sum(len(g.hosts) for g in gs):,} hosts)</li>" for r, gs in reasons.items())
        parts.append(f"<tr><td class=bad>none</td><td class=num>{n:,}</td><td class=num>–</td><td>cannot run an "
                     f"eVMCS guest:<ul class=reasons>{why}</ul></td></tr>")
    parts.append("</tbody></table>")
    if npools:
        parts.append(_pool_answers(fleet, model))
    # 4. designs
    parts.append("<h2>Design comparison: migration between groups</h2>")
    if dm is None or not dm["groups"]:
        parts.append("<p class=meta>No eVMCS-capable groups (or compare-designs is unavailable).</p>")
    else:
        left_out = [g.label for g in incapable]
        note = (f" The {dm['omitted']} smallest eVMCS-capable groups are left out (compare-designs is quadratic)."
                if dm["omitted"] else "")
        if left_out:
            note += f" Groups that cannot run an eVMCS guest ({', '.join(left_out)}) have no row or column."
        parts.append("<p class=meta>For each design of the 2022 KVM thread: a guest is configured as the design "
                     "would configure it on the source group (row), then live-migrated to the destination group "
                     "(column). What the cell colour says about that migration:</p>")
        outline = ('<dt><i class="sw" style="background:#c62828;outline:2px solid #000"></i>black outline</dt>'
                   "<dd>a wrong verdict: an unsafe migration allowed, or a safe one blocked for no reason</dd>")
        parts.append(_legend(VERDICTS, ["fine", "blocked", "unsafe", "source-fails"],
                             {"fine": "the migration goes through and the guest keeps every VMX feature it saw",
                              "blocked": "QEMU/libvirt refuse the migration up front; the guest keeps running on "
                                         "the source",
                              "unsafe": "the migration goes through, but the guest loses VMX features it was "
                                        "using: it may crash on the destination",
                              "source-fails": "the guest as this design configures it does not start on the "
                                              "source group"}, outline))
        parts.append(f"<p class=meta>{_e(note.strip())}</p>" if note else "")
        parts.append("<table><thead><tr><th>design</th><th>what it is</th><th class=num>allowed</th>"
                     "<th class=num>blocked</th><th class=num>unsafe</th><th class=num>no start</th>"
                     "<th class=num>wrong</th></tr></thead><tbody>")
        for d in dm["designs"]:
            t = dm["source_totals"][d]
            wrong_pairs = dm["host_pair_totals"][d]["wrong"]
            wrong = f'<span class="{"bad" if wrong_pairs else "ok"}">{"yes" if wrong_pairs else "none"}</span>'

            def cell(v: str, t: dict[str, dict[str, int]] = t) -> str:
                return f"<td class=num>{t[v]['hosts']:,} hosts<br><small>{t[v]['groups']} groups</small></td>"
            parts.append(f"<tr><td class=gid>{_e(d)}</td><td>{_e(DESIGN_HELP.get(d, ''))}</td>"
                         f"{cell('fine')}{cell('blocked')}{cell('unsafe')}{cell('source-fails')}"
                         f"<td class=num>{wrong}</td></tr>")
        pairs = "".join(f"<li>{_e(d)}: " + ", ".join(f"{v} {n:,}" for v, n in dm["host_pair_totals"][d].items())
                        + "</li>" for d in dm["designs"])
        parts.append("</tbody></table><p class=meta>Each count is the source hosts (and their groups) whose guests "
                     "have at least one destination group with that verdict.</p><details><summary>the same in "
                     f"ordered host pairs</summary><ul>{pairs}</ul></details><div class=designs>")
        for d in dm["designs"]:
            parts.append(f'<div class="panel"><h3>{_e(d)}</h3>{_design_svg(d, dm)}</div>')
        parts.append("</div>")
        parts.append(_why_list(dm))
    data = {"hosts": hosts, "groups": len(groups), "features": len(shown), "drawn_features": len(rows),
            "classes": len(classes), "designs": dm["designs"] if dm else []}
    blob = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    parts.append(f'<script type="application/json" id="report-data">{blob}</script><script>{_JS}</script>'
                 "</body></html>\n")
    return "".join(parts)


def write_report(text: str, out: str, *, force: bool = False) -> None:
    """Write through the one output primitive (atomic; a regular file only; never over anything without ``force``)."""
    write_output(out, text, force=force, prefix=".report-", mode=0o644)  # a report is for sharing: world-readable


def make_report(hosts: Sequence[str] | Fleet, out: str, *, force: bool = False,
                max_design_groups: int = DEFAULT_MAX_DESIGN_GROUPS, progress: bool | None = None) -> Fleet:
    """Load ``hosts`` (files, directories or one inventory database; or an already selected fleet), render
    and write ``out``."""
    check_output_target(out, force=force)  # before the (long) load: refuse early
    fleet = hosts if isinstance(hosts, Fleet) else load_fleet(list(hosts), progress=progress)
    write_report(render_html(fleet, max_design_groups=max_design_groups), out, force=force)
    return fleet
