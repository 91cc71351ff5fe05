"""The host-selection options every host-taking command shares (``--pool``, ``--where``, ``--hosts-from``,
``--inventory``), and the one function that turns them into a :class:`~qemu_evmcs.core.hostgroup.Fleet`.

Why here and not in each command: the selection rules (:mod:`qemu_evmcs.fleet.select`) must read the same
on every command, including the spelling of the options and their help text.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.hostgroup import Fleet
from qemu_evmcs.core.profile import resolve_profile_path
from qemu_evmcs.core.inputfile import is_database
from qemu_evmcs.fleet.select import WHERE_KEYS, HostSelection, parse_where, read_hosts_from

WHERE_HELP = "filter KEY=VALUE or KEY!=VALUE, repeatable, all must hold; keys: " + "; ".join(
    f"{k}: {v}" for k, v in WHERE_KEYS.items())


def add_selection_arguments(parser: argparse.ArgumentParser, *, pool_option: bool = True) -> None:
    """Add ``--pool``, ``--where``, ``--hosts-from`` and ``--inventory`` to a command's parser.

    :param pool_option: False for commands whose own ``--pool`` takes hosts (``admit``, ``baseline``): their
        values are split by :func:`split_pool_values`.
    """
    g = parser.add_argument_group("host selection (inventories made by `fleet import`)")
    if pool_option:
        g.add_argument("--pool", action="append", default=[], metavar="NAME",
                       help="only inventory hosts of this pool (repeatable)")
    g.add_argument("--where", action="append", default=[], metavar="EXPR", help=WHERE_HELP)
    g.add_argument("--hosts-from", metavar="FILE", help="more hosts, one per line (host names as `fleet query` "
                                                         "prints them, files, bundled names); - reads stdin")
    g.add_argument("--inventory", metavar="DB", help="look host names up in this inventory")


def split_pool_values(values: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(pool names, host sources)`` of a ``--pool`` that historically took host profiles.

    A value naming an existing file, directory, inventory or bundled profile is a host source (the
    documented older spelling ``--pool HOST...``); any other value is an inventory pool name.
    """
    pools: list[str] = []
    hosts: list[str] = []
    for v in values:
        (hosts if os.path.lexists(resolve_profile_path(v)) else pools).append(v)
    return pools, hosts


def inventory_among(items: Sequence[str]) -> str | None:
    """The first inventory database among ``items`` (for host names given in another option)."""
    for item in items:
        path = resolve_profile_path(item)
        if is_database(path):
            return path
    return None


def selection_from_args(args: argparse.Namespace, items: Sequence[str],
                        pools: Sequence[str] | None = None) -> HostSelection:
    """The :class:`HostSelection` of ``items`` plus the shared options of ``args``."""
    more = read_hosts_from(args.hosts_from) if getattr(args, "hosts_from", None) else []
    if getattr(args, "hosts_from", None) and not more and not items:
        # Else the selection would be "--inventory alone": every host. A `fleet query` that matched no host
        # prints nothing, and its pipe into --hosts-from - must not turn into the whole fleet.
        raise InputError(f"{args.hosts_from}: no host names in it (an empty list selects no host)",
                         key="--hosts-from")
    pool_names = list(pools) if pools is not None else list(getattr(args, "pool", None) or [])
    return HostSelection(items=[*items, *more], pools=pool_names,
                         where=[parse_where(w) for w in getattr(args, "where", None) or []],
                         inventory=getattr(args, "inventory", None))


def select_hosts(args: argparse.Namespace, items: Sequence[str], pools: Sequence[str] | None = None,
                 *, progress: bool | None = None) -> Fleet:
    """Load the hosts selected by ``items`` and the shared options."""
    return selection_from_args(args, items, pools).load(progress=progress)
