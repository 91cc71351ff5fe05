"""Render a :class:`~qemu_evmcs.policy.negotiate.Negotiation`: QEMU ``-cpu`` string, libvirt XML fragment, JSON, text.

- ``-cpu``: ``BASE,vmx=on,<vmx-* changes>,hv-...=on,hv-evmcs=on[,hv-evmcs-perf-global-ctrl=on],enforce=on``.
  This project's proposed options (``hv-evmcs-perf-global-ctrl``, ``x-hv-evmcs-revision``) appear only in an
  answer negotiated for the simulator (``target="simulator"``): real QEMU refuses unknown properties.
  vmx-* properties are written as changes against the QEMU base model's defaults when the snapshot knows the
  base (``prop=on`` / ``-prop``), otherwise every property explicitly. ``enforce=on`` makes a host that lacks
  a negotiated feature refuse to start (a blocked migration) instead of silently dropping it.
- libvirt: :mod:`qemu_evmcs.output.libvirt` (cpu_map model names, vmx-* under libvirt's names where its
  cpu_map has them, a ``<qemu:commandline>`` ``-global`` fallback for the rest); re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core import lazy
from qemu_evmcs.core.msrval import hex64
from qemu_evmcs.core.kernel import era_table
from qemu_evmcs.core.errors import NegativeAnswer
from qemu_evmcs.core.hostgroup import Hosts
from qemu_evmcs.policy.negotiate import (
    PERF_OPTION,
    REVISION_OPTION,
    STRATEGIES,
    STRATEGY_VARIANT,
    Drop,
    GuestModel,
    Negotiation,
    PoolGroup,
    group_kernel_text,
    kernel_series,
    names_text,
    qemu_property_features,
    qemu_supported,
    negotiate,
    target_properties,
    unique_group_names,
)
from qemu_evmcs.core.registry import Registry, registry
from qemu_evmcs.qemu.cpuprops import hv_sorted, vmx_prop_changes
from qemu_evmcs.kvm.simkvm import EVMCS_REVISION_2022, EVMCS_REVISION_LEGACY, SimKvm

if TYPE_CHECKING:
    from typing import Any

    from qemu_evmcs.output import libvirt
    from qemu_evmcs.qemu import libvirt_cpumap
    from qemu_evmcs.qemu.libvirt_cpumap import CpuMap
else:   # only for an answer that holds libvirt XML (--format libvirt, JSON): text and -cpu need neither
    libvirt = lazy.proxy("qemu_evmcs.output.libvirt")
    libvirt_cpumap = lazy.proxy("qemu_evmcs.qemu.libvirt_cpumap")


def libvirt_xml(neg: Negotiation, cmap: CpuMap | None = None, reg: Registry | None = None) -> str:
    """:func:`qemu_evmcs.output.libvirt.libvirt_xml` (callers import it from here)."""
    return libvirt.libvirt_xml(neg, cmap, reg)


def qemu_vmx_props(neg: Negotiation, reg: Registry | None = None) -> list[tuple[str, bool]]:
    """(QEMU property, on) for every vmx-* property the -cpu string must state, in registry order."""
    assert neg.config is not None
    return vmx_prop_changes(neg.config.vmx, neg.model.base_vmx, reg,
                            settable=target_properties(neg.target, reg, neg.properties))  # QEMU refuses one it lacks


def cpu_string(neg: Negotiation) -> str:
    """The QEMU ``-cpu`` argument of a successful negotiation."""
    assert neg.ok and neg.config is not None
    cfg = neg.config
    parts = [cfg.base, "vmx=on"]
    for prop, on in qemu_vmx_props(neg):
        parts.append(f"{prop}=on" if on else f"-{prop}")
    parts += [f"-{flag}" for flag in cfg.cpuid_off]
    parts += [f"{flag}=on" for flag in hv_sorted(cfg.hyperv)]
    if cfg.pv_perf_global_ctrl:
        parts.append(f"{PERF_OPTION}=on")
    if _revision_option(neg):
        parts.append(f"{REVISION_OPTION}={cfg.revision}")
    parts.append("enforce=on")
    return ",".join(parts)


def _revision_option(neg: Negotiation) -> bool:
    """Does the answer carry ``x-hv-evmcs-revision`` (the simulator's option; never for real QEMU)?"""
    cfg = neg.config
    return (neg.target == "simulator" and cfg is not None and cfg.design == "revision"
            and cfg.revision is not None and (neg.properties is None or REVISION_OPTION in neg.properties))


def negotiate_cpu_arg(model: str | GuestModel, hosts: Hosts, strategy: str = "pv-cpuid", *,
                      target: str = "qemu", properties: frozenset[str] | None = None) -> str:
    """The ``-cpu`` argument for a guest that must start on, and migrate among, ``hosts``.

    For the launch wrapper's ``--negotiate PROFILE...``.

    :raise NegativeAnswer: the pool has no safe answer (message: the reason).
    :raise InputError: unknown model, profile or strategy.
    """
    neg = negotiate(model, hosts, strategy, target=target, properties=properties)
    if not neg.ok:
        raise NegativeAnswer(neg.error)
    return cpu_string(neg)


def qemu_lacks(neg: Negotiation) -> list[str]:
    """Options of the -cpu string that real QEMU does not have (empty for an answer aimed at real QEMU)."""
    out = []
    if neg.config and neg.config.pv_perf_global_ctrl:
        out.append(f"{PERF_OPTION}=on: real QEMU never sets CPUID 0x4000000A.EBX bit 0 (proposed plugin option)")
    if _revision_option(neg):
        out.append("x-hv-evmcs-revision: KVM_CAP_HYPERV_ENLIGHTENED_VMCS2 never shipped (simulation only)")
    if neg.config and neg.config.design == "vmx-msrs":
        out.append("KVM_GET_EVMCS_VMX_MSRS never shipped: this list assumes the design-(b) kernel filter")
    return out


def group_refs(hosts: Sequence[str], groups: Sequence[PoolGroup], names: Sequence[str]) -> list[str]:
    """The names of the groups whose hosts, concatenated, are ``hosts`` (how drops name hosts: whole groups)."""
    by_first: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        if g.hosts:
            by_first.setdefault(g.hosts[0], []).append(i)
    out: list[str] = []
    pos = 0
    while pos < len(hosts):
        for i in by_first.get(hosts[pos], []):
            n = len(groups[i].hosts)
            # Drops are built from whole groups: first and last host identify the run (no O(hosts) compare).
            if pos + n <= len(hosts) and hosts[pos + n - 1] == groups[i].hosts[-1]:
                out.append(names[i])
                pos += n
                break
        else:   # not a whole group (a hand-made Drop): name the host itself
            out.append(hosts[pos])
            pos += 1
    return out


def pool_group_json(name: str, g: PoolGroup) -> dict[str, Any]:
    """One fingerprint group, its hosts listed once (``kernel_series`` is every host's; ``first_host_kernel``
    is the full release of the first host only: the others' may differ after major.minor)."""
    return {"name": name, "fingerprint": g.fingerprint, "host_count": len(g.hosts), "hosts": list(g.hosts),
            "kernel_series": kernel_series(g.profile), "first_host_kernel": g.profile.kernel,
            "era": g.profile.era.id}


def pool_groups_json(neg: Negotiation) -> dict[str, Any]:
    """``{"host_count": N, "groups": [...]}``: every host once, by fingerprint group (see :func:`pool_group_json`)."""
    groups = neg.host_groups()
    gnames = unique_group_names([(g.hosts[0] if g.hosts else "", g.fingerprint) for g in groups])
    return {"host_count": sum(len(g.hosts) for g in groups),
            "groups": [pool_group_json(n, g) for n, g in zip(gnames, groups, strict=True)]}


def negotiation_json(neg: Negotiation, *, with_groups: bool = True) -> dict[str, Any]:
    """Plain data for ``--json`` (key order documented: ok, strategy, model, hosts, groups, then the answer).

    Hosts are listed once, in ``groups`` (one per distinct profile, named after its first host); ``dropped``
    and ``hv_dropped`` refer to groups by name (``groups``) and say how many hosts that is (``count``), so the
    output grows with the number of hosts only once, not once per dropped feature. ``with_groups=False``
    leaves ``hosts`` and ``groups`` out (``negotiate --design all`` lists them once for every design).
    """
    reg = registry()
    groups = neg.host_groups()
    gnames = unique_group_names([(g.hosts[0] if g.hosts else "", g.fingerprint) for g in groups])

    def drop_json(d: Drop) -> dict[str, Any]:
        return {"feature": d.feature, "cause": d.cause, "detail": d.detail,
                "groups": group_refs(d.hosts, groups, gnames), "host_count": len(d.hosts)}

    out: dict[str, Any] = {"ok": neg.ok, "design": STRATEGY_VARIANT[neg.strategy], "target": neg.target,
                           "model": neg.model.name}
    if with_groups:
        out.update(pool_groups_json(neg))
    if not neg.ok or neg.config is None:
        out["error"] = neg.error
        out["notes"] = list(neg.notes)
        return out
    cfg = neg.config
    requested = set(neg.model.vmx) & qemu_property_features(reg)
    out.update({
        "evmcs_version": list(cfg.evmcs_version),
        "pv_perf_global_ctrl": cfg.pv_perf_global_ctrl,
        "revision": cfg.revision,
        "vmx_on": reg.in_order(cfg.vmx),
        "guest_features": reg.in_order(neg.guest_features),
        "vmx_off": reg.in_order(requested - set(cfg.vmx)),
        "hyperv": hv_sorted(cfg.hyperv),
        "cpu": cpu_string(neg),
        "qemu_lacks": qemu_lacks(neg),
        # the newest bundled cpu_map, not the installed one: one answer anywhere
        "libvirt": libvirt_xml(neg, libvirt_cpumap.load_cpu_map(libvirt_cpumap.bundled_versions()[-1])),
        "dropped": [drop_json(d) for d in neg.drops],
        "hv_dropped": [drop_json(d) for d in neg.hv_dropped],
        "guest_visible_msrs": {n: hex64(neg.guest_msrs[n]) for n in reg.msr_names() if n in neg.guest_msrs},
        "notes": list(neg.notes),
    })
    return out


def negotiation_text(neg: Negotiation) -> str:
    """A short human report. A pool without an answer ends in its verdict line, ``no safe answer: WHY`` (a
    negative answer, not an ``error:``: exit 1)."""
    groups = neg.host_groups()
    head = f"design {STRATEGY_VARIANT[neg.strategy]}: model {neg.model.name} on {len(neg.hosts)} host(s)"
    if all(len(g.hosts) == 1 for g in groups):
        lines = [f"{head}: " + ", ".join(f"{g.hosts[0]} ({g.profile.kernel}, era {g.profile.era.id})"
                                         for g in groups)]
    else:   # a fleet: one line per distinct host profile, not per host
        lines = [f"{head}, {len(groups)} distinct profile(s):"]
        lines += [f"  {names_text(g.hosts, 3)}: {group_kernel_text(g.profile, len(g.hosts))}, era "
                  f"{g.profile.era.id} ({len(g.hosts):,} host{'s' if len(g.hosts) != 1 else ''})" for g in groups]
    if not neg.ok or neg.config is None:
        lines.append(neg.error if neg.error.startswith("no safe answer") else f"no safe answer: {neg.error}")
        return "\n".join(lines) + "\n"
    cfg = neg.config
    lines.append(f"  eVMCS version [{cfg.evmcs_version[0]}..{cfg.evmcs_version[1]}]"
                 + (f", revision {cfg.revision}" if cfg.revision is not None else "")
                 + f"; CPUID 0x4000000A.EBX bit 0 {'set' if cfg.pv_perf_global_ctrl else 'clear'}")
    implied = [f for f in registry().features if f in neg.guest_features and f not in cfg.vmx]
    lines.append(f"  guest sees {len(neg.guest_features)} VMX features, identical on every host"
                 + (f" ({len(neg.guest_features) - len(implied)} set by -cpu; {', '.join(implied)}: from the host's "
                    f"MSRs or implied by QEMU, not -cpu properties)" if implied else ""))
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


def _revision_forced(n: Negotiation) -> tuple[list[str], list[str]]:
    """What forcing revision 1 costs a ``revision`` negotiation: ``(wrong, notes)``, each precise about why a
    revision-2 control is missing -- the model switches it off, a host's hardware lacks it, the pre-6.1 hosts
    hide it anyway, or revision 1 hides it on hosts whose hardware has it."""
    assert n.config is not None
    groups = n.host_groups()
    revs = [SimKvm(g.profile, variant="revision").max_evmcs_revision() or EVMCS_REVISION_LEGACY for g in groups]
    legacy = [h for g, r in zip(groups, revs, strict=True) if r < EVMCS_REVISION_2022 for h in g.hosts]
    new = [g for g, r in zip(groups, revs, strict=True) if r >= EVMCS_REVISION_2022]
    if n.target != "simulator" or n.config.revision != EVMCS_REVISION_LEGACY or not legacy or not new:
        return [], []   # for real QEMU revision 1 is not forced by a host: QEMU cannot ask for another
    legacy_set = set(legacy)
    rev2 = registry().in_order(era_table().revision2_exposes)
    excluded = [f for f in rev2 if f not in n.model.vmx]
    lacking: dict[str, list[str]] = {}
    for f in rev2:
        if f in n.model.vmx:
            hosts = [h for g in new if f not in qemu_supported(g.profile) for h in g.hosts]
            if hosts:
                lacking[f] = hosts
    hidden: dict[str, list[str]] = {}
    hidden_on_legacy: set[str] = set()
    for d in n.drops:
        if d.feature not in rev2:
            continue
        if d.cause == "revision-1":
            hidden.setdefault(d.feature, []).extend(d.hosts)
        elif legacy_set.intersection(d.hosts):
            hidden_on_legacy.add(d.feature)
    head = f"revision 1 forced by pre-6.1 host(s) {names_text(legacy, 3)} (no KVM_CAP_HYPERV_ENLIGHTENED_VMCS2; strict)"
    wrong: list[str] = []
    free: list[str] = []
    costly = [f for f in hidden if f not in hidden_on_legacy]
    anyway = [f for f in hidden if f in hidden_on_legacy]
    if costly:
        where = names_text(list(dict.fromkeys(h for f in costly for h in hidden[f])), 3)
        it = "it" if len(costly) == 1 else "them"
        wrong.append(f"{head} hides {', '.join(costly)} on {where}, whose hardware has {it}, although the pre-6.1 "
                     f"hosts show {it} too: the pool loses {it} only to the revision number")
    if anyway:
        where = names_text(list(dict.fromkeys(h for f in anyway for h in hidden[f])), 3)
        it = "it" if len(anyway) == 1 else "them"
        free.append(f"it hides {', '.join(anyway)} on {where} (the hardware has {it}), but the pre-6.1 hosts' "
                    f"eVMCS filter hides {it} anyway")
    if excluded:
        free.append(f"the model switches off {', '.join(excluded)}")
    by_hosts: dict[tuple[str, ...], list[str]] = {}
    for f, hosts in lacking.items():
        by_hosts.setdefault(tuple(hosts), []).append(f)
    for hosts_t, fs in by_hosts.items():
        free.append(f"the hardware of {names_text(list(hosts_t), 3)} lacks {', '.join(fs)}")
    notes = [f"{head}: " + ("; ".join(free) if wrong else "costs nothing here: " + "; ".join(free))] if free else []
    return wrong, notes


def compare_strategies(results: Mapping[str, Negotiation]) -> dict[str, dict[str, Any]]:
    """Per strategy: what it allows (guest features no other strategy shows), blocks (features another shows
    but it hides), gets wrong (a cost or a hazard the design itself causes) and notes (why an apparent cost
    is none: the model switches the control off, the hardware lacks it, another host hides it anyway)."""
    feats = {s: n.guest_features for s, n in results.items()}
    union = frozenset().union(*feats.values()) if feats else frozenset()
    out: dict[str, dict[str, Any]] = {}
    reg = registry()
    for s in STRATEGIES:
        if s not in results:
            continue
        n = results[s]
        others = frozenset().union(*(v for k, v in feats.items() if k != s)) if len(feats) > 1 else frozenset()
        wrong: list[str] = []
        notes: list[str] = []
        if n.ok and n.config is not None:
            if s == "revision":
                w, nt = _revision_forced(n)
                wrong += w
                notes += nt
            if s == "revision" and any("without CPUID" in x for x in n.notes):
                wrong.append("revision 2 shows PERF_GLOBAL_CTRL without the PV CPUID bit (Windows 11 L1 won't boot)")
            if s == "pv-cpuid" and "vmx-tsc-scaling" in union and "vmx-tsc-scaling" not in feats[s]:
                shown = [k for k, v in feats.items() if k != s and "vmx-tsc-scaling" in v]
                wrong.append(f"TSC scaling stays hidden although the hardware has it ({', '.join(shown)} shows it): "
                             f"the PV CPUID bit covers PERF_GLOBAL_CTRL only")
            if n.config.pv_perf_global_ctrl:
                wrong.append(f"needs {PERF_OPTION}=on, which real QEMU lacks")
            if s == "vmx-msrs" and any(g.profile.version.mm < (6, 1) for g in n.host_groups()):
                wrong.append("relies on documented filters for pre-6.1 kernels (era boundaries partly unverified)")
        else:
            wrong.append(n.error)
        out[s] = {
            "ok": n.ok,
            "allows": reg.in_order(feats[s] - others),
            "blocks": reg.in_order(union - feats[s]),
            "gets_wrong": wrong,
            "notes": notes,
        }
    return out
