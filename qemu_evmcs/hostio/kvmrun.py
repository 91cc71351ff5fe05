"""A minimal real KVM guest: one VM, one memory slot, one vCPU in real mode, run until HLT.

Why: the eVMCS filter acts only on *guest* reads (kvm-evmcs.md §0), so what an L1 really sees on a vendor
kernel can only be learnt by running guest code. This module is the I/O layer that does that with plain
``/dev/kvm`` ioctls (no QEMU): KVM_CREATE_VM, KVM_SET_USER_MEMORY_REGION, KVM_CREATE_VCPU, the vCPU's
``kvm_run`` mmap, KVM_SET_SREGS/KVM_SET_REGS, KVM_SET_CPUID2, KVM_ENABLE_CAP and the KVM_RUN loop handling
KVM_EXIT_IO (port writes) and KVM_EXIT_HLT. Guest programs are a few hand-assembled real-mode bytes that
execute RDMSR or CPUID and write the result to an I/O port; a #GP (or #UD) lands in a handler that writes the
vector to another port. Structures follow include/uapi/linux/kvm.h (x86_64)::

    struct kvm_userspace_memory_region { __u32 slot, flags; __u64 guest_phys_addr, memory_size, userspace_addr; };
    struct kvm_regs    { __u64 rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8..r15, rip, rflags; };   // 144 bytes
    struct kvm_segment { __u64 base; __u32 limit; __u16 selector;
                         __u8 type, present, dpl, db, s, l, g, avl, unusable, padding; };           // 24 bytes
    struct kvm_dtable  { __u64 base; __u16 limit; __u16 padding[3]; };                            // 16 bytes
    struct kvm_sregs   { struct kvm_segment cs, ds, es, fs, gs, ss, tr, ldt; struct kvm_dtable gdt, idt;
                         __u64 cr0, cr2, cr3, cr4, cr8, efer, apic_base; __u64 interrupt_bitmap[4]; }; // 312
    struct kvm_enable_cap { __u32 cap; __u32 flags; __u64 args[4]; __u8 pad[64]; };              // 104 bytes
    struct kvm_run     { __u8 request_interrupt_window, immediate_exit, padding1[6]; __u32 exit_reason; ...;
                         union at offset 32 { struct { __u8 direction, size; __u16 port; __u32 count;
                                                       __u64 data_offset; } io; ... }; };
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from dataclasses import dataclass
from types import TracebackType
from collections.abc import Sequence

from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.errors import ProbeError
from qemu_evmcs.hostio.probe import (CPUID2_HEADER, CPUID_ENTRY2, KVM_CHECK_EXTENSION, KVM_GET_MSRS,
                                     KVM_GET_SUPPORTED_CPUID, KVM_GET_SUPPORTED_HV_CPUID, KVMIO, CpuidEntry,
                                     IOC_READ, IOC_WRITE, _default_ioctl, ioc, io, pack_cpuid2,
                                     pack_msrs, unpack_cpuid2, unpack_msrs)
from qemu_evmcs.kvm.simkvm import KVM_CAP_HYPERV_ENLIGHTENED_VMCS

if TYPE_CHECKING:
    from qemu_evmcs.hostio.probe import IoctlFn

# --------------------------------------------------------------------------- ioctl encodings


def ior(type_: int, nr: int, size: int) -> int:
    """``_IOR(type, nr, size)``."""
    return ioc(IOC_READ, type_, nr, size)


def iow(type_: int, nr: int, size: int) -> int:
    """``_IOW(type, nr, size)``."""
    return ioc(IOC_WRITE, type_, nr, size)


MEMORY_REGION = struct.Struct("=IIQQQ")
REGS = struct.Struct("=18Q")
SEGMENT = struct.Struct("=QIH9Bx")
DTABLE = struct.Struct("=QH3H")
SREGS_SIZE = 8 * SEGMENT.size + 2 * DTABLE.size + 7 * 8 + 4 * 8
ENABLE_CAP = struct.Struct("=IIQQQQ64x")
RUN_HEADER = struct.Struct("=BB6xI")
RUN_IO = struct.Struct("=BBHIQ")
RUN_UNION_OFFSET = 32

KVM_CREATE_VM = io(KVMIO, 0x01)
KVM_GET_VCPU_MMAP_SIZE = io(KVMIO, 0x04)
KVM_CREATE_VCPU = io(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = iow(KVMIO, 0x46, MEMORY_REGION.size)
KVM_RUN = io(KVMIO, 0x80)
KVM_GET_REGS = ior(KVMIO, 0x81, REGS.size)
KVM_SET_REGS = iow(KVMIO, 0x82, REGS.size)
KVM_GET_SREGS = ior(KVMIO, 0x83, SREGS_SIZE)
KVM_SET_SREGS = iow(KVMIO, 0x84, SREGS_SIZE)
KVM_SET_CPUID2 = iow(KVMIO, 0x90, CPUID2_HEADER.size)
KVM_ENABLE_CAP = iow(KVMIO, 0xA3, ENABLE_CAP.size)

KVM_EXIT_IO, KVM_EXIT_HLT, KVM_EXIT_SHUTDOWN, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_INTERNAL_ERROR = 2, 5, 8, 9, 17
KVM_EXIT_IO_OUT = 1

#: Register order of ``struct kvm_regs``.
REG_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
             "r14", "r15", "rip", "rflags")

# --------------------------------------------------------------------------- guest programs (16-bit real mode)

DATA_PORT = 0xE9     # results, one 32-bit OUT per register
FAULT_PORT = 0xEA    # the vector of an exception the program took (#GP 13, #UD 6)
MEM_SIZE = 0x10000
RDMSR_AT, CPUID_AT, FAULT_AT = 0x1000, 0x1100, 0x1200


def _port(p: int) -> bytes:
    return bytes([0xBA, p & 0xFF, p >> 8])               # mov dx, imm16


OUT_EAX = bytes([0x66, 0xEF])                            # out dx, eax
HLT = bytes([0xF4])
#: ECX = MSR index on entry: rdmsr; mov ebx, edx; mov dx, DATA; out eax; mov eax, ebx; out eax; hlt
RDMSR_CODE = (bytes([0x0F, 0x32, 0x66, 0x89, 0xD3]) + _port(DATA_PORT) + OUT_EAX
              + bytes([0x66, 0x89, 0xD8]) + OUT_EAX + HLT)
#: EAX = leaf, ECX = subleaf: cpuid; mov esi, edx; mov dx, DATA; out eax; out ebx; out ecx; out esi; hlt
CPUID_CODE = (bytes([0x0F, 0xA2, 0x66, 0x89, 0xD6]) + _port(DATA_PORT) + OUT_EAX
              + bytes([0x66, 0x89, 0xD8]) + OUT_EAX + bytes([0x66, 0x89, 0xC8]) + OUT_EAX
              + bytes([0x66, 0x89, 0xF0]) + OUT_EAX + HLT)


def fault_handler(vector: int) -> bytes:
    """``mov dx, FAULT; mov al, vector; out dx, al; hlt``: where the IVT sends #GP/#UD."""
    return _port(FAULT_PORT) + bytes([0xB0, vector, 0xEE]) + HLT


@dataclass(frozen=True)
class PortWrite:
    """One ``out`` the guest executed."""

    port: int
    size: int
    value: int


class GuestFault(Exception):
    """The guest program took an exception (RDMSR of an MSR the vCPU does not have: #GP)."""

    def __init__(self, vector: int) -> None:
        super().__init__(f"guest exception vector {vector}")
        self.vector = vector


# --------------------------------------------------------------------------- the VM

class KvmGuest:
    """One VM with one vCPU and :data:`MEM_SIZE` bytes of guest memory at GPA 0, in 16-bit real mode.

    :raise ProbeError: any ioctl failing (one line naming it), as ``host probe`` does.
    """

    def __init__(self, device: str = "/dev/kvm", *, ioctl: IoctlFn = _default_ioctl) -> None:
        self.ioctl = ioctl
        self.device = device
        self._fds: list[int] = []
        self._maps: list[mmap.mmap] = []
        try:
            self.kvm = self._open(device)
            self.vm = self._call(self.kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM")
            self._fds.append(self.vm)
            self.mem = mmap.mmap(-1, MEM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
            self._maps.append(self.mem)
            addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mem))
            self._call(self.vm, KVM_SET_USER_MEMORY_REGION, bytearray(MEMORY_REGION.pack(0, 0, 0, MEM_SIZE, addr)),
                       "KVM_SET_USER_MEMORY_REGION")
            self.vcpu = self._call(self.vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU")
            self._fds.append(self.vcpu)
            size = self._call(self.kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
            self.run_map = mmap.mmap(self.vcpu, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._maps.append(self.run_map)
            self._load_programs()
            self._real_mode()
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- plumbing
    def _open(self, device: str) -> int:
        try:
            fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise ProbeError(f"cannot open {device}: {err.strerror or err} (KVM is not available or not "
                             f"accessible to this user)") from None
        self._fds.append(fd)
        return fd

    def _call(self, fd: int, request: int, arg: object, name: str) -> int:
        try:
            return self.ioctl(fd, request, arg)
        except OSError as err:
            raise ProbeError(f"{name} failed on {self.device}: {err.strerror or err}") from None

    def close(self) -> None:
        """Unmap and close everything (idempotent)."""
        for m in reversed(self._maps):
            try:
                m.close()
            except BufferError:  # pragma: no cover - a ctypes view still alive; the process exit frees it
                pass
        self._maps.clear()
        for fd in reversed(self._fds):
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> KvmGuest:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _load_programs(self) -> None:
        self.mem[RDMSR_AT:RDMSR_AT + len(RDMSR_CODE)] = RDMSR_CODE
        self.mem[CPUID_AT:CPUID_AT + len(CPUID_CODE)] = CPUID_CODE
        for i, vector in enumerate((6, 13)):           # #UD, #GP: real-mode IVT entries (offset, segment 0)
            at = FAULT_AT + 16 * i
            handler = fault_handler(vector)
            self.mem[at:at + len(handler)] = handler
            struct.pack_into("<HH", self.mem, 4 * vector, at, 0)

    def _real_mode(self) -> None:
        sregs = bytearray(SREGS_SIZE)
        self._call(self.vcpu, KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        base, limit, _sel, *flags = SEGMENT.unpack_from(sregs, 0)      # cs: flat, base 0 (reset: 0xffff0000)
        SEGMENT.pack_into(sregs, 0, 0, 0xFFFF, 0, *flags)
        self._call(self.vcpu, KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    # ---------------------------------------------------------------- KVM state
    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the system fd."""
        return self._call(self.kvm, KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def supported_cpuid(self) -> list[CpuidEntry]:
        """KVM_GET_SUPPORTED_CPUID (system fd)."""
        buf = pack_cpuid2(256)
        self._call(self.kvm, KVM_GET_SUPPORTED_CPUID, buf, "KVM_GET_SUPPORTED_CPUID")
        return unpack_cpuid2(buf)

    def vcpu_hv_cpuid(self) -> list[CpuidEntry]:
        """KVM_GET_SUPPORTED_HV_CPUID on the vCPU fd (carries the eVMCS version once enabled on it)."""
        buf = pack_cpuid2(32)
        self._call(self.vcpu, KVM_GET_SUPPORTED_HV_CPUID, buf, "KVM_GET_SUPPORTED_HV_CPUID")
        return unpack_cpuid2(buf)

    def set_cpuid(self, entries: Sequence[CpuidEntry]) -> None:
        """KVM_SET_CPUID2 with exactly ``entries``."""
        buf = pack_cpuid2(len(entries))
        for i, e in enumerate(entries):
            CPUID_ENTRY2.pack_into(buf, CPUID2_HEADER.size + i * CPUID_ENTRY2.size, e.function, e.index, e.flags,
                                   e.eax, e.ebx, e.ecx, e.edx, 0, 0, 0)
        self._call(self.vcpu, KVM_SET_CPUID2, buf, "KVM_SET_CPUID2")

    def enable_evmcs(self) -> int:
        """KVM_ENABLE_CAP(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) on the vCPU; returns the u16 version range."""
        version = ctypes.c_uint16(0)
        arg = bytearray(ENABLE_CAP.pack(KVM_CAP_HYPERV_ENLIGHTENED_VMCS, 0, ctypes.addressof(version), 0, 0, 0))
        self._call(self.vcpu, KVM_ENABLE_CAP, arg, "KVM_ENABLE_CAP(KVM_CAP_HYPERV_ENLIGHTENED_VMCS)")
        return int(version.value)

    def host_msrs(self, indices: Sequence[int]) -> dict[int, int]:
        """KVM_GET_MSRS on the vCPU fd (host-initiated: never eVMCS-filtered); MSRs KVM refuses are left out."""
        buf = pack_msrs(list(indices))
        n = self._call(self.vcpu, KVM_GET_MSRS, buf, "KVM_GET_MSRS")
        return dict(unpack_msrs(buf, n))

    # ---------------------------------------------------------------- running guest code
    def run(self, rip: int, regs: dict[str, int], *, max_exits: int = 64) -> list[PortWrite]:
        """Run from ``rip`` (real mode, CS base 0) with ``regs`` until HLT; the port writes in order.

        :raise GuestFault: the program's #GP/#UD handler ran.
        :raise ProbeError: shutdown (triple fault), failed entry, internal error or no HLT in ``max_exits``.
        """
        values = [0] * len(REG_NAMES)
        for name, v in regs.items():
            values[REG_NAMES.index(name)] = v
        values[REG_NAMES.index("rip")] = rip
        values[REG_NAMES.index("rflags")] = 0x2
        self._call(self.vcpu, KVM_SET_REGS, bytearray(REGS.pack(*values)), "KVM_SET_REGS")
        out: list[PortWrite] = []
        for _ in range(max_exits):
            self._call(self.vcpu, KVM_RUN, 0, "KVM_RUN")
            _req, _imm, reason = RUN_HEADER.unpack_from(self.run_map, 0)
            if reason == KVM_EXIT_HLT:
                return out
            if reason != KVM_EXIT_IO:
                raise ProbeError(f"KVM_RUN on {self.device}: unexpected exit {reason} "
                                 f"({_EXIT_NAMES.get(reason, 'see include/uapi/linux/kvm.h')})")
            direction, size, port, count, off = RUN_IO.unpack_from(self.run_map, RUN_UNION_OFFSET)
            if direction != KVM_EXIT_IO_OUT:
                raise ProbeError(f"KVM_RUN on {self.device}: the guest read port {port:#x}")
            for i in range(count):
                value = int.from_bytes(self.run_map[off + i * size:off + (i + 1) * size], "little")
                if port == FAULT_PORT:
                    raise GuestFault(value)
                out.append(PortWrite(port, size, value))
        raise ProbeError(f"KVM_RUN on {self.device}: the guest did not halt after {max_exits} exits")

    def guest_rdmsr(self, index: int) -> int:
        """The value the guest reads with RDMSR(``index``). :raise GuestFault: the read faulted (#GP)."""
        w = self.run(RDMSR_AT, {"rcx": index})
        if len(w) != 2:
            raise ProbeError(f"the RDMSR program wrote {len(w)} values, expected 2")
        return w[0].value | (w[1].value << 32)

    def guest_cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """(eax, ebx, ecx, edx) the guest reads with CPUID(``leaf``, ``subleaf``)."""
        w = self.run(CPUID_AT, {"rax": leaf, "rcx": subleaf})
        if len(w) != 4:
            raise ProbeError(f"the CPUID program wrote {len(w)} values, expected 4")
        return (w[0].value, w[1].value, w[2].value, w[3].value)


_EXIT_NAMES = {KVM_EXIT_SHUTDOWN: "KVM_EXIT_SHUTDOWN: triple fault", KVM_EXIT_FAIL_ENTRY: "KVM_EXIT_FAIL_ENTRY",
               KVM_EXIT_INTERNAL_ERROR: "KVM_EXIT_INTERNAL_ERROR"}
