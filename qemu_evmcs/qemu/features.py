"""QEMU's CPUID flags that gate VMX features, and its Hyper-V enlightenments, in one table each.

Why one module: the start-up model (``qemu.cpu``), model validation (``models``/``validate``) and the
negotiator all need QEMU's rules -- which ``hv-*`` flag needs which (``kvm_hyperv_properties[].dependencies``),
which CPUID flag gates which ``vmx-*`` feature (``feature_dependencies[]``), which ``hv-*`` flag depends on a
0x4000000A.EAX bit KVM reports only from some release. The tables are package data
(``data/qemu_features.yaml``, with QEMU's sources cited there); this module gives them types and derives every
other view from them, so those rules cannot drift apart. (VMX bits themselves live in ``data/registry.yaml``;
the Hyper-V bits are TLFS CPUID bits, not VMX bits.)
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable, Mapping

from qemu_evmcs.core.hyperv import HV_CPUID_FEATURES as HV_CPUID_FEATURES  # re-exported
from qemu_evmcs.core.hyperv import HV_CPUID_NESTED_FEATURES
from qemu_evmcs.core.registry import load_data


@dataclass(frozen=True)
class CpuidFlag:
    """A CPUID feature bit QEMU models as a property; only those that gate VMX features are modelled."""

    name: str
    desc: str           # QEMU's feature_word_description(): ``CPUID.01H:ECX``
    bit: int
    gates: tuple[str, ...]  # QEMU vmx-* names this flag gates (feature_dependencies[])


_DATA = load_data("qemu_features.yaml")

#: In QEMU FeatureWord order (``data/qemu_features.yaml`` ``cpuid_flags``).
CPUID_FLAGS: tuple[CpuidFlag, ...] = tuple(
    CpuidFlag(str(x["name"]), str(x["desc"]), int(x["bit"]), tuple(str(g) for g in x["gates"]))
    for x in _DATA["cpuid_flags"])
CPUID_BY_NAME: dict[str, CpuidFlag] = {f.name: f for f in CPUID_FLAGS}


@dataclass(frozen=True)
class HvFeature:
    """One entry of QEMU's ``kvm_hyperv_properties[]`` (enum order)."""

    prop: str
    desc: str
    cpuid: tuple[tuple[int, str, int], ...]   # (leaf, register, mask) the guest gets
    deps: tuple[str, ...] = ()
    kvm_checked: bool = False   # support read from the simulated KVM's HV CPUID (eVMCS-related bits)
    since: str | None = None  # KernelFacts attribute naming the first release that supports it
    skip_passthrough: bool = False


#: ``kvm_hyperv_properties[]`` in enum order (``data/qemu_features.yaml`` ``hyperv``).
HV_FEATURES: tuple[HvFeature, ...] = tuple(
    HvFeature(str(x["prop"]), str(x["desc"]), tuple((int(leaf), str(reg), int(mask)) for leaf, reg, mask in x["cpuid"]),
              deps=tuple(str(d) for d in x.get("deps", ())), kvm_checked=bool(x.get("kvm_checked", False)),
              since=x.get("since"), skip_passthrough=bool(x.get("skip_passthrough", False)))
    for x in _DATA["hyperv"])
HV_BY_PROP: dict[str, HvFeature] = {f.prop: f for f in HV_FEATURES}
#: ``hv-apicv`` is an alias of ``hv-avic`` (added in x86_cpu_initfn).
HV_ALIASES: dict[str, str] = {str(k): str(v) for k, v in _DATA["hv_aliases"].items()}
#: The project's plug-in option (documented in ``--help`` and the module docstrings).
PLUGIN_PERF_GLOBAL_CTRL: str = str(_DATA["plugin_perf_global_ctrl"])


def hv_feature_supported(feat: HvFeature, leaves: Mapping[int, Mapping[str, int]],
                         kernel_at_least: Callable[[str], bool]) -> bool:
    """QEMU's ``hyperv_feature_supported`` once KVM_CAP_HYPERV is known to exist: eVMCS-related bits from KVM's
    HV CPUID ``leaves``, the rest by kernel release (``kernel_at_least(facts attribute)``).

    One rule for the simulated QEMU (``hv-passthrough`` and explicit flags) and for ``--model host,hv-passthrough``.
    """
    if feat.kvm_checked:
        return all((leaves.get(leaf, {}).get(reg, 0) & mask) == mask for leaf, reg, mask in feat.cpuid)
    if feat.since is not None:
        return kernel_at_least(feat.since)
    return True


def hv_requires() -> dict[str, tuple[str, ...]]:
    """``hv-*`` flag -> the flags QEMU requires with it (a hard error without them).

    The ``dependencies`` of ``kvm_hyperv_properties[]``, plus QEMU's extra check that ``hv-synic`` needs
    ``hv-vpindex`` (skipped only with ``x-hv-synic-kvm-only``).
    """
    out = {f.prop: f.deps for f in HV_FEATURES if f.deps}
    for prop, deps in _DATA["extra_requires"].items():
        out[str(prop)] = tuple(dict.fromkeys([*out.get(str(prop), ()), *map(str, deps)]))
    return out


#: ``vmx-*`` (QEMU name) -> the CPUID flag QEMU requires for it to stay on (``feature_dependencies[]``).
VMX_CPUID_REQUIRES: Mapping[str, str] = {gated: f.name for f in CPUID_FLAGS for gated in f.gates}

#: ``hv-*`` flags that need a 0x4000000A.EAX bit KVM reports only from some release on -> that bit.
HV_NESTED_EAX_BITS: Mapping[str, int] = {
    f.prop: mask for f in HV_FEATURES if f.kvm_checked
    for leaf, reg, mask in f.cpuid if leaf == HV_CPUID_NESTED_FEATURES and reg == "eax"
}
