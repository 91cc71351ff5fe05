"""Read the host CPU from libvirt XML: ``virsh capabilities`` or ``virsh domcapabilities`` (host-model).

Why: libvirt already computed the host's CPU as a named model plus feature changes; sites keep this XML in their
inventories. libvirt names a model and lists features relative to it, so the full CPUID feature set is the QEMU
model's features (from the bundled QEMU 7.2 snapshot) plus the required/listed ones minus the disabled ones,
translated to QEMU's spelling (``data/cpuid.yaml`` ``libvirt_aliases``).

Parsed with the standard library's ``xml.etree`` after refusing any DOCTYPE or ENTITY declaration (defusedxml is
not a dependency): no entity expansion can happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core import lazy
from qemu_evmcs.core.cpuid import from_libvirt
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.qemu.models import load_snapshot

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET
else:   # only when libvirt's capabilities XML is read (core/lazy.py)
    ET = lazy.proxy("xml.etree.ElementTree")

_VENDORS = {"Intel": "GenuineIntel", "AMD": "AuthenticAMD", "Hygon": "HygonGenuine"}


@dataclass(frozen=True)
class LibvirtCpu:
    """The host CPU libvirt reports, features in QEMU's names."""

    source: str            # "capabilities" | "domcapabilities"
    model: str
    vendor: str | None
    family: int | None
    model_number: int | None
    stepping: int | None
    features: frozenset[str]
    model_known: bool      # the QEMU snapshot has ``model`` (else only the listed features are known)


def _int(el: ET.Element | None, attr: str) -> int | None:
    if el is None or el.get(attr) is None:
        return None
    try:
        return int(str(el.get(attr)))
    except ValueError:
        return None


def refuse_dtd(text: str, *, file: str | None = None) -> None:
    """The one rule for libvirt XML a user gives us (capabilities here, a domain for ``negotiate --merge``):
    no DOCTYPE or ENTITY declaration. libvirt never writes one, and expat would expand the entities (into the
    values read, or into the domain written back; expat's amplification limit only bounds the bombs).

    :raise InputError: there is one.
    """
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise InputError("XML with a DOCTYPE or ENTITY declaration is refused (libvirt never writes one)", file=file)


def parse(text: str, *, file: str | None = None) -> LibvirtCpu:
    """The host CPU of ``virsh capabilities`` (``host/cpu``) or ``virsh domcapabilities`` (host-model mode).

    :raise InputError: a DOCTYPE/ENTITY declaration, malformed XML, or no host CPU model in it.
    """
    refuse_dtd(text, file=file)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise InputError(f"not well-formed XML: {err}", file=file, line=err.position[0]) from None
    add: set[str] = set()
    remove: set[str] = set()
    sig = None
    if root.tag == "capabilities":
        cpu = root.find("host/cpu")
        source = "capabilities"
        if cpu is None:
            raise InputError("no <host><cpu> element", file=file)
        add = {from_libvirt(f.get("name", "")) for f in cpu.findall("feature") if f.get("name")}
        sig = cpu.find("signature")
    elif root.tag == "domainCapabilities":
        source = "domcapabilities"
        cpu = next((m for m in root.findall("cpu/mode") if m.get("name") == "host-model"), None)
        if cpu is None or cpu.get("supported") == "no":
            raise InputError("no supported host-model CPU in <cpu><mode name='host-model'>", file=file)
        for f in cpu.findall("feature"):
            name = f.get("name")
            if not name:
                continue
            (remove if f.get("policy") in ("disable", "forbid") else add).add(from_libvirt(name))
    else:
        raise InputError(f"root element <{root.tag}>: expected <capabilities> or <domainCapabilities>", file=file)
    model_el = cpu.find("model")
    model = (model_el.text or "").strip() if model_el is not None else ""
    if not model:
        raise InputError("the host CPU has no <model>", file=file)
    vendor_el = cpu.find("vendor")
    vendor = _VENDORS.get((vendor_el.text or "").strip()) if vendor_el is not None else None
    snap = load_snapshot()
    # The snapshot's expansions asked for vmx=on; whether the host has VMX is libvirt's listed feature's business.
    base: frozenset[str] = snap.get(model).features - {"vmx"} if snap.has(model) else frozenset()
    feats = snap.known((base | add) - remove)
    return LibvirtCpu(source=source, model=model, vendor=vendor, family=_int(sig, "family"),
                      model_number=_int(sig, "model"), stepping=_int(sig, "stepping"), features=feats,
                      model_known=snap.has(model))


__all__ = ["LibvirtCpu", "parse", "refuse_dtd"]
