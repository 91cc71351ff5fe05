"""A simulated QEMU 7.2 (``-accel kvm``) on a simulated KVM host, speaking real QMP.

Run it as ``qemu-evmcs-sim --host PROFILE [QEMU options]`` or
``python -m qemu_evmcs.simqemu ...``. It reproduces QEMU's start-up for
Hyper-V eVMCS (the exact error texts of ``hv-evmcs`` checks, VMX feature
filtering and its warnings, the VMX MSR writes and the ``failed to set MSR``
abort) against :mod:`qemu_evmcs.kvm.simkvm`, then serves QMP.

The start-up itself (CPU model, expansion, filtering, Hyper-V checks, MSR writes, exact texts) is the one
model in :mod:`qemu_evmcs.qemu.startup` / :mod:`qemu_evmcs.qemu.cpu`, shared with the policy layer; this
package adds the process around it.

Modules:

- :mod:`.cmdline` -- the QEMU command-line subset (``-cpu`` via :func:`qemu_evmcs.qemu.cpuspec.parse_cpu`);
- :mod:`.startup` -- a command line run through the start-up model: the :class:`.startup.Machine` and
  :func:`.startup.predict` (``qemu-evmcs-launch --check``);
- :mod:`.qmp_server` -- the QMP server and the ``x-evmcs-*`` extension commands;
- :mod:`.migration` -- simulated live migration;
- :mod:`.server` -- the process entry point (``main``).

**Project plug-in option (not in real QEMU):** ``-cpu ...,hv-evmcs-perf-global-ctrl=on`` sets
CPUID 0x4000000A.EBX bit 0 (HV_X64_NESTED_EVMCS1_PERF_GLOBAL_CTRL), which real QEMU never sets;
KVM 6.1+ then shows PERF_GLOBAL_CTRL VM-exit/entry controls to an eVMCS L1.
"""

from qemu_evmcs.simqemu.startup import Prediction, predict

__all__ = ["Prediction", "predict"]
