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
from qemu_evmcs.core.registry import registry
from qemu_evmcs.hostio.guestview import GuestView, compare, guest_msrs, self_test
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


def test_the_guest_reads_the_msrs_kvm_emulates_for_l1() -> None:
    # Linux arch/x86/kvm/x86.h: KVM_FIRST_EMULATED_VMX_MSR = MSR_IA32_VMX_BASIC (0x480), KVM_LAST_EMULATED_VMX_MSR
    # = MSR_IA32_VMX_VMFUNC (0x491); 0x492 (PROCBASED_CTLS3) is not emulated.
    assert [m.index for m in guest_msrs(registry())] == list(range(0x480, 0x492))


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
    if not evmcs:   # the machine's answer: a verdict line on stdout, not an error (issue 13)
        assert rc == 1 and err == "" and out.count("\n") == 1
        assert out.startswith("no-evmcs: ") and "KVM_CAP_HYPERV_ENLIGHTENED_VMCS is 0" in out
    else:  # pragma: no cover - needs an Intel host with nested=1
        assert rc in (0, 1) and ("matches the simulation" in out or "differ" in out or err)


# ---- the run loop against a scripted fake KVM (runs everywhere, /dev/kvm or not) ------------------------------

class ScriptedKvm:
    """Answers the runner's ioctls; KVM_RUN plays ``exits`` into the vCPU's kvm_run page (a temp file)."""

    def __init__(self, tmp: str, exits: list[tuple[int, int, int]]) -> None:
        self.tmp = tmp
        self.exits = list(exits)      # (exit_reason, port, value); port/value unused for non-IO exits
        self.run_fd = -1
        self.regs: list[int] = []

    def __call__(self, fd: int, request: int, arg: object) -> int:
        if request == kvmrun.KVM_CREATE_VM:
            return os.open(os.path.join(self.tmp, "vm"), os.O_RDWR | os.O_CREAT)
        if request == kvmrun.KVM_CREATE_VCPU:
            path = os.path.join(self.tmp, "run")
            with open(path, "wb") as fh:
                fh.write(bytes(4096))
            self.run_fd = os.open(path, os.O_RDWR)
            return self.run_fd
        if request == kvmrun.KVM_GET_VCPU_MMAP_SIZE:
            return 4096
        if request == kvmrun.KVM_SET_REGS:
            assert isinstance(arg, bytearray)
            self.regs = list(kvmrun.REGS.unpack(arg))
            return 0
        if request == kvmrun.KVM_RUN:
            reason, port, value = self.exits.pop(0)
            page = bytearray(4096)
            kvmrun.RUN_HEADER.pack_into(page, 0, 0, 0, reason)
            kvmrun.RUN_IO.pack_into(page, kvmrun.RUN_UNION_OFFSET, kvmrun.KVM_EXIT_IO_OUT, 4, port, 1, 512)
            page[512:516] = value.to_bytes(4, "little")
            os.pwrite(self.run_fd, bytes(page), 0)
            return 0
        return 0   # KVM_SET_USER_MEMORY_REGION, KVM_GET/SET_SREGS


def _scripted(tmp_path: os.PathLike[str], exits: list[tuple[int, int, int]]) -> tuple[kvmrun.KvmGuest, ScriptedKvm]:
    dev = os.path.join(os.fspath(tmp_path), "kvm")
    with open(dev, "w", encoding="utf-8"):
        pass
    fake = ScriptedKvm(os.fspath(tmp_path), exits)
    return kvmrun.KvmGuest(dev, ioctl=fake), fake


def test_run_loop_collects_port_writes_until_hlt(tmp_path: os.PathLike[str]) -> None:
    io_, hlt = kvmrun.KVM_EXIT_IO, kvmrun.KVM_EXIT_HLT
    g, fake = _scripted(tmp_path, [(io_, 0xE9, 0xFEE00900), (io_, 0xE9, 0x1), (hlt, 0, 0)])
    with g:
        assert g.guest_rdmsr(0x1B) == 0x1_FEE00900
        rcx, rip = fake.regs[kvmrun.REG_NAMES.index("rcx")], fake.regs[kvmrun.REG_NAMES.index("rip")]
        assert (rcx, rip) == (0x1B, kvmrun.RDMSR_AT)
        # the programs and the #GP vector are in guest memory: IVT[13] -> the handler
        assert bytes(g.mem[kvmrun.RDMSR_AT:kvmrun.RDMSR_AT + 2]) == b"\x0f\x32"
        assert int.from_bytes(g.mem[13 * 4:13 * 4 + 2], "little") == kvmrun.FAULT_AT + 16


def test_run_loop_reports_faults_and_bad_exits(tmp_path: os.PathLike[str]) -> None:
    g, _ = _scripted(tmp_path, [(kvmrun.KVM_EXIT_IO, kvmrun.FAULT_PORT, 13), (kvmrun.KVM_EXIT_SHUTDOWN, 0, 0)])
    with g:
        with pytest.raises(kvmrun.GuestFault) as fault:
            g.guest_rdmsr(0x480)
        assert fault.value.vector == 13
        with pytest.raises(ProbeError, match="KVM_EXIT_SHUTDOWN: triple fault"):
            g.guest_rdmsr(0x480)
