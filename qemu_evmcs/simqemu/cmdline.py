"""The subset of QEMU's command line the simulator understands, parsed the way QEMU parses it.

Why a parser of our own: the simulator must refuse what QEMU refuses with
QEMU's own words (``qemu-system-x86_64: -foo: invalid option``) and accept the
spellings that real tools use (libvirt's ``-qmp unix:PATH,server=on,wait=off``,
older scripts' ``server,nowait``, ``-machine q35,accel=kvm``, ``-enable-kvm``).

Accepted options (``-opt`` and ``--opt`` are the same, as in QEMU)::

    -accel kvm|tcg[,...]      -machine|-M TYPE[,accel=kvm|tcg][,k=v...]   -enable-kvm
    -cpu MODEL[,feat=on|off,+feat,-feat,feat,key=value...]
    -smp N|cpus=N[,sockets=,dies=,cores=,threads=,maxcpus=]
    -S   -qmp unix:PATH,server=on,wait=off | tcp:HOST:PORT,server,nowait   (repeatable)
    -display none   -nodefaults   -nographic   -no-user-config   -name NAME   -m SIZE
    -incoming defer|unix:PATH|tcp:HOST:PORT|...   -vga TYPE   -serial DEV
    -version   -h|-help
    --host PROFILE            (simulator) host profile: a path or a bundled sample name
    --design shipped|revision|vmx-msrs    (simulator) KVM ABI design; --variant is an alias

``-cpu`` is split like ``x86_cpu_parse_featurestr()``: the model name, then
comma-separated features; ``+feat``/``-feat`` are the compatibility syntax
(applied after the ``key=value`` properties), a bare ``feat`` means
``feat=on``, and ``_`` in a feature name becomes ``-``. Unlike QEMU's other
option strings, ``-cpu`` has no ``,,`` escape: ``parse_cpu_option()`` splits off
the model at the first comma and ``x86_cpu_parse_featurestr()`` tokenizes the
rest with ``strtok(",")``, so empty items are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence

from qemu_evmcs.qemu.cpuspec import CpuSpec, QemuError, parse_cpu
from qemu_evmcs.qemu.options import qapi_bool


VARIANTS = ("shipped", "revision", "vmx-msrs")

#: Machine types the simulator accepts (QEMU 7.2 x86 names; versioned ``pc-q35-7.2`` style too).
_MACHINE_PREFIXES = ("pc", "q35", "none", "microvm", "isapc", "x-remote")
#: Maximum vCPUs of the simulated machine (pc/q35 in QEMU 7.2).
MAX_CPUS = 288


@dataclass(frozen=True)
class QmpAddress:
    """One ``-qmp`` monitor: a listening UNIX or TCP socket."""

    kind: str                 # "unix" | "tcp"
    path: str = ""            # unix
    host: str = ""            # tcp
    port: int = 0             # tcp
    wait: bool = True         # QEMU's default for server sockets; recorded, the simulator never blocks


@dataclass
class SimConfig:
    """Everything the command line said."""

    accel: str = "tcg"
    machine: str = "pc"
    machine_props: dict[str, str] = field(default_factory=dict)
    cpu: CpuSpec = field(default_factory=lambda: CpuSpec(model="qemu64"))
    cpu_given: bool = False
    smp: int = 1
    start_paused: bool = False
    qmp: list[QmpAddress] = field(default_factory=list)
    display: str | None = None
    nodefaults: bool = False
    nographic: bool = False
    no_user_config: bool = False
    incoming: str | None = None
    name: str | None = None
    memory: str | None = None
    host: str | None = None
    variant: str = "shipped"
    show_help: bool = False
    show_version: bool = False
    cpu_help: bool = False


def split_opts(text: str) -> list[str]:
    """Split a QEMU option string on ``,`` honouring the ``,,`` escape."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if i + 1 < len(text) and text[i + 1] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _kv(parts: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in parts:
        if not p:
            continue
        if "=" in p:
            k, v = p.split("=", 1)
            out[k] = v
        else:
            out[p] = "on"
    return out


def _parse_bool(opt: str, key: str, val: str) -> bool:
    on = qapi_bool(val)
    if on is None:
        raise QemuError(f"{opt}: Parameter '{key}' expects 'on' or 'off'")
    return on


def parse_qmp(arg: str) -> QmpAddress:
    """Parse a ``-qmp`` chardev spec (``unix:PATH,server=on,wait=off`` or ``tcp:HOST:PORT,server,nowait``).

    :raise QemuError: an unsupported backend or a client (non-server) socket.
    """
    parts = split_opts(arg)
    target, opts = parts[0], parts[1:]
    server = False
    wait = True
    for o in opts:
        if not o:
            continue
        key, _, val = o.partition("=")
        if key == "server":
            server = _parse_bool("-qmp", key, val or "on")
        elif key == "nowait":
            wait = False
        elif key == "wait":
            wait = _parse_bool("-qmp", key, val or "on")
        elif key in ("nodelay", "telnet", "ipv4", "ipv6", "reconnect"):
            continue
        else:
            raise QemuError(f"-qmp {arg}: Invalid parameter '{key}'")
    if target.startswith("unix:"):
        path = target[len("unix:"):]
        if not path:
            raise QemuError(f"-qmp {arg}: chardev: socket: no path given")
        addr = QmpAddress(kind="unix", path=path, wait=wait)
    elif target.startswith("tcp:"):
        hostport = target[len("tcp:"):]
        host, sep, port = hostport.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise QemuError(f"-qmp {arg}: address resolution failed for {hostport}: Servname not supported")
        addr = QmpAddress(kind="tcp", host=host.strip("[]") or "127.0.0.1", port=int(port), wait=wait)
    else:
        raise QemuError(f"-qmp {arg}: 'qmp' backend '{target.split(':')[0]}' is not supported by the simulator "
                        f"(use unix:PATH or tcp:HOST:PORT with server=on)")
    if not server:
        raise QemuError(f"-qmp {arg}: the simulator only supports listening monitors (add server=on,wait=off)")
    return addr


def _parse_smp(arg: str, machine: str) -> int:
    parts = split_opts(arg)
    kv: dict[str, str] = {}
    if parts and parts[0] and "=" not in parts[0]:
        kv["cpus"] = parts[0]
        parts = parts[1:]
    kv.update(_kv(parts))
    nums: dict[str, int] = {}
    for key, val in kv.items():
        if key not in ("cpus", "sockets", "dies", "clusters", "cores", "threads", "maxcpus", "books", "drawers"):
            raise QemuError(f"-smp {arg}: Invalid parameter '{key}'")
        try:
            nums[key] = int(val, 0)
        except ValueError:
            raise QemuError(f"-smp {arg}: Parameter '{key}' expects a number") from None
        if nums[key] < 0:
            raise QemuError(f"-smp {arg}: Parameter '{key}' expects a number")
    cpus = nums.get("cpus", 0)
    if not cpus:
        cpus = 1
        for key in ("sockets", "dies", "clusters", "cores", "threads"):
            cpus *= nums.get(key, 1) or 1
    if cpus > MAX_CPUS:
        raise QemuError(f"Invalid SMP CPUs {cpus}. The max CPUs supported by machine '{machine}' is {MAX_CPUS}")
    return cpus


def _accel_value(opt: str, val: str) -> str:
    for cand in val.split(":"):
        if cand in ("kvm", "tcg"):
            return cand
    raise QemuError(f"{opt}: invalid accelerator {val}")


#: QEMU options that take an argument, and those that do not (simulator subset).
_WITH_ARG = {"accel", "machine", "M", "cpu", "smp", "qmp", "display", "incoming", "name", "m", "vga", "serial",
             "host", "variant", "design"}
_NO_ARG = {"S", "nodefaults", "nographic", "no-user-config", "enable-kvm", "version", "h", "help"}


def parse_args(argv: Sequence[str]) -> SimConfig:
    """Parse the arguments after the program name.

    :raise QemuError: an unknown option, a missing argument or an invalid value, with QEMU's text.
    """
    cfg = SimConfig()
    smp_arg: str | None = None
    i = 0
    while i < len(argv):
        raw = argv[i]
        i += 1
        if not raw.startswith("-") or raw == "-":
            raise QemuError(f"{raw}: drive images are not supported by the simulator")
        name = raw[2:] if raw.startswith("--") else raw[1:]
        inline: str | None = None
        if raw.startswith("--") and "=" in name and name.split("=", 1)[0] in ("host", "variant", "design"):
            name, inline = name.split("=", 1)
        opt = f"-{name}"
        if name in _NO_ARG:
            if name == "S":
                cfg.start_paused = True
            elif name == "nodefaults":
                cfg.nodefaults = True
            elif name == "nographic":
                cfg.nographic = True
            elif name == "no-user-config":
                cfg.no_user_config = True
            elif name == "enable-kvm":
                cfg.accel = "kvm"
            elif name == "version":
                cfg.show_version = True
            else:
                cfg.show_help = True
            continue
        if name not in _WITH_ARG:
            raise QemuError(f"{raw}: invalid option")
        if inline is None:
            if i >= len(argv):
                raise QemuError(f"{raw}: requires an argument")
            val = argv[i]
            i += 1
        else:
            val = inline
        if name == "accel":
            parts = split_opts(val)
            if parts[0] == "help":
                cfg.show_help = True
                continue
            cfg.accel = _accel_value(opt, parts[0])
        elif name in ("machine", "M"):
            parts = split_opts(val)
            kv: dict[str, str] = {}
            first = parts[0]
            if first and "=" not in first:
                cfg.machine = first
                kv = _kv(parts[1:])
            else:
                kv = _kv(parts)
            if "type" in kv:
                cfg.machine = kv.pop("type")
            if not cfg.machine.startswith(_MACHINE_PREFIXES):
                raise QemuError("unsupported machine type", extra=["Use -machine help to list supported machines"])
            if "accel" in kv:
                cfg.accel = _accel_value(opt, kv["accel"])
            cfg.machine_props.update(kv)
        elif name == "cpu":
            if val == "help":
                cfg.cpu_help = True
                continue
            cfg.cpu = parse_cpu(val)
            if not cfg.cpu.model:
                raise QemuError("unable to find CPU model ''")
            cfg.cpu_given = True
        elif name == "smp":
            smp_arg = val
        elif name == "qmp":
            cfg.qmp.append(parse_qmp(val))
        elif name == "display":
            cfg.display = val
        elif name == "incoming":
            if not val:
                raise QemuError(f"{raw}: requires an argument")
            cfg.incoming = val
        elif name == "name":
            parts = split_opts(val)
            kvn = _kv(parts[1:]) if parts[0] and "=" not in parts[0] else _kv(parts)
            cfg.name = parts[0] if parts[0] and "=" not in parts[0] else kvn.get("guest")
        elif name == "m":
            cfg.memory = val
        elif name == "host":
            cfg.host = val
        elif name in ("design", "variant"):     # one option; --variant is its alias (as in qemu-evmcs)
            if val not in VARIANTS:
                raise QemuError(f"--{name} {val}: unknown KVM ABI design (known: {', '.join(VARIANTS)})")
            cfg.variant = val
        # -vga / -serial: accepted and ignored.
    if smp_arg is not None:
        cfg.smp = _parse_smp(smp_arg, cfg.machine)
    return cfg


def strip_program(argv: Sequence[str]) -> list[str]:
    """Drop a leading program name (``qemu-system-x86_64``, a path to it) from a full command line."""
    args = list(argv)
    if args and not args[0].startswith("-") and "qemu" in args[0].rsplit("/", 1)[-1]:
        return args[1:]
    return args
