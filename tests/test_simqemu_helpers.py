"""Shared fixtures for the simulator tests: small host profiles written to a directory."""

from __future__ import annotations

import os

#: Skylake-S VMX MSRs (VirtualBox CPU database, Intel_Core_i7_6700K.h) with posted interrupts added to the pin-based
#: controls (bit 7), as on server parts.
SKYLAKE_MSRS: dict[str, int] = {
    "IA32_VMX_BASIC": 0xda040000000004,
    "IA32_VMX_PINBASED_CTLS": 0xff00000016,
    "IA32_VMX_PROCBASED_CTLS": 0xfff9fffe0401e172,
    "IA32_VMX_EXIT_CTLS": 0x1ffffff00036dff,
    "IA32_VMX_ENTRY_CTLS": 0x3ffff000011ff,
    "IA32_VMX_MISC": 0x7004c1e7,
    "IA32_VMX_CR0_FIXED0": 0x80000021,
    "IA32_VMX_CR0_FIXED1": 0xffffffff,
    "IA32_VMX_CR4_FIXED0": 0x2000,
    "IA32_VMX_CR4_FIXED1": 0x3727ff,
    "IA32_VMX_VMCS_ENUM": 0x2e,
    "IA32_VMX_PROCBASED_CTLS2": 0x1ffcff00000000,
    "IA32_VMX_EPT_VPID_CAP": 0xf0106334141,
    "IA32_VMX_TRUE_PINBASED_CTLS": 0xff00000016,
    "IA32_VMX_TRUE_PROCBASED_CTLS": 0xfff9fffe04006172,
    "IA32_VMX_TRUE_EXIT_CTLS": 0x1ffffff00036dfb,
    "IA32_VMX_TRUE_ENTRY_CTLS": 0x3ffff000011fb,
    "IA32_VMX_VMFUNC": 0x1,
}


def write_profile(directory: str, kernel: str, *, name: str | None = None, vendor: str = "GenuineIntel",
                  nested: bool = True, msrs: dict[str, int] | None = None) -> str:
    """Write a one-host profile YAML and return its path."""
    name = name or f"test-{vendor[:5].lower()}-{kernel}{'' if nested else '-nested-off'}"
    values = SKYLAKE_MSRS if msrs is None else msrs
    if vendor != "GenuineIntel":
        values = {}
    lines = [f"name: {name}", f"vendor: {vendor}", f'kernel: "{kernel}"', f"nested: {'true' if nested else 'false'}"]
    if values:
        lines.append("msrs:")
        lines += [f"  {k}: '0x{v:016x}'" for k, v in values.items()]
    else:
        lines.append("msrs: {}")
    path = os.path.join(directory, f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path
