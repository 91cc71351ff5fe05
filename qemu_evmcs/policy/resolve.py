"""Baselines: the VMX feature set a guest gets identically on every host of a pool, in both views.

Two views, because KVM filters only guest-initiated reads (kvm-evmcs.md §0):

- **unfiltered** -- what QEMU and libvirt see: the model's features that KVM
  reports on the host (``KVM_GET_MSRS`` on the system fd);
- **evmcs** -- what the L1 Hyper-V guest reads with eVMCS on: additionally
  through the era's eVMCS filter and the PERF_GLOBAL_CTRL CPUID gate.

For every model feature that is not in a baseline the result says on which
hosts and by which layer it is lost: ``model`` (the definition switches a base
feature off), ``cpu`` (the profile's raw ``cpu_msrs`` lack it), ``kvm`` (KVM
does not report it, or eVMCS cannot be enabled at all), ``evmcs-filter``
(with the era) or ``perf-cpuid-gate``. Features QEMU never gives a guest
(``qemu``: no property, not copied from KVM) are not wanted in the first place.

Scale: hosts come as a :class:`~qemu_evmcs.core.hostgroup.Fleet` (loaded by :mod:`qemu_evmcs.fleet`: files of any size,
directories, SQLite inventories) or are streamed, and the simulation runs once per distinct
:meth:`HostProfile.fingerprint` (:func:`compute_host_views`); per host only the name is kept. Output is
sorted, so host order never changes the result.
"""

from __future__ import annotations

import heapq
import itertools

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.errors import InputError, KvmError
from qemu_evmcs.qemu.attribution import LAYER_CPU, LAYER_FILTER, LAYER_PERF, LAYER_QEMU, hidden_layers, missing_layer
from qemu_evmcs.policy.negotiate import GuestConfig, StartResult, host_reports_perf_bit, qemu_property_features, \
    start_guest, unique_group_names
from qemu_evmcs.qemu.models import (PV_PERF_SETS_BIT, EffectiveModel, ModelDef, QemuSnapshot, effective_model,
                                    load_snapshot)
from qemu_evmcs.core.msrval import feature_present, feature_set, msrs_from_features
from qemu_evmcs.core.hostgroup import Fleet
from qemu_evmcs.core.views import visible_features
from qemu_evmcs.qemu.basecpuid import check_base, newest_runnable, proposal, unchecked_note
from qemu_evmcs.qemu.compose import evmcs_range_supported, qemu_given_features
from qemu_evmcs.qemu.hostguest import host_model_guest_msrs
from qemu_evmcs.qemu.startup import evmcs_start_error
from qemu_evmcs.core.kernelid import identify
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.registry import registry
from qemu_evmcs.kvm.simkvm import SimKvm

if TYPE_CHECKING:
    from typing import Any

LAYERS = ("model", "cpu", "kvm", "evmcs-filter", "perf-cpuid-gate", "qemu")



@dataclass(frozen=True)
class HostViews:
    """Everything the baseline needs from one distinct host (computed once per fingerprint)."""

    fingerprint: str
    vendor: str
    #: The representative's full kernel release (other hosts of the fingerprint share only ``kernel_series``).
    kernel: str
    era: str
    #: Can QEMU enable eVMCS [1..1] on this host (``hv-evmcs=on`` starts)?
    evmcs_ok: bool
    evmcs_reason: str | None
    #: Features KVM reports (unfiltered view of ``-cpu host``).
    kvm: frozenset[str]
    #: The eVMCS L1 guest's view of ``-cpu host`` (empty when eVMCS cannot be enabled).
    guest: frozenset[str]
    #: For each feature in ``kvm`` but not in ``guest``: (layer, detail).
    hidden: Mapping[str, tuple[str, str]]
    #: For each registry feature KVM does not report: (layer, detail).
    missing: Mapping[str, tuple[str, str]]
    #: ``major.minor``: what the fingerprint includes, so every host of the group has it.
    kernel_series: str = ""
    #: MSRs the (partial) profile lacks though the CPU enumerates them (``host import --partial``).
    unknown_msrs: tuple[str, ...] = ()
    #: The sentence every answer about a partial host carries (:meth:`HostProfile.unknown_note`), else ``None``.
    partial_note: str | None = None


def _evmcs_check(profile: HostProfile, kvm: SimKvm, want: tuple[int, int]) -> str | None:
    """``None`` if QEMU would enable eVMCS ``want`` here, else QEMU's error text (the start-up model's for
    ``hv-evmcs``; a model file's non-default version range is checked like ``hyperv_init_vcpu`` does)."""
    err = evmcs_start_error(profile, kvm.variant)
    if err is None and want != (1, 1):
        version = kvm.evmcs_version()
        if not evmcs_range_supported(want, version):
            err = (f"eVMCS version range [{want[0]}..{want[1]}] is not supported by kernel "
                   f"(supported: [{version & 0xFF}..{version >> 8}])")
    if err is None:
        return None
    if not kvm.has_evmcs_hook():
        return f"{err} ({kvm.no_evmcs_reason()})"
    if not profile.nested:
        return f"{err} (kvm_intel.nested=0)"
    return err


def compute_host_views(profile: HostProfile, *, pv_perf_global_ctrl: bool = False, variant: str = "shipped",
                       evmcs_version: tuple[int, int] = (1, 1)) -> HostViews:
    """Simulate one host: KVM's unfiltered features, the eVMCS guest view, and why each feature is missing.

    Pure in the profile's fingerprint (names are not used), so :func:`baseline` calls it once per
    distinct fingerprint.
    """
    reg = registry()
    kvm = SimKvm(profile, variant=variant)
    reported = kvm.feature_msrs()
    kvm_set = feature_set(reported, reg) if reported else frozenset()
    missing: dict[str, tuple[str, str]] = {}
    for name, feat in reg.features.items():
        if name in kvm_set:
            continue
        unknown = [m.name for m in reg.msrs_of_word(feat.word) if m.name in profile.unknown_msrs]
        if unknown:   # a partial profile: the answer depends on an MSR nobody read
            missing[name] = ("kvm", f"unknown: {', '.join(unknown)} is not in this partial profile (counted as "
                                    f"absent)")
        elif not profile.is_intel:
            missing[name] = ("kvm", f"{profile.vendor}: KVM has no VMX (Intel only)")
        elif not profile.nested:
            missing[name] = ("kvm", "kvm_intel.nested=0: KVM reports no VMX MSRs")
        elif missing_layer(feat, profile, reg) == LAYER_CPU:
            missing[name] = ("cpu", "the CPU does not have it (cpu_msrs)")
        elif profile.cpu_msrs is not None and feature_present(feat, profile.cpu_msrs, reg):
            missing[name] = ("kvm", f"KVM {profile.kernel} does not expose it to L1 (the CPU has it)")
        else:
            missing[name] = ("kvm", f"KVM {profile.kernel} does not report it")
    reason = _evmcs_check(profile, kvm, evmcs_version)
    guest: frozenset[str] = frozenset()
    guest_msrs: Mapping[str, int] = {}
    hidden: dict[str, tuple[str, str]] = {}
    era = profile.era
    if reason is None:
        try:
            guest_msrs = host_model_guest_msrs(profile, evmcs=True, pv_perf_global_ctrl=pv_perf_global_ctrl,
                                               variant=variant)
            guest = visible_features(guest_msrs, reg)   # the one rule of 'visible' (core.views)
        except KvmError as err:  # pragma: no cover - _evmcs_check mirrors enable_evmcs
            reason = str(err)
    if reason is not None:
        guest = frozenset()
        for name in kvm_set:
            hidden[name] = ("kvm", reason)
    else:
        # The layer of each hidden bit: the one attribution (qemu.attribution), as ``explain`` says it.
        causes = hidden_layers(era, reported, guest_msrs, perf_gate_open=pv_perf_global_ctrl, reg=reg)
        for name in kvm_set - guest:
            cause = causes.get(name, LAYER_FILTER)
            if cause == LAYER_PERF:
                hidden[name] = (cause, "CPUID 0x4000000A.EBX bit 0 is clear (QEMU never sets it)"
                                if not pv_perf_global_ctrl else "CPUID 0x4000000A.EBX bit 0 gate")
            elif cause == LAYER_QEMU:
                hidden[name] = (cause, "QEMU never gives it to a guest (no QEMU property, not copied from KVM)")
            else:
                hidden[name] = ("evmcs-filter", f"eVMCS filter of kernel era {era.id}")
    return HostViews(fingerprint=profile.fingerprint(), vendor=profile.vendor, kernel=profile.kernel, era=era.id,
                     evmcs_ok=reason is None, evmcs_reason=reason, kvm=kvm_set, guest=guest, hidden=hidden,
                     missing=missing, kernel_series=f"{profile.version.major}.{profile.version.minor}",
                     unknown_msrs=profile.unknown_msrs, partial_note=profile.unknown_note())


# =========================================================================== results

@dataclass(frozen=True)
class HostGroup:
    """Hosts sharing one fingerprint, and what a guest gets there.

    :param starts: would QEMU start the guest (only eVMCS can stop it: ``hv-evmcs`` errors are fatal,
        missing vmx-* features are only warnings).
    :param unfiltered: the guest's vmx features as QEMU/libvirt see them on these hosts.
    :param evmcs: what the L1 guest reads with eVMCS on (empty when it does not start).
    :param kernel: the full kernel release of the group's first host; the other hosts share only
        ``kernel_series`` (major.minor, what the fingerprint includes) -- their full strings may differ.
    """

    fingerprint: str
    hosts: tuple[str, ...]
    vendor: str
    kernel: str
    era: str
    starts: bool
    reason: str | None
    unfiltered: frozenset[str]
    evmcs: frozenset[str]
    kernel_series: str = ""
    #: MSRs these hosts' (partial) profile lacks: the features they carry count as absent here.
    unknown_msrs: tuple[str, ...] = ()

    def to_json(self, name: str | None = None) -> dict[str, Any]:
        """Plain data; ``name`` is how losses refer to the group (default: its first host)."""
        return {"name": name if name is not None else (self.hosts[0] if self.hosts else ""),
                "fingerprint": self.fingerprint, "hosts": list(self.hosts), "host_count": len(self.hosts),
                "vendor": self.vendor, "kernel_series": self.kernel_series, "first_host_kernel": self.kernel,
                "era": self.era, "starts": self.starts, "reason": self.reason,
                "unfiltered": sorted(self.unfiltered), "evmcs": sorted(self.evmcs),
                "unknown_msrs": list(self.unknown_msrs)}


@dataclass(frozen=True)
class Loss:
    """One wanted feature missing from a baseline, on some hosts, for one reason.

    :param view: ``unfiltered`` (QEMU never gets it; then it is missing from the eVMCS view too) or
        ``evmcs`` (QEMU gets it, the L1 guest does not).
    :param layer: one of :data:`LAYERS`.
    :param history: ``added: <reason>`` when the definition marks the feature as added later, so a host
        lacking it is a definition change, not a host incompatibility for older guests.
    :param group_hosts: the host names of each group concerned (each sorted; the groups' own tuples, shared, so
        a loss costs one entry per group, not per host: 30 losses x 1M hosts would be 30M names).
    :param groups: the fingerprints of the host groups concerned (:attr:`hosts` are all their hosts).
    """

    feature: str
    view: str
    layer: str
    detail: str
    group_hosts: tuple[tuple[str, ...], ...]
    history: str | None = None
    groups: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        """Number of hosts concerned."""
        return sum(map(len, self.group_hosts))

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every host concerned, sorted (built on each access: at fleet scale use :attr:`count` and
        :meth:`first_hosts`)."""
        if len(self.group_hosts) == 1:
            return self.group_hosts[0]
        return tuple(heapq.merge(*self.group_hosts))

    def first_hosts(self, n: int) -> list[str]:
        """The first ``n`` of :attr:`hosts`, without building the rest."""
        return list(itertools.islice(heapq.merge(*self.group_hosts), n))

    def to_json(self, group_names: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Plain data. With ``group_names`` (fingerprint -> name) the loss names its groups instead of listing
        every host (the hosts are listed once, under the result's ``groups``)."""
        out: dict[str, Any] = {"feature": self.feature, "view": self.view, "layer": self.layer,
                               "detail": self.detail}
        if group_names is not None and self.groups:
            out["groups"] = sorted(group_names[fp] for fp in self.groups)
        else:
            out["hosts"] = list(self.hosts)
        out["host_count"] = self.count
        if self.history is not None:
            out["history"] = self.history
        return out


@dataclass(frozen=True)
class BaselineResult:
    """A baseline over a pool, for a model or (``model is None``) for the pool alone.

    :param wanted: the model's effective vmx features (pool mode: every feature some host reports that a guest
        can be given at all, :func:`qemu_evmcs.qemu.compose.qemu_given_features`).
    :param unfiltered: features every host gives the guest, as QEMU/libvirt see them.
    :param evmcs: features every host gives the eVMCS L1 guest.
    """

    model: str | None
    base: str | None
    pv_perf_global_ctrl: str
    host_count: int
    wanted: frozenset[str]
    unfiltered: frozenset[str]
    evmcs: frozenset[str]
    groups: tuple[HostGroup, ...]
    losses: tuple[Loss, ...]
    not_starting: tuple[str, ...] = field(default=())
    #: Hosts whose profiles record no ``cpu_features``: the base model's CPUID was not checked there.
    base_cpuid_unchecked: int = 0
    #: What the answer assumed: one sentence per partial host profile (as negotiate and explain say it).
    notes: tuple[str, ...] = ()

    def base_cpuid_note(self) -> str | None:
        """``base model CPUID not checked on N hosts (...)`` when some hosts could not be checked."""
        if self.base is None or not self.base_cpuid_unchecked:
            return None
        return unchecked_note(self.base_cpuid_unchecked)

    def group_names(self) -> dict[str, str]:
        """fingerprint -> the group's name: its first host (made unique if two groups share one)."""
        names = unique_group_names([(g.hosts[0] if g.hosts else "", g.fingerprint) for g in self.groups])
        return {g.fingerprint: n for g, n in zip(self.groups, names, strict=True)}

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``--json`` (sorted, deterministic).

        Hosts are listed once, under ``groups`` (one per distinct profile, ``name``: its first host); each
        loss names its groups (``groups``) and counts their hosts (``count``), so 100,000 hosts are listed
        once, not once per lost feature. ``not_starting`` names groups the same way. Keys as in every command
        (docs/json.md): ``pv_perf_global_ctrl`` is whether the guests' CPUID 0x4000000A.EBX bit 0 is set (the
        ``auto``/``on``/``off`` setting that decided it is ``pv_perf_global_ctrl_setting``), ``distinct_profiles``
        the number of groups.
        """
        names = self.group_names()
        return {
            "model": self.model, "base": self.base,
            "pv_perf_global_ctrl": PV_PERF_SETS_BIT[self.pv_perf_global_ctrl],
            "pv_perf_global_ctrl_setting": self.pv_perf_global_ctrl,
            "host_count": self.host_count, "distinct_profiles": len(self.groups),
            "wanted": sorted(self.wanted),
            "baseline": {"unfiltered": sorted(self.unfiltered), "evmcs": sorted(self.evmcs)},
            "not_starting": sorted(names[g.fingerprint] for g in self.groups if not g.starts),
            "losses": [x.to_json(names) for x in self.losses],
            "groups": [g.to_json(names[g.fingerprint]) for g in self.groups],
            "notes": list(self.notes),
        }


# =========================================================================== computation

def _pv_setting(model: ModelDef | None, override: str | None) -> str:
    if override is not None:
        if override not in PV_PERF_SETS_BIT:
            raise InputError(f"pv-perf-global-ctrl must be auto, on or off, not {override!r}")
        return override
    return model.pv_perf_global_ctrl if model is not None else "auto"


#: A host's start-up configuration: what QEMU is started with there (the same for every host of a named
#: model; each host's own set for ``-cpu host``).
StartConfig = Callable[[HostProfile], GuestConfig]


def model_start_config(eff: EffectiveModel, design: str = "shipped", pv_perf_global_ctrl: bool = False) -> StartConfig:
    """The model as a user starts it: ``-cpu BASE,vmx=on`` with its vmx-* and hv-* settings and QEMU's default
    ``check`` (a feature the host lacks is dropped with a warning, never fatal).

    ``pv_perf_global_ctrl`` (a VMM that sets CPUID 0x4000000A.EBX bit 0; QEMU never does, qemu.md §1.3) is
    passed only where KVM offers the bit (6.1+): older kernels ignore it, it never stops the start there.
    """
    m = eff.model
    config = GuestConfig(model=m.name, base=eff.base.name, vmx=frozenset(eff.vmx & qemu_property_features()),
                         hyperv=tuple(sorted(k for k, on in m.hyperv.items() if on)), enforce=False, design=design)
    if not pv_perf_global_ctrl:
        return lambda _profile: config
    return lambda profile: replace(config, pv_perf_global_ctrl=host_reports_perf_bit(SimKvm(profile)))


def _not_started(res: StartResult, profile: HostProfile) -> tuple[str, str, str]:
    """(layer, the group's reason, the shorter per-feature loss detail) for a configuration QEMU does not start:
    QEMU's own text, and for a rejected VMX MSR write on an enable-time era why the kernel refused."""
    era = profile.era
    if res.stage == "msr-write" and era.filter_at == "enable":
        why = (f"QEMU aborts: kernel era {era.id} applies the eVMCS filter when eVMCS is enabled, so KVM_SET_MSRS "
               f"of a control the filter clears fails (kvm-evmcs.md §4.2, §10.3)")
        return "evmcs-filter", f"{res.reason} ({why})", f"QEMU does not start here ({res.reason}, era {era.id})"
    return "kvm", res.reason, f"QEMU does not start here ({res.reason})"


def baseline(hosts: Iterable[HostProfile] | Fleet, model: ModelDef | EffectiveModel | None = None, *,
             pv_perf_global_ctrl: str | None = None, variant: str = "shipped",
             snapshot: QemuSnapshot | None = None, start_config: StartConfig | None = None) -> BaselineResult:
    """The baseline of ``hosts`` (a fleet, or streamed) for ``model``, or the pool's own common set without a model.

    Whether a host's guest starts is the start-up model's answer (:func:`qemu_evmcs.qemu.startup.start`, via
    :func:`~qemu_evmcs.policy.negotiate.start_guest`) for the configuration QEMU is really started with:
    the model's (:func:`model_start_config`) or ``start_config``'s. A host where it does not start gives the
    guest nothing, and says QEMU's text: on 4.20-5.5 kernels a model asking for a control that KVM's
    enable-time eVMCS filter clears aborts (``failed to set MSR 0x48d``). Without a model and without
    ``start_config`` (``--pool``: the set a custom model can pin) only eVMCS itself is checked.

    :param model: a definition (resolved against ``snapshot``) or an already resolved model.
    :param pv_perf_global_ctrl: overrides the model's setting (``auto``/``on``/``off``).
    :param start_config: the configuration started on each host (``-cpu host``: :func:`host_config`).
    :raise InputError: no hosts, or the model's base is not in the snapshot.
    """
    eff: EffectiveModel | None = None
    if isinstance(model, ModelDef):
        eff = effective_model(model, snapshot)
    elif model is not None:
        eff = model
    mdef = eff.model if eff is not None else None
    pv = _pv_setting(mdef, pv_perf_global_ctrl)
    pv_bit = PV_PERF_SETS_BIT[pv]
    want_evmcs = mdef.evmcs if mdef is not None else True
    version = (mdef.evmcs_version or (1, 1)) if mdef is not None else (1, 1)
    if start_config is None and eff is not None and want_evmcs:
        start_config = model_start_config(eff, variant, pv_bit)

    views: dict[str, HostViews] = {}
    # fingerprint -> (layer, reason, loss detail) when QEMU does not start the configuration there
    not_started: dict[str, tuple[str, str, str]] = {}
    # fingerprint -> what the started guest sees (core.views' rule over the start-up model's guest MSRs)
    started_view: dict[str, frozenset[str]] = {}
    names: dict[str, list[str]] = {}
    base_missing: dict[str, list[str] | None] = {}   # fingerprint -> CPUID features the base needs and it lacks
    base_name = eff.base.name if eff is not None else None

    def check_host(fp: str, profile: HostProfile) -> None:
        """The start-up model's verdict and the base model's CPUID, once per fingerprint."""
        if start_config is not None and views[fp].evmcs_ok:
            res = start_guest(start_config(profile), profile)
            if not res.ok:
                not_started[fp] = _not_started(res, profile)
            else:
                started_view[fp] = visible_features(res.guest_msrs)
        if base_name is None:
            return
        profiles_of[fp] = profile
        chk = check_base(base_name, [profile])
        base_missing[fp] = None if chk.unchecked else chk.missing.get(profile.name, [])

    profiles_of: dict[str, HostProfile] = {}
    count = 0
    # A kernel build of unknown era counts once per candidate era ("host (if era X)"): the baseline holds for all.
    if isinstance(hosts, Fleet):
        hosts = hosts.with_candidates()
    else:
        hosts = (c for p in hosts for c in p.candidate_profiles())
    if isinstance(hosts, Fleet):
        for fp, members in hosts.members.items():
            if fp not in views:
                views[fp] = compute_host_views(hosts.distinct[fp], pv_perf_global_ctrl=pv_bit, variant=variant,
                                               evmcs_version=version)
                check_host(fp, hosts.distinct[fp])
                names[fp] = members        # a Fleet's fingerprints are unique: no copy
            else:  # pragma: no cover - a Fleet has each fingerprint once
                names[fp] = names[fp] + members
            count += len(members)
    else:
        for profile in hosts:
            count += 1
            fp = profile.fingerprint()
            if fp not in views:
                views[fp] = compute_host_views(profile, pv_perf_global_ctrl=pv_bit, variant=variant,
                                               evmcs_version=version)
                check_host(fp, profile)
                names[fp] = []
            names[fp].append(profile.name)
    if count == 0:
        raise InputError("baseline needs at least one host profile")

    registry()
    if eff is not None:
        wanted: frozenset[str] = eff.vmx
        considered = eff.vmx | eff.dropped_by_model
    else:
        # A pool's own set: what some host reports that a guest can be given at all (the one rule,
        # qemu.compose.qemu_given_features): a custom model can pin nothing else.
        wanted = frozenset().union(*(v.kvm for v in views.values())) & qemu_given_features()
        considered = wanted
    groups: list[HostGroup] = []
    loss_hosts: dict[tuple[str, str, str, str], list[tuple[str, ...]]] = {}
    loss_groups: dict[tuple[str, str, str, str], list[str]] = {}
    not_starting: list[str] = []
    unchecked = 0
    for fp, v in views.items():
        hosts_here = tuple(sorted(names[fp]))
        starts = v.evmcs_ok or not want_evmcs
        reason = None if starts else v.evmcs_reason
        if starts and fp in not_started:
            starts, reason = False, not_started[fp][1]
        lacking = base_missing.get(fp)
        if base_name is not None and fp in base_missing and lacking is None:
            unchecked += len(hosts_here)
        if lacking:
            starts = False
            reason = (f"base model {base_name} needs CPUID features these hosts lack: {', '.join(lacking)} (QEMU "
                      f"refuses with enforce=on; without it the guest silently loses them)")
        unfiltered = wanted & v.kvm
        # The guest's view: the started configuration's (the start-up model) where one was started, else
        # (--pool: a custom model's largest set) the -cpu host view of KVM's set.
        seen = started_view.get(fp, v.guest)
        evmcs_view: frozenset[str]
        if not want_evmcs or fp in not_started:
            evmcs_view = frozenset()   # no eVMCS requested, or QEMU does not start: there is no eVMCS L1 view
        else:
            evmcs_view = unfiltered & seen
        groups.append(HostGroup(fingerprint=fp, hosts=hosts_here, vendor=v.vendor, kernel=v.kernel,
                                era=v.era, starts=starts, reason=reason,
                                unfiltered=unfiltered, evmcs=evmcs_view, kernel_series=v.kernel_series,
                                unknown_msrs=v.unknown_msrs))
        if not starts:
            not_starting.extend(hosts_here)
        for feat in considered:
            if eff is not None and feat in eff.dropped_by_model:
                continue
            if feat not in v.kvm:
                layer, detail = v.missing.get(feat, ("kvm", "KVM does not report it"))
                key = (feat, "unfiltered", layer, detail)
            elif want_evmcs and fp in not_started:
                key = (feat, "evmcs", not_started[fp][0], not_started[fp][2])
            elif want_evmcs and feat not in seen:
                layer, detail = v.hidden.get(feat, ("evmcs-filter", f"eVMCS filter of kernel era {v.era}"))
                key = (feat, "evmcs", layer, detail)
            else:
                continue
            loss_hosts.setdefault(key, []).append(hosts_here)
            loss_groups.setdefault(key, []).append(fp)
    if eff is not None:
        for feat in eff.dropped_by_model:
            key = (feat, "unfiltered", "model", f"{eff.model.name} switches off this {eff.base.name} feature")
            loss_hosts[key] = [g.hosts for g in groups]
            loss_groups[key] = [g.fingerprint for g in groups]
    added = mdef.added if mdef is not None else {}
    losses = tuple(
        Loss(feature=f, view=view, layer=layer, detail=detail, group_hosts=tuple(hs),
             history=f"added: {added[f]}" if f in added else None,
             groups=tuple(loss_groups[(f, view, layer, detail)]))
        for (f, view, layer, detail), hs in sorted(loss_hosts.items(), key=lambda kv: (
            kv[0][0], kv[0][1] != "unfiltered", LAYERS.index(kv[0][2]), kv[0][3])))
    groups.sort(key=lambda g: (g.hosts[0] if g.hosts else "", g.fingerprint))
    uf = frozenset(wanted).intersection(*(g.unfiltered for g in groups)) if groups else frozenset()
    ev = frozenset(wanted).intersection(*(g.evmcs for g in groups)) if want_evmcs else frozenset()
    return BaselineResult(
        model=mdef.name if mdef is not None else None, base=eff.base.name if eff is not None else None,
        pv_perf_global_ctrl=pv, host_count=count, wanted=frozenset(wanted), unfiltered=uf, evmcs=ev,
        groups=tuple(groups), losses=losses, not_starting=tuple(sorted(not_starting)), base_cpuid_unchecked=unchecked,
        notes=(tuple(sorted({v.partial_note for v in views.values() if v.partial_note}))
               + _propose(base_name, base_missing, profiles_of, snapshot)),
    )


def _propose(base: str | None, missing: dict[str, list[str] | None], profiles: dict[str, HostProfile],
             snapshot: QemuSnapshot | None) -> tuple[str, ...]:
    """Where the base model lacks CPUID on some host: the model every host can run, as ``negotiate --model auto``
    would pick it (issue 12: baseline proposes, it does not only refuse)."""
    if base is None or not any(missing.values()):
        return ()
    snap = snapshot or load_snapshot()
    pick = newest_runnable(list(profiles.values()), snap)
    return (f"base model {base} does not start on every host; {proposal(pick, snap.version)}",) if pick else ()


# =========================================================================== synthetic hosts

def profile_from_features(name: str, features: Iterable[str], *, kernel: str = "6.3",
                          vendor: str = "GenuineIntel", nested: bool = True, kvm_hyperv: bool = True,
                          cpu_features: Iterable[str] | None = None) -> HostProfile:
    """A synthetic :class:`HostProfile` whose KVM reports exactly ``features``."""
    feats: set[str] = set(features)
    return HostProfile(
        name=name, vendor=vendor, kernel=kernel, version=identify(kernel).version, msrs=msrs_from_features(feats),
        nested=nested, kvm_hyperv=kvm_hyperv,
        cpu_msrs=msrs_from_features(cpu_features) if cpu_features is not None else None, synthetic=True,
    )
