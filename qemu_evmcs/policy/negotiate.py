"""Cross-host eVMCS negotiation: one guest configuration that starts, and looks the same, on every host.

The problem (the 2022 KVM thread, ``seed-thread-evmcs2.txt``): with eVMCS on,
KVM hides some VMX controls from L1, and *which* ones depends on the kernel
era. QEMU writes the unfiltered VMX MSRs it composed from ``-cpu``; the guest
reads them filtered. A guest that live-migrates between hosts of different
eras can therefore see its VMX capabilities change under its feet (an L2
VM-entry then fails the destination's eVMCS controls check), or the
destination KVM can refuse QEMU's writes.

This module decides, for a guest model and a pool of hosts:

- the eVMCS version to request (KVM supports exactly 1: range ``0x0101``);
- whether to set CPUID 0x4000000A.EBX bit 0 (the PV PERF_GLOBAL_CTRL bit that shipped in 6.1);
- the explicit vmx-* list, such that QEMU's writes succeed on every host
  (nothing outside a host's KVM-reported allowed-1; nothing a pre-5.7 host
  sanitizes at enable time) and the guest-visible VMX MSRs are identical on
  every host;
- the hv-* flags (``hv-evmcs`` needs ``hv-vapic``; ``hv-emsr-bitmap`` and
  ``hv-tlbflush-direct`` need newer kernels).

It does so by *simulation*: every candidate configuration is started on each host by the one start-up
model, :func:`qemu_evmcs.qemu.startup.start` (:func:`start_guest` spells the configuration as a ``-cpu``),
and the guest reads its VMX MSRs. The negotiated vmx
list is exactly the set of features the guest can see on every host, so what
the -cpu string asks for is what the guest gets (features eVMCS hides
everywhere, such as posted interrupts, are switched off explicitly).

Strategies (one per design of the thread; ``SimKvm`` variant in brackets):

- ``pv-cpuid`` [shipped] -- what Linux merged in 6.1.
- ``revision`` [revision] -- v2 06/28 KVM_CAP_HYPERV_ENLIGHTENED_VMCS2, never merged.
- ``vmx-msrs`` [vmx-msrs] -- Sean's KVM_GET_EVMCS_VMX_MSRS, never implemented.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.evmcs_filter import filter_all
from qemu_evmcs.core.hostgroup import Fleet, FleetHosts, Hosts, as_fleet
from qemu_evmcs.core.kernel import era_table
from qemu_evmcs.core.msrval import word_source_msr
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.qemu.features import CPUID_BY_NAME, HV_BY_PROP, PLUGIN_PERF_GLOBAL_CTRL, hv_requires
from qemu_evmcs.qemu.attribution import LAYER_PERF, hidden_layers
from qemu_evmcs.qemu.compose import supported_msr_feature
from qemu_evmcs.qemu.cpu import EVMCS_REVISION_PROP, hv_flag_supported
from qemu_evmcs.qemu.cpuspec import CpuSpec
from qemu_evmcs.qemu.startup import DESIGN_VARIANT, StartRequest, evmcs_start_error, evmcs_vmx_view, start
from qemu_evmcs.core.views import diff_views, partially_visible, visible_features
from qemu_evmcs.qemu import model_names, models
from qemu_evmcs.qemu.model_names import AUTO_MODEL
from qemu_evmcs.qemu.basecpuid import check_base, newest_runnable
from qemu_evmcs.qemu.models import DEFAULT_QEMU_VERSION, load_snapshot, vmx_requires
from qemu_evmcs.policy.designnames import DESIGN_ALIASES, DESIGN_NAMES, design_name
from qemu_evmcs.core.registry import Registry, registry
from qemu_evmcs.kvm.simkvm import (
    EVMCS_REVISION_2022,
    EVMCS_REVISION_LEGACY,
    SimKvm,
)

STRATEGIES: tuple[str, ...] = ("pv-cpuid", "revision", "vmx-msrs")
#: Which QEMU the answer is for. ``qemu`` (default): a released QEMU, which has neither of this project's proposed
#: options (``hv-evmcs-perf-global-ctrl``, ``x-hv-evmcs-revision``; QEMU 7.2 refuses both with "Property
#: 'max-x86_64-cpu.hv-evmcs-perf-global-ctrl' not found", qemu.md last section), so the answer never uses them and
#: a note says what the guest would gain with them. ``simulator``: the simulated QEMU, which implements both.
TARGETS: tuple[str, ...] = ("qemu", "simulator")
#: SimKvm ABI variant each strategy runs against.
STRATEGY_VARIANT: Mapping[str, str] = {"pv-cpuid": "shipped", "revision": "revision", "vmx-msrs": "vmx-msrs"}
# The design names and their aliases (DESIGN_NAMES, DESIGN_ALIASES): policy/designnames.py.
DESIGN_STRATEGY_OF: Mapping[str, str] = {v: k for k, v in STRATEGY_VARIANT.items()}


def strategy_of(name: str) -> str:
    """The negotiation strategy of a design (or strategy) name: ``shipped`` -> ``pv-cpuid``."""
    return DESIGN_STRATEGY_OF[design_name(name)]

#: The two controls the PV CPUID bit 0x4000000A.EBX[0] gates (6.1+).
PERF_FEATURES: tuple[str, str] = ("vmx-exit-load-perf-global-ctrl", "vmx-entry-load-perf-global-ctrl")
#: This project's proposed QEMU option for 0x4000000A.EBX bit 0; the simulated QEMU implements it, real QEMU does not.
PERF_OPTION = PLUGIN_PERF_GLOBAL_CTRL
#: The simulated QEMU's option asking KVM for an eVMCS revision (the never-merged revision design).
REVISION_OPTION = EVMCS_REVISION_PROP
#: Without these, Hyper-V cannot run as L1 (it requires SLAT); losing them is an error, not a dropped feature.
ESSENTIAL_FEATURES: tuple[str, ...] = ("vmx-ept", "vmx-unrestricted-guest")
#: Hyper-V flags QEMU requires for hv-evmcs (qemu.md §1.4).
HV_EVMCS_DEPS: tuple[str, ...] = hv_requires()["hv-evmcs"]


# =========================================================================== the guest model protocol

@dataclass(frozen=True)
class GuestModel:
    """What the negotiator needs from a CPU model definition.

    :param vmx: canonical vmx feature names the model turns on (after QEMU's dependency pass).
    :param hyperv: hv-* flags switched on or off.
    :param evmcs_version: wanted eVMCS version range (min, max).
    :param pv_perf_global_ctrl: ``auto`` | ``on`` | ``off`` (CPUID 0x4000000A.EBX bit 0).
    :param base_vmx: the QEMU base model's default vmx features (``None``: unknown; the -cpu string is then
        fully explicit).
    """

    name: str
    base: str
    vendor: str = "GenuineIntel"
    vmx: frozenset[str] = frozenset()
    hyperv: Mapping[str, bool] = field(default_factory=dict)
    evmcs_version: tuple[int, int] = (1, 1)
    pv_perf_global_ctrl: str = "auto"
    base_vmx: frozenset[str] | None = None
    required: frozenset[str] = frozenset(ESSENTIAL_FEATURES)
    #: QEMU's ``host`` model: every guest gets its own host's KVM set (:mod:`qemu_evmcs.policy.hostmodel`).
    per_host: bool = False


def qemu_property_features(reg: Registry | None = None) -> frozenset[str]:
    """Canonical names of every feature QEMU has a property for."""
    reg = reg or registry()
    return frozenset(f.name for f in reg.features.values() if f.qemu is not None)


def target_properties(target: str = "qemu", reg: Registry | None = None,
                      properties: frozenset[str] | None = None) -> frozenset[str]:
    """QEMU vmx-* property names the answer may use for ``target`` (:data:`TARGETS`).

    ``properties``: the CPU properties of the QEMU binary the answer is for, when it was asked (``launch
    --negotiate`` asks it over QMP): then exactly the registry's vmx-* properties it has, whatever ``target``.

    The simulator has every property of the registry. Real QEMU: those the bundled QEMU snapshot knows
    (``cpu_models/qemu/7.2/index.json`` ``all-features``, measured from QEMU 7.2 by scripts/sync-qemu-models):
    QEMU 7.2 refuses newer names such as ``vmx-nested-exception`` ("Property 'max-x86_64-cpu.vmx-nested-exception'
    not found"), so an answer for real QEMU leaves them at the binary's default (off in 7.2, which lacks them).
    """
    reg = reg or registry()
    props = {f.qemu for f in reg.features.values() if f.qemu is not None}
    if properties is not None:
        return frozenset(props & properties)
    if target == "qemu":
        snapshot = load_snapshot(DEFAULT_QEMU_VERSION)
        props = {p for p in props if snapshot.knows_property(p)}
    return frozenset(props)


def max_model() -> GuestModel:
    """A model asking for every vmx feature QEMU can set (admission checks without ``--model``)."""
    return GuestModel(name="max", base="max", vmx=qemu_property_features(),
                      hyperv={"hv-relaxed": True, "hv-vapic": True, "hv-time": True, "hv-vpindex": True,
                              "hv-synic": True, "hv-evmcs": True})


def host_model(text: str = "host", items: Mapping[str, bool] | None = None) -> GuestModel:
    """QEMU's ``-cpu host[,items]``: every vmx feature the host's KVM offers (per host), hv-vapic + hv-evmcs
    unless the items say otherwise (``hv-passthrough``: every enlightenment that host's KVM offers)."""
    items = dict(items or {})
    hyperv = {"hv-vapic": True, "hv-evmcs": True, **{k: v for k, v in items.items() if k.startswith("hv-")}}
    off = _vmx_items_off(items)
    return GuestModel(name=text, base="host", vmx=qemu_property_features() - off, hyperv=hyperv, per_host=True)


def _vmx_items_off(items: Mapping[str, bool], reg: Registry | None = None) -> frozenset[str]:
    """Canonical vmx features that ``-cpu`` items switch off (a QEMU property may switch two bits)."""
    reg = reg or registry()
    out: set[str] = set()
    for key, on in items.items():
        if not on:
            bits = reg.qemu_bits(key)
            feat = reg.get(key)
            out.update(b.name for b in bits) if bits else out.update([feat.name] if feat else [])
    return frozenset(out)


def load_guest_model(name_or_path: str | GuestModel) -> GuestModel:
    """A :class:`GuestModel` from anything ``--model`` takes (:mod:`qemu_evmcs.qemu.model_names`): ``host``,
    ``max`` (each optionally with ``-cpu`` items), a QEMU or libvirt model name, a definition name or file."""
    if isinstance(name_or_path, GuestModel):
        return name_or_path
    if name_or_path == "max":
        return max_model()
    if not model_names.is_definition(name_or_path):
        name, items = model_names.split_model_arg(name_or_path)
        if name == "host":
            return host_model(name_or_path, items)
        if name == "max":
            base = max_model()
            hyperv = {**base.hyperv, **{k: v for k, v in items.items() if k.startswith("hv-")}}
            return replace(base, name=name_or_path, vmx=base.vmx - _vmx_items_off(items), hyperv=hyperv)
    mdef = model_names.load_any_model(name_or_path)
    eff = models.effective_model(mdef)
    return GuestModel(
        name=mdef.name, base=mdef.base, vendor=mdef.vendor, vmx=eff.vmx, hyperv=dict(mdef.hyperv),
        evmcs_version=mdef.evmcs_version or (1, 1), pv_perf_global_ctrl=mdef.pv_perf_global_ctrl,
        base_vmx=eff.base_vmx,
    )


def load_pool(hosts: Hosts) -> Fleet:
    """Hosts as a :class:`~qemu_evmcs.core.hostgroup.Fleet` (see :data:`~qemu_evmcs.core.hostgroup.Hosts`).

    A host whose kernel build no source places in one era (``5.10.0-26-amd64`` without ``kernel_version``) is
    negotiated once per candidate era (``"host (if era 5.17-6.0)"``): the answer must hold whichever it is."""
    return as_fleet(hosts).with_candidates()


def load_hosts(hosts: Hosts) -> list[HostProfile]:
    """One profile per host (a group's representative under each host's name): for small pools."""
    return list(as_fleet(hosts).iter_hosts())


# =========================================================================== MSR helpers

def qemu_supported(profile: HostProfile, reg: Registry | None = None) -> frozenset[str]:
    """Features QEMU treats as supported on ``profile`` (kvm_arch_get_supported_msr_feature).

    For control words: ``allowed-1 & ~allowed-0`` of the TRUE MSR (the optional controls); otherwise the raw
    value. With ``kvm_intel.nested=0`` KVM lists no VMX MSRs: nothing is supported.
    """
    reg = reg or registry()
    if not profile.nested or not profile.is_intel:
        return frozenset()
    out = set()
    for word in reg.words:
        src = word_source_msr(word, profile.msrs, reg)
        if src is None:
            continue
        value = profile.msrs[src]
        bits = supported_msr_feature(src, value, reg)
        for f in reg.word_features(word):
            if bits & f.mask:
                out.add(f.name)
    return frozenset(out)


# =========================================================================== simulated QEMU start-up

@dataclass(frozen=True)
class GuestConfig:
    """One guest configuration: what the -cpu string (or libvirt XML) says, in data.

    :param vmx: canonical vmx features requested (exactly; everything else off).
    :param hyperv: hv-* flags on (sorted tuple).
    :param pv_perf_global_ctrl: CPUID 0x4000000A.EBX bit 0.
    :param revision: eVMCS revision requested (``revision`` design only).
    :param enforce: QEMU ``enforce=on`` (a missing feature fails the start instead of being dropped).
    :param design: ``shipped`` | ``revision`` | ``vmx-msrs`` | ``naive`` (the ABI the guest runs on).
    :param cpuid_off: CPUID flags of the base model switched off (``-flag``) because a host lacks them: under
        ``enforce=on`` QEMU refuses the model otherwise (``Host doesn't support requested features``).
    """

    model: str
    base: str
    vmx: frozenset[str]
    hyperv: tuple[str, ...]
    evmcs_version: tuple[int, int] = (1, 1)
    pv_perf_global_ctrl: bool = False
    revision: int | None = None
    enforce: bool = True
    design: str = "shipped"
    cpuid_off: tuple[str, ...] = ()


@dataclass
class StartResult:
    """Outcome of starting a guest on one simulated host.

    :param stage: where it failed: ``evmcs-cap`` | ``hv-feature`` | ``evmcs-version`` | ``revision`` |
        ``vmx-features`` | ``userspace-check`` | ``msr-write`` (``None`` when it started).
    :param dropped: features QEMU dropped because the host lacks them (only without ``enforce``).
    """

    host: str
    ok: bool
    stage: str | None = None
    reason: str = ""
    guest_msrs: dict[str, int] = field(default_factory=dict)
    dropped: frozenset[str] = frozenset()
    writes: list[tuple[str, int]] = field(default_factory=list)
    cpuid_filtered: tuple[str, ...] = ()


def evmcs_incapable_reason(profile: HostProfile) -> str | None:
    """Why a host can never run an eVMCS guest (``None`` if it can)."""
    kvm = SimKvm(profile)
    if not profile.is_intel:
        return f"host {profile.name}: {profile.vendor} has no eVMCS (Intel VMX only)"
    if not kvm.has_evmcs_hook():
        return f"host {profile.name}: {kvm.no_evmcs_reason()}"
    if not profile.nested or kvm.evmcs_version() == 0:
        qemu_text = evmcs_start_error(profile) or "eVMCS cannot be enabled"
        return (f"host {profile.name}: kvm_intel.nested=0 (KVM reports eVMCS version 0 and no VMX MSRs; "
                f"QEMU fails '{qemu_text}')")
    return None


def _hv_unsupported(flag: str, kvm: SimKvm) -> bool:
    return flag in HV_BY_PROP and not hv_flag_supported(flag, kvm)


def host_reports_perf_bit(kvm: SimKvm) -> bool:
    """Does KVM report 0x4000000A.EBX bit 0 (6.1+), so that QEMU accepts the plug-in option?"""
    return hv_flag_supported(PLUGIN_PERF_GLOBAL_CTRL, kvm)


def documented_evmcs_view(profile: HostProfile, *, variant: str = "vmx-msrs") -> dict[str, int]:
    """Design (b): the filtered VMX MSRs userspace gets for a host (see
    :func:`qemu_evmcs.qemu.startup.evmcs_vmx_view`, the start-up model's own check)."""
    kvm = SimKvm(profile, variant=variant)
    return evmcs_vmx_view(kvm, kvm.create_vcpu())


def guest_cpu_spec(config: GuestConfig, reg: Registry | None = None) -> CpuSpec:
    """``config`` as a fully explicit ``-cpu``: the base model, ``vmx=on``, every QEMU ``vmx-*`` property on or
    off, the hv-* flags, the plug-in PV bit, the design-(a) revision and ``enforce``.

    Every property is stated (not only the changes against the base model, as :func:`render.cpu_string`
    writes for humans), so the start-up does not depend on knowing the base model's defaults.
    """
    reg = reg or registry()
    vmx = config.vmx
    props: list[tuple[str, str]] = [("vmx", "on")]
    props += [(prop, "on" if bits <= vmx else "off") for prop, bits in reg.qemu_properties()]
    props += [(flag, "off") for flag in config.cpuid_off]
    props += [(flag, "on") for flag in config.hyperv]
    if config.pv_perf_global_ctrl:
        props.append((PERF_OPTION, "on"))
    if config.design == "revision":
        props.append((EVMCS_REVISION_PROP, str(config.revision or EVMCS_REVISION_LEGACY)))
    props.append(("enforce", "on" if config.enforce else "off"))
    return CpuSpec(model=config.base, props=tuple(props))


def start_guest(config: GuestConfig, profile: HostProfile) -> StartResult:
    """Start ``config`` on ``profile``: the one start-up model (:func:`qemu_evmcs.qemu.startup.start`) run
    with :func:`guest_cpu_spec` on a simulated KVM of the config's design."""
    reg = registry()
    run = start(profile, StartRequest(cpu=guest_cpu_spec(config, reg), design=config.design))
    res = StartResult(host=profile.name, ok=run.ok, stage=run.stage, reason=run.reason if not run.ok else "",
                      writes=run.writes, cpuid_filtered=tuple(run.cpuid_filtered))
    if run.vcpus:
        filtered = run.vcpus[0].cpu.host_filtered
        res.dropped = frozenset(n for n in config.vmx
                                if filtered.get(reg.features[n].word, 0) & reg.features[n].mask)
    if run.ok:
        res.guest_msrs = run.guest_msrs
    return res


# =========================================================================== negotiation

@dataclass(frozen=True)
class Drop:
    """A requested feature the negotiated configuration switches off, and why.

    :param cause: ``unsupported`` (a host's KVM lacks it) | ``enable-time-filter`` (pre-5.7 sanitization: the
        write would be rejected) | ``evmcs-filter`` | ``inconsistent-filter`` (filtered from one MSR but not its
        TRUE twin) | ``perf-cpuid-gate`` | ``revision-1`` | ``evmcs-vmx-msrs`` (not in a host's filtered MSRs,
        design b) | ``qemu-coupled`` (one QEMU property sets it with a dropped bit) | ``dependency`` (QEMU drops
        it with a feature it depends on).
    """

    feature: str
    cause: str
    hosts: tuple[str, ...]
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        """Plain data."""
        return {"feature": self.feature, "cause": self.cause, "hosts": list(self.hosts), "detail": self.detail}


@dataclass(frozen=True)
class PoolGroup:
    """Hosts of a pool sharing one :meth:`~qemu_evmcs.core.profile.HostProfile.fingerprint`: the negotiator
    simulates ``profile`` (the first such host) once for all of ``hosts``."""

    fingerprint: str
    profile: HostProfile
    hosts: Sequence[str]


def pool_groups(fleet: Fleet) -> list[PoolGroup]:
    """The fleet's groups in load order (first appearance first)."""
    return [PoolGroup(fp, fleet.distinct[fp], names) for fp, names in fleet.members.items()]


@dataclass
class Negotiation:
    """The negotiated configuration for one strategy (``ok`` false: no safe answer, see ``error``).

    :ivar hosts: every host of the pool (for a fleet, a lazy view grouped by fingerprint).
    :ivar groups: the distinct host profiles with their host names; all work is done once per group.
    :ivar starts: the simulated start on each group's representative (``host``: its first host's name).
    """

    strategy: str
    model: GuestModel
    hosts: Sequence[HostProfile]
    ok: bool = False
    error: str = ""
    config: GuestConfig | None = None
    drops: list[Drop] = field(default_factory=list)
    hv_dropped: list[Drop] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    guest_msrs: dict[str, int] = field(default_factory=dict)
    starts: list[StartResult] = field(default_factory=list)
    groups: list[PoolGroup] = field(default_factory=list)
    #: :data:`TARGETS`: the QEMU the answer is for (``qemu``: no option a released QEMU lacks).
    target: str = "qemu"
    #: With ``target="qemu"``: guest-visible features the simulator's proposed options would add (the note).
    gains: list[str] = field(default_factory=list)
    #: With ``target="qemu"``: the simulator would have used a proposed option here (so :attr:`gains` is computed).
    options_withheld: bool = False
    #: The CPU properties of the QEMU binary the answer is for, when it was asked (None: :data:`TARGETS` decide).
    properties: frozenset[str] | None = None
    #: :attr:`guest_features`' memo: ``(ok, the guest_msrs object it was computed from, the features)``.
    _features: tuple[bool, dict[str, int], frozenset[str]] | None = field(default=None, init=False, repr=False,
                                                                         compare=False)

    @property
    def guest_features(self) -> frozenset[str]:
        """Features the guest sees (identically) on every host.

        Computed once per answer: renderers and admit read it once per registry feature. Recomputed when ``ok``
        or the ``guest_msrs`` object is replaced (answers are built by assignment, never by editing the dict).
        """
        memo = self._features
        if memo is None or memo[0] != self.ok or memo[1] is not self.guest_msrs:
            memo = self._features = (self.ok, self.guest_msrs,
                                     visible_features(self.guest_msrs) if self.ok else frozenset())
        return memo[2]

    @property
    def needs_plugin_option(self) -> bool:
        """Does the answer need ``hv-evmcs-perf-global-ctrl`` (absent from real QEMU)?"""
        return bool(self.config and self.config.pv_perf_global_ctrl)

    def host_groups(self) -> list[PoolGroup]:
        """:attr:`groups`, or (for a hand-made Negotiation) the groups of :attr:`hosts`."""
        if self.groups or not self.hosts:
            return self.groups
        fleet = Fleet()
        for h in self.hosts:
            fleet.add(h)
        return pool_groups(fleet)


def names_text(names: Sequence[str], limit: int = 10) -> str:
    """``a, b, c`` -- or, past ``limit`` names, the first ``limit`` and ``and N more``."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" and {len(names) - limit:,} more"


def kernel_series(profile: HostProfile) -> str:
    """``major.minor`` of a host's kernel: the part its fingerprint includes.

    Every host of a fingerprint group shares it; their full release strings may differ (``6.1.55`` and
    ``6.1.90-generic`` are one group), and only the group's first host's string is kept.
    """
    return f"{profile.version.major}.{profile.version.minor}"


def group_kernel_text(profile: HostProfile, count: int) -> str:
    """The kernel of a group for humans: the full string for one host, else the series and the first host's."""
    if count <= 1:
        return profile.kernel
    return f"kernel {kernel_series(profile)}.x (first host: {profile.kernel})"


def unique_group_names(groups: Sequence[tuple[str, str]]) -> list[str]:
    """A unique name per ``(first host, fingerprint)`` group: the first host's name, or ``name#fingerprint[:8]``
    when two groups' first hosts share a name (profile objects given twice)."""
    used: set[str] = set()
    out: list[str] = []
    for first, fp in groups:
        name = first if first not in used else f"{first}#{fp[:8]}"
        used.add(name)
        out.append(name)
    return out


def _same_profile(group: PoolGroup) -> str:
    """Suffix for a message that names a group by its first host."""
    n = len(group.hosts) - 1
    return f" (and {n:,} more host{'s' if n != 1 else ''} with the same profile)" if n > 0 else ""


def _close_under_qemu(features: set[str], drops: list[Drop], reg: Registry) -> None:
    """Drop bits coupled to dropped bits by one QEMU property, and features whose QEMU gate is off."""
    changed = True
    while changed:
        changed = False
        for name in sorted(features):
            f = reg.features[name]
            if f.qemu is not None:
                partners = [b.name for b in reg.qemu_bits(f.qemu)]
                gone = [p for p in partners if p not in features]
                if gone:
                    features.discard(name)
                    drops.append(Drop(name, "qemu-coupled", (), f"QEMU property {f.qemu} also sets {', '.join(gone)}"))
                    changed = True
                    continue
            reqs = [r for r in vmx_requires(f) if r.startswith("vmx-") and r not in features]
            if reqs:
                features.discard(name)
                drops.append(Drop(name, "dependency", (), f"QEMU drops it without {', '.join(reqs)}"))
                changed = True


def _invisible_cause(feature: str, profile: HostProfile, start: StartResult, config: GuestConfig) -> Drop:
    """Why ``feature`` is not (fully) visible to the guest on ``profile``: the layer from the one attribution
    (:func:`qemu_evmcs.qemu.attribution.hidden_layers` over what QEMU wrote and what the guest read), refined
    by the negotiator's own cases (a filter that misses one of two MSRs; a design-(a) revision)."""
    kvm = SimKvm(profile, variant=DESIGN_VARIANT[config.design])
    era = profile.era
    guest = start.guest_msrs
    if feature in partially_visible(guest):
        return Drop(feature, "inconsistent-filter", (profile.name,),
                    f"kernel era {era.id} filters it from one MSR but not the other (L2 VM-entry would fail)")
    layer = hidden_layers(era, dict(start.writes), guest, perf_gate_open=config.pv_perf_global_ctrl).get(feature)
    if layer == LAYER_PERF and config.design == "shipped":
        return Drop(feature, "perf-cpuid-gate", (profile.name,), "CPUID 0x4000000A.EBX bit 0 is clear")
    if config.design == "revision" and (config.revision or 1) == EVMCS_REVISION_LEGACY \
            and feature in era_table().revision2_exposes and kvm.max_evmcs_revision() >= EVMCS_REVISION_2022:
        return Drop(feature, "revision-1", (profile.name,), "hidden by eVMCS revision 1 (legacy)")
    return Drop(feature, "evmcs-filter", (profile.name,), f"filtered by the eVMCS filter of kernel era {era.id}")


def _lacking_cpuid(starts: Sequence[StartResult], failed: Sequence[int]) -> set[str]:
    """CPUID flags to switch off when every failed start failed only because its host lacks a flag of the
    base model (stage ``vmx-features`` with CPUID flags filtered); empty otherwise."""
    if not failed or not all(starts[i].stage == "vmx-features" and starts[i].cpuid_filtered for i in failed):
        return set()
    return {flag for i in failed for flag in starts[i].cpuid_filtered}


def _merge_drops(drops: Iterable[Drop]) -> list[Drop]:
    """One entry per (feature, cause, detail), hosts merged (first appearance first, once each), in registry
    order. The detail is part of the key: "filtered by the eVMCS filter of kernel era 5.6-5.14" must not end up
    naming a 6.3 host too."""
    reg = registry()
    order = {n: i for i, n in enumerate(reg.features)}
    first: dict[tuple[str, str, str], Drop] = {}
    parts: dict[tuple[str, str, str], list[tuple[str, ...]]] = {}
    for d in drops:
        key = (d.feature, d.cause, d.detail)
        if key in first:
            parts[key].append(d.hosts)
        else:
            first[key] = d
            parts[key] = [d.hosts]
    merged = [d if len(parts[k]) == 1 else replace(d, hosts=tuple(dict.fromkeys(chain.from_iterable(parts[k]))))
              for k, d in first.items()]
    return sorted(merged, key=lambda d: (order.get(d.feature, 1 << 30), d.cause))


#: ``--model auto``: the newest QEMU model every host can run, with the eVMCS settings of this definition.
AUTO_TEMPLATE = "Skylake-Server-evmcs"


def auto_model(groups: Sequence[PoolGroup]) -> GuestModel | str:
    """The guest model ``--model auto`` stands for on these hosts, or why there is none (``no safe answer: ...``).

    Base: :func:`~qemu_evmcs.qemu.basecpuid.newest_runnable`. VMX: that QEMU model's default vmx features minus the
    ones the template definition switches off for an eVMCS L1; Hyper-V flags and eVMCS range: the template's.
    """
    profiles = [g.profile for g in groups]
    if all(p.cpu_features is None for p in profiles):
        return ("no safe answer: --model auto needs cpu_features in at least one host profile (host probe, host "
                "import --cpuinfo or --libvirt); none of these hosts has them")
    pick = newest_runnable(profiles)
    if pick is None:
        return "no safe answer: no Intel QEMU model's CPUID features are present on every host"
    template = load_guest_model(AUTO_TEMPLATE)
    switched_off = (template.base_vmx or frozenset()) - template.vmx
    base_vmx = load_snapshot().get(pick).vmx_features
    return replace(template, name=f"auto ({pick})", base=pick, vmx=frozenset(base_vmx - switched_off),
                   base_vmx=base_vmx)


def _fail(neg: Negotiation, message: str) -> Negotiation:
    neg.ok = False
    partial = [n for n in (g.profile.unknown_note() for g in neg.groups) if n]
    neg.error = message + "".join(f" (note: {n})" for n in partial)
    return neg


def negotiate(model: str | GuestModel, hosts: Hosts, strategy: str = "pv-cpuid", *,
              target: str = "qemu", properties: frozenset[str] | None = None,
              auto_pick: GuestModel | str | None = None) -> Negotiation:
    """Negotiate one strategy over a pool; never raises for a pool without a safe answer (``ok`` false).

    ``hosts``: see :data:`Hosts`. Every simulation runs once per distinct host profile (fingerprint); drops
    name every host of the groups concerned. Messages that name one host name a group's first host.
    ``target``: see :data:`TARGETS`. For real QEMU the pool is also negotiated for the simulator, and what
    the guest would see in addition there is kept in :attr:`Negotiation.gains` and said in a note.
    ``auto_pick``: for ``--model auto``, :func:`auto_model` of these hosts when the caller already has it (one
    pick for every design of ``--design all``: it checks every QEMU model's CPUID on every host).

    :raise InputError: unknown strategy, target, model or profile.
    """
    strategy = strategy_of(strategy)      # a design name (shipped) or a strategy name (pv-cpuid)
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r} (known: {', '.join(TARGETS)})")
    if properties is not None:
        # A binary that was asked: it may have this project's options ("a QEMU that has them"); the answer
        # then uses them, and only the vmx-* properties it has.
        has_options = PERF_OPTION in properties and (strategy != "revision" or REVISION_OPTION in properties)
        target = "simulator" if has_options else "qemu"
    fleet = load_pool(hosts)
    groups = pool_groups(fleet)
    if model == AUTO_MODEL:
        picked = auto_model(groups) if auto_pick is None else auto_pick
        if isinstance(picked, str):
            neg = Negotiation(strategy=strategy, model=load_guest_model(AUTO_TEMPLATE), hosts=FleetHosts(fleet),
                              groups=groups)
            return _fail(neg, picked)
        gm = picked
    else:
        gm = load_guest_model(model)
        if gm.per_host:
            # -cpu host is a different guest on each host: negotiate the custom model that pins one set
            # (qemu_evmcs.policy.hostmodel.negotiate_model also says why host itself cannot migrate).
            gm = replace(gm, name=f"max (custom model for -cpu {gm.name} guests)", base="max", per_host=False)
    neg = _negotiate_groups(gm, groups, strategy, FleetHosts(fleet), target,
                            settable=None if properties is None else target_properties(target, properties=properties))
    neg.properties = properties
    if model == AUTO_MODEL:
        neg.notes.insert(0, f"--model auto: {gm.base} is the newest QEMU {load_snapshot().version} Intel model whose "
                            f"CPUID every host with cpu_features has (eVMCS settings of {AUTO_TEMPLATE})")
    if target == "qemu" and neg.ok and neg.options_withheld:
        # Same QEMU properties, only the proposed options allowed: the gain is the options' alone.
        sim = _negotiate_groups(gm, groups, strategy, FleetHosts(fleet), "simulator",
                                settable=target_properties("qemu", properties=properties))
        if sim.ok and sim.config is not None and (sim.config.pv_perf_global_ctrl
                                                  or (sim.config.revision or 1) > EVMCS_REVISION_LEGACY):
            neg.gains = registry().in_order(sim.guest_features - neg.guest_features)
            opts = [f"{PERF_OPTION}=on"] if sim.config.pv_perf_global_ctrl else []
            if (sim.config.revision or 1) > EVMCS_REVISION_LEGACY:
                opts.append(f"x-hv-evmcs-revision={sim.config.revision}")
            if neg.gains:
                neg.notes.append(f"real QEMU lacks {', '.join(opts)} (this project's proposed options; "
                                 f"--target simulator uses them): with them the guest would also see "
                                 f"{', '.join(neg.gains)}")
    return neg


def _negotiate_groups(gm: GuestModel, groups: list[PoolGroup], strategy: str,
                      all_hosts: Sequence[HostProfile], target: str = "qemu",
                      settable: frozenset[str] | None = None) -> Negotiation:
    reg = registry()
    neg = Negotiation(strategy=strategy, model=gm, hosts=all_hosts, groups=groups, target=target)
    real_qemu = target == "qemu"
    design = STRATEGY_VARIANT[strategy]
    names = [tuple(g.hosts) for g in groups]          # per group, shared by every Drop that names it

    def hosts_of(idx: Iterable[int]) -> list[str]:
        return [n for i in idx for n in groups[i].hosts]

    for g in groups:
        partial = g.profile.unknown_note()
        if partial:
            neg.notes.append(partial)
    # -- hard failures: the pool cannot run an eVMCS guest at all
    if gm.vendor != "GenuineIntel":
        return _fail(neg, f"model {gm.name} is {gm.vendor}: eVMCS needs an Intel VMX model")
    for g in groups:
        reason = evmcs_incapable_reason(g.profile)
        if reason:
            return _fail(neg, f"no safe answer: {reason}{_same_profile(g)}")
    # -- the base model's CPUID (QEMU enforce=on refuses a model whose CPUID features a host lacks)
    base = check_base(gm.base, [g.profile for g in groups], counts=[len(g.hosts) for g in groups])
    if not base.ok:
        return _fail(neg, f"no safe answer: {base.failure()}")
    if base.note():
        neg.notes.append(str(base.note()))
    lo, hi = gm.evmcs_version
    if lo > 1:
        return _fail(neg, f"no safe answer: model wants eVMCS version range [{lo}..{hi}] but every KVM supports "
                          f"only [1..1]")
    kvms = [SimKvm(g.profile) for g in groups]

    # -- hv-* flags
    hv: set[str] = {k for k, v in gm.hyperv.items() if v and k not in ("hv-passthrough",)}
    if gm.hyperv.get("hv-passthrough"):
        neg.notes.append("hv-passthrough replaced by an explicit hv-* list (it blocks migration)")
    hv.add("hv-evmcs")
    for dep in HV_EVMCS_DEPS:
        if dep not in hv:
            hv.add(dep)
            neg.notes.append(f"{dep} switched on: QEMU requires it for hv-evmcs")
    for flag in sorted(hv):
        lacking = tuple(hosts_of(i for i, k in enumerate(kvms) if _hv_unsupported(flag, k)))
        if lacking:
            hv.discard(flag)
            neg.hv_dropped.append(Drop(flag, "unsupported", lacking, "KVM does not report its 0x4000000A.EAX bit"))

    # -- vmx: start from what the model asks and QEMU can set
    features: set[str] = set(gm.vmx) & set(qemu_property_features(reg))
    drops: list[Drop] = []
    settable = target_properties(target, reg) if settable is None else settable
    for f in sorted(features):
        prop = reg.features[f].qemu
        if prop not in settable:
            features.discard(f)
            drops.append(Drop(f, "qemu-property", (), f"QEMU {DEFAULT_QEMU_VERSION} has no property {prop} "
                                                      f"(a newer QEMU's; --target simulator)"))
    supported = [qemu_supported(g.profile, reg) for g in groups]
    for i in range(len(groups)):
        for f in sorted(features - supported[i]):
            drops.append(Drop(f, "unsupported", names[i], "KVM does not report it in allowed-1"))
    for sup in supported:
        features &= sup
    sanitized = [visible_features(g.profile.msrs, reg) - visible_features(filter_all(g.profile.era, g.profile.msrs),
                                                                          reg)
                 if g.profile.era.filter_at == "enable" else frozenset[str]() for g in groups]
    for i, g in enumerate(groups):
        for f in sorted(features & sanitized[i]):
            drops.append(Drop(f, "enable-time-filter", names[i],
                              f"kernel {g.profile.kernel} clears it when eVMCS is enabled; QEMU's write would be "
                              f"rejected and QEMU would abort"))
    for san in sanitized:
        features -= san
    _close_under_qemu(features, drops, reg)
    missing_props = sorted({d.feature for d in drops if d.cause == "qemu-property"})
    if missing_props and gm.base == "max":
        neg.notes.append(f"for QEMU {DEFAULT_QEMU_VERSION}, which lacks {', '.join(missing_props)}: a newer QEMU's "
                         f"max sets them wherever the host has them, unnamed by this -cpu")

    # -- strategy parameters
    revision: int | None = None
    ebx = False
    if strategy == "pv-cpuid":
        honours = [k.honours_perf_cpuid_bit() for k in kvms]
        perf_ok = all(honours)
        perf_present = all(f in features for f in PERF_FEATURES)
        want = gm.pv_perf_global_ctrl
        old = hosts_of(i for i, h in enumerate(honours) if not h)
        if want == "on" and real_qemu:
            return _fail(neg, f"no safe answer: the model requires pv-perf-global-ctrl=on but real QEMU has no "
                              f"option to set CPUID 0x4000000A.EBX bit 0 ({PERF_OPTION} is this project's "
                              f"proposal; --target simulator)")
        if want == "on" and not (perf_ok and perf_present):
            why = (f"hosts {names_text(old)} predate 6.1 and ignore the bit" if old
                   else "the PERF_GLOBAL_CTRL controls are not available on every host")
            return _fail(neg, f"no safe answer: the model requires pv-perf-global-ctrl=on but {why}")
        ebx = want != "off" and perf_ok and perf_present and not real_qemu
        neg.options_withheld = real_qemu and want != "off" and perf_ok and perf_present
        if not ebx and want != "off" and perf_present and not real_qemu:
            neg.notes.append(f"CPUID 0x4000000A.EBX bit 0 left clear: {names_text(old)} predate 6.1 and hide "
                             f"PERF_GLOBAL_CTRL regardless; clearing it hides them on 6.1+ too (consistent)")
    elif strategy == "revision":
        revs = [SimKvm(g.profile, variant="revision").max_evmcs_revision() or EVMCS_REVISION_LEGACY for g in groups]
        revision = min(revs)
        if real_qemu:       # real QEMU cannot ask for another revision: KVM's default (legacy) applies
            neg.options_withheld = revision > EVMCS_REVISION_LEGACY
            revision = EVMCS_REVISION_LEGACY
        elif revision < EVMCS_REVISION_2022 and any(r >= EVMCS_REVISION_2022 for r in revs):
            legacy = hosts_of(i for i, r in enumerate(revs) if r < EVMCS_REVISION_2022)
            neg.notes.append(f"revision 1 (legacy) forced by {names_text(legacy)}: no KVM_CAP_HYPERV_ENLIGHTENED_VMCS2 "
                             f"there, and the design is strict (a revision a host lacks is refused whatever the "
                             f"hardware has)")
    elif strategy == "vmx-msrs":
        views = [visible_features(documented_evmcs_view(g.profile), reg) for g in groups]
        since = era_table().facts.variant_get_evmcs_vmx_msrs_since
        for i, g in enumerate(groups):
            src = ("KVM_GET_EVMCS_VMX_MSRS" if g.profile.version.mm >= since.mm
                   else f"documented filter of era {g.profile.era.id}")
            for f in sorted(features - views[i]):
                drops.append(Drop(f, "evmcs-vmx-msrs", names[i], f"not in the filtered MSRs ({src})"))
        for view in views:
            features &= view
        if real_qemu:
            # Without the CPUID bit (real QEMU cannot set it) Windows 11 does not boot with the PERF controls
            # visible, and this design would show them: switch them off.
            for f in PERF_FEATURES:
                if f in features:
                    neg.options_withheld = True
                    features.discard(f)
                    drops.append(Drop(f, "perf-cpuid-gate", (), "real QEMU cannot set CPUID 0x4000000A.EBX bit 0, "
                                      "and Windows 11 does not boot with PERF_GLOBAL_CTRL visible without it"))
        _close_under_qemu(features, drops, reg)
    if strategy == "vmx-msrs":
        ebx = all(f in features for f in PERF_FEATURES)

    # -- simulate, drop what is not visible everywhere, repeat
    config = GuestConfig(model=gm.name, base=gm.base, vmx=frozenset(features), hyperv=tuple(sorted(hv)),
                         evmcs_version=(1, 1), pv_perf_global_ctrl=ebx, revision=revision, design=design)
    starts: list[StartResult] = []
    for _ in range(16):
        starts = [start_guest(config, g.profile) for g in groups]
        failed = [i for i, s in enumerate(starts) if not s.ok]
        no_cpuid = _lacking_cpuid(starts, failed)
        if no_cpuid:
            for flag in sorted(no_cpuid):
                who = hosts_of(i for i in failed if flag in starts[i].cpuid_filtered)
                neg.notes.append(f"-{flag}: base model {gm.base} sets CPUID {flag}, which {names_text(who)} "
                                 f"lack{'s' if len(who) == 1 else ''}; QEMU refuses the model under enforce=on")
                for gated in CPUID_BY_NAME[flag].gates:
                    for bit in reg.qemu_bits(gated):
                        if bit.name in features:
                            features.discard(bit.name)
                            drops.append(Drop(bit.name, "dependency", tuple(who),
                                              f"QEMU drops it without CPUID {flag}"))
            _close_under_qemu(features, drops, reg)
            config = replace(config, vmx=frozenset(features), cpuid_off=tuple(sorted({*config.cpuid_off, *no_cpuid})))
            continue
        if failed:
            s = starts[failed[0]]
            return _fail(neg, f"no safe answer: host {s.host}{_same_profile(groups[failed[0]])}: {s.reason}")
        invisible: dict[str, list[Drop]] = {}
        for i, (g, s) in enumerate(zip(groups, starts, strict=True)):
            vis = visible_features(s.guest_msrs, reg)
            for f in sorted(features - vis):
                d = _invisible_cause(f, g.profile, s, config)
                invisible.setdefault(f, []).append(replace(d, hosts=names[i]))
        if not invisible:
            break
        for f, ds in invisible.items():
            drops.extend(ds)
            features.discard(f)
        _close_under_qemu(features, drops, reg)
        if strategy == "vmx-msrs":
            ebx = all(f in features for f in PERF_FEATURES)
        config = replace(config, vmx=frozenset(features), pv_perf_global_ctrl=ebx)
    else:  # pragma: no cover - every round removes at least one feature
        return _fail(neg, "no safe answer: negotiation did not converge")
    if strategy == "vmx-msrs" and config.pv_perf_global_ctrl:
        neg.notes.append("CPUID 0x4000000A.EBX bit 0 set because PERF_GLOBAL_CTRL is visible: Windows 11 does not "
                         "boot with the PERF controls in the VMX MSRs without it")
    if strategy == "revision" and all(f in features for f in PERF_FEATURES) and revision == EVMCS_REVISION_2022:
        neg.notes.append("revision 2 exposes PERF_GLOBAL_CTRL without CPUID 0x4000000A.EBX bit 0 (the design has "
                         "no CPUID gate): Windows 11 does not boot with the PERF controls visible without it")

    # -- essentials and residual differences
    lost = [f for f in sorted(gm.required) if f in gm.vmx and f not in features]
    if lost:
        causes = _merge_drops(d for d in drops if d.feature in lost)
        why = "; ".join(f"{d.feature}: {d.cause}" + (f" on {names_text(d.hosts)}" if d.hosts else "")
                        for d in causes)
        return _fail(neg, f"no safe answer: Hyper-V as L1 needs {', '.join(lost)} ({why})")
    ref = starts[0]
    for s in starts[1:]:
        diff = diff_views(ref.guest_msrs, s.guest_msrs, reg)
        if diff:
            bits = ", ".join(sorted({c.label() for c in diff}))
            return _fail(neg, f"no safe answer: hosts {ref.host} and {s.host} differ in guest-visible bits no "
                              f"-cpu option controls: {bits}")
    neg.ok = True
    neg.config = config
    neg.drops = _merge_drops(drops)
    neg.guest_msrs = dict(ref.guest_msrs)
    neg.starts = starts
    if config.pv_perf_global_ctrl:   # only for target "simulator"
        neg.notes.append(f"needs {PERF_OPTION}=on (this project's proposed QEMU option; the simulated QEMU has it, "
                         f"real QEMU does not set CPUID 0x4000000A.EBX bit 0)")
    if strategy != "pv-cpuid":
        neg.notes.append(f"counterfactual design: the {strategy} ABI never shipped in Linux")
    return neg


def negotiate_all(model: str | GuestModel, hosts: Hosts, *, target: str = "qemu") -> dict[str, Negotiation]:
    """Every strategy over the same pool (loaded once)."""
    gm = load_guest_model(model)
    pool = load_pool(hosts)
    return {s: negotiate(gm, pool, s, target=target) for s in STRATEGIES}


__all__ = [
    "DESIGN_ALIASES",
    "DESIGN_NAMES",
    "STRATEGIES",
    "TARGETS",
    "Drop",
    "GuestConfig",
    "GuestModel",
    "Hosts",
    "Negotiation",
    "PoolGroup",
    "StartResult",
    "design_name",
    "documented_evmcs_view",
    "evmcs_incapable_reason",
    "group_kernel_text",
    "kernel_series",
    "load_guest_model",
    "load_hosts",
    "load_pool",
    "max_model",
    "names_text",
    "negotiate",
    "negotiate_all",
    "pool_groups",
    "qemu_supported",
    "start_guest",
    "strategy_of",
    "unique_group_names",
]
