"""Load against the simulated QEMU (``python -m qemu_evmcs.simqemu``): 1,000 concurrent QMP commands on one
session, and 200 sequential launches, with no growth in file descriptors, child processes or memory.

Counts, not time. Skipped (with the reason) while the simulator cannot start.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fault_helpers import descendants, open_fds, rss_kib
from launch_helpers import pid_exists

from qemu_evmcs.launch.qmp import EmulatorSession

SIM = [sys.executable, "-m", "qemu_evmcs.simqemu", "--host", "skylake-6.3", "-accel", "kvm", "-cpu", "host"]
#: The issue's bound: 200 sequential launches (about 50 s here; each starts a Python interpreter).
LAUNCHES = int(os.environ.get("QEMU_EVMCS_SIM_LAUNCHES", "200"))


@pytest.fixture(scope="module", autouse=True)
def simulator_available() -> None:
    r = subprocess.run([sys.executable, "-m", "qemu_evmcs.simqemu", "--help"], capture_output=True, timeout=60,
                       check=False)
    if r.returncode != 0:
        pytest.fail(f"qemu_evmcs.simqemu does not start: {r.stderr.decode(errors='replace').strip()[-200:]}")


def _parent(tmp_path: Path) -> str:
    parent = tmp_path / "run"
    parent.mkdir(mode=0o700, exist_ok=True)
    return str(parent)


async def test_1000_concurrent_commands(tmp_path: Path) -> None:
    parent = _parent(tmp_path)
    async with EmulatorSession(SIM, runtime_dir=parent, qmp_timeout=30) as s:
        fds0 = open_fds()
        replies = await asyncio.gather(*[s.execute("query-status") for _ in range(1000)])
        assert len(replies) == 1000 and all(isinstance(r, dict) and "status" in r for r in replies)
        replies = await asyncio.gather(*[s.execute("query-kvm") for _ in range(1000)])
        assert all(isinstance(r, dict) for r in replies)
        assert open_fds() <= fds0
        pid = s.pid
    assert s.returncode == 0 and pid is not None and not pid_exists(pid)
    assert os.listdir(parent) == []


async def test_sequential_launches(tmp_path: Path) -> None:
    parent = _parent(tmp_path)

    async def launch() -> int:
        async with EmulatorSession(SIM, runtime_dir=parent, qmp_timeout=30) as s:
            await s.execute("query-status")
            pid = s.pid
        assert s.returncode == 0 and pid is not None
        return pid

    await launch()  # warm-up
    gc.collect()
    fds0, kids0, rss0 = open_fds(), descendants(os.getpid()), rss_kib()
    pids = [await launch() for _ in range(LAUNCHES)]
    gc.collect()
    assert not [p for p in pids if pid_exists(p)]
    assert descendants(os.getpid()) == kids0 == []
    assert open_fds() <= fds0
    assert rss_kib() - rss0 < 32 * 1024
    assert os.listdir(parent) == []
