"""Load: 50 sequential launches and shutdowns of the real QEMU (TCG) leak nothing.

Counts, not time: open file descriptors of the test process, its child processes, its RSS (generous
fixed bound), and the runtime directory.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
from launch_helpers import qemu_argv
from proc_helpers import descendants, open_fds, pid_exists, rss_kib

from qemu_evmcs.launch.qmp import EmulatorSession
from qemu_evmcs.launch.verify import parse_cpu_arg, verify_cpu

pytestmark = pytest.mark.qemu

LAUNCHES = 50
CPU = "qemu64,vmx=on,hv-evmcs=on"


async def _launch(argv: list[str], parent: str) -> int:
    async with EmulatorSession(argv, runtime_dir=parent, qmp_timeout=30) as s:
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
    gc.collect()
    fds0, kids0, rss0 = open_fds(), descendants(os.getpid()), rss_kib()
    pids = [await _launch(argv, str(parent)) for _ in range(LAUNCHES)]
    gc.collect()
    fds1, kids1, rss1 = open_fds(), descendants(os.getpid()), rss_kib()
    assert len(set(pids)) == LAUNCHES
    assert not [p for p in pids if pid_exists(p)], "unreaped emulators"
    assert kids1 == kids0 == []
    assert fds1 <= fds0, (fds0, fds1)
    assert rss1 - rss0 < 32 * 1024, (rss0, rss1)  # KiB: generous; a per-launch leak of the stderr
    assert os.listdir(parent) == []                # buffer or a client would exceed it
