"""CPUID feature names: other tools' spellings to QEMU's, and what KVM gives every guest (``data/cpuid.yaml``).

Why one module: host profiles, the /proc/cpuinfo and libvirt importers and the base-model checks must agree on
one spelling (QEMU's property names), or a host would "lack" ``sse4.1`` because it said ``sse4_1``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.registry import load_data
from qemu_evmcs.core.regexcache import regex

if TYPE_CHECKING:
    from typing import Any

#: A QEMU CPUID property name: lower case, digits, '-', '.', '_' (``sse4.1``, ``lahf-lm``, ``3dnowprefetch``).
NAME = regex(r"^[a-z0-9][a-z0-9._-]{0,40}$")

#: One raw CPUID leaf as a profile's ``cpuid:`` records it: ``LEAF[.SUBLEAF]: EAX-EBX-ECX-EDX`` in hex, the layout of
#: AIDA64's dumps ("CPUID 00000007: 00000000-F2BF27EF-40405F4E-BC000410") with the sub-leaf after a dot
#: (``0000000D.1: 0000000F-...``; none means 0). Public dumps (AIDA64, VBoxCpuReport) keep these values verbatim.
LEAF_LINE = regex(r"^([0-9A-Fa-f]{8})(?:\.([0-9A-Fa-f]{1,8}))?:\s*([0-9A-Fa-f]{8})-([0-9A-Fa-f]{8})-"
                  r"([0-9A-Fa-f]{8})-([0-9A-Fa-f]{8})$")


@dataclass(frozen=True)
class CpuidNames:
    """The tables of ``data/cpuid.yaml``."""

    linux_aliases: dict[str, str | None]
    libvirt_aliases: dict[str, str]
    kvm_emulated: frozenset[str]
    msr_features: frozenset[str]
    intel_generations: tuple[str, ...]
    long_mode_only: frozenset[str]
    #: ``(leaf, subleaf or None, register) -> QEMU name per bit``.
    leaves: dict[tuple[int, int | None, str], tuple[str | None, ...]]


@functools.lru_cache(maxsize=1)
def cpuid_names() -> CpuidNames:
    """The package's CPUID name tables (loaded once)."""
    raw: Any = load_data("cpuid.yaml")
    return CpuidNames(
        linux_aliases=dict(raw["linux_aliases"]), libvirt_aliases=dict(raw["libvirt_aliases"]),
        kvm_emulated=frozenset(raw["kvm_emulated"]), msr_features=frozenset(raw["msr_features"]),
        intel_generations=tuple(raw["intel_generations"]), long_mode_only=frozenset(raw["long_mode_only"]),
        leaves={(int(e["leaf"]), e["subleaf"], str(e["reg"])): tuple(e["bits"]) for e in raw["leaves"]},
    )


def from_linux(flags: Iterable[str]) -> set[str]:
    """QEMU names of /proc/cpuinfo ``flags`` (unknown names kept in QEMU spelling; synthetic flags dropped)."""
    aliases = cpuid_names().linux_aliases
    out: set[str] = set()
    for flag in flags:
        name = aliases[flag] if flag in aliases else flag.replace("_", "-")
        if name:
            out.add(name)
    return out


def from_cpuid(entries: Iterable[tuple[int, int, int, int, int, int]]) -> set[str]:
    """QEMU names of the bits set in CPUID ``(function, index, eax, ebx, ecx, edx)`` entries (KVM_GET_SUPPORTED_CPUID,
    a raw dump). A leaf without sub-leaves matches any index; unknown leaves and unnamed bits are ignored."""
    table = cpuid_names().leaves
    out: set[str] = set()
    for function, index, eax, ebx, ecx, edx in entries:
        regs = {"eax": eax, "ebx": ebx, "ecx": ecx, "edx": edx}
        for (leaf, subleaf, reg), bits in table.items():
            if leaf != function or (subleaf is not None and subleaf != index):
                continue
            for bit, name in enumerate(bits):
                if name and regs[reg] >> bit & 1:
                    out.add(name)
    return out


def from_raw_dump(entries: Iterable[tuple[int, int, int, int, int, int]]) -> set[str]:
    """QEMU names of a bare-metal CPUID dump (AIDA64, VBoxCpuReport) as a 64-bit host kernel reads the same CPU:
    :func:`from_cpuid`, plus ``long_mode_only`` features (``data/cpuid.yaml``) when the dump has long mode, since
    a dumping tool run as a 32-bit process does not see them. Leaves the dump lacks give no features: a feature
    of a missing leaf counts as absent (conservative: a base model needing it is not proposed)."""
    out = from_cpuid(entries)
    if "lm" in out:
        out |= cpuid_names().long_mode_only
    return out


def parse_leaf(text: str) -> tuple[int, int, int, int, int, int] | None:
    """``(function, index, eax, ebx, ecx, edx)`` of one :data:`LEAF_LINE` string, or ``None`` if it is not one."""
    m = LEAF_LINE.match(text.strip())
    if m is None:
        return None
    leaf, sub, eax, ebx, ecx, edx = m.groups()
    return (int(leaf, 16), int(sub, 16) if sub else 0, int(eax, 16), int(ebx, 16), int(ecx, 16), int(edx, 16))


def from_libvirt(name: str) -> str:
    """QEMU's name of a libvirt cpu_map feature name."""
    return cpuid_names().libvirt_aliases.get(name, name.replace("_", "-"))


__all__ = ["LEAF_LINE", "NAME", "CpuidNames", "cpuid_names", "from_cpuid", "from_libvirt", "from_linux",
           "from_raw_dump", "parse_leaf"]
