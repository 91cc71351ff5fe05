"""A simulated KVM with the eVMCS-related ABI of a host profile's kernel.

Why simulate: the build machines have no Intel VMX, and nobody has every
kernel era at hand. The object model mirrors KVM's: a system-level
:class:`SimKvm` (``/dev/kvm``: KVM_CHECK_EXTENSION, the feature-MSR list,
KVM_GET_SUPPORTED_HV_CPUID on the system fd), and per-vCPU
:class:`SimVcpu` state (the vCPU's nested VMX MSRs, eVMCS enabled or not, the
guest's Hyper-V CPUID, VMXON). Failures are :class:`~qemu_evmcs.core.errors.KvmError`
with the errno KVM would return.

ABI variants (``variant=``), the three designs of the 2022 thread:

- ``"shipped"`` -- what Linux actually merged: KVM_CAP_HYPERV_ENLIGHTENED_VMCS
  (version range 0x0101) and, from 6.1, the Microsoft PV CPUID bit
  0x4000000A.EBX[0] gating PERF_GLOBAL_CTRL. **This is the one that shipped.**
- ``"revision"`` -- v2 06/28 (never merged): KVM_CAP_HYPERV_ENLIGHTENED_VMCS2
  with a KVM-internal eVMCS revision; revision 1 = legacy filter, revision 2
  = the 2022 update exposing PERF_GLOBAL_CTRL and TSC scaling. Strict: a
  revision the kernel lacks is refused (-EINVAL) whatever the hardware.
- ``"vmx-msrs"`` -- Sean's KVM_GET_EVMCS_VMX_MSRS (never implemented): KVM
  returns the filtered MSRs to userspace; kernels without the ioctl answer
  -ENOTTY and userspace applies the documented filter itself.

The counterfactual variants are assumed to appear in the release given by
``kernel_facts.variant_*_since`` in ``data/eras.yaml`` (6.1); older kernels
behave as shipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping

from qemu_evmcs.core.hyperv import (  # the TLFS constants, re-exported for this module's users
    HV_CPUID_ENLIGHTMENT_INFO as HV_CPUID_ENLIGHTMENT_INFO,
    HV_CPUID_NESTED_FEATURES as HV_CPUID_NESTED_FEATURES,
    HV_ENLIGHTENED_VMCS_RECOMMENDED as HV_ENLIGHTENED_VMCS_RECOMMENDED,
    HV_NESTED_DIRECT_FLUSH as HV_NESTED_DIRECT_FLUSH,
    HV_NESTED_EVMCS1_PERF_GLOBAL_CTRL as HV_NESTED_EVMCS1_PERF_GLOBAL_CTRL,
    HV_NESTED_MSR_BITMAP as HV_NESTED_MSR_BITMAP,
)
from qemu_evmcs.core.errors import KvmError
from qemu_evmcs.core.evmcs_filter import filter_msr
from qemu_evmcs.core.kernel import Era, KernelFacts, era_table
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.registry import MASK32, MASK64, Registry, registry


# KVM capability numbers (include/uapi/linux/kvm.h).
KVM_CAP_HYPERV_ENLIGHTENED_VMCS = 163
KVM_CAP_GET_MSR_FEATURES = 153
KVM_CAP_SYS_HYPERV_CPUID = 191
#: KVM_GET_SUPPORTED_HV_CPUID on the vCPU fd (kernel_facts.hv_cpuid_vcpu_ioctl_since, 5.0).
KVM_CAP_HYPERV_CPUID = 167
#: v2 06/28 proposed 221; in mainline 221 is KVM_CAP_S390_ZPCI_OP. Simulation only.
KVM_CAP_HYPERV_ENLIGHTENED_VMCS2 = 221


VARIANTS = ("shipped", "revision", "vmx-msrs")
#: Revisions of design (a): 1 = legacy filter, 2 = 2022 update (PERF_GLOBAL_CTRL + TSC scaling).
EVMCS_REVISION_LEGACY = 1
EVMCS_REVISION_2022 = 2
#: arg[0] of KVM_CAP_HYPERV_ENLIGHTENED_VMCS2 meaning "the latest revision this kernel knows" (U32_MAX).
EVMCS_REVISION_LATEST = 0xFFFFFFFF

#: Control MSRs that userspace may only restrict (vmx_restore_control_msr).
_RESTORE_CONTROL = ("IA32_VMX_TRUE_PINBASED_CTLS", "IA32_VMX_TRUE_PROCBASED_CTLS", "IA32_VMX_TRUE_EXIT_CTLS",
                    "IA32_VMX_TRUE_ENTRY_CTLS", "IA32_VMX_PROCBASED_CTLS2")
#: Writes KVM rejects outright ("The rest of the VMX capability MSRs do not support restore").
_NO_RESTORE = ("IA32_VMX_PINBASED_CTLS", "IA32_VMX_PROCBASED_CTLS", "IA32_VMX_EXIT_CTLS",
               "IA32_VMX_ENTRY_CTLS", "IA32_VMX_CR0_FIXED1", "IA32_VMX_CR4_FIXED1")
#: KVM emulates 0x480..0x491 for L1; 0x492 (PROCBASED_CTLS3) is outside that range.
NOT_EMULATED_MSRS: tuple[str, ...] = ("IA32_VMX_PROCBASED_CTLS3",)
_NOT_EMULATED = NOT_EMULATED_MSRS


@dataclass
class HvCpuid:
    """The part of a guest's Hyper-V CPUID that eVMCS cares about (set by userspace per vCPU)."""

    hyperv_enabled: bool = False     # a Hyper-V signature at 0x40000000 (kvm_hv_set_cpuid)
    nested_eax: int = 0              # 0x4000000A.EAX
    nested_ebx: int = 0              # 0x4000000A.EBX

    @property
    def perf_global_ctrl(self) -> bool:
        """0x4000000A.EBX bit 0 (HV_X64_NESTED_EVMCS1_PERF_GLOBAL_CTRL)."""
        return bool(self.nested_ebx & HV_NESTED_EVMCS1_PERF_GLOBAL_CTRL)


@dataclass
class SimVcpu:
    """One vCPU: its nested VMX MSRs and eVMCS state."""

    kvm: SimKvm
    msrs: dict[str, int]
    evmcs_enabled: bool = False
    evmcs_revision: int = EVMCS_REVISION_LEGACY
    hv: HvCpuid = field(default_factory=HvCpuid)
    vmxon: bool = False
    #: Log of (ioctl, argument, result) for reports and tests.
    log: list[tuple[str, str, str]] = field(default_factory=list)

    # ------------------------------------------------------------------ eVMCS enable
    def enable_evmcs(self) -> int:
        """KVM_ENABLE_CAP(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) on this vCPU; returns the u16 version range.

        :raise KvmError: ENOTTY/EINVAL when the kernel or vendor has no hook.
        """
        kvm = self.kvm
        if not kvm.has_evmcs_hook():
            self.log.append(("ENABLE_CAP", "HYPERV_ENLIGHTENED_VMCS", "-ENOTTY"))
            raise KvmError(f"KVM_ENABLE_CAP(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) failed: {kvm.no_evmcs_reason()}",
                           errno_name="ENOTTY" if kvm.era.evmcs_cap else "EINVAL", host=kvm.profile.name,
                           layer="kvm")
        self.evmcs_enabled = True
        if kvm.era.filter_at == "enable":
            # 4.20-5.5: nested_enable_evmcs() clears unsupported controls in the vCPU's nested MSRs;
            # host-initiated reads see them filtered and later KVM_SET_MSRS of them fail.
            for name in list(self.msrs):
                self.msrs[name] = filter_msr(kvm.era, name, self.msrs[name])
        version = kvm.evmcs_version()
        self.log.append(("ENABLE_CAP", "HYPERV_ENLIGHTENED_VMCS", f"{version:#06x}"))
        return version

    def enable_evmcs2(self, revision: int) -> int:
        """Design (a): KVM_ENABLE_CAP(KVM_CAP_HYPERV_ENLIGHTENED_VMCS2, revision); returns the version range.

        ``revision`` of ``0xffffffff`` means "latest". Strict as proposed: an unknown revision is refused.
        """
        kvm = self.kvm
        max_rev = kvm.max_evmcs_revision()
        if max_rev == 0:
            self.log.append(("ENABLE_CAP", "HYPERV_ENLIGHTENED_VMCS2", "-EINVAL"))
            raise KvmError(f"KVM_CAP_HYPERV_ENLIGHTENED_VMCS2 is not supported by kernel {kvm.profile.kernel}",
                           errno_name="EINVAL", host=kvm.profile.name, layer="kvm")
        if revision == EVMCS_REVISION_LATEST:
            revision = max_rev
        if revision < 1 or revision > max_rev:
            self.log.append(("ENABLE_CAP", f"HYPERV_ENLIGHTENED_VMCS2 rev {revision}", "-EINVAL"))
            raise KvmError(f"eVMCS revision {revision} is not supported by kernel {kvm.profile.kernel} "
                           f"(latest: {max_rev})", errno_name="EINVAL", host=kvm.profile.name, layer="kvm")
        version = self.enable_evmcs()
        self.evmcs_revision = revision
        return version

    # ------------------------------------------------------------------ CPUID
    def set_hv_cpuid(self, hv: HvCpuid) -> None:
        """KVM_SET_CPUID2 with Hyper-V leaves: KVM caches 0x4000000A (kvm_hv_set_cpuid)."""
        self.hv = HvCpuid(hv.hyperv_enabled, hv.nested_eax & MASK32, hv.nested_ebx & MASK32)
        self.log.append(("SET_CPUID2", f"hyperv={hv.hyperv_enabled} 0x4000000A.EBX={hv.nested_ebx:#x}", "0"))

    def get_supported_hv_cpuid(self) -> dict[int, dict[str, int]]:
        """KVM_GET_SUPPORTED_HV_CPUID on the vCPU fd: eVMCS version only once enabled on this vCPU.

        :raise KvmError: ENOTTY on kernels without the ioctl (KVM_CAP_HYPERV_CPUID absent: before
            ``kernel_facts.hv_cpuid_vcpu_ioctl_since``, or CONFIG_KVM_HYPERV=n); QEMU then takes its legacy
            path and derives hv-evmcs support from KVM_CHECK_EXTENSION(KVM_CAP_HYPERV_ENLIGHTENED_VMCS).
        """
        kvm = self.kvm
        if not kvm.check_extension(KVM_CAP_HYPERV_CPUID):
            self.log.append(("GET_SUPPORTED_HV_CPUID", "vcpu fd", "-ENOTTY"))
            raise KvmError(f"KVM_GET_SUPPORTED_HV_CPUID on the vCPU fd needs kernel >= "
                           f"{kvm.facts.hv_cpuid_vcpu_ioctl_since} (KVM_CAP_HYPERV_CPUID; kernel "
                           f"{kvm.profile.kernel})", errno_name="ENOTTY", host=kvm.profile.name, layer="kvm")
        return kvm._hv_cpuid(kvm.evmcs_version() if self.evmcs_enabled else 0)

    # ------------------------------------------------------------------ MSRs
    def evmcs_active(self) -> bool:
        """EVMCS_ACTIVE(vcpu) of the era: enabled, and from 6.1 also Hyper-V enabled in guest CPUID."""
        if not self.evmcs_enabled:
            return False
        if self.kvm.era.active_needs_hyperv:
            return self.hv.hyperv_enabled
        return True

    def get_msr(self, name: str, *, host_initiated: bool) -> int:
        """Read a VMX capability MSR (vmx_get_msr); guest reads are filtered when eVMCS is active.

        :raise KvmError: EINVAL (#GP for the guest) when nested is off or the MSR is not emulated.
        """
        reg = registry()
        reg.msr(name)
        if not self.kvm.profile.nested or name in _NOT_EMULATED or name not in self.msrs:
            raise KvmError(f"{name} is not readable on this vCPU (nested={self.kvm.profile.nested})",
                           errno_name="EINVAL", msr=name, host=self.kvm.profile.name, layer="kvm")
        value = self.msrs[name]
        if host_initiated or not self.evmcs_active() or self.kvm.era.filter_at != "read":
            return value
        return self.kvm.guest_filter(name, value, perf_global_ctrl=self.hv.perf_global_ctrl,
                                     revision=self.evmcs_revision)

    def guest_msrs(self) -> dict[str, int]:
        """Every MSR this vCPU has, as the L1 guest reads it."""
        return {n: self.get_msr(n, host_initiated=False) for n in self.msrs if n not in _NOT_EMULATED}

    def set_msr(self, name: str, value: int) -> None:
        """One host-initiated KVM_SET_MSRS entry (vmx_set_vmx_msr).

        :raise KvmError: EBUSY after VMXON; EINVAL for non-restorable MSRs or a value that does not
            restrict what KVM supports.
        """
        kvm = self.kvm
        reg = registry()
        msr = reg.msr(name)
        where = dict(msr=name, host=kvm.profile.name, layer="kvm")
        if self.vmxon:
            raise KvmError(f"{name} cannot be written after VMXON", errno_name="EBUSY", **where)
        if not kvm.profile.nested or name in _NOT_EMULATED or name not in self.msrs:
            raise KvmError(f"{name} is not a writable VMX MSR here", errno_name="EINVAL", **where)
        if name in _NO_RESTORE:
            raise KvmError(f"{name} does not support restore (write the TRUE_ form)", errno_name="EINVAL",
                           **where)
        if value < 0 or value > MASK64:
            raise KvmError(f"{name} value out of range", errno_name="EINVAL", **where)
        supported = self._restore_reference(name)
        bad = _restore_violation(msr.layout, name, supported, value)
        if bad is not None:
            self.log.append(("SET_MSRS", f"{name}={value:#x}", "-EINVAL"))
            raise KvmError(f"{name}={value:#018x} is not a subset of what KVM supports ({supported:#018x}): {bad}",
                           errno_name="EINVAL", **where)
        self.msrs[name] = value
        if msr.word and msr.layout == "ctl":
            # KVM keeps one low/high pair per control; the non-TRUE form reads as TRUE | always-on.
            for twin in reg.msrs.values():
                if twin.true == name and twin.name in self.msrs:
                    self.msrs[twin.name] = value | reg.words[msr.word].always_on
        self.log.append(("SET_MSRS", f"{name}={value:#x}", "0"))

    def set_msrs(self, entries: list[tuple[str, int]]) -> int:
        """KVM_SET_MSRS semantics: entries in order, stop at the first failure; returns how many were set."""
        for i, (name, value) in enumerate(entries):
            try:
                self.set_msr(name, value)
            except KvmError:
                return i
        return len(entries)

    def _restore_reference(self, name: str) -> int:
        """What a write is checked against.

        Before 6.0 KVM compared with the vCPU's current nested MSRs (so the 4.20-5.5 enable-time
        sanitization makes unfiltered writes fail); from 6.0 with the KVM-wide values
        ("let userspace set nVMX MSR to any _host_ supported value", kvm-evmcs.md §10.1).
        """
        if self.kvm.version_at_least(self.kvm.facts.set_msr_checks_kvm_wide_since):
            return self.kvm.profile.msrs[name]
        return self.msrs[name]

    # ------------------------------------------------------------------ design (b)
    def get_evmcs_vmx_msrs(self) -> dict[str, int]:
        """Design (b): KVM_GET_EVMCS_VMX_MSRS; the filtered MSRs for this vCPU's current settings.

        :raise KvmError: ENOTTY on kernels without the (counterfactual) ioctl.
        """
        kvm = self.kvm
        if kvm.variant != "vmx-msrs" or not kvm.version_at_least(kvm.facts.variant_get_evmcs_vmx_msrs_since):
            raise KvmError("KVM_GET_EVMCS_VMX_MSRS is not supported by this kernel", errno_name="ENOTTY",
                           host=kvm.profile.name, layer="kvm")
        return {n: kvm.guest_filter(n, v, perf_global_ctrl=True, revision=EVMCS_REVISION_2022)
                for n, v in self.msrs.items() if n not in _NOT_EMULATED}


def _restore_violation(layout: str, name: str, supported: int, data: int) -> str | None:
    """``None`` if KVM accepts ``data`` for ``name``, else the reason (vmx_restore_* helpers)."""
    if name in _RESTORE_CONTROL:
        lo_s, hi_s = supported & MASK32, supported >> 32
        lo_d, hi_d = data & MASK32, data >> 32
        if lo_s & ~lo_d:
            return f"must-be-1 bits {lo_s & ~lo_d:#x} cleared"
        if hi_d & ~hi_s:
            return f"allowed-1 bits {hi_d & ~hi_s:#x} not supported"
        return None
    if name in ("IA32_VMX_CR0_FIXED0", "IA32_VMX_CR4_FIXED0"):
        return None if (data & supported) == supported else "fixed-0 bits cleared"
    if name == "IA32_VMX_VMCS_ENUM":
        return None
    if name == "IA32_VMX_BASIC":
        fixed = (0x7FFF_FFFF | (0x1FFF << 32))           # revision id and VMCS size must match
        if (data ^ supported) & fixed:
            return "revision id or VMCS size differs"
        return None if not (data & ~supported & ~fixed) else "feature bits not supported"
    if name == "IA32_VMX_MISC":
        if (data ^ supported) & 0x1F:
            return "preemption-timer rate differs"
        if (data >> 32) != (supported >> 32):
            return "MSEG revision differs"
        if ((data >> 16) & 0x1FF) > ((supported >> 16) & 0x1FF):
            return "more CR3-target values than supported"
        if ((data >> 25) & 0x7) > ((supported >> 25) & 0x7):
            return "larger MSR-list count than supported"
        feat = data & ~0x1F & ~(0x1FF << 16) & ~(0x7 << 25) & MASK32
        return None if not (feat & ~supported) else "feature bits not supported"
    # EPT_VPID_CAP and VMFUNC: a plain subset.
    return None if not (data & ~supported) else "bits not supported"


class SimKvm:
    """``/dev/kvm`` of one simulated host."""

    def __init__(self, profile: HostProfile, *, variant: str = "shipped") -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown ABI variant {variant!r}")
        self.profile = profile
        self.variant = variant
        self.era: Era = profile.era
        self.facts: KernelFacts = era_table().facts
        self.reg: Registry = registry()

    # ------------------------------------------------------------------ helpers
    def version_at_least(self, v: object) -> bool:
        """Is the host kernel at or after release ``v`` (a KernelVersion)?"""
        return self.profile.version.mm >= v.mm  # type: ignore[attr-defined, no-any-return]

    def has_evmcs_hook(self) -> bool:
        """Is ``nested_ops->enable_evmcs`` present (the cap is reported)?"""
        p = self.profile
        if not p.is_intel or not self.era.evmcs_cap:
            return False
        if not p.kvm_hyperv and self.version_at_least(self.facts.kvm_hyperv_config_since):
            return False
        if not p.nested and not self.nested_off_hook_anyway() \
                and not self.version_at_least(self.facts.nested_off_reports_cap_since):
            return False  # 5.0-5.7: hook installed only with nested=1 (5.4, 5.6 [V]; the rest [M])
        return True

    def nested_off_hook_anyway(self) -> bool:
        """4.20: the Intel enable hook exists (and answers 0x0101) even with kvm_intel.nested=0."""
        return self.profile.version.mm <= self.facts.nested_off_hook_last.mm

    def no_evmcs_reason(self) -> str:
        """Why :meth:`has_evmcs_hook` is false, in words."""
        p = self.profile
        if not p.is_intel:
            return f"{p.vendor} has no enable_evmcs hook (eVMCS is Intel VMX only)"
        if not self.era.evmcs_cap:
            return f"kernel {p.kernel} predates KVM_CAP_HYPERV_ENLIGHTENED_VMCS"
        if not p.kvm_hyperv:
            return f"kernel {p.kernel} is built with CONFIG_KVM_HYPERV=n"
        return f"kvm_intel.nested=0 on kernel {p.kernel}"

    def evmcs_version(self) -> int:
        """nested_get_evmcs_version(): 0x0101 when nested VMX is available, else 0."""
        if not self.has_evmcs_hook():
            return 0
        if not self.profile.nested and not self.nested_off_hook_anyway():
            return 0
        return self.facts.evmcs_version_range

    def max_evmcs_revision(self) -> int:
        """Design (a): the highest eVMCS revision the kernel knows (0 = no VMCS2 capability)."""
        if self.variant != "revision" or not self.has_evmcs_hook():
            return 0
        if self.version_at_least(self.facts.variant_vmcs2_since):
            return EVMCS_REVISION_2022
        return 0

    # ------------------------------------------------------------------ system ioctls
    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the system fd."""
        if cap == KVM_CAP_HYPERV_ENLIGHTENED_VMCS:
            return 1 if self.has_evmcs_hook() else 0
        if cap == KVM_CAP_HYPERV_ENLIGHTENED_VMCS2:
            return self.max_evmcs_revision()
        if cap in (KVM_CAP_SYS_HYPERV_CPUID, KVM_CAP_HYPERV_CPUID):
            since = (self.facts.hv_cpuid_system_ioctl_since if cap == KVM_CAP_SYS_HYPERV_CPUID
                     else self.facts.hv_cpuid_vcpu_ioctl_since)
            ok = self.version_at_least(since)
            hyperv_built = self.profile.kvm_hyperv or not self.version_at_least(self.facts.kvm_hyperv_config_since)
            return 1 if ok and hyperv_built else 0
        if cap == KVM_CAP_GET_MSR_FEATURES:
            return 1
        return 0

    def feature_msrs(self) -> dict[str, int]:
        """KVM_GET_MSR_FEATURE_INDEX_LIST + KVM_GET_MSRS on the system fd: the unfiltered VMX MSRs.

        With kvm_intel.nested=0 KVM lists no VMX MSRs (QEMU then reads BASIC as 0).
        """
        if not self.profile.nested or not self.profile.is_intel:
            return {}
        return dict(self.profile.msrs)

    def get_supported_hv_cpuid(self) -> dict[int, dict[str, int]]:
        """KVM_GET_SUPPORTED_HV_CPUID on the system fd (vcpu = NULL): 0x0101 whenever nested VMX is available.

        :raise KvmError: EINVAL (ENOTTY) without KVM_CAP_SYS_HYPERV_CPUID.
        """
        if not self.check_extension(KVM_CAP_SYS_HYPERV_CPUID):
            raise KvmError(f"KVM_GET_SUPPORTED_HV_CPUID on the system fd needs kernel >= "
                           f"{self.facts.hv_cpuid_system_ioctl_since}", errno_name="ENOTTY",
                           host=self.profile.name, layer="kvm")
        return self._hv_cpuid(self.evmcs_version())

    def hv_cpuid(self) -> dict[int, dict[str, int]]:
        """What kvm_get_hv_cpuid() reports for this kernel, whichever ioctl userspace must use to ask
        (system fd from 5.11, vCPU fd before): the eVMCS-relevant Hyper-V CPUID registers."""
        return self._hv_cpuid(self.evmcs_version())

    def _hv_cpuid(self, evmcs_ver: int) -> dict[int, dict[str, int]]:
        """The eVMCS-relevant registers of kvm_get_hv_cpuid() for a given evmcs_ver."""
        leaves: dict[int, dict[str, int]] = {HV_CPUID_ENLIGHTMENT_INFO: {"eax": 0, "ebx": 0, "ecx": 0, "edx": 0}}
        if evmcs_ver:
            leaves[HV_CPUID_ENLIGHTMENT_INFO]["eax"] |= HV_ENLIGHTENED_VMCS_RECOMMENDED
            eax = evmcs_ver
            if self.version_at_least(self.facts.direct_flush_since):
                eax |= HV_NESTED_DIRECT_FLUSH
            if self.version_at_least(self.facts.nested_msr_bitmap_since):
                eax |= HV_NESTED_MSR_BITMAP
            ebx = 0
            if self.version_at_least(self.facts.perf_global_ctrl_cpuid_since):
                ebx |= HV_NESTED_EVMCS1_PERF_GLOBAL_CTRL
            leaves[HV_CPUID_NESTED_FEATURES] = {"eax": eax, "ebx": ebx, "ecx": 0, "edx": 0}
        return leaves

    def honours_perf_cpuid_bit(self) -> bool:
        """Does this kernel look at 0x4000000A.EBX bit 0 at all (6.1+, shipped design)?"""
        return any(r.perf_gated for r in self.era.rules)

    def create_vcpu(self) -> SimVcpu:
        """KVM_CREATE_VCPU: nested MSRs start as what KVM reports (vmcs_config.nested)."""
        return SimVcpu(kvm=self, msrs=self.feature_msrs())

    # ------------------------------------------------------------------ the filter
    def guest_filter(self, name: str, value: int, *, perf_global_ctrl: bool, revision: int) -> int:
        """The guest-read filter of this kernel and ABI variant."""
        era = self.era
        if self.variant == "shipped" or not self.version_at_least(self.facts.variant_vmcs2_since):
            return filter_msr(era, name, value, perf_global_ctrl=perf_global_ctrl, reg=self.reg)
        if self.variant == "revision" and revision == EVMCS_REVISION_LEGACY:
            return filter_msr(era, name, value, perf_global_ctrl=False, reg=self.reg)
        # Revision 2 (design a) and design (b): the 2022 update, PERF_GLOBAL_CTRL and TSC scaling usable.
        out = filter_msr(era, name, value, perf_global_ctrl=True, reg=self.reg)
        return out | (value & self.revision2_extra_mask(name))

    def revision2_extra_mask(self, name: str) -> int:
        """MSR bits that the 2022 update exposes beyond the era filter (TSC scaling in PROCBASED_CTLS2)."""
        msr = self.reg.msrs[name]
        mask = 0
        for fname in era_table().revision2_exposes:
            feat = self.reg.feature(fname)
            if feat.word == msr.word:
                mask |= feat.mask << (32 if msr.layout == "ctl" else 0)
        return mask


def guest_view(profile: HostProfile, *, evmcs: bool = True, pv_perf_global_ctrl: bool = False,
               variant: str = "shipped", revision: int = EVMCS_REVISION_LEGACY) -> Mapping[str, int]:
    """The VMX MSRs an L1 guest reads with every feature KVM reports exposed (like ``-cpu host``).

    Sets the guest's Hyper-V CPUID (Hyper-V on; EBX bit 0 per ``pv_perf_global_ctrl``), enables eVMCS
    on the vCPU unless ``evmcs`` is false, and reads every MSR as the guest.

    :raise KvmError: when eVMCS cannot be enabled on this host.
    """
    kvm = SimKvm(profile, variant=variant)
    vcpu = kvm.create_vcpu()
    ebx = HV_NESTED_EVMCS1_PERF_GLOBAL_CTRL if pv_perf_global_ctrl else 0
    vcpu.set_hv_cpuid(HvCpuid(hyperv_enabled=True, nested_eax=0x0101 if evmcs else 0, nested_ebx=ebx))
    if evmcs:
        if variant == "revision" and kvm.max_evmcs_revision():
            vcpu.enable_evmcs2(revision)
        else:
            vcpu.enable_evmcs()
    return vcpu.guest_msrs()
