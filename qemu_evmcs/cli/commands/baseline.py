"""``qemu-evmcs baseline (--model NAME | --pool) HOST...``: the VMX set common to a pool, in both views.

Without ``--json`` prints a table: one row per feature the model wants (pool mode: per feature some host
has), whether it is in the unfiltered and the eVMCS baseline, and if not, where and why it is lost.
"""

from __future__ import annotations

import argparse
import functools
import sys
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.qemu.model_names import BUILTIN, MODEL_HELP, load_any_model
from qemu_evmcs.policy.hostmodel import host_config, host_pool_notes
from qemu_evmcs.policy.negotiate import load_guest_model, load_pool, pool_groups
from qemu_evmcs.cli.hostargs import add_selection_arguments, select_hosts, split_pool_values
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.output.jsonout import print_json
from qemu_evmcs.output.wrap import wrap
from qemu_evmcs.policy.resolve import BaselineResult, Loss, baseline
from qemu_evmcs.cli.commands.validate import snapshot_from_args

if TYPE_CHECKING:
    from typing import Any


def _hosts_text(hosts: list[str], limit: int = 3) -> str:
    shown = ",".join(hosts[:limit])
    return shown + (f" +{len(hosts) - limit}" if len(hosts) > limit else "")


def render(result: BaselineResult, *, show_all: bool = False, builtin: str | None = None) -> str:
    """The readable table: every feature that is lost somewhere, with where and why; the features every
    host keeps in both views are summarised in one line unless ``show_all`` (they are the noise).

    :param builtin: ``host`` or ``max`` when that was the ``--model`` (no definition of its own: each host's set).
    """
    out: list[str] = []
    head = (f"model {result.model} (base {result.base})" if result.model
            else f"model {builtin} (each host's own set)" if builtin else "pool baseline (no model)")
    out.append(f"{head}: {result.host_count} host(s), {len(result.groups)} distinct; "
               f"pv-perf-global-ctrl={result.pv_perf_global_ctrl}")
    out.append(f"unfiltered baseline (QEMU/libvirt view): {len(result.unfiltered)} of {len(result.wanted)} features")
    out.append(f"eVMCS baseline (L1 Hyper-V guest view):  {len(result.evmcs)} of {len(result.wanted)} features")
    if result.base_cpuid_note():
        out.append(f"note: {result.base_cpuid_note()}")
    if result.not_starting:
        out.append(f"does not start on: {_hosts_text(list(result.not_starting))}")
        for g in result.groups:
            if not g.starts:
                out.append(f"  {_hosts_text(list(g.hosts))}: {g.reason}")
    by_feature: dict[str, list[Loss]] = {}
    for loss in result.losses:
        by_feature.setdefault(loss.feature, []).append(loss)
    width = max([len(f) for f in result.wanted | set(by_feature)] + [7])
    out.append("")
    kept = sorted(f for f in result.wanted if f not in by_feature and f in result.unfiltered and f in result.evmcs)
    rows = sorted(result.wanted | set(by_feature)) if show_all else \
        sorted(f for f in result.wanted | set(by_feature) if f not in kept)
    out.append(f"{'feature':<{width}}  unfilt  evmcs  lost on / why")
    for feat in rows:
        uf = "yes" if feat in result.unfiltered else "no"
        ev = "yes" if feat in result.evmcs else "no"
        losses = by_feature.get(feat, [])
        first = True
        if not losses:
            out.append(f"{feat:<{width}}  {uf:<6}  {ev:<5}")
        for loss in losses:
            label = feat if first else ""
            cols = f"{uf:<6}  {ev:<5}" if first else f"{'':<6}  {'':<5}"
            hist = f" [{loss.history}]" if loss.history else ""
            shown = ",".join(loss.first_hosts(3)) + (f" +{loss.count - 3}" if loss.count > 3 else "")
            out.append(f"{label:<{width}}  {cols}  {shown}: {loss.layer}: {loss.detail}{hist}")
            first = False
    if kept and not show_all:
        out.append("")
        out.append(f"kept on every host in both views ({len(kept)}; --all lists them as rows):")
        out.extend(wrap(", ".join(kept), width=110, initial_indent="  ", subsequent_indent="  ",
                        break_on_hyphens=False))
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    """Run the command; returns 0 (the baseline is an answer, not a check)."""
    snap = snapshot_from_args(args)
    builtin = args.model.split(",", 1)[0] in BUILTIN if args.model else False
    model = load_any_model(args.model) if args.model and not builtin else None
    if args.pool is None and model is None and not builtin:
        raise InputError("give --model NAME, or --pool for the largest set common to the hosts", key="--model")
    pools, pool_hosts = split_pool_values(args.pool or [])
    hosts = select_hosts(args, [*args.hosts, *(args.hosts_opt or []), *pool_hosts], pools)
    notes: list[str] = []
    start_config = None
    if builtin:
        # host/max take each host's own set: the baseline is the largest set common to the hosts (as --pool),
        # and for host the reasons its guests differ between hosts come first.
        gm = load_guest_model(args.model)
        if gm.per_host:
            notes = host_pool_notes(gm, [g.profile for g in pool_groups(load_pool(hosts))])
            # Each host starts its own -cpu host set: where QEMU does not start it, the host gives the guest nothing.
            start_config = functools.partial(host_config, gm)
            notes = notes or [f"-cpu {args.model} guests see the same VMX MSRs on every host of this pool"]
            notes.append(f"--model {args.model}: each host's own set; the baseline below is what such guests get on "
                         f"every host (none where QEMU does not start them); --pool gives the largest set a custom "
                         f"model can pin")
        else:
            notes.append(f"--model {args.model}: each host's own set; the baseline below is the largest set common "
                         f"to the hosts (what a custom model can pin)")
    result = baseline(hosts, model, pv_perf_global_ctrl=args.pv_perf_global_ctrl,
                      snapshot=snap, start_config=start_config)
    notes += result.notes   # partial hosts: the sentence negotiate and explain carry too
    if args.json:
        data = result.to_json()
        data["notes"] = notes
        print_json(data, sort_keys=True)
    else:
        sys.stdout.write("".join(f"note: {n}\n" for n in notes) + render(result, show_all=args.all,
                                                                          builtin=args.model if builtin else None))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``baseline`` sub-command."""
    p = subparsers.add_parser(
        "baseline", help="VMX features a model (or a pool) gets on every host, unfiltered and eVMCS-filtered",
        description="The feature set a guest gets identically on all HOSTs, as QEMU/libvirt see it and as the L1 "
                    "Hyper-V guest sees it through the eVMCS filter, with the layer that removes each lost feature. "
                    "HOSTs are profile files (multi-document, any size), directories, SQLite inventories from "
                    "`fleet import` or bundled profile names; 100,000 hosts are fine (each distinct profile is "
                    "computed once).")
    p.add_argument("--model", metavar="NAME", help=MODEL_HELP)
    p.add_argument("--pool", nargs="*", metavar="NAME",
                   help="without --model: the largest VMX set common to all hosts; each NAME is an inventory pool "
                        "to select (repeatable), or, when it names a profile file or bundled profile, a host")
    p.add_argument("hosts", nargs="*", metavar="HOST",
                   help="profile files, dirs, SQLite inventories, bundled names, host names of those inventories")
    p.add_argument("--hosts", dest="hosts_opt", nargs="*", action="extend", metavar="HOST",
                   help="the same as the positional HOSTs, spelt as every other command takes them")
    p.add_argument("--pv-perf-global-ctrl", choices=("auto", "on", "off"), default=None,
                   help="override the model's setting (pool default: auto, i.e. QEMU's behaviour: bit clear)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true",
                   help="text output: one row per feature, also those every host keeps (default: a summary line)")
    p.add_argument("--snapshot", metavar="DIR", help="a QEMU model snapshot directory (default: bundled 7.2)")
    add_selection_arguments(p, pool_option=False)
    p.set_defaults(func=run)
