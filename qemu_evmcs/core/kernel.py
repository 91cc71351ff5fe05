"""Kernel releases and the eVMCS era each one belongs to.

Why: the eVMCS filter changed five times between 4.20 and 6.3 (see
``data/eras.yaml``), and stable series received some of those changes as
backports (5.10.71, 5.10.101, 5.15.24, 5.16.10, 5.4.180: kvm-evmcs.md §10.3).
So the kernel's identity is its point release: the era of ``5.10.80`` is the
5.10 series' mainline era plus the backports 5.10.80 has reached. Users write
releases in many forms ("5.15", "6.1.55", "5.15-rc1", "5.15rc1"); a string
that has no major.minor is an error.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from qemu_evmcs.core.typecheck import TYPE_CHECKING
from collections.abc import Mapping, Sequence

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.registry import Registry, load_data, registry
from qemu_evmcs.core.regexcache import regex

if TYPE_CHECKING:
    from typing import Any


#: major.minor[.patch], an optional release-candidate tag (``-rc1`` or, as some tools write it, ``rc1``:
#: a 5.15 release candidate already has 5.15's merge-window changes, so it maps to 5.15's era), then any
#: distribution suffix after a separator (``-45-generic``, ``.el9.x86_64``, ``+``).
_RELEASE = regex(r"^\s*v?(\d{1,3})\.(\d{1,3})(?:\.(\d{1,5}))?(?:-?[rR][cC]\d{1,3})?"
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
    def mm(self) -> tuple[int, int]:
        """(major, minor): what decides the era."""
        return (self.major, self.minor)


def parse_release(text: object, *, file: str | None = None, key: str | None = "kernel") -> KernelVersion:
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

    msrs: tuple[str, ...]
    word: str
    deny: int          # bits removed
    allow: int | None  # if not None: only these bits (with the word's always_on bits) survive
    perf_gated: int    # removed unless guest CPUID 0x4000000A.EBX bit 0 is set


@dataclass(frozen=True)
class Backport:
    """One upstream eVMCS change and the stable point releases that carry it (``eras.yaml`` ``backports``)."""

    commit: str
    title: str
    mainline: KernelVersion
    stable: tuple[tuple[str, KernelVersion], ...]   # ("5.10", 5.10.71): first point release of that series
    not_in: tuple[str, ...]
    unchecked: tuple[str, ...]
    evidence: str
    inferred: tuple[tuple[str, str], ...]          # ("5.15", why that series' entry is only inferred)
    effect: tuple[Rule, ...]

    def inferred_for(self, series: tuple[int, int]) -> str | None:
        """Why this change's status in stable ``series`` is inferred rather than verified, if it is."""
        return dict(self.inferred).get(f"{series[0]}.{series[1]}")

    def first_in(self, series: tuple[int, int]) -> KernelVersion | None:
        """The first point release of stable ``series`` that has this change, if any does."""
        return next((v for s, v in self.stable if v.mm == series), None)


@dataclass(frozen=True)
class AppliedBackport:
    """A backport a point release has: the change and the point release of its series that brought it."""

    backport: Backport
    since: KernelVersion

    def describe(self) -> str:
        """``"since 5.10.71, backport of 8d68bad6d869"``."""
        return f"since {self.since}, backport of {self.backport.commit}"


@dataclass(frozen=True)
class Era:
    """One eVMCS behaviour: a mainline range of releases, or a stable series' mainline era plus backports.

    A stable point release whose backports make it behave exactly like a later mainline era carries that era's
    id and rules (5.10.71-5.10.100 are ``5.15-5.16``); ``backports`` then says which changes brought it there
    and ``base`` names the series' own mainline era.
    """

    id: str
    first: KernelVersion
    last: KernelVersion | None
    evmcs_cap: bool
    filter_at: str        # "enable" | "read" | "none"
    active_needs_hyperv: bool
    rules: tuple[Rule, ...]
    unverified: str | None
    base: str | None = None
    backports: tuple[AppliedBackport, ...] = ()

    def contains(self, v: KernelVersion) -> bool:
        """Is ``v`` (by major.minor) in this era?"""
        if v.mm < self.first.mm:
            return False
        return self.last is None or v.mm <= self.last.mm

    def rules_for(self, msr: str) -> list[Rule]:
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

    eras: tuple[Era, ...]
    facts: KernelFacts
    revision2_exposes: tuple[str, ...]

    backports: tuple[Backport, ...] = ()
    _memo: dict[tuple[tuple[int, int], bool, tuple[str, ...]], Era] = field(
        default_factory=dict, compare=False, hash=False, repr=False)
    #: :meth:`known_eras`, worked out once (validate asks for it about 200 times per run: 1,500 era_of calls).
    _known: list[tuple[Era, ...]] = field(default_factory=list, init=False, compare=False, hash=False, repr=False)

    def mainline_era_of(self, v: KernelVersion) -> Era:
        """The mainline era of ``v``'s major.minor (no stable backports)."""
        for era in self.eras:
            if era.contains(v):
                return era
        raise InputError(f"no eVMCS era covers kernel {v}")  # pragma: no cover - table covers 0.0+

    def applied_backports(self, v: KernelVersion) -> tuple[AppliedBackport, ...]:
        """The backports point release ``v`` has (changes newer than its series that its series got by ``v``)."""
        out = []
        for bp in self.backports:
            if bp.mainline.mm <= v.mm:
                continue
            first = bp.first_in(v.mm)
            if first is not None and v >= first:
                out.append(AppliedBackport(bp, first))
        return tuple(out)

    def era_of(self, v: KernelVersion) -> Era:
        """The era of a point release: its series' mainline era plus the backports it has reached."""
        applied = self.applied_backports(v)
        key = (v.mm, v.patch > 0, tuple(a.backport.commit + str(a.since) for a in applied))
        era = self._memo.get(key)
        if era is None:
            era = self._memo[key] = self._era_of(v.mm, v.patch > 0, applied)
        return era

    def _era_of(self, mm: tuple[int, int], stable: bool, applied: tuple[AppliedBackport, ...]) -> Era:
        base = self.mainline_era_of(KernelVersion(*mm))
        series = f"{mm[0]}.{mm[1]}"
        unchecked = [bp for bp in self.backports if stable and bp.mainline.mm > mm and series in bp.unchecked]
        caveats = [base.unverified] if base.unverified else []
        caveats += [f"stable series {mm[0]}.{mm[1]}.y was not checked for {bp.commit} ({bp.mainline})"
                    for bp in unchecked]
        caveats += [f"{bp.commit}: {bp.inferred_for(mm)}" for bp in self.backports
                    if stable and bp.mainline.mm > mm and bp.inferred_for(mm)]
        if not applied:
            if len(caveats) == (1 if base.unverified else 0):
                return base
            return replace(base, unverified="; ".join(caveats))
        rules = merge_rules(base.rules, [r for a in applied for r in a.backport.effect])
        twin = next((e for e in self.eras if e.filter_at == base.filter_at and e.evmcs_cap == base.evmcs_cap
                     and e.active_needs_hyperv == base.active_needs_hyperv
                     and rules_by_msr(e.rules) == rules_by_msr(rules)), None)
        era_id = twin.id if twin is not None else "+".join([base.id] + [a.backport.commit for a in applied])
        return replace(base, id=era_id, rules=twin.rules if twin is not None else rules,
                       unverified="; ".join(caveats) or None, base=base.id, backports=applied)

    def deciding_backport(self, era: Era, msr: str, mask: int) -> AppliedBackport | None:
        """The backport that makes ``era`` remove word bits ``mask`` from ``msr`` where its series' mainline
        era keeps them (``None`` if the mainline era already removes them or nothing removes them)."""
        if not era.backports or era.base is None:
            return None
        deny, allow, _ = rules_by_msr(self.by_id(era.base).rules).get(msr, (0, None, 0))
        if deny & mask or (allow is not None and not allow & mask):
            return None
        return next((a for a in era.backports if any(msr in r.msrs and r.deny & mask for r in a.backport.effect)),
                    None)

    def backport(self, commit: str) -> Backport:
        """A backport by (abbreviated) commit id."""
        for bp in self.backports:
            if bp.commit.startswith(commit) or commit.startswith(bp.commit):
                return bp
        raise InputError(f"unknown backport {commit!r}")

    def by_id(self, era_id: str) -> Era:
        """An era by id (e.g. ``"6.3+"``, or a stable series' own era such as ``"4.20-5.5+7a601e2cf615"``)."""
        for era in self.known_eras():
            if era.id == era_id:
                return era
        raise InputError(f"unknown era {era_id!r}; known: {', '.join(e.id for e in self.known_eras())}")

    def known_eras(self) -> tuple[Era, ...]:
        """The mainline eras, then every era only a stable series has (mainline era + backports)."""
        if self._known:
            return self._known[0]
        out = list(self.eras)
        for bp in self.backports:
            for _, first in bp.stable:
                era = self.era_of(first)
                if all(e.id != era.id for e in out):
                    out.append(era)
        self._known.append(tuple(out))
        return self._known[0]


def rules_by_msr(rules: Sequence[Rule]) -> dict[str, tuple[int, int | None, int]]:
    """Each MSR's effective (deny, allow, perf_gated): what two rule lists must agree on to be the same filter."""
    out: dict[str, tuple[int, int | None, int]] = {}
    for r in rules:
        for m in r.msrs:
            deny, allow, perf = out.get(m, (0, None, 0))
            both = allow if r.allow is None else (r.allow if allow is None else allow & r.allow)
            out[m] = (deny | r.deny, both, perf | r.perf_gated)
    return out


def merge_rules(base: Sequence[Rule], extra: Sequence[Rule]) -> tuple[Rule, ...]:
    """``base`` with ``extra`` applied (deny bits unioned per MSR), regrouped so MSRs that end up with the same
    masks share one rule again (the order of first appearance is kept)."""
    per = rules_by_msr(list(base) + list(extra))
    words = {m: r.word for r in list(base) + list(extra) for m in r.msrs}
    groups: dict[tuple[str, int, int | None, int], list[str]] = {}
    for m, (deny, allow, perf) in per.items():
        groups.setdefault((words[m], deny, allow, perf), []).append(m)
    return tuple(Rule(msrs=tuple(ms), word=w, deny=d, allow=a, perf_gated=p) for (w, d, a, p), ms in groups.items())


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
    f: dict[str, Any] = dict(data["kernel_facts"])
    facts = KernelFacts(
        evmcs_version_range=int(f.pop("evmcs_version_range")),
        **{k: parse_release(v, file="eras.yaml", key=k) for k, v in f.items()},
    )
    for name in data["revision2_exposes"]:
        reg.feature(name)
    backports = tuple(_parse_backport(b, reg, f"backports[{i}]") for i, b in enumerate(data.get("backports") or []))
    return EraTable(eras=tuple(eras), facts=facts, revision2_exposes=tuple(data["revision2_exposes"]),
                    backports=backports)


def _parse_backport(raw: Mapping[str, Any], reg: Registry, where: str) -> Backport:
    mainline = parse_release(raw["mainline"], file="eras.yaml", key=where + ".mainline")
    stable = []
    for series, first in (raw.get("stable") or {}).items():
        v = parse_release(first, file="eras.yaml", key=f"{where}.stable.{series}")
        if f"{v.major}.{v.minor}" != str(series) or v.mm >= mainline.mm:
            raise InputError(f"{first} is not a stable point release of series {series} older than {mainline}",
                             file="eras.yaml", key=f"{where}.stable.{series}")
        stable.append((str(series), v))
    return Backport(
        commit=str(raw["commit"]), title=str(raw["title"]), mainline=mainline, stable=tuple(stable),
        not_in=tuple(str(x) for x in raw.get("not_in") or ()),
        unchecked=tuple(str(x) for x in raw.get("unchecked") or ()),
        evidence=str(raw["evidence"]),
        inferred=tuple((str(k), str(v)) for k, v in (raw.get("inferred") or {}).items()),
        effect=tuple(_parse_rule(r, reg, f"{where}.effect[{j}]") for j, r in enumerate(raw.get("effect") or [])),
    )


@functools.lru_cache(maxsize=1)
def era_table() -> EraTable:
    """The package era table (loaded once)."""
    return parse_eras(load_data("eras.yaml"), registry())


def era_of(release: str | KernelVersion) -> Era:
    """Convenience: the era of an upstream release (string or version).

    Distribution builds (``5.10.0-26-amd64``) do not name their upstream point release: resolve those with
    :func:`qemu_evmcs.core.kernelid.identify`, which knows the distribution table and reports ambiguity.
    """
    v = release if isinstance(release, KernelVersion) else parse_release(release)
    return era_table().era_of(v)
