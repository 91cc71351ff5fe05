"""``qemu-evmcs admit``: EVC-style, eVMCS-aware admission of a host into a pool."""

from __future__ import annotations

import argparse
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.qemu.model_names import MODEL_HELP

from qemu_evmcs.cli.hostargs import add_selection_arguments, inventory_among, select_hosts, split_pool_values
from qemu_evmcs.policy.admit import admit
from qemu_evmcs.core.errors import EXIT_NEGATIVE, EXIT_OK
from qemu_evmcs.output.jsonout import print_json
from qemu_evmcs.cli.designarg import add_design_argument
from qemu_evmcs.policy.negotiate import TARGETS

if TYPE_CHECKING:
    from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``admit`` parser."""
    p = subparsers.add_parser("admit", help="can a host join a pool without shrinking what eVMCS guests see?",
                              description="Admit the candidate when the pool's negotiated configuration starts on "
                                          "it and shows the guest identical VMX MSRs; otherwise refuse and say what "
                                          "admitting it would cost. Exit 0 admit, 1 refuse, 2 bad input.")
    p.add_argument("--pool", nargs="+", action="extend", required=True, metavar="HOST|NAME",
                   help="the pool's hosts: files (multi-document, any size), dirs, SQLite inventories, bundled "
                        "names, host names of those inventories, or inventory pool names")
    p.add_argument("--candidate", required=True, metavar="HOST",
                   help="the host that would join (file, bundled name, or a host name with --inventory; "
                        "a file's first host)")
    p.add_argument("--model", default=None, help=MODEL_HELP + " (default: max, every feature QEMU can set)")
    add_design_argument(p)
    p.add_argument("--target", choices=TARGETS, default="qemu",
                   help="qemu (default): the pool's guests run on a released QEMU; simulator: on qemu-evmcs-sim, "
                        "with this project's proposed options")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_selection_arguments(p, pool_option=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 admit, 1 refuse.

    As every command with a negative answer: the answer is a verdict line on stdout (``admit: ...``, or
    ``refuse: CANDIDATE: why`` followed by what admitting it would cost; or the JSON object), never an
    ``error:`` line: ``error:`` is for bad input (exit 2).
    """
    pools, items = split_pool_values(args.pool)
    pool = select_hosts(args, items, pools)
    # The candidate may be a host name of the pool's inventory (or of --inventory).
    candidate = select_hosts(argparse.Namespace(inventory=args.inventory or inventory_among(items)),
                             [args.candidate])
    res = admit(pool, candidate, args.model, args.design, target=args.target)
    if args.json:
        print_json(res.to_json())
    elif res.admit:
        print(f"admit: {res.reason}")
    else:
        print(f"refuse: {res.candidate}: {res.why or res.reason}")
        joined = res.with_candidate
        if res.cost_features and joined is not None and not joined.ok:
            # No configuration at all with the candidate: naming every feature would hide the reason.
            print(f"  the pool's guests would lose all {len(res.cost_features)} VMX features they see "
                  f"(no configuration starts on every host; --json lists them)")
        elif res.cost_features:
            print(f"  the pool's guests would lose: {', '.join(res.cost_features)}")
        if res.cost_hyperv:
            print(f"  hv-* flags lost: {', '.join(res.cost_hyperv)}")
        if res.cost_pv_perf_global_ctrl:
            print("  CPUID 0x4000000A.EBX bit 0 would have to be cleared")
    if not res.admit:
        return EXIT_NEGATIVE
    return EXIT_OK
