"""The simulated QEMU's start-up, in QEMU's order, shared by the server and by :func:`predict`.

One implementation, two users:

- :func:`boot` runs the whole start-up against a simulated KVM and returns a
  :class:`StartupResult` (the :class:`Machine` on success). The server
  (:mod:`.server`) prints its stderr lines and either serves QMP or exits.
- :func:`predict` (used by ``qemu-evmcs-launch --check``) parses a QEMU
  command line, runs :func:`boot` and reports without starting anything.

Order (QEMU 7.2, ``-accel kvm``): parse ``-cpu`` (unknown model: exit 1) ->
for each vCPU: create + properties -> realize: ``host`` needs KVM,
``x86_cpu_expand_features`` (Hyper-V checks when KVM has
KVM_CAP_SYS_HYPERV_CPUID), ``x86_cpu_filter_features`` (warnings, ``enforce``)
-> ``kvm_init_vcpu``: KVM_CREATE_VCPU, ``kvm_arch_init_vcpu``: Hyper-V checks
on the vCPU fd for older kernels, ``hyperv_init_vcpu`` (KVM_ENABLE_CAP eVMCS
and the version-range check), KVM_SET_CPUID2 (Hyper-V leaves), then
``kvm_init_msrs`` -> KVM_SET_MSRS with the VMX MSRs. A rejected MSR ends like
QEMU: ``error: failed to set MSR 0x48d to 0x...`` plus glibc's assertion line,
exit status 134 (the server really aborts: SIGABRT, so a shell sees 134).

Exit statuses: 0 started, 1 QEMU's ``exit(1)`` errors, 134 the assertion abort.
"""

from __future__ import annotations

import errno as errno_mod
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from qemu_evmcs.core.errors import KvmError
from qemu_evmcs.core.evmcs_filter import removals
from qemu_evmcs.core.profile import HostProfile, load_profile, resolve_profile_path
from qemu_evmcs.qemu.compose import evmcs_range_supported
from qemu_evmcs.core.registry import registry
from qemu_evmcs.kvm.simkvm import (EVMCS_REVISION_LEGACY, HV_CPUID_ENLIGHTMENT_INFO, HV_CPUID_NESTED_FEATURES,
                      HV_ENLIGHTENED_VMCS_RECOMMENDED, KVM_CAP_HYPERV_CPUID, KVM_CAP_HYPERV_ENLIGHTENED_VMCS,
                      HvCpuid, SimKvm, SimVcpu)
from qemu_evmcs.simqemu.cmdline import EXIT_ABORT, EXIT_ERROR, PROG, QemuError, SimConfig, parse_args, strip_program
from qemu_evmcs.simqemu.cpu import (DEFAULT_EVMCS_VERSION, VMX_WORDS, Accel, KvmAccel, KvmLog, X86Cpu, check_model,
                  feature_names, guest_visible_features)


#: Where glibc's assertion message says QEMU 7.2.0's ``kvm_buf_set_msrs`` assertion is
#: (``assert(ret == cpu->kvm_msr_buf->nmsrs)`` at kvm.c:3177, after the error text at :3173; kvm-evmcs.md §10.1).
ASSERT_LOCATION = "../target/i386/kvm/kvm.c:3177"
ASSERT_LINE = f"{PROG}: {ASSERT_LOCATION}: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed."

#: Causes of a lost feature (``Prediction.lost_detail`` values).
LOST_HOST = "host"                  # KVM does not support it (QEMU warned and dropped it)
LOST_DEPENDENCY = "dependency"      # a feature it depends on is off
LOST_EVMCS = "evmcs-filter"         # KVM hides it from the eVMCS L1 (no warning anywhere)
LOST_PERF_GATE = "perf-cpuid-gate"  # hidden because CPUID 0x4000000A.EBX bit 0 is clear (6.1+)
LOST_OTHER = "kvm"                  # not visible to L1 for another reason


@dataclass
class VcpuState:
    """One started vCPU: QEMU's CPU object, KVM's vCPU and what QEMU handed to KVM."""

    index: int
    cpu: X86Cpu
    kvm_vcpu: Optional[SimVcpu] = None
    hv_leaves: Dict[int, Dict[str, int]] = field(default_factory=dict)
    written: List[Tuple[str, int]] = field(default_factory=list)

    @property
    def qom_path(self) -> str:
        """The vCPU's QOM path (``/machine/unattached/device[N]``)."""
        return f"/machine/unattached/device[{self.index}]"


@dataclass
class Machine:
    """A started simulated VM."""

    config: SimConfig
    profile: HostProfile
    accel: Accel
    kvm: Optional[SimKvm]
    log: KvmLog
    vcpus: List[VcpuState] = field(default_factory=list)


@dataclass
class StartupResult:
    """What :func:`boot` did: stderr lines, exit status and, on success, the machine."""

    ok: bool
    exit_status: int
    reason: str
    stderr: List[str]
    lost: List[str] = field(default_factory=list)
    lost_detail: Dict[str, str] = field(default_factory=dict)
    machine: Optional[Machine] = None


@dataclass
class Prediction:
    """:func:`predict`'s answer.

    :ivar ok: QEMU would start.
    :ivar reason: why not (QEMU's message without the program prefix), or for a start that loses
        requested features, a one-line explanation; ``""`` otherwise.
    :ivar lost: requested ``vmx-*`` features (QEMU names) the L1 guest would not get although QEMU starts:
        dropped by the host filter or a dependency, or hidden by KVM's eVMCS filter. Requested = set by
        the named model (with ``vmx`` on) or explicitly on the command line; ``host``/``max`` request
        nothing implicitly.
    :ivar exit_status: 0, 1 (QEMU's error exit) or 134 (assertion abort, SIGABRT as a shell reports it).
    :ivar stderr: the lines QEMU would print.
    :ivar lost_detail: ``lost`` name -> cause (``host``, ``dependency``, ``evmcs-filter``, ``perf-cpuid-gate``).
    """

    ok: bool
    reason: str
    lost: List[str]
    exit_status: int
    stderr: List[str]
    lost_detail: Dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- vCPU init (kvm_arch_init_vcpu)

def _init_failed(index: int, err_no: int) -> str:
    """The line ``kvm_init_vcpu`` adds when ``kvm_arch_init_vcpu`` fails (error_fatal in the vCPU thread)."""
    return f"{PROG}: kvm_init_vcpu: kvm_arch_init_vcpu failed ({index}): {os.strerror(err_no)}"


def _errno_of(err: KvmError) -> int:
    return int(getattr(errno_mod, err.errno_name, errno_mod.EINVAL))


def _kvm_init_vcpu(state: VcpuState, accel: KvmAccel, log: KvmLog) -> None:
    """KVM_CREATE_VCPU and ``kvm_arch_init_vcpu`` for one vCPU.

    :raise QemuError: a Hyper-V failure (exit 1) or a rejected MSR write (status 134).
    """
    cpu, i = state.cpu, state.index
    kvm = accel.kvm
    vcpu = kvm.create_vcpu()
    state.kvm_vcpu = vcpu
    log.add(i, "CREATE_VCPU", str(i), "0")
    try:
        hyperv = cpu.hyperv_enabled()
        if hyperv and accel.sys_hv_cpuid() is None:
            # Second kvm_hyperv_expand_features() call: kernels without KVM_CAP_SYS_HYPERV_CPUID.
            # get_supported_hv_cpuid(): the vCPU ioctl when KVM_CAP_HYPERV_CPUID exists (5.0+), else
            # get_supported_hv_cpuid_legacy(), which builds the leaves from capabilities (no 0x4000000A).
            # Either way the EVMCS-recommended bit comes from KVM_CHECK_EXTENSION(KVM_CAP_HYPERV_ENLIGHTENED_VMCS):
            # the vCPU ioctl does not report it before the capability is enabled.
            if accel.check_extension(KVM_CAP_HYPERV_CPUID, "KVM_CAP_HYPERV_CPUID") > 0:
                leaves = vcpu.get_supported_hv_cpuid()
                log.add(i, "GET_SUPPORTED_HV_CPUID", "vcpu fd", "")
            else:
                leaves = {HV_CPUID_ENLIGHTMENT_INFO: {"eax": 0, "ebx": 0, "ecx": 0, "edx": 0}}
                log.add(i, "GET_SUPPORTED_HV_CPUID", "legacy (no KVM_CAP_HYPERV_CPUID): from capabilities", "")
            if accel.check_extension(KVM_CAP_HYPERV_ENLIGHTENED_VMCS, "KVM_CAP_HYPERV_ENLIGHTENED_VMCS") > 0:
                leaves.setdefault(HV_CPUID_ENLIGHTMENT_INFO, {"eax": 0, "ebx": 0, "ecx": 0, "edx": 0})
                leaves[HV_CPUID_ENLIGHTMENT_INFO]["eax"] |= HV_ENLIGHTENED_VMCS_RECOMMENDED
            try:
                cpu.hyperv_expand(leaves)
            except QemuError as err:
                raise QemuError(err.message, extra=[_init_failed(i, errno_mod.ENOSYS)]) from None
        if hyperv and "hv-evmcs" in cpu.hv:
            # hyperv_init_vcpu()
            desc = "enlightened VMCS (hv-evmcs)"
            rev = cpu.evmcs_revision
            try:
                if rev is not None and kvm.max_evmcs_revision():
                    supported = vcpu.enable_evmcs2(rev)     # design (a), --variant revision
                elif rev is not None and rev > EVMCS_REVISION_LEGACY:
                    raise QemuError(f"eVMCS revision {rev} is not supported by kernel (no "
                                    f"KVM_CAP_HYPERV_ENLIGHTENED_VMCS2: legacy revision 1 only)",
                                    extra=[_init_failed(i, errno_mod.EINVAL)])
                else:
                    supported = vcpu.enable_evmcs()
            except KvmError as err:
                if rev is not None and kvm.max_evmcs_revision():
                    raise QemuError(f"eVMCS revision {rev} is not supported by kernel ({err.message})",
                                    extra=[_init_failed(i, _errno_of(err))]) from None
                raise QemuError(f"Hyper-V {desc} is not supported by kernel",
                                extra=[_init_failed(i, _errno_of(err))]) from None
            want = DEFAULT_EVMCS_VERSION
            if not evmcs_range_supported((want & 0xFF, want >> 8), supported):
                raise QemuError(f"eVMCS version range [{want & 0xFF}..{want >> 8}] is not supported by kernel "
                                f"(supported: [{supported & 0xFF}..{supported >> 8}])",
                                extra=[_init_failed(i, errno_mod.ENOTSUP)])
        # KVM_SET_CPUID2 (hyperv_fill_cpuids when Hyper-V is on)
        if hyperv:
            state.hv_leaves = cpu.hv_leaves()
            nested = state.hv_leaves[HV_CPUID_NESTED_FEATURES]
            vcpu.set_hv_cpuid(HvCpuid(hyperv_enabled=True, nested_eax=nested["eax"], nested_ebx=nested["ebx"]))
        else:
            state.hv_leaves = {}
            vcpu.set_hv_cpuid(HvCpuid())
        # kvm_init_msrs(): VMX MSRs only if KVM lists feature MSRs and the CPU has VMX.
        if cpu.has_vmx():
            entries = cpu.vmx_msr_entries(accel.feature_msrs())
            state.written = entries
            if entries:
                done = vcpu.set_msrs(entries)
                if done < len(entries):
                    name, value = entries[done]
                    index = registry().msrs[name].index
                    raise QemuError(f"error: failed to set MSR {index:#x} to {value:#x}", status=EXIT_ABORT,
                                    extra=[ASSERT_LINE])
    finally:
        log.drain(i, vcpu.log)


# --------------------------------------------------------------------------- lost features

def _lost(machine: Machine) -> Tuple[List[str], Dict[str, str]]:
    """Requested vmx-* features of vCPU 0 that its L1 does not get, with causes."""
    if not machine.vcpus:
        return [], {}
    state = machine.vcpus[0]
    cpu = state.cpu
    if not cpu.requested_vmx:
        return [], {}
    visible_words: Dict[str, int] = {w: 0 for w in VMX_WORDS}
    guest: Dict[str, int] = {}
    vcpu = state.kvm_vcpu
    if vcpu is not None and cpu.has_vmx():
        guest = read_vmx_msrs(vcpu, host_initiated=False)
        visible_words = guest_visible_features(guest)
    visible = set(feature_names(visible_words))
    configured = set(feature_names(cpu.features))
    host_lost = set(feature_names(cpu.host_filtered))
    dep_lost = set(feature_names(cpu.dep_dropped))
    perf_gated: set[str] = set()
    if vcpu is not None and machine.kvm is not None and vcpu.evmcs_active():
        reg = registry()
        for name, value in guest.items():
            word = reg.msrs[name].word
            if word is None:
                continue
            for rem in removals(machine.kvm.era, name, vcpu.msrs.get(name, value),
                                perf_global_ctrl=vcpu.hv.perf_global_ctrl, reg=reg):
                if rem.cause == "perf-cpuid-gate":
                    perf_gated |= set(feature_names({word: 1 << rem.bit}))
    lost: List[str] = []
    detail: Dict[str, str] = {}
    for name in cpu.requested_vmx:
        if name in visible:
            continue
        if name in host_lost:
            cause = LOST_HOST
        elif name in dep_lost or name not in configured:
            cause = LOST_DEPENDENCY
        elif name in perf_gated:
            cause = LOST_PERF_GATE
        elif vcpu is not None and vcpu.evmcs_enabled:
            cause = LOST_EVMCS
        else:
            cause = LOST_OTHER
        lost.append(name)
        detail[name] = cause
    return lost, detail


_CAUSE_TEXT = {
    LOST_HOST: "not supported by this host's KVM",
    LOST_DEPENDENCY: "a feature they depend on is off",
    LOST_EVMCS: "hidden from the L1 guest by KVM's eVMCS filter",
    LOST_PERF_GATE: "hidden because CPUID 0x4000000A.EBX bit 0 is clear (see hv-evmcs-perf-global-ctrl)",
    LOST_OTHER: "not visible to the L1 guest",
}


def _lost_reason(detail: Dict[str, str], machine: Machine) -> str:
    groups: Dict[str, List[str]] = {}
    for name, cause in detail.items():
        groups.setdefault(cause, []).append(name)
    parts = [f"{', '.join(names)}: {_CAUSE_TEXT[cause]}" for cause, names in groups.items()]
    era = f" (kernel {machine.profile.kernel}, era {machine.kvm.era.id})" if machine.kvm is not None else ""
    return "; ".join(parts) + era


def read_vmx_msrs(vcpu: SimVcpu, *, host_initiated: bool) -> Dict[str, int]:
    """Every readable VMX MSR of a vCPU, as the guest (filtered) or userspace (host-initiated) reads it."""
    out: Dict[str, int] = {}
    for name in registry().msr_names():
        if name not in vcpu.msrs:
            continue
        try:
            out[name] = vcpu.get_msr(name, host_initiated=host_initiated)
        except KvmError:
            continue
    return out


# --------------------------------------------------------------------------- boot

def boot(config: SimConfig, profile: HostProfile) -> StartupResult:
    """Run QEMU's start-up for ``config`` on the simulated host ``profile``.

    Never raises for QEMU-level failures: they come back as a result with QEMU's stderr lines.
    """
    stderr: List[str] = list(config.cpu.warnings)
    log = KvmLog()
    kvm: Optional[SimKvm] = None
    accel: Accel
    if config.accel == "kvm":
        kvm = SimKvm(profile, variant=config.variant)
        accel = KvmAccel(kvm, log)
    else:
        accel = Accel()
    machine = Machine(config=config, profile=profile, accel=accel, kvm=kvm, log=log)
    try:
        check_model(config.cpu.model)
        ncpus = 0 if config.machine == "none" else config.smp
        for i in range(ncpus):
            cpu = X86Cpu.create(config.cpu, accel)
            if cpu.model == "host" and not accel.uses_host_cpuid:
                raise QemuError("CPU model 'host' requires KVM or HVF")
            stderr += cpu.expand()
            stderr += cpu.filter()
            err = cpu.enforce_error()
            if err is not None:
                raise err
            state = VcpuState(index=i, cpu=cpu)
            machine.vcpus.append(state)
            if isinstance(accel, KvmAccel):
                _kvm_init_vcpu(state, accel, log)
    except QemuError as err:
        stderr += err.lines()
        return StartupResult(ok=False, exit_status=err.status, reason=err.message, stderr=stderr, machine=None)
    lost, detail = _lost(machine)
    reason = _lost_reason(detail, machine) if lost else ""
    return StartupResult(ok=True, exit_status=0, reason=reason, stderr=stderr, lost=lost, lost_detail=detail,
                         machine=machine)


def predict(profile_path: str, qemu_argv: Sequence[str]) -> Prediction:
    """Would QEMU start with these arguments on this host, and what would the L1 guest lose?

    Runs exactly the server's start-up (:func:`boot`) without opening any socket.

    :param profile_path: a host profile path or bundled sample name (``--host`` in ``qemu_argv`` is ignored).
    :param qemu_argv: QEMU's arguments (a leading ``qemu-system-x86_64`` program name is skipped).
    :raise InputError: the host profile cannot be read (bad input to the tool, not a QEMU failure).
    """
    try:
        config = parse_args(strip_program(qemu_argv))
    except QemuError as err:
        return Prediction(ok=False, reason=err.message, lost=[], exit_status=err.status, stderr=err.lines())
    profile = load_profile(resolve_profile_path(profile_path))
    if config.show_help or config.show_version or config.cpu_help:
        return Prediction(ok=True, reason="", lost=[], exit_status=0, stderr=[])
    res = boot(config, profile)
    return Prediction(ok=res.ok, reason=res.reason, lost=res.lost, exit_status=res.exit_status, stderr=res.stderr,
                      lost_detail=res.lost_detail)


__all__ = ["Prediction", "StartupResult", "Machine", "VcpuState", "boot", "predict", "read_vmx_msrs",
           "EXIT_ABORT", "EXIT_ERROR"]
