"""``qemu-evmcs host``: import, show and probe host profiles.

- ``host import FILE``: build a profile from QEMU ``scripts/kvm/vmxcap`` output or an rdmsr-style dump
  (format autodetected; see :mod:`qemu_evmcs.hostio.vmxcap` and :mod:`qemu_evmcs.hostio.rdmsr`);
- ``host show FILE|SAMPLE``: print a profile as YAML, JSON or vmxcap text;
- ``host probe``: read the running machine through ``/dev/kvm`` (:mod:`qemu_evmcs.hostio.probe`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from qemu_evmcs.core.typecheck import TYPE_CHECKING

import yaml

from qemu_evmcs.hostio import guestview
from qemu_evmcs.hostio import probe as probe_mod
from qemu_evmcs.core.errors import ProbeError
from qemu_evmcs.kvm.simkvm import guest_view
from qemu_evmcs.hostio import rdmsr
from qemu_evmcs.hostio import cpuiddump, cpuinfo, libvirt_caps, vmxcap
from qemu_evmcs.qemu.models import load_snapshot
from qemu_evmcs.hostio.paste import clean_paste
from qemu_evmcs.output.atomicio import write_text_file
from qemu_evmcs.core.enumeration import missing_msrs
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.inputfile import decode_utf8, read_capped
from qemu_evmcs.core.kernel import parse_release
from qemu_evmcs.core.profile import (
    MAX_PROFILE_BYTES,
    VENDORS,
    HostProfile,
    load_profile_text,
    profile_from_mapping,
    require_profile_path,
)

if TYPE_CHECKING:
    from typing import Any

FORMATS = ("yaml", "json", "vmxcap")


# --------------------------------------------------------------------------- helpers others may call

def read_input_text(path: str) -> str:
    """A text input file, with one-line errors for missing, oversized, binary, non-UTF-8 or empty files."""
    data = read_capped(path, MAX_PROFILE_BYTES)
    if b"\x00" in data:
        raise InputError("binary file (contains NUL bytes), expected text", file=path)
    text = decode_utf8(data, path)
    if not text.strip():
        raise InputError("empty file", file=path)
    return text


def detect_format(text: str) -> str:
    """``vmxcap`` or ``rdmsr``."""
    return "vmxcap" if vmxcap.looks_like_vmxcap(text) else "rdmsr"


def import_text(text: str, *, file: str, name: str | None = None, kernel: str | None = None,
                vendor: str | None = None, partial: bool = False) -> tuple[HostProfile, str]:
    """Build a validated profile from vmxcap or rdmsr text; returns (profile, detected format).

    ``name``/``kernel``/``vendor`` override ``# name:`` style metadata comments in the input. Forum-paste
    debris (prompt lines, fences, quoting, odd spaces, lost indentation) is ignored.

    :raise InputError: also when the input lacks an MSR the CPU enumerates (a paste cut short), unless
        ``partial``: the profile then lists them as ``unknown_msrs``.
    """
    text = clean_paste(text)
    fmt = detect_format(text)
    msrs = vmxcap.parse(text, file=file) if fmt == "vmxcap" else rdmsr.parse(text, file=file)
    missing = missing_msrs(msrs)
    meta = rdmsr.parse_metadata(text)
    name = name or meta.get("name")
    kernel = kernel or meta.get("kernel")
    vendor = vendor or meta.get("vendor")
    if not name and not kernel:   # both at once: one try, not two (vmxcap output carries neither)
        raise InputError("no host name and no kernel release in the input; pass --name and --kernel "
                         "(e.g. --kernel 6.1.55)", file=file)
    if not name:
        raise InputError("no host name in the input; pass --name", file=file)
    if not kernel:
        raise InputError("no kernel release in the input; pass --kernel (e.g. --kernel 6.1.55)", file=file)
    parse_release(kernel, key="--kernel")
    if vendor is None:
        if not msrs:
            raise InputError("no VMX MSRs and no vendor in the input; pass --vendor", file=file)
        vendor = "GenuineIntel"  # VMX capability MSRs exist only on Intel (and Centaur/Zhaoxin) CPUs
    if vendor not in VENDORS:
        raise InputError(f"unknown vendor {vendor!r} (known: {', '.join(VENDORS)})", key="--vendor")
    data: dict[str, Any] = {
        "name": name, "vendor": vendor, "kernel": kernel,
        "msrs": {n: f"0x{v:016x}" for n, v in msrs.items()},
        "provenance": f"imported from {os.path.basename(file)} ({fmt} format) by qemu-evmcs host import",
    }
    if meta.get("model_name"):
        data["model_name"] = meta["model_name"]
    if missing:
        data["unknown_msrs"] = [m.msr for m in missing]
    if fmt == "vmxcap":
        data["notes"] = ("vmxcap shows no raw control values: allowed-0/allowed-1 were rebuilt from the "
                         "yes/no/forced/default words; CR0/CR4 fixed and VMCS_ENUM are not in vmxcap output")
    profile = profile_from_mapping(data, file=file)   # the values themselves first: a bad value is the news
    if missing and not partial:
        raise InputError("the input lacks MSRs this CPU enumerates (a paste cut short?): "
                         + "; ".join(m.text() for m in missing)
                         + ". Paste the whole output, or pass --partial to import it with these MSRs unknown",
                         file=file, msr=missing[0].msr)
    return profile, fmt


def profile_yaml(profile: HostProfile) -> str:
    """The profile as a YAML document."""
    return str(yaml.safe_dump(profile.to_mapping(), sort_keys=False, width=110))


def format_profile(profile: HostProfile, fmt: str) -> str:
    """``yaml``, ``json`` or ``vmxcap`` text of a profile."""
    if fmt == "yaml":
        return profile_yaml(profile)
    if fmt == "json":
        return json.dumps(profile.to_mapping(), indent=2) + "\n"
    if fmt == "vmxcap":
        return vmxcap.render_profile(profile)
    raise InputError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})", key="--format")


def write_atomic(path: str, text: str, *, force: bool = False) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and ``os.replace``.

    Kept under this name for callers of ``commands.host``; the one implementation is
    :func:`qemu_evmcs.output.atomicio.write_text_file`.

    :raise InputError: if ``path`` exists and ``force`` is false, or the directory is not writable.
    """
    write_text_file(path, text, force=force)


def _emit(text: str, out: str | None, force: bool) -> None:
    if out is not None and out != "-":      # "" too: the writer refuses an empty path rather than print
        write_atomic(out, text, force=force)
    else:
        sys.stdout.write(text)


# --------------------------------------------------------------------------- commands

def cpu_features_from(path: str) -> tuple[frozenset[str], dict[str, Any]]:
    """CPUID features (QEMU names) and identification from /proc/cpuinfo text or libvirt capabilities XML."""
    text = read_input_text(path)
    if text.lstrip().startswith("<"):   # XML: libvirt's parser decides (and names a wrong root element)
        lv = libvirt_caps.parse(text, file=path)
        ident: dict[str, Any] = {"vendor": lv.vendor, "family": lv.family, "model": lv.model_number,
                                 "stepping": lv.stepping}
        if not lv.model_known:
            raise InputError(f"libvirt model {lv.model!r} is not in the QEMU {load_snapshot().version} snapshot: "
                             f"its features cannot be told", file=path)
        return lv.features, ident
    if cpuinfo.looks_like_cpuinfo(text):
        ci = cpuinfo.parse(text, file=path)
        return ci.features, {"vendor": ci.vendor, "family": ci.family, "model": ci.model, "stepping": ci.stepping,
                             "model_name": ci.model_name}
    raise InputError("neither /proc/cpuinfo output nor libvirt capabilities/domcapabilities XML", file=path)


def with_cpu_features(profile: HostProfile, path: str) -> HostProfile:
    """``profile`` with ``cpu_features`` (and missing identification) from ``path`` (cpuinfo or libvirt XML)."""
    feats, ident = cpu_features_from(path)
    vendor = ident.get("vendor")
    if vendor is not None and vendor != profile.vendor:
        # Another host's file: its CPUID would silently become this host's (the same host names the same vendor).
        raise InputError(f"CPU vendor {vendor} there, but the profile {profile.name} is {profile.vendor}: "
                         f"not the same host's file?", file=path)
    extra = {key: value for key, value in ident.items() if value is not None and getattr(profile, key) is None}
    return _with_cpuid_data(profile, feats, extra, f"cpu_features from {os.path.basename(path)}")


def with_cpuid_dump(profile: HostProfile, path: str) -> HostProfile:
    """``profile`` with ``cpu_features`` decoded from a bare-metal CPUID dump at ``path`` and the leaves read
    (``cpuid:``, the decoded ones only), so the profile shows what its features came from."""
    leaves = cpuiddump.decoded_leaves(cpuiddump.parse(read_input_text(path), file=path))
    return _with_cpuid_data(profile, cpuiddump.features(leaves), {"cpuid": cpuiddump.leaf_lines(leaves)},
                            f"cpu_features from the CPUID dump {os.path.basename(path)}")


def _with_cpuid_data(profile: HostProfile, feats: frozenset[str], extra: dict[str, Any], note: str) -> HostProfile:
    """``profile`` with ``cpu_features`` replaced by ``feats``, the ``extra`` keys set and ``note`` appended to
    its provenance, validated again as a whole."""
    data = {**profile.to_mapping(), **extra, "cpu_features": sorted(feats)}
    data["provenance"] = f"{data['provenance']}; {note}" if data.get("provenance") else note
    return profile_from_mapping(data, file=profile.source)


def _add_cpu_features(profile: HostProfile, args: argparse.Namespace) -> HostProfile:
    for extra in (args.cpuinfo, args.libvirt):
        if extra:
            profile = with_cpu_features(profile, extra)
    if args.cpuid_dump:
        profile = with_cpuid_dump(profile, args.cpuid_dump)
    return profile


def cmd_import(args: argparse.Namespace) -> int:
    """``host import``."""
    if args.update:
        if args.file or not (args.cpuinfo or args.libvirt or args.cpuid_dump):
            raise InputError("--update PROFILE takes --cpuinfo FILE, --libvirt FILE or --cpuid-dump FILE and no dump",
                             key="--update")
        profile = _add_cpu_features(load_profile_text(read_input_text(args.update), args.update), args)
        _warn(profile)
        _emit(profile_yaml(profile), args.output, args.force)
        return 0
    if not args.file:
        raise InputError("give a vmxcap/rdmsr dump FILE (or --update PROFILE)", key="FILE")
    path: str = args.file
    text = read_input_text(path)
    profile, _ = import_text(text, file=path, name=args.name, kernel=args.kernel, vendor=args.vendor,
                             partial=args.partial)
    profile = _add_cpu_features(profile, args)
    _warn(profile)
    if profile.unknown_msrs:
        sys.stderr.write(f"warning: {path}: imported with --partial: {', '.join(profile.unknown_msrs)} unknown; "
                         f"answers that depend on them will say so\n")
    _emit(profile_yaml(profile), args.output, args.force)
    return 0


def _warn(profile: HostProfile) -> None:
    """The loader's warnings (raw-dump quirks accepted under ``cpu_msrs``) on stderr: accepted, not unseen."""
    for line in profile.warnings:
        sys.stderr.write(f"warning: {line}\n")


def cmd_show(args: argparse.Namespace) -> int:
    """``host show``."""
    path = require_profile_path(args.file)
    profile = load_profile_text(read_input_text(path), path)
    _warn(profile)
    sys.stdout.write(format_profile(profile, args.format))
    return 0


def cmd_guest_view(args: argparse.Namespace) -> int:
    """``host probe --guest-view``: run a real guest through /dev/kvm, read its VMX MSRs, compare with the
    simulation. Exit 1 (one line) where this KVM cannot run a guest or has no eVMCS; 0 once probed (the
    differences are the report)."""
    device = probe_mod.kvm_device(args.device)
    try:
        test = guestview.self_test(device)
    except ProbeError as err:
        raise ProbeError(f"cannot run a KVM guest on {device}: {err.message}") from None
    views = [guestview.probe_guest_view(device, pv_perf_global_ctrl=pv) for pv in (False, True)]
    profile = probe_mod.probe(device, name=args.name).profile
    lines = [f"guest runner: CPUID leaf 0 and RDMSR {test.msr_index:#x} = {test.guest_msr:#x} read in the guest "
             f"(KVM_GET_MSRS: {test.host_msr if test.host_msr is None else hex(test.host_msr)})"]
    doc: dict[str, Any] = {"device": device, "kernel": profile.kernel, "kernel_version": profile.kernel_version,
                           "candidates": []}
    for cand in profile.candidate_profiles():
        pairs = [(v, guestview.compare(v, guest_view(cand, pv_perf_global_ctrl=v.pv_perf_global_ctrl)))
                 for v in views]
        lines += guestview.report_lines(pairs, cand.era.id, profile.kernel)
        doc["candidates"].append({"era": cand.era.id, "matches": not any(d for _, d in pairs),
                                  "differences": [{"pv_perf_global_ctrl": v.pv_perf_global_ctrl,
                                                   "msr": d.msr, "probed": d.probed, "simulated": d.simulated,
                                                   "only_probed": list(d.only_probed),
                                                   "only_simulated": list(d.only_simulated)}
                                                  for v, ds in pairs for d in ds]})
    doc["views"] = [{"pv_perf_global_ctrl": v.pv_perf_global_ctrl, "evmcs_version": v.evmcs_version,
                     "msrs": {k: f"{x:#018x}" for k, x in v.msrs.items()}, "faults": v.faults} for v in views]
    text = json.dumps(doc, indent=2) + "\n" if args.json else "\n".join(lines) + "\n"
    _emit(text, args.output, args.force)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """``host probe``."""
    if args.guest_view:
        return cmd_guest_view(args)
    result = probe_mod.probe(args.device, name=args.name)
    if args.json:
        text = json.dumps(result.to_mapping(), indent=2) + "\n"
    else:
        text = profile_yaml(result.profile)
    _emit(text, args.output, args.force)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``host`` and its sub-commands."""
    host = subparsers.add_parser("host", help="import, show and probe host profiles",
                                 description="Host profiles: what KVM reports on one host.")
    sub = host.add_subparsers(dest="host_command", metavar="ACTION", parser_class=type(host))
    sub.required = True

    p = sub.add_parser("import", help="build a profile from vmxcap output or an rdmsr-style dump",
                       description="Build a host profile from QEMU scripts/kvm/vmxcap output or an rdmsr-style "
                                   "dump (0x481 0x7f00000016 / 481: 7f00000016 / msr[481] = 7f`00000016 / "
                                   "markdown table). The format is detected automatically.")
    p.add_argument("file", metavar="FILE", nargs="?", help="vmxcap output or an rdmsr-style dump")
    p.add_argument("--name", help="profile name (required unless the input has a '# name:' line)")
    p.add_argument("--kernel", metavar="REL", help="kernel release, e.g. 6.1.55 (required unless in the input)")
    p.add_argument("--vendor", metavar="V", help=f"CPU vendor ({', '.join(VENDORS)}); default GenuineIntel")
    p.add_argument("-o", "--output", metavar="OUT", help="write the profile here (atomically) instead of stdout")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("--cpuinfo", metavar="PATH",
                   help="add cpu_features (CPUID, QEMU names) from /proc/cpuinfo output of the same host")
    p.add_argument("--libvirt", metavar="XML",
                   help="add cpu_features from `virsh capabilities` or `virsh domcapabilities` (host-model) XML")
    p.add_argument("--cpuid-dump", metavar="FILE",
                   help="add cpu_features from a bare-metal CPUID dump of the same CPU (AIDA64/InstLatx64 "
                        "'CPUID 00000007: EAX-EBX-ECX-EDX' lines or a VirtualBox CPU database .h file)")
    p.add_argument("--update", metavar="PROFILE",
                   help="add --cpuinfo/--libvirt/--cpuid-dump cpu_features to an existing profile instead of "
                        "importing a dump")
    p.add_argument("--partial", action="store_true",
                   help="import a dump that lacks MSRs the CPU enumerates; the profile lists them as unknown")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("show", help="print a profile as yaml, json or vmxcap text",
                       description="Print a host profile (a path or a bundled sample name such as skylake-5.10).")
    p.add_argument("file", metavar="FILE", help="profile path or bundled sample name")
    p.add_argument("--format", choices=FORMATS, default="yaml", help="output format (default: yaml)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("probe", help="read this machine's KVM (/dev/kvm) into a profile",
                       description="Read the VMX capability MSRs KVM reports on this machine (system-fd "
                                   "ioctls). Fails with exit 1 on hosts without Intel VMX, without nested, "
                                   "or without /dev/kvm access.")
    p.add_argument("--device", metavar="PATH",
                   help=f"KVM device (default: ${probe_mod.DEVICE_ENV} or {probe_mod.DEFAULT_DEVICE})")
    p.add_argument("--name", help="profile name (default: this host's node name)")
    p.add_argument("--json", action="store_true", help="print JSON with the profile and the raw probe data")
    p.add_argument("--guest-view", action="store_true",
                   help="run a real guest through /dev/kvm with VMX, Hyper-V CPUID and eVMCS enabled, read "
                        "0x480-0x491 in it (0x4000000A.EBX bit 0 clear and set) and compare with the simulation")
    p.add_argument("-o", "--output", metavar="OUT", help="write here (atomically) instead of stdout")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=cmd_probe)
