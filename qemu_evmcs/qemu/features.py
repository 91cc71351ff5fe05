"""QEMU's CPUID flags that gate VMX features, and its Hyper-V enlightenments, in one table each.

Why one module: the start-up model (``qemu.cpu``), model validation (``models``/``validate``) and the
negotiator all need QEMU's rules -- which ``hv-*`` flag needs which (``kvm_hyperv_properties[].dependencies``),
which CPUID flag gates which ``vmx-*`` feature (``feature_dependencies[]``), which ``hv-*`` flag depends on a
0x4000000A.EAX bit KVM reports only from some release. Keeping the tables here, and deriving every other view
from them, means those rules cannot drift apart. (VMX bits themselves live in ``data/registry.yaml``; the
Hyper-V bits are TLFS CPUID bits, not VMX bits.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

from qemu_evmcs.kvm.simkvm import (
    HV_CPUID_ENLIGHTMENT_INFO,
    HV_CPUID_NESTED_FEATURES,
    HV_ENLIGHTENED_VMCS_RECOMMENDED,
    HV_NESTED_DIRECT_FLUSH,
    HV_NESTED_EVMCS1_PERF_GLOBAL_CTRL,
    HV_NESTED_MSR_BITMAP,
)

HV_CPUID_FEATURES = 0x40000003


@dataclass(frozen=True)
class CpuidFlag:
    """A CPUID feature bit QEMU models as a property; only those that gate VMX features are modelled."""

    name: str
    desc: str           # QEMU's feature_word_description(): ``CPUID.01H:ECX``
    bit: int
    gates: Tuple[str, ...]  # QEMU vmx-* names this flag gates (feature_dependencies[])


#: In QEMU FeatureWord order (FEAT_1_ECX, FEAT_7_0_EBX, FEAT_7_0_ECX, FEAT_8000_0001_EDX/ECX, FEAT_XSAVE).
CPUID_FLAGS: Tuple[CpuidFlag, ...] = (
    CpuidFlag("vmx", "CPUID.01H:ECX", 5, ()),
    CpuidFlag("rdrand", "CPUID.01H:ECX", 30, ("vmx-rdrand-exit",)),
    CpuidFlag("invpcid", "CPUID.07H:EBX", 10, ("vmx-invpcid-exit",)),
    CpuidFlag("mpx", "CPUID.07H:EBX", 14, ("vmx-exit-clear-bndcfgs", "vmx-entry-load-bndcfgs")),
    CpuidFlag("rdseed", "CPUID.07H:EBX", 18, ("vmx-rdseed-exit",)),
    CpuidFlag("waitpkg", "CPUID.07H:ECX", 5, ("vmx-enable-user-wait-pause",)),
    CpuidFlag("rdtscp", "CPUID.80000001H:EDX", 27, ("vmx-rdtscp-exit",)),
    CpuidFlag("lm", "CPUID.80000001H:EDX", 29, ("vmx-entry-ia32e-mode",)),
    CpuidFlag("svm", "CPUID.80000001H:ECX", 2, ()),
    CpuidFlag("xsaves", "CPUID.0DH:EAX", 3, ("vmx-xsaves",)),
)
CPUID_BY_NAME: Dict[str, CpuidFlag] = {f.name: f for f in CPUID_FLAGS}


@dataclass(frozen=True)
class HvFeature:
    """One entry of QEMU's ``kvm_hyperv_properties[]`` (enum order)."""

    prop: str
    desc: str
    cpuid: Tuple[Tuple[int, str, int], ...]   # (leaf, register, mask) the guest gets
    deps: Tuple[str, ...] = ()
    kvm_checked: bool = False   # support read from the simulated KVM's HV CPUID (eVMCS-related bits)
    since: Optional[str] = None  # KernelFacts attribute naming the first release that supports it
    skip_passthrough: bool = False


_F3, _F4, _NF = HV_CPUID_FEATURES, HV_CPUID_ENLIGHTMENT_INFO, HV_CPUID_NESTED_FEATURES

HV_FEATURES: Tuple[HvFeature, ...] = (
    HvFeature("hv-relaxed", "relaxed timing (hv-relaxed)", ((_F4, "eax", 1 << 5),)),
    HvFeature("hv-vapic", "virtual APIC (hv-vapic)", ((_F3, "eax", 1 << 4),)),
    HvFeature("hv-time", "clocksources (hv-time)", ((_F3, "eax", (1 << 1) | (1 << 9)),)),
    HvFeature("hv-crash", "crash MSRs (hv-crash)", ((_F3, "edx", 1 << 10),)),
    HvFeature("hv-reset", "reset MSR (hv-reset)", ((_F3, "eax", 1 << 7),)),
    HvFeature("hv-vpindex", "VP_INDEX MSR (hv-vpindex)", ((_F3, "eax", 1 << 6),)),
    HvFeature("hv-runtime", "VP_RUNTIME MSR (hv-runtime)", ((_F3, "eax", 1 << 0),)),
    HvFeature("hv-synic", "synthetic interrupt controller (hv-synic)", ((_F3, "eax", 1 << 2),)),
    HvFeature("hv-stimer", "synthetic timers (hv-stimer)", ((_F3, "eax", 1 << 3),), deps=("hv-synic", "hv-time")),
    HvFeature("hv-frequencies", "frequency MSRs (hv-frequencies)", ((_F3, "eax", 1 << 11), (_F3, "edx", 1 << 8))),
    HvFeature("hv-reenlightenment", "reenlightenment MSRs (hv-reenlightenment)", ((_F3, "eax", 1 << 13),)),
    HvFeature("hv-tlbflush", "paravirtualized TLB flush (hv-tlbflush)", ((_F4, "eax", (1 << 2) | (1 << 11)),),
              deps=("hv-vpindex",)),
    HvFeature("hv-evmcs", "enlightened VMCS (hv-evmcs)", ((_F4, "eax", HV_ENLIGHTENED_VMCS_RECOMMENDED),),
              deps=("hv-vapic",), kvm_checked=True),
    HvFeature("hv-ipi", "paravirtualized IPI (hv-ipi)", ((_F4, "eax", (1 << 10) | (1 << 11)),), deps=("hv-vpindex",)),
    HvFeature("hv-stimer-direct", "direct mode synthetic timers (hv-stimer-direct)", ((_F3, "edx", 1 << 19),),
              deps=("hv-stimer",)),
    HvFeature("hv-avic", "AVIC/APICv support (hv-avic/hv-apicv)", ((_F4, "eax", 1 << 9),)),
    HvFeature("hv-emsr-bitmap", "enlightened MSR-Bitmap (hv-emsr-bitmap)", ((_NF, "eax", HV_NESTED_MSR_BITMAP),),
              kvm_checked=True),
    HvFeature("hv-xmm-input", "XMM fast hypercall input (hv-xmm-input)", ((_F3, "edx", 1 << 4),)),
    HvFeature("hv-tlbflush-ext", "Extended gva ranges for TLB flush hypercalls (hv-tlbflush-ext)",
              ((_F3, "edx", 1 << 14),), deps=("hv-tlbflush",), since="direct_flush_since"),
    HvFeature("hv-tlbflush-direct", "direct TLB flush (hv-tlbflush-direct)", ((_NF, "eax", HV_NESTED_DIRECT_FLUSH),),
              deps=("hv-vapic",), kvm_checked=True),
    HvFeature("hv-syndbg", "Enable synthetic kernel debugger channel (hv-syndbg)", ((_F3, "edx", 1 << 11),),
              deps=("hv-synic", "hv-relaxed"), skip_passthrough=True),
    # Project plug-in feature (not in QEMU): see the module docstring.
    HvFeature("hv-evmcs-perf-global-ctrl", "eVMCS PERF_GLOBAL_CTRL (hv-evmcs-perf-global-ctrl)",
              ((_NF, "ebx", HV_NESTED_EVMCS1_PERF_GLOBAL_CTRL),), deps=("hv-evmcs",), kvm_checked=True),
)
HV_BY_PROP: Dict[str, HvFeature] = {f.prop: f for f in HV_FEATURES}
#: ``hv-apicv`` is an alias of ``hv-avic`` (added in x86_cpu_initfn).
HV_ALIASES = {"hv-apicv": "hv-avic"}
#: The project's plug-in option (documented in ``--help`` and the module docstrings).
PLUGIN_PERF_GLOBAL_CTRL = "hv-evmcs-perf-global-ctrl"


def hv_feature_supported(feat: HvFeature, leaves: Mapping[int, Mapping[str, int]],
                         kernel_at_least: Callable[[str], bool]) -> bool:
    """QEMU's ``hyperv_feature_supported`` once KVM_CAP_HYPERV is known to exist: eVMCS-related bits from KVM's
    HV CPUID ``leaves``, the rest by kernel release (``kernel_at_least(facts attribute)``).

    One rule for the simulated QEMU (``hv-passthrough`` and explicit flags) and for ``--model host,hv-passthrough``.
    """
    if feat.kvm_checked:
        return all((leaves.get(leaf, {}).get(reg, 0) & mask) == mask for leaf, reg, mask in feat.cpuid)
    if feat.since is not None:
        return kernel_at_least(feat.since)
    return True


def hv_requires() -> Dict[str, Tuple[str, ...]]:
    """``hv-*`` flag -> the flags QEMU requires with it (a hard error without them).

    The ``dependencies`` of ``kvm_hyperv_properties[]``, plus QEMU's extra check that ``hv-synic`` needs
    ``hv-vpindex`` (skipped only with ``x-hv-synic-kvm-only``).
    """
    out = {f.prop: f.deps for f in HV_FEATURES if f.deps}
    out["hv-synic"] = ("hv-vpindex",)
    return out


#: ``vmx-*`` (QEMU name) -> the CPUID flag QEMU requires for it to stay on (``feature_dependencies[]``).
VMX_CPUID_REQUIRES: Mapping[str, str] = {gated: f.name for f in CPUID_FLAGS for gated in f.gates}

#: ``hv-*`` flags that need a 0x4000000A.EAX bit KVM reports only from some release on -> that bit.
HV_NESTED_EAX_BITS: Mapping[str, int] = {
    f.prop: mask for f in HV_FEATURES if f.kvm_checked
    for leaf, reg, mask in f.cpuid if leaf == HV_CPUID_NESTED_FEATURES and reg == "eax"
}
