"""A negotiation as libvirt domain XML that the targeted libvirt accepts and QEMU applies in full.

What libvirt gets, and why:

- ``<cpu mode='custom' match='exact'><model fallback='forbid'>NAME</model>`` where NAME is a libvirt
  ``cpu_map`` model (:mod:`qemu_evmcs.qemu.libvirt_cpumap`): QEMU's versioned models have no libvirt name
  (libvirt 9.0: ``Unknown CPU model Skylake-Server-v5``), so the closest libvirt model is named and the CPUID
  differences are stated as ``<feature policy='require|disable'/>``. QEMU's ``max`` is
  ``<cpu mode='maximum'>``; ``host`` is ``<cpu mode='host-passthrough'>``.
- vmx-* decisions (relative to NAME's defaults) under libvirt's names **only** where that libvirt's cpu_map
  knows them (libvirt 9.0: ``unknown CPU feature: vmx-preemption-timer``). The rest go to QEMU directly:
  ``<qemu:commandline>`` with ``-global TYPE.vmx-X=on|off`` where TYPE is QEMU's QOM type of the CPU
  (``Skylake-Server-noTSX-IBRS-x86_64-cpu``): a default for every CPU of that type, set before the CPU is
  created; the ``-cpu`` line libvirt builds never names these properties, so nothing overrides them. An XML
  comment says so in the output.
- ``<features><hyperv mode='custom'>`` for hv-* (``mode='passthrough'`` for ``hv-passthrough``), hv-crash as
  ``<panic model='hyperv'/>``; hv-time is a ``<timer name='hypervclock' present='yes'/>`` that belongs in the
  domain's own ``<clock>``, whose ``offset`` is the domain's choice: the standalone fragment names it in a
  comment, ``--merge`` adds the timer to the domain's ``<clock>`` (creating ``<clock offset='utc'>``, libvirt's
  default, only when there is none).
- Options no libvirt element and no real QEMU has (the proposed ``hv-evmcs-perf-global-ctrl``,
  ``x-hv-evmcs-revision``) are listed in a leading comment, never emitted.

:func:`merge_domain` edits an existing domain XML: it replaces ``<cpu>``, puts the ``<hyperv>`` block into the
domain's ``<features>`` (keeping ``<acpi/>``, ``<apic/>`` and the rest), adds the timer and the panic device
if missing, and appends its ``-global`` arguments to the domain's ``<qemu:commandline>`` (replacing earlier
``-global`` arguments for the same CPU properties). Everything else, comments included, stays as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from qemu_evmcs.core.typecheck import TYPE_CHECKING, cast

from qemu_evmcs.core import lazy

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.registry import Registry, registry
from qemu_evmcs.hostio.libvirt_caps import refuse_dtd
from qemu_evmcs.policy.negotiate import PERF_OPTION, Negotiation, target_properties
from qemu_evmcs.qemu.libvirt_cpumap import CpuMap, libvirt_model, load_cpu_map
from qemu_evmcs.qemu.cpuprops import hv_sorted, vmx_prop_changes
from qemu_evmcs.qemu.models import load_snapshot, qemu_props_to_features

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET
else:   # only when XML is written or merged; a text or -cpu answer needs none (core/lazy.py)
    ET = lazy.proxy("xml.etree.ElementTree")

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"

#: hv-* flag -> libvirt <hyperv> child.
LIBVIRT_HV: Mapping[str, str] = {
    "hv-relaxed": "relaxed", "hv-vapic": "vapic", "hv-vpindex": "vpindex", "hv-runtime": "runtime",
    "hv-synic": "synic", "hv-stimer": "stimer", "hv-reset": "reset", "hv-frequencies": "frequencies",
    "hv-reenlightenment": "reenlightenment", "hv-tlbflush": "tlbflush", "hv-ipi": "ipi", "hv-evmcs": "evmcs",
    "hv-avic": "avic", "hv-apicv": "avic", "hv-emsr-bitmap": "emsr_bitmap", "hv-xmm-input": "xmm_input",
}
#: Flags libvirt expresses as a sub-element of another <hyperv> child.
LIBVIRT_HV_SUB: Mapping[str, tuple[str, str]] = {
    "hv-tlbflush-direct": ("tlbflush", "direct"), "hv-tlbflush-ext": ("tlbflush", "extended"),
    "hv-stimer-direct": ("stimer", "direct"),
}
HYPERVCLOCK = "hypervclock"


@dataclass
class Fragment:
    """The pieces of the libvirt XML for one negotiation (see the module docstring)."""

    cpu: ET.Element
    hyperv: ET.Element
    hv_time: bool = False
    panic: bool = False
    #: ``-global`` values (``TYPE.prop=on|off``) for what the cpu_map cannot name.
    globals: list[str] = field(default_factory=list)
    #: QEMU's CPU type the ``-global`` arguments address.
    cpu_type: str = ""
    #: Options with no libvirt element and no real QEMU property.
    unexpressible: list[str] = field(default_factory=list)
    cmap_version: str = ""

    def globals_comment(self) -> str:
        who = "the installed libvirt" if self.cmap_version == "installed" else f"libvirt {self.cmap_version}"
        return (f" {who}'s cpu_map has no name for these CPU properties: QEMU gets them as "
                f"-global {self.cpu_type}.PROP=on|off, the default of every CPU of that type, set before the vCPU "
                f"is created; the -cpu line libvirt builds never names them, so nothing overrides these. ")


def _feature(cpu: ET.Element, name: str, on: bool) -> None:
    ET.SubElement(cpu, "feature", {"policy": "require" if on else "disable", "name": name})


def build_fragment(neg: Negotiation, cmap: CpuMap | None = None, reg: Registry | None = None) -> Fragment:
    """Decide every element of the libvirt XML for a successful negotiation."""
    reg = reg or registry()
    cmap = cmap or load_cpu_map()
    assert neg.ok and neg.config is not None
    cfg = neg.config
    globals_: list[str] = []
    snap = load_snapshot()
    if cfg.base in ("max", "host"):
        mode = "maximum" if cfg.base == "max" else "host-passthrough"
        cpu = ET.Element("cpu", {"mode": mode, "migratable": "on" if cfg.base == "max" else "off"})
        cpu_type = f"{cfg.base}-x86_64-cpu"
        base_vmx = neg.model.base_vmx
        cpuid_changes: list[tuple[str, bool]] = []
    else:
        lm = libvirt_model(cfg.base, snap, cmap)
        cpu = ET.Element("cpu", {"mode": "custom", "match": "exact"})
        ET.SubElement(cpu, "model", {"fallback": "forbid"}).text = lm.name
        cpu_type = lm.typename
        base_vmx = qemu_props_to_features(lm.vmx_props, reg)
        cpuid_changes = [(f, True) for f in lm.require] + [(f, False) for f in lm.disable]
    _feature(cpu, "vmx", True)
    unknown_to_qemu: list[str] = []
    vmx_changes = vmx_prop_changes(cfg.vmx, base_vmx, reg, settable=target_properties(neg.target, reg))
    cpuid_changes += [(flag, False) for flag in cfg.cpuid_off]   # base-model CPUID flags a host lacks
    for name, on in [*cpuid_changes, *vmx_changes]:
        # A QEMU property controlling two bits (QEMU's misspelt INVEPT names) is two libvirt features.
        bits = reg.qemu_bits(name)
        lv_names = [b.libvirt for b in bits] if bits else [cmap.feature(name)]
        if lv_names and all(n is not None and n in cmap.features for n in lv_names):
            for n in lv_names:
                _feature(cpu, str(n), on)
        elif snap.knows_property(name):
            globals_.append(f"{cpu_type}.{name}={'on' if on else 'off'}")
        else:
            unknown_to_qemu.append(f"{name}={'on' if on else 'off'} (not a property of QEMU {snap.version})")
    frag = Fragment(cpu=cpu, hyperv=ET.Element("hyperv", {"mode": "custom"}), globals=globals_, cpu_type=cpu_type,
                    cmap_version=cmap.version, unexpressible=unknown_to_qemu)
    children: dict[str, ET.Element] = {}
    for flag in hv_sorted(cfg.hyperv):
        if flag == "hv-passthrough":
            frag.hyperv.set("mode", "passthrough")
        elif flag in LIBVIRT_HV:
            tag = LIBVIRT_HV[flag]
            if tag not in children:
                children[tag] = ET.SubElement(frag.hyperv, tag, {"state": "on"})
        elif flag in LIBVIRT_HV_SUB:
            parent, sub = LIBVIRT_HV_SUB[flag]
            if parent not in children:
                children[parent] = ET.SubElement(frag.hyperv, parent, {"state": "on"})
            ET.SubElement(children[parent], sub, {"state": "on"})
        elif flag == "hv-time":
            frag.hv_time = True
        elif flag == "hv-crash":
            frag.panic = True
        else:
            frag.unexpressible.append(f"{flag}=on")
    if frag.hyperv.get("mode") == "passthrough":
        for child in list(frag.hyperv):
            frag.hyperv.remove(child)
    if cfg.pv_perf_global_ctrl:
        frag.unexpressible.append(f"{PERF_OPTION}=on (CPUID 0x4000000A.EBX bit 0; no libvirt element, no real "
                                  f"QEMU option)")
    if neg.target == "simulator" and cfg.design == "revision" and cfg.revision is not None:
        frag.unexpressible.append(f"x-hv-evmcs-revision={cfg.revision} (never shipped)")
    return frag


def _comment(text: str) -> ET.Element:
    return cast(ET.Element, ET.Comment(text.replace("--", "- -")))


def _tostring(elem: ET.Element) -> str:
    """``ET.tostring`` with libvirt's ``qemu:`` prefix for :data:`QEMU_NS` (registered here, not at import:
    ElementTree is imported only when XML is written or merged)."""
    ET.register_namespace("qemu", QEMU_NS)
    return ET.tostring(elem, encoding="unicode")


def _text(elem: ET.Element) -> str:
    ET.indent(elem, space="  ")
    return _tostring(elem)


def _commandline(frag: Fragment) -> ET.Element:
    cmd = ET.Element(f"{{{QEMU_NS}}}commandline")
    cmd.append(_comment(frag.globals_comment()))
    for value in frag.globals:
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": "-global"})
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": value})
    return cmd


def libvirt_xml(neg: Negotiation, cmap: CpuMap | None = None, reg: Registry | None = None) -> str:
    """The standalone fragment: ``<cpu>``, ``<features>``, ``<devices>`` (hv-crash) and ``<qemu:commandline>``."""
    frag = build_fragment(neg, cmap, reg)
    out: list[str] = []
    if frag.unexpressible:
        out.append(_tostring(_comment(" not expressible in libvirt XML, pass to QEMU directly: "
                                         + "; ".join(frag.unexpressible) + " ")))
    out.append(_text(frag.cpu))
    features = ET.Element("features")
    features.append(frag.hyperv)
    out.append(_text(features))
    if frag.hv_time:
        out.append(_tostring(_comment(f" hv-time: add <timer name='{HYPERVCLOCK}' present='yes'/> to the domain's "
                                        "<clock> (the merge option of negotiate does that) ")))
    if frag.panic:
        devices = ET.Element("devices")
        ET.SubElement(devices, "panic", {"model": "hyperv"})
        out.append(_text(devices))
    if frag.globals:
        out.append(_text(_commandline(frag)))
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------- --merge

def _insert(parent: ET.Element, elem: ET.Element, after: Sequence[str]) -> None:
    """Insert ``elem`` after the last child of ``parent`` whose tag is in ``after`` (else at the end)."""
    idx = len(parent)
    for i, child in enumerate(parent):
        if child.tag in after:
            idx = i + 1
    parent.insert(idx, elem)


def merge_domain(text: str, neg: Negotiation, *, source: str = "DOMAIN.xml", cmap: CpuMap | None = None,
                 reg: Registry | None = None) -> str:
    """``text`` (a ``<domain>``) with the negotiation merged in (see the module docstring).

    :raise InputError: a DOCTYPE/ENTITY declaration, not well-formed XML, or the root is not ``<domain>``.
    """
    refuse_dtd(text, file=source)
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    try:
        root = ET.fromstring(text, parser=parser)
    except ET.ParseError as err:
        line = err.position[0] if err.position else None
        raise InputError(f"not well-formed XML: {err}", file=source, line=line) from None
    if root.tag != "domain":
        raise InputError(f"root element is <{root.tag}>, not <domain>", file=source)
    frag = build_fragment(neg, cmap, reg)
    old_cpu = root.find("cpu")
    if old_cpu is not None:
        # Keep libvirt settings that are not the CPU model: topology, NUMA, cache.
        for keep in ("topology", "numa", "cache", "maxphysaddr"):
            for child in old_cpu.findall(keep):
                frag.cpu.append(child)
        root.insert(list(root).index(old_cpu), frag.cpu)
        root.remove(old_cpu)
    else:
        _insert(root, frag.cpu, ("os", "features", "vcpu", "memory", "currentMemory"))
    features = root.find("features")
    if features is None:
        features = ET.Element("features")
        _insert(root, features, ("os",))
    old_hv = features.find("hyperv")
    if old_hv is not None:
        features.insert(list(features).index(old_hv), frag.hyperv)
        features.remove(old_hv)
    else:
        features.append(frag.hyperv)
    if frag.hv_time:
        clock = root.find("clock")
        if clock is None:
            clock = ET.Element("clock", {"offset": "utc"})   # libvirt's default offset: nothing changes
            _insert(root, clock, ("cpu", "features"))
        for timer in clock.findall("timer"):
            if timer.get("name") == HYPERVCLOCK:
                clock.remove(timer)
        ET.SubElement(clock, "timer", {"name": HYPERVCLOCK, "present": "yes"})
    if frag.panic:
        devices = root.find("devices")
        if devices is None:
            devices = ET.SubElement(root, "devices")
        if not any(p.get("model") == "hyperv" for p in devices.findall("panic")):
            ET.SubElement(devices, "panic", {"model": "hyperv"})
    if frag.globals:
        _merge_globals(root, frag)
    if frag.unexpressible:
        root.insert(0, _comment(" not expressible in libvirt XML, pass to QEMU directly: "
                                + "; ".join(frag.unexpressible) + " "))
    ET.indent(root, space="  ")
    return _tostring(root) + "\n"


def _merge_globals(root: ET.Element, frag: Fragment) -> None:
    """Append our ``-global`` pairs to the domain's ``<qemu:commandline>``, dropping earlier ones for the same
    CPU type and property (re-merging replaces rather than piles up)."""
    cmd = root.find(f"{{{QEMU_NS}}}commandline")
    if cmd is None:
        cmd = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    ours = {g.split("=", 1)[0] for g in frag.globals}
    for child in list(cmd):
        if cast(object, child.tag) is ET.Comment and "cpu_map has no name for these CPU properties" in str(child.text):
            cmd.remove(child)   # our previous explanation: re-merging replaces it
    args = list(cmd)
    i = 0
    while i < len(args):
        a = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if (a.tag == f"{{{QEMU_NS}}}arg" and a.get("value") == "-global" and nxt is not None
                and str(nxt.get("value", "")).split("=", 1)[0] in ours):
            cmd.remove(a)
            cmd.remove(nxt)
            i += 2
            continue
        i += 1
    cmd.append(_comment(frag.globals_comment()))
    for value in frag.globals:
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": "-global"})
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": value})
