"""``qemu-evmcs-launch``: a drop-in for ``qemu-system-x86_64`` that verifies the CPU it got.

Why a wrapper: libvirt (``<emulator>``) and scripts run QEMU directly and
never look at what QEMU did with ``-cpu ...,vmx-posted-intr=on,hv-evmcs=on``.
This wrapper runs the real emulator with the same arguments plus one private
QMP monitor, asks QEMU over QMP what it applied (:mod:`.verify`), prints a
short report on stderr, and otherwise stays out of the way: stdin/stdout are
inherited, stderr is relayed verbatim as it arrives, and the exit status is the
emulator's.

Command line::

    qemu-evmcs-launch [--emulator PATH] [--simulate PROFILE] [--host PROFILE]
                      [--negotiate PROFILE... [--design D]]
                      [--check] [--report-json FILE [--force]] [--qmp-timeout SECONDS]
                      [--] QEMU-ARGS...
    qemu-evmcs-launch --wrapper-help

The wrapper's own options come first; the first argument that is not one of
them (or everything after ``--``) is passed to the emulator verbatim.

- ``--emulator PATH``: default ``$QEMU_EVMCS_EMULATOR``, else ``qemu-system-x86_64`` on PATH.
- ``--simulate PROFILE``: run ``python -m qemu_evmcs.simqemu --host PROFILE QEMU-ARGS`` instead.
- ``--check``: before starting anything, refuse a configuration the real emulator would reject (it is asked:
  ``-machine none``, QMP ``query-cpu-definitions`` / ``qom-list-properties``, QEMU's own wording), and, with a
  host profile (``--host`` or ``--simulate``), one that would abort or silently lose requested vmx features
  (prediction by ``qemu_evmcs.simqemu.startup.predict``).
- ``--host PROFILE``: the host profile ``--check`` and the verification use with a real emulator (the report
  then says which applied vmx-* options the eVMCS filter hides from the guest).
- ``--negotiate PROFILE...``: the guest must start on, and live-migrate among, these hosts: the
  ``-cpu MODEL`` argument (MODEL: a CPU model definition name or file, or ``max``) is replaced by
  ``qemu_evmcs.output.render.negotiate_cpu_arg(MODEL, PROFILES, STRATEGY)`` before anything starts. A pool
  without a safe answer is refused with one ``error:`` line and exit 1. The profiles are every argument
  up to the next one starting with ``-``.
- ``--design shipped|revision|vmx-msrs`` (alias ``--strategy``; ``pv-cpuid`` = ``shipped``): the design negotiated
  for (default ``shipped``, what
  shipped); with ``--simulate`` the simulator runs the matching KVM ABI variant (``--variant``).
- ``--report-json FILE``: also write the verification report as JSON (atomically: a temporary file
  in the same directory, then a rename). An existing FILE is refused before anything starts
  unless ``--force`` is given.
- ``--force``: allow ``--report-json`` to replace an existing file.
- ``--qmp-timeout SECONDS``: spawn-to-QMP-greeting limit, and per command (default 10).
- ``--wrapper-help``: the wrapper's own help (:data:`WRAPPER_HELP`). ``-h``, ``-help`` and ``--help`` are the
  emulator's: they pass through, so ``qemu-evmcs-launch --help`` prints QEMU's help like the binary it
  replaces (on a terminal, one line on stderr first points at ``--wrapper-help``).

Without ``-cpu``, with ``-cpu help`` or with ``-machine none`` (libvirt's capability probe
``-machine none,accel=kvm:tcg -qmp ...``, ``-help``, ``-version``) the wrapper just ``exec``s the
emulator, whatever options the environment or a config file set: nothing to verify.

As libvirt's ``<emulator>``: the options above also come from the environment (``QEMU_EVMCS_HOST``,
``QEMU_EVMCS_CHECK``, ``QEMU_EVMCS_REPORT_JSON``...) and from ``launch.conf`` files (:mod:`.config`);
every descriptor the wrapper inherited open (libvirt's monitor socket ``-chardev socket,fd=N``, tap and
disk descriptors) is handed to the emulator under the same number, and the wrapper's own are not
(:mod:`.fds`); the wrapper's private QMP monitor sits beside libvirt's. What the wrapper and the emulator
print goes to the same stderr, which libvirt logs and quotes when a start fails, so a ``--check`` refusal
reaches the user through libvirt's own error.

Exit status:

- the emulator's exit status, or 128+N if it was killed by signal N;
- 128+N if the wrapper gets SIGINT/SIGTERM/SIGHUP (forwarded to the emulator,
  which is then reaped and its runtime directory removed; the last stderr line
  is ``qemu-evmcs-launch: terminated by signal N (SIGNAME)``);
- 1 with ``error: ...``: the emulator could not be started or never answered
  QMP, or ``--check`` refused (if the emulator itself exited non-zero before
  QMP was ready, its status is used instead);
- 2 with ``error: ...``: bad wrapper usage or input, including an emulator binary that is not found
  or not executable and a ``--simulate``/``--host`` profile that does not exist.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.signals import NotedSignals
from qemu_evmcs.core.errors import EXIT_BAD_INPUT, EXIT_NEGATIVE, EvmcsError, InputError, LaunchError, NegativeAnswer
from qemu_evmcs.launch.config import KEYS, Setting, expand_report_path, load_settings
from qemu_evmcs.launch.cpuarg import find_cpu_arg, find_cpu_index, parse_cpu_arg
from qemu_evmcs.launch.fds import inherited_fds
from qemu_evmcs.launch.process import Spawned, describe_status, shell_status, spawn_emulator
from qemu_evmcs.output.atomicio import check_output_target, write_text_file
from qemu_evmcs.qemu.cpuspec import CpuSpec
from qemu_evmcs.core import lazy

if TYPE_CHECKING:
    import asyncio
    import shutil

    from qemu_evmcs.core import profile as profiles
    from qemu_evmcs.fleet import sources
    from qemu_evmcs.launch import capabilities, guestview, qmp, verify
    from qemu_evmcs.launch.verify import LaunchReport
    from qemu_evmcs.output import render
    from qemu_evmcs.policy import negotiate
    from qemu_evmcs.simqemu import startup
else:
    # The QMP client (asyncio, qemu.qmp: about 45 ms) is imported only once the emulator runs, so that both
    # start together (launch/process.py). What only --negotiate, --design, --check/--simulate/--host or an
    # error message need is not imported by a plain launch at all (core/lazy.py).
    asyncio = lazy.proxy("asyncio")
    shutil = lazy.proxy("shutil")       # which(): a real emulator only
    qmp = lazy.proxy("qemu_evmcs.launch.qmp")
    verify = lazy.proxy("qemu_evmcs.launch.verify")
    capabilities = lazy.proxy("qemu_evmcs.launch.capabilities")
    profiles = lazy.proxy("qemu_evmcs.core.profile")
    sources = lazy.proxy("qemu_evmcs.fleet.sources")
    guestview = lazy.proxy("qemu_evmcs.launch.guestview")
    render = lazy.proxy("qemu_evmcs.output.render")
    negotiate = lazy.proxy("qemu_evmcs.policy.negotiate")
    startup = lazy.proxy("qemu_evmcs.simqemu.startup")

PROG = "qemu-evmcs-launch"
ENV_EMULATOR = "QEMU_EVMCS_EMULATOR"
DEFAULT_EMULATOR = "qemu-system-x86_64"
DEFAULT_QMP_TIMEOUT = 10.0
#: How messages name the simulator (run as ``python3 -m qemu_evmcs.simqemu``; its console script's name).
SIM_PROGRAM = "qemu-evmcs-sim"

USAGE = (
    f"usage: {PROG} [--emulator PATH] [--simulate PROFILE] [--host PROFILE] [--check]\n"
    f"       {' ' * len(PROG)} [--negotiate PROFILE... [--design D]]\n"
    f"       {' ' * len(PROG)} [--report-json FILE [--force]] [--qmp-timeout SECONDS] [--] QEMU-ARGS...\n"
    f"       {PROG} --wrapper-help\n"
)

#: ``--wrapper-help``. ``-h``/``--help``/``-help`` belong to the emulator (drop-in: they print QEMU's help).
WRAPPER_HELP = USAGE + f"""
A drop-in for qemu-system-x86_64 (usable as libvirt's <emulator>): runs the emulator with the same
arguments plus a private QMP monitor, asks it over QMP which requested vmx/vmx-*/hv-* options of -cpu
took effect (query-cpus-fast, query-cpu-model-expansion, qom-get, query-kvm, QEMU's feature warnings),
prints a short report on stderr prefixed '{PROG}:', then exits with the emulator's status.

Wrapper options (only before the first emulator argument, or before --):
  --emulator PATH        the emulator binary (default: ${ENV_EMULATOR}, else {DEFAULT_EMULATOR} on PATH)
  --simulate PROFILE     run the simulated QEMU/KVM (qemu-evmcs-sim) on a host profile instead
  --check                refuse, before starting anything, a -cpu the emulator lacks a model or property for
                         (the binary is asked) and, with a host profile, a configuration that would abort or
                         silently lose requested vmx features (one 'error:' line, exit 1)
  --host PROFILE         the host profile --check and the report use with a real emulator
  --negotiate PROFILE... replace -cpu MODEL by the answer that starts on and migrates among these hosts
  --design D             with --negotiate: shipped (default, what Linux shipped), revision or vmx-msrs
                         (pv-cpuid is an alias of shipped)
  --strategy D           alias of --design
  --report-json FILE     also write the verification report as JSON (refuses to overwrite without --force)
  --force                let --report-json replace an existing file
  --qmp-timeout SECONDS  spawn-to-QMP-greeting limit, and per QMP command (default {DEFAULT_QMP_TIMEOUT:g})
  --wrapper-help         this text
  --                     end of wrapper options

Everything else goes to the emulator verbatim, including -h/--help (QEMU's own help). Without -cpu, with
-cpu help or with -machine none (libvirt's capability probe), the emulator is exec'd directly.

As libvirt's <emulator> (which takes no options): descriptors the wrapper inherits (libvirt's monitor
socket, -chardev socket,fd=N) reach the emulator under the same numbers. Options also come from the
environment -- QEMU_EVMCS_HOST, QEMU_EVMCS_CHECK, QEMU_EVMCS_REPORT_JSON, QEMU_EVMCS_FORCE,
QEMU_EVMCS_EMULATOR, QEMU_EVMCS_SIMULATE, QEMU_EVMCS_QMP_TIMEOUT (a domain sets them with
<qemu:commandline><qemu:env .../>) -- and from 'key = value' files: /etc/qemu-evmcs/launch.conf, then
$XDG_CONFIG_HOME/qemu-evmcs/launch.conf or ~/.config/qemu-evmcs/launch.conf (or the one file named by
QEMU_EVMCS_LAUNCH_CONF); keys are the option names without '--'. Command line > environment > files.
In report-json, {{guest}} is the guest's -name and {{pid}} the wrapper's pid.

Exit status: the emulator's (128+N if killed by signal N); 128+N if the wrapper gets SIGINT/SIGTERM/SIGHUP;
1 if the emulator cannot be started or never answers QMP, or --check or --negotiate refuses; 2 for bad
wrapper usage or input (an emulator binary not found, a --simulate/--host profile that does not exist).
"""

#: The emulator's help options: passed through (drop-in), with a hint about ``--wrapper-help`` on a terminal.
QEMU_HELP_OPTS = frozenset({"-h", "-help", "--help"})

#: Each wrapper option that takes a value as it is, and the :class:`WrapperOptions` field it sets
#: (``--strategy``: the alias of ``--design``, qemu_evmcs/cli/designarg.py); ``--qmp-timeout`` is parsed.
_VALUE_FIELDS = {"--emulator": "emulator", "--simulate": "simulate", "--host": "host", "--report-json": "report_json",
                 "--design": "strategy", "--strategy": "strategy"}
_VALUE_OPTS = (*_VALUE_FIELDS, "--qmp-timeout")
#: Each wrapper switch and the field it turns on.
_FLAG_FIELDS = {"--check": "check", "--force": "force", "--wrapper-help": "help"}
_FLAG_OPTS = tuple(_FLAG_FIELDS)

#: Signals the wrapper forwards to the emulator before cleaning up (QEMU terminates on each of them).
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class WrapperOptions:
    """The wrapper's own options plus the untouched emulator arguments."""

    emulator: str | None = None
    simulate: str | None = None
    host: str | None = None
    check: bool = False
    report_json: str | None = None
    force: bool = False
    qmp_timeout: float = DEFAULT_QMP_TIMEOUT
    help: bool = False
    negotiate: list[str] = field(default_factory=list)
    strategy: str = "pv-cpuid"
    #: Simulator KVM ABI variant (``--variant``) implied by ``--strategy``; ``None``: the default.
    variant: str | None = None
    qemu_args: list[str] = field(default_factory=list)
    #: Option names (``KEYS`` spelling) given on the command line: the environment and files do not override them.
    given: set[str] = field(default_factory=set)
    #: Descriptors inherited open (libvirt's monitor socket...), handed to the emulator under the same numbers.
    pass_fds: tuple[int, ...] = ()


def parse_wrapper_args(argv: Sequence[str]) -> WrapperOptions:
    """Split ``argv`` into the wrapper's leading options and the emulator's arguments.

    Only leading options are ours, so any QEMU option (even one spelled like
    ours later on the line) passes through verbatim.

    :raise InputError: missing or bad option value.
    """
    opts = WrapperOptions()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        name, eq, inline = arg.partition("=")
        if name == "--negotiate":
            i += 1
            values = [inline] if eq else []
            while not eq and i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            if not values or not all(values):
                raise InputError("--negotiate needs at least one host PROFILE")
            opts.negotiate += values
            continue
        if name in _FLAG_OPTS and not eq:
            opts.given.add(name[2:])
            setattr(opts, _FLAG_FIELDS[name], True)
            i += 1
            continue
        if name not in _VALUE_OPTS:
            break
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(argv):
                raise InputError(f"{name} needs a value")
            value = argv[i + 1]
            i += 2
        if not value:
            raise InputError(f"{name} needs a non-empty value")
        opts.given.add(name[2:])
        if name in _VALUE_FIELDS:
            setattr(opts, _VALUE_FIELDS[name], value)
        else:
            opts.qmp_timeout = _timeout(value, "--qmp-timeout")
    opts.qemu_args = list(argv[i:])
    if opts.simulate is not None and opts.emulator is not None:
        raise InputError("--simulate and --emulator are mutually exclusive")
    if opts.strategy != "pv-cpuid" or opts.negotiate:
        opts.strategy = negotiate.strategy_of(opts.strategy)   # a design name (shipped) or its alias (pv-cpuid)
        if not opts.negotiate:
            raise InputError("--design needs --negotiate PROFILE...")
        variant = negotiate.STRATEGY_VARIANT[opts.strategy]
        opts.variant = None if variant == "shipped" else variant
    return opts


def _timeout(value: str, where: str, *, file: str | None = None, line: int | None = None) -> float:
    """A ``--qmp-timeout`` value in seconds.

    :raise InputError: not a positive number below a day.
    """
    try:
        seconds = float(value)
    except ValueError:
        raise InputError(f"{where} {value!r}: not a number", file=file, line=line) from None
    if not 0 < seconds < 86400:
        raise InputError(f"{where} {value!r}: must be a positive number of seconds", file=file, line=line)
    return seconds


def apply_settings(opts: WrapperOptions, settings: dict[str, Setting]) -> None:
    """Fill the options the command line did not give from the environment and config files
    (:func:`qemu_evmcs.launch.config.load_settings`).

    :raise InputError: a bad value, naming its file and line or its variable.
    """
    for key, setting in settings.items():
        if key in opts.given:
            continue
        if KEYS[key]:
            on = setting.as_bool(key)
            if key == "check":
                opts.check = on
            else:
                opts.force = on
            continue
        if key == "qmp-timeout":
            opts.qmp_timeout = _timeout(setting.value, key, file=setting.source, line=setting.line)
        elif key == "emulator":
            opts.emulator = setting.value
        elif key == "simulate":
            opts.simulate = setting.value
        elif key == "host":
            opts.host = setting.value
        else:
            opts.report_json = setting.value
    if opts.simulate is not None and opts.emulator is not None:
        which = "simulate" if "simulate" not in opts.given else "emulator"
        src = settings[which]
        raise InputError(f"{which} is set here but --simulate and --emulator are mutually exclusive",
                         file=src.source, line=src.line, key=which)


def is_probe(qemu_args: Sequence[str]) -> bool:
    """An invocation with nothing to verify: no ``-cpu``, ``-cpu help``, or ``-machine none`` (libvirt's
    capability probe). Such a call is ``exec``'d unchanged, whatever the environment and files say."""
    cpu_arg = find_cpu_arg(qemu_args)
    if cpu_arg is None or parse_cpu_arg(cpu_arg).is_probe:
        return True
    for i, arg in enumerate(qemu_args):
        value = None
        if arg in ("-machine", "--machine", "-M") and i + 1 < len(qemu_args):
            value = qemu_args[i + 1]
        elif arg.startswith(("-machine=", "--machine=")):
            value = arg.partition("=")[2]
        if value is not None:
            first = value.split(",", 1)[0]
            if first in ("none", "type=none"):
                return True
    return False


def apply_negotiation(opts: WrapperOptions) -> str:
    """``--negotiate``: replace ``-cpu MODEL`` in the emulator arguments by the negotiated ``-cpu``.

    :return: the new ``-cpu`` argument.
    :raise InputError: no ``-cpu MODEL``, or an unknown model, profile or strategy.
    :raise NegativeAnswer: the pool has no safe answer.
    """
    idx = find_cpu_index(opts.qemu_args)
    if idx is None:
        raise InputError("--negotiate needs -cpu MODEL (a CPU model definition) among the emulator arguments")
    model = opts.qemu_args[idx].split(",", 1)[0]
    if not model:
        raise InputError("--negotiate: -cpu needs a model definition name")
    properties = None
    if opts.simulate is None:
        # A real emulator is asked which CPU properties it has (-machine none, QMP qom-list-properties): the
        # answer uses exactly those, and this project's proposed options only if the binary has them.
        binary = emulator_argv(opts)[0]
        caps = asyncio.run(capabilities.probe_cpu_capabilities(binary, ["max"], qmp_timeout=opts.qmp_timeout))
        properties = caps.properties.get(caps.models.get("max", ""))
    try:
        # The simulated QEMU has this project's proposed options; a real emulator gets only what it has.
        cpu = render.negotiate_cpu_arg(model, sources.load_hosts_fleet(opts.negotiate), opts.strategy,
                                target="simulator" if opts.simulate is not None else "qemu", properties=properties)
    except NegativeAnswer as err:
        raise NegativeAnswer(f"--negotiate: {err.message}") from None
    opts.qemu_args[idx] = cpu
    return cpu


def require_profiles(opts: WrapperOptions) -> None:
    """``--simulate``/``--host`` must name a file or a bundled profile, and be a valid profile: a typo or a bad
    file is bad input (exit 2, one line naming the file), caught before anything starts, whichever flag names it
    and with or without ``--check``. (An invalid ``--simulate`` profile was the simulated QEMU failing to start,
    exit 1; an invalid ``--host`` without ``--check`` only a warning after the launch.) The profile is loaded
    here anyway later, for the guest-view judgement; the parse cache makes the second load cheap. (Through
    the profile module, not :mod:`.guestview`: that one imports the verification and with it asyncio, which the
    wrapper imports only once the emulator runs.)

    :raise InputError: neither a file nor a bundled profile name, or not a valid profile.
    """
    for flag, value in (("--simulate", opts.simulate), ("--host", opts.host)):
        if value is None:
            continue
        if not os.path.exists(value) and not os.path.exists(profiles.resolve_profile_path(value)):
            hint = profiles.bundled_name_hint(value)
            raise InputError(f"no such host profile {value!r} (neither a file nor a bundled profile name"
                             + (f"; {hint})" if hint else ")"), key=flag)
        profiles.load_host_profile(value)


def emulator_argv(opts: WrapperOptions) -> list[str]:
    """The command line to run: the simulator or the real emulator, then the user's arguments.

    :raise InputError: the emulator cannot be found.
    """
    if opts.simulate is not None:
        variant = ["--variant", opts.variant] if opts.variant else []
        return [sys.executable, "-m", "qemu_evmcs.simqemu", "--host", opts.simulate, *variant, *opts.qemu_args]
    prog = opts.emulator or DEFAULT_EMULATOR
    path = shutil.which(prog)
    if path is None:
        raise InputError(f"emulator {prog}: not found or not executable")
    return [path, *opts.qemu_args]


def check_binary(binary: str, spec: CpuSpec | None, opts: WrapperOptions) -> None:
    """``--check`` with a real emulator: ask ``binary`` (``-machine none``, QMP) for its CPU models and the
    properties of the requested model's type, and refuse in QEMU's words what it would reject
    (:mod:`qemu_evmcs.launch.capabilities`). Nothing else is started.

    :raise NegativeAnswer: the binary lacks the model or a property.
    :raise LaunchError: the binary does not start or answer.
    """
    if spec is None or spec.is_probe:
        return
    caps = asyncio.run(capabilities.probe_cpu_capabilities(binary, [spec.model], qmp_timeout=opts.qmp_timeout))
    refusals = capabilities.cpu_refusals(spec, caps)
    if refusals:
        more = f" (and {len(refusals) - 1} more: {'; '.join(refusals[1:])})" if len(refusals) > 1 else ""
        raise NegativeAnswer(f"--check: {os.path.basename(binary)}"
                             + (f" {caps.version}" if caps.version else "") + f": {refusals[0]}{more}")


def run_check(opts: WrapperOptions, run_argv: Sequence[str] | None = None) -> None:
    """``--check``: the real binary's answer first (models, properties: :func:`check_binary`), then, with a host
    profile (``--host``, or ``--simulate``'s), the one start-up model (:func:`qemu_evmcs.simqemu.startup.predict`):
    would this configuration abort or silently lose requested vmx features on that host?

    :raise InputError: ``--simulate`` without a profile cannot happen; neither a real emulator nor a profile.
    :raise LaunchError: the real binary does not answer.
    :raise NegativeAnswer: the configuration would be refused, abort or lose vmx features.
    """
    if opts.simulate is None and run_argv:
        cpu_arg = find_cpu_arg(opts.qemu_args)
        check_binary(run_argv[0], parse_cpu_arg(cpu_arg) if cpu_arg is not None else None, opts)
    profile = opts.simulate if opts.simulate is not None else opts.host
    if profile is None:
        if run_argv:
            return      # the real binary was asked; without a host profile there is nothing to simulate
        raise InputError("--check needs --simulate PROFILE or --host PROFILE")
    variant = ["--variant", opts.variant] if opts.variant else []
    pred = startup.predict(profile, [*variant, *opts.qemu_args])
    ok, reason, lost = pred.ok, pred.reason, pred.lost
    if reason.startswith("error: "):
        reason = reason[len("error: "):]  # QEMU's own "error: failed to set MSR ..." prefix: one "error:" is enough
    if not ok:
        raise NegativeAnswer(f"--check: {reason or 'the emulator would refuse this configuration'}", host=profile)
    if lost:
        why = f" ({reason})" if reason else ""
        raise NegativeAnswer(f"--check: requested vmx features would be lost: {', '.join(lost)}{why}", host=profile)


def _say(line: str) -> None:
    """One prefixed report line on stderr (never raises: stderr may be gone)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{PROG}: {line}\n")
        sys.stderr.flush()


def _error(err: EvmcsError) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"error: {err}\n")
        sys.stderr.flush()


def write_report(path: str, report: LaunchReport, *, force: bool = False) -> None:
    """Write the JSON report atomically (a ``mkstemp`` file in the same directory, then ``os.replace``).

    ``mkstemp`` (``O_EXCL``, random name) rather than a predictable ``FILE.tmpPID`` name: in a shared
    directory another user could plant a symlink there and have us truncate the file it points to.

    :raise InputError: ``path`` exists and ``force`` is false, or it cannot be written.
    """
    write_text_file(path, report.to_json() + "\n", force=force)


def judge_guest_view(report: LaunchReport, spec: CpuSpec, opts: WrapperOptions) -> None:
    """With a host profile (``--host``, or ``--simulate``'s), report what the L1 guest cannot see although QEMU
    applied it (:mod:`qemu_evmcs.launch.guestview`)."""
    profile = opts.host if opts.host is not None else opts.simulate
    if profile is None:
        return
    try:
        guestview.apply_guest_view(report, spec, profiles.load_host_profile(profile), variant=opts.variant or "shipped")
    except EvmcsError as err:
        _say(f"warning: guest view not judged: {err}")


def refuse_daemonize(qemu_args: Sequence[str]) -> None:
    """Refuse ``-daemonize``: QEMU would fork away from the wrapper, which then returned 0 while the VM kept
    running unmanaged, its QMP socket's directory already removed.

    :raise InputError: ``-daemonize`` (or ``--daemonize``) is among the emulator's arguments.
    """
    if any(a in ("-daemonize", "--daemonize") for a in qemu_args):
        raise InputError(f"-daemonize is not supported: {PROG} supervises the emulator until it exits (run "
                         f"{PROG} itself in the background, or under libvirt or a service manager)")


async def _supervise(session: qmp.EmulatorSession, spec: CpuSpec, opts: WrapperOptions) -> int:
    """Connect to the emulator :func:`run_async` took over, verify, report, then wait for it; returns the
    wrapper's exit status."""
    try:
        await session.connect()
    except LaunchError as err:
        # Did the emulator end on its own (its status is the answer), or do we stop it (no greeting in
        # time: our SIGTERM must not become the exit status 143; the documented answer is 1)?
        died_by_itself = session.exited
        # Stop and reap the emulator first: whatever it prints while dying is relayed before our
        # reason, so the reason stays the last line on stderr.
        with contextlib.suppress(EvmcsError, OSError):
            await session.close()
        _error(err)
        rc = session.returncode
        return shell_status(rc) if died_by_itself and rc is not None and rc != 0 else EXIT_NEGATIVE
    try:
        report = await verify.verify_cpu(session, spec)
    except LaunchError as err:
        if session.exited:
            _say(f"verification stopped: {err}")
            return shell_status(await session.wait())
        _say(f"warning: verification failed: {err}")
    else:
        judge_guest_view(report, spec, opts)
        for line in report.summary_lines():
            _say(line)
        if opts.report_json is not None:
            try:
                write_report(opts.report_json, report, force=opts.force)
            except InputError as err:
                _say(f"warning: report not written: {err}")
    # Stay out of the way from here on: no QMP client buffering events for the VM's lifetime.
    await session.disconnect()
    rc = await session.wait()
    if rc < 0:
        _say(f"emulator {describe_status(rc)}")
    return shell_status(rc)


async def run_async(started: Spawned, spec: CpuSpec, opts: WrapperOptions, noted: NotedSignals) -> int:
    """Supervise the started emulator; SIGINT/SIGTERM/SIGHUP are forwarded and turn into 128+sig (also one
    ``noted`` between the start and this loop); after the loop they are noted again."""
    loop = asyncio.get_running_loop()
    got_signal: asyncio.Future[int] = loop.create_future()

    def on_signal(sig: int) -> None:
        if not got_signal.done():
            got_signal.set_result(sig)

    sigs = FORWARDED_SIGNALS
    for sig in sigs:
        loop.add_signal_handler(sig, on_signal, sig)
    if noted.received:
        on_signal(noted.received[0])
    session = qmp.EmulatorSession(started.argv, qmp_timeout=opts.qmp_timeout, stderr_echo=sys.stderr.buffer,
                                  name=PROG, program=SIM_PROGRAM if opts.simulate is not None else None,
                                  pass_fds=opts.pass_fds, spawned=started)
    main: asyncio.Task[int] | None = None
    try:
        # Take the running emulator over first (its stderr relayed, its exit watched), so that a signal noted
        # before this loop existed is forwarded to it like any other.
        await session.spawn()
        main = asyncio.create_task(_supervise(session, spec, opts), name="supervise")
        await asyncio.wait({main, got_signal}, return_when=asyncio.FIRST_COMPLETED)
        if got_signal.done() and not main.done():
            signum = got_signal.result()
            # Forward the same signal first (QEMU shuts down cleanly on SIGINT/SIGTERM):
            # even if the cancellation below is lost (Python 3.11's wait_for can
            # swallow one), the supervisor then returns because the emulator exited.
            session.send_signal(signum)
            main.cancel()
            await asyncio.wait({main}, timeout=session.quit_timeout + session.term_timeout)
            await session.close()
            _say(f"terminated by signal {signum} ({signal.Signals(signum).name})")
            return 128 + signum
        return main.result()
    finally:
        if main is not None and not main.done():
            main.cancel()
            await asyncio.wait({main}, timeout=session.quit_timeout + session.term_timeout)
        await session.close()
        if main is not None and main.done() and not main.cancelled():
            main.exception()  # retrieved: never "exception was never retrieved" noise

        def release() -> None:
            for sig in sigs:
                loop.remove_signal_handler(sig)

        noted.take_back(release)


def _supervised(run_argv: list[str], spec: CpuSpec, opts: WrapperOptions, *, process_exit: bool) -> int:
    """Start the emulator, then load the QMP client while it starts, then supervise it (:func:`run_async`).

    The start comes first because the emulator's start and the wrapper's import of ``asyncio`` and
    ``qemu.qmp`` then run at the same time (on two cores: the simulated QEMU is a second Python); and, with a
    host profile, the guest-view judgement's modules are loaded in that time too. If anything fails before the
    session takes the emulator over, it is stopped and its directory removed here.

    From the start on, the signals are noted (:class:`~qemu_evmcs.core.signals.NotedSignals`): one before the
    event loop is forwarded once it runs; one after it (Ctrl-C pressed twice) changes nothing. In the process
    of its own (:func:`run`) they are ignored on leaving, otherwise (a test calling :func:`main`) the handlers
    found on entry come back.
    """
    with NotedSignals(FORWARDED_SIGNALS, ignore_on_exit=process_exit) as noted:
        started = spawn_emulator(run_argv, pass_fds=opts.pass_fds)
        try:
            if opts.host is not None or opts.simulate is not None:
                lazy.module("qemu_evmcs.launch.guestview")   # a literal: tests/test_layers.py checks it
            return asyncio.run(run_async(started, spec, opts, noted))
        finally:
            if not started.taken:
                started.abandon()


def _help_hint() -> None:
    """On a terminal, say where the wrapper's own options are before the emulator prints its help.

    Only when stderr is a terminal: a script or libvirt probing the emulator sees exactly QEMU's output.
    """
    with contextlib.suppress(OSError, ValueError):
        if sys.stderr.isatty():
            _say(f"wrapper options: {PROG} --wrapper-help; the emulator's help follows")


def _exec(argv: list[str]) -> int:
    """Replace this process with the emulator (probe invocations: fully transparent)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    try:
        os.execv(argv[0], argv)
    except OSError as err:
        raise LaunchError(f"cannot run {argv[0]}: {err.strerror}", layer="qemu") from err
    return 0  # pragma: no cover - execv does not return


def main(argv: Sequence[str] | None = None, *, process_exit: bool = False) -> int:
    """The wrapper; returns the exit status (see the module docstring). ``process_exit``: this is the
    process's own entry point (:func:`run`), which ends when this returns (see :func:`_supervised`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    # First, before anything opens a descriptor: which ones did our parent (libvirt) hand us?
    inherited = inherited_fds()
    try:
        opts = parse_wrapper_args(args)
        if opts.help:
            sys.stdout.write(WRAPPER_HELP)
            return 0
        if QEMU_HELP_OPTS.intersection(opts.qemu_args):
            _help_hint()
        if is_probe(opts.qemu_args) and not opts.negotiate:
            # libvirt's capability probes and listings: exactly the emulator, whatever the files say.
            apply_settings(opts, {k: v for k, v in load_settings().items() if k in ("emulator", "simulate")})
            return _exec(emulator_argv(opts))
        apply_settings(opts, load_settings())
        opts.pass_fds = inherited
        require_profiles(opts)
        refuse_daemonize(opts.qemu_args)
        if opts.negotiate:
            apply_negotiation(opts)
        run_argv = emulator_argv(opts)
        if opts.check:
            run_check(opts, run_argv)
        cpu_arg = find_cpu_arg(opts.qemu_args)
        spec = parse_cpu_arg(cpu_arg) if cpu_arg is not None else None
        if spec is None or spec.is_probe:
            return _exec(run_argv)
        if opts.report_json is not None:
            opts.report_json = expand_report_path(opts.report_json, opts.qemu_args)
            parent = os.path.dirname(os.path.abspath(opts.report_json))
            if not os.path.isdir(parent):
                raise InputError(f"--report-json {opts.report_json}: directory {parent} does not exist")
            try:
                check_output_target(opts.report_json, force=opts.force)
            except InputError as err:
                raise InputError(f"--report-json {opts.report_json}: {err.message}") from None
        return _supervised(run_argv, spec, opts, process_exit=process_exit)
    except EvmcsError as err:
        _error(err)
        return err.exit_code
    except KeyboardInterrupt:
        _say(f"terminated by signal {signal.SIGINT} (SIGINT)")
        return 128 + signal.SIGINT
    except BrokenPipeError:
        return EXIT_BAD_INPUT


def run() -> int:
    """The process's entry point (``qemu-evmcs-launch``, ``python -m qemu_evmcs.launch.wrapper``)."""
    return main(process_exit=True)


if __name__ == "__main__":
    sys.exit(run())
