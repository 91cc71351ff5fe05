"""qemu-evmcs: simulate the QEMU side of Hyper-V Enlightened VMCS (eVMCS) negotiation with KVM.

Layers (each a module with one concern):

- :mod:`.registry` / ``data/registry.yaml`` -- every VMX MSR, feature word and named bit;
- :mod:`.kernel` / ``data/eras.yaml`` -- kernel releases and the eVMCS era of each;
- :mod:`.evmcs_filter` -- the filter of each era as a pure function;
- :mod:`.profile` -- host profiles (YAML) and their validation;
- :mod:`.simkvm` -- a simulated KVM with the eVMCS ABI of the profile's kernel;
- :mod:`.launch` -- QMP layer and the ``qemu-evmcs-launch`` wrapper;
- :mod:`.simqemu` -- a simulated QEMU (QMP server) on a simulated KVM host;
- :mod:`.cli` -- the thin ``qemu-evmcs`` command line.
"""

from qemu_evmcs.core import modulecache

# Every entry point takes the package's compiled modules from the per-user cache instead of looking for each
# (core/modulecache.py: about 4 % of an interactive command's time). First, so that every module after these
# few is served.
modulecache.install()

from qemu_evmcs.core import classcache  # noqa: E402 -- after the module cache is in place

__version__ = "0.1.0"

# Every entry point (qemu-evmcs, qemu-evmcs-launch, the simulated QEMU) gets the compiled methods of the
# dataclasses it defines from the per-user cache instead of compiling them at each start (core/classcache.py:
# a quarter of an interactive command's start-up). Installed before any module defining one is imported.
classcache.install()
