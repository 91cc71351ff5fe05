"""The names of the three designs of the 2022 thread, and their aliases: the ``--design`` vocabulary.

Why a module of its own: every command that takes ``--design`` (``guest-msrs`` and ``explain`` too) needs
these names, and they should not pull the negotiator (and through it fleet I/O) into a command's start-up.
A design is a KVM ABI (the :class:`~qemu_evmcs.kvm.simkvm.SimKvm` variant) together with the negotiation
that uses it, so the variant names are the design names.
"""

from __future__ import annotations

from collections.abc import Mapping

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.kvm.simkvm import VARIANTS

#: The one user-facing name of each design (``--design``; ``--strategy`` and ``--variant`` are aliases).
DESIGN_NAMES: tuple[str, ...] = tuple(VARIANTS)
#: Other spellings accepted for a design: the negotiation strategy's own name.
DESIGN_ALIASES: Mapping[str, str] = {"pv-cpuid": "shipped"}



def known_designs(extra: tuple[str, ...] = ()) -> str:
    """``shipped, revision, vmx-msrs[, extra]; pv-cpuid = shipped``: the one wording of what ``--design`` takes,
    for every refusal of an unknown design."""
    return (", ".join([*DESIGN_NAMES, *extra]) + "; "
            + ", ".join(f"{a} = {d}" for a, d in DESIGN_ALIASES.items()))


def design_name(name: str) -> str:
    """``shipped``/``revision``/``vmx-msrs`` for a design or strategy name (``pv-cpuid`` -> ``shipped``).

    :raise InputError: neither.
    """
    design = DESIGN_ALIASES.get(name, name)
    if design not in DESIGN_NAMES:
        raise InputError(f"unknown design {name!r} (known: {known_designs()})", key="--design")
    return design


__all__ = ["DESIGN_ALIASES", "DESIGN_NAMES", "design_name", "known_designs"]
