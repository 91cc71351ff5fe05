"""QEMU's VMX MSR composition (``make_vmx_msr_value`` / ``kvm_msr_entry_add_vmx``), in one place.

The start-up model uses it through :meth:`qemu_evmcs.qemu.cpu.X86Cpu.vmx_msr_entries`. Inputs are
VMX feature words as bit masks (registry word name -> optional controls / bits
the vCPU has) and the VMX MSRs KVM reports on the system fd; the output is the
list of ``(MSR name, value)`` QEMU hands to KVM_SET_MSRS, in QEMU 7.2's order
(qemu.md §2.2):

TRUE_PROCBASED, TRUE_PINBASED, TRUE_EXIT (| host-address-space-size when the
CPU has ``lm``), TRUE_ENTRY, PROCBASED_CTLS2, EPT_VPID_CAP (| the host's UC/WB
memory types when EPT is on), BASIC (| the host's revision, VMCS size and
memory type), MISC (| the host's timer rate and MSR-list size), VMFUNC (when
KVM lists it), CR0_FIXED0 (PE|NE|PG), CR4_FIXED0 (VMXE), VMCS_ENUM.

Also here: KVM's "supported" view of a feature MSR as QEMU reads it
(``kvm_arch_get_supported_msr_feature``) and QEMU's eVMCS version-range check
(``hyperv_init_vcpu``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from qemu_evmcs.core.msrval import names_to_word_masks
from qemu_evmcs.core.registry import MASK32, MASK64, Registry, registry

#: ``DEFAULT_EVMCS_VERSION`` of QEMU's kvm.c: min version 1 (low byte), max version 1 (high byte).
DEFAULT_EVMCS_VERSION = (1 << 8) | 1

#: Architectural CR bits QEMU writes into CR0_FIXED0 / CR4_FIXED0.
CR0_PE = 1 << 0
CR0_NE = 1 << 5
CR0_PG = 1 << 31
CR4_VMXE = 1 << 13
#: VMCS_ENUM values QEMU writes (highest VMCS field index: FRED, exit-secondary, TSC multiplier, preemption timer).
VMCS_ENUM_FRED = 0x52
VMCS_ENUM_EXIT_SECONDARY = 0x44
VMCS_ENUM_TSC_SCALING = 0x32
VMCS_ENUM_DEFAULT = 0x2E

#: Control words written through ``make_vmx_msr_value``, with the MSR QEMU writes, in QEMU's order.
CTL_WRITES: tuple[tuple[str, str], ...] = (
    ("IA32_VMX_TRUE_PROCBASED_CTLS", "procbased"),
    ("IA32_VMX_TRUE_PINBASED_CTLS", "pinbased"),
    ("IA32_VMX_TRUE_EXIT_CTLS", "exit"),
    ("IA32_VMX_TRUE_ENTRY_CTLS", "entry"),
    ("IA32_VMX_PROCBASED_CTLS2", "secondary"),
)

#: Every MSR ``kvm_msr_entry_add_vmx`` may write, in its order.
WRITE_ORDER: tuple[str, ...] = (
    *(msr for msr, _ in CTL_WRITES),
    "IA32_VMX_EPT_VPID_CAP", "IA32_VMX_BASIC", "IA32_VMX_MISC", "IA32_VMX_VMFUNC",
    "IA32_VMX_CR0_FIXED0", "IA32_VMX_CR4_FIXED0", "IA32_VMX_VMCS_ENUM",
)


def make_vmx_msr_value(default1: int, features: int) -> int:
    """QEMU's ``make_vmx_msr_value``: must-be-one in bits 31:0, can-be-one in bits 63:32.

    :param default1: the word's default1 class (the registry's ``always_on``).
    :param features: the optional controls the CPU has.
    """
    can_be_one = (features | default1) & MASK32
    can_be_zero = (features | ~default1) & MASK32
    must_be_one = ~can_be_zero & MASK32
    return must_be_one | (can_be_one << 32)


def field_mask(word: str, labels: tuple[str, ...], reg: Registry | None = None) -> int:
    """Mask of the registry fields (and single-bit features) of ``word`` whose vmxcap label is in ``labels``."""
    return (reg or registry()).label_mask(word, labels)


def supported_msr_feature(name: str, value: int, reg: Registry | None = None) -> int:
    """``kvm_arch_get_supported_msr_feature``: control MSRs as allowed-1 & ~allowed-0, others raw."""
    reg = reg or registry()
    if reg.msrs[name].layout == "ctl":
        return (value >> 32) & ~(value & MASK32) & MASK32
    return value


def evmcs_range_supported(want: tuple[int, int], supported: int) -> bool:
    """``hyperv_init_vcpu``'s check: is the wanted (min, max) eVMCS version range inside KVM's range?

    ``supported`` is KVM's u16 answer (min version in the low byte, max in the high byte; 0 = none).
    """
    lo, hi = supported & 0xFF, supported >> 8
    return bool(supported) and want[0] >= lo and want[1] <= hi


def compose_vmx_msrs(words: Mapping[str, int], host_msrs: Mapping[str, int], *, lm: bool = True,
                     reg: Registry | None = None) -> list[tuple[str, int]]:
    """``kvm_msr_entry_add_vmx``: the VMX MSRs QEMU writes for a vCPU with feature ``words``, in QEMU's order.

    :param words: VMX word -> bits the vCPU has (missing words count as 0).
    :param host_msrs: KVM's feature MSRs (system fd); the host-derived fields come from them.
    :param lm: the CPU has CPUID ``lm`` (a 64-bit guest: host-address-space-size may be 1 on VM exit).

    Writes every MSR of :data:`WRITE_ORDER` except VMFUNC when KVM does not list it; callers decide what
    to do when KVM lists no VMX MSRs at all (QEMU then writes nothing).
    """
    reg = reg or registry()
    w = {name: words.get(name, 0) for name in reg.words}
    misc_host = host_msrs.get("IA32_VMX_MISC", 0)
    ept_host = host_msrs.get("IA32_VMX_EPT_VPID_CAP", 0)
    basic_host = host_msrs.get("IA32_VMX_BASIC", 0)
    fixed_exit = reg.feature("vmx-exit-host-addr-space-size").mask << 32 if lm else 0
    fixed_basic = basic_host & reg.host_field_mask("IA32_VMX_BASIC")
    fixed_misc = misc_host & reg.host_field_mask("IA32_VMX_MISC")
    ept_mask = 0
    if w["secondary"] & reg.feature("vmx-ept").mask:
        ept_mask = reg.host_field_mask("IA32_VMX_EPT_VPID_CAP")
    out: list[tuple[str, int]] = []
    for msr, word in CTL_WRITES:
        value = make_vmx_msr_value(reg.words[word].always_on, w[word])
        out.append((msr, value | fixed_exit if word == "exit" else value))
    out.append(("IA32_VMX_EPT_VPID_CAP", w["ept_vpid"] | (ept_host & ept_mask)))
    out.append(("IA32_VMX_BASIC", w["basic"] | fixed_basic))
    out.append(("IA32_VMX_MISC", w["misc"] | fixed_misc))
    if "IA32_VMX_VMFUNC" in host_msrs:
        out.append(("IA32_VMX_VMFUNC", w["vmfunc"]))
    out.append(("IA32_VMX_CR0_FIXED0", CR0_PE | CR0_PG | CR0_NE))
    out.append(("IA32_VMX_CR4_FIXED0", CR4_VMXE))
    if w["entry"] & reg.feature("vmx-entry-load-fred").mask:
        enum = VMCS_ENUM_FRED
    elif w["exit"] & reg.feature("vmx-exit-secondary-ctls").mask:
        enum = VMCS_ENUM_EXIT_SECONDARY
    elif w["secondary"] & reg.feature("vmx-tsc-scaling").mask:
        enum = VMCS_ENUM_TSC_SCALING
    else:
        enum = VMCS_ENUM_DEFAULT
    out.append(("IA32_VMX_VMCS_ENUM", enum))
    return out


@functools.lru_cache(maxsize=1)
def _given() -> frozenset[str]:
    reg = registry()   # the one registry (package data): computed once
    named = names_to_word_masks((f.name for f in reg.features.values() if f.qemu is not None), reg)
    written = dict(compose_vmx_msrs(named, {m.name: MASK64 for m in reg.msrs.values()}, lm=True, reg=reg))
    out = set()
    for f in reg.features.values():
        for m in reg.msrs_of_word(f.word):
            if m.name in written and written[m.name] >> (32 if m.layout == "ctl" else 0) & f.mask:
                out.add(f.name)
    return frozenset(out)


def qemu_given_features() -> frozenset[str]:
    """THE rule of which VMX features a guest can be given at all: those QEMU can write into its VMX MSRs.

    Derived from :func:`compose_vmx_msrs` itself (every QEMU property on, a host reporting every bit), so it
    cannot drift from the composition: a feature QEMU has a property for, one it copies from KVM's value
    (``host_fields``: the EPT memory types) or sets itself (host address-space size). A bit KVM reports that is
    none of these (IA32_VMX_BASIC bit 49 dual-monitor, MISC bits 14/15/28, the PT-conceal controls) never reaches
    a guest: ``-cpu host``/``max`` take only named bits from KVM (``x86_cpu_get_migratable_flags``) and
    ``kvm_msr_entry_add_vmx`` writes only the feature words and those fields. Every count of "features the guest
    sees" (explain, guest-msrs, baseline, validate, the inventory's ``feature=`` filter, negotiate through the
    start-up model) follows this rule.
    """
    return _given()


def drop_ungiven(msrs: Mapping[str, int], reg: Registry | None = None) -> dict[str, int]:
    """``msrs`` (a guest's view as KVM would show it) without the bits of features QEMU never gives a guest
    (:func:`qemu_given_features`), in every MSR carrying their word (the non-TRUE controls KVM derives from the
    TRUE ones QEMU writes lose them too). Unnamed bits and host fields are left as they are."""
    masks = _ungiven_masks() if reg is None or reg is registry() else _ungiven_masks_of(reg)
    return {name: value & ~masks[name] & MASK64 if name in masks else value for name, value in msrs.items()}


def _ungiven_masks_of(reg: Registry) -> dict[str, int]:
    """Per MSR, the bits of the features QEMU never gives a guest (allowed-1 half for control MSRs)."""
    given = qemu_given_features()
    out: dict[str, int] = {}
    for f in reg.features.values():
        if f.name not in given:
            for m in reg.msrs_of_word(f.word):
                out[m.name] = out.get(m.name, 0) | f.mask << (32 if m.layout == "ctl" else 0)
    return out


@functools.lru_cache(maxsize=1)
def _ungiven_masks() -> dict[str, int]:
    """:func:`_ungiven_masks_of` the package registry, computed once: :func:`drop_ungiven` runs for every host
    view explain, baseline and the inventory's ``feature=`` filter compute."""
    return _ungiven_masks_of(registry())


#: Canonical feature names -> VMX word masks (the input of :func:`compose_vmx_msrs`). The same grouping as
#: :func:`qemu_evmcs.core.msrval.names_to_word_masks`, which it is (one copy), under the name this module exports.
feature_words = names_to_word_masks


__all__ = ["CTL_WRITES", "DEFAULT_EVMCS_VERSION", "WRITE_ORDER", "compose_vmx_msrs", "drop_ungiven",
           "evmcs_range_supported", "feature_words", "field_mask", "make_vmx_msr_value", "qemu_given_features",
           "supported_msr_feature"]
