"""Simulated live migration end to end: two simulator processes, ``migrate`` over QMP, verdicts like migrate-check.

Each pair is checked against :func:`qemu_evmcs.policy.migrate.migrate_check` for the same model, hosts and design.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from typing import Any
from collections.abc import AsyncIterator, Sequence

import pytest
from proc_helpers import PATIENCE, async_wait_until, unix_listening
from qemu.qmp import ExecuteError, QMPClient

from host_helpers import host_profiles
from qemu_evmcs.cli.main import run
from qemu_evmcs.policy.migrate import migrate_check, naive_config, source_config
from qemu_evmcs.policy.negotiate import load_guest_model, max_model
from qemu_evmcs.qemu.cpuprops import hv_sorted as _hv_sorted

HERE = os.path.dirname(__file__)
MODEL = os.path.join(HERE, "data", "negotiate", "models", "Skylake-evmcs.yaml")


def host(name: str) -> Any:
    return host_profiles(name)[0]


def shipped_cpu(source: str, target: str = "qemu") -> str:
    """The -cpu string the shipped design gives MODEL on ``source`` (what migrate-check assumes), for real QEMU
    or (``target="simulator"``) with the simulated QEMU's PV-bit option."""
    from qemu_evmcs.policy.negotiate import negotiate
    from qemu_evmcs.output.render import cpu_string

    neg = negotiate(MODEL, host_profiles(source), "pv-cpuid", target=target)
    assert neg.ok and neg.config == source_config(MODEL, host(source), "shipped", target=target)
    return cpu_string(neg)


def naive_cpu() -> str:
    """``naive`` design with the ``max`` model: every feature the host has, no negotiation, no enforce."""
    cfg = naive_config(max_model())
    return ",".join(["max", "vmx=on", *(f"{f}=on" for f in _hv_sorted(cfg.hyperv))])


class Sim:
    """A simulator child with a QMP client."""

    def __init__(self, proc: asyncio.subprocess.Process, qmp: QMPClient) -> None:
        self.proc = proc
        self.qmp = qmp
        self.events: list[dict[str, Any]] = []

    async def stderr_and_status(self, timeout: float = PATIENCE) -> tuple[int, str]:
        assert self.proc.stderr is not None
        err = await asyncio.wait_for(self.proc.stderr.read(), timeout)
        return await asyncio.wait_for(self.proc.wait(), timeout), err.decode()


@contextlib.asynccontextmanager
async def simulator(profile: str, args: Sequence[str], variant: str = "shipped") -> AsyncIterator[Sim]:
    d = tempfile.mkdtemp(prefix="simm", dir="/tmp")
    sock = os.path.join(d, "qmp.sock")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qemu_evmcs.simqemu", "--host", profile, "--variant", variant, *args,
        "-qmp", f"unix:{sock},server=on,wait=off", "-display", "none",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    qmp: QMPClient | None = None
    try:
        await async_wait_until(lambda: unix_listening(sock) or proc.returncode is not None, "the QMP socket")
        assert proc.returncode is None, "the simulator exited before listening"
        qmp = QMPClient(f"sim-{profile}")
        await qmp.connect(sock)
        yield Sim(proc, qmp)
    finally:
        if qmp is not None:
            with contextlib.suppress(Exception):
                await qmp.disconnect()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        shutil.rmtree(d, ignore_errors=True)


async def migrate(src: Sim, uri: str) -> tuple[list[str], dict[str, Any]]:
    """Run ``migrate`` on the source; return the MIGRATION statuses and the verdict."""
    with src.qmp.listener("MIGRATION") as listener:
        await src.qmp.execute("migrate", {"uri": uri})
        seen: list[str] = []

        async def collect() -> None:
            async for ev in listener:
                if ev["event"] == "MIGRATION":
                    data = ev["data"]
                    assert isinstance(data, dict)
                    seen.append(data["status"])
                    if data["status"] in ("completed", "failed"):
                        return
        await asyncio.wait_for(collect(), PATIENCE)
    ret = await src.qmp.execute("x-evmcs-query-migration-verdict")
    assert isinstance(ret, dict)
    return seen, ret


async def test_fine_pair_completes_and_guest_view_is_identical() -> None:
    expected = migrate_check(MODEL, host("skylake-6.3"), host("sapphirerapids-6.6"), "shipped")
    assert expected.verdict == "fine"
    cpu = shipped_cpu("skylake-6.3")
    d = tempfile.mkdtemp(prefix="mig", dir="/tmp")
    mig = os.path.join(d, "mig.sock")
    try:
        async with simulator("sapphirerapids-6.6", ["-accel", "kvm", "-cpu", cpu, "-incoming", "defer"]) as dst, \
                simulator("skylake-6.3", ["-accel", "kvm", "-cpu", cpu]) as src:
            assert (await dst.qmp.execute("query-status"))["status"] == "inmigrate"  # type: ignore[index]
            await dst.qmp.execute("migrate-incoming", {"uri": f"unix:{mig}"})
            await async_wait_until(lambda: unix_listening(mig), "the migration socket")
            seen, verdict = await migrate(src, f"unix:{mig}")
            assert seen == ["setup", "active", "completed"]
            assert verdict["verdict"] == expected.verdict and verdict["lost"] == []
            assert await src.qmp.execute("query-migrate") == {"status": "completed"}
            assert (await src.qmp.execute("query-status"))["status"] == "postmigrate"  # type: ignore[index]
            for _ in range(int(PATIENCE / 0.02)):  # the destination resumes on its own schedule
                if (await dst.qmp.execute("query-status"))["status"] == "running":  # type: ignore[index]
                    break
                await asyncio.sleep(0.02)
            assert (await dst.qmp.execute("query-status"))["status"] == "running"  # type: ignore[index]
            before = (await src.qmp.execute("x-evmcs-query-guest-vmx-msrs"))["msrs"]  # type: ignore[index]
            after = (await dst.qmp.execute("x-evmcs-query-guest-vmx-msrs"))["msrs"]  # type: ignore[index]
            assert before == after == verdict["source-msrs"] == verdict["destination-msrs"]
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def test_blocked_pair_destination_refuses_source_keeps_running() -> None:
    expected = migrate_check(MODEL, host("icelake-6.1"), host("skylake-5.10"), "shipped", target="simulator")
    assert expected.verdict == "blocked" and expected.stage == "hv-feature"
    cpu = shipped_cpu("icelake-6.1", target="simulator")
    assert "hv-evmcs-perf-global-ctrl=on" in cpu
    # The destination was started without the Hyper-V flags its kernel lacks, so it starts; the incoming vCPU
    # state asks for them (QEMU's Hyper-V checks run again on the destination's KVM).
    dst_cpu = cpu.replace(",hv-emsr-bitmap=on", "").replace(",hv-evmcs-perf-global-ctrl=on", "")
    d = tempfile.mkdtemp(prefix="mig", dir="/tmp")
    mig = os.path.join(d, "mig.sock")
    try:
        async with simulator("skylake-5.10", ["-accel", "kvm", "-cpu", dst_cpu, "-S", "-incoming",
                                              f"unix:{mig}"]) as dst, \
                simulator("icelake-6.1", ["-accel", "kvm", "-cpu", cpu]) as src:
            seen, verdict = await migrate(src, f"unix:{mig}")
            assert seen == ["setup", "active", "failed"]
            assert verdict["verdict"] == expected.verdict == "blocked"
            assert "not supported by kernel" in verdict["reason"]
            q = await src.qmp.execute("query-migrate")
            assert isinstance(q, dict) and q["status"] == "failed" and "not supported by kernel" in q["error-desc"]
            assert (await src.qmp.execute("query-status"))["status"] == "running"  # type: ignore[index]
            rc, err = await dst.stderr_and_status()
            assert rc == 1
            lines = err.splitlines()
            assert lines[0] == ("qemu-system-x86_64: Hyper-V enlightened MSR-Bitmap (hv-emsr-bitmap) is not "
                                "supported by kernel")
            assert lines[-1] == "qemu-system-x86_64: load of migration failed: Invalid argument"
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def test_blocked_when_the_same_command_line_cannot_start_on_the_destination() -> None:
    cpu = shipped_cpu("icelake-6.1")
    async with simulator("icelake-6.1", ["-accel", "kvm", "-cpu", cpu]) as src:
        # The destination QEMU refused at start-up (nothing listens): the migration fails, the source runs on.
        seen, verdict = await migrate(src, "unix:/tmp/no-such-simm-destination.sock")
        assert seen == ["setup", "failed"] and verdict["verdict"] == "blocked"
        assert (await src.qmp.execute("query-status"))["status"] == "running"  # type: ignore[index]


async def test_unsafe_pair_naive_design_loses_perf_global_ctrl() -> None:
    expected = migrate_check(max_model(), host("skylake-6.3"), host("skylake-5.10"), "naive")
    assert expected.verdict == "unsafe"
    cpu = naive_cpu()
    port = _free_port()
    async with simulator("skylake-5.10", ["-accel", "kvm", "-cpu", cpu, "-incoming", f"tcp:127.0.0.1:{port}"],
                         variant="vmx-msrs") as dst, \
            simulator("skylake-6.3", ["-accel", "kvm", "-cpu", cpu], variant="vmx-msrs") as src:
        seen, verdict = await migrate(src, f"tcp:127.0.0.1:{port}")
        assert seen == ["setup", "active", "completed"]
        assert verdict["verdict"] == expected.verdict == "unsafe"
        assert set(verdict["lost"]) == {c.label() for c in expected.lost}
        assert {"vmx-exit-load-perf-global-ctrl", "vmx-entry-load-perf-global-ctrl"} <= set(verdict["lost"])
        before = (await src.qmp.execute("x-evmcs-query-guest-vmx-msrs"))["msrs"]  # type: ignore[index]
        after = (await dst.qmp.execute("x-evmcs-query-guest-vmx-msrs"))["msrs"]  # type: ignore[index]
        assert before != after and after == verdict["destination-msrs"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_migrate_refuses_remote_hosts_and_bad_states() -> None:
    async with simulator("skylake-6.3", ["-accel", "kvm", "-cpu", "host"]) as src:
        with pytest.raises(ExecuteError, match="loopback TCP only"):
            await src.qmp.execute("migrate", {"uri": "tcp:192.0.2.1:4444"})
        with pytest.raises(ExecuteError, match="unknown migration protocol"):
            await src.qmp.execute("migrate", {"uri": "exec:cat"})
        with pytest.raises(ExecuteError, match="'-incoming' was not specified"):
            await src.qmp.execute("migrate-incoming", {"uri": "unix:/tmp/x"})
        with pytest.raises(ExecuteError, match="no finished outgoing migration"):
            await src.qmp.execute("x-evmcs-query-migration-verdict")
        assert await src.qmp.execute("query-migrate") == {}


async def test_migrate_check_from_running_simulator() -> None:
    """``migrate-check --from-running SOCKET`` against a live simulator gives the same verdict as ``--from``."""
    cpu = shipped_cpu("skylake-6.3")
    d = tempfile.mkdtemp(prefix="mc", dir="/tmp")
    sock = os.path.join(d, "qmp.sock")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qemu_evmcs.simqemu", "--host", "skylake-6.3", "-accel", "kvm", "-cpu", cpu,
        "-qmp", f"unix:{sock},server=on,wait=off", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        await async_wait_until(lambda: unix_listening(sock) or proc.returncode is not None, "the QMP socket")
        loop = asyncio.get_running_loop()
        for dest in ("sapphirerapids-6.6", "skylake-5.10", "cascadelake-5.4"):
            expected = migrate_check(load_guest_model(MODEL), host("skylake-6.3"), host(dest), "shipped")
            rc = await loop.run_in_executor(None, run, ["migrate-check", "--from-running", sock,
                                                        "--source-profile", "skylake-6.3", "--to", dest])
            assert rc == (0 if expected.verdict == "fine" else 1), dest
        # Without --source-profile the host comes from the simulator itself.
        rc = await loop.run_in_executor(None, run, ["migrate-check", "--from-running", sock,
                                                    "--to", "sapphirerapids-6.6", "--json"])
        assert rc == 0
    finally:
        proc.kill()
        await proc.wait()
        shutil.rmtree(d, ignore_errors=True)
