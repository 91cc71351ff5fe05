"""The simulated KVM: capability, Hyper-V CPUID, KVM_SET_MSRS rules, enable order, EVMCS_ACTIVE and the
three ABI variants of the 2022 thread (kvm-evmcs.md §4.7, §5, §6.3, §8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemu_evmcs.core.errors import KvmError
from qemu_evmcs.core.profile import HostProfile, load_profile
from qemu_evmcs.kvm.simkvm import (
    EVMCS_REVISION_LATEST,
    HV_CPUID_ENLIGHTMENT_INFO,
    HV_CPUID_NESTED_FEATURES,
    KVM_CAP_GET_MSR_FEATURES,
    KVM_CAP_HYPERV_CPUID,
    KVM_CAP_HYPERV_ENLIGHTENED_VMCS,
    KVM_CAP_HYPERV_ENLIGHTENED_VMCS2,
    KVM_CAP_SYS_HYPERV_CPUID,
    HvCpuid,
    SimKvm,
    SimVcpu,
    guest_view,
)


CORE = Path(__file__).resolve().parent / "data" / "core"
SKYLAKE = load_profile(str(CORE / "skylake.yaml"))
FULL = load_profile(str(CORE / "synthetic-full.yaml"))
AMD = load_profile(str(CORE / "amd.yaml"))
NESTED_OFF = load_profile(str(CORE / "nested-off.yaml"))
NO_HYPERV = load_profile(str(CORE / "kvm-hyperv-n.yaml"))

TRUE_PIN = "IA32_VMX_TRUE_PINBASED_CTLS"


def vcpu(profile: HostProfile, kernel: str | None = None, variant: str = "shipped", *,
         hyperv: bool = True, perf: bool = False) -> SimVcpu:
    p = profile.with_kernel(kernel) if kernel else profile
    v = SimKvm(p, variant=variant).create_vcpu()
    v.set_hv_cpuid(HvCpuid(hyperv_enabled=hyperv, nested_eax=0x0101, nested_ebx=1 if perf else 0))
    return v


def errno_of(exc: pytest.ExceptionInfo[KvmError]) -> str:
    return exc.value.errno_name


# ---- KVM_CAP_HYPERV_ENLIGHTENED_VMCS --------------------------------------------------------------------

def test_cap_version_range_0x0101() -> None:
    kvm = SimKvm(SKYLAKE)
    assert kvm.check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) == 1
    assert kvm.create_vcpu().enable_evmcs() == 0x0101  # (KVM_EVMCS_VERSION 1 << 8) | 1
    assert kvm.check_extension(KVM_CAP_GET_MSR_FEATURES) == 1


def test_nested_off_58_plus_reports_cap_with_version_0() -> None:
    kvm = SimKvm(NESTED_OFF)  # 6.1.55, nested=0
    assert kvm.check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) == 1
    assert kvm.create_vcpu().enable_evmcs() == 0
    assert kvm.feature_msrs() == {}


def test_nested_off_before_58_has_no_hook() -> None:
    kvm = SimKvm(NESTED_OFF.with_kernel("5.4"))
    assert kvm.check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) == 0
    with pytest.raises(KvmError) as exc:
        kvm.create_vcpu().enable_evmcs()
    assert errno_of(exc) == "ENOTTY"
    assert "kvm_intel.nested=0" in str(exc.value)


def test_amd_has_no_hook() -> None:
    kvm = SimKvm(AMD)
    assert kvm.check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) == 0
    with pytest.raises(KvmError) as exc:
        kvm.create_vcpu().enable_evmcs()
    assert errno_of(exc) == "ENOTTY"
    assert "AuthenticAMD" in str(exc.value)


def test_config_kvm_hyperv_n_only_matters_from_68() -> None:
    kvm = SimKvm(NO_HYPERV)  # 6.8, CONFIG_KVM_HYPERV=n
    assert kvm.check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) == 0
    assert kvm.check_extension(KVM_CAP_SYS_HYPERV_CPUID) == 0
    with pytest.raises(KvmError) as exc:
        kvm.create_vcpu().enable_evmcs()
    assert errno_of(exc) == "ENOTTY"
    # the option does not exist before 6.8: the same flag on 6.6 changes nothing
    assert SimKvm(NO_HYPERV.with_kernel("6.6")).check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) == 1


def test_pre_420_has_no_cap() -> None:
    kvm = SimKvm(SKYLAKE.with_kernel("4.19"))
    assert kvm.check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) == 0
    with pytest.raises(KvmError) as exc:
        kvm.create_vcpu().enable_evmcs()
    assert errno_of(exc) == "EINVAL"


# ---- Hyper-V CPUID ---------------------------------------------------------------------------------------

def test_system_hv_cpuid_needs_511() -> None:
    assert SimKvm(SKYLAKE.with_kernel("5.10")).check_extension(KVM_CAP_SYS_HYPERV_CPUID) == 0
    with pytest.raises(KvmError) as exc:
        SimKvm(SKYLAKE.with_kernel("5.10")).get_supported_hv_cpuid()
    assert errno_of(exc) == "ENOTTY"
    assert SimKvm(SKYLAKE.with_kernel("5.11")).check_extension(KVM_CAP_SYS_HYPERV_CPUID) == 1


@pytest.mark.parametrize("kernel, eax, ebx", [
    ("5.11", 0x0101, 0),       # version range only
    ("5.15", 0x0101, 0),
    ("5.16", 0x0101, 0),
    ("5.17", 0x80101, 0),      # | HV_X64_NESTED_MSR_BITMAP (1 << 19), from 5.17 (eras.yaml, release [M])
    ("6.0", 0x80101, 0),
    ("6.1", 0x80101, 1),       # EBX bit 0 HV_X64_NESTED_EVMCS1_PERF_GLOBAL_CTRL from 6.1
    ("6.2", 0xA0101, 1),       # | HV_X64_NESTED_DIRECT_FLUSH (1 << 17)
    ("6.8", 0xA0101, 1),
])
def test_system_hv_cpuid_per_kernel(kernel: str, eax: int, ebx: int) -> None:
    leaves = SimKvm(SKYLAKE.with_kernel(kernel)).get_supported_hv_cpuid()
    assert leaves[HV_CPUID_ENLIGHTMENT_INFO]["eax"] == 0x4000  # HV_X64_ENLIGHTENED_VMCS_RECOMMENDED (bit 14)
    assert leaves[HV_CPUID_NESTED_FEATURES]["eax"] == eax
    assert leaves[HV_CPUID_NESTED_FEATURES]["ebx"] == ebx


def test_system_hv_cpuid_nested_off_omits_nested_leaf() -> None:
    leaves = SimKvm(NESTED_OFF).get_supported_hv_cpuid()
    assert HV_CPUID_NESTED_FEATURES not in leaves
    assert leaves[HV_CPUID_ENLIGHTMENT_INFO]["eax"] == 0


def test_vcpu_hv_cpuid_reports_evmcs_only_after_enable() -> None:
    v = SimKvm(SKYLAKE.with_kernel("6.1")).create_vcpu()
    before = v.get_supported_hv_cpuid()
    assert HV_CPUID_NESTED_FEATURES not in before and before[HV_CPUID_ENLIGHTMENT_INFO]["eax"] == 0
    v.enable_evmcs()
    after = v.get_supported_hv_cpuid()
    assert after[HV_CPUID_NESTED_FEATURES] == {"eax": 0x80101, "ebx": 1, "ecx": 0, "edx": 0}


# ---- KVM_SET_MSRS -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["IA32_VMX_PINBASED_CTLS", "IA32_VMX_PROCBASED_CTLS", "IA32_VMX_EXIT_CTLS",
                                  "IA32_VMX_ENTRY_CTLS", "IA32_VMX_CR0_FIXED1", "IA32_VMX_CR4_FIXED1"])
def test_non_true_forms_are_einval(name: str) -> None:
    v = vcpu(SKYLAKE)
    with pytest.raises(KvmError) as exc:
        v.set_msr(name, SKYLAKE.msrs[name])
    assert errno_of(exc) == "EINVAL"


def test_restricting_is_ok_and_updates_the_non_true_twin() -> None:
    v = vcpu(SKYLAKE)
    v.set_msr(TRUE_PIN, 0x3F00000016)  # drop the preemption timer
    assert v.get_msr(TRUE_PIN, host_initiated=True) == 0x3F00000016
    # the non-TRUE form reads as TRUE | PIN_BASED_ALWAYSON_WITHOUT_TRUE_MSR (0x16)
    assert v.get_msr("IA32_VMX_PINBASED_CTLS", host_initiated=True) == 0x3F00000016
    v.set_msr("IA32_VMX_PROCBASED_CTLS2", 0x0000000100000000)


@pytest.mark.parametrize("kernel", ["5.10", "6.3"])
def test_widening_is_einval(kernel: str) -> None:
    v = vcpu(SKYLAKE, kernel)
    with pytest.raises(KvmError) as exc:
        v.set_msr(TRUE_PIN, 0xFF00000016)  # posted interrupts (bit 39) are not supported
    assert errno_of(exc) == "EINVAL"
    with pytest.raises(KvmError) as exc:
        v.set_msr(TRUE_PIN, 0x7F00000006)  # clears a must-be-1 bit (bit 4)
    assert errno_of(exc) == "EINVAL"


def test_ebusy_after_vmxon() -> None:
    v = vcpu(SKYLAKE)
    v.vmxon = True
    with pytest.raises(KvmError) as exc:
        v.set_msr(TRUE_PIN, SKYLAKE.msrs[TRUE_PIN])
    assert errno_of(exc) == "EBUSY"


def test_not_emulated_and_absent_msrs_are_einval() -> None:
    v = vcpu(FULL)
    with pytest.raises(KvmError) as exc:
        v.set_msr("IA32_VMX_PROCBASED_CTLS3", 0x10)
    assert errno_of(exc) == "EINVAL"
    with pytest.raises(KvmError) as exc:
        v.get_msr("IA32_VMX_PROCBASED_CTLS3", host_initiated=False)
    assert errno_of(exc) == "EINVAL"
    no_true = HostProfile(**{**SKYLAKE.__dict__, "msrs": {k: x for k, x in SKYLAKE.msrs.items() if k != TRUE_PIN}})
    with pytest.raises(KvmError) as exc:  # KVM did not report it: no KeyError, an errno
        vcpu(no_true).set_msr(TRUE_PIN, 0x3F00000016)
    assert errno_of(exc) == "EINVAL"


def test_set_msrs_stops_at_first_failure() -> None:
    v = vcpu(SKYLAKE)
    n = v.set_msrs([(TRUE_PIN, 0x3F00000016), ("IA32_VMX_PINBASED_CTLS", 0x3F00000016), ("IA32_VMX_VMFUNC", 0)])
    assert n == 1
    assert v.get_msr("IA32_VMX_VMFUNC", host_initiated=True) == 1


# ---- order dependence: enable-time sanitization (<= 5.6) vs read-time filtering (5.7+) ----------------------

def test_54_enable_then_write_unfiltered_fails() -> None:
    v = vcpu(SKYLAKE, "5.4")
    v.enable_evmcs()
    assert v.get_msr(TRUE_PIN, host_initiated=True) == 0x3F00000016  # host reads are filtered too
    with pytest.raises(KvmError) as exc:
        v.set_msr(TRUE_PIN, 0x7F00000016)  # what QEMU read before enabling
    assert errno_of(exc) == "EINVAL"


def test_54_write_then_enable_succeeds() -> None:
    v = vcpu(SKYLAKE, "5.4")
    v.set_msr(TRUE_PIN, 0x7F00000016)
    v.enable_evmcs()
    assert v.get_msr(TRUE_PIN, host_initiated=False) == 0x3F00000016


@pytest.mark.parametrize("kernel", ["5.10", "6.0", "6.3"])
def test_57_plus_both_orders_succeed(kernel: str) -> None:
    a = vcpu(SKYLAKE, kernel)
    a.enable_evmcs()
    a.set_msr("IA32_VMX_TRUE_EXIT_CTLS", SKYLAKE.msrs["IA32_VMX_TRUE_EXIT_CTLS"])
    b = vcpu(SKYLAKE, kernel)
    b.set_msr("IA32_VMX_TRUE_EXIT_CTLS", SKYLAKE.msrs["IA32_VMX_TRUE_EXIT_CTLS"])
    b.enable_evmcs()
    # What the guest reads, allowed-1 half 0x1ffffff (allowed-0 0x36dfb untouched), by era (kvm-evmcs.md §2.4, §3):
    #   5.10 (5.6-5.14): only LOAD_PERF (bit 12) cleared           0x1ffffff & ~0x1000            = 0x1ffefff
    #   6.0 (5.17-6.0):  deny LOAD_PERF | SAVE_PREEMPT (bit 22)    0x1ffffff & ~(0x1000|0x400000) = 0x1bfefff
    #   6.3 (6.3+):      allow-list without the PV bit             0x1ffffff & 0x3bfefff          = 0x1bfefff
    guest_hi = {"5.10": 0x1FFFFFF & ~0x1000, "6.0": 0x1FFFFFF & ~(0x1000 | 0x400000),
                "6.3": 0x1FFFFFF & 0x3BFEFFF}[kernel]
    assert guest_hi == {"5.10": 0x1FFEFFF, "6.0": 0x1BFEFFF, "6.3": 0x1BFEFFF}[kernel]
    for v in (a, b):
        assert v.get_msr("IA32_VMX_TRUE_EXIT_CTLS", host_initiated=True) == 0x1FFFFFF00036DFB  # unfiltered
        assert hex(v.get_msr("IA32_VMX_TRUE_EXIT_CTLS", host_initiated=False)) == hex(guest_hi << 32 | 0x36DFB)


# ---- EVMCS_ACTIVE ------------------------------------------------------------------------------------------

def test_61_plus_needs_hyperv_in_guest_cpuid() -> None:
    v = vcpu(SKYLAKE, "6.3", hyperv=False)
    v.enable_evmcs()
    assert not v.evmcs_active()
    assert v.get_msr(TRUE_PIN, host_initiated=False) == 0x7F00000016  # unfiltered
    v.set_hv_cpuid(HvCpuid(hyperv_enabled=True))
    assert v.get_msr(TRUE_PIN, host_initiated=False) == 0x3F00000016


def test_60_does_not_need_hyperv() -> None:
    v = vcpu(SKYLAKE, "6.0", hyperv=False)
    v.enable_evmcs()
    assert v.evmcs_active()
    assert v.get_msr(TRUE_PIN, host_initiated=False) == 0x3F00000016


def test_perf_cpuid_bit_is_honoured_from_61() -> None:
    on = vcpu(SKYLAKE, "6.1", perf=True)
    on.enable_evmcs()
    assert on.get_msr("IA32_VMX_ENTRY_CTLS", host_initiated=False) == 0x3FFFF000011FF
    assert SimKvm(SKYLAKE.with_kernel("6.1")).honours_perf_cpuid_bit()
    old = vcpu(SKYLAKE, "6.0", perf=True)
    old.enable_evmcs()
    assert old.get_msr("IA32_VMX_ENTRY_CTLS", host_initiated=False) == 0x3DFFF000011FF
    assert not SimKvm(SKYLAKE.with_kernel("6.0")).honours_perf_cpuid_bit()


# ---- ABI variants -----------------------------------------------------------------------------------------

def test_revision_variant_is_strict_on_515() -> None:
    kvm = SimKvm(SKYLAKE.with_kernel("5.15"), variant="revision")
    assert kvm.check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS2) == 0
    with pytest.raises(KvmError) as exc:
        kvm.create_vcpu().enable_evmcs2(2)
    assert errno_of(exc) == "EINVAL"


def test_revision_variant_on_63() -> None:
    kvm = SimKvm(FULL.with_kernel("6.3"), variant="revision")
    assert kvm.check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS2) == 2
    with pytest.raises(KvmError) as exc:
        kvm.create_vcpu().enable_evmcs2(3)
    assert errno_of(exc) == "EINVAL"
    latest = kvm.create_vcpu()
    latest.set_hv_cpuid(HvCpuid(hyperv_enabled=True))
    assert latest.enable_evmcs2(EVMCS_REVISION_LATEST) == 0x0101
    assert latest.evmcs_revision == 2
    # revision 2: PERF exposed without the CPUID bit, TSC scaling (bit 57) exposed: 0xc51998fe | 0x02000000
    assert latest.get_msr("IA32_VMX_PROCBASED_CTLS2", host_initiated=False) == 0xC71998FE00000000
    assert latest.get_msr("IA32_VMX_TRUE_EXIT_CTLS", host_initiated=False) == 0x3BFFFFF00036DFB
    legacy = kvm.create_vcpu()
    legacy.set_hv_cpuid(HvCpuid(hyperv_enabled=True, nested_ebx=1))
    legacy.enable_evmcs2(1)
    # revision 1 ignores the PV CPUID bit: PERF hidden, TSC scaling hidden
    assert legacy.get_msr("IA32_VMX_TRUE_EXIT_CTLS", host_initiated=False) == 0x3BFEFFF00036DFB
    assert legacy.get_msr("IA32_VMX_PROCBASED_CTLS2", host_initiated=False) == 0xC51998FE00000000
    assert SimKvm(FULL).check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS2) == 0  # shipped: no such cap


def test_vmx_msrs_variant() -> None:
    with pytest.raises(KvmError) as exc:
        vcpu(SKYLAKE, "6.0", "vmx-msrs").get_evmcs_vmx_msrs()
    assert errno_of(exc) == "ENOTTY"
    with pytest.raises(KvmError) as exc:
        vcpu(SKYLAKE, "6.3").get_evmcs_vmx_msrs()  # the shipped ABI never had it
    assert errno_of(exc) == "ENOTTY"
    got = vcpu(FULL, "6.3", "vmx-msrs").get_evmcs_vmx_msrs()
    assert got["IA32_VMX_PROCBASED_CTLS2"] == 0xC71998FE00000000
    assert "IA32_VMX_PROCBASED_CTLS3" not in got


# ---- guest_view ------------------------------------------------------------------------------------------------

def test_guest_view_excludes_not_emulated_and_filters() -> None:
    g = guest_view(FULL.with_kernel("6.3"))
    assert "IA32_VMX_PROCBASED_CTLS3" not in g
    assert g["IA32_VMX_VMFUNC"] == 0x100000000
    assert guest_view(FULL, evmcs=False)["IA32_VMX_VMFUNC"] == 0x100000001
    with pytest.raises(KvmError):
        guest_view(AMD)


def test_vcpu_hv_cpuid_ioctl_needs_50() -> None:
    # KVM_GET_SUPPORTED_HV_CPUID on the vCPU fd (KVM_CAP_HYPERV_CPUID) came in 5.0 (eras.yaml kernel_facts).
    old = SimKvm(SKYLAKE.with_kernel("4.20"))
    assert old.check_extension(KVM_CAP_HYPERV_CPUID) == 0
    assert old.check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) == 1
    v = old.create_vcpu()
    with pytest.raises(KvmError) as exc:
        v.get_supported_hv_cpuid()
    assert errno_of(exc) == "ENOTTY"
    assert "KVM_CAP_HYPERV_CPUID" in str(exc.value)
    v.enable_evmcs()
    with pytest.raises(KvmError):
        v.get_supported_hv_cpuid()  # enabling eVMCS does not create the ioctl
    new = SimKvm(SKYLAKE.with_kernel("5.0"))
    assert new.check_extension(KVM_CAP_HYPERV_CPUID) == 1
    assert HV_CPUID_ENLIGHTMENT_INFO in new.create_vcpu().get_supported_hv_cpuid()
    # CONFIG_KVM_HYPERV=n (6.8+) takes the ioctl away too.
    assert SimKvm(NO_HYPERV).check_extension(KVM_CAP_HYPERV_CPUID) == 0
