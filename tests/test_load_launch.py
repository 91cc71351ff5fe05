"""Load: sequential launches and shutdowns of the real QEMU (TCG) leak nothing.

Counts, not time: open file descriptors of the test process, its child processes, the memory Python
allocated (tracemalloc) and RSS (see proc_helpers.LeakCounter), and the runtime directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from launch_helpers import qemu_argv
from proc_helpers import PATIENCE, LeakCounter, pid_exists

from qemu_evmcs.launch.qmp import EmulatorSession
from qemu_evmcs.launch.cpuarg import parse_cpu_arg
from qemu_evmcs.launch.verify import verify_cpu

pytestmark = pytest.mark.qemu

#: 10, not 50: the counts are exact (a descriptor or child per launch shows as +10; Python memory has a bound
#: of 256 KiB per launch against a measured noise of a few KiB), so more launches add time, not power.
LAUNCHES = 10
CPU = "qemu64,vmx=on,hv-evmcs=on"


async def _launch(argv: list[str], parent: str) -> int:
    async with EmulatorSession(argv, runtime_dir=parent, qmp_timeout=PATIENCE) as s:
        report = await verify_cpu(s, parse_cpu_arg(CPU))
        assert report.features  # the session really worked
        pid = s.pid
    assert s.returncode == 0
    assert pid is not None
    return pid


async def test_50_sequential_launches_leak_nothing(tmp_path: Path) -> None:
    parent = tmp_path / "run"
    parent.mkdir(mode=0o700)
    argv = qemu_argv(CPU)
    # Warm up: first-use imports, asyncio's child watcher thread, registry caches.
    await _launch(argv, str(parent))
    with LeakCounter() as leaks:
        pids = [await _launch(argv, str(parent)) for _ in range(LAUNCHES)]
    assert len(set(pids)) == LAUNCHES
    assert not [p for p in pids if pid_exists(p)], "unreaped emulators"
    leaks.check(LAUNCHES)  # a per-launch leak of the stderr buffer or a client exceeds it
    assert os.listdir(parent) == []
