"""Which upstream point release a kernel build is, and so which eVMCS era: or, when no source tells, which eras
it could be.

Why: ``uname -r`` of a distribution kernel (``5.10.0-26-amd64``, ``5.4.0-131-generic``, ``5.14.0-362.el9``)
does not name the upstream point release, and the era depends on it (stable backports). This module resolves a
release string plus an optional ``kernel_version`` (the upstream point release, e.g. from ``/proc/version``)
through the sourced table ``data/distro_kernels.yaml``. It never picks an era silently: a build the table cannot
place yields every candidate era, and callers either compute against all of them or report them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from qemu_evmcs.core.typecheck import TYPE_CHECKING
from collections.abc import Mapping

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.kernel import Era, KernelVersion, era_table, parse_release
from qemu_evmcs.core.registry import load_data
from qemu_evmcs.core.regexcache import regex

if TYPE_CHECKING:
    import re
    from typing import Any

_RHEL = regex(r"^\s*(\d+)\.(\d+)\.(\d+)-(\d+)(?:\.[0-9.]+)?\.el(\d+)(?:_(\d+))?(?:[._].*)?\s*$")
_ABI = regex(r"^\s*(\d+)\.(\d+)\.0-((?:0\.deb\d+\.)?\d+)-([a-z0-9][a-z0-9-]*)\s*$")
_UPSTREAM = regex(r"^\s*v?(\d{1,3})\.(\d{1,3})(?:\.(\d{1,5}))?\s*$")


@dataclass(frozen=True)
class Candidate:
    """One era a kernel build may be in, with a representative upstream release and the releases it stands for."""

    era: Era
    version: KernelVersion   # the upstream release whose KVM code stands for this candidate (kernel facts)
    releases: str            # "5.10.71-5.10.100", "RHEL 9.2 (KVM of 6.0)", "like mainline 5.17-6.0"


@dataclass(frozen=True)
class KernelIdentity:
    """What a release string (plus ``kernel_version``) says about the kernel's KVM code."""

    text: str
    distro: str | None            # "Ubuntu", "Debian", "RHEL 9", "RHEL 8", None (upstream or custom build)
    how: str                         # how it was resolved, with the source (or why it could not be)
    candidates: tuple[Candidate, ...]

    @property
    def ambiguous(self) -> bool:
        """More than one era is possible."""
        return len(self.candidates) > 1

    @property
    def version(self) -> KernelVersion:
        """The upstream release of an unambiguous identity (of the first candidate otherwise)."""
        return self.candidates[0].version

    def era_ids(self) -> list[str]:
        """Candidate era ids, in order."""
        return [c.era.id for c in self.candidates]

    def describe(self) -> str:
        """One line: ``"5.10.0-26-amd64 (Debian ABI 26): era 5.15-5.16 (5.10.92-5.10.100) or 5.17-6.0 (...)"``."""
        alts = " or ".join(f"{c.era.id} ({c.releases})" for c in self.candidates)
        return f"kernel {self.text} ({self.how}): era {alts}"


class AmbiguousKernel(InputError):
    """A kernel build whose era no source tells, used where one era is needed (exit 2).

    Carries the candidates; the message names each and how to settle it (``kernel_version:``).
    """

    def __init__(self, ident: KernelIdentity, *, file: str | None = None, host: str | None = None) -> None:
        super().__init__(f"{ident.describe()}; the era is ambiguous: give the upstream point release as "
                         f"kernel_version: in the profile (host probe reads it from /proc/version or "
                         f"/proc/version_signature) or as --kernel X.Y.Z", file=file, key="kernel", host=host)
        self.identity = ident


@dataclass(frozen=True)
class _Table:
    """``distro_kernels.yaml`` indexed for lookups (read once per process)."""

    ubuntu_flavours: tuple[str, ...]
    debian_flavours: tuple[str, ...]
    abi: Mapping[tuple[str, str], Mapping[str, tuple[KernelVersion, str]]]   # (distro, "5.10") -> abi -> (v, src)
    rhel9: tuple[tuple[int, int, KernelVersion, str], ...]                   # (minor, ga_build, kvm, source)
    unknown: tuple[tuple[str, str, str], ...]                                # (el tag, name, why)


@functools.lru_cache(maxsize=1)
def _table() -> _Table:
    data: Mapping[str, Any] = load_data("distro_kernels.yaml")
    abi: dict[tuple[str, str], dict[str, tuple[KernelVersion, str]]] = {}
    for distro in ("ubuntu", "debian"):
        for series, entries in (data[distro].get("abi") or {}).items():
            for n, e in entries.items():
                v = parse_release(e["version"], file="distro_kernels.yaml", key=f"{distro}.abi.{series}.{n}")
                abi.setdefault((distro, str(series)), {})[str(n)] = (v, str(e["source"]))
    rhel9 = tuple((int(m["minor"]), int(m["ga_build"]),
                   parse_release(m["kvm"], file="distro_kernels.yaml", key=f"rhel9.minors[{i}]"), str(m["source"]))
                  for i, m in enumerate(data["rhel9"]["minors"]))
    unknown = tuple((str(u["pattern"]), str(u["name"]), str(u["why"])) for u in data.get("unknown") or [])
    return _Table(ubuntu_flavours=tuple(data["ubuntu"]["flavours"]), debian_flavours=tuple(data["debian"]["flavours"]),
                  abi=abi, rhel9=rhel9, unknown=unknown)


def parse_upstream(text: object, *, file: str | None = None, key: str = "kernel_version") -> KernelVersion:
    """A plain upstream release ``X.Y[.Z]`` (no distribution suffix): what ``kernel_version`` holds."""
    s = str(getattr(text, "raw", text)) if isinstance(text, (str, float, int)) and not isinstance(text, bool) else ""
    m = _UPSTREAM.match(s)
    if not m:
        raise InputError(f"kernel_version must be an upstream release such as \"5.10.197\", got {text!r}",
                         file=file, key=key)
    return KernelVersion(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def identify(kernel: str, kernel_version: str | None = None, *, file: str | None = None,
             key: str = "kernel") -> KernelIdentity:
    """Resolve a release string (and optional upstream ``kernel_version``) to its era or candidate eras.

    :raise InputError: unparsable strings, or a ``kernel_version`` that contradicts the string or the table.
    """
    try:
        return _identify(str(kernel), None if kernel_version is None else str(kernel_version))
    except InputError as err:
        err.file = err.file if err.file not in (None, "distro_kernels.yaml") else file
        if err.key is None or err.key == "kernel":
            err.key = key
        raise


@functools.lru_cache(maxsize=4096)
def _identify(kernel: str, kernel_version: str | None) -> KernelIdentity:
    base = parse_release(kernel, key="kernel")
    rhel = _RHEL.match(kernel)
    abi = _ABI.match(kernel) if rhel is None else None
    distro, abi_no, series = None, None, f"{base.major}.{base.minor}"
    # The distribution table (distro_kernels.yaml, read once) is asked only for a distribution's release
    # string: an upstream one (most profiles) does not read it.
    if abi is not None:
        t = _table()
        flavour = abi.group(4)
        distro = ("Debian" if flavour in t.debian_flavours else "Ubuntu" if flavour in t.ubuntu_flavours else None)
        abi_no = abi.group(3)
    if kernel_version is not None:
        v = parse_upstream(kernel_version)
        if rhel is None and v.mm != base.mm:
            raise InputError(f"kernel_version {v} is not of the {series} series of kernel {kernel}",
                             key="kernel_version")
        if distro is not None and abi_no is not None:
            known = _table().abi.get((distro.lower(), series), {}).get(abi_no)
            if known is not None and known[0] != v:
                raise InputError(f"kernel_version {v} contradicts {distro} ABI {abi_no} = {known[0]} ({known[1]})",
                                 key="kernel_version")
        what = f"{distro + ' ' if distro else ''}build of upstream {v} (kernel_version)"
        return KernelIdentity(kernel, distro or ("RHEL " + rhel.group(5) if rhel else None), what,
                              (Candidate(era_table().era_of(v), v, str(v)),))
    if rhel is not None:
        return _rhel(kernel, rhel, _table())
    if abi is not None:
        if distro is None:
            return KernelIdentity(kernel, None, f"unrecognised distribution build (ABI {abi_no}, flavour "
                                  f"{abi.group(4)}): its upstream point release is unknown",
                                  tuple(series_candidates(base, 0, None)))
        return _abi(kernel, distro, series, abi_no or "", base, _table())
    how = "upstream release" if base.patch == 0 or kernel.strip().lstrip("v") == str(base) else \
        f"upstream {base} (the release string's third number, taken as the point release)"
    return KernelIdentity(kernel, None, how, (Candidate(era_table().era_of(base), base, str(base)),))


def _abi(kernel: str, distro: str, series: str, abi_no: str, base: KernelVersion, t: _Table) -> KernelIdentity:
    entries = t.abi.get((distro.lower(), series), {})
    hit = entries.get(abi_no)
    if hit is not None:
        return KernelIdentity(kernel, distro, f"{distro} ABI {abi_no} = {hit[0]} ({hit[1]})",
                              (Candidate(era_table().era_of(hit[0]), hit[0], str(hit[0])),))
    lo, hi, why = 0, None, []
    if abi_no.isdigit():
        n = int(abi_no)
        below = [(int(k), v) for k, v in entries.items() if k.isdigit() and int(k) < n]
        above = [(int(k), v) for k, v in entries.items() if k.isdigit() and int(k) > n]
        if below:
            k, (v, _) = max(below)
            lo = v.patch
            why.append(f">= {v} (ABI {k})")
        if above:
            k, (v, _) = min(above)
            hi = v.patch
            why.append(f"<= {v} (ABI {k})")
    bound = f"; bounded {' and '.join(why)} [inferred: ABI numbers grow with updates]" if why else ""
    cands = tuple(series_candidates(base, lo, hi))
    how = f"{distro} ABI {abi_no}: upstream point release not in the table{bound}"
    return KernelIdentity(kernel, distro, how, cands)


def _rhel(kernel: str, m: re.Match[str], t: _Table) -> KernelIdentity:
    major = m.group(5)
    if major != "9":
        name, why = next(((n, w) for p, n, w in t.unknown if p == f"el{major}"),
                         (f"RHEL {major}", f"no source tells the eVMCS behaviour of el{major} kernels"))
        return KernelIdentity(kernel, name, why, tuple(all_candidates()))
    build, tag = int(m.group(4)), m.group(6)
    minors = sorted(t.rhel9, key=lambda r: r[1])
    if tag is not None:
        row = next((r for r in minors if r[0] == int(tag)), None)
        if row is not None:
            return KernelIdentity(kernel, "RHEL 9", f"RHEL 9.{tag} (dist tag el9_{tag}): {row[3]}",
                                  (_rhel_candidate(row),))
    exact = next((r for r in minors if r[1] == build), None)
    if exact is not None:
        return KernelIdentity(kernel, "RHEL 9", f"RHEL 9.{exact[0]} GA build {build} [M: GA build numbers from "
                              f"memory]: {exact[3]}", (_rhel_candidate(exact),))
    older = [r for r in minors if r[1] < build]
    newer = [r for r in minors if r[1] > build]
    rows = ([older[-1]] if older else []) + ([newer[0]] if newer else [])
    cands = _dedupe([_rhel_candidate(r) for r in rows])
    between = " and ".join(f"9.{r[0]} (build {r[1]})" for r in rows)
    how = (f"RHEL 9 build {build} lies between {between} [M: GA build numbers from memory]; the KVM rebase of a "
           f"minor lands somewhere in between" if len(rows) > 1 else
           f"RHEL 9 build {build}, after 9.{rows[0][0]}'s GA build {rows[0][1]} [M]" if older else
           f"RHEL 9 build {build}, before 9.{rows[0][0]}'s GA build {rows[0][1]} [M]")
    return KernelIdentity(kernel, "RHEL 9", how, tuple(cands))


def _rhel_candidate(row: tuple[int, int, KernelVersion, str]) -> Candidate:
    return Candidate(era_table().era_of(row[2]), row[2], f"RHEL 9.{row[0]}, KVM of {row[2]}")


def _dedupe(cands: list[Candidate]) -> list[Candidate]:
    out: list[Candidate] = []
    for c in cands:
        if all(o.era.id != c.era.id for o in out):
            out.append(c)
    return out


def series_candidates(base: KernelVersion, lo: int, hi: int | None) -> list[Candidate]:
    """The distinct eras of point releases ``lo``..``hi`` (``None``: no upper bound) of ``base``'s series."""
    table = era_table()
    cuts = sorted({lo} | {first.patch for bp in table.backports for _, first in bp.stable
                          if first.mm == base.mm and first.patch > lo and (hi is None or first.patch <= hi)})
    spans: list[tuple[Era, int, int | None]] = []
    for i, start in enumerate(cuts):
        end = cuts[i + 1] - 1 if i + 1 < len(cuts) else hi
        era = table.era_of(KernelVersion(base.major, base.minor, start))
        if spans and spans[-1][0].id == era.id:
            spans[-1] = (era, spans[-1][1], end)
        else:
            spans.append((era, start, end))
    return [Candidate(era, KernelVersion(base.major, base.minor, a), _range(base, a, b)) for era, a, b in spans]


def _range(base: KernelVersion, start: int, end: int | None) -> str:
    s = f"{base.major}.{base.minor}.{start}"
    if end is None:
        return s + "+"
    return s if end == start else f"{s}-{base.major}.{base.minor}.{end}"


def all_candidates() -> list[Candidate]:
    """Every known era with eVMCS, each with a representative release (a build no source places)."""
    table = era_table()
    reps: dict[str, KernelVersion] = {e.id: e.first for e in table.eras}
    for bp in table.backports:
        for _, first in bp.stable:
            reps.setdefault(table.era_of(first).id, first)
    return [Candidate(e, reps[e.id], f"as {reps[e.id]}") for e in table.known_eras() if e.evmcs_cap]
