"""``qemu-evmcs migrate-check``: fine, blocked or unsafe for one eVMCS guest migration."""

from __future__ import annotations

import argparse
import asyncio
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu.qmp import QMPError

from qemu_evmcs.qemu.model_names import MODEL_HELP
from qemu_evmcs.core.errors import EXIT_NEGATIVE, EXIT_OK, InputError
from qemu_evmcs.output.jsonout import print_json
from qemu_evmcs.cli.designarg import add_design_argument
from qemu_evmcs.policy.migrate import (
    config_from_running,
    migrate_check_candidates,
    source_view,
    verdict_from_view,
)
from qemu_evmcs.cli.hostargs import select_hosts
from qemu_evmcs.core.hostgroup import Fleet
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.launch.running import read_running_cpu
from qemu_evmcs.policy.negotiate import TARGETS, load_guest_model

if TYPE_CHECKING:
    from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``migrate-check`` parser."""
    p = subparsers.add_parser("migrate-check", help="would an eVMCS guest migrate fine, be blocked, or break?",
                              description="Simulate the destination QEMU's VMX MSR writes and eVMCS enable, and "
                                          "compare the L1 guest's VMX MSRs before and after.")
    p.add_argument("--model", help=MODEL_HELP + " (with --from; with --from-running the configuration is the "
                                          "running guest's)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="source", metavar="PROFILE", help="source host profile")
    src.add_argument("--from-running", metavar="SOCKET",
                     help="QMP socket of a running QEMU (real or simulated): its -cpu configuration is read over "
                          "standard QMP (qom-get of vmx-*/hv-*, unavailable-features, query-kvm)")
    p.add_argument("--source-profile", metavar="PROFILE",
                   help="with --from-running: the source host profile (needed for a real QEMU; a simulated one "
                        "says its own)")
    p.add_argument("--to", dest="dest", required=True, metavar="PROFILE", help="destination host profile")
    add_design_argument(p, extra=("naive",), what="how the guest was configured for the source (naive: the model "
                                                  "as is, no negotiation)")
    p.add_argument("--target", choices=TARGETS, default="qemu",
                   help="the QEMU the guest runs on: qemu (default, a released QEMU) or simulator (with this "
                        "project's proposed options: the PV CPUID bit, the eVMCS revision)")
    p.add_argument("--inventory", metavar="DB", help="look host names given to --from/--to up in this inventory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _one_host(args: argparse.Namespace, item: str) -> HostProfile:
    """The host ``item`` names: a profile file (its first host), a bundled name, or a host of --inventory."""
    fleet: Fleet = select_hosts(args, [item])
    return next(iter(fleet.iter_hosts()))


def run(args: argparse.Namespace) -> int:
    """Exit 0 for fine, 1 for blocked or unsafe.

    As every command with a negative answer: the verdict line on stdout (``fine|blocked|unsafe: A -> B (design):
    why``; or the JSON object), never an ``error:`` line (that is for bad input, exit 2).
    """
    dest = _one_host(args, args.dest)
    notes: list[str] = []
    if args.source:
        if args.model is None:
            raise InputError("--model is required with --from")
        source = _one_host(args, args.source)
        v = migrate_check_candidates(load_guest_model(args.model), source, dest, args.design, target=args.target)
    else:
        if args.model is not None:
            raise InputError("--model: with --from-running the configuration is the running guest's; leave it out")
        try:
            cpu = asyncio.run(read_running_cpu(args.from_running))
        except (TimeoutError, OSError, QMPError, ValueError) as err:
            raise InputError(f"--from-running {args.from_running}: {err or 'no answer'}") from None
        profile = args.source_profile or cpu.profile
        if not profile:
            raise InputError("--from-running: a real QEMU does not say which host it runs on; "
                             "give --source-profile PROFILE")
        source = _one_host(args, profile)
        config, notes = config_from_running(cpu.model, cpu.props, cpu.unavailable, cpu.extra, args.design)
        if cpu.kvm_enabled is False:
            notes.append("the running QEMU does not use KVM (query-kvm: enabled=false): its -cpu is judged as it "
                         f"would run under KVM on {source.name}")
        # The simulator reports what its guest reads; for a real QEMU the source profile says it.
        msrs = cpu.guest_msrs if cpu.guest_msrs is not None else source_view(config, source)
        v = verdict_from_view(config, msrs, source.name, dest)
    if args.json:
        print_json({**v.to_json(), "notes": notes})
    else:
        print(f"{v.verdict}: {v.source} -> {v.destination} ({v.design}): {v.reason}")
    if not args.json:
        for note in notes:
            print(f"  note: {note}")
    if v.verdict != "fine":
        return EXIT_NEGATIVE
    return EXIT_OK
