"""Kernel releases and the eVMCS era each one belongs to.

Why: the eVMCS filter changed five times between 4.20 and 6.3 (see
``data/eras.yaml``). Users write releases in many forms ("5.15",
"6.1.55", "6.8.0-45-generic", "5.14.0-362.el9.x86_64", "5.15-rc1", "5.15rc1"); only the
major.minor decides the era, so everything after it is ignored, and a string
that has no major.minor is an error.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.registry import Registry, load_data, registry


#: major.minor[.patch], an optional release-candidate tag (``-rc1`` or, as some tools write it, ``rc1``:
#: a 5.15 release candidate already has 5.15's merge-window changes, so it maps to 5.15's era), then any
#: distribution suffix after a separator (``-45-generic``, ``.el9.x86_64``, ``+``).
_RELEASE = re.compile(r"^\s*v?(\d{1,3})\.(\d{1,3})(?:\.(\d{1,5}))?(?:-?[rR][cC]\d{1,3})?"
                      r"(?:[-+~_.][0-9A-Za-z._+~-]*)?\s*$")


@dataclass(frozen=True, order=True)
class KernelVersion:
    """major.minor(.patch) of a Linux release."""

    major: int
    minor: int
    patch: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}" + (f".{self.patch}" if self.patch else "")

    @property
    def mm(self) -> Tuple[int, int]:
        """(major, minor): what decides the era."""
        return (self.major, self.minor)


def parse_release(text: object, *, file: Optional[str] = None, key: Optional[str] = "kernel") -> KernelVersion:
    """Parse a kernel release string; :class:`InputError` for anything without major.minor."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise InputError(f"kernel release must be a string such as \"6.1.55\", got {type(text).__name__}",
                         file=file, key=key)
    s = str(getattr(text, "raw", text))  # a YAML float keeps its text: 5.10 is not 5.1
    m = _RELEASE.match(s)
    if not m:
        raise InputError(f"unparsable kernel release {s!r} (expected e.g. \"5.15\", \"6.1.55\", "
                         f"\"6.8.0-45-generic\")", file=file, key=key)
    return KernelVersion(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


@dataclass(frozen=True)
class Rule:
    """One filter rule of an era: which MSRs, and the deny/allow/perf-gated masks per word."""

    msrs: Tuple[str, ...]
    word: str
    deny: int          # bits removed
    allow: Optional[int]  # if not None: only these bits (with the word's always_on bits) survive
    perf_gated: int    # removed unless guest CPUID 0x4000000A.EBX bit 0 is set


@dataclass(frozen=True)
class Era:
    """A range of kernel releases with one eVMCS behaviour."""

    id: str
    first: KernelVersion
    last: Optional[KernelVersion]
    evmcs_cap: bool
    filter_at: str        # "enable" | "read" | "none"
    active_needs_hyperv: bool
    rules: Tuple[Rule, ...]
    unverified: Optional[str]

    def contains(self, v: KernelVersion) -> bool:
        """Is ``v`` (by major.minor) in this era?"""
        if v.mm < self.first.mm:
            return False
        return self.last is None or v.mm <= self.last.mm

    def rules_for(self, msr: str) -> List[Rule]:
        """Rules that touch an MSR (usually zero or one)."""
        return [r for r in self.rules if msr in r.msrs]


@dataclass(frozen=True)
class KernelFacts:
    """Release boundaries of eVMCS-related facts outside the filter."""

    evmcs_version_range: int
    nested_off_hook_last: KernelVersion
    nested_off_reports_cap_since: KernelVersion
    set_msr_checks_kvm_wide_since: KernelVersion
    kvm_hyperv_config_since: KernelVersion
    hv_cpuid_vcpu_ioctl_since: KernelVersion
    hv_cpuid_system_ioctl_since: KernelVersion
    nested_msr_bitmap_since: KernelVersion
    direct_flush_since: KernelVersion
    perf_global_ctrl_cpuid_since: KernelVersion
    variant_vmcs2_since: KernelVersion
    variant_get_evmcs_vmx_msrs_since: KernelVersion


@dataclass(frozen=True)
class EraTable:
    """All eras plus kernel facts, from ``data/eras.yaml``."""

    eras: Tuple[Era, ...]
    facts: KernelFacts
    revision2_exposes: Tuple[str, ...]

    def era_of(self, v: KernelVersion) -> Era:
        """The era a release belongs to."""
        for era in self.eras:
            if era.contains(v):
                return era
        raise InputError(f"no eVMCS era covers kernel {v}")  # pragma: no cover - table covers 0.0+

    def by_id(self, era_id: str) -> Era:
        """An era by id (e.g. ``"6.3+"``)."""
        for era in self.eras:
            if era.id == era_id:
                return era
        raise InputError(f"unknown era {era_id!r}; known: {', '.join(e.id for e in self.eras)}")


def _parse_rule(raw: Mapping[str, Any], reg: Registry, where: str) -> Rule:
    msrs = tuple(raw["msrs"])
    words = {reg.msr(m).word for m in msrs}
    if len(words) != 1 or None in words:
        raise InputError("a rule's MSRs must share one feature word", file="eras.yaml", key=where)
    word = words.pop()
    assert word is not None
    allow = raw.get("allow")
    allow_mask = None
    if allow is not None:
        allow_mask = reg.word_mask(list(allow), word) | reg.words[word].always_on
    return Rule(
        msrs=msrs,
        word=word,
        deny=reg.word_mask(list(raw.get("deny") or []), word),
        allow=allow_mask,
        perf_gated=reg.word_mask(list(raw.get("perf_gated") or []), word),
    )


def parse_eras(data: Mapping[str, Any], reg: Registry) -> EraTable:
    """Build the :class:`EraTable` from the YAML mapping."""
    eras = []
    for i, e in enumerate(data["eras"]):
        where = f"eras[{i}]"
        eras.append(Era(
            id=str(e["id"]),
            first=parse_release(e["first"], file="eras.yaml", key=where + ".first"),
            last=None if e.get("last") is None else parse_release(e["last"], file="eras.yaml", key=where),
            evmcs_cap=bool(e["evmcs_cap"]),
            filter_at=str(e.get("filter_at", "none")),
            active_needs_hyperv=bool(e.get("active_needs_hyperv", False)),
            rules=tuple(_parse_rule(r, reg, f"{where}.rules[{j}]") for j, r in enumerate(e.get("rules") or [])),
            unverified=e.get("unverified"),
        ))
    f: Dict[str, Any] = dict(data["kernel_facts"])
    facts = KernelFacts(
        evmcs_version_range=int(f.pop("evmcs_version_range")),
        **{k: parse_release(v, file="eras.yaml", key=k) for k, v in f.items()},
    )
    for name in data["revision2_exposes"]:
        reg.feature(name)
    return EraTable(eras=tuple(eras), facts=facts, revision2_exposes=tuple(data["revision2_exposes"]))


@functools.lru_cache(maxsize=1)
def era_table() -> EraTable:
    """The package era table (loaded once)."""
    return parse_eras(load_data("eras.yaml"), registry())


def era_of(release: str | KernelVersion) -> Era:
    """Convenience: the era of a release string or version."""
    v = release if isinstance(release, KernelVersion) else parse_release(release)
    return era_table().era_of(v)
