"""``qemu-evmcs guest-msrs``: the VMX MSRs an L1 guest reads on a host, next to what KVM reports.

The guest is what QEMU's ``-cpu host`` gives it: every feature KVM reports,
eVMCS on (``hv-evmcs``) unless ``--no-evmcs``. ``--json`` prints exactly one
object::

    {"host": str, "kernel": str, "era": str, "evmcs": bool, "pv_perf_global_ctrl": bool,
     "msrs": {"IA32_VMX_BASIC": "0x00da040000000004", ...}}

with every MSR of the profile in index order. A host where eVMCS cannot be
enabled (AMD, nested off, CONFIG_KVM_HYPERV=n, pre-4.20) is a negative answer:
the verdict line ``no-evmcs: HOST: why`` on stdout (``--json``: the verdict object of
docs/json.md), exit 1 -- an answer, not an ``error:`` line.

The option helpers here (:func:`add_host_arguments`, :func:`host_from_args`,
:func:`explain_from_args`) are shared with ``qemu-evmcs explain``.
"""

from __future__ import annotations

import argparse
import sys
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.policy.explain import HostExplanation, MsrView, explain_host
from qemu_evmcs.qemu.attribution import LAYER_FILTER
from qemu_evmcs.output.jsonout import print_json
from qemu_evmcs.core.msrval import hex64
from qemu_evmcs.core.profile import HostProfile, load_profile, require_profile_path
from qemu_evmcs.cli.designarg import add_design_argument

if TYPE_CHECKING:
    from typing import Any


def add_host_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every per-host question takes: ``--host``, ``--kernel``, eVMCS and ABI switches, ``--json``."""
    parser.add_argument("--host", required=True, metavar="FILE",
                        help="host profile (YAML path, or the name of a bundled sample such as skylake-6.3)")
    parser.add_argument("--kernel", metavar="REL", help="override the profile's kernel release (e.g. 6.1.55)")
    parser.add_argument("--no-evmcs", dest="evmcs", action="store_false",
                        help="do not enable eVMCS (no hv-evmcs): show KVM's unfiltered nested view")
    parser.add_argument("--pv-perf-global-ctrl", action="store_true",
                        help="set the guest's CPUID 0x4000000A.EBX bit 0 (QEMU never does; 6.1+ honours it)")
    add_design_argument(parser, what="the KVM eVMCS ABI design (revision: KVM_CAP_HYPERV_ENLIGHTENED_VMCS2, "
                                     "latest revision; vmx-msrs: KVM_GET_EVMCS_VMX_MSRS)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def host_from_args(args: argparse.Namespace) -> HostProfile:
    """Load ``--host`` (path or bundled name) and apply ``--kernel``.

    :raise InputError: unreadable or invalid profile, or a bad ``--kernel`` (exit 2).
    """
    profile = load_profile(require_profile_path(args.host))
    for line in profile.warnings:   # raw-dump quirks accepted under cpu_msrs: said, as for host show/import
        sys.stderr.write(f"warning: {line}\n")
    if args.kernel is not None:
        profile = profile.with_kernel(args.kernel)
    return profile


def explain_from_args(args: argparse.Namespace) -> HostExplanation:
    """:func:`~qemu_evmcs.policy.explain.explain_host` for the parsed options."""
    return explain_host(host_from_args(args), evmcs=args.evmcs, pv_perf_global_ctrl=args.pv_perf_global_ctrl,
                        variant=args.design)


def header_lines(exp: HostExplanation) -> list[str]:
    """Who and what was asked: host, kernel, era, eVMCS, the PV CPUID bit and the design."""
    src = f" ({exp.source})" if exp.source else ""
    perf = ("set (--pv-perf-global-ctrl)" if exp.pv_perf_global_ctrl else "clear (as QEMU leaves it)")
    return [
        f"host {exp.host}{src}",
        (f"kernel {exp.kernel}, eVMCS era {exp.era}, eVMCS {'on' if exp.evmcs else 'off'}, "
         f"guest CPUID 0x4000000A.EBX bit 0 {perf}, design {exp.variant}"),
    ]


def _removed_text(view: MsrView) -> str:
    return ", ".join(r.label() if r.layer == LAYER_FILTER else f"{r.label()} ({r.layer})" for r in view.removed)


def render_table(exp: HostExplanation) -> str:
    """The text form: one row per MSR, host and guest values side by side, removed features named."""
    rows = [("MSR", "index", "host value", "guest value", "removed features")]
    for v in exp.msrs:
        guest = hex64(v.guest) if v.emulated else "not emulated"
        mark = "" if not v.changed else " *"
        rows.append((v.name + mark, f"{v.index:#x}", hex64(v.host), guest, _removed_text(v)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = header_lines(exp) + [""]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + ("  " + r[4] if r[4] else ""))
    changed = sum(1 for v in exp.msrs if v.changed)
    lines += ["", f"{changed} of {len(exp.msrs)} MSRs read differently by the guest (marked *)"]
    if exp.filter_at == "enable":
        lines.append("host value = KVM_GET_MSRS before eVMCS is enabled; afterwards host reads equal the guest "
                     "column (enable-time sanitization)")
    if exp.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in exp.notes]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """``qemu-evmcs guest-msrs``."""
    exp = explain_from_args(args)
    if args.json:
        print_json(exp.guest_msrs_json())
    else:
        print(render_table(exp), end="")
    return 0


def register(subparsers: Any) -> None:
    """Add ``guest-msrs`` to the ``qemu-evmcs`` parser."""
    parser = subparsers.add_parser(
        "guest-msrs", help="VMX MSRs an L1 guest reads on a host (eVMCS filter of the kernel's era applied)",
        description="The VMX capability MSRs an L1 guest reads with every feature KVM reports exposed "
                    "(like QEMU -cpu host), eVMCS on unless --no-evmcs, next to what KVM reports.")
    add_host_arguments(parser)
    parser.set_defaults(func=run)
