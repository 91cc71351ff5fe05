"""``qemu-evmcs negotiate``: one eVMCS guest configuration for a pool of hosts."""

from __future__ import annotations

import argparse
import sys
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core import lazy
from qemu_evmcs.qemu.model_names import MODEL_HELP
from qemu_evmcs.core.errors import EXIT_NEGATIVE, EXIT_OK, InputError
from qemu_evmcs.qemu.models import read_text
from qemu_evmcs.output.jsonout import print_json
from qemu_evmcs.cli.hostargs import add_selection_arguments, select_hosts
from qemu_evmcs.cli.designarg import add_design_argument
from qemu_evmcs.policy.hostmodel import negotiate_model
from qemu_evmcs.qemu.model_names import AUTO_MODEL
from qemu_evmcs.policy.negotiate import (STRATEGIES, STRATEGY_VARIANT, TARGETS, auto_model, load_guest_model,
                                         load_pool, pool_groups, strategy_of)
from qemu_evmcs.output.render import (
    compare_strategies,
    cpu_string,
    libvirt_xml,
    negotiation_json,
    negotiation_text,
    pool_groups_json,
)

if TYPE_CHECKING:
    from typing import Any

    from qemu_evmcs.output import libvirt
    from qemu_evmcs.qemu import libvirt_cpumap
else:   # only for --format libvirt (core/lazy.py)
    libvirt = lazy.proxy("qemu_evmcs.output.libvirt")
    libvirt_cpumap = lazy.proxy("qemu_evmcs.qemu.libvirt_cpumap")


def register(subparsers: Any) -> None:
    """Add the ``negotiate`` parser."""
    p = subparsers.add_parser("negotiate", help="negotiate eVMCS, the PV CPUID bit and vmx-*/hv-* flags for a pool",
                              description="Decide the eVMCS request, CPUID 0x4000000A.EBX bit 0 and the vmx-*/hv-* "
                                          "flags that give a guest identical VMX MSRs on every host.")
    p.add_argument("--model", required=True,
                   help=MODEL_HELP + "; or auto: the newest QEMU model every host's recorded CPUID (cpu_features) "
                        "runs, with Skylake-Server-evmcs's eVMCS settings")
    p.add_argument("--hosts", nargs="*", default=[], metavar="HOST",
                   help="host profiles: files (multi-document, any size), dirs, SQLite inventories, bundled names, "
                        "and host names of those inventories")
    add_design_argument(p, extra=("all",), what="the KVM eVMCS ABI design (all: the three, with a comparison)")
    p.add_argument("--target", choices=TARGETS, default="qemu",
                   help="qemu (default): only options a released QEMU has, with a note on what this project's "
                        "proposed options would add; simulator: use them (hv-evmcs-perf-global-ctrl, "
                        "x-hv-evmcs-revision), for qemu-evmcs-sim")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.add_argument("--format", choices=("text", "cpu", "libvirt", "json"), default="text",
                   help="text (default): the report; cpu: only the -cpu value; libvirt: <cpu>/<features> XML; "
                        "json: one object")
    p.add_argument("--libvirt-version", metavar="X.Y",
                   help="with --format libvirt: the libvirt whose cpu_map names to use (default: the installed "
                        "one, /usr/share/libvirt/cpu_map, else the newest bundled snapshot)")
    p.add_argument("--merge", metavar="DOMAIN.xml",
                   help="with --format libvirt: print this domain XML with the answer merged in (replaces <cpu> and "
                        "<hyperv>, adds the hypervclock timer, panic device and -global arguments; keeps the rest)")
    add_selection_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the command.

    Like every command with a negative answer (``admit``, ``migrate-check``): the answer goes to stdout (the text
    report, JSON, ``-cpu`` string or XML); without a safe answer the text report ends in the verdict line
    ``no safe answer: WHY`` (with ``--format cpu|libvirt`` that line goes to stderr, so stdout stays the format)
    and the exit status is 1. ``error:`` lines are for bad input (exit 2).
    """
    fmt = "json" if args.json else args.format
    if (args.merge or args.libvirt_version) and fmt != "libvirt":
        raise InputError("--merge and --libvirt-version need --format libvirt")
    if args.merge and args.design == "all":
        raise InputError("--merge needs one --design (not all)")
    cmap = libvirt_cpumap.load_cpu_map(args.libvirt_version) if fmt == "libvirt" else None
    domain = read_text(args.merge) if args.merge else None
    model = args.model if args.model == AUTO_MODEL else load_guest_model(args.model)
    hosts = select_hosts(args, args.hosts)   # one Fleet: each distinct profile parsed and simulated once
    if args.design == "all":
        # --model auto: one pick for the three designs (it checks every QEMU model's CPUID on every host).
        pick = auto_model(pool_groups(load_pool(hosts))) if model == AUTO_MODEL else None
        results = {s: negotiate_model(model, hosts, s, target=args.target, auto_pick=pick) for s in STRATEGIES}
        ok = any(n.ok for n in results.values())
        if fmt == "json":
            first = next(iter(results.values()))
            print_json({"ok": ok, **pool_groups_json(first),
                        "designs": {STRATEGY_VARIANT[s]: negotiation_json(n, with_groups=False)
                                    for s, n in results.items()},
                        "comparison": {STRATEGY_VARIANT[s]: c for s, c in compare_strategies(results).items()}})
        elif fmt in ("cpu", "libvirt"):
            for s, n in results.items():
                if n.ok:
                    text = cpu_string(n) if fmt == "cpu" else libvirt_xml(n, cmap)
                    d = STRATEGY_VARIANT[s]
                    label = f"# {d}" if fmt == "cpu" else f"<!-- {d} -->"   # an XML comment in XML
                    sys.stdout.write(f"{label}\n{text}" + ("" if text.endswith("\n") else "\n"))
        else:
            for n in results.values():
                sys.stdout.write(negotiation_text(n))
            compared = {s: c for s, c in compare_strategies(results).items() if c["ok"]}
            if compared:    # a failed strategy's reason is in its report above (if all fail, the verdict line below)
                sys.stdout.write("comparison (allows: VMX features only this design shows the guest; blocks: "
                                 "features another design shows but this one hides):\n")
            for s, c in compared.items():
                sys.stdout.write(f"{STRATEGY_VARIANT[s]}: allows {', '.join(c['allows']) or '-'}; "
                                 f"blocks {', '.join(c['blocks']) or '-'}"
                                 f"; gets wrong: {'; '.join(c['gets_wrong']) or '-'}"
                                 + "".join(f"; note: {x}" for x in c["notes"]) + "\n")
        if not ok:
            why = {STRATEGY_VARIANT[s]: n.error.removeprefix("no safe answer: ") for s, n in results.items()}
            text = (next(iter(why.values())) if len(set(why.values())) == 1
                    else "; ".join(f"{s}: {w}" for s, w in why.items()))
            verdict = f"no safe answer under any design: {text}"
            print(verdict, file=sys.stdout if fmt == "text" else sys.stderr)
            return EXIT_NEGATIVE
        return EXIT_OK
    neg = negotiate_model(model, hosts, strategy_of(args.design), target=args.target)
    if fmt == "json":
        print_json(negotiation_json(neg))
    elif neg.ok and fmt == "cpu":
        print(cpu_string(neg))
    elif neg.ok and fmt == "libvirt" and domain is not None:
        sys.stdout.write(libvirt.merge_domain(domain, neg, source=args.merge, cmap=cmap))
    elif neg.ok and fmt == "libvirt":
        sys.stdout.write(libvirt_xml(neg, cmap))
    elif fmt == "text":
        sys.stdout.write(negotiation_text(neg))
    if not neg.ok:
        if fmt in ("cpu", "libvirt"):   # stdout stays what the format promises: the verdict line goes aside
            print(neg.error, file=sys.stderr)
        return EXIT_NEGATIVE
    return EXIT_OK
