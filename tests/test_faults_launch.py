"""Fault injection for the launcher: a broken or hostile emulator, lost sockets, and signals in every phase.

The "emulator" is the scriptable fake in :mod:`fault_helpers` (it opens the QMP socket from its ``-qmp``
argument and misbehaves as told, and writes its pid to a file). After every fault: a one-line
``LaunchError`` / ``error:`` (never a traceback), the documented exit status, no orphan process and no
socket or runtime directory left behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from fault_helpers import make_fake, read_pid, wait_for_file
from proc_helpers import descendants, pid_alive, read_until, wait_dead

from qemu_evmcs.core.errors import LaunchError
from qemu_evmcs.launch.qmp import STDERR_HEAD, STDERR_TAIL, EmulatorSession

TIMEOUT = 0.8


def _parent(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    return run


def _assert_clean(pidfile: Path, run: Path) -> None:
    pid = read_pid(pidfile)
    assert wait_dead(pid, 5), f"emulator {pid} left running"
    assert not os.path.exists(f"/proc/{pid}"), f"emulator {pid} not reaped"
    assert os.listdir(run) == [], "runtime directory left behind"
    assert descendants(os.getpid()) == [], "child processes left behind"


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and len(text) < 2200 and "Traceback" not in text
    return text


# --------------------------------------------------------------------------- EmulatorSession, start-up faults

@pytest.mark.parametrize("cfg,expected", [
    ({"greeting": "none"}, "(connected, but the greeting or negotiation never completed)"),
    ({"greeting": "garbage"}, "(last connect error: Failed to establish session: Did not understand Greeting"),
    ({"greeting": "partial-close"}, "(last connect error: Failed to establish session"),
    ({"greeting": "wrong"}, "object requires 'QMP' member"),
    ({"greeting": "nonewline"}, "chunk exceed the limit"),
    ({"greeting": "huge"}, "chunk exceed the limit"),
    ({"startup_delay": 30}, "(socket never appeared)"),
], ids=["no-greeting", "garbage", "partial-json-close", "wrong-greeting", "endless-line", "50MB-greeting",
        "no-socket"])
async def test_startup_faults(cfg: dict[str, object], expected: str, tmp_path: Path) -> None:
    run = _parent(tmp_path)
    fake, pidfile = make_fake(tmp_path, **cfg)
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as info:
        async with EmulatorSession([fake], runtime_dir=str(run), qmp_timeout=TIMEOUT, quit_timeout=1,
                                   term_timeout=2):
            pass
    msg = _one_line(info.value)
    assert msg.startswith(f"no QMP greeting from fake-qemu within {TIMEOUT:g} s"), msg
    assert expected in msg
    assert time.monotonic() - t0 < TIMEOUT + 5
    _assert_clean(pidfile, run)


async def test_emulator_exits_during_startup(tmp_path: Path) -> None:
    run = _parent(tmp_path)
    fake, pidfile = make_fake(tmp_path, exit_before=3)
    with pytest.raises(LaunchError) as info:
        async with EmulatorSession([fake], runtime_dir=str(run), qmp_timeout=10):
            pass
    assert _one_line(info.value) == ("fake-qemu exited with status 3 before QMP was ready: "
                                     "fake-qemu: cannot start: broken on purpose")
    _assert_clean(pidfile, run)


# --------------------------------------------------------------------------- EmulatorSession, command faults

@pytest.mark.parametrize("action,expected", [
    ("hang", f"QMP command query-status: no answer within {TIMEOUT:g} s"),
    ("exit:5", "fake-qemu exited with status 5 during QMP command query-status: "
               "fake-qemu: exiting with status 5 on purpose"),
    ("kill:9", "fake-qemu was killed by signal 9 (SIGKILL) during QMP command query-status"),
    ("close", "QMP command query-status: "),
    ("garbage", "QMP command query-status: "),
    ("partial-close", "QMP command query-status: "),
    ("nonewline", "QMP command query-status: "),
    ("huge", "QMP command query-status: "),
], ids=["reply-never-comes", "exit-mid-command", "killed-mid-command", "socket-closes", "garbage-reply",
        "partial-reply-close", "endless-line", "50MB-reply"])
async def test_command_faults(action: str, expected: str, tmp_path: Path) -> None:
    run = _parent(tmp_path)
    fake, pidfile = make_fake(tmp_path, commands={"query-status": action})
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as info:
        async with EmulatorSession([fake], runtime_dir=str(run), qmp_timeout=10, quit_timeout=1,
                                   term_timeout=2) as s:
            assert await s.execute("query-kvm") == {"enabled": False, "present": False}
            await s.execute("query-status", timeout=TIMEOUT)
    msg = _one_line(info.value)
    assert msg.startswith(expected), msg
    assert time.monotonic() - t0 < TIMEOUT + 6
    _assert_clean(pidfile, run)


@pytest.mark.parametrize("where", ["greeting", "reply"])
async def test_50mb_message_is_bounded_in_memory(where: str, tmp_path: Path) -> None:
    """qemu.qmp's 10 MB line limit holds: a 50 MB greeting or reply is refused, not buffered."""
    run = _parent(tmp_path)
    cfg: dict[str, object] = {"greeting": "huge"} if where == "greeting" else {"commands": {"*": "huge"}}
    fake, pidfile = make_fake(tmp_path, **cfg)
    tracemalloc.start()
    try:
        with pytest.raises(LaunchError):
            async with EmulatorSession([fake], runtime_dir=str(run), qmp_timeout=TIMEOUT, quit_timeout=1) as s:
                await s.execute("query-status", timeout=5)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 40 * 1024 * 1024, peak  # well under the 50 MB message
    _assert_clean(pidfile, run)


async def test_stderr_flood_is_bounded(tmp_path: Path) -> None:
    """40 MB of emulator stderr: the session keeps a bounded head and tail and still reports the last line."""
    run = _parent(tmp_path)
    fake, pidfile = make_fake(tmp_path, stderr_flood=40, exit_before=3)
    tracemalloc.start()
    try:
        s = EmulatorSession([fake], runtime_dir=str(run), qmp_timeout=20)
        with pytest.raises(LaunchError) as info:
            async with s:
                pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert _one_line(info.value).endswith("status 3 before QMP was ready: fake-qemu: cannot start: broken on purpose")
    assert peak < 16 * 1024 * 1024, peak
    text = s.stderr_text
    assert len(text) < STDERR_HEAD + STDERR_TAIL + 200
    assert text.startswith("fake-qemu: chatter ") and "bytes of emulator stderr not kept" in text
    assert text.splitlines()[-2:] == ["fake-qemu: last words", "fake-qemu: cannot start: broken on purpose"]
    _assert_clean(pidfile, run)


async def test_cancel_while_waiting_for_reply(tmp_path: Path) -> None:
    run = _parent(tmp_path)
    fake, pidfile = make_fake(tmp_path, commands={"query-status": "hang"})

    async def body() -> None:
        async with EmulatorSession([fake], runtime_dir=str(run), quit_timeout=1, term_timeout=2) as s:
            await s.execute("query-status", timeout=60)

    task = asyncio.ensure_future(body())
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _assert_clean(pidfile, run)


# --------------------------------------------------------------------------- the wrapper

CPU = "qemu64,vmx=on,hv-evmcs=on"
READY = b"requested vmx/hv options applied"


def _wrapper(tmp_path: Path, fake: str, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(xdg), PYTHONFAULTHANDLER="1")
    env.pop("QEMU_EVMCS_EMULATOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "qemu_evmcs.launch.wrapper", "--emulator", fake, *extra,
                             "-cpu", CPU], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    return proc, xdg


def _finish(proc: subprocess.Popen[bytes], timeout: float = 20) -> bytes:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints the wrapper's stacks
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"wrapper hung; stderr: {err.decode(errors='replace')[-3000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return err


@pytest.mark.parametrize("phase", ["before-qmp", "verifying", "running"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_wrapper_signal_in_every_phase(sig: signal.Signals, phase: str, tmp_path: Path) -> None:
    marker = tmp_path / "verifying"
    cfg: dict[str, object] = {}
    if phase == "before-qmp":
        cfg = {"startup_delay": 60}
    elif phase == "verifying":
        cfg = {"commands": {"query-kvm": "hang"}, "marker": {"query-kvm": str(marker)}}
    fake, pidfile = make_fake(tmp_path, **cfg)
    proc, xdg = _wrapper(tmp_path, fake)
    err = b""
    try:
        pid = read_pid(pidfile)
        if phase == "verifying":
            wait_for_file(marker)
        elif phase == "running":
            err = read_until(proc, READY, 20)
        assert descendants(proc.pid) == [pid]
        assert len(os.listdir(xdg)) == 1
        proc.send_signal(sig)
    finally:
        err += _finish(proc)
    text = err.decode(errors="replace")
    assert proc.returncode == 128 + sig, text
    assert text.splitlines()[-1] == f"qemu-evmcs-launch: terminated by signal {int(sig)} ({sig.name})", text
    assert f"fake-qemu: terminating on signal {int(sig)}" in text  # the signal was forwarded
    assert "Traceback" not in text and "Unknown child process" not in text
    assert wait_dead(pid, 5)
    assert os.listdir(xdg) == []


def test_wrapper_emulator_exits_during_startup(tmp_path: Path) -> None:
    fake, pidfile = make_fake(tmp_path, exit_before=3)
    proc, xdg = _wrapper(tmp_path, fake)
    text = _finish(proc).decode()
    assert proc.returncode == 3
    assert text.splitlines()[-1] == ("error: fake-qemu exited with status 3 before QMP was ready: "
                                     "fake-qemu: cannot start: broken on purpose")
    assert wait_dead(read_pid(pidfile)) and os.listdir(xdg) == []


def test_wrapper_emulator_exits_mid_verification(tmp_path: Path) -> None:
    fake, pidfile = make_fake(tmp_path, commands={"query-kvm": "exit:4"})
    proc, xdg = _wrapper(tmp_path, fake)
    text = _finish(proc).decode()
    assert proc.returncode == 4, text
    assert text.splitlines()[-1] == ("qemu-evmcs-launch: verification stopped: fake-qemu exited with status 4 "
                                     "during QMP command query-kvm: fake-qemu: exiting with status 4 on purpose")
    assert "Traceback" not in text
    assert wait_dead(read_pid(pidfile)) and os.listdir(xdg) == []


@pytest.mark.parametrize("greeting", ["none", "garbage", "partial-close"])
def test_wrapper_no_usable_greeting(greeting: str, tmp_path: Path) -> None:
    fake, pidfile = make_fake(tmp_path, greeting=greeting)
    proc, xdg = _wrapper(tmp_path, fake, "--qmp-timeout", "0.5")
    text = _finish(proc).decode()
    assert proc.returncode == 1, text
    line = text.splitlines()[-1]  # the emulator's own dying words may come first, the reason comes last
    assert line.startswith("error: no QMP greeting from fake-qemu within 0.5 s ("), line
    assert wait_dead(read_pid(pidfile)) and os.listdir(xdg) == []


@pytest.mark.parametrize("action", ["hang", "close", "garbage"])
def test_wrapper_verification_fault_keeps_vm(action: str, tmp_path: Path) -> None:
    """A QMP fault while the emulator lives is a warning: the VM keeps running until it is stopped."""
    fake, pidfile = make_fake(tmp_path, commands={"query-kvm": action})
    proc, xdg = _wrapper(tmp_path, fake, "--qmp-timeout", "0.5")
    err = b""
    try:
        err = read_until(proc, b"verification error: QMP command query-kvm: ", 20)
        pid = read_pid(pidfile)
        time.sleep(0.2)
        assert pid_alive(pid) and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
    finally:
        err += _finish(proc)
    text = err.decode(errors="replace")
    assert proc.returncode == 128 + signal.SIGTERM
    assert text.splitlines()[-1] == "qemu-evmcs-launch: terminated by signal 15 (SIGTERM)"
    assert "Traceback" not in text and "Unknown child process" not in text
    assert wait_dead(pid) and os.listdir(xdg) == []
