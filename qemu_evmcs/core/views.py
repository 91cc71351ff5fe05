"""What a guest can see in a set of VMX MSRs, and how two such views differ.

Why here (core): the start-up model (:mod:`qemu_evmcs.qemu.startup`), the negotiator, migration checks and
the simulated QEMU all compare guest views; the rules are VMX MSR arithmetic over the registry, so they
live below every user, once.

A control feature is *visible* only when every MSR carrying its word allows it: 5.15 filtered
PINBASED_CTLS but forgot TRUE_PINBASED_CTLS (kvm-evmcs.md §3), and an L1 that trusts the unfiltered
twin fails the eVMCS controls check at L2 VM-entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qemu_evmcs.core.registry import Registry, registry


def _msr_bit(reg: Registry, msr: str, feat_bit: int) -> int:
    """Mask of a feature's bit inside ``msr`` (allowed-1 half for control MSRs)."""
    return 1 << (feat_bit + (32 if reg.msrs[msr].layout == "ctl" else 0))


def visible_features(msrs: Mapping[str, int], reg: Registry | None = None) -> frozenset[str]:
    """Features set in *every* MSR of ``msrs`` that carries their word (allowed-1 for controls).

    A control filtered from one MSR but not its TRUE twin (5.15's forgotten TRUE_PINBASED) is *not*
    visible: an L1 that trusts the unfiltered twin fails the eVMCS controls check at L2 VM-entry.
    """
    reg = reg or registry()
    # Per word, the AND of its carriers' allowed bits, each shifted so that a feature's bit is bit f.bit (the
    # allowed-1 half of a control MSR is its high 32 bits, as in _msr_bit): a single-bit test per feature then
    # says "set in every carrier". Called ~130 times by one negotiation, so not one call per feature and MSR.
    allowed: dict[str, int] = {}
    for name, value in msrs.items():
        m = reg.msrs[name]
        if m.word is not None and name != "IA32_VMX_PROCBASED_CTLS3":
            bits = value >> 32 if m.layout == "ctl" else value
            prev = allowed.get(m.word)
            allowed[m.word] = bits if prev is None else prev & bits
    out = set()
    for f in reg.features.values():
        word_bits = allowed.get(f.word)
        if word_bits is not None and word_bits >> f.bit & 1:
            out.add(f.name)
    return frozenset(out)


def visible_properties(msrs: Mapping[str, int], reg: Registry | None = None) -> frozenset[str]:
    """QEMU ``vmx-*`` property names whose every bit is visible (:func:`visible_features`): the same rule in
    QEMU's vocabulary, for the start-up model's "requested but lost" list."""
    reg = reg or registry()
    vis = visible_features(msrs, reg)
    return frozenset(prop for prop, bits in reg.qemu_properties() if bits <= vis)


def partially_visible(msrs: Mapping[str, int], reg: Registry | None = None) -> frozenset[str]:
    """Features set in some, but not all, MSRs carrying their word."""
    reg = reg or registry()
    some = set()
    for name, value in msrs.items():
        w = reg.msrs[name].word
        if w is None or name == "IA32_VMX_PROCBASED_CTLS3":
            continue
        for f in reg.word_features(w):
            if value & _msr_bit(reg, name, f.bit):
                some.add(f.name)
    return frozenset(some - visible_features(msrs, reg))


def comparable_mask(msr: str, reg: Registry | None = None) -> int:
    """Bits of a guest-visible MSR that can differ between two hosts running one configuration.

    Follows the registry's model of where the guest's value comes from (``guest``, kvm-evmcs.md §10.2): control
    MSRs and VMFUNC (QEMU's feature words, and the non-TRUE forms KVM derives from them): every bit. BASIC, MISC,
    EPT_VPID_CAP: the named feature bits (the fields QEMU copies from KVM's value are KVM constants for nested).
    CR0/CR4_FIXED0 and VMCS_ENUM (QEMU's own constants), CR0/CR4_FIXED1 (KVM computes them from the guest's
    CPUID) and PROCBASED_CTLS3 (not emulated for L1): nothing, whatever the hosts report.
    """
    reg = reg or registry()
    m = reg.msrs[msr]
    if not m.host_dependent:
        return 0
    if m.layout in ("ctl", "allowed1"):
        return (1 << 64) - 1
    mask = 0
    for f in reg.word_features(m.word) if m.word else ():
        mask |= f.mask
    return mask


#: The changes that take something from a running guest (a control it may use disappears, or one becomes
#: required): a migration with any of them is unsafe. The others (``gained``, ``no-longer-required``) are harmless.
LOSING_CHANGES: tuple[str, ...] = ("lost", "now-required")


@dataclass(frozen=True)
class BitChange:
    """A guest-visible bit that differs between two views."""

    msr: str
    bit: int
    feature: str | None
    change: str  # "lost" | "gained" | "now-required" | "no-longer-required"

    @property
    def loses(self) -> bool:
        """Does this change take something from the guest (:data:`LOSING_CHANGES`)?"""
        return self.change in LOSING_CHANGES

    def label(self) -> str:
        """``vmx-posted-intr`` or ``IA32_VMX_MISC bit 3``."""
        return self.feature or f"{self.msr} bit {self.bit}"

    def to_json(self) -> dict[str, object]:
        """Plain data."""
        return {"msr": self.msr, "bit": self.bit, "feature": self.feature, "change": self.change}


def diff_views(before: Mapping[str, int], after: Mapping[str, int],
               reg: Registry | None = None) -> list[BitChange]:
    """Every compared bit that differs from ``before`` to ``after`` (see :func:`comparable_mask`).

    An MSR one view lacks reads as 0 there: KVM emulates 0x480-0x491 for every nested guest, and its value for
    an MSR the CPU does not have (VMFUNC without VM functions) is 0. Every change names a real bit.
    """
    reg = reg or registry()
    out: list[BitChange] = []
    for msr in reg.msr_names():
        mask = comparable_mask(msr, reg)
        if not mask or (msr not in before and msr not in after):
            continue
        b, a = before.get(msr, 0) & mask, after.get(msr, 0) & mask
        if b == a:
            continue
        m = reg.msrs[msr]
        feats = {f.bit: f.name for f in reg.word_features(m.word)} if m.word else {}
        if m.layout == "ctl":
            for bit in range(32):
                hb, ha = (b >> (bit + 32)) & 1, (a >> (bit + 32)) & 1
                lb, la = (b >> bit) & 1, (a >> bit) & 1
                if hb and not ha:
                    out.append(BitChange(msr, bit, feats.get(bit), "lost"))
                elif ha and not hb:
                    out.append(BitChange(msr, bit, feats.get(bit), "gained"))
                if la and not lb:
                    out.append(BitChange(msr, bit, feats.get(bit), "now-required"))
                elif lb and not la:
                    out.append(BitChange(msr, bit, feats.get(bit), "no-longer-required"))
        else:
            for bit in range(64):
                vb, va = (b >> bit) & 1, (a >> bit) & 1
                if vb != va:
                    out.append(BitChange(msr, bit, feats.get(bit), "lost" if vb else "gained"))
    return out


__all__ = ["LOSING_CHANGES", "BitChange", "comparable_mask", "diff_views", "partially_visible", "visible_features",
           "visible_properties"]
