"""Probe the running machine through ``/dev/kvm`` (system-fd ioctls only; no VM is created).

What is read, in order:

1. ``open(/dev/kvm)`` and ``KVM_GET_API_VERSION`` (must be 12);
2. ``/proc/cpuinfo`` vendor/family/model/stepping/model name: a non-Intel CPU has no VMX, so no eVMCS;
3. ``/sys/module/kvm_intel/parameters/nested`` (``N``/``0`` -> nested is off);
4. ``KVM_CHECK_EXTENSION`` for KVM_CAP_GET_MSR_FEATURES, KVM_CAP_HYPERV_ENLIGHTENED_VMCS and
   KVM_CAP_SYS_HYPERV_CPUID;
5. ``KVM_GET_MSR_FEATURE_INDEX_LIST`` and ``KVM_GET_MSRS`` on the system fd for the VMX capability MSRs
   (KVM lists them only with nested enabled; a missing or zero IA32_VMX_BASIC means nested is off);
6. ``KVM_GET_SUPPORTED_HV_CPUID`` on the system fd when KVM_CAP_SYS_HYPERV_CPUID is present;
7. ``os.uname().release`` for the kernel, and its upstream point release (``kernel_version``) from
   ``/proc/version_signature`` (Ubuntu) or ``/proc/version`` (Debian), which decides the era of a
   distribution build (:mod:`qemu_evmcs.core.kernelid`).

When the machine cannot answer (no Intel VMX, nested off, a KVM too old to list VMX MSRs) that is its answer:
:class:`~qemu_evmcs.core.errors.NegativeAnswer` (a verdict line, exit 1). Any other step failing (no access to
the device, not a KVM device, an ioctl failing) raises :class:`~qemu_evmcs.core.errors.ProbeError`, one
``error:`` line. No value is ever invented. Structures follow include/uapi/linux/kvm.h::

    struct kvm_msr_list  { __u32 nmsrs; __u32 indices[]; };
    struct kvm_msr_entry { __u32 index; __u32 reserved; __u64 data; };
    struct kvm_msrs      { __u32 nmsrs; __u32 pad; struct kvm_msr_entry entries[]; };
    struct kvm_cpuid_entry2 { __u32 function, index, flags, eax, ebx, ecx, edx; __u32 padding[3]; };
    struct kvm_cpuid2    { __u32 nent; __u32 padding; struct kvm_cpuid_entry2 entries[]; };
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.cpuid import from_cpuid
from qemu_evmcs.core.errors import EvmcsError, NegativeAnswer, ProbeError
from qemu_evmcs.core.profile import HostProfile, profile_from_mapping
from qemu_evmcs.core.registry import Registry, registry
from qemu_evmcs.qemu.models import load_snapshot

# KVM capability numbers and the Hyper-V CPUID leaf: defined once, in the simulator of the same kernel ABI.
from qemu_evmcs.kvm.simkvm import (HV_CPUID_NESTED_FEATURES, KVM_CAP_GET_MSR_FEATURES, KVM_CAP_HYPERV_ENLIGHTENED_VMCS,
                     KVM_CAP_SYS_HYPERV_CPUID)
from qemu_evmcs.core.regexcache import regex

if TYPE_CHECKING:
    from typing import Any

# --------------------------------------------------------------------------- ioctl numbers (asm-generic/ioctl.h)

_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS, _IOC_DIRBITS = 8, 8, 14, 2
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2


def ioc(direction: int, type_: int, nr: int, size: int) -> int:
    """``_IOC(dir, type, nr, size)``."""
    if size >= 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def io(type_: int, nr: int) -> int:
    """``_IO(type, nr)``."""
    return ioc(IOC_NONE, type_, nr, 0)


def iowr(type_: int, nr: int, size: int) -> int:
    """``_IOWR(type, nr, size)`` (size is ``sizeof`` the argument struct)."""
    return ioc(IOC_READ | IOC_WRITE, type_, nr, size)


KVMIO = 0xAE

MSR_LIST_HEADER = struct.Struct("=I")          # struct kvm_msr_list (flexible array excluded)
MSRS_HEADER = struct.Struct("=II")             # struct kvm_msrs
MSR_ENTRY = struct.Struct("=IIQ")              # struct kvm_msr_entry
CPUID2_HEADER = struct.Struct("=II")           # struct kvm_cpuid2
CPUID_ENTRY2 = struct.Struct("=7I3I")          # struct kvm_cpuid_entry2

KVM_GET_API_VERSION = io(KVMIO, 0x00)
KVM_CHECK_EXTENSION = io(KVMIO, 0x03)
KVM_GET_MSR_INDEX_LIST = iowr(KVMIO, 0x02, MSR_LIST_HEADER.size)
KVM_GET_MSR_FEATURE_INDEX_LIST = iowr(KVMIO, 0x0A, MSR_LIST_HEADER.size)
KVM_GET_MSRS = iowr(KVMIO, 0x88, MSRS_HEADER.size)
KVM_GET_SUPPORTED_HV_CPUID = iowr(KVMIO, 0xC1, CPUID2_HEADER.size)
KVM_GET_SUPPORTED_CPUID = iowr(KVMIO, 0x05, CPUID2_HEADER.size)

KVM_API_VERSION = 12

#: Environment variable overriding the KVM device path (for tests and containers).
DEVICE_ENV = "QEMU_EVMCS_KVM_DEVICE"
DEFAULT_DEVICE = "/dev/kvm"
NESTED_PARAM = "/sys/module/kvm_intel/parameters/nested"


# --------------------------------------------------------------------------- struct packing

def pack_msr_list(capacity: int) -> bytearray:
    """A ``kvm_msr_list`` buffer with room for ``capacity`` indices (``nmsrs`` = capacity)."""
    buf = bytearray(MSR_LIST_HEADER.size + 4 * capacity)
    MSR_LIST_HEADER.pack_into(buf, 0, capacity)
    return buf


def unpack_msr_list(buf: bytes | bytearray) -> list[int]:
    """The indices of a filled ``kvm_msr_list``."""
    (n,) = MSR_LIST_HEADER.unpack_from(buf, 0)
    cap = (len(buf) - MSR_LIST_HEADER.size) // 4
    if n > cap:
        raise ValueError(f"kvm_msr_list says {n} entries but the buffer holds {cap}")
    return list(struct.unpack_from(f"={n}I", buf, MSR_LIST_HEADER.size))


def pack_msrs(indices: list[int]) -> bytearray:
    """A ``kvm_msrs`` buffer asking for ``indices`` (data zeroed)."""
    buf = bytearray(MSRS_HEADER.size + MSR_ENTRY.size * len(indices))
    MSRS_HEADER.pack_into(buf, 0, len(indices), 0)
    for i, idx in enumerate(indices):
        MSR_ENTRY.pack_into(buf, MSRS_HEADER.size + i * MSR_ENTRY.size, idx, 0, 0)
    return buf


def unpack_msrs(buf: bytes | bytearray, count: int | None = None) -> list[tuple[int, int]]:
    """(index, data) of the first ``count`` (default: ``nmsrs``) entries of a ``kvm_msrs`` buffer."""
    n, _pad = MSRS_HEADER.unpack_from(buf, 0)
    if count is not None:
        n = min(n, count)
    out = []
    for i in range(n):
        idx, _res, data = MSR_ENTRY.unpack_from(buf, MSRS_HEADER.size + i * MSR_ENTRY.size)
        out.append((idx, data))
    return out


def pack_cpuid2(capacity: int) -> bytearray:
    """A ``kvm_cpuid2`` buffer with room for ``capacity`` entries."""
    buf = bytearray(CPUID2_HEADER.size + CPUID_ENTRY2.size * capacity)
    CPUID2_HEADER.pack_into(buf, 0, capacity, 0)
    return buf


@dataclass(frozen=True)
class CpuidEntry:
    """One ``kvm_cpuid_entry2``."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


def unpack_cpuid2(buf: bytes | bytearray) -> list[CpuidEntry]:
    """The entries of a filled ``kvm_cpuid2``."""
    n, _pad = CPUID2_HEADER.unpack_from(buf, 0)
    cap = (len(buf) - CPUID2_HEADER.size) // CPUID_ENTRY2.size
    if n > cap:
        raise ValueError(f"kvm_cpuid2 says {n} entries but the buffer holds {cap}")
    out = []
    for i in range(n):
        f, idx, flags, a, b, c, d, *_ = CPUID_ENTRY2.unpack_from(buf, CPUID2_HEADER.size + i * CPUID_ENTRY2.size)
        out.append(CpuidEntry(f, idx, flags, a, b, c, d))
    return out


# --------------------------------------------------------------------------- the probe

if TYPE_CHECKING:
    IoctlFn = Callable[[int, int, Any], int]


def _default_ioctl(fd: int, request: int, arg: Any) -> int:
    if isinstance(arg, bytearray):
        return int(fcntl.ioctl(fd, request, arg, True))
    return int(fcntl.ioctl(fd, request, arg))


@dataclass
class CpuInfo:
    """The first processor of /proc/cpuinfo."""

    vendor: str | None = None
    family: int | None = None
    model: int | None = None
    stepping: int | None = None
    model_name: str | None = None
    flags: list[str] = field(default_factory=list)


def parse_cpuinfo(text: str) -> CpuInfo:
    """Vendor, family, model, stepping, model name and flags of the first processor."""
    info = CpuInfo()
    for line in text.splitlines():
        if not line.strip():
            if info.vendor is not None or info.flags:
                break   # the end of the first processor block (a vendor-less one too: ``host import --cpuinfo``)
            continue
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "vendor_id":
            info.vendor = val
        elif key in ("cpu family", "model", "stepping"):
            try:
                num = int(val)
            except ValueError:
                continue
            setattr(info, {"cpu family": "family"}.get(key, key), num)
        elif key == "model name":
            info.model_name = val
        elif key == "flags":
            info.flags = val.split()
    return info


@dataclass
class ProbeResult:
    """Everything the probe read, and the profile built from it."""

    device: str
    api_version: int
    caps: dict[str, int]
    cpu: CpuInfo
    kernel: str
    msrs: dict[str, int]
    hv_cpuid: list[CpuidEntry]
    profile: HostProfile

    def to_mapping(self) -> dict[str, Any]:
        """Plain data: the profile plus what the probe saw."""
        return {
            "profile": self.profile.to_mapping(),
            "probe": {
                "device": self.device, "api_version": self.api_version, "caps": dict(self.caps),
                "hv_cpuid": [{"function": f"0x{e.function:08x}", "index": e.index, "eax": f"0x{e.eax:08x}",
                              "ebx": f"0x{e.ebx:08x}", "ecx": f"0x{e.ecx:08x}", "edx": f"0x{e.edx:08x}"}
                             for e in self.hv_cpuid],
            },
        }


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(1 << 20)
    except OSError:
        return None


def _get_list(fd: int, request: int, ioctl: IoctlFn, name: str) -> list[int]:
    capacity = 64
    for _ in range(8):
        buf = pack_msr_list(capacity)
        try:
            ioctl(fd, request, buf)
        except OSError as err:
            if err.errno != errno.E2BIG:
                raise ProbeError(f"{name} failed: {os.strerror(err.errno or 0)}") from None
            (needed,) = MSR_LIST_HEADER.unpack_from(buf, 0)
            capacity = max(needed, capacity * 2)
            continue
        return unpack_msr_list(buf)
    raise ProbeError(f"{name} kept returning E2BIG")


def _get_msrs(fd: int, indices: list[int], ioctl: IoctlFn) -> dict[int, int]:
    buf = pack_msrs(indices)
    try:
        n = ioctl(fd, KVM_GET_MSRS, buf)
    except OSError as err:
        raise ProbeError(f"KVM_GET_MSRS on the system fd failed: {os.strerror(err.errno or 0)}") from None
    return dict(unpack_msrs(buf, n))


def _get_cpuid2(fd: int, ioctl: IoctlFn, request: int, name: str, capacity: int) -> list[CpuidEntry]:
    for _ in range(6):
        buf = pack_cpuid2(capacity)
        try:
            ioctl(fd, request, buf)
        except OSError as err:
            if err.errno == errno.E2BIG:
                capacity *= 2
                continue
            raise ProbeError(f"{name} failed: {os.strerror(err.errno or 0)}") from None
        return unpack_cpuid2(buf)
    raise ProbeError(f"{name} kept returning E2BIG")


def _get_hv_cpuid(fd: int, ioctl: IoctlFn) -> list[CpuidEntry]:
    return _get_cpuid2(fd, ioctl, KVM_GET_SUPPORTED_HV_CPUID, "KVM_GET_SUPPORTED_HV_CPUID", 16)


def _get_supported_cpuid(fd: int, ioctl: IoctlFn) -> list[CpuidEntry]:
    """KVM_GET_SUPPORTED_CPUID on the system fd: the CPUID KVM can give a guest (E2BIG until the buffer fits)."""
    return _get_cpuid2(fd, ioctl, KVM_GET_SUPPORTED_CPUID, "KVM_GET_SUPPORTED_CPUID", 64)


_DEBIAN_VERSION = regex(r"\bDebian (\d+\.\d+\.\d+)-")
_UPSTREAM_RELEASE = regex(r"^\d+\.\d+\.\d+$")


def kernel_version_from_proc(version: str | None, signature: str | None) -> str | None:
    """The upstream point release of a distribution kernel, from ``/proc/version_signature`` (Ubuntu: its last
    field, "Ubuntu 5.4.0-131.147-generic 5.4.210") or ``/proc/version`` (Debian: "... Debian 5.10.197-1
    (2023-09-29)"); ``None`` when neither says (the profile then relies on the distribution table)."""
    if signature:
        fields = signature.split()
        if len(fields) >= 3 and fields[0] == "Ubuntu" and _UPSTREAM_RELEASE.match(fields[-1]):
            return fields[-1]
    if version:
        # the last one: the compiler's "(Debian 10.2.1-6)" comes first, the kernel's "Debian 5.10.197-1" last
        found = _DEBIAN_VERSION.findall(version)
        if found:
            return str(found[-1])
    return None


def kvm_device(device: str | None) -> str:
    """The KVM device to use: ``device``, else ``$QEMU_EVMCS_KVM_DEVICE``, else ``/dev/kvm``."""
    return device or os.environ.get(DEVICE_ENV) or DEFAULT_DEVICE


def probe(device: str | None = None, *, ioctl: IoctlFn = _default_ioctl,
          cpuinfo_path: str = "/proc/cpuinfo", nested_param: str = NESTED_PARAM,
          release: str | None = None, name: str | None = None,
          reg: Registry | None = None, proc_version_path: str | None = None,
          version_signature_path: str | None = None) -> ProbeResult:
    """Read this machine's KVM; :class:`ProbeError` when it cannot answer (see the module docstring).

    ``device`` defaults to ``$QEMU_EVMCS_KVM_DEVICE`` or ``/dev/kvm``; ``ioctl`` and the paths are
    injectable so the logic can be tested without KVM.
    """
    reg = reg or registry()
    device = kvm_device(device)
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise ProbeError(f"cannot open {device}: {err.strerror or err} (KVM is not available or not accessible "
                         f"to this user)") from None
    try:
        if release is None:  # the running kernel: its /proc files describe it (an injected release: only if given)
            proc_version_path = proc_version_path or "/proc/version"
            version_signature_path = version_signature_path or "/proc/version_signature"
        kv = kernel_version_from_proc(_read(proc_version_path) if proc_version_path else None,
                                      _read(version_signature_path) if version_signature_path else None)
        return _probe_fd(fd, device, ioctl, cpuinfo_path, nested_param, release, name, reg, kv)
    finally:
        os.close(fd)


def _probe_fd(fd: int, device: str, ioctl: IoctlFn, cpuinfo_path: str, nested_param: str,
              release: str | None, name: str | None, reg: Registry,
              kernel_version: str | None = None) -> ProbeResult:
    try:
        api = ioctl(fd, KVM_GET_API_VERSION, 0)
    except OSError as err:
        raise ProbeError(f"{device} is not a KVM device (KVM_GET_API_VERSION: {os.strerror(err.errno or 0)})") \
            from None
    if api != KVM_API_VERSION:
        raise ProbeError(f"{device}: KVM API version {api}, expected {KVM_API_VERSION}")
    cpuinfo_text = _read(cpuinfo_path)
    if cpuinfo_text is None:
        raise ProbeError(f"cannot read {cpuinfo_path}")
    cpu = parse_cpuinfo(cpuinfo_text)
    if cpu.vendor != "GenuineIntel":
        vendor = cpu.vendor or "an unknown vendor"
        what = f" ({cpu.model_name})" if cpu.model_name else ""
        why = "AMD CPUs have SVM, not VMX" if cpu.vendor in ("AuthenticAMD", "HygonGenuine") else "not Intel"
        raise NegativeAnswer(f"this host's CPU is {vendor}{what}: no Intel VMX ({why}), so there are no VMX MSRs "
                             f"and no eVMCS to probe", verdict="no-intel-vmx", layer="cpu")
    nested = _read(nested_param)
    if nested is not None and nested.strip() in ("N", "n", "0"):
        raise NegativeAnswer(f"nested virtualization is off ({nested_param} = {nested.strip()}): KVM reports no "
                             f"VMX MSRs; load kvm_intel with nested=1", verdict="no-nested-vmx", layer="kvm")

    def cap(num: int) -> int:
        try:
            return ioctl(fd, KVM_CHECK_EXTENSION, num)
        except OSError:
            return 0

    caps = {"KVM_CAP_GET_MSR_FEATURES": cap(KVM_CAP_GET_MSR_FEATURES),
            "KVM_CAP_HYPERV_ENLIGHTENED_VMCS": cap(KVM_CAP_HYPERV_ENLIGHTENED_VMCS),
            "KVM_CAP_SYS_HYPERV_CPUID": cap(KVM_CAP_SYS_HYPERV_CPUID)}
    if not caps["KVM_CAP_GET_MSR_FEATURES"]:
        raise NegativeAnswer("KVM lacks KVM_CAP_GET_MSR_FEATURES (kernel older than 4.17): cannot read VMX MSRs "
                             "from the system fd", verdict="no-vmx-msrs", layer="kvm")
    listed = set(_get_list(fd, KVM_GET_MSR_FEATURE_INDEX_LIST, ioctl, "KVM_GET_MSR_FEATURE_INDEX_LIST"))
    wanted = [m.index for m in sorted(reg.msrs.values(), key=lambda m: m.index) if m.index in listed]
    basic = reg.msrs_of_word("basic")[0]
    if basic.index not in listed:
        raise NegativeAnswer(f"KVM lists no {basic.name} ({basic.index:#x}) feature MSR: nested VMX is off or "
                             f"unsupported on this host", verdict="no-nested-vmx", layer="kvm")
    values = _get_msrs(fd, wanted, ioctl)
    if not values.get(basic.index):
        raise NegativeAnswer(f"KVM reports {basic.name} = 0: nested VMX is off on this host",
                             verdict="no-nested-vmx", layer="kvm")
    msrs = {reg.msr(i).name: v for i, v in values.items()}
    hv: list[CpuidEntry] = []
    if caps["KVM_CAP_SYS_HYPERV_CPUID"]:
        hv = _get_hv_cpuid(fd, ioctl)
    kernel = release or os.uname().release
    evmcs = caps["KVM_CAP_HYPERV_ENLIGHTENED_VMCS"]
    nested_leaf = [e for e in hv if e.function == HV_CPUID_NESTED_FEATURES]
    notes = [f"probed from {device}: KVM API {api}",
             f"KVM_CAP_HYPERV_ENLIGHTENED_VMCS={evmcs:#x}",
             f"KVM_CAP_SYS_HYPERV_CPUID={caps['KVM_CAP_SYS_HYPERV_CPUID']}"]
    if nested_leaf:
        e = nested_leaf[0]
        notes.append(f"KVM_GET_SUPPORTED_HV_CPUID 0x4000000A: eax={e.eax:#x} ebx={e.ebx:#x}")
    notes.append("values are what KVM_GET_MSRS returns on the system fd (unfiltered by eVMCS)")
    data: dict[str, Any] = {
        "name": name or os.uname().nodename or "localhost",
        "vendor": cpu.vendor, "kernel": kernel, "nested": True, "kvm_hyperv": bool(evmcs),
        "msrs": msrs, "provenance": f"qemu-evmcs host probe ({device}, KVM_GET_MSRS on the system fd)",
        "notes": "; ".join(notes),
    }
    if kernel_version is not None:
        data["kernel_version"] = kernel_version
    for key in ("family", "model", "stepping", "model_name"):
        val = getattr(cpu, key)
        if val is not None:
            data[key] = val
    # CPUID features in QEMU's names (base-model checks); names the bundled QEMU snapshot does not know are dropped.
    supported = _get_supported_cpuid(fd, ioctl)
    data["cpu_features"] = sorted(load_snapshot().known(from_cpuid((e.function, e.index, e.eax, e.ebx, e.ecx, e.edx)
                                                                  for e in supported)))
    try:
        profile = profile_from_mapping(data, file=device)
    except EvmcsError as err:  # a KVM report that fails validation is a probe failure, not bad user input
        raise ProbeError(f"KVM reported values that fail profile validation: {err}") from None
    return ProbeResult(device=device, api_version=api, caps=caps, cpu=cpu, kernel=kernel, msrs=msrs,
                       hv_cpuid=hv, profile=profile)
