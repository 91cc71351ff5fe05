"""Check what QEMU actually applied of the ``-cpu`` the user asked for.

Why: QEMU silently (or with a warning nobody reads) drops requested vmx-*
features the host or accelerator cannot provide, and accepts hv-* flags that
have no effect without KVM. After start-up we ask QEMU itself over QMP:

- ``query-cpus-fast`` for the CPU's ``qom-path`` (not hard-coded: it is not
  always ``/machine/unattached/device[0]``);
- ``query-cpu-model-expansion`` type ``full`` of the requested model and
  props: what the model *would* have, before accelerator filtering;
- ``qom-get`` of ``unavailable-features`` and of each requested boolean
  feature on that path: what the running CPU *does* have;
- ``query-kvm``: hv-* enlightenments only mean something under KVM;

then join that with the parsed stderr warnings (:mod:`.warnings`) to say, per
requested ``vmx``/``vmx-*``/``hv-*`` option, whether it took effect and, when
QEMU said so, why not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from qemu_evmcs.core.errors import LaunchError
from qemu_evmcs.qemu.cpuspec import CpuSpec, is_tracked
from qemu_evmcs.launch.qmp import EmulatorSession
from qemu_evmcs.launch.warnings import FeatureWarning, parse_warnings, warnings_by_feature

STATUS_APPLIED = "applied"
STATUS_DROPPED = "dropped"
STATUS_INEFFECTIVE = "ineffective"
STATUS_NOT_REMOVED = "not-removed"
STATUS_UNKNOWN = "unknown"
#: QEMU applied it, but KVM hides it from the L1 guest (known only with a host profile: :mod:`.guestview`).
STATUS_HIDDEN = "hidden"


@dataclass
class FeatureOutcome:
    """What became of one requested option.

    :ivar status: ``applied``, ``dropped`` (asked on, is off), ``not-removed``
        (asked off, is on), ``ineffective`` (hv-* set but no KVM), ``hidden`` (applied by QEMU, hidden from
        the L1 guest by KVM: needs a host profile), ``unknown``.
    :ivar reason: QEMU's warning text when it gave one, else our best evidence.
    :ivar layer: for ``hidden``: the layer that hides it (``evmcs-filter``, ``perf-cpuid-gate``, ``kvm``...).
    """

    name: str
    requested: bool
    effective: bool | None
    expanded: bool | None
    status: str
    reason: str | None = None
    warning: FeatureWarning | None = None
    layer: str | None = None

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {k: v for k, v in asdict(self).items() if k != "warning"}
        d["warning"] = self.warning.to_dict() if self.warning is not None else None
        return d


@dataclass
class LaunchReport:
    """JSON-serialisable result of :func:`verify_cpu` (see :meth:`to_dict`)."""

    cpu_arg: str
    model: str
    qom_path: str
    kvm_enabled: bool | None
    kvm_present: bool | None
    features: list[FeatureOutcome] = field(default_factory=list)
    #: vmx-*/hv-* names QEMU filtered that came from the model, not from the user.
    implied_dropped: list[str] = field(default_factory=list)
    unavailable_features: list[str] = field(default_factory=list)
    warnings: list[FeatureWarning] = field(default_factory=list)
    expansion_error: str | None = None
    errors: list[str] = field(default_factory=list)
    #: The host profile the guest view was judged on (None: none given, ``hidden`` is never reported).
    host: str | None = None
    host_kernel: str | None = None

    @property
    def applied(self) -> list[str]:
        return [f.name for f in self.features if f.status == STATUS_APPLIED]

    @property
    def dropped(self) -> list[str]:
        return [f.name for f in self.features if f.status not in (STATUS_APPLIED, STATUS_UNKNOWN)]

    @property
    def ok(self) -> bool:
        """True when every requested tracked option took effect."""
        return all(f.status == STATUS_APPLIED for f in self.features)

    def to_dict(self) -> dict[str, object]:
        return {
            "cpu_arg": self.cpu_arg,
            "model": self.model,
            "qom_path": self.qom_path,
            "kvm": {"enabled": self.kvm_enabled, "present": self.kvm_present},
            "host": None if self.host is None else {"name": self.host, "kernel": self.host_kernel},
            "ok": self.ok,
            "applied": self.applied,
            "dropped": self.dropped,
            "features": [f.to_dict() for f in self.features],
            "implied_dropped": list(self.implied_dropped),
            "unavailable_features": list(self.unavailable_features),
            "warnings": [w.to_dict() for w in self.warnings],
            "expansion_error": self.expansion_error,
            "errors": list(self.errors),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def summary_lines(self) -> list[str]:
        """A short human report (the wrapper prefixes each line with its name)."""
        accel = "kvm" if self.kvm_enabled else "non-kvm"
        n = len(self.features)
        lines = [f"cpu {self.model} ({accel}): {len(self.applied)} of {n} requested vmx/hv options applied"]
        for f in self.features:
            if f.status != STATUS_APPLIED:
                lines.append(f"  {f.status} {f.name}: {f.reason or 'no reason given by QEMU'}")
        if self.implied_dropped:
            shown = ", ".join(self.implied_dropped[:8])
            more = f" (+{len(self.implied_dropped) - 8} more)" if len(self.implied_dropped) > 8 else ""
            lines.append(f"  model features dropped by QEMU: {shown}{more}")
        if self.expansion_error:
            lines.append(f"  model expansion failed: {self.expansion_error}")
        for e in self.errors:
            lines.append(f"  verification error: {e}")
        return lines


def _classify(name: str, requested: bool, effective: bool | None, expanded: bool | None,
              warning: FeatureWarning | None, unavailable: Sequence[str],
              kvm_enabled: bool | None) -> FeatureOutcome:
    """Turn the evidence for one option into a status and a reason (QEMU's own words first)."""
    out = FeatureOutcome(name=name, requested=requested, effective=effective, expanded=expanded,
                         status=STATUS_UNKNOWN, warning=warning)
    if effective is None:
        out.reason = "QEMU did not report the property"
    elif effective == requested:
        if requested and name.startswith("hv-") and kvm_enabled is False:
            out.status = STATUS_INEFFECTIVE
            out.reason = "Hyper-V enlightenments only take effect under KVM (query-kvm: enabled=false)"
        else:
            out.status = STATUS_APPLIED
    elif requested:
        out.status = STATUS_DROPPED
        if warning is not None:
            out.reason = warning.message
        elif name in unavailable:
            out.reason = "listed in the CPU's unavailable-features"
        elif expanded is False:
            out.reason = "dropped by model expansion (a feature it depends on is off)"
        else:
            out.reason = "not applied (QEMU gave no warning)"
    else:
        out.status = STATUS_NOT_REMOVED
        out.reason = "still enabled after being turned off"
    return out


async def _gather(session: EmulatorSession,
                  commands: Sequence[tuple[str, Mapping[str, object] | None]]) -> list[object]:
    """Issue ``commands`` concurrently; each result is the command's return value or its :class:`LaunchError`.

    :raise LaunchError: the emulator died (the first such error): nothing more can be learnt.
    """
    results = await asyncio.gather(*(session.execute(cmd, args) for cmd, args in commands), return_exceptions=True)
    out: list[object] = []
    for res in results:
        if isinstance(res, LaunchError):
            if session.exited:
                raise res
        elif isinstance(res, BaseException):
            raise res
        out.append(res)
    return out


async def verify_cpu(session: EmulatorSession, spec: CpuSpec) -> LaunchReport:
    """Query the running emulator and build a :class:`LaunchReport` for ``spec``.

    Command failures other than losing the emulator are recorded in the
    report (``errors``/``expansion_error``) rather than raised: a verification
    gap must not kill a VM that started fine.

    :raise LaunchError: the emulator died or QMP stopped answering.
    """
    # Two pipelined rounds (qemu.qmp matches replies by id; QEMU answers in order): the commands that do
    # not need the CPU's QOM path go out together with query-cpus-fast, then every qom-get at once.
    # Sequential round-trips cost a loop wake-up and a QEMU main-loop turn each.
    bool_props: dict[str, object] = dict(spec.features)
    tracked = list(spec.tracked())
    cpus_r, exp_r, kvm_r = await _gather(session, [
        ("query-cpus-fast", None),
        ("query-cpu-model-expansion", {"type": "full", "model": {"name": spec.model, "props": bool_props}}),
        ("query-kvm", None),
    ])
    if isinstance(cpus_r, LaunchError):
        raise cpus_r
    cpus = cpus_r
    if not isinstance(cpus, list) or not cpus or not isinstance(cpus[0], dict):
        raise LaunchError(f"query-cpus-fast returned no CPU: {cpus!r}", layer="qemu")
    first = min(cpus, key=lambda c: int(c.get("cpu-index", 0)) if isinstance(c, dict) else 0)
    qom_path = str(first["qom-path"])
    report = LaunchReport(cpu_arg=spec.raw, model=spec.model, qom_path=qom_path,
                          kvm_enabled=None, kvm_present=None)

    expanded: Mapping[str, object] = {}
    if isinstance(exp_r, LaunchError):
        report.expansion_error = exp_r.message
    elif isinstance(exp_r, dict) and isinstance(exp_r.get("model"), dict):
        props = exp_r["model"].get("props", {})
        expanded = props if isinstance(props, dict) else {}

    got_r, *feat_rs = await _gather(session, [
        ("qom-get", {"path": qom_path, "property": "unavailable-features"}),
        *(("qom-get", {"path": qom_path, "property": name}) for name in tracked),
    ])
    unavailable: list[str] = []
    if isinstance(got_r, LaunchError):
        report.errors.append(got_r.message)
    elif isinstance(got_r, list):
        unavailable = [str(x) for x in got_r]
    report.unavailable_features = unavailable

    if isinstance(kvm_r, LaunchError):
        report.errors.append(kvm_r.message)
    elif isinstance(kvm_r, dict):
        report.kvm_enabled = bool(kvm_r.get("enabled"))
        report.kvm_present = bool(kvm_r.get("present"))

    effective: dict[str, bool | None] = {}
    for name, val in zip(tracked, feat_rs, strict=True):
        if isinstance(val, LaunchError):
            effective[name] = None
            report.errors.append(val.message)
        else:
            effective[name] = val if isinstance(val, bool) else None

    # The warnings were written before QEMU's main loop served QMP: wait until the pipe is read empty.
    await session.settle_stderr()
    report.warnings = parse_warnings(session.stderr_text)
    by_name = warnings_by_feature(report.warnings)

    for name, requested in spec.tracked().items():
        exp_val = expanded.get(name)
        report.features.append(_classify(
            name, requested, effective.get(name),
            exp_val if isinstance(exp_val, bool) else None,
            by_name.get(name), unavailable, report.kvm_enabled))
    requested_names = set(spec.features)
    seen: list[str] = []
    for name in unavailable:
        if is_tracked(name) and name not in requested_names and name not in seen:
            seen.append(name)
    report.implied_dropped = seen
    return report
