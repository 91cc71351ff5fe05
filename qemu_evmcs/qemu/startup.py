"""QEMU's start-up on a simulated host, in QEMU's order: the one model of "does this configuration start,
and what does the L1 guest get".

A pure function, :func:`start` (host profile, parsed ``-cpu`` + design, see :class:`StartRequest`) ->
:class:`Startup`: started or failed with QEMU's exact text, exit status and stderr lines, the failing
stage, the VMX MSRs QEMU wrote, the guest-visible VMX MSRs and the Hyper-V CPUID leaves. Its users:

- the simulated QEMU process (:mod:`qemu_evmcs.simqemu`) wraps it with a command line, processes and QMP;
- the policy layer (negotiate, migrate, admit, resolve/baseline, validate) asks it instead of keeping its
  own short form of QEMU's behaviour;
- ``qemu-evmcs-launch --check`` (through :func:`qemu_evmcs.simqemu.startup.predict`).

Order (QEMU 7.2, ``-accel kvm``): parse ``-cpu`` (unknown model: exit 1) ->
for each vCPU: create + properties -> realize: ``host`` needs KVM,
``x86_cpu_expand_features`` (Hyper-V checks when KVM has
KVM_CAP_SYS_HYPERV_CPUID), ``x86_cpu_filter_features`` (warnings, ``enforce``)
-> ``kvm_init_vcpu``: KVM_CREATE_VCPU, ``kvm_arch_init_vcpu``: Hyper-V checks
on the vCPU fd for older kernels, ``hyperv_init_vcpu`` (KVM_ENABLE_CAP eVMCS
and the version-range check), KVM_SET_CPUID2 (Hyper-V leaves), then
``kvm_init_msrs`` -> KVM_SET_MSRS with the VMX MSRs. A rejected MSR ends like
QEMU: ``error: failed to set MSR 0x48d to 0x...`` plus glibc's assertion line,
exit status 134 (the simulated process really aborts: SIGABRT, so a shell sees 134).

Counterfactual designs of the 2022 thread (``StartRequest.design``): ``revision`` asks for an eVMCS
revision with KVM_CAP_HYPERV_ENLIGHTENED_VMCS2 (``x-hv-evmcs-revision``); ``vmx-msrs`` is a QEMU that
reads KVM_GET_EVMCS_VMX_MSRS (or, before that ioctl, the documented filter of the host's era) at vCPU init
and refuses a ``-cpu`` asking for a feature the eVMCS L1 could not see (stage ``userspace-check``).

Exit statuses: 0 started, 1 QEMU's ``exit(1)`` errors, 134 the assertion abort.
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from qemu_evmcs.core.errors import KvmError
from qemu_evmcs.core.evmcs_filter import filter_all
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.registry import registry
from qemu_evmcs.core.views import visible_features, visible_properties
from qemu_evmcs.kvm.simkvm import (EVMCS_REVISION_LEGACY, HV_CPUID_ENLIGHTMENT_INFO, HV_CPUID_NESTED_FEATURES,
                                   HV_ENLIGHTENED_VMCS_RECOMMENDED, KVM_CAP_HYPERV_CPUID,
                                   KVM_CAP_HYPERV_ENLIGHTENED_VMCS, HvCpuid, SimKvm, SimVcpu)
from qemu_evmcs.qemu.attribution import LAYER_FILTER, LAYER_KVM, LAYER_PERF, hidden_layers
from qemu_evmcs.qemu.compose import DEFAULT_EVMCS_VERSION, evmcs_range_supported
from qemu_evmcs.qemu.cpu import Accel, KvmAccel, KvmLog, X86Cpu, check_model, feature_names
from qemu_evmcs.qemu.cpuspec import EXIT_ABORT, EXIT_ERROR, PROG, CpuSpec, QemuError

#: Where glibc's assertion message says QEMU 7.2.0's ``kvm_buf_set_msrs`` assertion is
#: (``assert(ret == cpu->kvm_msr_buf->nmsrs)`` at kvm.c:3177, after the error text at :3173; kvm-evmcs.md §10.1).
ASSERT_LOCATION = "../target/i386/kvm/kvm.c:3177"
ASSERT_LINE = f"{PROG}: {ASSERT_LOCATION}: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed."

#: KVM ABI variant of each design of the 2022 thread ("naive": KVM updated eVMCSv1 in place, PERF and TSC
#: scaling visible on 6.1+ without any gate; that is the ``vmx-msrs`` kernel filter with userspace ignoring
#: the ioctl, so it has no userspace check).
DESIGN_VARIANT: Mapping[str, str] = {"shipped": "shipped", "revision": "revision", "vmx-msrs": "vmx-msrs",
                                     "naive": "vmx-msrs"}

#: Stages of :attr:`Startup.stage` (where the start-up failed), in QEMU's order.
STAGE_CPU = "cpu-config"            # unknown model, property or value; ``host`` without KVM
STAGE_HV = "hv-feature"             # a Hyper-V enlightenment KVM lacks, or one missing its dependency
STAGE_EVMCS_CAP = "evmcs-cap"       # hv-evmcs itself is not offered / cannot be enabled
STAGE_VMX = "vmx-features"          # ``enforce``: a requested feature the host lacks
STAGE_USERSPACE = "userspace-check"  # design (b): a requested feature outside the eVMCS-filtered MSRs
STAGE_REVISION = "revision"         # design (a): the eVMCS revision is refused
STAGE_EVMCS_VERSION = "evmcs-version"  # hyperv_init_vcpu's version-range check
STAGE_MSR_WRITE = "msr-write"       # KVM_SET_MSRS rejected an entry: QEMU aborts

#: Causes of a lost feature (``Startup.lost_detail`` values): QEMU's two, then the layers of
#: :mod:`qemu_evmcs.qemu.attribution` that hid it.
LOST_HOST = "host"                  # KVM does not support it (QEMU warned and dropped it)
LOST_DEPENDENCY = "dependency"      # a feature it depends on is off
LOST_EVMCS = LAYER_FILTER           # KVM hides it from the eVMCS L1 (no warning anywhere)
LOST_PERF_GATE = LAYER_PERF         # hidden because CPUID 0x4000000A.EBX bit 0 is clear (6.1+)
LOST_OTHER = LAYER_KVM              # not visible to L1 for another reason


@dataclass(frozen=True)
class StartRequest:
    """What QEMU is asked to start: the parsed ``-cpu``, the design (KVM ABI), accelerator and vCPU count.

    :param cpu: the parsed ``-cpu`` argument.
    :param design: ``shipped`` | ``revision`` | ``vmx-msrs`` | ``naive`` (see :data:`DESIGN_VARIANT`).
    :param accel: ``kvm`` or ``tcg``.
    :param vcpus: vCPUs to create (0 for ``-machine none``).
    """

    cpu: CpuSpec
    design: str = "shipped"
    accel: str = "kvm"
    vcpus: int = 1


@dataclass
class VcpuState:
    """One started vCPU: QEMU's CPU object, KVM's vCPU and what QEMU handed to KVM."""

    index: int
    cpu: X86Cpu
    kvm_vcpu: SimVcpu | None = None
    hv_leaves: dict[int, dict[str, int]] = field(default_factory=dict)
    written: list[tuple[str, int]] = field(default_factory=list)

    @property
    def qom_path(self) -> str:
        """The vCPU's QOM path (``/machine/unattached/device[N]``)."""
        return f"/machine/unattached/device[{self.index}]"


@dataclass
class Startup:
    """What :func:`start` did.

    :ivar ok: QEMU started.
    :ivar exit_status: 0, 1 (QEMU's error exit) or 134 (assertion abort, SIGABRT as a shell reports it).
    :ivar reason: QEMU's message without the program prefix when it failed; for a start that loses requested
        features, a one-line explanation; ``""`` otherwise.
    :ivar stage: where it failed (``STAGE_*``), ``None`` when it started.
    :ivar stderr: the lines QEMU prints.
    :ivar lost: requested ``vmx-*`` features (QEMU names) the L1 guest does not get although QEMU starts.
        Requested = set by the named model (with ``vmx`` on) or explicitly on the command line.
    :ivar lost_detail: ``lost`` name -> cause (``LOST_*``).
    :ivar vcpus: the created vCPUs (on failure: those created before it).
    :ivar cpuid_filtered: modelled CPUID flags of vCPU 0 the host lacks (``x86_cpu_filter_features``); under
        ``enforce`` they are why QEMU refuses a base model on an older CPU.
    """

    profile: HostProfile
    request: StartRequest
    accel: Accel
    kvm: SimKvm | None
    log: KvmLog
    ok: bool = False
    exit_status: int = EXIT_ERROR
    reason: str = ""
    stage: str | None = None
    stderr: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    lost_detail: dict[str, str] = field(default_factory=dict)
    vcpus: list[VcpuState] = field(default_factory=list)
    cpuid_filtered: list[str] = field(default_factory=list)

    @property
    def writes(self) -> list[tuple[str, int]]:
        """The VMX MSRs QEMU handed to KVM_SET_MSRS for vCPU 0, in QEMU's order."""
        return list(self.vcpus[0].written) if self.vcpus else []

    @property
    def guest_msrs(self) -> dict[str, int]:
        """Every VMX MSR of vCPU 0 as the L1 guest reads it (``{}`` when it did not start or has no VMX)."""
        if not self.ok or not self.vcpus or self.vcpus[0].kvm_vcpu is None:
            return {}
        return read_vmx_msrs(self.vcpus[0].kvm_vcpu, host_initiated=False)

    @property
    def hv_leaves(self) -> dict[int, dict[str, int]]:
        """The Hyper-V CPUID leaves of vCPU 0 (``{}`` without Hyper-V)."""
        return dict(self.vcpus[0].hv_leaves) if self.vcpus else {}


# --------------------------------------------------------------------------- vCPU init (kvm_arch_init_vcpu)

def _init_failed(index: int, err_no: int) -> str:
    """The line ``kvm_init_vcpu`` adds when ``kvm_arch_init_vcpu`` fails (error_fatal in the vCPU thread)."""
    return f"{PROG}: kvm_init_vcpu: kvm_arch_init_vcpu failed ({index}): {os.strerror(err_no)}"


def _errno_of(err: KvmError) -> int:
    return int(getattr(errno_mod, err.errno_name, errno_mod.EINVAL))


def evmcs_vmx_view(kvm: SimKvm, vcpu: SimVcpu) -> dict[str, int]:
    """Design (b): the filtered VMX MSRs userspace gets for a vCPU.

    KVM_GET_EVMCS_VMX_MSRS where the (counterfactual) ioctl exists (6.1+), else the documented filter of
    the host's era applied to the MSRs KVM reports.
    """
    try:
        return vcpu.get_evmcs_vmx_msrs()
    except KvmError:
        return {n: v for n, v in filter_all(kvm.era, kvm.feature_msrs()).items() if n != "IA32_VMX_PROCBASED_CTLS3"}


def _userspace_check(cpu: X86Cpu, kvm: SimKvm, vcpu: SimVcpu) -> None:
    """Design (b) QEMU: refuse a vmx feature the eVMCS L1 could not see on this host.

    :raise QemuError: stage ``userspace-check``, naming the features (registry names).
    """
    reg = registry()
    view = visible_features(evmcs_vmx_view(kvm, vcpu), reg)
    wanted = [f.name for f in reg.features.values()
              if f.word in cpu.features and cpu.features[f.word] & f.mask == f.mask and f.mask]
    hidden = sorted(n for n in wanted if n not in view)
    if hidden:
        raise QemuError("not in this host's eVMCS-filtered VMX MSRs: " + ", ".join(hidden), stage=STAGE_USERSPACE)


def _kvm_init_vcpu(state: VcpuState, accel: KvmAccel, log: KvmLog, design: str) -> None:
    """KVM_CREATE_VCPU and ``kvm_arch_init_vcpu`` for one vCPU.

    :raise QemuError: a Hyper-V failure (exit 1) or a rejected MSR write (status 134), with its stage.
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
                raise QemuError(err.message, extra=[_init_failed(i, errno_mod.ENOSYS)],
                                stage=err.stage or STAGE_HV) from None
        if hyperv and "hv-evmcs" in cpu.hv:
            if design == "vmx-msrs":
                _userspace_check(cpu, kvm, vcpu)
            # hyperv_init_vcpu()
            desc = "enlightened VMCS (hv-evmcs)"
            rev = cpu.evmcs_revision
            try:
                if rev is not None and kvm.max_evmcs_revision():
                    supported = vcpu.enable_evmcs2(rev)     # design (a), --variant revision
                elif rev is not None and rev > EVMCS_REVISION_LEGACY:
                    raise QemuError(f"eVMCS revision {rev} is not supported by kernel (no "
                                    f"KVM_CAP_HYPERV_ENLIGHTENED_VMCS2: legacy revision 1 only)",
                                    extra=[_init_failed(i, errno_mod.EINVAL)], stage=STAGE_REVISION)
                else:
                    supported = vcpu.enable_evmcs()
            except KvmError as err:
                if rev is not None and kvm.max_evmcs_revision():
                    raise QemuError(f"eVMCS revision {rev} is not supported by kernel ({err.message})",
                                    extra=[_init_failed(i, _errno_of(err))], stage=STAGE_REVISION) from None
                raise QemuError(f"Hyper-V {desc} is not supported by kernel",
                                extra=[_init_failed(i, _errno_of(err))], stage=STAGE_EVMCS_CAP) from None
            want = DEFAULT_EVMCS_VERSION
            if not evmcs_range_supported((want & 0xFF, want >> 8), supported):
                raise QemuError(f"eVMCS version range [{want & 0xFF}..{want >> 8}] is not supported by kernel "
                                f"(supported: [{supported & 0xFF}..{supported >> 8}])",
                                extra=[_init_failed(i, errno_mod.ENOTSUP)], stage=STAGE_EVMCS_VERSION)
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
                                    extra=[ASSERT_LINE], stage=STAGE_MSR_WRITE)
    finally:
        log.drain(i, vcpu.log)


# --------------------------------------------------------------------------- lost features

def _lost(run: Startup) -> tuple[list[str], dict[str, str]]:
    """Requested vmx-* features of vCPU 0 that its L1 does not get, with causes."""
    if not run.vcpus:
        return [], {}
    state = run.vcpus[0]
    cpu = state.cpu
    if not cpu.requested_vmx:
        return [], {}
    guest: dict[str, int] = {}
    vcpu = state.kvm_vcpu
    if vcpu is not None and cpu.has_vmx():
        guest = read_vmx_msrs(vcpu, host_initiated=False)
    # The one rule of "visible" (core.views): set in every MSR of its word, so a control the filter clears from
    # one form only (5.15's forgotten TRUE_PINBASED) is lost, as the negotiator and migrate-check count it.
    visible = visible_properties(guest)
    configured = set(feature_names(cpu.features))
    host_lost = set(feature_names(cpu.host_filtered))
    dep_lost = set(feature_names(cpu.dep_dropped))
    perf_gated: set[str] = set()
    if vcpu is not None and run.kvm is not None and vcpu.evmcs_active():
        reg = registry()
        kvm_side = {name: vcpu.msrs.get(name, value) for name, value in guest.items()}
        layers = hidden_layers(run.kvm.era, kvm_side, guest, perf_gate_open=vcpu.hv.perf_global_ctrl, reg=reg)
        perf_gated = {q for f, layer in layers.items() if layer == LAYER_PERF and (q := reg.features[f].qemu)}
    lost: list[str] = []
    detail: dict[str, str] = {}
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


def _lost_reason(detail: Mapping[str, str], run: Startup) -> str:
    groups: dict[str, list[str]] = {}
    for name, cause in detail.items():
        groups.setdefault(cause, []).append(name)
    parts = [f"{', '.join(names)}: {_CAUSE_TEXT[cause]}" for cause, names in groups.items()]
    era = f" (kernel {run.profile.kernel}, era {run.kvm.era.id})" if run.kvm is not None else ""
    return "; ".join(parts) + era


def read_vmx_msrs(vcpu: SimVcpu, *, host_initiated: bool) -> dict[str, int]:
    """Every readable VMX MSR of a vCPU, as the guest (filtered) or userspace (host-initiated) reads it."""
    out: dict[str, int] = {}
    for name in registry().msr_names():
        if name not in vcpu.msrs:
            continue
        try:
            out[name] = vcpu.get_msr(name, host_initiated=host_initiated)
        except KvmError:
            continue
    return out


# --------------------------------------------------------------------------- start

def start(profile: HostProfile, request: StartRequest) -> Startup:
    """Run QEMU's start-up for ``request`` on the simulated host ``profile``.

    Pure: no file, process or socket. Never raises for QEMU-level failures: they come back as a result
    with QEMU's stderr lines, exit status and stage.
    """
    log = KvmLog()
    kvm: SimKvm | None = None
    accel: Accel
    if request.accel == "kvm":
        kvm = SimKvm(profile, variant=DESIGN_VARIANT[request.design])
        accel = KvmAccel(kvm, log)
    else:
        accel = Accel()
    run = Startup(profile=profile, request=request, accel=accel, kvm=kvm, log=log,
                  stderr=list(request.cpu.warnings))
    stage = STAGE_CPU
    try:
        check_model(request.cpu.model)
        for i in range(request.vcpus):
            stage = STAGE_CPU
            cpu = X86Cpu.create(request.cpu, accel)
            if cpu.model == "host" and not accel.uses_host_cpuid:
                raise QemuError("CPU model 'host' requires KVM or HVF")
            stage = STAGE_HV
            run.stderr += cpu.expand()
            stage = STAGE_VMX
            run.stderr += cpu.filter()
            if i == 0:
                run.cpuid_filtered = list(cpu.cpuid_filtered)
            err = cpu.enforce_error()
            if err is not None:
                raise err
            state = VcpuState(index=i, cpu=cpu)
            run.vcpus.append(state)
            if isinstance(accel, KvmAccel):
                _kvm_init_vcpu(state, accel, log, request.design)
    except QemuError as err:
        run.stderr += err.lines()
        run.exit_status, run.reason, run.stage = err.status, err.message, err.stage or stage
        return run
    run.ok, run.exit_status = True, 0
    run.lost, run.lost_detail = _lost(run)
    run.reason = _lost_reason(run.lost_detail, run) if run.lost else ""
    return run


#: The smallest ``-cpu`` that asks for eVMCS (QEMU requires hv-vapic with hv-evmcs; VMX off so that no VMX MSR
#: write can fail for another reason).
EVMCS_PROBE_CPU = CpuSpec(model="host", props=(("vmx", "off"), ("hv-vapic", "on"), ("hv-evmcs", "on")))


def evmcs_start_error(profile: HostProfile, design: str = "shipped") -> str | None:
    """QEMU's error text when ``hv-evmcs`` cannot start on ``profile`` (``None``: it starts)."""
    run = start(profile, StartRequest(cpu=EVMCS_PROBE_CPU, design=design))
    return None if run.ok else run.reason


__all__ = ["DESIGN_VARIANT", "EVMCS_PROBE_CPU", "EXIT_ABORT", "EXIT_ERROR", "StartRequest", "Startup", "VcpuState",
           "evmcs_start_error", "evmcs_vmx_view", "read_vmx_msrs", "start"]
