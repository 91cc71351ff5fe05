"""Simulated live migration between two simulated QEMUs (``migrate`` / ``-incoming``).

Not QEMU's migration stream: the source sends one JSON document, the vCPU state
that matters for eVMCS, over a UNIX or loopback TCP socket, and the destination
answers with one JSON line. The state (:func:`vcpu_state`):

- ``cpu``: the requested ``-cpu`` (model, properties, ``+feat``/``-feat``), as parsed on the source;
- ``evmcs-version``: the eVMCS version range QEMU asks for (and ``evmcs-revision`` under design (a));
- ``hv-cpuid``: the guest's Hyper-V CPUID leaves (vCPU 0);
- ``guest-vmx-msrs``: the VMX MSRs the L1 guest read on the source (vCPU 0).

The destination (:func:`apply_incoming`) replays QEMU's vCPU init for that state
on *its own* simulated KVM, in QEMU's order (:func:`qemu_evmcs.qemu.startup.start`): realize the
CPU from the requested ``-cpu`` (host filtering, ``enforce``, Hyper-V checks),
enable eVMCS and check the version range (or revision), KVM_SET_CPUID2 with the
Hyper-V leaves, then KVM_SET_MSRS of the composed VMX MSRs in QEMU's order. A
refusal is printed like QEMU (the start-up error, then ``load of migration
failed``) and the destination exits 1; otherwise its vCPUs are replaced by the
migrated ones and it runs (or stays paused with ``-S``).

The verdict (:func:`verdict`) uses the classes of ``qemu-evmcs migrate-check``:
``blocked`` (the destination refused; the source keeps running), ``unsafe`` (a
guest-visible control disappeared or became required: an L2 VM-entry relying
on it fails the destination's eVMCS controls check) and ``fine``.
"""

from __future__ import annotations

import dataclasses
import json
from qemu_evmcs.core.typecheck import TYPE_CHECKING
from collections.abc import Mapping

from qemu_evmcs.core.views import diff_views
from qemu_evmcs.qemu.compose import DEFAULT_EVMCS_VERSION
from qemu_evmcs.qemu.cpuspec import PROG, CpuSpec, QemuError
from qemu_evmcs.simqemu.startup import Machine, StartupResult, boot, read_vmx_msrs

if TYPE_CHECKING:
    from typing import Any

#: Version of the JSON document the simulators exchange.
STATE_VERSION = 1
#: Hosts a ``tcp:`` migration URI may name (the simulator migrates on this machine only).
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
#: Largest state / reply document accepted (bytes).
MAX_STATE = 1 << 20
LOAD_FAILED = f"{PROG}: load of migration failed: Invalid argument"


def parse_uri(uri: str) -> tuple[str, str, int]:
    """``unix:PATH`` -> ("unix", PATH, 0); ``tcp:HOST:PORT`` -> ("tcp", HOST, PORT) (loopback only).

    :raise QemuError: another transport, a bad port, or a non-loopback host.
    """
    if uri.startswith("unix:") and len(uri) > len("unix:"):
        return "unix", uri[len("unix:"):], 0
    if uri.startswith("tcp:"):
        host, sep, port = uri[len("tcp:"):].rpartition(":")
        # At most 5 ASCII digits before int(): a 5,000-digit port raised ValueError (CPython's integer-string
        # limit) and "²" is isdigit() but not int()-able.
        if not sep or not (port.isascii() and port.isdigit() and len(port) <= 5) or not 0 < int(port) <= 65535:
            raise QemuError(f"Invalid migration URI '{uri}': expected tcp:HOST:PORT")
        if host not in LOOPBACK:
            raise QemuError(f"Migration to {host}: the simulator migrates over UNIX sockets or loopback TCP only")
        return "tcp", host.strip("[]"), int(port)
    raise QemuError(f"unknown migration protocol: {uri}")


def _hexmap(values: Mapping[str, int]) -> dict[str, str]:
    return {k: f"0x{v:016x}" for k, v in values.items()}


def _intmap(values: Mapping[str, Any]) -> dict[str, int]:
    return {str(k): int(v, 16) if isinstance(v, str) else int(v) for k, v in values.items()}


def guest_msrs(machine: Machine, index: int = 0) -> dict[str, int]:
    """The VMX MSRs the L1 guest reads on vCPU ``index`` (``{}`` without VMX)."""
    for v in machine.vcpus:
        if v.index == index and v.kvm_vcpu is not None and v.cpu.has_vmx():
            return read_vmx_msrs(v.kvm_vcpu, host_initiated=False)
    return {}


def vcpu_state(machine: Machine) -> dict[str, object]:
    """The state the source sends (see the module docstring)."""
    spec = machine.config.cpu
    v0 = machine.vcpus[0] if machine.vcpus else None
    rev = v0.cpu.evmcs_revision if v0 is not None else None
    hv = {f"{leaf:#010x}": dict(regs) for leaf, regs in sorted(v0.hv_leaves.items())} if v0 is not None else {}
    evmcs = bool(v0 is not None and v0.kvm_vcpu is not None and v0.kvm_vcpu.evmcs_enabled)
    return {
        "version": STATE_VERSION,
        "source": {"host": machine.profile.name, "kernel": machine.profile.kernel, "variant": machine.config.variant},
        "cpu": {"model": spec.model, "props": [list(p) for p in spec.props], "plus": list(spec.plus),
                "minus": list(spec.minus)},
        "evmcs": evmcs,
        "evmcs-version": DEFAULT_EVMCS_VERSION if evmcs else 0,
        "evmcs-revision": rev,
        "hv-cpuid": hv,
        "guest-vmx-msrs": _hexmap(guest_msrs(machine)),
    }


def _brief(err: BaseException, limit: int = 200) -> str:
    """An exception as one short line: the peer controls what it says."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _spec(raw: Mapping[str, Any]) -> CpuSpec:
    props = tuple((str(k), str(v)) for k, v in raw.get("props", []))
    return CpuSpec(model=str(raw["model"]), props=props, plus=tuple(map(str, raw.get("plus", []))),
                   minus=tuple(map(str, raw.get("minus", []))))


@dataclasses.dataclass
class IncomingResult:
    """What the destination did with an incoming state."""

    ok: bool
    stderr: list[str]
    result: StartupResult | None = None

    @property
    def error(self) -> str:
        """The first error line without the program prefix."""
        for line in self.stderr:
            if line.startswith(f"{PROG}: ") and ": warning: " not in line:
                return line[len(PROG) + 2:]
        return "load of migration failed"


def apply_incoming(machine: Machine, state: Mapping[str, Any]) -> IncomingResult:
    """Replay QEMU's vCPU init for ``state`` on the destination's simulated KVM (see the module docstring).

    On success the destination ``machine`` takes the migrated vCPUs (and the KVM they live on).
    """
    if state.get("version") != STATE_VERSION:
        return IncomingResult(False, [f"{PROG}: Unknown migration stream version {state.get('version')!r}",
                                      LOAD_FAILED])
    try:
        spec = _spec(state["cpu"])
        want_hv = {str(k): _intmap(v) for k, v in dict(state.get("hv-cpuid") or {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
        return IncomingResult(False, [f"{PROG}: invalid vCPU state: {_brief(err)}", LOAD_FAILED])
    config = dataclasses.replace(machine.config, cpu=spec)
    res = boot(config, machine.profile)
    errors = [ln for ln in res.stderr if ": warning: " not in ln]
    if not res.ok or res.machine is None:
        return IncomingResult(False, [*errors, LOAD_FAILED], res)
    new = res.machine
    got_hv = {f"{leaf:#010x}": dict(regs) for leaf, regs in sorted(new.vcpus[0].hv_leaves.items())} \
        if new.vcpus else {}
    if want_hv != got_hv:
        return IncomingResult(False, [f"{PROG}: Hyper-V CPUID of the incoming vCPU differs from this "
                                      f"configuration's", LOAD_FAILED], res)
    v0 = new.vcpus[0] if new.vcpus else None
    if bool(state.get("evmcs")) != bool(v0 is not None and v0.kvm_vcpu is not None and v0.kvm_vcpu.evmcs_enabled):
        return IncomingResult(False, [f"{PROG}: eVMCS state of the incoming vCPU cannot be restored", LOAD_FAILED],
                              res)
    machine.vcpus = new.vcpus
    machine.kvm = new.kvm
    machine.accel = new.accel
    machine.log = new.log
    machine.config = config
    return IncomingResult(True, [], res)


def verdict(status: str, error: str, source_msrs: Mapping[str, int], dest_msrs: Mapping[str, int],
            destination: str = "") -> dict[str, object]:
    """``x-evmcs-query-migration-verdict``: fine / blocked / unsafe, with the changed guest-visible bits."""
    out: dict[str, object] = {"status": status, "source-msrs": _hexmap(source_msrs),
                              "destination-msrs": _hexmap(dest_msrs), "lost": [], "gained": []}
    where = f" on {destination}" if destination else ""
    if status == "failed":
        out["verdict"] = "blocked"
        out["reason"] = f"destination refuses: {error}; the source keeps running"
        return out
    changes = diff_views(source_msrs, dest_msrs)
    lost = sorted({c.label() for c in changes if c.loses})
    gained = sorted({c.label() for c in changes} - set(lost))
    out["lost"], out["gained"] = lost, gained
    if lost:
        out["verdict"] = "unsafe"
        out["reason"] = (f"guest-visible VMX controls disappear{where}: {', '.join(lost)}; an L2 VM-entry using "
                         f"them fails the destination's eVMCS controls check")
    else:
        out["verdict"] = "fine"
        out["reason"] = ("guest keeps every control; gains " + ", ".join(gained)) if gained \
            else "identical guest-visible VMX MSRs"
    return out


def encode(obj: Mapping[str, object]) -> bytes:
    """One JSON line."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One JSON line -> object.

    :raise ValueError: not a JSON object.
    """
    try:
        obj = loads_strict(line)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def loads_strict(data: str | bytes) -> Any:
    """``json.loads`` of what a peer sent, refusing what is not JSON's value set: ``NaN``/``Infinity``
    (Python's parser accepts them by default) and numbers that overflow to infinity (``1e999``). Why: either
    would be echoed back (a QMP ``id``) as invalid JSON, which ``json.dumps(allow_nan=False)`` raises on.

    :raise ValueError: as :func:`json.loads`, or for those values (RecursionError for deep nesting).
    """
    return json.loads(data, parse_constant=_no_constant, parse_float=_finite_float)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a valid JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:40]} is not a valid JSON value here (out of the range of a double)")
    return value
