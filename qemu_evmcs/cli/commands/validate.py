"""``qemu-evmcs validate [PATH...] [--hosts PROFILE...] [--json]``: check CPU model definitions.

Exit status: 0 clean or warnings only, 1 errors, 2 unreadable input or bad usage.
"""

from __future__ import annotations

import argparse
import sys
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.cli.hostargs import add_selection_arguments, select_hosts
from qemu_evmcs.output.jsonout import print_json
from qemu_evmcs.qemu.models import QemuSnapshot, load_snapshot, load_snapshot_dir
from qemu_evmcs.policy.qemu_models import qemu_models_report
from qemu_evmcs.policy.validate import validate_paths

if TYPE_CHECKING:
    from typing import Any

    from qemu_evmcs.core.hostgroup import Fleet


def snapshot_from_args(args: argparse.Namespace) -> QemuSnapshot:
    """``--snapshot DIR`` or the bundled default."""
    directory: str | None = getattr(args, "snapshot", None)
    return load_snapshot_dir(directory) if directory else load_snapshot()


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code."""
    snap = snapshot_from_args(args)
    if args.qemu_models:
        table = qemu_models_report(snap)
        if args.json:
            print_json(table.to_json(), sort_keys=True)
        else:
            sys.stdout.write(table.render())
        return 0
    selected = bool(args.hosts or args.inventory or args.hosts_from)
    hosts: Fleet | None = select_hosts(args, args.hosts or []) if selected else None
    report = validate_paths(args.paths, snapshot=snap, hosts=hosts)
    if args.json:
        print_json(report.to_json(), sort_keys=True)
    else:
        sys.stdout.write(report.render())
    return report.exit_code


def register(subparsers: Any) -> None:
    """Add the ``validate`` sub-command."""
    p = subparsers.add_parser(
        "validate", help="check CPU model definitions (cpu_models/*.yaml)",
        description="Check eVMCS-ready CPU model definitions: YAML, feature names, the QEMU base model, QEMU's "
                    "dependency rules, eVMCS conflicts per kernel era, contradictions. Exit 0 clean or warnings "
                    "only, 1 errors, 2 unreadable input.")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="definition files or directories (default: the installed definitions, or "
                        "$QEMU_EVMCS_CPU_MODELS if set; pass cpu_models/ to check a checkout's copies)")
    p.add_argument("--hosts", nargs="+", metavar="PROFILE",
                   help="also say on which hosts each model starts and what each would drop (files, dirs, names)")
    p.add_argument("--qemu-models", action="store_true",
                   help="instead: every QEMU model of the snapshot as an eVMCS guest with vmx=on, per kernel era "
                        "(starts, aborts, what the L1 guest loses), and the models that need a newer QEMU")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_selection_arguments(p)
    p.add_argument("--snapshot", metavar="DIR", help="a QEMU model snapshot directory (default: bundled 7.2)")
    p.set_defaults(func=run)
