"""Hyper-V TLFS CPUID constants: leaves and the bits eVMCS negotiation reads.

Why in core: they are Microsoft's specification (Hyper-V Top-Level Functional Specification, "Feature
Discovery"; Linux arch/x86/include/asm/hyperv-tlfs.h), not a fact of the simulated KVM or of QEMU, and both of
those (and the probe) use them.
"""

from __future__ import annotations

HV_CPUID_FEATURES = 0x40000003
HV_CPUID_ENLIGHTMENT_INFO = 0x40000004
HV_CPUID_NESTED_FEATURES = 0x4000000A
HV_ENLIGHTENED_VMCS_RECOMMENDED = 1 << 14      # 0x40000004.EAX
HV_NESTED_DIRECT_FLUSH = 1 << 17               # 0x4000000A.EAX
HV_NESTED_MSR_BITMAP = 1 << 19                 # 0x4000000A.EAX
HV_NESTED_EVMCS1_PERF_GLOBAL_CTRL = 1 << 0     # 0x4000000A.EBX

__all__ = ["HV_CPUID_ENLIGHTMENT_INFO", "HV_CPUID_FEATURES", "HV_CPUID_NESTED_FEATURES",
           "HV_ENLIGHTENED_VMCS_RECOMMENDED", "HV_NESTED_DIRECT_FLUSH", "HV_NESTED_EVMCS1_PERF_GLOBAL_CTRL",
           "HV_NESTED_MSR_BITMAP"]
