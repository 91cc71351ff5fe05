"""``host probe --guest-view``: what an eVMCS-enabled L1 really reads on this kernel, and how it differs from
the simulation.

Why: distribution kernels carry backports no table knows (kvm-evmcs.md §10.4). The only ground truth is a guest
that reads its VMX MSRs: this runs one (:mod:`qemu_evmcs.hostio.kvmrun`) with VMX and KVM's Hyper-V CPUID
leaves, eVMCS enabled on its vCPU (KVM_ENABLE_CAP before KVM_SET_CPUID2, QEMU's order), once with
CPUID 0x4000000A.EBX bit 0 clear (what QEMU gives) and once with it set, RDMSRs 0x480-0x491 in the guest, and
compares each with :func:`qemu_evmcs.kvm.simkvm.guest_view` of the probed host profile. A difference names the
bits: that is how a user finds a vendor backport.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping

from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.errors import NegativeAnswer
from qemu_evmcs.core.registry import Msr, Registry, registry
from qemu_evmcs.hostio.kvmrun import GuestFault, KvmGuest
from qemu_evmcs.hostio.probe import CpuidEntry, _default_ioctl
from qemu_evmcs.kvm.simkvm import (HV_CPUID_NESTED_FEATURES, HV_NESTED_EVMCS1_PERF_GLOBAL_CTRL,
                                   KVM_CAP_HYPERV_ENLIGHTENED_VMCS, NOT_EMULATED_MSRS)

if TYPE_CHECKING:
    from qemu_evmcs.hostio.probe import IoctlFn
HV_LEAVES = range(0x40000000, 0x40000100)


@dataclass(frozen=True)
class SelfTest:
    """A harmless guest run: proof that this KVM runs guest code and reports through an I/O port."""

    cpuid0: tuple[int, int, int, int]     # what the guest read from CPUID leaf 0
    msr_index: int
    guest_msr: int                        # RDMSR in the guest
    host_msr: int | None               # KVM_GET_MSRS on the same vCPU (None: KVM refused it)
    faulting_msr: int                     # an MSR the vCPU lacks (0x480 without VMX in CPUID)
    fault_vector: int | None           # 13 (#GP) expected


@dataclass
class GuestView:
    """What the guest read with 0x4000000A.EBX bit 0 clear or set."""

    pv_perf_global_ctrl: bool
    evmcs_version: int
    msrs: dict[str, int] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Difference:
    """One MSR whose probed value differs from the simulated one."""

    msr: str
    probed: int | None          # None: the guest's read faulted
    simulated: int | None       # None: the simulation has no such MSR
    only_probed: tuple[str, ...]   # feature names (or "bit N") set only in the real guest
    only_simulated: tuple[str, ...]


def guest_msrs(reg: Registry) -> list[Msr]:
    """The VMX MSRs KVM emulates for L1, in index order: the registry's, less simkvm's ``NOT_EMULATED_MSRS``
    (0x480-0x491, kvm-evmcs.md §1; the simulation and the real guest read the same ones)."""
    return sorted((m for m in reg.msrs.values() if m.name not in NOT_EMULATED_MSRS), key=lambda m: m.index)


def self_test(device: str = "/dev/kvm", *, ioctl: IoctlFn = _default_ioctl,
              signature: tuple[int, int, int] = (0x756D6571, 0x6D76652D, 0x21217363)) -> SelfTest:
    """Run a guest that reads CPUID leaf 0 (set to ``signature``, "qemu-evmcs!!") and IA32_APIC_BASE.

    :raise ProbeError: this KVM cannot run a guest (one line saying which ioctl or exit failed).
    """
    with KvmGuest(device, ioctl=ioctl) as g:
        sup = g.supported_cpuid()
        top = next((e for e in sup if e.function == 0), CpuidEntry(0, 0, 0, 1, 0, 0, 0))
        g.set_cpuid([CpuidEntry(0, 0, 0, top.eax, signature[0], signature[2], signature[1])]
                    + [e for e in sup if e.function != 0])
        cpuid0 = g.guest_cpuid(0)
        guest = g.guest_rdmsr(0x1B)
        host = g.host_msrs([0x1B]).get(0x1B)
        vector: int | None = None
        try:
            g.guest_rdmsr(0x480)
        except GuestFault as fault:
            vector = fault.vector
        return SelfTest(cpuid0=cpuid0, msr_index=0x1B, guest_msr=guest, host_msr=host, faulting_msr=0x480,
                        fault_vector=vector)


def probe_guest_view(device: str = "/dev/kvm", *, pv_perf_global_ctrl: bool = False,
                     ioctl: IoctlFn = _default_ioctl, reg: Registry | None = None) -> GuestView:
    """Run the eVMCS guest once and read 0x480-0x491 as it.

    :raise NegativeAnswer: no eVMCS on this KVM (a verdict, exit 1).
    :raise ProbeError: the guest cannot run.
    """
    reg = reg or registry()
    with KvmGuest(device, ioctl=ioctl) as g:
        if not g.check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS):
            raise NegativeAnswer(f"{device}: KVM_CAP_HYPERV_ENLIGHTENED_VMCS is 0 (no Intel VMX with "
                                 f"kvm_intel.nested=1, or CONFIG_KVM_HYPERV=n): there is no eVMCS guest view to "
                                 f"probe", verdict="no-evmcs", layer="kvm")
        version = g.enable_evmcs()
        if not version:
            raise NegativeAnswer(f"{device}: KVM_ENABLE_CAP(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) returned version 0 "
                                 f"(kvm_intel.nested=0): there is no eVMCS guest view to probe", verdict="no-evmcs",
                                 layer="kvm")
        hv = g.vcpu_hv_cpuid()
        entries = [e for e in g.supported_cpuid() if e.function not in HV_LEAVES]
        for e in hv:
            ebx = e.ebx
            if e.function == HV_CPUID_NESTED_FEATURES:
                ebx = (ebx | HV_NESTED_EVMCS1_PERF_GLOBAL_CTRL) if pv_perf_global_ctrl \
                    else ebx & ~HV_NESTED_EVMCS1_PERF_GLOBAL_CTRL
            entries.append(CpuidEntry(e.function, e.index, e.flags, e.eax, ebx, e.ecx, e.edx))
        g.set_cpuid(entries)
        view = GuestView(pv_perf_global_ctrl=pv_perf_global_ctrl, evmcs_version=version)
        for msr in guest_msrs(reg):
            name = msr.name
            try:
                view.msrs[name] = g.guest_rdmsr(msr.index)
            except GuestFault:
                view.faults.append(name)
        return view


def compare(probed: GuestView, simulated: Mapping[str, int], reg: Registry | None = None) -> list[Difference]:
    """The MSRs whose probed and simulated guest values differ, with the differing bits named."""
    reg = reg or registry()
    named = {(f.word, f.bit): f.name for f in reg.features.values()}
    out: list[Difference] = []
    for msr in guest_msrs(reg):
        p, s = probed.msrs.get(msr.name), simulated.get(msr.name)
        if p == s:
            continue
        shift = 32 if msr.layout == "ctl" else 0
        pv, sv = p or 0, s or 0
        out.append(Difference(msr=msr.name, probed=p, simulated=s,
                              only_probed=_bit_names(pv & ~sv, msr.word, shift, named),
                              only_simulated=_bit_names(sv & ~pv, msr.word, shift, named)))
    return out


def _bit_names(bits: int, word: str | None, shift: int, named: Mapping[tuple[str, int], str]) -> tuple[str, ...]:
    """Feature names of set MSR bits (``"bit N"`` for unnamed ones)."""
    out: list[str] = []
    for b in range(64):
        if bits >> b & 1:
            label = named.get((word, b - shift)) if word and b >= shift else None
            out.append(label or f"bit {b}")
    return tuple(out)


def report_lines(views: list[tuple[GuestView, list[Difference]]], era: str, kernel: str) -> list[str]:
    """Human report: one block per probed setting."""
    lines: list[str] = []
    for view, diffs in views:
        head = (f"guest view, 0x4000000A.EBX bit 0 {'set' if view.pv_perf_global_ctrl else 'clear'} "
                f"(eVMCS version {view.evmcs_version:#06x}), kernel {kernel}, simulated era {era}: ")
        if not diffs:
            lines.append(head + "matches the simulation")
            continue
        lines.append(head + f"{len(diffs)} MSR(s) differ (a vendor backport or a simulation error):")
        for d in diffs:
            p = "faults" if d.probed is None else f"{d.probed:#018x}"
            s = "absent" if d.simulated is None else f"{d.simulated:#018x}"
            lines.append(f"  {d.msr}: guest reads {p}, simulated {s}"
                         + (f"; only in the guest: {', '.join(d.only_probed)}" if d.only_probed else "")
                         + (f"; only simulated: {', '.join(d.only_simulated)}" if d.only_simulated else ""))
    return lines
