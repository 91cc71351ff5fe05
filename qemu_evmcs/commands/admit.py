"""``qemu-evmcs admit``: EVC-style, eVMCS-aware admission of a host into a pool."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..admit import admit
from ..errors import EXIT_NEGATIVE, EXIT_OK
from ..jsonout import print_json
from ..negotiate import STRATEGIES


def register(subparsers: Any) -> None:
    """Add the ``admit`` parser."""
    p = subparsers.add_parser("admit", help="can a host join a pool without shrinking what eVMCS guests see?")
    p.add_argument("--pool", nargs="+", required=True, metavar="PROFILE",
                   help="the pool's hosts: files (multi-document, any size), dirs, SQLite inventories, bundled names")
    p.add_argument("--candidate", required=True, metavar="PROFILE")
    p.add_argument("--model", default=None, help="CPU model definition (default: every feature QEMU can set)")
    p.add_argument("--strategy", choices=STRATEGIES, default="pv-cpuid")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 admit, 1 refuse."""
    res = admit(args.pool, args.candidate, args.model, args.strategy)
    if args.json:
        print_json(res.to_json())
    else:
        print(("admit: " if res.admit else "refuse: ") + res.reason)
    if not res.admit:
        print(f"error: {res.reason}", file=sys.stderr)
        return EXIT_NEGATIVE
    return EXIT_OK
