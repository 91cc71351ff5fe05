"""What the L1 guest really sees of the options QEMU applied, given the host's profile.

Why a second look after QMP: KVM filters the VMX capability MSRs of an eVMCS guest only on the *guest's*
reads (``vmx_get_msr()``, not host-initiated), so QEMU's QOM properties say ``vmx-preemption-timer`` is on
while a Hyper-V L1 on a 6.3 host never sees it (EVMCS1_SUPPORTED_PINCTRL lacks it). QMP cannot show that;
the host profile can. With a profile (``--host``, ``QEMU_EVMCS_HOST``/launch.conf ``host``, or
``--simulate``), every requested vmx-* option QEMU applied but the guest cannot see is reported ``hidden``,
with the layer and reason :func:`qemu_evmcs.policy.explain.explain_host` gives (the one attribution
``explain`` prints), and the report's ``ok`` turns false.

Kept apart from :mod:`.verify` so that a launch without a profile never imports the policy layer.
"""

from __future__ import annotations

from qemu_evmcs.core.errors import NegativeAnswer
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.registry import registry
from qemu_evmcs.launch.verify import STATUS_APPLIED, STATUS_HIDDEN, LaunchReport
from qemu_evmcs.qemu.cpuspec import CpuSpec
from qemu_evmcs.policy.explain import explain_host
from qemu_evmcs.qemu.features import PLUGIN_PERF_GLOBAL_CTRL


def apply_guest_view(report: LaunchReport, spec: CpuSpec, profile: HostProfile, *, variant: str = "shipped") -> None:
    """Mark every applied, requested-on ``vmx-*`` option the guest cannot see on ``profile`` as ``hidden``.

    The guest view is eVMCS-filtered when ``hv-evmcs`` (or ``hv-passthrough``) is on, with CPUID
    0x4000000A.EBX bit 0 as ``hv-evmcs-perf-global-ctrl`` says (real QEMU never sets it). A host that cannot
    enable eVMCS at all leaves the report as it is: QEMU itself refuses to start there.
    """
    features = spec.features
    evmcs = bool(features.get("hv-evmcs") or features.get("hv-passthrough"))
    try:
        view = explain_host(profile, evmcs=evmcs, pv_perf_global_ctrl=bool(features.get(PLUGIN_PERF_GLOBAL_CTRL)),
                            variant=variant)
    except NegativeAnswer:
        return
    reg = registry()
    report.host = profile.name
    report.host_kernel = profile.kernel
    for outcome in report.features:
        if outcome.status != STATUS_APPLIED or not outcome.requested or not outcome.name.startswith("vmx-"):
            continue
        bits = reg.qemu_bits(outcome.name)     # QEMU's misspelt INVVPID names set two bits each
        hidden = [view.feature(b.name) for b in bits if not view.feature(b.name).visible]
        if hidden:
            outcome.status = STATUS_HIDDEN
            outcome.layer = hidden[0].layer
            outcome.reason = (f"QEMU applied it, but the L1 guest on {profile.name} (kernel {profile.kernel}) "
                              f"cannot see it: " + "; ".join(h.reason for h in hidden))
