"""What the L1 guest of ``-cpu host`` reads: KVM's guest view of every feature it reports, as far as QEMU gives it.

Why a module of its own: ``explain``/``guest-msrs``, baseline's per-host views and the inventory's
``--where feature=`` filter all ask "what does a ``-cpu host`` guest read on this host" without starting a whole
simulated QEMU (the start-up model, :mod:`qemu_evmcs.qemu.startup`, answers that for a named configuration).
The simulated KVM's :func:`~qemu_evmcs.kvm.simkvm.guest_view` shows every bit KVM reports; QEMU writes only
the features it can give (:func:`~qemu_evmcs.qemu.compose.qemu_given_features`), so the guest reads that view
without the others. One function, so every command counts the same features.
"""

from __future__ import annotations

from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.kvm.simkvm import EVMCS_REVISION_LEGACY, guest_view
from qemu_evmcs.qemu.compose import drop_ungiven


def host_model_guest_msrs(profile: HostProfile, *, evmcs: bool = True, pv_perf_global_ctrl: bool = False,
                          variant: str = "shipped", revision: int = EVMCS_REVISION_LEGACY) -> dict[str, int]:
    """The VMX MSRs a ``-cpu host`` L1 guest reads on ``profile``'s host (arguments as
    :func:`~qemu_evmcs.kvm.simkvm.guest_view`).

    :raise KvmError: when eVMCS cannot be enabled on this host.
    """
    return drop_ungiven(guest_view(profile, evmcs=evmcs, pv_perf_global_ctrl=pv_perf_global_ctrl, variant=variant,
                                   revision=revision))


__all__ = ["host_model_guest_msrs"]
