"""Which VMX capability MSRs a CPU must have, given the ones it reports (SDM Vol. 3D A.1-A.11).

Why: a pasted vmxcap or rdmsr dump that was cut short still parses, and a profile built from it makes every
answer blame KVM or the filter for features that are only missing from the paste. The MSR values themselves say
which other MSRs exist:

- every VMX CPU has BASIC, the pin/primary/exit/entry control MSRs and MISC;
- BASIC bit 55 (``vmx-true-ctls``) set: the four IA32_VMX_TRUE_*_CTLS MSRs;
- primary allowed-1 bit 31 (``vmx-secondary-ctls``): IA32_VMX_PROCBASED_CTLS2;
- secondary allowed-1 bit 1 or 5 (``vmx-ept``, ``vmx-vpid``): IA32_VMX_EPT_VPID_CAP;
- secondary allowed-1 bit 13 (``vmx-vmfunc``): IA32_VMX_VMFUNC;
- primary allowed-1 bit 17 (``vmx-tertiary-ctls``): IA32_VMX_PROCBASED_CTLS3.

CR0/CR4 fixed MSRs and VMCS_ENUM are not required: vmxcap never prints them and the guest's values do not come
from the host (registry ``guest``). Also here: the quirks of raw dumps that KVM never reports (:func:`quirks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qemu_evmcs.core.msrval import allowed1
from qemu_evmcs.core.registry import Registry, registry

#: MSRs every VMX-capable CPU has (SDM A.1-A.6).
ALWAYS = ("IA32_VMX_BASIC", "IA32_VMX_PINBASED_CTLS", "IA32_VMX_PROCBASED_CTLS", "IA32_VMX_EXIT_CTLS",
          "IA32_VMX_ENTRY_CTLS", "IA32_VMX_MISC")
TRUE_MSRS = ("IA32_VMX_TRUE_PINBASED_CTLS", "IA32_VMX_TRUE_PROCBASED_CTLS", "IA32_VMX_TRUE_EXIT_CTLS",
             "IA32_VMX_TRUE_ENTRY_CTLS")


@dataclass(frozen=True)
class MissingMsr:
    """An MSR the CPU enumerates but the input lacks, and the bit that says it exists."""

    msr: str
    because: str

    def text(self) -> str:
        """``IA32_VMX_VMFUNC (secondary control vmx-vmfunc may be 1)``."""
        return f"{self.msr} ({self.because})"


def _allowed1(msrs: Mapping[str, int], msr: str, feature: str, reg: Registry) -> bool:
    value = msrs.get(msr)
    return value is not None and bool(allowed1(value) & reg.feature(feature).mask)


def _true_ctls_bit(reg: Registry) -> str:
    return f"IA32_VMX_BASIC bit {reg.feature('vmx-true-ctls').bit} (TRUE controls)"


def required_msrs(msrs: Mapping[str, int], reg: Registry | None = None) -> dict[str, str]:
    """MSR name -> why it must exist, for a CPU reporting ``msrs`` (empty: no VMX at all)."""
    reg = reg or registry()
    if not msrs:
        return {}
    out = {m: "every VMX processor has it" for m in ALWAYS}
    bit = {name: reg.feature(name).bit for name in ("vmx-secondary-ctls", "vmx-tertiary-ctls", "vmx-ept",
                                                    "vmx-vpid", "vmx-vmfunc")}
    basic = msrs.get("IA32_VMX_BASIC")
    if basic is not None and basic & reg.feature("vmx-true-ctls").mask:
        for m in TRUE_MSRS:
            out[m] = f"{_true_ctls_bit(reg)} is set"
    for ctl in ("IA32_VMX_PROCBASED_CTLS", "IA32_VMX_TRUE_PROCBASED_CTLS"):
        if _allowed1(msrs, ctl, "vmx-secondary-ctls", reg):
            out["IA32_VMX_PROCBASED_CTLS2"] = (f"primary control {bit['vmx-secondary-ctls']} (activate secondary "
                                               "controls) may be 1")
        if _allowed1(msrs, ctl, "vmx-tertiary-ctls", reg):
            out["IA32_VMX_PROCBASED_CTLS3"] = (f"primary control {bit['vmx-tertiary-ctls']} (activate tertiary "
                                               "controls) may be 1")
    if _allowed1(msrs, "IA32_VMX_PROCBASED_CTLS2", "vmx-ept", reg) or \
            _allowed1(msrs, "IA32_VMX_PROCBASED_CTLS2", "vmx-vpid", reg):
        out["IA32_VMX_EPT_VPID_CAP"] = f"secondary control {bit['vmx-ept']} (EPT) or {bit['vmx-vpid']} (VPID) may be 1"
    if _allowed1(msrs, "IA32_VMX_PROCBASED_CTLS2", "vmx-vmfunc", reg):
        out["IA32_VMX_VMFUNC"] = f"secondary control {bit['vmx-vmfunc']} (VM functions) may be 1"
    return out


def missing_msrs(msrs: Mapping[str, int], reg: Registry | None = None) -> list[MissingMsr]:
    """MSRs the CPU enumerates (:func:`required_msrs`) that ``msrs`` lacks, in index order."""
    reg = reg or registry()
    need = required_msrs(msrs, reg)
    return [MissingMsr(m, need[m]) for m in reg.msr_names() if m in need and m not in msrs]


def quirks(msrs: Mapping[str, int], reg: Registry | None = None) -> list[tuple[str, str]]:
    """Inconsistencies real hardware dumps show but KVM never reports: ``(msr, what)`` pairs.

    TRUE control MSRs present while BASIC bit 55 is clear (the CPU says they do not exist), and a TRUE/plain
    pair whose allowed-1 halves differ (the SDM requires them equal).
    """
    reg = reg or registry()
    out: list[tuple[str, str]] = []
    basic = msrs.get("IA32_VMX_BASIC")
    if basic is not None and not basic & reg.feature("vmx-true-ctls").mask:
        for name in TRUE_MSRS:
            if name in msrs:
                out.append((name, f"present although {_true_ctls_bit(reg)} is clear"))
    for msr in reg.msrs.values():
        if msr.true and msr.name in msrs and msr.true in msrs:
            a1, t1 = allowed1(msrs[msr.name]), allowed1(msrs[msr.true])
            if a1 != t1:
                diff = a1 ^ t1
                bit = (diff & -diff).bit_length() - 1
                out.append((msr.name, f"allowed-1 half differs from {msr.true} (first at control bit {bit})"))
    return out


__all__ = ["ALWAYS", "TRUE_MSRS", "MissingMsr", "missing_msrs", "quirks", "required_msrs"]
