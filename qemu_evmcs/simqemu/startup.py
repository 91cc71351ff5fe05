"""The simulated QEMU process's start-up: its command line run through the one start-up model.

The model itself (QEMU's order, texts, exit statuses, what the guest sees) is
:func:`qemu_evmcs.qemu.startup.start`, a pure function the policy layer calls too. This module only adds
what a process has: the parsed command line (:class:`SimConfig`), the :class:`Machine` the QMP server and
migration keep running, and :func:`predict` for ``qemu-evmcs-launch --check`` (a QEMU argument list in,
the start-up verdict out, nothing started).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from qemu_evmcs.core.profile import HostProfile, load_profile, resolve_profile_path
from qemu_evmcs.kvm.simkvm import SimKvm
from qemu_evmcs.qemu.cpu import Accel, KvmLog
from qemu_evmcs.qemu.cpuspec import EXIT_ABORT, EXIT_ERROR, QemuError
from qemu_evmcs.qemu.startup import StartRequest, VcpuState, read_vmx_msrs, start
from qemu_evmcs.simqemu.cmdline import SimConfig, parse_args, strip_program


@dataclass
class Machine:
    """A started simulated VM (the destination of a migration replaces its vCPUs and KVM)."""

    config: SimConfig
    profile: HostProfile
    accel: Accel
    kvm: SimKvm | None
    log: KvmLog
    vcpus: list[VcpuState] = field(default_factory=list)


@dataclass
class StartupResult:
    """What :func:`boot` did: stderr lines, exit status and, on success, the machine."""

    ok: bool
    exit_status: int
    reason: str
    stderr: list[str]
    lost: list[str] = field(default_factory=list)
    lost_detail: dict[str, str] = field(default_factory=dict)
    machine: Machine | None = None


#: :func:`predict`'s answer: a :class:`StartupResult` without a machine (nothing is kept running).
Prediction = StartupResult


#: ``--variant`` (the simulated *kernel*'s ABI) -> the design the start-up model runs. The simulated QEMU is
#: QEMU 7.2, which never asks KVM_GET_EVMCS_VMX_MSRS: on the ``vmx-msrs`` kernel it runs without design (b)'s
#: userspace check, which is the start-up model's ``naive`` design.
VARIANT_DESIGN = {"shipped": "shipped", "revision": "revision", "vmx-msrs": "naive"}


def start_request(config: SimConfig) -> StartRequest:
    """The start-up model's input for a simulator command line."""
    return StartRequest(cpu=config.cpu, design=VARIANT_DESIGN[config.variant], accel=config.accel,
                        vcpus=0 if config.machine == "none" else config.smp)


def boot(config: SimConfig, profile: HostProfile) -> StartupResult:
    """Run QEMU's start-up for ``config`` on the simulated host ``profile`` (never raises for QEMU failures)."""
    run = start(profile, start_request(config))
    machine = None
    if run.ok:
        machine = Machine(config=config, profile=profile, accel=run.accel, kvm=run.kvm, log=run.log,
                          vcpus=run.vcpus)
    return StartupResult(ok=run.ok, exit_status=run.exit_status, reason=run.reason, stderr=run.stderr,
                         lost=run.lost, lost_detail=run.lost_detail, machine=machine)


def predict(profile_path: str, qemu_argv: Sequence[str]) -> Prediction:
    """Would QEMU start with these arguments on this host, and what would the L1 guest lose?

    :param profile_path: a host profile path or bundled sample name (``--host`` in ``qemu_argv`` is ignored).
    :param qemu_argv: QEMU's arguments (a leading ``qemu-system-x86_64`` program name is skipped).
    :raise InputError: the host profile cannot be read (bad input to the tool, not a QEMU failure).
    """
    try:
        config = parse_args(strip_program(qemu_argv))
    except QemuError as err:
        return Prediction(ok=False, exit_status=err.status, reason=err.message, stderr=err.lines())
    profile = load_profile(resolve_profile_path(profile_path))
    if config.show_help or config.show_version or config.cpu_help:
        return Prediction(ok=True, exit_status=0, reason="", stderr=[])
    return replace(boot(config, profile), machine=None)


__all__ = ["EXIT_ABORT", "EXIT_ERROR", "Machine", "Prediction", "StartupResult", "VcpuState", "boot", "predict",
           "read_vmx_msrs", "start_request"]
