"""Hosts grouped by profile: the plain data every fleet-scale computation takes, with no I/O.

Why a type of its own, in ``core``: a fleet has few distinct hosts (CPU generation x kernel era x a few knobs)
and many copies of each, so every fleet command works once per distinct profile
(:meth:`HostProfile.fingerprint`) and maps the answer back to host names. Policy code (baseline, negotiate,
admit, designs) needs that grouping but must not depend on how hosts were read (files, the fast loader,
an SQLite inventory: :mod:`qemu_evmcs.fleet`), which sits above it. So the grouping lives here and the
readers in ``fleet/`` fill it.

- :class:`HostGroup`: one distinct profile, its host names and their count.
- :class:`Fleet`: every group of a pool, in load order, plus pools and a source label for messages.
- :class:`FleetHosts`: every host of a fleet as a lazy ``Sequence[HostProfile]`` (for APIs that take hosts
  one by one; fleet-scale code iterates groups instead).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from qemu_evmcs.core.typecheck import TYPE_CHECKING, overload

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.profile import HostProfile

if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True)
class HostGroup:
    """One distinct host profile and every host that has it.

    :ivar fingerprint: :meth:`HostProfile.fingerprint` of the group.
    :ivar profile: its representative (the first host seen; other hosts differ only in name, notes, provenance
        and the kernel release past ``major.minor``).
    :ivar hosts: every host name of the group, in load order (the first is ``profile.name`` for loaded fleets).
    """

    fingerprint: str
    profile: HostProfile
    hosts: Sequence[str]

    @property
    def count(self) -> int:
        """Number of hosts in the group."""
        return len(self.hosts)


@dataclass
class Fleet:
    """Hosts grouped by profile fingerprint.

    :ivar distinct: fingerprint -> one representative :class:`HostProfile` (the first host seen).
    :ivar members: fingerprint -> every host name with that fingerprint, in load order.
    :ivar pools: host name -> pool, for hosts that have one (only from an inventory database).
    :ivar source: what was loaded (paths or the database path), for messages.
    """

    distinct: dict[str, HostProfile] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)
    pools: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def of(cls, profiles: Iterable[HostProfile], source: str = "") -> Fleet:
        """Group profile objects (each host's fingerprint computed once; names taken as they are)."""
        fleet = cls(source=source)
        for p in profiles:
            fleet.add(p)
        return fleet

    @property
    def host_count(self) -> int:
        """Number of hosts."""
        return sum(len(v) for v in self.members.values())

    def __len__(self) -> int:
        return self.host_count

    def host_groups(self) -> list[HostGroup]:
        """Every group in load order (first appearance first)."""
        return [HostGroup(fp, self.distinct[fp], names) for fp, names in self.members.items()]

    def groups(self) -> list[HostGroup]:
        """Every group, largest first (ties: by fingerprint)."""
        return sorted(self.host_groups(), key=lambda g: (-len(g.hosts), g.fingerprint))

    def host_names(self) -> Iterator[str]:
        """Every host name (grouped by fingerprint)."""
        for names in self.members.values():
            yield from names

    def fingerprint_of(self) -> dict[str, str]:
        """host name -> fingerprint (built on demand: 100k entries)."""
        return {n: fp for fp, names in self.members.items() for n in names}

    def expand(self, per_fingerprint: Mapping[str, Any]) -> dict[str, Any]:
        """Map per-fingerprint results back to every host: ``{host: result}``."""
        return {n: per_fingerprint[fp] for fp, names in self.members.items() if fp in per_fingerprint
                for n in names}

    def iter_hosts(self) -> Iterator[HostProfile]:
        """Every host as a profile: its group's representative under the host's name.

        Each item is a real :class:`HostProfile` (a copy with another ``name``; the representative itself for
        its own name), so callers may rely on every attribute. Fleet-scale code should iterate
        :meth:`host_groups` instead: this costs one copy per host and callers recompute fingerprints.
        """
        for fp, names in self.members.items():
            rep = self.distinct[fp]
            for n in names:
                yield _as_host(rep, n)

    def with_candidates(self) -> Fleet:
        """This fleet with every host whose kernel's era is ambiguous (a distribution build no source places,
        :mod:`qemu_evmcs.core.kernelid`) split into one host per candidate era, named ``"host (if era X)"``:
        a negotiation over the result holds whichever era each host is really in. ``self`` if none is."""
        if not any(rep.is_intel and rep.identity.ambiguous for rep in self.distinct.values()):
            return self
        out = Fleet(pools={}, source=self.source)
        for fp, names in self.members.items():
            rep = self.distinct[fp]
            for cand in rep.candidate_profiles():
                suffix = cand.name[len(rep.name):] if cand is not rep else ""
                for n in names:
                    out.add(cand, n + suffix)
                    if n in self.pools:
                        out.pools[n + suffix] = self.pools[n]
        return out

    def add(self, profile: HostProfile, name: str | None = None) -> str:
        """Add one host (``name`` overrides ``profile.name``); returns its fingerprint."""
        fp = profile.fingerprint()
        self.distinct.setdefault(fp, profile)
        self.members.setdefault(fp, []).append(name if name is not None else profile.name)
        return fp


def _as_host(rep: HostProfile, name: str) -> HostProfile:
    return rep if rep.name == name else dataclasses.replace(rep, name=name)


class FleetHosts(Sequence[HostProfile]):
    """Every host of a :class:`Fleet` as a read-only sequence, built on demand (no per-host copies kept).

    Items are those of :meth:`Fleet.iter_hosts`, grouped by fingerprint.
    """

    __slots__ = ("_fleet",)

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def __len__(self) -> int:
        return self._fleet.host_count

    def __iter__(self) -> Iterator[HostProfile]:
        return self._fleet.iter_hosts()

    @overload
    def __getitem__(self, index: int) -> HostProfile: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[HostProfile]: ...

    def __getitem__(self, index: int | slice) -> HostProfile | Sequence[HostProfile]:
        if isinstance(index, slice):
            return list(self)[index]
        i = index if index >= 0 else len(self) + index
        if i >= 0:
            for fp, hosts in self._fleet.members.items():
                if i < len(hosts):
                    return _as_host(self._fleet.distinct[fp], hosts[i])
                i -= len(hosts)
        raise IndexError("host index out of range")


#: What the policy layer takes as hosts: a loaded :class:`Fleet`, or loaded profiles. Never a path or a bundled
#: profile name: reading files and looking up names is the I/O layer's one loader
#: (:func:`qemu_evmcs.fleet.sources.load_hosts_fleet`, what every command uses), so this layer stays free of I/O.
Hosts = Fleet | Sequence[HostProfile]


def as_fleet(hosts: Hosts) -> Fleet:
    """``hosts`` grouped by fingerprint (a :class:`Fleet` is returned as is), in the order given.

    :raise TypeError: an item that is not a loaded :class:`HostProfile` (a path or a name: load it with
        :func:`qemu_evmcs.fleet.sources.load_hosts_fleet` first).
    :raise InputError: no host at all.
    """
    if isinstance(hosts, Fleet):
        return hosts
    bad = "a string" if isinstance(hosts, str) else next((repr(h) for h in hosts if not isinstance(h, HostProfile)), "")
    if bad:
        raise TypeError(f"not a loaded host profile: {bad} (paths and bundled names are read by "
                        "qemu_evmcs.fleet.sources.load_hosts_fleet)")
    if not hosts:
        raise InputError("no host profiles given")
    return Fleet.of(hosts, source=", ".join(h.name for h in hosts))


__all__ = ["Fleet", "FleetHosts", "HostGroup", "Hosts", "as_fleet"]
