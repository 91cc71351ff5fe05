"""Real ``qemu-system-x86_64`` under TCG: the QMP layer, verification and the wrapper.

Marked ``qemu``. In CI (CI=true) a missing binary fails; elsewhere these skip
only when the binary is absent.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import socket
import sys
from pathlib import Path

import pytest
from launch_helpers import BASE_ARGS, qemu_argv, qemu_path
from proc_helpers import PATIENCE, children_of, pid_alive, pid_exists, read_until, wait_gone

from qemu_evmcs.core.errors import InputError, LaunchError
from qemu_evmcs.launch.qmp import EmulatorSession
from qemu_evmcs.launch.cpuarg import parse_cpu_arg
from qemu_evmcs.launch.verify import STATUS_APPLIED, STATUS_DROPPED, STATUS_INEFFECTIVE, verify_cpu

pytestmark = pytest.mark.qemu

SKYLAKE = "Skylake-Server-v5,vmx=on,+vmx-posted-intr"


def _private_parent(tmp_path: Path) -> str:
    parent = tmp_path / "run"
    parent.mkdir(mode=0o700)
    return str(parent)


async def test_start_verify_quit(tmp_path: Path) -> None:
    parent = _private_parent(tmp_path)
    cpu = SKYLAKE + ",vmx-ept=on,hv-evmcs=on,hv-vapic=on"
    async with EmulatorSession(qemu_argv(cpu), runtime_dir=parent, qmp_timeout=PATIENCE) as s:
        assert s.runtime_dir is not None and os.stat(s.runtime_dir).st_mode & 0o777 == 0o700
        assert s.socket_path is not None and os.path.exists(s.socket_path)
        status = await s.execute("query-status")
        assert isinstance(status, dict) and status["status"] == "prelaunch"
        report = await verify_cpu(s, parse_cpu_arg(cpu))
        pid = s.pid
        runtime_dir = s.runtime_dir
    assert pid is not None and not pid_exists(pid)
    assert not os.path.exists(runtime_dir) and os.listdir(parent) == []
    assert s.returncode == 0
    by = {f.name: f for f in report.features}
    # What QEMU 7.2 prints verbatim under TCG for vmx=on:
    assert by["vmx"].status == STATUS_DROPPED
    assert by["vmx"].reason == "TCG doesn't support requested feature: CPUID.01H:ECX.vmx [bit 5]"
    assert by["vmx"].warning is not None and by["vmx"].warning.cpuid_leaf == 1
    assert by["vmx-posted-intr"].status == STATUS_DROPPED
    assert by["vmx-posted-intr"].reason == "TCG doesn't support requested feature: MSR(48DH).vmx-posted-intr [bit 7]"
    assert by["vmx-posted-intr"].expanded is True and by["vmx-posted-intr"].effective is False
    assert by["hv-evmcs"].status == STATUS_INEFFECTIVE and by["hv-evmcs"].effective is True
    assert report.kvm_enabled is False and report.qom_path.startswith("/machine/")
    assert "vmx-posted-intr" in report.unavailable_features
    assert "vmx-pml" in report.implied_dropped  # from the model, not asked for
    assert not report.ok
    json.loads(report.to_json())


async def test_applied_feature_and_events(tmp_path: Path) -> None:
    cpu = "qemu64,sse4.2=on,vmx=off"
    async with EmulatorSession(qemu_argv(cpu), runtime_dir=_private_parent(tmp_path)) as s:
        report = await verify_cpu(s, parse_cpu_arg(cpu))
        assert [(f.name, f.status) for f in report.features] == [("vmx", STATUS_APPLIED)]
        assert report.ok
        listener = s.listener(["RESUME"])
        await s.execute("cont")
        ev = await asyncio.wait_for(listener.get(), PATIENCE)
        assert ev["event"] == "RESUME"


async def test_kill9_during_command(tmp_path: Path) -> None:
    parent = _private_parent(tmp_path)
    s = EmulatorSession(qemu_argv(SKYLAKE), runtime_dir=parent)
    with pytest.raises(LaunchError) as info:
        async with s:
            pid = s.pid
            assert pid is not None

            answered = asyncio.Event()

            async def hammer() -> None:
                while True:
                    await s.execute("query-cpu-model-expansion",
                                    {"type": "full", "model": {"name": "Skylake-Server-v5"}})
                    answered.set()

            task = asyncio.ensure_future(hammer())
            await asyncio.wait_for(answered.wait(), PATIENCE)  # commands are flowing: kill in the middle
            os.kill(pid, signal.SIGKILL)
            await asyncio.wait_for(task, PATIENCE)
    assert "killed by signal 9 (SIGKILL)" in str(info.value)
    assert "during QMP command" in str(info.value) or "before QMP command" in str(info.value)
    assert s.pid is not None and not pid_exists(s.pid)
    assert os.listdir(parent) == []


async def test_bad_cpu_model_shows_qemu_error(tmp_path: Path) -> None:
    parent = _private_parent(tmp_path)
    with pytest.raises(LaunchError) as info:
        async with EmulatorSession(qemu_argv("nosuchmodel"), runtime_dir=parent, qmp_timeout=PATIENCE):
            pass
    msg = str(info.value)
    assert msg.endswith("qemu-system-x86_64: unable to find CPU model 'nosuchmodel'")
    # The session ended on QEMU's exit, not on the QMP budget (that message would say "no QMP greeting").
    assert "exited with status 1 before QMP was ready" in msg
    assert os.listdir(parent) == []


async def test_greeting_timeout_reaps_child(tmp_path: Path) -> None:
    parent = _private_parent(tmp_path)
    # A program that accepts any arguments and never opens the socket.
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    s = EmulatorSession(argv, runtime_dir=parent, qmp_timeout=0.7, term_timeout=2)
    with pytest.raises(LaunchError, match=r"no QMP greeting .* within 0.7 s \(socket never appeared\)"):
        async with s:
            pass
    # Not waited out: the child was terminated by the session (it would have slept 30 s and exited 0).
    assert s.pid is not None and not pid_exists(s.pid)
    assert s.returncode == -signal.SIGTERM
    assert os.listdir(parent) == []


async def test_cancellation_propagates_and_cleans(tmp_path: Path) -> None:
    parent = _private_parent(tmp_path)
    s = EmulatorSession(qemu_argv(), runtime_dir=parent)
    started = asyncio.Event()

    async def body() -> None:
        async with s:
            started.set()
            await asyncio.sleep(60)

    task = asyncio.ensure_future(body())
    await asyncio.wait_for(started.wait(), PATIENCE)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s.pid is not None and not pid_exists(s.pid)
    assert os.listdir(parent) == []


async def test_unsafe_runtime_dir_refused(tmp_path: Path) -> None:
    qemu_path()
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(InputError, match="group- or world-writable"):
        async with EmulatorSession(qemu_argv(), runtime_dir=str(open_dir)):
            pass
    assert os.listdir(open_dir) == []
    if os.geteuid() == 0:
        other = tmp_path / "other"
        other.mkdir(mode=0o700)
        os.chown(other, 65534, 65534)
        with pytest.raises(InputError, match="owned by uid 65534"):
            async with EmulatorSession(qemu_argv(), runtime_dir=str(other)):
                pass


# ---------------------------------------------------------------- the wrapper


def _wrapper_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    run = tmp_path / "xdg"
    run.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(run), PYTHONFAULTHANDLER="1")
    env.pop("QEMU_EVMCS_EMULATOR", None)
    return env, run


def _start_wrapper(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    env, run = _wrapper_env(tmp_path)
    # The default 10 s QMP budget is not what these tests are about: a loaded machine may need more.
    proc = subprocess.Popen([sys.executable, "-m", "qemu_evmcs.launch.wrapper", "--qmp-timeout", f"{PATIENCE:g}",
                             *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    return proc, run


def test_wrapper_sigterm(tmp_path: Path) -> None:
    qemu_path()
    report = tmp_path / "report.json"
    proc, run = _start_wrapper(tmp_path, "--report-json", str(report), *BASE_ARGS, "-cpu", SKYLAKE)
    try:
        err = read_until(proc, b"model features dropped by QEMU")
        kids = children_of(proc.pid)
        assert len(kids) == 1 and pid_alive(kids[0])
        assert len(os.listdir(run)) == 1
        assert (b"dropped vmx-posted-intr: TCG doesn't support requested feature: "
                b"MSR(48DH).vmx-posted-intr [bit 7]") in err
        proc.send_signal(signal.SIGTERM)
        try:
            _, rest = proc.communicate(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler dumps the wrapper's stacks
            _, rest = proc.communicate(timeout=10)
            raise AssertionError("wrapper still running after SIGTERM; stderr: "
                                 f"{rest.decode(errors='replace')}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM
    assert wait_gone(kids[0])
    assert os.listdir(run) == []
    data = json.loads(report.read_text())
    assert "vmx-posted-intr" in data["dropped"] and data["kvm"]["enabled"] is False
    assert b"Traceback" not in err + rest


def test_wrapper_passes_exit_status(tmp_path: Path) -> None:
    qemu_path()
    user_sock = tmp_path / "user.sock"
    proc, run = _start_wrapper(tmp_path, *BASE_ARGS, "-cpu", "qemu64",
                               "-qmp", f"unix:{user_sock},server=on,wait=off")
    try:
        read_until(proc, b"requested vmx/hv options applied")
        (qemu,) = children_of(proc.pid)
        os.kill(qemu, signal.SIGKILL)  # the emulator dies by a signal: wrapper reports 128+9
        _, err = proc.communicate(timeout=PATIENCE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGKILL
    assert b"emulator was killed by signal 9" in err
    assert os.listdir(run) == []

    # A clean `quit` through the user's own monitor: exit 0.
    proc, run = _start_wrapper(tmp_path, *BASE_ARGS, "-cpu", "qemu64",
                               "-qmp", f"unix:{user_sock},server=on,wait=off")
    try:
        read_until(proc, b"requested vmx/hv options applied")
        # A plain socket, not qemu.qmp's legacy client: that one makes an event loop it never closes.
        with socket.socket(socket.AF_UNIX) as mon, mon.makefile("rwb") as f:
            mon.settimeout(PATIENCE)
            mon.connect(str(user_sock))
            assert b'"QMP"' in f.readline()
            f.write(b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n')
            f.flush()
            # QEMU answers and closes the socket, or just closes it -- with a reset when it exits before
            # reading all we sent (Linux: ECONNRESET to the peer of a UNIX socket closed with unread data).
            try:
                assert f.read() is not None
            except ConnectionResetError:
                pass
        proc.communicate(timeout=PATIENCE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def test_wrapper_emulator_status_and_errors(tmp_path: Path) -> None:
    qemu_path()
    env, run = _wrapper_env(tmp_path)
    fake = tmp_path / "fake-qemu"
    fake.write_text("#!/bin/sh\necho 'fake: giving up' >&2\nexit 3\n")
    fake.chmod(0o755)
    cmd = [sys.executable, "-m", "qemu_evmcs.launch.wrapper"]

    def run_(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cmd, *args], check=False, capture_output=True, text=True,
                              env=env, timeout=PATIENCE)

    r = run_("--emulator", str(fake), "-cpu", "max")
    assert r.returncode == 3
    assert r.stderr.splitlines()[-1] == "error: fake-qemu exited with status 3 before QMP was ready: fake: giving up"

    r = run_(*BASE_ARGS, "-cpu", "nosuchmodel")
    assert r.returncode == 1
    assert "qemu-system-x86_64: unable to find CPU model 'nosuchmodel'" in r.stderr.splitlines()[-1]

    r = run_("-version")  # libvirt-style probe: exec'd, no verification
    assert r.returncode == 0 and "QEMU emulator version" in r.stdout and r.stderr == ""

    for args, code, text in [
        (["--qmp-timeout", "soon", "-cpu", "max"], 2, "error: --qmp-timeout 'soon': not a number"),
        (["--emulator", "/nonexistent/qemu", "-cpu", "max"], 2,
         "error: emulator /nonexistent/qemu: not found or not executable"),
        (["-cpu", ",vmx=on"], 2, "error: -cpu ',vmx=on': empty CPU model name"),
    ]:
        r = run_(*args)
        assert (r.returncode, r.stderr.strip()) == (code, text), args
    assert os.listdir(run) == []

