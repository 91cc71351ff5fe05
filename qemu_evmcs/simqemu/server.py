"""``qemu-evmcs-sim`` / ``python -m qemu_evmcs.simqemu``: the simulated QEMU process.

Runs QEMU's start-up (:func:`.startup.boot`) on the simulated KVM of a host
profile, prints what QEMU would print, and then either exits like QEMU
(status 1 for ``exit(1)`` errors; SIGABRT -- status 134 in a shell -- for the
``kvm_buf_set_msrs`` assertion after a rejected VMX MSR write) or serves QMP
on every ``-qmp`` socket until ``quit`` (exit 0) or SIGTERM/SIGINT/SIGHUP.

Abort choice: the process really aborts with ``os.abort()`` after flushing
stderr (core dumps are disabled first with RLIMIT_CORE=0), like QEMU's failed
``assert()``: ``Popen.returncode`` is ``-6`` and a shell reports 134.
:func:`.startup.predict` reports ``exit_status`` 134 for that case.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from collections.abc import Sequence

from qemu_evmcs.core.errors import EvmcsError
from qemu_evmcs.core.profile import load_profile, resolve_profile_path
from qemu_evmcs.core.signals import NotedSignals
from qemu_evmcs.qemu.cpu import list_models
from qemu_evmcs.qemu.cpuspec import EXIT_ABORT, EXIT_ERROR, PROG, QemuError
from qemu_evmcs.simqemu.cmdline import parse_args
from qemu_evmcs.simqemu.qmp_server import TERMINATING_SIGNALS, QmpServer, register_signal_handlers
from qemu_evmcs.simqemu.reactor import report
from qemu_evmcs.simqemu.startup import Machine, boot


HELP = f"""\
usage: {PROG} [options]      (qemu-evmcs simulated QEMU 7.2 on a simulated KVM host)

Simulator options:
  --host PROFILE        host profile: a YAML path or a bundled sample name (e.g. skylake-6.3) [required]
  --variant V           KVM ABI variant: shipped (default, what Linux merged), revision, vmx-msrs

QEMU options understood (anything else: "-foo: invalid option", exit 1):
  -accel kvm|tcg  -machine TYPE[,accel=kvm]  -enable-kvm  -cpu MODEL[,feat=on|off,+feat,-feat,key=value]
  -smp N  -S  -qmp unix:PATH,server=on,wait=off (repeatable; also tcp:HOST:PORT and server,nowait)
  -display none  -nodefaults  -nographic  -no-user-config  -name NAME  -m SIZE
  -incoming URI (start in 'inmigrate')  -vga TYPE  -serial DEV  -version  -cpu help  -h

CPU models: host and max (need -accel kvm), base, qemu64, plus models from a plugged-in provider
(QEMU_EVMCS_SIM_MODEL_PROVIDER=module:attr).

Project plug-in CPU option (NOT in real QEMU; proposed by this project):
  hv-evmcs-perf-global-ctrl=on   set Hyper-V CPUID 0x4000000A.EBX bit 0 (HV_X64_NESTED_EVMCS1_PERF_GLOBAL_CTRL)
                                 so KVM 6.1+ shows VM_{{EXIT,ENTRY}}_LOAD_IA32_PERF_GLOBAL_CTRL to an eVMCS L1.
                                 Requires hv-evmcs; "not supported by kernel" before 6.1.

QMP extension commands: x-evmcs-query-guest-vmx-msrs, x-evmcs-query-host-vmx-msrs,
x-evmcs-query-hv-cpuid, x-evmcs-query-kvm-log (see qemu_evmcs.simqemu.qmp_server).

Exit status: 0 after quit/SIGTERM, 1 on QEMU start-up errors, SIGABRT (134) when KVM rejects a VMX MSR.
"""


def _abort() -> None:
    """Die like a failed ``assert()``: SIGABRT, without leaving a core file."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    with contextlib.suppress(Exception):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.abort()


def _serve(machine: Machine, noted: NotedSignals | None) -> int:
    server = QmpServer(machine, list(machine.config.qmp))
    try:
        server.start()
    except QemuError as err:
        report(*err.lines())
        server.close()
        return err.status
    register_signal_handlers(server, noted.received[0] if noted is not None and noted.received else None)
    return server.serve()


def main(argv: Sequence[str] | None = None, *, noted: NotedSignals | None = None) -> int:
    """The simulated QEMU; returns the exit status (aborts the process for the MSR assertion). ``noted``: the
    terminating signals noted since the process started (:func:`run`); the first is served by the main loop."""
    args: list[str] = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_args(args)
    except QemuError as err:
        report(*err.lines())
        return err.status
    if config.show_help:
        sys.stdout.write(HELP)
        return 0
    if config.show_version:
        sys.stdout.write("QEMU emulator version 7.2.0 (qemu-evmcs-sim)\n"
                         "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n")
        return 0
    if config.cpu_help:
        sys.stdout.write("Available CPUs:\n" + "".join(f"x86 {m}\n" for m in list_models()))
        return 0
    if not config.host:
        report(f"{PROG}: --host PROFILE is required (simulator option; see --help)")
        return EXIT_ERROR
    try:
        profile = load_profile(resolve_profile_path(config.host))
        profile.era  # noqa: B018 - a distribution build of unknown era: refuse here, naming every candidate
    except EvmcsError as err:
        report(f"{PROG}: --host {config.host}: {err}")
        return EXIT_ERROR
    result = boot(config, profile)
    report(*result.stderr)
    if result.exit_status == EXIT_ABORT:
        _abort()
    if not result.ok or result.machine is None:
        return result.exit_status
    return _serve(result.machine, noted)


def run() -> int:
    """The process's entry point (``qemu-evmcs-sim``, ``python -m qemu_evmcs.simqemu``): :func:`main` with
    QEMU's signal handling for the whole life of the process.

    Why: QEMU installs its SIGTERM/SIGINT/SIGHUP handler early in start-up (``os_setup_signal_handling``) and
    keeps it until exit, so a signal while it starts ends it once the main loop runs, and a second one during
    the shutdown (Ctrl-C pressed twice reaches every process of the terminal's group, and the wrapper forwards
    its own) is one more request. Python's default would raise ``KeyboardInterrupt`` wherever the process
    is, with a traceback, even in an exit handler writing a cache entry. The main loop's own handlers
    (:func:`~qemu_evmcs.simqemu.qmp_server.register_signal_handlers`) take over while it runs and give these
    back when it ends (the reactor restores what it found). Once :func:`main` returns the VM is gone: the
    signals are ignored from there on (death by SIGINT, status -2, instead of QEMU's 0 otherwise:
    :class:`~qemu_evmcs.core.signals.NotedSignals`). :func:`main` alone (the tests call it in their own
    process) leaves the handlers alone.
    """
    with NotedSignals(TERMINATING_SIGNALS, ignore_on_exit=True) as noted:
        return main(noted=noted)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
