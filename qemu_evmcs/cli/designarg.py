"""``--design``: the one option naming the eVMCS ABI design, in every command.

Three spellings used to name the same concept (``--variant shipped`` on guest-msrs/explain, ``--strategy
pv-cpuid`` on negotiate/admit, ``--design shipped`` on migrate-check). Now ``--design`` is the name and the others
are aliases of it: ``--strategy``/``--variant`` are the same option, and the strategy name ``pv-cpuid`` is the
same value as ``shipped`` (:data:`qemu_evmcs.policy.designnames.DESIGN_ALIASES`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from qemu_evmcs.policy.designnames import DESIGN_ALIASES, DESIGN_NAMES, known_designs

#: What every --design help ends with.
ALIASES_HELP = "--strategy and --variant are aliases of --design; pv-cpuid is an alias of shipped"


def design_type(extra: Sequence[str] = ()) -> Callable[[str], str]:
    """An argparse ``type``: a design name, an alias of one, or one of ``extra`` (``all``, ``naive``)."""
    known = [*DESIGN_NAMES, *extra]

    def parse(value: str) -> str:
        value = DESIGN_ALIASES.get(value, value)
        if value not in known:
            raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {known_designs(tuple(extra))})")
        return value
    return parse


def add_design_argument(parser: argparse.ArgumentParser, *, extra: Sequence[str] = (), default: str = "shipped",
                        what: str = "the KVM eVMCS ABI design of the 2022 thread") -> None:
    """Add ``--design`` (aliases ``--strategy``, ``--variant``) with ``dest="design"``."""
    names = ", ".join([*DESIGN_NAMES, *extra])
    parser.add_argument("--design", "--strategy", "--variant", dest="design", type=design_type(extra),
                        default=default, metavar="DESIGN",
                        help=f"{what}: {names} (default {default}; shipped is what Linux merged, revision and "
                             f"vmx-msrs never shipped and are simulated). {ALIASES_HELP}")
