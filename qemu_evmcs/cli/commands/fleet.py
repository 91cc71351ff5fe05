"""``qemu-evmcs fleet import|query|stats``: the SQLite fleet inventory.

- ``fleet import PATH... --db DB [--pool NAME]``: incremental, ONE transaction (a bad profile anywhere
  leaves the database as it was, and the ``error:`` line names the file);
- ``fleet query --db DB [--era ID] [--feature NAME [--view host|guest]] [--pool NAME] [--json]``:
  matching host names, one a line (or JSON);
- ``fleet stats --db DB [--json]``: counts by pool, era, vendor and CPU;
- ``fleet plan --db DB [--model M] [--design D] [--format text|json|cpu|libvirt --out-dir DIR]``: every pool's
  negotiated answer, the hosts it leaves out and why, migrations between pools, the most useful upgrades.
"""

from __future__ import annotations

import argparse
import json
import sys
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.cli.hostargs import add_selection_arguments, select_hosts
from qemu_evmcs.core.errors import EXIT_NEGATIVE, EXIT_OK, InputError
from qemu_evmcs.output.jsonout import print_json
from qemu_evmcs.output.plan import plan_cpu_lines, plan_json, plan_text, write_libvirt_fragments
from qemu_evmcs.output.progress import Progress
from qemu_evmcs.policy.negotiate import DESIGN_STRATEGY_OF
from qemu_evmcs.policy.negotiate import TARGETS, load_guest_model, max_model
from qemu_evmcs.policy.plan import plan_fleet
from qemu_evmcs.policy.explain import find_features
from qemu_evmcs.fleet.inventory import FleetDb, import_into
from qemu_evmcs.core.registry import registry

if TYPE_CHECKING:
    from typing import Any


def _import(args: argparse.Namespace) -> int:
    if args.pool is not None and not args.pool.strip():
        raise InputError("must not be empty", key="--pool")
    res = import_into(args.db, args.paths, pool=args.pool, progress=None)
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
    print(f"hosts:             {st['host_count']}")
    print(f"files:             {st['files']}")
    print(f"distinct profiles: {st['distinct_profiles']}")
    print(f"nested=0 hosts:    {st['nested_off_hosts']}")
    for title, key in (("pools", "pools"), ("eVMCS eras", "eras"), ("vendors", "vendors"), ("CPUs", "cpus")):
        print(f"{title}:")
        for name, n in st[key].items():
            print(f"  {n:8d}  {name}")
    return EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    if args.out_dir is not None and args.format != "libvirt":
        raise InputError("--out-dir goes with --format libvirt", key="--out-dir")
    model = load_guest_model(args.model) if args.model else max_model()
    fleet = select_hosts(args, [args.db])
    npools = len(set(fleet.pools.values())) + (1 if fleet.host_count > len(fleet.pools) else 0)
    with Progress(npools, "planning pools", unit="pools") as bar:
        plan = plan_fleet(fleet, model, design=args.design, target=args.target, upgrades=not args.no_upgrades,
                          all_pairs=args.migrations == "all", tick=bar.update)
    if args.format == "json":
        print_json(plan_json(plan))
    elif args.format == "cpu":
        sys.stdout.write(plan_cpu_lines(plan))
    elif args.format == "libvirt":
        if args.out_dir is None:
            raise InputError("--format libvirt writes one file per pool: give --out-dir DIR", key="--format")
        for path in write_libvirt_fragments(plan, args.out_dir, force=args.force):
            print(path)
    else:
        sys.stdout.write(plan_text(plan))
    return EXIT_OK if all(p.ok for p in plan.pools) else EXIT_NEGATIVE


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

    pl = sub.add_parser("plan", help="every pool's answer: -cpu, libvirt, who is left out, migrations, upgrades",
                        description="Per pool of the inventory: the negotiated eVMCS answer (-cpu, libvirt fragment, "
                                    "JSON), the hosts it leaves out and the layer that excludes them, the migrations "
                                    "between pools that are fine, blocked or unsafe (counted in hosts), and the hosts "
                                    "whose kernel upgrade would widen the pool's guest feature set the most. Exit 0 "
                                    "when every pool has an answer, 1 when some pool has none (said in the output).")
    pl.add_argument("--db", required=True, metavar="PATH", help="inventory database made by `fleet import`")
    pl.add_argument("--model", metavar="NAME", help="CPU model definition (name or file); default max")
    pl.add_argument("--design", choices=sorted(DESIGN_STRATEGY_OF), default="shipped",
                    help="KVM eVMCS ABI design: shipped (default, what Linux merged), revision or vmx-msrs")
    pl.add_argument("--target", choices=TARGETS, default="qemu",
                    help="qemu (default: options a released QEMU has) or simulator (this project's proposed options)")
    pl.add_argument("--format", choices=("text", "json", "cpu", "libvirt"), default="text",
                    help="text (default), json, cpu (POOL: -cpu value), libvirt (one file per pool, --out-dir)")
    pl.add_argument("--out-dir", metavar="DIR", help="with --format libvirt: write DIR/POOL.xml per pool")
    pl.add_argument("--force", action="store_true", help="overwrite existing files in --out-dir")
    pl.add_argument("--no-upgrades", action="store_true", help="skip the upgrade suggestions (faster)")
    pl.add_argument("--migrations", choices=("summary", "all"), default="summary",
                    help="summary (default): per pool, destination pools and hosts by verdict with examples; "
                         "all: also every ordered pool pair (pools x pools rows)")
    add_selection_arguments(pl)
    pl.set_defaults(func=_plan)
