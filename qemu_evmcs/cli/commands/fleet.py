"""``qemu-evmcs fleet import|query|stats``: the SQLite fleet inventory.

- ``fleet import PATH... --db DB [--pool NAME]``: incremental, ONE transaction (a bad profile anywhere
  leaves the database as it was, and the ``error:`` line names the file);
- ``fleet query --db DB [--era ID] [--feature NAME [--view host|guest]] [--pool NAME] [--json]``:
  matching host names, one a line (or JSON);
- ``fleet stats --db DB [--json]``: counts by pool, era, vendor and CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from qemu_evmcs.core.errors import EXIT_OK, InputError
from qemu_evmcs.policy.explain import find_features
from qemu_evmcs.fleet.inventory import FleetDb
from qemu_evmcs.core.registry import registry


def _import(args: argparse.Namespace) -> int:
    if args.pool is not None and not args.pool.strip():
        raise InputError("must not be empty", key="--pool")
    with FleetDb(args.db, create=True) as db:
        res = db.import_paths(args.paths, pool=args.pool, progress=None)
    if args.json:
        print(json.dumps(res.as_dict(), indent=2, sort_keys=True))
    else:
        print(f"imported into {args.db}: {res.added} new, {res.updated} updated, {res.removed} removed, "
              f"{res.unchanged} unchanged files; {res.hosts} hosts, {res.distinct} distinct profiles "
              f"({res.parsed_documents} documents parsed in full)")
    return EXIT_OK


def _query(args: argparse.Namespace) -> int:
    if args.view is not None and args.feature is None:
        raise InputError("--view needs --feature", key="--view")
    feature = args.feature
    if feature is not None and registry().get(feature) is None:
        feature = find_features(feature)[0].name   # any case; an unknown name fails with "did you mean"
    with FleetDb(args.db) as db:
        rows = db.query(era=args.era, feature=feature, view=args.view or "guest", pool=args.pool)
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    else:
        out = sys.stdout
        for r in rows:
            out.write(r["name"] + "\n")
        if not rows:   # an empty answer is still an answer: say so, on stderr (stdout stays a host list)
            print("no host matches", file=sys.stderr)
    return EXIT_OK


def _stats(args: argparse.Namespace) -> int:
    with FleetDb(args.db) as db:
        st: dict[str, Any] = db.stats()
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"database:          {st['database']} (schema {st['schema_version']})")
    print(f"hosts:             {st['hosts']}")
    print(f"files:             {st['files']}")
    print(f"distinct profiles: {st['distinct_profiles']}")
    print(f"nested=0 hosts:    {st['nested_off_hosts']}")
    for title, key in (("pools", "pools"), ("eVMCS eras", "eras"), ("vendors", "vendors"), ("CPUs", "cpus")):
        print(f"{title}:")
        for name, n in st[key].items():
            print(f"  {n:8d}  {name}")
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``fleet`` and its sub-commands."""
    p = subparsers.add_parser("fleet", help="fleet inventory in SQLite (import, query, stats)",
                              description="The SQLite fleet inventory: import host profiles once, then query and "
                                          "count them; every command that takes hosts also takes the database.")
    sub = p.add_subparsers(dest="fleet_command", metavar="ACTION", parser_class=type(p))
    sub.required = True

    imp = sub.add_parser("import", help="import host profiles (files, multi-document files, directories)")
    imp.add_argument("paths", nargs="+", metavar="DIR|FILE")
    imp.add_argument("--db", required=True, metavar="PATH", help="inventory database (created if missing)")
    imp.add_argument("--pool", metavar="NAME", help="put every host of these paths in this pool")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")
    imp.set_defaults(func=_import)

    q = sub.add_parser("query", help="hosts matching filters",
                       description="Names of the hosts matching every given filter, one a line (none: "
                                   "'no host matches' on stderr, exit 0).")
    q.add_argument("--db", required=True, metavar="PATH", help="inventory database made by `fleet import`")
    q.add_argument("--era", metavar="ID", help='eVMCS era id, e.g. "6.1-6.2"')
    q.add_argument("--feature", metavar="NAME", help="a VMX feature (QEMU, libvirt, Linux or vmxcap name)")
    q.add_argument("--view", choices=("host", "guest"),
                   help="host: KVM's system-fd MSRs; guest (default): what an eVMCS L1 guest reads")
    q.add_argument("--pool", metavar="NAME", help="only hosts imported with --pool NAME")
    q.add_argument("--json", action="store_true",
                   help="print [{name, pool, fingerprint, kernel, era, vendor, file}] instead of names")
    q.set_defaults(func=_query)

    s = sub.add_parser("stats", help="counts by pool, era, vendor and CPU")
    s.add_argument("--db", required=True, metavar="PATH", help="inventory database made by `fleet import`")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_stats)
