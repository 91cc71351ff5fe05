"""Live-migration verdicts for eVMCS guests: ``fine``, ``blocked`` or ``unsafe``.

A migration is simulated the way it happens: the guest runs on the source with
some configuration; the destination QEMU is started with the *same* command
line, composes its own VMX MSR writes and issues them on a destination vCPU in
QEMU's order (the start-up model, through :func:`~qemu_evmcs.policy.negotiate.start_guest`). Then:

- ``blocked``: the destination refuses (a hv-* feature or the PV CPUID bit unsupported, the eVMCS
  version or revision refused, a feature missing under ``enforce=on``, a KVM_SET_MSRS entry rejected so
  QEMU aborts, or the design's userspace check fails). Safe: the source keeps running.
- ``unsafe``: the destination starts but the L1 guest's VMX MSRs lost a control it could use (or a control
  became required). An L2 VM-entry relying on it then fails the destination's eVMCS controls check.
- ``fine``: the guest sees exactly what it saw (gained bits are reported but harmless).

Designs (how the source guest was configured; see :data:`DESIGNS`):

- ``naive``: no negotiation; the kernel updated eVMCSv1 in place (PERF_GLOBAL_CTRL and TSC scaling visible
  on 6.1+ with no gate) and QEMU runs the model as is (no ``enforce``);
- ``shipped`` / ``revision`` / ``vmx-msrs``: the source guest was negotiated for the source host alone with
  the matching strategy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.errors import NegativeAnswer
from qemu_evmcs.core.evmcs_filter import filter_all
from qemu_evmcs.core.msrval import hex64
from qemu_evmcs.policy.hostmodel import host_config, layer_of, supported_on_both
from qemu_evmcs.core.views import BitChange, diff_views, visible_features
from qemu_evmcs.policy.negotiate import (
    DESIGN_STRATEGY_OF,
    HV_EVMCS_DEPS,
    PERF_OPTION,
    REVISION_OPTION,
    GuestConfig,
    GuestModel,
    documented_evmcs_view,
    host_reports_perf_bit,
    load_guest_model,
    negotiate,
    qemu_property_features,
    qemu_supported,
    start_guest,
)
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.registry import registry
from qemu_evmcs.kvm.simkvm import SimKvm

if TYPE_CHECKING:
    from typing import Any

DESIGNS = ("naive", "shipped", "revision", "vmx-msrs")
VERDICTS = ("fine", "blocked", "unsafe")


def naive_config(model: GuestModel) -> GuestConfig:
    """The model as is: every requested feature, hv-evmcs (+ hv-vapic), no PV bit, QEMU's default ``check``."""
    hv = {k for k, v in model.hyperv.items() if v} | {"hv-evmcs", *HV_EVMCS_DEPS}
    return GuestConfig(model=model.name, base=model.base, vmx=frozenset(model.vmx & qemu_property_features()),
                       hyperv=tuple(sorted(hv)), pv_perf_global_ctrl=False, enforce=False, design="naive")


def source_config(model: str | GuestModel, source: HostProfile, design: str, *,
                  target: str = "qemu") -> GuestConfig:
    """How ``design`` configures a guest that starts on ``source`` (without knowing the destination).

    ``target``: the QEMU the guest runs on (:data:`~qemu_evmcs.policy.negotiate.TARGETS`): real QEMU cannot set
    the PV CPUID bit or ask for an eVMCS revision, the simulated QEMU can.

    :raise NegativeAnswer: the design finds no configuration for the source host.
    """
    gm = load_guest_model(model)
    if design == "naive":
        return naive_config(gm)
    neg = negotiate(gm, [source], DESIGN_STRATEGY_OF[design], target=target)
    if not neg.ok or neg.config is None:
        raise NegativeAnswer(f"the guest cannot start on the source: {neg.error}", verdict="source-fails")
    return neg.config


def config_from_running(model: str, props: Mapping[str, bool], unavailable: Sequence[str],
                        extra: Mapping[str, Any], design: str = "shipped") -> tuple[GuestConfig, list[str]]:
    """The configuration a running guest was started with, rebuilt from its QOM properties; and notes.

    ``props``: the CPU's ``vmx``/``vmx-*``/``hv-*`` booleans now; ``unavailable``: its ``unavailable-features``
    (requested but filtered by the accelerator or host: under TCG every vmx bit). What was requested is what
    is on plus what was filtered, and that is what the destination QEMU (same command line) is asked for;
    the source host profile then decides what the guest sees. ``extra``: ``enforce`` and the simulator's
    options (``hv-evmcs-perf-global-ctrl``, ``x-hv-evmcs-revision``) where the CPU has them.
    """
    reg = registry()
    notes: list[str] = []
    filtered = set(unavailable)
    requested = {n for n, on in props.items() if on} | {n for n in filtered if n == "vmx" or n.startswith("vmx-")}
    vmx: set[str] = set()
    if "vmx" in requested:
        for prop in sorted(n for n in requested if n.startswith("vmx-")):
            bits = reg.qemu_bits(prop)
            if not bits:
                notes.append(f"{prop}: unknown to this tool's registry, left out")
            vmx.update(b.name for b in bits)
    hv = {n for n, on in props.items() if on and n.startswith("hv-") and n not in ("hv-passthrough", PERF_OPTION)}
    if extra.get("hv-passthrough"):
        notes.append("hv-passthrough: the guest has every hv-* flag its source KVM supports; the destination "
                     "decides its own set (QEMU blocks such a migration)")
    revision = extra.get(REVISION_OPTION)
    config = GuestConfig(model=model, base=model, vmx=frozenset(vmx), hyperv=tuple(sorted(hv)),
                         pv_perf_global_ctrl=bool(extra.get(PERF_OPTION)),
                         revision=int(revision) if isinstance(revision, int) and revision > 0 else None,
                         enforce=bool(extra.get("enforce")), design=design)
    return config, notes


def source_view(config: GuestConfig, source: HostProfile) -> dict[str, int]:
    """What a guest configured as ``config`` reads on ``source`` (simulated start).

    :raise NegativeAnswer: it could not have started there (the profile does not match the running QEMU).
    """
    src = start_guest(config, source)
    if not src.ok:
        raise NegativeAnswer(f"the running guest's configuration cannot start on the source profile "
                             f"{source.name}: {src.reason.removeprefix('error: ')}", verdict="source-fails")
    return dict(src.guest_msrs)


@dataclass
class MigrationVerdict:
    """One migration's outcome.

    :param unnecessary: for ``blocked``: the destination could have shown the guest exactly the same VMX MSRs
        had the refused item (revision, PV bit, an invisible feature) been relaxed -- the design blocks for
        nothing.
    """

    design: str
    source: str
    destination: str
    verdict: str
    reason: str
    stage: str | None = None
    lost: list[BitChange] = field(default_factory=list)
    gained: list[BitChange] = field(default_factory=list)
    unnecessary: bool = False
    source_msrs: dict[str, int] = field(default_factory=dict)
    destination_msrs: dict[str, int] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        """Does the L1 guest see exactly the VMX MSRs it saw on the source?"""
        return self.verdict == "fine" and not self.gained

    @property
    def wrong(self) -> bool:
        """Did the design get it wrong (let an unsafe migration through, or block one that was safe)?"""
        return self.verdict == "unsafe" or (self.verdict == "blocked" and self.unnecessary)

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "verdict": self.verdict, "design": self.design, "source": self.source,
            "destination": self.destination, "reason": self.reason, "stage": self.stage,
            "identical": self.identical, "unnecessary_block": self.unnecessary,
            "lost": [c.to_json() for c in self.lost], "gained": [c.to_json() for c in self.gained],
            "source_msrs": {k: hex64(v) for k, v in self.source_msrs.items()},
            "destination_msrs": {k: hex64(v) for k, v in self.destination_msrs.items()},
        }


def _relaxed(config: GuestConfig, dest: HostProfile) -> GuestConfig:
    """The most the destination could accept: refused revision, PV bit and missing features relaxed."""
    kvm = SimKvm(dest, variant="revision")
    vmx = config.vmx & qemu_supported(dest)
    if dest.era.filter_at == "enable":
        vmx -= visible_features(dest.msrs) - visible_features(filter_all(dest.era, dest.msrs))
    if config.design == "vmx-msrs":
        vmx &= visible_features(documented_evmcs_view(dest))
    revision = config.revision
    if config.design == "revision" and revision is not None:
        revision = min(revision, kvm.max_evmcs_revision() or 1)
    pv = config.pv_perf_global_ctrl and host_reports_perf_bit(SimKvm(dest))
    return replace(config, vmx=frozenset(vmx), revision=revision, pv_perf_global_ctrl=pv)


def check_migration(config: GuestConfig, source: HostProfile, destination: HostProfile) -> MigrationVerdict:
    """Verdict for migrating a guest configured as ``config`` from ``source`` to ``destination``.

    :raise NegativeAnswer: the guest cannot even start on the source.
    """
    src = start_guest(config, source)
    if not src.ok:
        # QEMU's own "error: failed to set MSR ..." text, without QEMU's prefix: the CLI prints a verdict line.
        raise NegativeAnswer(f"the guest cannot start on the source {source.name}: "
                             f"{src.reason.removeprefix('error: ')}", verdict="source-fails")
    return verdict_from_view(config, src.guest_msrs, source.name, destination)


def verdict_from_view(config: GuestConfig, source_msrs: Mapping[str, int], source_name: str,
                      destination: HostProfile) -> MigrationVerdict:
    """Verdict given the guest-visible VMX MSRs on the source (for example from a running QEMU)."""
    reg = registry()
    v = MigrationVerdict(design=config.design, source=source_name, destination=destination.name, verdict="fine",
                         reason="", source_msrs=dict(source_msrs))
    dst = start_guest(config, destination)
    if not dst.ok:
        v.verdict, v.stage = "blocked", dst.stage
        v.reason = f"destination refuses ({dst.stage}): {dst.reason}; the source keeps running"
        relaxed = start_guest(_relaxed(config, destination), destination)
        if relaxed.ok and not diff_views(source_msrs, relaxed.guest_msrs, reg):
            v.unnecessary = True
            v.reason += ("; unnecessary: the guest would have seen identical VMX MSRs"
                         + (" (revision mismatch on hardware that lacks the new controls anyway)"
                            if dst.stage == "revision" else ""))
        return v
    v.destination_msrs = dict(dst.guest_msrs)
    changes = diff_views(source_msrs, dst.guest_msrs, reg)
    v.lost = [c for c in changes if c.loses]
    v.gained = [c for c in changes if c not in v.lost]
    if v.lost:
        names = sorted({c.label() for c in v.lost})
        v.verdict = "unsafe"
        v.reason = (f"guest-visible VMX controls disappear on {destination.name}: {', '.join(names)}"
                    + _loss_cause(v.lost, dst.dropped, visible_features(dict(dst.writes), reg), destination)
                    + "; an L2 VM-entry using them fails the destination's eVMCS controls check")
    elif v.gained:
        v.reason = "guest keeps every control; gains " + ", ".join(sorted({c.label() for c in v.gained}))
    else:
        v.reason = "identical guest-visible VMX MSRs"
    partial = destination.unknown_note()
    if partial:
        v.reason += f" (note: {partial})"
    return v


def _loss_cause(lost: list[BitChange], dropped: frozenset[str], written: frozenset[str],
                destination: HostProfile) -> str:
    """Which layer took each lost control away on the destination, in words (empty when it cannot be told).

    QEMU dropped it (the host lacks it), the eVMCS filter hid it (QEMU wrote it, the guest does not read it), or
    neither (a bit QEMU never wrote there: the destination's KVM does not report it).
    """
    names = {c.feature or c.label() for c in lost}
    qemu = sorted(n for n in names if n in dropped)
    filt = sorted(n for n in names if n in written and n not in dropped)
    other = sorted(names - set(qemu) - set(filt))
    parts = [(qemu, f"QEMU dropped {', '.join(qemu)}: the host lacks them"),
             (filt, f"hidden by the eVMCS filter of kernel era {destination.era.id}"),
             (other, f"not reported by {destination.name}'s KVM")]
    used = [(group, text) for group, text in parts if group]
    if len(used) == 1:
        return f" ({used[0][1]})"
    return " (" + "; ".join(text if group is qemu else f"{text}: {', '.join(group)}" for group, text in used) + ")"


def migrate_check(model: str | GuestModel, source: HostProfile, destination: HostProfile,
                  design: str = "shipped", *, target: str = "qemu") -> MigrationVerdict:
    """``migrate-check``: configure for the source with ``design`` (on ``target``), then check the destination.

    For ``--model host`` (:mod:`qemu_evmcs.policy.hostmodel`) the destination's guest is configured from the
    destination's own KVM, as ``-cpu host`` is: the verdict says what QEMU and libvirt would not.
    """
    gm = load_guest_model(model)
    if gm.per_host:
        return migrate_host(gm, source, destination, design, target=target)
    config = source_config(gm, source, design, target=target)
    return check_migration(config, source, destination)


def migrate_host(gm: GuestModel, source: HostProfile, destination: HostProfile, design: str = "shipped", *,
                 target: str = "qemu") -> MigrationVerdict:
    """A ``-cpu host`` guest migrating: each side configured from its own host.

    :raise NegativeAnswer: the guest cannot even start on the source.
    """
    cfg_design = "shipped" if design == "naive" else design
    src = start_guest(host_config(gm, source, cfg_design, target), source)
    if not src.ok:
        raise NegativeAnswer(f"-cpu {gm.name} cannot start on the source {source.name}: "
                             f"{src.reason.removeprefix('error: ')}", verdict="source-fails")
    v = verdict_from_view(host_config(gm, destination, cfg_design, target), src.guest_msrs, source.name,
                          destination)
    v.design = design
    if v.lost or v.gained:
        both = supported_on_both(source, destination)
        layers = sorted({layer_of(c.feature or c.label(), both) for c in [*v.lost, *v.gained]})
        why = {"evmcs-filter": f"the eVMCS filters of kernels {source.kernel} and {destination.kernel} differ "
                               f"(both hosts' KVM report these controls)",
               "host": "the hosts' KVM report different VMX features"}
        v.reason += (f" [-cpu {gm.name}: each host gives the guest its own KVM set; layer: "
                     + "; ".join(why[x] for x in layers) + "; QEMU and libvirt do not check this]")
    return v


def migrate_check_candidates(model: str | GuestModel, source: HostProfile, destination: HostProfile,
                             design: str = "shipped", *, target: str = "qemu") -> MigrationVerdict:
    """:func:`migrate_check` for hosts whose kernel era may be ambiguous (a distribution build no source places,
    :mod:`qemu_evmcs.core.kernelid`): checked for every pair of candidate eras. ``fine`` only if every pair is
    fine and the guest sees the same VMX MSRs whichever era each host is in; otherwise the first failing pair's
    verdict, or ``unsafe`` naming the eras whose views differ."""
    sources, dests = source.candidate_profiles(), destination.candidate_profiles()
    if len(sources) == 1 and len(dests) == 1:
        return migrate_check(model, source, destination, design, target=target)
    checked = [(s, d, migrate_check(model, s, d, design, target=target)) for s in sources for d in dests]

    def which(s: HostProfile, d: HostProfile) -> str:
        return f"if {source.name} is in era {s.era.id} and {destination.name} in era {d.era.id}"
    for s, d, v in checked:
        if v.verdict != "fine":
            return replace(v, reason=f"{which(s, d)}: {v.reason}", source=source.name,
                           destination=destination.name)
    first = checked[0][2]
    for s, d, v in checked[1:]:
        if v.source_msrs != first.source_msrs or v.destination_msrs != first.destination_msrs:
            s0, d0 = checked[0][0], checked[0][1]
            return replace(first, verdict="unsafe", stage="ambiguous-kernel", source=source.name,
                           destination=destination.name,
                           reason=f"the guest's VMX MSRs depend on which era the kernel builds are in: "
                                  f"{which(s0, d0)} differs from {which(s, d)}; give kernel_version: "
                                  f"({source.identity.describe()}; {destination.identity.describe()})")
    eras = sorted({f"{s.era.id} -> {d.era.id}" for s, d, _ in checked})
    return replace(first, reason=f"{first.reason} (holds for every candidate era pair: {', '.join(eras)})",
                   source=source.name, destination=destination.name)


def parse_qmp_msrs(ret: object) -> dict[str, int]:
    """The reply of ``x-evmcs-query-guest-vmx-msrs``: ``{"msrs": {NAME: "0x..."|int}}`` or ``[{name,value}]``."""
    reg = registry()
    raw: Any = ret.get("msrs", ret) if isinstance(ret, dict) else ret
    out: dict[str, int] = {}
    items = raw.items() if isinstance(raw, dict) else ((e.get("name"), e.get("value")) for e in raw or [])
    for name, value in items:
        if isinstance(name, int) or (isinstance(name, str) and name.startswith("0x")):
            name = reg.msr(int(name, 16) if isinstance(name, str) else name).name
        out[str(name)] = int(value, 16) if isinstance(value, str) else int(value)
    return out
