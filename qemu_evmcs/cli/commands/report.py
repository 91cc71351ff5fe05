"""``qemu-evmcs report --hosts DIR|FILE|DB... --out report.html [--force]``: the self-contained fleet report."""

from __future__ import annotations

import argparse
import sys
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.errors import EXIT_OK, InputError
from qemu_evmcs.cli.hostargs import add_selection_arguments, select_hosts
from qemu_evmcs.fleet.report import DEFAULT_MAX_DESIGN_GROUPS, make_report

if TYPE_CHECKING:
    from typing import Any


def _run(args: argparse.Namespace) -> int:
    if args.max_design_groups < 0:
        raise InputError("must be at least 0", key="--max-design-groups")
    fleet = make_report(select_hosts(args, args.hosts), args.out, force=args.force,
                        max_design_groups=args.max_design_groups)
    print(f"report: {fleet.host_count} hosts, {len(fleet.distinct)} host groups -> {args.out}", file=sys.stderr)
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``report``."""
    p = subparsers.add_parser("report", help="one self-contained HTML fleet report (heatmap, pools, designs)",
                              description="Write one self-contained HTML file (no network access needed to view "
                                          "it): host groups, a heatmap of VMX feature visibility per group (unfiltered "
                                          "and eVMCS views), the pools whose guests see identical features, and the "
                                          "migration verdicts of each design for every pair of groups.")
    p.add_argument("--hosts", nargs="*", default=[], metavar="HOST",
                   help="host profiles (files, multi-document files, directories), fleet inventory databases, "
                        "bundled names, host names")
    p.add_argument("--out", required=True, metavar="FILE.html", help="the HTML file to write (atomically)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--max-design-groups", type=int, default=DEFAULT_MAX_DESIGN_GROUPS, metavar="N",
                   help=f"compare designs among the N largest host groups (default {DEFAULT_MAX_DESIGN_GROUPS})")
    add_selection_arguments(p)
    p.set_defaults(func=_run)
