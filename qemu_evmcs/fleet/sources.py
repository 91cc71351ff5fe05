"""Hosts from where commands take them: profile files, directories, SQLite inventories, bundled names, objects.

Why a module of its own: this is the one place that knows every kind of host source and dispatches to the
fast loader (:mod:`~qemu_evmcs.fleet.loader`, on several cores: :mod:`~qemu_evmcs.fleet.parallel`) or the
inventory (:mod:`~qemu_evmcs.fleet.inventory`); everything returns one grouped
:class:`~qemu_evmcs.core.hostgroup.Fleet`.

Public API (for the fleet commands)::

    fleet = load_fleet(["fleet-dir/"])          # or "fleet.yaml", or "inventory.db"
    for group in fleet.host_groups():            # once per distinct profile
        answer = compute(group.profile)          # ... for every host in group.hosts
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.hostgroup import Fleet
from qemu_evmcs.core.profile import HostProfile, bundled_name_hint, resolve_profile_path
from qemu_evmcs.core.inputfile import is_database
from qemu_evmcs.core.profilewalk import profile_files, subdir_hint
from qemu_evmcs.fleet.loader import FleetLoader
from qemu_evmcs.fleet.parallel import Unit, can_fork, default_workers, load_parallel, run_units, split_units
from qemu_evmcs.output.progress import Progress
from qemu_evmcs.core import lazy

if TYPE_CHECKING:
    from qemu_evmcs.fleet import inventory

    PathLike = str | os.PathLike[str]
    #: One item of what commands take as hosts (see :func:`load_hosts_fleet`).
    HostSource = str | os.PathLike[str] | HostProfile | Fleet
else:   # only when a source is an inventory (is_database): profile files and names never need it (core/lazy.py)
    inventory = lazy.proxy("qemu_evmcs.fleet.inventory")


def load_fleet(source: PathLike | Sequence[PathLike], *, progress: bool | None = None,
               workers: int | None = None) -> Fleet:
    """Load a fleet from profile files/directories or from an inventory database.

    :param source: a path or a list of paths: YAML files (multi-document allowed), directories of
        ``*.yaml``, or ONE SQLite inventory written by ``qemu-evmcs fleet import``.
    :param progress: draw a progress bar on stderr; default: when stderr is a terminal.
    :param workers: loading processes; default ``QEMU_EVMCS_LOAD_WORKERS`` or the usable CPUs (at most 4).
        Large inputs (from 16 MiB of YAML or 4,000 files) are split on document boundaries, each part
        loaded by a forked process; the result is identical to a one-process load.
    :raise InputError: bad input, naming the file, key and line.
    """
    paths = [os.fspath(source)] if isinstance(source, (str, os.PathLike)) else [os.fspath(p) for p in source]
    if not paths:
        raise InputError("no host profiles given")
    if len(paths) == 1 and is_database(paths[0]):
        with inventory.FleetDb(paths[0]) as db:
            return db.load_fleet()
    for p in paths:
        if not os.path.exists(p):
            raise InputError("no such file or directory", file=p)
    nworkers = workers if workers is not None else default_workers()
    with_dirs = any(os.path.isdir(p) for p in paths)
    loader = FleetLoader()
    loader.collect = False
    loader.fleet.source = ", ".join(paths)
    if with_dirs:
        # Progress in files (a directory's listing is its unit of work).
        units: list[Unit] = []
        for p in paths:
            units += [(f, 0, None) for f in profile_files(p)] if os.path.isdir(p) else [(p, 0, None)]
        with Progress(len(units), "loading host files", enabled=progress) as bar:
            parts = split_units(units, nworkers) if nworkers > 1 and can_fork() else [units]
            if len(parts) > 1:
                bar.scale = len(units) / max(1, len(parts[0]))
                load_parallel(loader, parts, bar)
            else:
                run_units(loader, units, bar)
    else:
        units = [(p, 0, None) for p in paths]
        total = _total_bytes(paths)
        with Progress(total, "loading hosts", unit="B", enabled=progress) as bar:
            parts = split_units(units, nworkers) if nworkers > 1 and can_fork() else [units]
            loader.progress = bar
            if len(parts) > 1:
                first = sum((end if end is not None else os.path.getsize(path)) - start
                            for path, start, end in parts[0])
                bar.scale = total / max(1, first)
                load_parallel(loader, parts, None)
            else:
                run_units(loader, units, None)
    if not loader.fleet.members:
        raise InputError("no host profiles found" + subdir_hint(paths), file=paths[0])
    return loader.fleet


def _total_bytes(paths: Sequence[str]) -> int:
    total = 0
    for p in paths:
        try:
            if os.path.isfile(p):
                total += os.path.getsize(p)
        except OSError:
            pass
    return total


def _merge(into: Fleet, other: Fleet, names: dict[str, str], source: str) -> None:
    """Add ``other``'s hosts to ``into``; a host name already loaded from another source is an error."""
    for fp, hosts in other.members.items():
        for n in hosts:
            if n in names:
                raise InputError(f"duplicate host name {n!r} (also in {names[n]})", file=source, key="name")
            names[n] = source
        into.distinct.setdefault(fp, other.distinct[fp])
        into.members.setdefault(fp, []).extend(hosts)
    into.pools.update(other.pools)


def load_hosts_fleet(items: Fleet | Sequence[HostSource], *, progress: bool | None = None) -> Fleet:
    """Hosts given the way commands take them, as one :class:`Fleet` (each distinct profile parsed once).

    :param items: a :class:`Fleet` (returned as is), or a list of: profile files (multi-document files of any
        size), directories, SQLite inventories written by ``fleet import``, names of bundled sample profiles
        (``skylake-6.3``), and :class:`HostProfile` objects (or hosts of a :class:`Fleet`), in any mix.
        The same path given twice is read once. Host names must be unique across the files and inventories;
        profile objects are taken as they are.
    :param progress: loading progress bar on stderr; default: when stderr is a terminal.
    :raise InputError: a missing path, bad input, a duplicate host name, or no host at all.
    """
    if isinstance(items, Fleet):
        return items
    out = Fleet()
    names: dict[str, str] = {}        # host name -> where it was loaded from (files and inventories only)
    run: list[str] = []
    seen: set[str] = set()
    sources: list[str] = []

    def flush() -> None:
        if run:
            _merge(out, load_fleet(run, progress=progress), names, ", ".join(run))
            run.clear()

    for item in items:
        if isinstance(item, (str, os.PathLike)):
            raw = os.fspath(item)
            path = resolve_profile_path(raw)
            if not os.path.exists(path):
                hint = bundled_name_hint(raw)
                raise InputError(f"no such host profile {raw!r} (neither a file nor a bundled profile name"
                                 + (f"; {hint})" if hint else ")"))
            key = os.path.realpath(path)
            if key in seen:
                continue
            seen.add(key)
            sources.append(path)
            if is_database(path):
                flush()
                with inventory.FleetDb(path) as db:
                    _merge(out, db.load_fleet(), names, path)
            else:
                run.append(path)
        elif isinstance(item, Fleet):
            flush()
            sources.append(item.source)
            _merge(out, item, names, item.source or "a fleet")
        elif isinstance(item, HostProfile):
            flush()
            out.add(item)
        else:
            raise TypeError(f"not a host source: {item!r}")
    flush()
    if not out.members:
        raise InputError("no host profiles given")
    out.source = ", ".join(s for s in sources if s)
    return out
