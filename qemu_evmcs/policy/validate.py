"""Validation of CPU model definitions (``cpu_models/*.yaml``).

Checked against the registry, a QEMU snapshot and KVM's eVMCS eras.

Every finding names ``file:line``. Checks, in order:

1. the file is readable (else exit 2) and well-formed YAML, one mapping, known keys, on/off values;
2. the base model is in the QEMU snapshot -- or, when the release table knows it, "needs QEMU >= X"
   (a **warning**: the definition is fine, the snapshot is old; checks that need the base are skipped);
3. every feature name is known (with a "did you mean" suggestion), has a QEMU property, and that property
   exists in the snapshot's QEMU;
4. QEMU's dependency rules: vmx words need ``vmx``, secondary controls ``vmx-secondary-ctls``, EPT/VPID
   capabilities ``vmx-ept``/``vmx-vpid``, ``vmx-eptp-switching`` needs ``vmx-vmfunc``, CPUID gates
   (``vmx-xsaves`` needs ``xsaves`` ...), and the hv-* dependencies of qemu.md §1.4;
5. eVMCS conflicts, for models with ``hv-evmcs``. Policy:

   - a feature the model turns on that an eVMCS guest can never see, on any kernel era and even with the
     PERF_GLOBAL_CTRL CPUID bit, is an **error** (``evmcs-never-visible``): the definition promises
     something no host can deliver;
   - a feature hidden only on some eras (or only without the CPUID bit) is a **warning**
     (``evmcs-some-eras``) naming those eras and the reason (filter of era X, or the perf CPUID gate that
     QEMU never opens);

6. contradictions: the same feature (or QEMU property, through aliases) both on and off, a YAML key given
   twice, a feature both in ``features`` and ``history.removed``, ``history.added`` naming a feature the
   model does not have.

Exit status: 2 if an input file cannot be read, else 1 if any error, else 0 (warnings only).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core import lazy
from qemu_evmcs.core.errors import EXIT_BAD_INPUT, EXIT_NEGATIVE, EXIT_OK, InputError
from qemu_evmcs.core.evmcs_filter import filter_all
from qemu_evmcs.core.kernel import era_table
from qemu_evmcs.qemu.models import (
    HV_FLAGS,
    HV_RECOMMENDS,
    HV_REQUIRES,
    PV_PERF_SETS_BIT,
    EffectiveModel,
    Finding,
    ModelDef,
    QemuSnapshot,
    compose_yaml,
    effective_model,
    load_snapshot,
    missing_base_message,
    model_files,
    parse_model_data,
    read_text,
    resolve_feature_name,
    vmx_requires,
)
from qemu_evmcs.core.views import visible_features
from qemu_evmcs.kvm.simkvm import NOT_EMULATED_MSRS
from qemu_evmcs.core.profile import VENDORS, HostProfile
from qemu_evmcs.core.registry import registry
from qemu_evmcs.core.msrval import msrs_from_features

if TYPE_CHECKING:
    from typing import Any

    from qemu_evmcs.core import hostgroup
    from qemu_evmcs.core.hostgroup import Fleet
    from qemu_evmcs.policy import resolve
    from qemu_evmcs.policy.resolve import BaselineResult
    from qemu_evmcs.qemu import basecpuid
else:   # only with --hosts: the baseline and its simulated start-ups, host groups, the base-model proposal
    hostgroup = lazy.proxy("qemu_evmcs.core.hostgroup")
    resolve = lazy.proxy("qemu_evmcs.policy.resolve")
    basecpuid = lazy.proxy("qemu_evmcs.qemu.basecpuid")

# =========================================================================== eVMCS era visibility

@functools.lru_cache(maxsize=2)
def era_visibility(perf_global_ctrl: bool) -> tuple[tuple[str, frozenset[str]], ...]:
    """For every era with the eVMCS capability: the registry features an eVMCS L1 can see there.

    Computed by passing MSRs with every registry bit through :func:`evmcs_filter.filter_all` and reading
    them back with the one rule of "visible" (:func:`qemu_evmcs.core.views.visible_features`: set in every MSR
    KVM emulates for L1 that carries the word), so it follows ``eras.yaml`` exactly. Not the TRUE form alone, as
    QEMU reads KVM's values: 5.15's filter forgot TRUE_PINBASED, and the tertiary word lives in
    IA32_VMX_PROCBASED_CTLS3 (0x492), which KVM does not emulate for L1 (KVM_LAST_EMULATED_VMX_MSR is
    MSR_IA32_VMX_VMFUNC), so vmx-ipi-virt is never visible, whatever the era's filter does with the word.
    """
    reg = registry()
    every = msrs_from_features(reg.features)
    out = []
    for era in era_table().known_eras():
        if era.evmcs_cap:
            seen = filter_all(era, every, perf_global_ctrl=perf_global_ctrl, reg=reg)
            out.append((era.id, visible_features(seen, reg)))
    return tuple(out)


#: Why a feature is missing on an era that filters when eVMCS is enabled (4.20-5.5, 5.4.y): the guest is not
#: merely without it, QEMU's KVM_SET_MSRS of the control the filter cleared fails and QEMU aborts, as the
#: start-up model says (qemu/startup.py, stage msr-write; kvm-evmcs.md §4.2, §10.1, §10.3).
ABORT_REASON = "enable-time eVMCS filter: QEMU aborts, 'failed to set MSR'"


def hidden_eras(feature: str, perf_global_ctrl: bool) -> list[tuple[str, str]]:
    """``[(era, reason)]`` for each eVMCS era whose guest cannot see ``feature`` (on an enable-time era:
    because QEMU does not start, :data:`ABORT_REASON`)."""
    return list(_hidden_eras(feature, perf_global_ctrl))


@functools.lru_cache(maxsize=1024)
def _hidden_eras(feature: str, perf_global_ctrl: bool) -> tuple[tuple[str, str], ...]:
    """:func:`hidden_eras`, once per feature: every model definition asks again for the features it shares."""
    with_pv = dict(era_visibility(True))
    at_enable = {e.id for e in era_table().known_eras() if e.filter_at == "enable"}
    reg = registry()
    carriers = [m.name for m in reg.msrs_of_word(reg.features[feature].word)]
    unread = all(m in NOT_EMULATED_MSRS for m in carriers)
    out = []
    for era, visible in era_visibility(perf_global_ctrl):
        if feature not in visible:
            if unread:   # the guest cannot read the MSR at all (0x492): not the filter, not an abort
                out.append((era, f"not emulated: KVM does not emulate {', '.join(carriers)} "
                                 f"({', '.join(f'{reg.msrs[m].index:#x}' for m in carriers)}) for L1"))
            elif feature in with_pv[era]:
                out.append((era, "perf-cpuid-gate: CPUID 0x4000000A.EBX bit 0 is clear (QEMU never sets it)"))
            elif era in at_enable:
                out.append((era, ABORT_REASON))
            else:
                out.append((era, "eVMCS filter"))
    return tuple(out)


def _era_summary(hidden: list[tuple[str, str]]) -> str:
    by_reason: dict[str, list[str]] = {}
    for era, reason in hidden:
        by_reason.setdefault(reason, []).append(era)
    return "; ".join(f"{', '.join(eras)} ({reason})" for reason, eras in by_reason.items())


# =========================================================================== reports

@dataclass
class HostResult:
    """What one host group would do with the model (``validate --hosts``).

    :param kernel: the full kernel release of the group's first host; every host of the group shares
        ``kernel_series`` (major.minor), their full strings may differ.
    """

    hosts: tuple[str, ...]
    kernel: str
    era: str
    starts: bool
    reason: str | None
    drops: list[dict[str, str]]
    kernel_series: str = ""

    @property
    def kernel_text(self) -> str:
        """``kernel 5.10.0-26-amd64`` for one host, ``kernel 6.1.x (first host: 6.1.55)`` for a group."""
        if len(self.hosts) <= 1 or not self.kernel_series:
            return f"kernel {self.kernel}"
        return f"kernel {self.kernel_series}.x (first host: {self.kernel})"

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return {"hosts": list(self.hosts), "kernel_series": self.kernel_series, "first_host_kernel": self.kernel,
                "era": self.era, "starts": self.starts, "reason": self.reason, "drops": self.drops}


@dataclass
class FileReport:
    """Findings (and optional host results) for one definition file."""

    file: str
    model: str | None
    findings: list[Finding] = field(default_factory=list)
    hosts: list[HostResult] | None = None
    #: ``base model CPUID not checked on N hosts`` (text report only).
    base_note: str | None = None
    unreadable: bool = False

    def count(self, severity: str) -> int:
        """Number of findings of a severity."""
        return sum(1 for f in self.findings if f.severity == severity)

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        out: dict[str, Any] = {"file": self.file, "model": self.model, "errors": self.count("error"),
                               "warnings": self.count("warning"), "findings": [f.to_json() for f in self.findings]}
        if self.hosts is not None:
            out["hosts"] = [h.to_json() for h in self.hosts]
        return out


@dataclass
class ValidationReport:
    """All files of one ``validate`` run."""

    files: list[FileReport]
    snapshot: str
    #: With ``--hosts``: :func:`~qemu_evmcs.qemu.basecpuid.proposal`'s model (the newest one every host runs).
    newest_runnable_model: str | None = None
    #: ... and its sentence for the text report.
    proposal: str | None = None

    @property
    def errors(self) -> int:
        """Total errors."""
        return sum(f.count("error") for f in self.files)

    @property
    def warnings(self) -> int:
        """Total warnings."""
        return sum(f.count("warning") for f in self.files)

    @property
    def exit_code(self) -> int:
        """2 unreadable input, 1 errors, 0 otherwise."""
        if any(f.unreadable for f in self.files):
            return EXIT_BAD_INPUT
        return EXIT_NEGATIVE if self.errors else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {"qemu_snapshot": self.snapshot, "errors": self.errors, "warnings": self.warnings,
                "files": [f.to_json() for f in self.files], "newest_runnable_model": self.newest_runnable_model}

    def render(self) -> str:
        """The human report."""
        lines: list[str] = []
        for rep in self.files:
            for f in rep.findings:
                lines.append(f"{f.location()}: {f.severity}: {f.message} [{f.code}]")
            if not rep.findings:
                lines.append(f"{rep.file}: ok ({rep.model})")
            for h in rep.hosts or []:
                who = _names(h.hosts)
                if not h.starts:
                    lines.append(f"  {who} ({h.kernel_text}): does not start: {h.reason}")
                    continue
                if not h.drops:
                    lines.append(f"  {who} ({h.kernel_text}, era {h.era}): starts, drops nothing")
                    continue
                lines.append(f"  {who} ({h.kernel_text}, era {h.era}): starts, drops {len(h.drops)}:")
                for d in h.drops:
                    lines.append(f"    {d['feature']:<40} {d['view']:<10} {d['layer']}: {d['detail']}")
            if rep.base_note:
                lines.append(f"  note: {rep.base_note}")
        if self.proposal:
            lines.append(f"hosts: {self.proposal}")
        lines.append(f"{len(self.files)} file(s), {self.errors} error(s), {self.warnings} warning(s) "
                     f"(QEMU {self.snapshot} snapshot)")
        return "\n".join(lines) + "\n"


def _names(hosts: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(hosts[:limit])
    return shown + (f" (+{len(hosts) - limit} more)" if len(hosts) > limit else "")


def display_path(path: str) -> str:
    """A path relative to the working directory when it lies below it (stable output)."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


# =========================================================================== checks

def _suggest(name: str, candidates: Sequence[str]) -> str:
    close = lazy.module("difflib").get_close_matches(name, candidates, n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Checker:
    """Collects findings for one model definition."""

    def __init__(self, model: ModelDef, snap: QemuSnapshot) -> None:
        self.model = model
        self.snap = snap
        self.reg = registry()
        self.findings: list[Finding] = []

    def add(self, severity: str, code: str, message: str, *key: str) -> None:
        self.findings.append(Finding(severity, code, message, self.model.source, self.model.line_of(*key),
                                     ".".join(key) or None))

    # ------------------------------------------------------------------ names
    def check_names(self) -> dict[str, tuple[str, bool, str]]:
        """Resolve feature names; returns {property-or-cpuid: (written name, value, kind)} for known ones."""
        m, snap, reg = self.model, self.snap, self.reg
        candidates = sorted(set(reg.all_names()) | {p for p in snap.all_features})
        seen: dict[str, tuple[str, bool, str]] = {}
        for name, on in m.features.items():
            r = resolve_feature_name(name, snap, reg)
            if r.kind == "unknown":
                self.add("error", "unknown-feature", f"unknown feature '{name}'{_suggest(name, candidates)}",
                         "features", name)
                continue
            if r.kind == "no-qemu-property":
                feat = reg.feature(name)
                self.add("error" if on else "warning", "no-qemu-property",
                         f"{name} ({feat.word} bit {feat.bit}) has no QEMU property: QEMU cannot switch it "
                         f"{'on' if on else 'off'}", "features", name)
                continue
            prop = r.qemu_prop
            assert prop is not None
            if r.kind == "vmx" and not snap.knows_property(prop):
                self.add("error" if on else "warning", "not-in-qemu",
                         f"QEMU {snap.version} has no property '{prop}'", "features", name)
                continue
            if r.kind == "vmx" and len(r.bits) > 1:
                own = reg.get(name)
                others = [b for b in r.bits if b != (own.name if own is not None else name)]
                self.add("warning", "shared-qemu-property",
                         f"QEMU property '{prop}' controls {len(r.bits)} bits ({', '.join(r.bits)}; QEMU's misspelt "
                         f"duplicate name): {name} {'on' if on else 'off'} also switches {', '.join(others)}",
                         "features", name)
            if prop in seen:
                first, first_on, _ = seen[prop]
                if first_on != on:
                    self.add("error", "contradiction",
                             f"contradiction: '{first}' is {'on' if first_on else 'off'} but '{name}' (the same QEMU "
                             f"property '{prop}') is {'on' if on else 'off'}", "features", name)
                else:
                    self.add("warning", "repeated", f"'{name}' repeats '{first}' (the same QEMU property '{prop}')",
                             "features", name)
            seen[prop] = (name, on, r.kind)
        for name in m.hyperv:
            if name not in HV_FLAGS:
                self.add("error", "unknown-hyperv", f"unknown Hyper-V flag '{name}'{_suggest(name, HV_FLAGS)}",
                         "hyperv", name)
        for section, entries in (("added", m.added), ("removed", m.removed)):
            for name in entries:
                if resolve_feature_name(name, snap, reg).kind == "unknown":
                    self.add("error", "unknown-feature",
                             f"unknown feature '{name}' in history.{section}{_suggest(name, candidates)}",
                             "history", section, name)
        return seen

    # ------------------------------------------------------------------ history
    def check_history(self, eff: EffectiveModel | None) -> None:
        m, snap, reg = self.model, self.snap, self.reg
        props = {resolve_feature_name(n, snap, reg).qemu_prop or n: n for n in m.features}
        for name in m.removed:
            prop = resolve_feature_name(name, snap, reg).qemu_prop or name
            if prop in props:
                self.add("error", "contradiction",
                         f"contradiction: '{name}' is in history.removed and in features (as '{props[prop]}'); a "
                         f"removed feature is switched off implicitly", "history", "removed", name)
            if name in m.added:
                self.add("error", "contradiction", f"contradiction: '{name}' is both added and removed",
                         "history", "removed", name)
        if eff is None:
            return
        for name in m.added:
            r = resolve_feature_name(name, snap, reg)
            have = all(b in eff.vmx for b in r.bits) if r.kind == "vmx" else name in eff.cpuid
            if r.kind != "unknown" and not have:
                self.add("error", "history-added-missing",
                         f"history.added names '{name}' but the model does not have it", "history", "added", name)

    # ------------------------------------------------------------------ dependencies
    def check_deps(self, eff: EffectiveModel | None) -> None:
        m, snap, reg = self.model, self.snap, self.reg
        vmx_on = bool(m.features.get("vmx", False))
        explicit_on: set[str] = set()
        explicit_off: set[str] = set()
        for name, on in m.features.items():
            r = resolve_feature_name(name, snap, reg)
            if r.kind in ("vmx", "no-qemu-property"):
                (explicit_on if on else explicit_off).update(r.bits)
            elif r.kind == "cpuid":
                (explicit_on if on else explicit_off).add(name)
        have: set[str] = set(explicit_on)
        if eff is not None:
            have |= (eff.vmx | eff.dropped_by_deps | eff.cpuid)
        for feat_name in sorted(explicit_on & set(reg.features)):
            feat = reg.features[feat_name]
            written = self._written(feat_name)
            if not vmx_on:
                self.add("error", "needs-vmx", f"{written} is switched on but vmx is not: QEMU drops every VMX "
                         f"feature without vmx=on", "features", written)
                continue
            for req in vmx_requires(feat):
                if req == "vmx":
                    continue
                if req not in have or req in explicit_off:
                    self.add("error", "dependency",
                             f"{written} requires {req}, which is off: QEMU drops {written} (\"This feature depends "
                             f"on other features that were not requested\")", "features", written)
        if eff is not None:
            for feat_name in sorted(eff.dropped_by_deps - explicit_off):
                feat = reg.features[feat_name]
                reqs = [r for r in vmx_requires(feat) if r not in eff.vmx and r not in eff.cpuid]
                if not vmx_on or feat_name in explicit_on:
                    continue  # reported above
                self.add("warning", "dropped-by-dependency",
                         f"{feat_name} (from base {eff.base.name}) is dropped by QEMU because "
                         f"{', '.join(reqs)} is off; switch it off explicitly", "base")
        # Hyper-V dependencies.
        for flag, on in m.hyperv.items():
            if not on:
                continue
            for req in HV_REQUIRES.get(flag, ()):
                if not m.hyperv.get(req, False):
                    self.add("error", "hyperv-dependency", f"Hyper-V {flag} requires Hyper-V {req}", "hyperv", flag)
            for rec in HV_RECOMMENDS.get(flag, ()):
                if not m.hyperv.get(rec, False):
                    self.add("warning", "hyperv-recommended", f"{flag} is recommended only with {rec} "
                             f"(QEMU docs/system/i386/hyperv.rst)", "hyperv", flag)

    def _written(self, canonical: str) -> str:
        """The name the definition used for a canonical feature (for messages and lines)."""
        for name in self.model.features:
            r = resolve_feature_name(name, self.snap, self.reg)
            if canonical in r.bits or name == canonical:
                return name
        return canonical

    # ------------------------------------------------------------------ eVMCS
    def check_evmcs(self, eff: EffectiveModel | None) -> None:
        m, reg = self.model, self.reg
        if m.vendor not in VENDORS:
            self.add("error", "unknown-vendor", f"unknown vendor '{m.vendor}'{_suggest(m.vendor, VENDORS)}", "vendor")
        if eff is not None and eff.base.vendor and eff.base.vendor != m.vendor:
            self.add("error", "vendor-mismatch", f"vendor {m.vendor} but base {eff.base.name} is {eff.base.vendor}",
                     "vendor")
        if not m.evmcs:
            if m.evmcs_version is not None or "evmcs" in {k[0] for k in m.lines}:
                self.add("warning", "evmcs-unused", "evmcs settings are given but hv-evmcs is not on", "evmcs")
            return
        if m.vendor != "GenuineIntel":
            self.add("error", "evmcs-vendor", "hv-evmcs is Intel VMX only", "hyperv", "hv-evmcs")
        if not m.features.get("vmx", False):
            self.add("error", "evmcs-needs-vmx", "hv-evmcs is for nested guests but vmx is not on (QEMU does not "
                     "check; the guest would get eVMCS without VMX)", "hyperv", "hv-evmcs")
        if m.evmcs_version is not None and m.evmcs_version != (1, 1):
            lo, hi = m.evmcs_version
            self.add("error", "evmcs-version", f"QEMU requests eVMCS version range [1..1] only "
                     f"(DEFAULT_EVMCS_VERSION); [{lo}..{hi}] cannot be asked for", "evmcs", "version")
        if m.pv_perf_global_ctrl == "on":
            self.add("warning", "pv-perf-qemu", "pv-perf-global-ctrl: on needs a VMM that sets CPUID 0x4000000A.EBX "
                     "bit 0; QEMU never does (kernels before 6.1 ignore it)", "evmcs", "pv-perf-global-ctrl")
        pv = PV_PERF_SETS_BIT[m.pv_perf_global_ctrl]
        if eff is not None:
            wanted = sorted(eff.vmx)
        else:
            wanted = sorted({b for n, on in m.features.items() if on
                             for b in resolve_feature_name(n, self.snap, reg).bits})
        for feat in wanted:
            hidden = hidden_eras(feat, pv)
            if not hidden:
                continue
            written = self._written(feat)
            explicit = written in m.features
            key: tuple[str, ...] = ("features", written) if explicit else ("base",)
            origin = "" if explicit or eff is None else f" (from base {eff.base.name})"
            ever = hidden_eras(feat, True)
            total = len(era_visibility(True))
            if len(ever) == total:
                self.add("error", "evmcs-never-visible",
                         f"{feat}{origin} is on but an eVMCS guest never sees it on any kernel "
                         f"({_era_summary(ever)}); switch it off", *key)
            else:
                what = ("is hidden from the eVMCS guest, or makes QEMU abort,"
                        if any(r == ABORT_REASON for _, r in hidden) else "is hidden from the eVMCS guest")
                self.add("warning", "evmcs-some-eras", f"{feat}{origin} {what} on kernel eras {_era_summary(hidden)}",
                         *key)


def validate_model(model: ModelDef, snap: QemuSnapshot | None = None) -> tuple[list[Finding], EffectiveModel | None]:
    """Semantic checks of a structurally valid definition; also returns the effective model if the base is known."""
    snap = snap or load_snapshot()
    chk = _Checker(model, snap)
    eff: EffectiveModel | None = None
    if snap.has(model.base):
        base = snap.get(model.base)
        if base.deprecated:
            chk.add("warning", "deprecated-base", f"base model {model.base} is deprecated in QEMU {snap.version}",
                    "base")
        if base.alias_of:
            chk.add("warning", "unversioned-base", f"base {model.base} is an alias of {base.alias_of}; name the "
                    f"version so the model cannot change under you", "base")
        eff = effective_model(model, snap)
    else:
        msg = missing_base_message(model.base, snap)
        if "needs QEMU" in msg:
            chk.add("warning", "base-needs-newer-qemu", msg + "; checks against the base were skipped", "base")
        else:
            chk.add("error", "unknown-base", msg + _suggest(model.base, snap.names()), "base")
    chk.check_names()
    chk.check_history(eff)
    chk.check_deps(eff)
    chk.check_evmcs(eff)
    findings = sorted(chk.findings, key=lambda f: (f.line or 0, f.severity, f.code, f.message))
    return findings, eff


def _host_results(result: BaselineResult) -> list[HostResult]:
    by_group: dict[str, list[dict[str, str]]] = {}
    for loss in result.losses:
        if loss.layer == "model":
            continue
        for fp in loss.groups:
            by_group.setdefault(fp, []).append({"feature": loss.feature, "view": loss.view, "layer": loss.layer,
                                                "detail": loss.detail})
    out = []
    for g in result.groups:
        drops = by_group.get(g.fingerprint, []) if g.starts else []
        out.append(HostResult(hosts=g.hosts, kernel=g.kernel, era=g.era, starts=g.starts, reason=g.reason,
                              drops=drops, kernel_series=g.kernel_series))
    return out


def validate_file(path: str, snap: QemuSnapshot | None = None,
                  hosts: Fleet | Sequence[HostProfile] | None = None) -> FileReport:
    """All checks for one file (never raises for bad content; unreadable files are flagged)."""
    snap = snap or load_snapshot()
    shown = display_path(path)
    try:
        text = read_text(path)
    except InputError as err:
        return FileReport(shown, None, [Finding("error", "unreadable", err.message, shown, None)], unreadable=True)
    try:
        data, lines, dups = compose_yaml(text, shown)
    except InputError as err:
        return FileReport(shown, None, [Finding("error", "invalid-yaml", err.message, shown, err.line)])
    model, findings = parse_model_data(data, lines, shown, dups)
    rep = FileReport(shown, model.name if model is not None else None, list(findings))
    if model is None or any(f.code in ("bad-type",) for f in findings):
        return rep
    more, eff = validate_model(model, snap)
    rep.findings.extend(more)
    rep.findings.sort(key=lambda f: (f.line or 0, f.severity, f.code, f.message))
    if hosts is not None:
        if eff is None:
            rep.hosts = []
        else:
            result = resolve.baseline(hosts, eff)
            rep.hosts = _host_results(result)
            rep.base_note = result.base_cpuid_note()
    return rep


def validate_paths(paths: Sequence[str] = (), *, snapshot: QemuSnapshot | None = None,
                   hosts: Fleet | Sequence[HostProfile] | None = None) -> ValidationReport:
    """Validate files (default: every installed definition, :func:`~qemu_evmcs.qemu.models.model_files`);
    directories are expanded."""
    snap = snapshot or load_snapshot()
    files: list[str] = []
    for p in paths or model_files():
        if os.path.isdir(p):
            files.extend(os.path.join(p, n) for n in sorted(os.listdir(p)) if n.endswith((".yaml", ".yml")))
        else:
            files.append(p)
    if not files:
        raise InputError("no model definitions to validate")
    report = ValidationReport([validate_file(f, snap, hosts) for f in files], snap.version)
    if hosts is not None:
        profiles = [g.profile for g in hostgroup.as_fleet(hosts).host_groups()]
        report.newest_runnable_model = pick = basecpuid.newest_runnable(profiles, snap)
        report.proposal = basecpuid.proposal(pick, snap.version) if pick else None
    return report


def is_clean(report: ValidationReport) -> bool:
    """No errors and no unreadable files."""
    return report.exit_code == EXIT_OK


__all__ = [
    "FileReport",
    "Finding",
    "HostResult",
    "ValidationReport",
    "era_visibility",
    "hidden_eras",
    "validate_file",
    "validate_model",
    "validate_paths",
]
