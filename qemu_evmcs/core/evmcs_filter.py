"""The eVMCS VMX-MSR filter of each kernel era, as a pure function.

This is ``nested_evmcs_filter_control_msr()`` (5.7+) and the enable-time
sanitization of ``nested_enable_evmcs()`` (<= 5.6), driven by the rules of
``data/eras.yaml``. It is pure so that the simulated KVM, the resolver and
the negotiator all compute the guest view the same way, and so that its
invariants (subset of the input, allowed-0 untouched, idempotent) can be
property-tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping

from qemu_evmcs.core.kernel import Era, Rule
from qemu_evmcs.core.registry import MASK32, Registry, registry


@dataclass(frozen=True)
class Removal:
    """Why one feature bit disappears from an MSR under an era's filter."""

    msr: str
    word: str
    bit: int
    cause: str  # "evmcs-filter" | "perf-cpuid-gate"


def rule_mask(rule: Rule, perf_global_ctrl: bool) -> int:
    """The word bits that survive ``rule`` (1 = kept)."""
    keep = MASK32 if rule.allow is None else rule.allow
    keep &= ~rule.deny & MASK32
    if not perf_global_ctrl:
        keep &= ~rule.perf_gated & MASK32
    return keep


def filter_msr(era: Era, msr: str, value: int, *, perf_global_ctrl: bool = False,
               reg: Registry | None = None) -> int:
    """Apply the era's filter to one MSR value.

    :param perf_global_ctrl: the guest's CPUID 0x4000000A.EBX bit 0 (6.1+ gate).
    :return: the value an eVMCS-enabled L1 reads (for <= 5.6: what everyone reads after enabling).
    """
    reg = reg or registry()
    rules = era.rules_for(msr)
    if not rules:
        return value
    layout = reg.msrs[msr].layout
    for rule in rules:
        keep = rule_mask(rule, perf_global_ctrl)
        if layout == "ctl":
            # Only the allowed-1 half; allowed-0 (must-be-1) bits are never changed.
            value &= (keep << 32) | MASK32
        else:
            # VMFUNC: only bits 31:0 are masked; 63:32 pass (KVM supports none there anyway).
            value &= keep | (MASK32 << 32)
    return value


def filter_all(era: Era, msrs: Mapping[str, int], *, perf_global_ctrl: bool = False,
               reg: Registry | None = None) -> dict[str, int]:
    """:func:`filter_msr` over a whole MSR set."""
    return {name: filter_msr(era, name, v, perf_global_ctrl=perf_global_ctrl, reg=reg) for name, v in msrs.items()}


def removals(era: Era, msr: str, value: int, *, perf_global_ctrl: bool = False,
             reg: Registry | None = None) -> list[Removal]:
    """Each set allowed-1 bit of ``msr`` the filter clears, with its cause.

    A bit removed only because the PERF_GLOBAL_CTRL CPUID bit is clear is
    attributed to the gate; anything the era removes regardless is the filter.
    """
    reg = reg or registry()
    out: list[Removal] = []
    m = reg.msrs[msr]
    if m.word is None:
        return out
    after_with_perf = filter_msr(era, msr, value, perf_global_ctrl=True, reg=reg)
    after = filter_msr(era, msr, value, perf_global_ctrl=perf_global_ctrl, reg=reg)
    shift = 32 if m.layout == "ctl" else 0
    for bit in range(32):
        b = 1 << (bit + shift)
        if value & b and not after & b:
            cause = "perf-cpuid-gate" if after_with_perf & b else "evmcs-filter"
            out.append(Removal(msr=msr, word=m.word, bit=bit, cause=cause))
    return out
