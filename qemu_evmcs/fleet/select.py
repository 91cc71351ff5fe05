"""One host selector for every command that takes hosts: sources, host names, ``--pool`` and ``--where``.

Why a module of its own: an operator imports a fleet once and then asks about one pool, or "the Intel hosts
with nested on", or the host names ``fleet query`` printed. Every host-taking command (negotiate, baseline,
admit, migrate-check, compare-designs, validate, report, guest-msrs, explain, fleet plan) selects hosts the
same way, so the rules live here once:

- **items**: profile files, directories, SQLite inventories and bundled names contribute every host they
  hold; any other word is a *host name* and is looked up in the inventories among the items (or given with
  ``--inventory``). Once a host name is given, the inventories contribute only the named hosts.
  A bundled profile's name that a given inventory holds as a host name is that host (after ``fleet import``
  of the bundled fleet the two coincide); one it does not hold is the bundled profile.
- ``--hosts-from FILE`` (``-``: standard input): more items, one per line (blank lines and ``#`` comments
  skipped), so ``fleet query ... | qemu-evmcs negotiate --hosts fleet.db --hosts-from -`` works.
- ``--pool NAME`` (repeatable): only inventory hosts of these pools (hosts from files have no pool and are
  kept: a selection composes with files and bundled names).
- ``--where EXPR`` (repeatable, all must hold): ``KEY=VALUE`` or ``KEY!=VALUE``; see :data:`WHERE_KEYS`.
  Profile predicates are evaluated once per distinct profile, never per host, so a 100,000-host inventory
  costs what its few dozen distinct profiles cost.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.hostgroup import Fleet
from qemu_evmcs.core.inputfile import is_database, read_capped
from qemu_evmcs.core.kernel import era_table
from qemu_evmcs.core.profile import HostProfile, bundled_name_hint, resolve_profile_path
from qemu_evmcs.core.registry import registry
from qemu_evmcs.core import lazy
from qemu_evmcs.core.typecheck import TYPE_CHECKING

if TYPE_CHECKING:
    import fnmatch

    from qemu_evmcs.fleet import inventory
    from qemu_evmcs.fleet import sources as host_sources
else:   # only when hosts are loaded (host_sources), and for an inventory and the feature= filters (inventory):
    # a command that takes hosts but was given none (validate) needs neither (core/lazy.py); fnmatch only
    # for a glob (it imports re: core/regexcache.py)
    inventory = lazy.proxy("qemu_evmcs.fleet.inventory")
    host_sources = lazy.proxy("qemu_evmcs.fleet.sources")
    fnmatch = lazy.proxy("fnmatch")

#: ``--where`` keys and what they match (text for ``--help`` and error messages).
WHERE_KEYS: dict[str, str] = {
    "era": "eVMCS era id, e.g. 6.1-6.2",
    "kernel": "kernel release, glob (5.10.*)",
    "vendor": "CPU vendor (GenuineIntel, AuthenticAMD)",
    "cpu": "CPU model name, case-insensitive glob (*Xeon*Gold*)",
    "nested": "kvm_intel nested on|off",
    "name": "host name, glob",
    "pool": "inventory pool",
    "feature": "VMX feature the eVMCS guest sees (any registry name)",
    "host-feature": "VMX feature KVM reports on the host (QEMU/libvirt view)",
}

#: Size cap of a ``--hosts-from`` list: 64 MiB is over a million host names.
MAX_HOSTS_FROM_BYTES = 64 * 1024 * 1024

_TRUE = {"on", "yes", "true", "1"}
_FALSE = {"off", "no", "false", "0"}


#: How each profile ``--where`` key matches a profile (the other keys, name and pool, match the host).
_PROFILE_TESTS: dict[str, Callable[[HostProfile, str], bool]] = {
    "era": lambda p, v: p.era_label == v,
    "kernel": lambda p, v: fnmatch.fnmatchcase(p.kernel, v),
    "vendor": lambda p, v: p.vendor.lower() == v.lower(),
    "cpu": lambda p, v: fnmatch.fnmatch((p.model_name or "").lower(), v.lower()),
    "nested": lambda p, v: p.nested == (v.lower() in _TRUE),
    "feature": lambda p, v: v in inventory.guest_features(p),
    "host-feature": lambda p, v: v in inventory.host_features(p),
}


@dataclass(frozen=True)
class Where:
    """One ``--where`` filter: ``key`` (one of :data:`WHERE_KEYS`) ``=``/``!=`` ``value``."""

    key: str
    value: str
    negate: bool = False

    def test_profile(self, profile: HostProfile) -> bool | None:
        """The filter's answer for a profile, or None when it depends on the host (name, pool)."""
        test = _PROFILE_TESTS.get(self.key)
        return None if test is None else test(profile, self.value) != self.negate

    def test_host(self, name: str, pool: str | None) -> bool:
        """The filter's answer for a host's name and pool (only for ``name`` and ``pool`` keys)."""
        if self.key == "name":
            hit = fnmatch.fnmatchcase(name, self.value)
        else:
            hit = pool == self.value
        return hit != self.negate


def parse_where(text: str) -> Where:
    """``KEY=VALUE`` or ``KEY!=VALUE``; values checked (era ids, feature names, nested on/off).

    :raise InputError: naming ``--where`` and what is wrong.
    """
    key, sep, value = text.partition("!=")
    negate = bool(sep)
    if not sep:
        key, sep, value = text.partition("=")
    key, value = key.strip().lower(), value.strip()
    if not sep or not key or not value:
        raise InputError(f"{text!r}: expected KEY=VALUE or KEY!=VALUE (keys: {', '.join(WHERE_KEYS)})",
                         key="--where")
    if key not in WHERE_KEYS:
        raise InputError(f"{text!r}: unknown key {key!r} (keys: {', '.join(WHERE_KEYS)})", key="--where")
    if key == "era":
        era_table().by_id(value)
    elif key in ("feature", "host-feature"):
        value = registry().feature(value).name
    elif key == "nested" and value.lower() not in _TRUE | _FALSE:
        raise InputError(f"{text!r}: nested takes on or off", key="--where")
    return Where(key, value, negate)


@dataclass
class HostSelection:
    """What a command was asked for; :meth:`load` turns it into one :class:`Fleet`."""

    items: list[str] = field(default_factory=list)
    pools: list[str] = field(default_factory=list)
    where: list[Where] = field(default_factory=list)
    inventory: str | None = None

    @property
    def filtered(self) -> bool:
        """Does anything narrow the hosts the items contribute?"""
        return bool(self.pools or self.where)

    def load(self, *, progress: bool | None = None) -> Fleet:
        """The selected hosts, grouped by profile.

        :raise InputError: an unknown host name (with the inventories searched), a source that does not
            exist, or a selection that matches no host (naming the filters).
        """
        if not self.items and not self.inventory:
            raise InputError("no hosts given (host profiles, bundled names, an inventory, or --hosts-from)")
        if self.inventory and not is_database(self.inventory):
            raise InputError("not a fleet inventory (made by `qemu-evmcs fleet import`)", file=self.inventory,
                             key="--inventory")
        sources: list[str] = []
        names: list[str] = []
        # Each item resolved and looked at once (a bundled name is a few stat calls, an inventory check an open).
        resolved = {item: resolve_profile_path(item) for item in self.items}
        present = {item: os.path.lexists(path) for item, path in resolved.items()}
        databases = {item for item, path in resolved.items() if present[item] and is_database(path)}
        inventories: list[str] = [self.inventory] if self.inventory else []
        inventories += [resolved[item] for item in self.items if item in databases]
        held: set[str] | None = None
        loaded: dict[str, Fleet] = {}     # each inventory read once, however many roles it plays

        def inventory_fleet(path: str) -> Fleet:
            if path not in loaded:
                with inventory.FleetDb(path) as db:
                    loaded[path] = db.load_fleet()
            return loaded[path]
        for item in self.items:
            path = resolved[item]
            if present[item] and path != item and inventories:
                # A bundled profile's name, with inventories given: a host of theirs by that name is meant (a
                # `fleet import` of the bundled fleet names its hosts so, and `fleet query` prints them).
                if held is None:
                    held = {h for inv in dict.fromkeys(inventories)
                            for hosts in inventory_fleet(inv).members.values() for h in hosts}
                if item in held:
                    names.append(item)
                    continue
            if present[item]:
                sources.append(item)
            else:
                names.append(item)
        if names and not inventories:
            raw = names[0]
            hint = bundled_name_hint(raw)
            raise InputError(f"no such host profile {raw!r} (neither a file nor a bundled profile name; host names "
                             "need an inventory: --inventory DB" + (f"; {hint})" if hint else ")"))
        parts: list[str | Fleet] = []
        named = set(names)
        for src in sources:
            path = resolved[src]
            if src in databases:
                parts.append(_narrow(inventory_fleet(path), named if names else None, self.pools))
            else:
                parts.append(path)
        if self.inventory and self.inventory not in sources:
            parts.append(_narrow(inventory_fleet(self.inventory), named if names else None, self.pools))
        parts = [p for p in parts if not isinstance(p, Fleet) or p.members]   # an empty pool selection
        fleet = host_sources.load_hosts_fleet(parts, progress=progress) if parts else Fleet()
        if names:
            missing = named - {h for hosts in fleet.members.values() for h in hosts}
            if missing:
                first = sorted(missing)[0]
                raise InputError(f"no host {first!r} in {', '.join(inventories)}"
                                 + (f" (and {len(missing) - 1} more names)" if len(missing) > 1 else ""))
        if self.where:
            fleet = filter_fleet(fleet, self.where)
        if not fleet.members:
            what = [f"--pool {p}" for p in self.pools] + [f"--where {w.key}{'!=' if w.negate else '='}{w.value}"
                                                          for w in self.where]
            raise InputError("no host matches " + (" ".join(what) if what else "the selection"))
        return fleet


def _narrow(fleet: Fleet, names: set[str] | None, pools: Sequence[str]) -> Fleet:
    """The hosts of an inventory's ``fleet`` that are ``names`` (None: all) in ``pools`` (empty: any)."""
    if names is None and not pools:
        return fleet
    pool_set = set(pools)

    def keep(host: str) -> bool:
        if names is not None and host not in names:
            return False
        return not pool_set or fleet.pools.get(host) in pool_set
    return _subset(fleet, lambda fp, prof: True, keep)


def filter_fleet(fleet: Fleet, where: Iterable[Where]) -> Fleet:
    """The hosts of ``fleet`` that pass every filter (profile filters once per distinct profile)."""
    conds = list(where)
    prof_conds = [w for w in conds if w.key in _PROFILE_TESTS]
    host_conds = [w for w in conds if w.key not in _PROFILE_TESTS]

    def prof_ok(fp: str, prof: HostProfile) -> bool:
        return all(w.test_profile(prof) for w in prof_conds)

    def host_ok(host: str) -> bool:
        pool = fleet.pools.get(host)
        return all(w.test_host(host, pool) for w in host_conds)
    return _subset(fleet, prof_ok, host_ok if host_conds else None)


def _subset(fleet: Fleet, prof_ok: Callable[[str, HostProfile], bool],
            host_ok: Callable[[str], bool] | None) -> Fleet:
    out = Fleet(source=fleet.source)
    for fp, hosts in fleet.members.items():
        prof = fleet.distinct[fp]
        if not prof_ok(fp, prof):
            continue
        kept = [h for h in hosts if host_ok(h)] if host_ok is not None else list(hosts)
        if kept:
            out.distinct[fp] = prof
            out.members[fp] = kept
    if fleet.pools:
        kept_names = {h for hosts in out.members.values() for h in hosts}
        out.pools = {h: p for h, p in fleet.pools.items() if h in kept_names}
    return out


def read_hosts_from(path: str) -> list[str]:
    """Items from a ``--hosts-from`` file (``-``: standard input), one per line, capped in size.

    :raise InputError: a file that is missing, not a regular file, too large or not UTF-8.
    """
    if path == "-":
        data = sys.stdin.buffer.read(MAX_HOSTS_FROM_BYTES + 1)
        where = "<stdin>"
    else:
        where = path
        data = read_capped(path, MAX_HOSTS_FROM_BYTES, what="--hosts-from lists")   # the one capped reader
    if len(data) > MAX_HOSTS_FROM_BYTES:
        raise InputError(f"more than {MAX_HOSTS_FROM_BYTES} bytes", file=where, key="--hosts-from")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 (byte {err.start})", file=where, key="--hosts-from") from None
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            out.append(s)
    return out
