"""Which layer hid a VMX feature from the L1 guest: the one attribution every answer uses.

Layers, from the hardware up: the CPU (``cpu``: the hardware values prove it lacks the bit), KVM's nested
support (``kvm``: KVM does not report it), an MSR KVM does not emulate for L1 (``not-emulated``), the eVMCS
filter of the kernel's era (``evmcs-filter``), the PV CPUID gate of 6.1+ (``perf-cpuid-gate``: hidden only
because the guest's CPUID 0x4000000A.EBX bit 0 is clear), QEMU (``qemu``: it dropped the feature -- the host
lacks it, or a feature it depends on is off) and the model definition (``model``: it switches a base
feature off).

Why one module: ``explain`` (per feature, with Linux's reasons), baseline (``resolve``), the negotiator's
drops and the start-up model's lost features used to decide "filter or gate?" and "CPU or KVM?" each their
own way. They now ask :func:`removed_bits` / :func:`hidden_layers` / :func:`missing_layer` and only word
the answer. Which bits are missing is always the simulation's answer, never recomputed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qemu_evmcs.core.evmcs_filter import removals
from qemu_evmcs.core.kernel import Era
from qemu_evmcs.core.msrval import feature_present, word_source_msr
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.registry import MASK64, Feature, Msr, Registry, registry
from qemu_evmcs.qemu.compose import qemu_given_features

LAYER_CPU = "cpu"
LAYER_NOT_EMULATED = "not-emulated"
LAYER_KVM = "kvm"
LAYER_FILTER = "evmcs-filter"
LAYER_PERF = "perf-cpuid-gate"
LAYER_QEMU = "qemu"
LAYER_MODEL = "model"
#: The layers of the host stack, in the order they are checked (and listed) by ``explain``. ``qemu`` comes last:
#: a bit the eVMCS filter removes is the filter's, whether or not QEMU would have written it; ``qemu`` names the
#: features KVM reports and the guest could keep but QEMU never writes (:func:`qemu_given_features`).
LAYERS: tuple[str, ...] = (LAYER_CPU, LAYER_NOT_EMULATED, LAYER_KVM, LAYER_FILTER, LAYER_PERF, LAYER_QEMU)


@dataclass(frozen=True)
class RemovedBit:
    """One bit KVM reports in an MSR that the guest does not read.

    :ivar bit: the bit in the feature word (the control bit for control MSRs: allowed-1 bit ``bit + 32``).
    :ivar feature: the registry's canonical name, or ``None`` for a bit the registry does not name.
    :ivar layer: :data:`LAYER_FILTER`, :data:`LAYER_PERF`, :data:`LAYER_NOT_EMULATED` or :data:`LAYER_QEMU`.
    """

    bit: int
    feature: str | None
    layer: str

    def label(self) -> str:
        """The feature name, or ``bit N`` for an unnamed bit."""
        return self.feature if self.feature is not None else f"bit {self.bit}"



def removed_bits(era: Era, msr: Msr, host: int, guest: int, emulated: bool,
                 named: Mapping[tuple[str, int], Feature] | None = None,
                 reg: Registry | None = None, *, perf_gate_open: bool = False,
                 filtered: bool = True) -> tuple[RemovedBit, ...]:
    """Attribute every bit of ``host`` missing from ``guest`` (allowed-1 half for control MSRs) to a layer.

    :data:`LAYER_NOT_EMULATED` when the guest cannot read the
    MSR at all, :data:`LAYER_PERF` when the era's filter removes the bit only because the guest's CPUID
    0x4000000A.EBX bit 0 is clear (``perf_gate_open`` false; :func:`qemu_evmcs.core.evmcs_filter.removals`
    decides), :data:`LAYER_FILTER` for the filter's other removals, :data:`LAYER_QEMU` for a feature QEMU never
    gives a guest (:func:`qemu_evmcs.qemu.compose.qemu_given_features`) that the filter did not remove.
    Which bits are missing is the simulation's answer (``guest``), never recomputed here.

    :param named: ``{(word, bit): feature}`` (built from the registry when omitted).
    :param perf_gate_open: the guest's CPUID 0x4000000A.EBX bit 0 is set, so the gate hides nothing.
    :param filtered: the eVMCS filter applies to this guest (eVMCS on, an era that filters).
    """
    reg = reg or registry()
    if named is None:
        named = {(f.word, f.bit): f for f in reg.features.values()}
    if msr.word is None:
        return ()
    shift = 32 if msr.layout == "ctl" else 0
    gone = (host & ~guest & MASK64) >> shift
    # The filter's own verdict on each bit it removes from ``host`` (core.evmcs_filter.removals: the gate or
    # the filter); a missing bit it does not explain is the filter's too (the ABI variant's filter).
    cause = ({r.bit: r.cause for r in removals(era, msr.name, host, perf_global_ctrl=perf_gate_open, reg=reg)}
             if filtered else {})
    given = qemu_given_features()
    out: list[RemovedBit] = []
    bit = 0
    while gone >> bit:
        if gone >> bit & 1:
            feat = named.get((msr.word, bit))
            if not emulated:
                layer = LAYER_NOT_EMULATED
            elif cause.get(bit) == LAYER_PERF:
                layer = LAYER_PERF
            elif bit not in cause and feat is not None and feat.name not in given:
                layer = LAYER_QEMU
            else:
                layer = LAYER_FILTER
            out.append(RemovedBit(bit=bit, feature=feat.name if feat else None, layer=layer))
        bit += 1
    return tuple(out)


def hidden_layers(era: Era, host_msrs: Mapping[str, int], guest_msrs: Mapping[str, int], *,
                  perf_gate_open: bool, reg: Registry | None = None) -> dict[str, str]:
    """Feature -> layer for every named feature set in ``host_msrs`` (KVM's, or what QEMU wrote) but not in
    the guest's read of the same MSR (per word, the MSR QEMU reads: :func:`word_source_msr`)."""
    reg = reg or registry()
    named = {(f.word, f.bit): f for f in reg.features.values()}
    out: dict[str, str] = {}
    for word in reg.words:
        src = word_source_msr(word, host_msrs, reg)
        if src is None:
            continue
        for rb in removed_bits(era, reg.msrs[src], host_msrs[src], guest_msrs.get(src, 0), src in guest_msrs,
                               named, reg, perf_gate_open=perf_gate_open):
            if rb.feature is not None:
                out[rb.feature] = rb.layer
    return out


def missing_layer(feat: Feature, profile: HostProfile, reg: Registry | None = None) -> str:
    """The layer of a feature KVM does not report: :data:`LAYER_CPU` when the profile's hardware values
    (``cpu_msrs``) prove the CPU lacks it, else :data:`LAYER_KVM`. Only an MSR captured from the hardware can
    prove the CPU lacks a bit."""
    reg = reg or registry()
    cpu = profile.cpu_msrs
    if cpu is not None and word_source_msr(feat.word, cpu, reg) is not None and not feature_present(feat, cpu, reg):
        return LAYER_CPU
    return LAYER_KVM


__all__ = ["LAYERS", "LAYER_CPU", "LAYER_FILTER", "LAYER_KVM", "LAYER_MODEL", "LAYER_NOT_EMULATED", "LAYER_PERF",
           "LAYER_QEMU", "RemovedBit", "hidden_layers", "missing_layer", "removed_bits"]
