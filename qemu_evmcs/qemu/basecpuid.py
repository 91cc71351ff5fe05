"""Can QEMU start a base CPU model's CPUID features on a host (``enforce=on``)?

Why: a ``-cpu Skylake-Server-v5,...,enforce=on`` answer is only an answer if every host has the model's CPUID
features: QEMU refuses to start otherwise ("Host doesn't support requested features"), e.g. on an i7-6700K
(no AVX-512). The model's features come from the bundled QEMU 7.2 snapshot; a host's from its profile's
``cpu_features`` (hosts without them cannot be checked, and answers say how many). Features KVM emulates for every
guest (``data/cpuid.yaml`` ``kvm_emulated``), ``vmx`` (the VMX MSRs' business) and the features of QEMU's other
MSR feature words (``msr_features``: IA32_ARCH_CAPABILITIES bits and the like, which no CPUID source lists) are not
asked of the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from qemu_evmcs.core.cpuid import cpuid_names
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.regexcache import regex
from qemu_evmcs.qemu.models import QemuSnapshot, load_snapshot


def model_cpuid(name: str, snap: QemuSnapshot | None = None) -> frozenset[str] | None:
    """The CPUID features QEMU model ``name`` needs from a host (``None``: not in the snapshot)."""
    snap = snap or load_snapshot()
    if not snap.has(name):
        return None
    names = cpuid_names()
    return snap.get(name).features - {"vmx"} - names.kvm_emulated - names.msr_features


@dataclass
class BaseCheck:
    """The base model's CPUID against a set of hosts.

    :ivar missing: host name -> features it lacks (only hosts that lack some).
    :ivar unchecked: hosts whose profiles have no ``cpu_features``.
    :ivar known: the model is in the QEMU snapshot (else nothing was checked).
    """

    model: str
    known: bool
    missing: dict[str, list[str]] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)
    #: How many hosts :attr:`unchecked` stands for (a fleet checks one profile per group of identical hosts).
    unchecked_hosts: int = 0

    @property
    def ok(self) -> bool:
        """No checked host lacks a feature."""
        return not self.missing

    def failure(self) -> str:
        """One sentence naming the hosts and features (empty when :attr:`ok`)."""
        parts = [f"{host} lacks {', '.join(feats)}" for host, feats in self.missing.items()]
        return (f"base model {self.model} needs CPUID features some hosts lack ({'; '.join(parts)}): QEMU with "
                f"enforce=on refuses to start there (\"Host doesn't support requested features\")") if parts else ""

    def note(self) -> str | None:
        """What could not be checked, or ``None``."""
        if not self.known:
            return f"base model {self.model} is not in the QEMU {load_snapshot().version} snapshot: CPUID not checked"
        if self.unchecked:
            return unchecked_note(self.unchecked_hosts or len(self.unchecked))
        return None


def unchecked_note(n: int) -> str:
    """``base model CPUID not checked on N hosts (...)``: the one wording, for negotiate's and baseline's notes."""
    return (f"base model CPUID not checked on {n} host{'s' if n != 1 else ''} (no cpu_features in the "
            f"profile: host probe, host import --cpuinfo or --libvirt record them)")


#: Base models that are the host by definition: nothing to check.
HOST_MODELS = ("host", "max")


def check_base(model: str, hosts: Sequence[HostProfile], snap: QemuSnapshot | None = None,
               counts: Sequence[int] | None = None) -> BaseCheck:
    """:class:`BaseCheck` of QEMU model ``model`` on ``hosts`` (``counts``: hosts each profile stands for)."""
    need = None if model in HOST_MODELS else model_cpuid(model, snap)
    res = BaseCheck(model=model, known=need is not None or model in HOST_MODELS)
    if need is None:
        return res
    for i, h in enumerate(hosts):
        if h.cpu_features is None:
            res.unchecked.append(h.name)
            res.unchecked_hosts += counts[i] if counts is not None else 1
            continue
        lack = sorted(need - h.cpu_features)
        if lack:
            res.missing[h.name] = lack
    return res


#: A versioned QEMU model name: its generation, its version.
_VERSIONED = regex(r"(?s)(.+)-v(\d+)")


def _version(name: str) -> int:
    m = _VERSIONED.fullmatch(name)
    return int(m.group(2)) if m else 0


def newest_runnable(hosts: Sequence[HostProfile], snap: QemuSnapshot | None = None) -> str | None:
    """The newest Intel QEMU model (versioned name) whose CPUID every host that records ``cpu_features`` has.

    Newest = first generation of ``data/cpuid.yaml`` ``intel_generations``, highest version within it. ``None``
    when no generation fits (or no host records features: then nothing can be told and the caller decides).
    """
    snap = snap or load_snapshot()
    known = [h for h in hosts if h.cpu_features is not None]
    if not known:
        return None
    for gen in cpuid_names().intel_generations:
        versions = sorted((n for n in snap.names() if (m := _VERSIONED.fullmatch(n)) and m.group(1) == gen),
                          key=_version, reverse=True)
        for name in versions:
            if check_base(name, known, snap).ok:
                return name
    return None


def proposal(pick: str, version: str) -> str:
    """The sentence validate and baseline print to propose ``pick`` (:func:`newest_runnable`'s answer for a
    QEMU ``version`` snapshot), in one wording."""
    return (f"newest QEMU {version} Intel model every host with cpu_features can run: {pick} "
            f"(`negotiate --model auto` pairs it with eVMCS settings)")


__all__ = ["HOST_MODELS", "BaseCheck", "check_base", "model_cpuid", "newest_runnable", "proposal", "unchecked_note"]
