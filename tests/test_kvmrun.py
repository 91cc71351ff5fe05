"""The real KVM guest runner (hostio/kvmrun.py, hostio/guestview.py) and ``host probe --guest-view``.

ioctl numbers are the values of include/uapi/linux/kvm.h on x86_64 (as strace prints them), written by hand;
guest code bytes are hand-assembled from the Intel opcode map. The live tests run a real guest through /dev/kvm
where it can run one; where it cannot, they assert the command's one-line refusal (exit 1).
"""

from __future__ import annotations

import os

import pytest
from cli_helpers import Run, cli_runner

from qemu_evmcs.core.errors import ProbeError
from qemu_evmcs.hostio import kvmrun
from qemu_evmcs.hostio.guestview import GuestView, compare, self_test
from qemu_evmcs.hostio.probe import kernel_version_from_proc


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    return cli_runner(capsys, monkeypatch, ["host"])


@pytest.mark.parametrize("name, value", [
    ("KVM_CREATE_VM", 0xAE01), ("KVM_GET_VCPU_MMAP_SIZE", 0xAE04), ("KVM_CREATE_VCPU", 0xAE41),
    ("KVM_SET_USER_MEMORY_REGION", 0x4020AE46), ("KVM_RUN", 0xAE80), ("KVM_GET_REGS", 0x8090AE81),
    ("KVM_SET_REGS", 0x4090AE82), ("KVM_GET_SREGS", 0x8138AE83), ("KVM_SET_SREGS", 0x4138AE84),
    ("KVM_SET_CPUID2", 0x4008AE90), ("KVM_ENABLE_CAP", 0x4068AEA3),
])
def test_ioctl_encodings(name: str, value: int) -> None:
    assert getattr(kvmrun, name) == value


def test_struct_sizes() -> None:
    # kvm_regs 18 u64; kvm_sregs 8 segments x 24 + 2 dtables x 16 + 7 u64 + interrupt_bitmap[4]; enable_cap 104
    assert (kvmrun.REGS.size, kvmrun.SREGS_SIZE, kvmrun.SEGMENT.size, kvmrun.DTABLE.size) == (144, 312, 24, 16)
    assert (kvmrun.ENABLE_CAP.size, kvmrun.MEMORY_REGION.size) == (104, 32)


def test_guest_code_bytes() -> None:
    assert kvmrun.RDMSR_CODE == bytes.fromhex(
        "0f32"        # rdmsr
        "6689d3"      # mov ebx, edx
        "bae900"      # mov dx, 0xe9
        "66ef"        # out dx, eax
        "6689d8"      # mov eax, ebx
        "66ef"        # out dx, eax
        "f4")         # hlt
    assert kvmrun.fault_handler(13) == bytes.fromhex("baea00" "b00d" "ee" "f4")  # mov dx,0xea; mov al,13; out; hlt


def test_kernel_version_from_proc() -> None:
    assert kernel_version_from_proc(None, "Ubuntu 5.4.0-131.147-generic 5.4.210\n") == "5.4.210"
    deb = ("Linux version 5.10.0-26-amd64 (debian-kernel@lists.debian.org) (gcc-10 (Debian 10.2.1-6) 10.2.1 "
           "20210110, GNU ld (GNU Binutils for Debian) 2.35.2) #1 SMP Debian 5.10.197-1 (2023-09-29)\n")
    assert kernel_version_from_proc(deb, None) == "5.10.197"
    assert kernel_version_from_proc("Linux version 6.1.0 (me@host) #1 SMP", None) is None


def test_compare_names_the_differing_bits() -> None:
    # A vendor kernel that still shows SHADOW_VMCS (2NDEXEC bit 14 -> MSR bit 46) where the simulation hides it.
    sim = {"IA32_VMX_PROCBASED_CTLS2": 0x001D98FE00000000}
    probed = GuestView(pv_perf_global_ctrl=False, evmcs_version=0x101,
                       msrs={"IA32_VMX_PROCBASED_CTLS2": 0x001D98FE00000000 | (1 << 46)})
    diffs = compare(probed, sim)
    assert [(d.msr, d.only_probed, d.only_simulated) for d in diffs] == [
        ("IA32_VMX_PROCBASED_CTLS2", ("vmx-shadow-vmcs",), ())]


def _can_run_guest() -> bool:
    try:
        self_test(os.environ.get("QEMU_EVMCS_KVM_DEVICE", "/dev/kvm"))
    except ProbeError:
        return False
    return True


def test_guest_runner_reads_cpuid_and_an_msr(run: Run) -> None:
    if not _can_run_guest():
        rc, out, err = run("host", "probe", "--guest-view")
        assert rc == 1 and out == "" and err.count("\n") == 1 and err.startswith("error: cannot run a KVM guest")
        return
    t = self_test()
    # CPUID leaf 0 as set by the runner: the vendor string "qemu-evmcs!!" in EBX, EDX, ECX
    assert t.cpuid0[1:] == (int.from_bytes(b"qemu", "little"), int.from_bytes(b"cs!!", "little"),
                            int.from_bytes(b"-evm", "little"))
    # the guest's RDMSR of IA32_APIC_BASE equals KVM_GET_MSRS on the same vCPU; 0x480 without VMX: #GP
    assert t.host_msr is not None and t.guest_msr == t.host_msr
    assert t.fault_vector == 13


def test_guest_view_command_here(run: Run) -> None:
    if not _can_run_guest():
        pytest.skip("covered by test_guest_runner_reads_cpuid_and_an_msr: no guest can run here")
    with kvmrun.KvmGuest() as g:
        evmcs = g.check_extension(163)
    rc, out, err = run("host", "probe", "--guest-view")
    if not evmcs:
        assert rc == 1 and out == "" and err.count("\n") == 1
        assert "KVM_CAP_HYPERV_ENLIGHTENED_VMCS is 0" in err
    else:  # pragma: no cover - needs an Intel host with nested=1
        assert rc in (0, 1) and ("matches the simulation" in out or "differ" in out or err)
