"""The simulator as a real child process, driven with :class:`qemu.qmp.QMPClient` (interop is tested only with it).

One robustness test writes raw garbage to the socket first (a QMP client cannot send garbage) and then
checks with QMPClient that the server still serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from collections.abc import AsyncIterator

import pytest
from proc_helpers import PATIENCE, async_wait_until, unix_listening
from qemu.qmp import ExecuteError, QMPClient
from test_simqemu_helpers import write_profile

HOST_EVMCS = ["-accel", "kvm", "-cpu", "host,hv-evmcs=on,hv-vapic=on,vmx=on"]


@pytest.fixture
def sockdir() -> AsyncIterator[str]:  # type: ignore[misc]
    """A short private directory (UNIX socket paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="simq", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def _run(args: list[str], timeout: float = PATIENCE) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "qemu_evmcs.simqemu", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


class Sim:
    """A running simulator child."""

    def __init__(self, proc: asyncio.subprocess.Process, sock: str) -> None:
        self.proc = proc
        self.sock = sock

    async def client(self, name: str = "test") -> QMPClient:
        qmp = QMPClient(name)
        await qmp.connect(self.sock)
        return qmp

    async def wait(self, timeout: float = PATIENCE) -> tuple[int, str]:
        assert self.proc.stderr is not None
        err = await asyncio.wait_for(self.proc.stderr.read(), timeout)
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        return rc, err.decode()


@contextlib.asynccontextmanager
async def sim(profile: str, sockdir: str, *args: str) -> AsyncIterator[Sim]:
    sock = os.path.join(sockdir, "qmp.sock")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qemu_evmcs.simqemu", "--host", profile, *args,
        "-qmp", f"unix:{sock},server=on,wait=off", "-display", "none",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await async_wait_until(lambda: unix_listening(sock) or proc.returncode is not None, "the QMP socket")
        assert proc.returncode is None, "the simulator exited before listening"
        yield Sim(proc, sock)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _quit(qmp: QMPClient) -> None:
    await qmp.execute("quit")
    with contextlib.suppress(EOFError):  # qemu.qmp reports the server hanging up, as with real QEMU
        await qmp.disconnect()


# --------------------------------------------------------------------------- start-up failures


async def test_pre57_host_aborts_like_qemu(tmp_path: Path) -> None:
    prof = write_profile(str(tmp_path), "5.4.0-150-generic")
    rc, err = await _run(["--host", prof, *HOST_EVMCS])
    assert rc == -signal.SIGABRT  # a shell reports 134
    lines = err.splitlines()
    assert lines[0] == "qemu-system-x86_64: error: failed to set MSR 0x48d to 0xff00000016"
    assert lines[1].endswith("kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.")


@pytest.mark.parametrize("kernel, vendor, nested, cpu, expected", [
    ("6.6", "AuthenticAMD", True, "host,hv-evmcs=on,hv-vapic=on",
     "qemu-system-x86_64: Hyper-V enlightened VMCS (hv-evmcs) is not supported by kernel"),
    ("6.1", "GenuineIntel", False, "host,hv-evmcs=on,hv-vapic=on",
     "qemu-system-x86_64: Hyper-V enlightened VMCS (hv-evmcs) is not supported by kernel"),
    ("5.10", "GenuineIntel", False, "host,hv-evmcs=on,hv-vapic=on",
     "qemu-system-x86_64: eVMCS version range [1..1] is not supported by kernel (supported: [0..0])"),
    ("6.3", "GenuineIntel", True, "host,hv-evmcs=on",
     "qemu-system-x86_64: Hyper-V enlightened VMCS (hv-evmcs) requires Hyper-V virtual APIC (hv-vapic)"),
])
async def test_evmcs_startup_errors(tmp_path: Path, kernel: str, vendor: str, nested: bool, cpu: str,
                                    expected: str) -> None:
    prof = write_profile(str(tmp_path), kernel, vendor=vendor, nested=nested)
    rc, err = await _run(["--host", prof, "-accel", "kvm", "-cpu", cpu])
    assert rc == 1
    assert expected in err.splitlines()


async def test_bad_options_exit_1(tmp_path: Path, sockdir: str) -> None:
    prof = write_profile(str(tmp_path), "6.3")
    assert await _run(["--host", prof, "-foo"]) == (1, "qemu-system-x86_64: -foo: invalid option\n")
    assert await _run(["--host", prof, "-cpu", "host"]) == (
        1, "qemu-system-x86_64: CPU model 'host' requires KVM or HVF\n")
    assert await _run(["-accel", "kvm"]) == (
        1, "qemu-system-x86_64: --host PROFILE is required (simulator option; see --help)\n")
    assert await _run(["--help"]) == (0, "")  # the help goes to stdout; nothing on stderr


async def test_bundled_sample_name(sockdir: str) -> None:
    # resolve_profile_path: a bundled sample name works as --host (the i7-6700K booted with 6.3) ...
    async with sim("skylake-6.3", sockdir, *HOST_EVMCS) as s:
        qmp = await s.client()
        guest = await qmp.execute("x-evmcs-query-guest-vmx-msrs")
        assert isinstance(guest, dict) and (guest["era"], guest["kernel"]) == ("6.3+", "6.3.0")
        await _quit(qmp)
        assert await s.wait() == (0, "")
    # ... and a name that is neither a file nor a bundled sample is QEMU-style bad input.
    assert await _run(["--host", "definitely-not-a-profile", "-accel", "kvm"]) == (
        1, "qemu-system-x86_64: --host definitely-not-a-profile: definitely-not-a-profile: No such file or "
           "directory\n")


# --------------------------------------------------------------------------- successful starts


async def test_510_starts_and_guest_view(tmp_path: Path, sockdir: str) -> None:
    prof = write_profile(str(tmp_path), "5.10")
    async with sim(prof, sockdir, *HOST_EVMCS) as s:
        qmp = await s.client()
        guest = await qmp.execute("x-evmcs-query-guest-vmx-msrs")
        host = await qmp.execute("x-evmcs-query-host-vmx-msrs")
        assert isinstance(guest, dict) and isinstance(host, dict)
        assert guest["evmcs"] is True and guest["era"] == "5.6-5.14" and guest["kernel"] == "5.10"
        g, h = guest["msrs"], host["msrs"]
        # 5.6-5.14: PERF_GLOBAL_CTRL and APIC-access virtualization hidden from L1; host reads unfiltered.
        assert int(h["IA32_VMX_TRUE_EXIT_CTLS"], 16) >> 32 & (1 << 12)
        assert not int(g["IA32_VMX_TRUE_EXIT_CTLS"], 16) >> 32 & (1 << 12)
        assert not int(g["IA32_VMX_PROCBASED_CTLS2"], 16) >> 32 & 1
        assert g["IA32_VMX_TRUE_PINBASED_CTLS"] == "0x000000ff00000016"  # pin-based not filtered before 5.15
        await _quit(qmp)
        assert (await s.wait())[0] == 0


async def test_61_filters_preemption_timer_and_posted_intr(tmp_path: Path, sockdir: str) -> None:
    prof = write_profile(str(tmp_path), "6.1.55")
    async with sim(prof, sockdir, *HOST_EVMCS) as s:
        qmp = await s.client()
        guest = await qmp.execute("x-evmcs-query-guest-vmx-msrs")
        host = await qmp.execute("x-evmcs-query-host-vmx-msrs")
        assert isinstance(guest, dict) and isinstance(host, dict)
        assert guest["msrs"]["IA32_VMX_TRUE_PINBASED_CTLS"] == "0x0000003f00000016"   # bits 6, 7 gone
        assert host["msrs"]["IA32_VMX_TRUE_PINBASED_CTLS"] == "0x000000ff00000016"
        assert guest["evmcs-active"] is True
        await _quit(qmp)


@pytest.mark.parametrize("plugin", [False, True])
async def test_63_perf_global_ctrl_visible_only_with_plugin(tmp_path: Path, sockdir: str, plugin: bool) -> None:
    prof = write_profile(str(tmp_path), "6.3")
    cpu = "host,hv-evmcs=on,hv-vapic=on,vmx=on" + (",hv-evmcs-perf-global-ctrl=on" if plugin else "")
    async with sim(prof, sockdir, "-accel", "kvm", "-cpu", cpu) as s:
        qmp = await s.client()
        guest = await qmp.execute("x-evmcs-query-guest-vmx-msrs")
        hv = await qmp.execute("x-evmcs-query-hv-cpuid")
        assert isinstance(guest, dict) and isinstance(hv, dict)
        exit_allowed1 = int(guest["msrs"]["IA32_VMX_TRUE_EXIT_CTLS"], 16) >> 32
        entry_allowed1 = int(guest["msrs"]["IA32_VMX_TRUE_ENTRY_CTLS"], 16) >> 32
        assert bool(exit_allowed1 & (1 << 12)) is plugin
        assert bool(entry_allowed1 & (1 << 13)) is plugin
        assert hv["hyperv"] is True
        assert hv["leaves"]["0x4000000a"] == {"eax": "0x00000101", "ebx": f"0x0000000{int(plugin)}",
                                              "ecx": "0x00000000", "edx": "0x00000000"}
        assert int(hv["leaves"]["0x40000004"]["eax"], 16) & (1 << 14)
        log = await qmp.execute("x-evmcs-query-kvm-log")
        assert isinstance(log, dict)
        ioctls = [e["ioctl"] for e in log["log"]]
        assert ioctls.index("ENABLE_CAP") < ioctls.index("SET_CPUID2") < ioctls.index("SET_MSRS")
        prop = await qmp.execute("qom-get", {"path": "/machine/unattached/device[0]",
                                             "property": "hv-evmcs-perf-global-ctrl"})
        assert prop is plugin
        await _quit(qmp)


async def test_qmp_queries(tmp_path: Path, sockdir: str) -> None:
    prof = write_profile(str(tmp_path), "6.3")
    async with sim(prof, sockdir, *HOST_EVMCS, "-smp", "2", "-name", "vm1") as s:
        qmp = await s.client()
        assert qmp.greeting is not None
        assert qmp.greeting.QMP.version == {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                            "package": "qemu-evmcs-sim"}
        assert list(qmp.greeting.QMP.capabilities) == ["oob"]
        assert await qmp.execute("query-version") == {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                                      "package": "qemu-evmcs-sim"}
        assert await qmp.execute("query-status") == {"running": True, "singlestep": False, "status": "running"}
        assert await qmp.execute("query-kvm") == {"enabled": True, "present": True}
        assert await qmp.execute("query-name") == {"name": "vm1"}
        cpus = await qmp.execute("query-cpus-fast")
        assert isinstance(cpus, list) and [c["cpu-index"] for c in cpus] == [0, 1]
        assert cpus[0]["qom-path"] == "/machine/unattached/device[0]" and cpus[0]["target"] == "x86_64"
        assert cpus[0]["thread-id"] == s.proc.pid
        path = cpus[0]["qom-path"]
        assert await qmp.execute("qom-get", {"path": path, "property": "vmx-ept"}) is True
        assert await qmp.execute("qom-get", {"path": path, "property": "hv-evmcs"}) is True
        assert await qmp.execute("qom-get", {"path": path, "property": "unavailable-features"}) == []
        assert await qmp.execute("qom-get", {"path": path, "property": "filtered-features"}) == []
        with pytest.raises(ExecuteError) as info:
            await qmp.execute("qom-get", {"path": "/nope", "property": "vmx-ept"})
        assert info.value.error_class == "DeviceNotFound"
        with pytest.raises(ExecuteError, match="Property 'host-x86_64-cpu.nope' not found"):
            await qmp.execute("qom-get", {"path": path, "property": "nope"})
        defs = await qmp.execute("query-cpu-definitions")
        assert isinstance(defs, list) and {"host", "max", "base", "qemu64"} <= {d["name"] for d in defs}
        static = await qmp.execute("query-cpu-model-expansion", {"type": "static", "model": {"name": "host"}})
        assert isinstance(static, dict) and static["model"]["name"] == "base"
        assert static["model"]["props"]["vmx-posted-intr"] is True and "hv-evmcs" not in static["model"]["props"]
        full = await qmp.execute("query-cpu-model-expansion",
                                 {"type": "full", "model": {"name": "host", "props": {"vmx-ept": False}}})
        assert isinstance(full, dict)
        assert full["model"]["props"]["vmx-ept"] is False and full["model"]["props"]["vmx-invept"] is False
        with pytest.raises(ExecuteError, match="is not supported by kernel|requires Hyper-V"):
            await qmp.execute("query-cpu-model-expansion",
                              {"type": "full", "model": {"name": "host", "props": {"hv-evmcs": True}}})
        with pytest.raises(ExecuteError, match="Parameter 'type' is missing"):
            await qmp.execute("query-cpu-model-expansion", {"model": {"name": "host"}})
        await _quit(qmp)


async def test_events_and_errors(tmp_path: Path, sockdir: str) -> None:
    prof = write_profile(str(tmp_path), "6.3")
    async with sim(prof, sockdir, "-accel", "kvm", "-cpu", "host", "-S") as s:
        qmp = await s.client()
        assert await qmp.execute("query-status") == {"running": False, "singlestep": False, "status": "prelaunch"}
        with qmp.listener(("STOP", "RESUME", "SHUTDOWN")) as events:
            await qmp.execute("cont")
            ev = await asyncio.wait_for(events.get(), PATIENCE)
            stamp = ev["timestamp"]
            assert ev["event"] == "RESUME" and isinstance(stamp, dict) and set(stamp) == {"seconds", "microseconds"}
            assert (await qmp.execute("query-status"))["status"] == "running"  # type: ignore[index]
            await qmp.execute("stop")
            assert (await asyncio.wait_for(events.get(), PATIENCE))["event"] == "STOP"
            assert await qmp.execute("query-status") == {"running": False, "singlestep": False,
                                                         "status": "paused"}
            with pytest.raises(ExecuteError) as info:
                await qmp.execute("no-such-command")
            assert info.value.error_class == "CommandNotFound"
            assert str(info.value) == "The command no-such-command has not been found"
            with pytest.raises(ExecuteError) as info:
                await qmp.execute("cont", {"bogus": 1})
            assert info.value.error_class == "GenericError"
            await qmp.execute("quit")
            ev = await asyncio.wait_for(events.get(), PATIENCE)
            assert ev["event"] == "SHUTDOWN" and ev["data"] == {"guest": False, "reason": "host-qmp-quit"}
        with contextlib.suppress(EOFError):
            await qmp.disconnect()
        assert (await s.wait())[0] == 0


async def test_quit_removes_only_its_socket(tmp_path: Path, sockdir: str) -> None:
    prof = write_profile(str(tmp_path), "6.3")
    other = os.path.join(sockdir, "keep.txt")
    Path(other).write_text("mine")
    second = os.path.join(sockdir, "second.sock")
    async with sim(prof, sockdir, "-accel", "kvm", "-qmp", f"unix:{second},server,nowait") as s:
        qmp = await s.client()
        qmp2 = QMPClient("second")
        await qmp2.connect(second)
        assert await qmp2.execute("query-status") == {"running": True, "singlestep": False, "status": "running"}
        await _quit(qmp)
        with contextlib.suppress(EOFError):
            await qmp2.disconnect()
        assert (await s.wait())[0] == 0
    assert sorted(os.listdir(sockdir)) == ["keep.txt"]
    assert Path(other).read_text() == "mine"


async def test_refuses_to_replace_a_non_socket(tmp_path: Path, sockdir: str) -> None:
    prof = write_profile(str(tmp_path), "6.3")
    path = os.path.join(sockdir, "qmp.sock")
    Path(path).write_text("not a socket")
    rc, err = await _run(["--host", prof, "-accel", "kvm", "-qmp", f"unix:{path},server=on,wait=off"])
    assert rc == 1 and "Address already in use" in err
    assert Path(path).read_text() == "not a socket"


async def test_incoming_starts_inmigrate(tmp_path: Path, sockdir: str) -> None:
    prof = write_profile(str(tmp_path), "6.3")
    async with sim(prof, sockdir, "-accel", "kvm", "-incoming", "defer") as s:
        qmp = await s.client()
        assert await qmp.execute("query-status") == {"running": False, "singlestep": False, "status": "inmigrate"}
        await qmp.execute("cont")  # only sets autostart while migrating in
        assert (await qmp.execute("query-status"))["status"] == "inmigrate"  # type: ignore[index]
        await _quit(qmp)


async def test_sigterm_is_a_clean_shutdown(tmp_path: Path, sockdir: str) -> None:
    prof = write_profile(str(tmp_path), "6.3")
    async with sim(prof, sockdir, "-accel", "kvm") as s:
        qmp = await s.client()
        with qmp.listener("SHUTDOWN") as events:
            s.proc.send_signal(signal.SIGTERM)
            ev = await asyncio.wait_for(events.get(), PATIENCE)
        assert ev["data"] == {"guest": False, "reason": "host-signal"}
        with contextlib.suppress(EOFError):
            await qmp.disconnect()
        rc, err = await s.wait()
        assert rc == 0 and "terminating on signal 15" in err
    assert os.listdir(sockdir) == []


async def test_fifty_concurrent_clients(tmp_path: Path, sockdir: str) -> None:
    prof = write_profile(str(tmp_path), "6.3")
    async with sim(prof, sockdir, *HOST_EVMCS, "-S") as s:
        clients = await asyncio.gather(*[s.client(f"c{i}") for i in range(50)])
        listeners = [c.listener("RESUME") for c in clients]
        for ctx in listeners:
            ctx.__enter__()
        try:
            async def work(c: QMPClient) -> object | None:
                for _ in range(5):
                    assert (await c.execute("query-status"))["status"] == "prelaunch"  # type: ignore[index]
                return await c.execute("x-evmcs-query-guest-vmx-msrs")
            results = await asyncio.gather(*[work(c) for c in clients])
            assert all(r == results[0] for r in results)
            await clients[0].execute("cont")
            for c in clients:  # every negotiated client gets the event
                ev = await asyncio.wait_for(c.events.get(), PATIENCE)
                assert ev["event"] == "RESUME"
        finally:
            for ctx in listeners:
                ctx.__exit__(None, None, None)
        for c in clients[1:]:
            await c.disconnect()
        await _quit(clients[0])
        assert (await s.wait())[0] == 0


async def test_garbage_input_does_not_crash(tmp_path: Path, sockdir: str) -> None:
    prof = write_profile(str(tmp_path), "6.3")
    async with sim(prof, sockdir, "-accel", "kvm") as s:
        # Robustness only (interop is checked with QMPClient below): raw bytes on a second connection.
        reader, writer = await asyncio.open_unix_connection(s.sock)
        greeting = await reader.readline()
        assert b'"QMP"' in greeting
        writer.write(b'garbage {"execute": 1} {"nope"} [1,2] {"execute":"query-status"} \xff\xfe {"a":')
        writer.write(b'"\\"}"}')  # completes the object: an unexpected member
        await writer.drain()
        replies = [await asyncio.wait_for(reader.readline(), PATIENCE) for _ in range(7)]
        assert all(b'"error"' in r for r in replies)
        assert b"Expecting capabilities negotiation" in replies[4]
        writer.write(b"[" * 2000)  # too deep: the server drops this connection
        await writer.drain()
        assert b"nesting too deep" in await asyncio.wait_for(reader.readline(), PATIENCE)
        assert await asyncio.wait_for(reader.read(), PATIENCE) == b""
        writer.close()
        # Half-open junk connections must not bother other clients.
        junk = socket.socket(socket.AF_UNIX)
        junk.connect(s.sock)
        junk.sendall(b'{"execute": "qmp_capab')
        qmp = await s.client()
        assert (await qmp.execute("query-status"))["status"] == "running"  # type: ignore[index]
        junk.close()
        await _quit(qmp)
        assert (await s.wait())[0] == 0


async def test_signals_that_keep_coming_end_it_once_without_a_traceback(tmp_path: Path, sockdir: str) -> None:
    # Ctrl-C pressed twice reaches every process of the terminal's group, and the wrapper forwards its own:
    # QEMU's handler stays installed until exit (os_setup_signal_handling), so a second signal during the
    # shutdown is one more request, never Python's KeyboardInterrupt in the middle of closing or at exit.
    prof = write_profile(str(tmp_path), "6.3")
    async with sim(prof, sockdir, "-accel", "kvm") as s:
        qmp = await s.client()
        await qmp.disconnect()
        sent = 0
        while s.proc.returncode is None and sent < 20000:
            with contextlib.suppress(ProcessLookupError):
                os.kill(s.proc.pid, signal.SIGINT)
            sent += 1
            await asyncio.sleep(0.0005)
        rc, err = await s.wait()
    assert sent > 1
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Exception ignored" not in err, err
    assert rc == 0, err
    assert err.count("terminating on signal 2") == 1, err


async def test_a_signal_during_start_up_ends_it_once_the_main_loop_runs(tmp_path: Path, sockdir: str) -> None:
    # QEMU's handler is in place before the machine is built; the request is served by the main loop: one
    # "terminating on signal" line and exit 0 (not Python's KeyboardInterrupt or death by the signal).
    # The signal is sent from inside the start-up, so that it arrives there whatever the machine's speed.
    prof = write_profile(str(tmp_path), "6.3")
    sock = os.path.join(sockdir, "qmp.sock")
    code = ("import os, signal, sys\n"
            "from qemu_evmcs.simqemu import server\n"
            "real = server.boot\n"
            "def boot(*a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real(*a, **k)\n"
            "server.boot = boot\n"
            "sys.exit(server.run())\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, "--host", prof, *HOST_EVMCS, "-qmp", f"unix:{sock},server=on,wait=off",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), PATIENCE)
    text = err.decode()
    assert proc.returncode == 0, text
    assert text.count("terminating on signal 2") == 1 and "Traceback" not in text, text
    assert not os.path.exists(sock)
