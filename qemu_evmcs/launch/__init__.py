"""Launch an emulator with a private QMP monitor and verify the CPU it applied.

- :mod:`.qmp` -- :class:`EmulatorSession`: spawn, QMP via ``qemu.qmp.QMPClient``, bounded shutdown, cleanup;
- :mod:`.warnings` -- QEMU's ``... doesn't support requested feature: MSR(48DH).x [bit 7]`` lines as data;
- :mod:`.verify` -- ``-cpu`` parsing and the post-start QMP verification report;
- :mod:`.wrapper` -- the ``qemu-evmcs-launch`` drop-in for ``qemu-system-x86_64``.

The wrapper module is not imported here so that ``python -m qemu_evmcs.launch.wrapper``
does not import itself twice.
"""

from __future__ import annotations

from qemu_evmcs.launch.qmp import EmulatorSession, check_runtime_parent, describe_status, shell_status
from qemu_evmcs.launch.verify import (
    FeatureOutcome,
    LaunchReport,
    find_cpu_arg,
    parse_cpu_arg,
    verify_cpu,
)
from qemu_evmcs.launch.warnings import FeatureWarning, parse_warning, parse_warnings
from qemu_evmcs.qemu.cpuspec import CpuSpec

__all__ = [
    "CpuSpec",
    "EmulatorSession",
    "FeatureOutcome",
    "FeatureWarning",
    "LaunchReport",
    "check_runtime_parent",
    "describe_status",
    "find_cpu_arg",
    "parse_cpu_arg",
    "parse_warning",
    "parse_warnings",
    "shell_status",
    "verify_cpu",
]
