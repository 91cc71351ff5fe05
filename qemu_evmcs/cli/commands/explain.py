"""``qemu-evmcs explain``: per VMX feature, can the L1 guest see it, and if not, which layer hides it.

Layers (checked in this order): ``cpu`` (the hardware lacks it; needs
``cpu_msrs`` in the profile), ``not-emulated`` (IA32_VMX_PROCBASED_CTLS3),
``kvm`` (KVM does not report it), ``evmcs-filter`` (the eVMCS filter of the
kernel's era, with the Linux mask name) and ``perf-cpuid-gate`` (6.1+:
PERF_GLOBAL_CTRL needs the guest's CPUID 0x4000000A.EBX bit 0, which QEMU
never sets), ``qemu`` (QEMU never writes it into the guest's MSRs: no property, not a
field it copies from KVM). ``--json`` prints one object::

    {"host", "kernel", "era", "evmcs", "pv_perf_global_ctrl",
     "features": [{"name", "qemu", "msr", "bit", "visible", "layer", "reason"}, ...]}

``bit`` is the registry bit: the control bit for control MSRs (allowed-1 bit
``bit + 32`` of ``msr``), as QEMU's warnings print it. ``--feature NAME``
(canonical, QEMU, libvirt or Linux spelling) narrows the answer; an unknown
name gets the closest known names as a suggestion and exit 2.
"""

from __future__ import annotations

import argparse
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.policy.explain import FeatureExplanation, HostExplanation, find_features
from qemu_evmcs.qemu.attribution import LAYERS
from qemu_evmcs.output.jsonout import print_json
from qemu_evmcs.cli.commands.guest_msrs import add_host_arguments, explain_from_args, header_lines
from qemu_evmcs.output.wrap import wrap

if TYPE_CHECKING:
    from typing import Any

#: One-line heading of each layer in the text form.
LAYER_TITLES = {
    "cpu": "the CPU lacks it",
    "not-emulated": "KVM does not emulate the MSR for L1",
    "kvm": "KVM does not report it",
    "evmcs-filter": "the eVMCS filter removes it",
    "perf-cpuid-gate": "the PERF_GLOBAL_CTRL CPUID gate (0x4000000A.EBX bit 0) hides it",
    "qemu": "QEMU never gives it to a guest (no QEMU property, not copied from KVM's value)",
}


def _names(fe: FeatureExplanation) -> str:
    other = [f"QEMU {fe.qemu}" if fe.qemu else "no QEMU property"]
    if fe.linux:
        other.append(f"Linux {fe.linux}")
    return f"{fe.name} ({', '.join(other)})"


def render_features(exp: HostExplanation, chosen: list[FeatureExplanation]) -> str:
    """Detailed text for a few features (``--feature``)."""
    lines = header_lines(exp) + [""]
    for fe in chosen:
        verdict = "visible to the guest" if fe.visible else f"hidden from the guest by layer {fe.layer}"
        lines += [_names(fe), f"  {fe.msr}, bit {fe.bit}: {verdict}",
                  *wrap(fe.reason, 100, initial_indent="  ", subsequent_indent="    ",
                        break_on_hyphens=False)]
    if exp.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in exp.notes]
    return "\n".join(lines) + "\n"


def render_all(exp: HostExplanation) -> str:
    """The full text form: hidden features grouped by layer, then the visible ones."""
    lines = header_lines(exp) + [""]
    hidden = exp.hidden()
    lines.append(f"hidden from the guest: {len(hidden)} of {len(exp.features)} features")
    for layer in LAYERS:
        group = exp.hidden(layer)
        if not group:
            continue
        lines.append(f"  [{layer}] {LAYER_TITLES[layer]} ({len(group)}):")
        for fe in group:
            lines += wrap(f"{fe.name}: {fe.reason}", 110, initial_indent="    ",
                          subsequent_indent="        ", break_on_hyphens=False)
    visible = exp.visible()
    lines.append(f"visible to the guest: {len(visible)} features")
    lines += wrap(" ".join(fe.name for fe in visible), 110, initial_indent="    ",
                  subsequent_indent="    ", break_on_hyphens=False)
    if exp.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in exp.notes]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """``qemu-evmcs explain``."""
    wanted = None
    if args.feature is not None:
        wanted = {f.name for f in find_features(args.feature)}  # bad name: exit 2 before any host work
    exp = explain_from_args(args)
    chosen = None if wanted is None else [fe for fe in exp.features if fe.name in wanted]
    if args.json:
        print_json(exp.explain_json(chosen))
    elif chosen is not None:
        print(render_features(exp, chosen), end="")
    else:
        print(render_all(exp), end="")
    return 0


def register(subparsers: Any) -> None:
    """Add ``explain`` to the ``qemu-evmcs`` parser."""
    parser = subparsers.add_parser(
        "explain", help="per VMX feature: visible to the L1 guest, or hidden and by which layer",
        description="For every VMX feature of the registry: can an L1 guest on this host use it, and if not, "
                    "which layer hides it (cpu, not-emulated, kvm, evmcs-filter, perf-cpuid-gate, qemu).")
    add_host_arguments(parser)
    parser.add_argument("--feature", metavar="NAME",
                        help="only this feature (canonical, QEMU, libvirt or Linux name)")
    parser.set_defaults(func=run)
