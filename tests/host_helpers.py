"""Loaded host profiles for tests that call the policy layer directly.

Why a helper: the policy and core layers take only loaded profiles or host groups (issue 10: no file I/O or
name lookup below the I/O layer). Tests name hosts the way users do (bundled names, files, directories), so
they load them here through the one loader every command uses
(:func:`qemu_evmcs.fleet.sources.load_hosts_fleet`), not through a second lookup of their own.
"""

from __future__ import annotations

import os

from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.fleet.sources import load_hosts_fleet


def host_profiles(*items: str | os.PathLike[str] | HostProfile) -> list[HostProfile]:
    """Every host of ``items`` (bundled names, profile files, directories, inventories, or profiles taken as they
    are), one profile per host, grouped by fingerprint as :meth:`~qemu_evmcs.core.hostgroup.Fleet.iter_hosts`
    gives them."""
    return list(load_hosts_fleet(list(items), progress=False).iter_hosts())


__all__ = ["host_profiles"]
