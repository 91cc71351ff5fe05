"""kvm-evmcs.md §10.1: the corrections to the mainline timeline.

Expectations are hand-derived from the reference, not from eras.yaml:
- 31de3d2500e4 (read-time filter) is in tags/kvm-5.6-2 (6 Feb 2020) and 5.6.4's vmx_get_msr() calls
  nested_evmcs_filter_control_msr(): 5.6 filters guest reads only, so QEMU's KVM_SET_MSRS of the unfiltered
  TRUE_PINBASED value (0x7f00000016 on skylake.yaml) succeeds and the guest starts. 5.5 still sanitizes at
  enable time (QEMU aborts).
- 4.20: the enable hook exists on Intel even with nested=0 and returns 0x0101; 5.4: no hook with nested=0.
- 6.0 checks host-initiated VMX MSR writes against the KVM-wide values (nested.c in 6.0-rc1), 5.17 against
  the vCPU's current values.
- QEMU 7.2.0's assertion in kvm_buf_set_msrs is at kvm.c:3177.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_simqemu_helpers import write_profile

from qemu_evmcs.core.errors import KvmError
from qemu_evmcs.core.kernel import era_of
from qemu_evmcs.core.profile import load_profile
from qemu_evmcs.kvm.simkvm import KVM_CAP_HYPERV_ENLIGHTENED_VMCS, SimKvm
from qemu_evmcs.qemu.startup import ASSERT_LINE
from qemu_evmcs.simqemu.startup import predict

CORE = Path(__file__).resolve().parent / "data" / "core"
SKYLAKE = load_profile(str(CORE / "skylake.yaml"))
HOST_EVMCS = ["-accel", "kvm", "-cpu", "host,hv-evmcs=on,hv-vapic=on,vmx=on"]
TRUE_PIN = "IA32_VMX_TRUE_PINBASED_CTLS"
TRUE_PIN_SKYLAKE = 0x7F00000016  # skylake.yaml; pin allowed-1 0x7f incl. posted-intr (bit 7) and timer (bit 6)


def test_56_host_starts_the_guest(tmp_path: Path) -> None:
    p = predict(write_profile(str(tmp_path), "5.6"), HOST_EVMCS)
    assert p.ok and p.exit_status == 0, p.stderr


def test_56_filters_guest_reads_only() -> None:
    vcpu = SimKvm(SKYLAKE.with_kernel("5.6.4")).create_vcpu()
    vcpu.enable_evmcs()
    assert vcpu.get_msr(TRUE_PIN, host_initiated=True) == TRUE_PIN_SKYLAKE
    vcpu.set_msr(TRUE_PIN, TRUE_PIN_SKYLAKE)  # what QEMU writes: accepted
    # 31de3d2500e4 clears only PERF x2 and VIRTUALIZE_APIC_ACCESSES: the pin controls stay.
    assert vcpu.get_msr(TRUE_PIN, host_initiated=False) == TRUE_PIN_SKYLAKE
    assert era_of("5.6").filter_at == "read" and era_of("5.6").id == "5.6-5.14"


def test_55_still_sanitizes_at_enable_time(tmp_path: Path) -> None:
    assert era_of("5.5").filter_at == "enable" and era_of("5.5").id == "4.20-5.5"
    p = predict(write_profile(str(tmp_path), "5.5"), HOST_EVMCS)
    assert not p.ok and p.stderr[0].endswith("failed to set MSR 0x48d to 0xff00000016")


def test_420_hook_exists_with_nested_off() -> None:
    kvm = SimKvm(SKYLAKE.with_kernel("4.20").with_nested(False))
    assert kvm.check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) == 1
    assert kvm.create_vcpu().enable_evmcs() == 0x0101


def test_54_has_no_hook_with_nested_off() -> None:
    kvm = SimKvm(SKYLAKE.with_kernel("5.4").with_nested(False))
    assert kvm.check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) == 0


@pytest.mark.parametrize("kernel, wide", [("5.17", False), ("6.0", True), ("6.1", True)])
def test_host_writes_checked_against_kvm_wide_values_from_60(kernel: str, wide: bool) -> None:
    vcpu = SimKvm(SKYLAKE.with_kernel(kernel)).create_vcpu()
    vcpu.set_msr(TRUE_PIN, 0x3F00000016)          # restrict: drop posted-intr and the preemption timer
    if wide:
        vcpu.set_msr(TRUE_PIN, TRUE_PIN_SKYLAKE)  # KVM-wide values allow them again
    else:
        with pytest.raises(KvmError):
            vcpu.set_msr(TRUE_PIN, TRUE_PIN_SKYLAKE)


def test_qemu_assertion_line_is_3177() -> None:
    assert "target/i386/kvm/kvm.c:3177: kvm_buf_set_msrs" in ASSERT_LINE
