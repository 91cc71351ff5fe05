"""Render a :class:`~qemu_evmcs.negotiate.Negotiation`: QEMU ``-cpu`` string, libvirt XML fragment, JSON, text.

- ``-cpu``: ``BASE,vmx=on,<vmx-* changes>,hv-...=on,hv-evmcs=on[,hv-evmcs-perf-global-ctrl=on],enforce=on``.
  vmx-* properties are written as changes against the QEMU base model's defaults when the snapshot knows the
  base (``prop=on`` / ``-prop``), otherwise every property explicitly. ``enforce=on`` makes a host that lacks
  a negotiated feature refuse to start (a blocked migration) instead of silently dropping it.
- libvirt: ``<cpu mode='custom' match='exact'>`` with ``<feature policy='require|disable'/>`` under the
  registry's libvirt names, and ``<features><hyperv mode='custom'>``. Options libvirt cannot express are
  written as XML comments.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from .msrval import hex64
from .negotiate import PERF_OPTION, STRATEGIES, Negotiation, names_text, qemu_property_features
from .registry import Registry, registry

#: hv-* flag -> libvirt <hyperv> child (None: not a <hyperv> child; see _LIBVIRT_ELSEWHERE).
LIBVIRT_HV: Mapping[str, str] = {
    "hv-relaxed": "relaxed", "hv-vapic": "vapic", "hv-vpindex": "vpindex", "hv-runtime": "runtime",
    "hv-synic": "synic", "hv-stimer": "stimer", "hv-reset": "reset", "hv-frequencies": "frequencies",
    "hv-reenlightenment": "reenlightenment", "hv-tlbflush": "tlbflush", "hv-ipi": "ipi", "hv-evmcs": "evmcs",
    "hv-avic": "avic", "hv-apicv": "avic", "hv-emsr-bitmap": "emsr_bitmap", "hv-xmm-input": "xmm_input",
}
#: Flags libvirt expresses as a sub-element of another <hyperv> child.
LIBVIRT_HV_SUB: Mapping[str, tuple[str, str]] = {
    "hv-tlbflush-direct": ("tlbflush", "direct"), "hv-tlbflush-ext": ("tlbflush", "extended"),
    "hv-stimer-direct": ("stimer", "direct"),
}
#: QEMU's order of hv-* properties (qemu.md §1.6).
HV_ORDER: tuple[str, ...] = (
    "hv-relaxed", "hv-vapic", "hv-time", "hv-crash", "hv-reset", "hv-vpindex", "hv-runtime", "hv-synic",
    "hv-stimer", "hv-frequencies", "hv-reenlightenment", "hv-tlbflush", "hv-evmcs", "hv-ipi", "hv-stimer-direct",
    "hv-avic", "hv-apicv", "hv-emsr-bitmap", "hv-xmm-input", "hv-tlbflush-ext", "hv-tlbflush-direct", "hv-syndbg",
)


def _hv_sorted(flags: tuple[str, ...]) -> list[str]:
    order = {n: i for i, n in enumerate(HV_ORDER)}
    return sorted(flags, key=lambda f: (order.get(f, len(order)), f))


def qemu_vmx_props(neg: Negotiation, reg: Registry | None = None) -> list[tuple[str, bool]]:
    """(QEMU property, on) for every vmx-* property the -cpu string must state, in registry order."""
    reg = reg or registry()
    assert neg.config is not None
    want = neg.config.vmx
    base = neg.model.base_vmx
    out: list[tuple[str, bool]] = []
    seen = set()
    for f in reg.features.values():
        prop = f.qemu
        if prop is None or prop in seen:
            continue
        seen.add(prop)
        bits = [b.name for b in reg.qemu_bits(prop)]
        on = all(b in want for b in bits)
        if base is not None:
            base_on = all(b in base for b in bits)
            if on == base_on:
                continue
        out.append((prop, on))
    return out


def cpu_string(neg: Negotiation) -> str:
    """The QEMU ``-cpu`` argument of a successful negotiation."""
    assert neg.ok and neg.config is not None
    cfg = neg.config
    parts = [cfg.base, "vmx=on"]
    for prop, on in qemu_vmx_props(neg):
        parts.append(f"{prop}=on" if on else f"-{prop}")
    parts += [f"{flag}=on" for flag in _hv_sorted(cfg.hyperv)]
    if cfg.pv_perf_global_ctrl:
        parts.append(f"{PERF_OPTION}=on")
    if cfg.design == "revision" and cfg.revision is not None:
        parts.append(f"x-hv-evmcs-revision={cfg.revision}")
    parts.append("enforce=on")
    return ",".join(parts)


def qemu_lacks(neg: Negotiation) -> list[str]:
    """Options of the -cpu string that real QEMU does not have."""
    out = []
    if neg.config and neg.config.pv_perf_global_ctrl:
        out.append(f"{PERF_OPTION}=on: real QEMU never sets CPUID 0x4000000A.EBX bit 0 (proposed plugin option)")
    if neg.config and neg.config.design == "revision" and neg.config.revision is not None:
        out.append("x-hv-evmcs-revision: KVM_CAP_HYPERV_ENLIGHTENED_VMCS2 never shipped (simulation only)")
    if neg.config and neg.config.design == "vmx-msrs":
        out.append("KVM_GET_EVMCS_VMX_MSRS never shipped: this list assumes the design-(b) kernel filter")
    return out


def _indent(elem: ET.Element) -> str:
    ET.indent(elem, space="  ")
    return ET.tostring(elem, encoding="unicode")


def libvirt_xml(neg: Negotiation, reg: Registry | None = None) -> str:
    """A libvirt domain XML fragment: ``<cpu>`` and ``<features>`` (plus ``<clock>``/``<devices>`` if needed)."""
    reg = reg or registry()
    assert neg.ok and neg.config is not None
    cfg = neg.config
    cpu = ET.Element("cpu", {"mode": "custom", "match": "exact"})
    model = ET.SubElement(cpu, "model", {"fallback": "forbid"})
    model.text = cfg.base
    ET.SubElement(cpu, "feature", {"policy": "require", "name": "vmx"})
    unexpressible: list[str] = []
    for prop, on in qemu_vmx_props(neg, reg):
        for bit in reg.qemu_bits(prop):
            if bit.libvirt is None:
                unexpressible.append(f"{prop}={'on' if on else 'off'}")
                continue
            ET.SubElement(cpu, "feature", {"policy": "require" if on else "disable", "name": bit.libvirt})
    features = ET.Element("features")
    hyperv = ET.SubElement(features, "hyperv", {"mode": "custom"})
    children: dict[str, ET.Element] = {}
    extra: list[ET.Element] = []
    for flag in _hv_sorted(cfg.hyperv):
        if flag in LIBVIRT_HV:
            tag = LIBVIRT_HV[flag]
            if tag not in children:
                children[tag] = ET.SubElement(hyperv, tag, {"state": "on"})
        elif flag in LIBVIRT_HV_SUB:
            parent, sub = LIBVIRT_HV_SUB[flag]
            if parent not in children:
                children[parent] = ET.SubElement(hyperv, parent, {"state": "on"})
            ET.SubElement(children[parent], sub, {"state": "on"})
        elif flag == "hv-time":
            clock = ET.Element("clock", {"offset": "utc"})
            ET.SubElement(clock, "timer", {"name": "hypervclock", "present": "yes"})
            extra.append(clock)
        elif flag == "hv-crash":
            devices = ET.Element("devices")
            ET.SubElement(devices, "panic", {"model": "hyperv"})
            extra.append(devices)
        else:
            unexpressible.append(f"{flag}=on")
    if cfg.pv_perf_global_ctrl:
        unexpressible.append(f"{PERF_OPTION}=on (CPUID 0x4000000A.EBX bit 0; no libvirt element, no real QEMU "
                             f"option)")
    if cfg.design == "revision" and cfg.revision is not None:
        unexpressible.append(f"x-hv-evmcs-revision={cfg.revision} (never shipped)")
    out = [_indent(cpu), _indent(features)] + [_indent(e) for e in extra]
    if unexpressible:
        comment = ET.Comment(" not expressible in libvirt XML, pass to QEMU directly: " + "; ".join(unexpressible)
                             .replace("--", "- -") + " ")
        out.insert(0, ET.tostring(comment, encoding="unicode"))
    return "\n".join(out) + "\n"


def negotiation_json(neg: Negotiation) -> dict[str, Any]:
    """Plain data for ``--json`` (key order documented: ok, strategy, model, hosts, then the answer)."""
    reg = registry()
    out: dict[str, Any] = {
        "ok": neg.ok,
        "strategy": neg.strategy,
        "model": neg.model.name,
        "hosts": [{"name": n, "kernel": g.profile.kernel, "era": era, "fingerprint": g.fingerprint}
                  for g, era in ((g, g.profile.era.id) for g in neg.host_groups()) for n in g.hosts],
    }
    if not neg.ok or neg.config is None:
        out["error"] = neg.error
        out["notes"] = list(neg.notes)
        return out
    cfg = neg.config
    order = [f.name for f in reg.features.values()]
    requested = set(neg.model.vmx) & qemu_property_features(reg)
    out.update({
        "evmcs_version": list(cfg.evmcs_version),
        "pv_perf_global_ctrl": cfg.pv_perf_global_ctrl,
        "revision": cfg.revision,
        "vmx_on": [n for n in order if n in cfg.vmx],
        "vmx_off": [n for n in order if n in requested and n not in cfg.vmx],
        "hyperv": _hv_sorted(cfg.hyperv),
        "cpu": cpu_string(neg),
        "qemu_lacks": qemu_lacks(neg),
        "libvirt": libvirt_xml(neg),
        "dropped": [d.to_json() for d in neg.drops],
        "hv_dropped": [d.to_json() for d in neg.hv_dropped],
        "guest_visible_msrs": {n: hex64(neg.guest_msrs[n]) for n in reg.msr_names() if n in neg.guest_msrs},
        "notes": list(neg.notes),
    })
    return out


def negotiation_text(neg: Negotiation) -> str:
    """A short human report."""
    groups = neg.host_groups()
    head = f"strategy {neg.strategy}: model {neg.model.name} on {len(neg.hosts)} host(s)"
    if all(len(g.hosts) == 1 for g in groups):
        lines = [f"{head}: " + ", ".join(f"{g.hosts[0]} ({g.profile.kernel}, era {g.profile.era.id})"
                                         for g in groups)]
    else:   # a fleet: one line per distinct host profile, not per host
        lines = [f"{head}, {len(groups)} distinct profile(s):"]
        lines += [f"  {names_text(g.hosts, 3)}: {g.profile.kernel}, era {g.profile.era.id} ({len(g.hosts):,} "
                  f"host{'s' if len(g.hosts) != 1 else ''})" for g in groups]
    if not neg.ok or neg.config is None:
        lines.append(f"  NO SAFE ANSWER: {neg.error}")
        return "\n".join(lines) + "\n"
    cfg = neg.config
    lines.append(f"  eVMCS version [{cfg.evmcs_version[0]}..{cfg.evmcs_version[1]}]"
                 + (f", revision {cfg.revision}" if cfg.revision is not None else "")
                 + f"; CPUID 0x4000000A.EBX bit 0 {'set' if cfg.pv_perf_global_ctrl else 'clear'}")
    lines.append(f"  guest sees {len(neg.guest_features)} VMX features, identical on every host")
    causes: dict[str, list[str]] = {}
    for d in neg.drops:
        causes.setdefault(d.cause, []).append(d.feature)
    for cause, feats in causes.items():
        lines.append(f"  off ({cause}): {', '.join(dict.fromkeys(feats))}")
    for d in neg.hv_dropped:
        lines.append(f"  {d.feature} dropped: unsupported on {names_text(d.hosts)}")
    for note in neg.notes:
        lines.append(f"  note: {note}")
    for lack in qemu_lacks(neg):
        lines.append(f"  real QEMU lacks: {lack}")
    lines.append(f"  -cpu {cpu_string(neg)}")
    return "\n".join(lines) + "\n"


def compare_strategies(results: Mapping[str, Negotiation]) -> dict[str, dict[str, Any]]:
    """Per strategy: what it allows (guest features no other strategy shows), blocks (features another shows
    but it hides) and gets wrong."""
    feats = {s: n.guest_features for s, n in results.items()}
    union = frozenset().union(*feats.values()) if feats else frozenset()
    out: dict[str, dict[str, Any]] = {}
    order = [f.name for f in registry().features.values()]
    for s in STRATEGIES:
        if s not in results:
            continue
        n = results[s]
        others = frozenset().union(*(v for k, v in feats.items() if k != s)) if len(feats) > 1 else frozenset()
        wrong: list[str] = []
        if n.ok and n.config is not None:
            if s == "revision" and n.config.revision == 1 and any("revision-1" == d.cause for d in n.drops):
                wrong.append("revision 1 forced by a pre-6.1 host hides PERF_GLOBAL_CTRL on 6.1+ hosts")
            elif s == "revision" and n.config.revision == 1 and any("forced" in x for x in n.notes):
                wrong.append("revision 1 forced by a pre-6.1 host although the hardware lacks the new controls "
                             "anyway (strict revision check)")
            if s == "revision" and any("without CPUID" in x for x in n.notes):
                wrong.append("revision 2 shows PERF_GLOBAL_CTRL without the PV CPUID bit (Windows 11 L1 won't boot)")
            if s == "pv-cpuid" and "vmx-tsc-scaling" in union and "vmx-tsc-scaling" not in feats[s]:
                wrong.append("TSC scaling stays hidden: the PV CPUID bit covers PERF_GLOBAL_CTRL only")
            if n.config.pv_perf_global_ctrl:
                wrong.append(f"needs {PERF_OPTION}=on, which real QEMU lacks")
            if s == "vmx-msrs" and any(g.profile.version.mm < (6, 1) for g in n.host_groups()):
                wrong.append("relies on documented filters for pre-6.1 kernels (era boundaries partly unverified)")
        else:
            wrong.append(n.error)
        out[s] = {
            "ok": n.ok,
            "allows": [f for f in order if f in feats[s] and f not in others],
            "blocks": [f for f in order if f in union and f not in feats[s]],
            "gets_wrong": wrong,
        }
    return out
