"""The ``-cpu`` properties of a guest configuration as QEMU lists them: hv-* flags in QEMU's order, and the
vmx-* properties whose state differs from a CPU model's defaults.

Why apart from the libvirt writer: the ``-cpu`` string, the JSON answer and the libvirt XML all state these
properties; the first two need no libvirt code (cpu_map, domain XML), so an answer in text or ``-cpu`` form
loads none of it.
"""

from __future__ import annotations

from collections.abc import Sequence

from qemu_evmcs.core.registry import Registry, registry

#: QEMU's order of hv-* properties (qemu.md §1.6).
HV_ORDER: tuple[str, ...] = (
    "hv-relaxed", "hv-vapic", "hv-time", "hv-crash", "hv-reset", "hv-vpindex", "hv-runtime", "hv-synic",
    "hv-stimer", "hv-frequencies", "hv-reenlightenment", "hv-tlbflush", "hv-evmcs", "hv-ipi", "hv-stimer-direct",
    "hv-avic", "hv-apicv", "hv-emsr-bitmap", "hv-xmm-input", "hv-tlbflush-ext", "hv-tlbflush-direct", "hv-syndbg",
)


def hv_sorted(flags: Sequence[str]) -> list[str]:
    """hv-* flags in QEMU's order (unknown ones last, by name)."""
    order = {n: i for i, n in enumerate(HV_ORDER)}
    return sorted(flags, key=lambda f: (order.get(f, len(order)), f))


def vmx_prop_changes(want: frozenset[str], base: frozenset[str] | None, reg: Registry | None = None, *,
                     settable: frozenset[str] | None = None) -> list[tuple[str, bool]]:
    """(QEMU vmx-* property, on) for every property whose state in ``want`` (canonical names) differs from
    ``base`` (the model's defaults; ``None``: unknown, every property is stated), in registry order.
    A property controlling two bits (QEMU's misspelt INVEPT names) is on only if both are wanted. With
    ``settable``, properties outside it are left at the binary's default (real QEMU refuses unknown ones)."""
    reg = reg or registry()
    out: list[tuple[str, bool]] = []
    for prop, bits in reg.qemu_properties():
        if settable is not None and prop not in settable:
            continue
        on = bits <= want
        if base is not None and on == (bits <= base):
            continue
        out.append((prop, on))
    return out


__all__ = ["HV_ORDER", "hv_sorted", "vmx_prop_changes"]
