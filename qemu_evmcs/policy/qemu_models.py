"""``validate --qemu-models``: every QEMU model of the snapshot as an eVMCS guest, era by era.

Why: a QEMU or libvirt maintainer asks "which of our named models can an eVMCS (Hyper-V) guest use with
``vmx=on``, and what does it silently lose on each kernel?". For each model of the snapshot (every version
and alias), the guest asked for is ``-cpu MODEL,vmx=on,hv-vapic=on,hv-evmcs=on`` -- the model's own default
vmx-* set (QEMU 7.2's static expansion with ``vmx=on``) -- on a host whose CPU and KVM have every one of
those features, so that only the kernel's eVMCS filter decides:

- era ``pre-4.20``: no eVMCS capability, QEMU refuses ``hv-evmcs``;
- eras that filter at enable time (4.20-5.5): QEMU writes the model's unfiltered controls with KVM_SET_MSRS,
  which the filtered vCPU refuses, and QEMU aborts, as soon as the model has a filtered feature;
- read-time eras: the guest starts and the filtered features are what it loses (``hidden_eras``' sets,
  CPUID 0x4000000A.EBX bit 0 clear as QEMU leaves it).

A non-Intel model cannot run an eVMCS guest (VMX is Intel's). Models a newer QEMU than the snapshot ships
(``model-releases.yaml``, e.g. SapphireRapids: 8.0) are listed apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.kernel import era_table
from qemu_evmcs.policy.validate import era_visibility
from qemu_evmcs.qemu.models import QemuSnapshot, load_snapshot, model_releases

if TYPE_CHECKING:
    from typing import Any

INTEL = "GenuineIntel"


@dataclass
class ModelRow:
    """One QEMU model as an eVMCS guest: per era ``starts``/``aborts``/``refused`` and the features lost."""

    name: str
    alias_of: str | None
    vendor: str | None
    deprecated: bool
    vmx_features: int
    outcome: dict[str, str] = field(default_factory=dict)
    lost: dict[str, list[str]] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "alias_of": self.alias_of, "vendor": self.vendor, "deprecated": self.deprecated,
                "vmx_features": self.vmx_features, "outcome": self.outcome, "lost_by_era": self.lost, "note": self.note}


@dataclass
class QemuModelsReport:
    """The table plus the models that need a newer QEMU."""

    qemu: str
    eras: list[str]
    rows: list[ModelRow]
    newer: list[tuple[str, str, bool]]   # (model, first QEMU release, verified)

    def to_json(self) -> dict[str, Any]:
        return {"qemu": self.qemu, "eras": self.eras, "models": [r.to_json() for r in self.rows],
                "needs_newer_qemu": [{"model": m, "qemu": q, "verified": v} for m, q, v in self.newer]}

    def render(self) -> str:
        """A table: one row per model, one column per era (``ok``, ``-N`` features lost, ``ABORT``, ``no``)."""
        width = max(len(r.name) for r in self.rows) if self.rows else 10
        head = f"{'model':<{width}}  " + "  ".join(f"{e:>9}" for e in self.eras)
        out = [f"QEMU {self.qemu} models as eVMCS guests (-cpu MODEL,vmx=on,hv-vapic=on,hv-evmcs=on on a host that "
               f"has every feature the model asks for):",
               "  ok = starts, loses nothing; -N = starts, the L1 guest loses N of the model's vmx features; "
               "ABORT = QEMU aborts (KVM_SET_MSRS refused); no = eVMCS unavailable", "", head]
        for r in self.rows:
            cells = []
            for e in self.eras:
                o = r.outcome.get(e, "")
                cells.append("ABORT" if o == "aborts" else "no" if o == "refused"
                             else ("ok" if not r.lost.get(e) else f"-{len(r.lost[e])}"))
            name = r.name + ("*" if r.alias_of else "")
            out.append(f"{name:<{width}}  " + "  ".join(f"{c:>9}" for c in cells) + (f"  {r.note}" if r.note else ""))
        out.append("")
        out.append("* an alias; lost features per era: --json")
        if self.newer:
            out.append("")
            out.append(f"models a newer QEMU than {self.qemu} has (not in the snapshot):")
            for m, q, v in self.newer:
                out.append(f"  {m}: QEMU {q}" + ("" if v else " (unverified)"))
        return "\n".join(out) + "\n"


def qemu_models_report(snap: QemuSnapshot | None = None) -> QemuModelsReport:
    """Build the table for every model of ``snap`` (see the module docstring)."""
    snap = snap or load_snapshot()
    visible = dict(era_visibility(False))
    eras = [e for e in era_table().eras if e.id in visible or not e.evmcs_cap]
    rows: list[ModelRow] = []
    for name in snap.names():
        m = snap.get(name)
        want = m.vmx_features
        row = ModelRow(name=name, alias_of=m.alias_of, vendor=m.vendor, deprecated=m.deprecated,
                       vmx_features=len(want))
        if m.vendor != INTEL or not want:
            row.note = ("not Intel: no VMX, no eVMCS" if m.vendor != INTEL else "no vmx-* defaults (vmx=on only)")
        for era in eras:
            if not era.evmcs_cap:
                row.outcome[era.id] = "refused"
                continue
            lost = sorted(want - visible[era.id])
            if m.vendor != INTEL:
                row.outcome[era.id] = "refused"
            elif era.filter_at == "enable" and lost:
                row.outcome[era.id] = "aborts"
                row.lost[era.id] = lost
            else:
                row.outcome[era.id] = "starts"
                row.lost[era.id] = lost
        rows.append(row)
    newer = []
    for model, entry in sorted(model_releases().items()):
        if not snap.has(model):
            newer.append((model, str(entry["qemu"]), bool(entry.get("verified", False))))
    return QemuModelsReport(qemu=snap.version, eras=[e.id for e in eras], rows=rows, newer=newer)
