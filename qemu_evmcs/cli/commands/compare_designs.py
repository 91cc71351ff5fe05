"""``qemu-evmcs compare-designs``: migration verdicts of the three 2022 designs (and no design) side by side."""

from __future__ import annotations

import argparse
import sys
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.qemu.model_names import MODEL_HELP

from qemu_evmcs.cli.hostargs import add_selection_arguments, select_hosts
from qemu_evmcs.policy.designs import compare_designs, comparison_text
from qemu_evmcs.core.errors import EXIT_OK
from qemu_evmcs.output.jsonout import print_json
from qemu_evmcs.output.progress import Progress

if TYPE_CHECKING:
    from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``compare-designs`` parser."""
    p = subparsers.add_parser("compare-designs", help="migration verdicts per design for every host pair",
                              description="For every ordered host pair and model, simulate a migration under no "
                                          "design (naive) and each design of the 2022 thread (shipped, revision, "
                                          "vmx-msrs): allowed, blocked (safe), unsafe (the guest loses controls it "
                                          "could see), or no-start; 'wrong' counts unsafe verdicts and unnecessary "
                                          "blocks (the destination could have shown identical VMX MSRs). "
                                          "Always exit 0: a report, not a check.")
    p.add_argument("--hosts", nargs="*", default=[], metavar="HOST",
                   help="files (multi-document, any size), dirs, SQLite inventories, bundled names, host names")
    p.add_argument("--model", nargs="+", default=[], metavar="NAME",
                   help=MODEL_HELP + "; several allowed (default: max)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_selection_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Always exit 0 (a report, not a check)."""
    cmp = compare_designs(select_hosts(args, args.hosts), args.model, progress=Progress)
    if args.json:
        print_json(cmp.to_json())
    else:
        sys.stdout.write(comparison_text(cmp))
    return EXIT_OK
