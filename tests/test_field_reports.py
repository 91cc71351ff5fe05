"""Field reports reproduced by simulation (issue 11; kvm-evmcs.md §4.2, §6.1, §10.1, §10.3, §10.4).

Each test starts the simulated QEMU (the start-up model every command uses; QEMU 7.2.0's rules; the reports
ran QEMU 6.0-7.x, assumed to write the MSRs in the same order with the same text [M]) on a host profile with
the kernel of the report, and checks what the report saw. Expected values are the reports' own texts or are
derived by hand:
  - TRUE_PINBASED 0x48d: QEMU writes default1 0x16 | allowed-1 << 32; a host without posted interrupts (bit 7)
    gives 0x7f00000016, one with them 0xff00000016. The 4.20-5.5 enable-time filter clears bits 6 and 7
    (EVMCS1_UNSUPPORTED_PINCTRL 0xc0) from the vCPU's copy, so that write is refused and QEMU aborts.
  - SECONDARY_EXEC_ENABLE_VMFUNC is 2NDEXEC bit 13 and SHADOW_VMCS bit 14 (allowed-1 = MSR bits 45 and 46).
  - VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL is exit-control bit 12 (MSR bit 44), VM_ENTRY_... entry bit 13 (MSR 45).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_simqemu_helpers import SKYLAKE_MSRS, write_profile

from qemu_evmcs.core.profile import load_profile, resolve_profile_path
from qemu_evmcs.simqemu.cmdline import parse_args
from qemu_evmcs.simqemu.startup import boot, predict, read_vmx_msrs

CASCADELAKE = load_profile(resolve_profile_path("cascadelake-5.4"))  # Skylake-SP family: pin allowed-1 0xff
#: A host without posted interrupts: TRUE_PINBASED 0x7f00000016 (tests/data/core/skylake.yaml).
NO_PI = dict(load_profile(str(Path(__file__).resolve().parent / "data" / "core" / "skylake.yaml")).msrs)
VMFUNC, SHADOW = 1 << (13 + 32), 1 << (14 + 32)
EXIT_PERF, ENTRY_PERF = 1 << (12 + 32), 1 << (13 + 32)


def _argv(cpu: str) -> list[str]:
    return ["-accel", "kvm", "-cpu", cpu]


def _guest(profile_path: str, cpu: str) -> dict[str, int]:
    res = boot(parse_args(_argv(cpu)), load_profile(profile_path))
    assert res.ok, res.stderr
    assert res.machine is not None
    vcpu = res.machine.vcpus[0].kvm_vcpu
    assert vcpu is not None and vcpu.evmcs_enabled
    return read_vmx_msrs(vcpu, host_initiated=False)


@pytest.mark.parametrize("cpu", ["host,hv_passthrough", "host,hv-passthrough"])
def test_ubuntu_20_04_5_4_0_131_hv_passthrough_aborts(tmp_path: Path, cpu: str) -> None:
    # Ubuntu 20.04, 5.4.0-131.147 = 5.4.210 (version_signature): 5.4.y never got read-time filtering.
    assert NO_PI["IA32_VMX_TRUE_PINBASED_CTLS"] == 0x7F00000016
    p = predict(write_profile(str(tmp_path), "5.4.0-131-generic", msrs=NO_PI), _argv(cpu))
    assert not p.ok and p.exit_status == 134
    assert p.stderr[0] == "qemu-system-x86_64: error: failed to set MSR 0x48d to 0x7f00000016"
    assert "kvm.c:3177: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed." in p.stderr[1]


def test_xeon_silver_4116_on_5_0_0_36_aborts(tmp_path: Path) -> None:
    # A Skylake-SP (Xeon Silver 4116) reports posted interrupts: QEMU writes 0xff00000016. The MSRs here are the
    # bundled Cascade Lake sample's (same pin-based controls, 0xff); Ubuntu 18.04 HWE 5.0.0-36 is in the
    # 4.20-5.5 enable-time era whatever its point release (no 5.0.y backport changes it).
    msrs = dict(CASCADELAKE.msrs)
    p = predict(write_profile(str(tmp_path), "5.0.0-36-generic", msrs=msrs), _argv("host,hv-passthrough"))
    assert not p.ok and p.stderr[0] == "qemu-system-x86_64: error: failed to set MSR 0x48d to 0xff00000016"


@pytest.mark.parametrize("kernel", ["5.6", "5.10.46", "5.10.197", "5.15.0-91-generic", "6.1.55",
                                    "6.8.0-45-generic"])
def test_5_6_and_later_start_with_hv_passthrough(tmp_path: Path, kernel: str) -> None:
    p = predict(write_profile(str(tmp_path), kernel, name=f"h-{kernel}"), _argv("host,hv-passthrough"))
    assert p.ok and p.exit_status == 0, p.stderr


def test_ws2022_sees_vmfunc_and_shadow_vmcs_on_5_10_70_not_5_10_71(tmp_path: Path) -> None:
    # Windows Server 2022's Hyper-V refused to start with VMFUNC or SHADOW_VMCS advertised; 8d68bad6d869
    # (5.15, backported to 5.10.71) hides them. skylake.yaml's host 2NDEXEC allowed-1 has both (0x1ffcff).
    assert SKYLAKE_MSRS["IA32_VMX_PROCBASED_CTLS2"] & VMFUNC and SKYLAKE_MSRS["IA32_VMX_PROCBASED_CTLS2"] & SHADOW
    g70 = _guest(write_profile(str(tmp_path), "5.10.70", name="k70"), "host,hv-passthrough")
    g71 = _guest(write_profile(str(tmp_path), "5.10.71", name="k71"), "host,hv-passthrough")
    assert g70["IA32_VMX_PROCBASED_CTLS2"] & VMFUNC and g70["IA32_VMX_PROCBASED_CTLS2"] & SHADOW
    assert not g71["IA32_VMX_PROCBASED_CTLS2"] & VMFUNC and not g71["IA32_VMX_PROCBASED_CTLS2"] & SHADOW
    assert g70["IA32_VMX_VMFUNC"] == 0x1 and g71["IA32_VMX_VMFUNC"] == 0   # EPTP switching


def test_windows_11_needs_the_pv_bit_for_perf_global_ctrl_from_6_1(tmp_path: Path) -> None:
    # 6.1 shows the PERF_GLOBAL_CTRL controls to an eVMCS guest only if its CPUID 0x4000000A.EBX bit 0 is set
    # (Windows 11 does not boot with them visible without the bit). QEMU never sets it; the simulator's
    # project option hv-evmcs-perf-global-ctrl=on does. Before 6.1 the deny-list hides them regardless, and
    # KVM does not report the bit, so the option is refused there.
    base = "host,hv-evmcs=on,hv-vapic=on,vmx=on"
    for kernel in ("6.1.55", "6.8.0-45-generic"):
        path = write_profile(str(tmp_path), kernel, name=f"w11-{kernel}")
        off = _guest(path, base)
        on = _guest(path, base + ",hv-evmcs-perf-global-ctrl=on")
        assert not off["IA32_VMX_TRUE_EXIT_CTLS"] & EXIT_PERF and not off["IA32_VMX_TRUE_ENTRY_CTLS"] & ENTRY_PERF
        assert on["IA32_VMX_TRUE_EXIT_CTLS"] & EXIT_PERF and on["IA32_VMX_TRUE_ENTRY_CTLS"] & ENTRY_PERF
    old = write_profile(str(tmp_path), "6.0.19", name="w11-6.0")
    assert not _guest(old, base)["IA32_VMX_TRUE_EXIT_CTLS"] & EXIT_PERF
    refused = predict(old, _argv(base + ",hv-evmcs-perf-global-ctrl=on"))
    assert not refused.ok and "hv-evmcs-perf-global-ctrl" in refused.stderr[0]
