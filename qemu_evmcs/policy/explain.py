"""Why an L1 guest does (not) see each VMX feature: the reasoning behind ``guest-msrs`` and ``explain``.

A VMX feature can disappear between the silicon and what an eVMCS-enabled L1
(Hyper-V, Windows with VBS/WSL2) reads, at one of these layers, checked in
this order:

``cpu``
    the hardware lacks it (known only for MSRs the profile's ``cpu_msrs`` holds);
``not-emulated``
    KVM does not emulate the MSR for L1 at all (IA32_VMX_PROCBASED_CTLS3,
    0x492: the tertiary controls);
``kvm``
    KVM does not report it (absent from the profile's ``msrs``, i.e. from
    KVM's nested VMX support);
``evmcs-filter``
    the eVMCS filter of the kernel's era removes it (with the Linux mask name:
    ``EVMCS1_UNSUPPORTED_*`` deny-lists up to 6.2, ``EVMCS1_SUPPORTED_*``
    allow-lists from 6.3);
``perf-cpuid-gate``
    from 6.1, VM_{EXIT,ENTRY}_LOAD_IA32_PERF_GLOBAL_CTRL are shown only if the
    guest's CPUID 0x4000000A.EBX bit 0 is set, which QEMU never does;
``qemu``
    KVM reports it and no filter removes it, but QEMU never writes it into the
    guest's MSRs (no property, not a field QEMU copies from KVM:
    :func:`qemu_evmcs.qemu.compose.qemu_given_features`, the rule every command counts by).

The verdict "visible or not" is never computed here: it is read from
:func:`qemu_evmcs.qemu.hostguest.host_model_guest_msrs`, the simulated KVM's answer for what QEMU writes. This module
only *attributes* each missing bit to a layer, so that the explanation cannot
drift from the simulation. :func:`explain_host` returns frozen dataclasses
that the resolver and the negotiator reuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qemu_evmcs.core import lazy
from qemu_evmcs.core.errors import InputError, KvmError, NegativeAnswer
from qemu_evmcs.core.evmcs_filter import filter_msr
from qemu_evmcs.core.kernel import Era, Rule, era_table
from qemu_evmcs.core.msrval import feature_present, hex64, word_source_msr
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.registry import Feature, Msr, Registry, registry
from qemu_evmcs.qemu.attribution import (LAYER_CPU, LAYER_FILTER, LAYER_KVM, LAYER_NOT_EMULATED, LAYER_PERF,
                                          LAYER_QEMU, RemovedBit, missing_layer, removed_bits)
from qemu_evmcs.qemu.hostguest import host_model_guest_msrs
from qemu_evmcs.policy.designnames import design_name
from qemu_evmcs.kvm.simkvm import EVMCS_REVISION_LATEST, NOT_EMULATED_MSRS, SimKvm

#: Linux mask-name suffix of each feature word (EVMCS1_{UN,}SUPPORTED_<suffix>, kvm-evmcs.md §3).
MASK_SUFFIX: Mapping[str, str] = {
    "pinbased": "PINCTRL",
    "procbased": "EXEC_CTRL",
    "secondary": "2NDEXEC",
    "tertiary": "3RDEXEC",
    "exit": "VMEXIT_CTRL",
    "entry": "VMENTRY_CTRL",
    "vmfunc": "VMFUNC",
}

#: Eras whose filter clears named bits one by one instead of applying an EVMCS1_* mask:
#: 31de3d2500e4 (5.6-5.14) clears only the two PERF_GLOBAL_CTRL controls and VIRTUALIZE_APIC_ACCESSES.
LITERAL_FILTER_ERAS = frozenset({"5.6-5.14"})


# --------------------------------------------------------------------------- result types

@dataclass(frozen=True)
class MsrView:
    """One MSR as KVM reports it to userspace (``host``) and as the L1 guest reads it (``guest``).

    ``guest`` is 0 for an MSR KVM does not emulate for L1 (``emulated`` false): the guest's read faults,
    and no bit of it is usable.
    """

    name: str
    index: int
    host: int
    guest: int
    emulated: bool
    removed: tuple[RemovedBit, ...]

    @property
    def changed(self) -> bool:
        """Does the guest read something other than what KVM reports?"""
        return self.host != self.guest or not self.emulated


@dataclass(frozen=True)
class FeatureExplanation:
    """The verdict on one registry feature.

    :ivar msr: the MSR the verdict is read from: QEMU's choice for the word (the TRUE_ form when the profile
        has it), else the word's first MSR.
    :ivar bit: the registry bit: the control bit for control MSRs (allowed-1 bit ``bit + 32``), as QEMU prints it.
    :ivar layer: ``None`` when visible, else one of :data:`LAYERS`.
    :ivar mask: the Linux mask involved when ``layer`` is :data:`LAYER_FILTER` and the era uses one.
    """

    name: str
    qemu: str | None
    linux: str | None
    word: str
    msr: str
    bit: int
    visible: bool
    layer: str | None
    reason: str
    mask: str | None = None

    def to_json(self) -> dict[str, object]:
        """The ``explain --json`` entry (documented key order)."""
        return {"name": self.name, "qemu": self.qemu, "msr": self.msr, "bit": self.bit,
                "visible": self.visible, "layer": self.layer, "reason": self.reason}


@dataclass(frozen=True)
class HostExplanation:
    """What an L1 guest reads on one host, MSR by MSR and feature by feature, with notes.

    :ivar kernel: the release used (``--kernel`` overrides the profile's).
    :ivar era: the eVMCS era id of that release (``"6.3+"``).
    :ivar filter_at: ``"enable"`` (<= 5.6: host reads are filtered too once eVMCS is on), ``"read"`` or ``"none"``.
    :ivar msrs: every MSR the profile has, in index order.
    :ivar features: every registry feature, in registry order.
    """

    host: str
    source: str | None
    kernel: str
    era: str
    evmcs: bool
    pv_perf_global_ctrl: bool
    variant: str
    filter_at: str
    msrs: tuple[MsrView, ...]
    features: tuple[FeatureExplanation, ...]
    notes: tuple[str, ...]

    def feature(self, name: str) -> FeatureExplanation:
        """The explanation of a feature by any registry name (QEMU, libvirt, Linux, canonical)."""
        canonical = registry().feature(name).name
        for fe in self.features:
            if fe.name == canonical:
                return fe
        raise InputError(f"unknown VMX feature {name!r}")  # pragma: no cover - every feature is explained

    def visible(self) -> tuple[FeatureExplanation, ...]:
        """Features the guest can use."""
        return tuple(f for f in self.features if f.visible)

    def hidden(self, layer: str | None = None) -> tuple[FeatureExplanation, ...]:
        """Features the guest cannot use (optionally only those hidden by ``layer``)."""
        return tuple(f for f in self.features if not f.visible and (layer is None or f.layer == layer))

    def guest_msrs(self) -> dict[str, int]:
        """``{MSR name: value the guest reads}`` in index order (0 for a non-emulated MSR)."""
        return {m.name: m.guest for m in self.msrs}

    def _head(self) -> dict[str, object]:
        return {"host": self.host, "kernel": self.kernel, "era": self.era, "evmcs": self.evmcs,
                "pv_perf_global_ctrl": self.pv_perf_global_ctrl}

    def guest_msrs_json(self) -> dict[str, object]:
        """The ``guest-msrs --json`` document: everything the text table shows (docs/json.md).

        ``msrs``: what the guest reads; ``host_msrs``: what KVM reports to userspace; ``removed``: for each MSR
        the guest reads differently, the bits it loses with their feature and layer; ``emulated``: false for an
        MSR KVM does not emulate for L1 (the guest's read faults; ``msrs`` says 0).
        """
        return {**self._head(), "design": self.variant,
                "msrs": {m.name: hex64(m.guest) for m in self.msrs},
                "host_msrs": {m.name: hex64(m.host) for m in self.msrs},
                "emulated": {m.name: m.emulated for m in self.msrs},
                "removed": {m.name: [{"feature": r.feature, "bit": r.bit, "layer": r.layer} for r in m.removed]
                            for m in self.msrs if m.removed},
                "notes": list(self.notes)}

    def explain_json(self, features: list[FeatureExplanation] | None = None) -> dict[str, object]:
        """The ``explain --json`` document (all features, or only ``features``)."""
        chosen = self.features if features is None else features
        return {**self._head(), "features": [f.to_json() for f in chosen]}


# --------------------------------------------------------------------------- helpers

def mask_name(era: Era, rule: Rule) -> str | None:
    """The Linux mask a rule of ``era`` stands for, or ``None`` when that era clears literal bits."""
    if era.id in LITERAL_FILTER_ERAS:
        return None
    prefix = "EVMCS1_SUPPORTED_" if rule.allow is not None else "EVMCS1_UNSUPPORTED_"
    return prefix + MASK_SUFFIX[rule.word]


def bit_position(msr: Msr, bit: int) -> str:
    """``"IA32_VMX_TRUE_PINBASED_CTLS bit 38 = allowed-1 of control bit 6"`` or ``"IA32_VMX_VMFUNC bit 0"``."""
    if msr.layout == "ctl":
        return f"{msr.name} bit {bit + 32} = allowed-1 of control bit {bit}"
    return f"{msr.name} bit {bit}"


def find_features(name: str, reg: Registry | None = None) -> list[Feature]:
    """The features a user-supplied name means: canonical, QEMU, libvirt or Linux spelling, any case.

    A misspelt QEMU property (``vmx-invept-single-context``) controls two bits; both are returned.

    :raise InputError: unknown name, with the closest known names as a suggestion (exit 2).
    """
    reg = reg or registry()
    for candidate in (name, name.strip().lower(), name.strip().upper()):
        feat = reg.get(candidate)
        if feat is not None:
            out = [feat]
            out += [f for f in reg.qemu_bits(candidate) if f is not feat]
            return out
    close = lazy.module("difflib").get_close_matches(name.strip().lower(), [n.lower() for n in reg.all_names()],
                                                     n=1, cutoff=0.6)
    by_lower = {n.lower(): n for n in reg.all_names()}
    hint = f" (did you mean {by_lower[close[0]]}?)" if close else ""
    raise InputError(f"unknown VMX feature {name!r}{hint}", key="--feature")


def _check_answerable(profile: HostProfile, kvm: SimKvm, evmcs: bool) -> None:
    """Refuse (exit 1, a verdict: ``no-evmcs`` or, with eVMCS off, ``no-vmx``) a host where the question has no
    answer: no eVMCS, or no nested VMX at all."""
    why: str | None = None
    verdict, layer = "no-evmcs", LAYER_KVM
    if not profile.is_intel:
        layer = LAYER_CPU    # the CPU has no VMX: nothing above it can help
    if evmcs and not kvm.has_evmcs_hook():
        why = f"eVMCS cannot be enabled on this host: {kvm.no_evmcs_reason()}"
    elif evmcs and kvm.evmcs_version() == 0:
        why = (f"eVMCS cannot be enabled on this host: kvm_intel.nested=0 on kernel {profile.kernel}, so "
               f"KVM_ENABLE_CAP(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) returns version range 0x0000 and QEMU's "
               f"hv-evmcs needs version 1")
    elif not evmcs and not kvm.feature_msrs():
        lack = (f"{profile.vendor} has no Intel VMX" if not profile.is_intel
                else "kvm_intel.nested=0" if not profile.nested else "KVM reports no VMX MSRs")
        why = f"an L1 guest reads no VMX MSRs on this host: {lack}"
        verdict = "no-vmx"
    if why is not None:
        raise NegativeAnswer(why, verdict=verdict, file=profile.source or profile.name, host=profile.name,
                             layer=layer)


def _filter_reason(era: Era, msr: Msr, feat: Feature) -> tuple[str, str | None]:
    """Reason text and mask name for a bit the era's eVMCS filter removes."""
    rule = next((r for r in era.rules_for(msr.name)
                 if (r.allow is not None and not r.allow & feat.mask) or r.deny & feat.mask), None)
    mask = mask_name(era, rule) if rule is not None else None
    subject = _subject(msr, feat)
    if mask is None:
        what = f"{subject} is cleared explicitly by nested_evmcs_filter_control_msr()"
    elif rule is not None and rule.allow is not None:
        what = f"{subject} is not in {mask}"
        if feat.linux == "SECONDARY_EXEC_TSC_SCALING":
            what = (f"{subject} is not in evmcs_supported_ctrls[EVMCS_2NDEXEC][EVMCSv1_LEGACY] "
                    f"({mask} minus TSC scaling, which only KVM-on-Hyper-V may use)")
    else:
        what = f"{subject} is in {mask}"
    if era.filter_at == "enable":
        how = ("nested_enable_evmcs() cleared it from the vCPU's nested MSRs when eVMCS was enabled, "
               "so host (KVM_GET_MSRS) reads lose it too")
    else:
        how = "KVM clears it on guest reads only; userspace still reads it"
    since = era_table().deciding_backport(era, msr.name, feat.mask)
    if since is not None:
        how += f"; hidden {since.describe()} (\"{since.backport.title}\", mainline {since.backport.mainline})"
    return f"hidden by the eVMCS filter of era {era.id}: {what}; {how}", mask


def _subject(msr: Msr, feat: Feature) -> str:
    """``"PIN_BASED_VMX_PREEMPTION_TIMER (IA32_VMX_TRUE_PINBASED_CTLS bit 38 ...)"``."""
    pos = bit_position(msr, feat.bit)
    return f"{feat.linux} ({pos})" if feat.linux else pos


def _perf_reason(era: Era, msr: Msr, feat: Feature) -> str:
    return (f"hidden by the PERF_GLOBAL_CTRL CPUID gate (era {era.id}): {_subject(msr, feat)} is shown to an "
            f"eVMCS guest only if the guest's CPUID 0x4000000A.EBX bit 0 "
            f"(HV_X64_NESTED_EVMCS1_PERF_GLOBAL_CTRL) is set; KVM advertises that bit but QEMU never sets it "
            f"in the guest's CPUID; --pv-perf-global-ctrl shows the effect")


def _qemu_reason(msr: Msr, feat: Feature) -> str:
    """Why QEMU never gives a guest ``feat`` (qemu.md §2.2; QEMU 7.2 target/i386/kvm/kvm.c kvm_msr_entry_add_vmx)."""
    if msr.layout == "ctl":
        how = (f"QEMU writes {msr.name} from its feature word (make_vmx_msr_value), and -cpu host/max take only "
               f"the bits QEMU has names for from KVM (x86_cpu_get_migratable_flags)")
    else:
        how = (f"QEMU writes {msr.name} as its feature word plus only the fields it copies from KVM's value "
               f"(kvm_msr_entry_add_vmx)")
    return (f"never given to a guest by QEMU: {_subject(msr, feat)} is set in KVM's value, but no QEMU property "
            f"controls it and {how}, so the guest reads it clear")


def _emulated_range(reg: Registry) -> str:
    idx = sorted(m.index for m in reg.msrs.values() if m.name not in NOT_EMULATED_MSRS)
    return f"{reg.msr(idx[0]).name}..{reg.msr(idx[-1]).name} ({idx[0]:#x}..{idx[-1]:#x})"


# --------------------------------------------------------------------------- the reasoning

def explain_host(profile: HostProfile, *, evmcs: bool = True, pv_perf_global_ctrl: bool = False,
                 variant: str = "shipped") -> HostExplanation:
    """What an L1 guest reads on ``profile``'s host with every feature KVM reports exposed (``-cpu host``).

    :param evmcs: enable eVMCS on the vCPU (``hv-evmcs``); false shows the unfiltered nested view.
    :param pv_perf_global_ctrl: set the guest's CPUID 0x4000000A.EBX bit 0 (QEMU never does).
    :param variant: the KVM ABI design (:data:`qemu_evmcs.kvm.simkvm.VARIANTS`); ``"revision"`` asks for the
        latest eVMCS revision the kernel knows.
    :raise NegativeAnswer: eVMCS cannot be enabled on that host (AMD, nested off, CONFIG_KVM_HYPERV=n,
        pre-4.20), or, with ``evmcs=False``, the host has no nested VMX at all (exit 1).
    :raise InputError: unknown ``variant``.
    """
    variant = design_name(variant)   # the variant names are the design names
    reg = registry()
    kvm = SimKvm(profile, variant=variant)
    era = kvm.era
    _check_answerable(profile, kvm, evmcs)
    try:
        guest = host_model_guest_msrs(profile, evmcs=evmcs, pv_perf_global_ctrl=pv_perf_global_ctrl,
                                      variant=variant, revision=EVMCS_REVISION_LATEST)
    except KvmError as err:  # pragma: no cover - _check_answerable refuses these hosts first
        raise NegativeAnswer(err.message, file=profile.source or profile.name, host=profile.name,
                             layer=LAYER_KVM) from err
    named = {(f.word, f.bit): f for f in reg.features.values()}
    filtering = evmcs and era.filter_at != "none"

    views: dict[str, MsrView] = {}
    for name in reg.msr_names():
        if name not in profile.msrs:
            continue
        msr = reg.msrs[name]
        host = profile.msrs[name]
        emulated = name in guest
        gval = guest.get(name, 0)
        views[name] = MsrView(name=name, index=msr.index, host=host, guest=gval, emulated=emulated,
                              removed=removed_bits(era, msr, host, gval, emulated, named, reg,
                                                   perf_gate_open=pv_perf_global_ctrl, filtered=filtering))

    features = tuple(_explain_feature(f, profile, guest, views, era, filtering, pv_perf_global_ctrl, reg)
                     for f in reg.features.values())
    return HostExplanation(
        host=profile.name, source=profile.source, kernel=profile.kernel, era=era.id, evmcs=evmcs,
        pv_perf_global_ctrl=pv_perf_global_ctrl, variant=variant, filter_at=era.filter_at if evmcs else "none",
        msrs=tuple(views.values()), features=features,
        notes=tuple(_notes(profile, kvm, era, evmcs, pv_perf_global_ctrl, variant, views, features, reg)),
    )


def _explain_feature(feat: Feature, profile: HostProfile, guest: Mapping[str, int], views: Mapping[str, MsrView],
                     era: Era, filtering: bool, pv_perf: bool, reg: Registry) -> FeatureExplanation:
    src = word_source_msr(feat.word, profile.msrs, reg)
    word_msrs = reg.msrs_of_word(feat.word)
    default = reg.words[feat.word].qemu_msr or word_msrs[0].name
    msr = reg.msrs[src or default]
    pos = bit_position(msr, feat.bit)

    def verdict(visible: bool, layer: str | None, reason: str, mask: str | None = None) -> FeatureExplanation:
        return FeatureExplanation(name=feat.name, qemu=feat.qemu, linux=feat.linux, word=feat.word, msr=msr.name,
                                  bit=feat.bit, visible=visible, layer=layer, reason=reason, mask=mask)

    if missing_layer(feat, profile, reg) == LAYER_CPU:
        assert profile.cpu_msrs is not None
        cpu_src = word_source_msr(feat.word, profile.cpu_msrs, reg)
        assert cpu_src is not None
        return verdict(False, LAYER_CPU, f"the CPU lacks it: {bit_position(reg.msrs[cpu_src], feat.bit)} is "
                                         f"clear in the hardware values (cpu_msrs)")
    if msr.name in NOT_EMULATED_MSRS:
        return verdict(False, LAYER_NOT_EMULATED,
                       f"not emulated: KVM emulates only {_emulated_range(reg)} for L1; {msr.name} "
                       f"({msr.index:#x}) is outside that range, so a guest read faults and no control "
                       f"it enumerates is usable")
    if src is None:
        return verdict(False, LAYER_KVM, f"KVM does not report {msr.name} at all")
    if not feature_present(feat, profile.msrs, reg):
        return verdict(False, LAYER_KVM, f"KVM does not report it: {pos} is clear in KVM's nested VMX MSRs "
                                         f"(KVM_GET_MSRS on the system fd)")
    if feature_present(feat, guest, reg):
        if not filtering:
            reason = f"visible: {pos} is set and eVMCS is off, so nothing filters it"
        elif not era.rules_for(msr.name):
            reason = f"visible: {pos} is set; the eVMCS filter of era {era.id} does not touch {msr.name}"
        elif not filter_msr(era, msr.name, profile.msrs[msr.name], perf_global_ctrl=pv_perf, reg=reg) & (
                feat.mask << (32 if msr.layout == "ctl" else 0)):
            reason = (f"visible: {pos} is set; the eVMCS filter of era {era.id} would remove it, but this ABI "
                      f"variant exposes the 2022 eVMCS update")
        elif pv_perf and any(r.perf_gated & feat.mask for r in era.rules_for(msr.name)):
            reason = (f"visible: {pos} is set and the guest's CPUID 0x4000000A.EBX bit 0 is set "
                      f"(--pv-perf-global-ctrl), so the PERF_GLOBAL_CTRL gate of era {era.id} opens")
        else:
            reason = f"visible: {pos} is set and the eVMCS filter of era {era.id} keeps it"
        others = [m.name for m in word_msrs if m.name != msr.name and m.name in views
                  and not feature_present(feat, {m.name: guest.get(m.name, 0)}, reg)
                  and feature_present(feat, {m.name: profile.msrs[m.name]}, reg)]
        if not others:
            return verdict(True, None, reason)
        # The one rule of visible (core.views): set in every form the guest reads. 5.15's filter clears
        # PINBASED_CTLS but forgets TRUE_PINBASED_CTLS (kvm-evmcs.md §3): an L1 that trusts the TRUE form fails
        # the eVMCS controls check at L2 VM-entry, so the control is not usable.
        other = reg.msrs[others[0]]
        gone = next((r for r in views[other.name].removed if r.bit == feat.bit), None)
        if gone is not None and gone.layer == LAYER_PERF:
            return verdict(False, LAYER_PERF, _perf_reason(era, other, feat))
        reason, mask = _filter_reason(era, other, feat)
        return verdict(False, LAYER_FILTER, f"{reason}; {msr.name} still shows it (the filter of era {era.id} "
                                            f"covers {', '.join(others)} only), but an L1 that uses it fails the "
                                            f"eVMCS controls check at L2 VM-entry", mask)
    removed = next((r for r in views[msr.name].removed if r.bit == feat.bit), None)
    if removed is not None and removed.layer == LAYER_PERF:
        return verdict(False, LAYER_PERF, _perf_reason(era, msr, feat))
    if removed is not None and removed.layer == LAYER_QEMU:
        return verdict(False, LAYER_QEMU, _qemu_reason(msr, feat))
    reason, mask = _filter_reason(era, msr, feat)
    return verdict(False, LAYER_FILTER, reason, mask)


def _notes(profile: HostProfile, kvm: SimKvm, era: Era, evmcs: bool, pv_perf: bool, variant: str,
           views: Mapping[str, MsrView], features: tuple[FeatureExplanation, ...], reg: Registry) -> list[str]:
    notes: list[str] = []
    partial = profile.unknown_note()
    if partial:
        notes.append(partial)
    if not evmcs:
        notes.append("eVMCS off (--no-evmcs): the guest reads KVM's nested values unfiltered")
    elif era.filter_at == "enable":
        notes.append(f"kernel {profile.kernel} (era {era.id}) sanitizes at enable time: nested_enable_evmcs() "
                     f"clears the bits in the vCPU's nested MSRs, so host reads (KVM_GET_MSRS) are filtered too "
                     f"once eVMCS is on, and QEMU's later KVM_SET_MSRS of the unfiltered values fails")
    elif era.filter_at == "read":
        notes.append(f"kernel {profile.kernel} (era {era.id}) filters guest reads only; host reads "
                     f"(KVM_GET_MSRS) stay unfiltered")
    if evmcs and era.active_needs_hyperv:
        notes.append("from 6.1 eVMCS counts as active only with Hyper-V enabled in the guest's CPUID "
                     "(QEMU hv-* flags); assumed on")
    if evmcs and any(f.layer == LAYER_PERF for f in features):
        notes.append("PERF_GLOBAL_CTRL is hidden because the guest's CPUID 0x4000000A.EBX bit 0 is clear: "
                     "QEMU never sets it; --pv-perf-global-ctrl shows the effect of setting it")
    if pv_perf and evmcs and not kvm.honours_perf_cpuid_bit():
        notes.append(f"--pv-perf-global-ctrl has no effect on kernel {profile.kernel}: KVM looks at "
                     f"0x4000000A.EBX bit 0 only from {kvm.facts.perf_global_ctrl_cpuid_since}")
    if variant != "shipped":
        since = (kvm.facts.variant_vmcs2_since if variant == "revision"
                 else kvm.facts.variant_get_evmcs_vmx_msrs_since)
        design = ("KVM_CAP_HYPERV_ENLIGHTENED_VMCS2 with the latest eVMCS revision (never merged)"
                  if variant == "revision" else "KVM_GET_EVMCS_VMX_MSRS (never implemented)")
        if kvm.version_at_least(since):
            notes.append(f"design {variant!r}: {design}; the 2022 eVMCS update (PERF_GLOBAL_CTRL, "
                         f"TSC scaling) is exposed")
        else:
            notes.append(f"design {variant!r}: {design} would appear in {since}; kernel {profile.kernel} "
                         f"behaves as shipped")
    for name, view in views.items():
        if not view.emulated:
            notes.append(f"{name} ({view.index:#x}) is not emulated for L1: the guest's read faults "
                         f"(shown as 0)")
    ident = profile.identity
    if ident.how != "upstream release":
        notes.append(f"kernel {profile.kernel}: {ident.how}")
    if era.backports:
        notes.append(f"era {era.id} by stable backports (the series' mainline era is {era.base}): "
                     + "; ".join(f"{a.backport.commit} \"{a.backport.title}\" (mainline {a.backport.mainline}, "
                                 f"since {a.since})" for a in era.backports))
    if evmcs and era.unverified:
        notes.append(f"caveat (era {era.id}): {era.unverified}")
    return notes
