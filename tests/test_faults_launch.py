"""Fault injection for the launcher: a broken or hostile emulator, lost sockets, and signals in every phase.

The "emulator" is the scriptable fake in :mod:`fault_helpers` (it opens the QMP socket from its ``-qmp``
argument and misbehaves as told, and writes its pid to a file). After every fault: a one-line
``LaunchError`` / ``error:`` (never a traceback), the documented exit status, no orphan process and no
socket or runtime directory left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fault_helpers import log_lines, make_fake, read_pid, wait_for_file
from proc_helpers import descendants, pid_alive, read_until, wait_dead

from qemu_evmcs.core.errors import LaunchError
from qemu_evmcs.launch import qmp as qmp_module
from qemu_evmcs.launch.qmp import STDERR_HEAD, STDERR_TAIL, EmulatorSession

#: A bound that IS the point (a reply that never comes, a greeting that never completes): short, because
#: the outcome does not depend on how fast the machine is.
TIMEOUT = 0.8
#: A bound that is NOT the point (the emulator's start-up, a fault that arrives by itself): generous, because
#: at load 10 a Python fake can take seconds to start and to push 50 MB through a socket. It never slows a
#: passing test down: those end on the event, or on the fast-forwarded clock below.
GENEROUS = 120.0


def _parent(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    return run


def _assert_clean(pidfile: Path, run: Path) -> None:
    pid = read_pid(pidfile)
    assert wait_dead(pid), f"emulator {pid} left running"
    assert not os.path.exists(f"/proc/{pid}"), f"emulator {pid} not reaped"
    assert os.listdir(run) == [], "runtime directory left behind"
    assert descendants(os.getpid()) == [], "child processes left behind"


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and len(text) < 2200 and "Traceback" not in text
    return text


class _FastForward:
    """The session's clock: real time until ``ready()`` holds, then jumped to ``margin`` s before the deadline.

    The session retries the greeting until ``qmp_timeout`` has passed and then reports the LAST thing that
    went wrong, so which message a test sees used to depend on how much of a 0.8 s budget the machine left
    for the fault (at load 5 a 50 MB greeting did not fit). Here the budget is generous and nothing is
    skipped until the fault has demonstrably happened (``ready``, read from the fake's log); then the
    clock jumps so the test does not wait out the budget. The message is the same on any machine.
    """

    def __init__(self, budget: float, ready: Callable[[], bool], margin: float = 0.0) -> None:
        self.budget, self.ready, self.margin = budget, ready, margin
        self.t0: float | None = None
        self.shift = 0.0
        self.released = False

    def monotonic(self) -> float:
        now = time.monotonic() + self.shift
        if self.t0 is None:  # the first reading is the session's spawn time
            self.t0 = now
        elif not self.released and self.ready():
            self.released = True
            target = self.t0 + self.budget - self.margin
            if target > now:
                self.shift += target - now
                now = target
        return now


def _fast_forward(monkeypatch: pytest.MonkeyPatch, clock: _FastForward) -> None:
    monkeypatch.setattr(qmp_module, "time", SimpleNamespace(monotonic=clock.monotonic))


# --------------------------------------------------------------------------- EmulatorSession, start-up faults

@pytest.mark.parametrize("cfg,expected", [
    ({"greeting": "none"}, "(connected, but the greeting or negotiation never completed)"),
    ({"greeting": "garbage"}, "(last connect error: Failed to establish session: Did not understand Greeting"),
    ({"greeting": "partial-close"}, "(last connect error: Failed to establish session"),
    ({"greeting": "wrong"}, "object requires 'QMP' member"),
    ({"greeting": "nonewline"}, "chunk exceed the limit"),
    ({"greeting": "huge"}, "chunk exceed the limit"),
    ({"startup_delay": 3600}, "(socket never appeared)"),
], ids=["no-greeting", "garbage", "partial-json-close", "wrong-greeting", "endless-line", "50MB-greeting",
        "no-socket"])
async def test_startup_faults(cfg: dict[str, Any], expected: str, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    run = _parent(tmp_path)
    log = tmp_path / "fake.log"
    fake, pidfile = make_fake(tmp_path, log=str(log), **cfg)
    # The fault has happened once the fake is listening (a silent monitor: the session is now connected and
    # waiting), once the client has given up on one connection (a broken greeting: the session holds its
    # error), or once the fake runs (it wrote its pid, and sleeps an hour before it could make a socket).
    # A silent monitor needs the session to see the socket and connect after the jump, hence a margin
    # (any length works; it is what this case costs); a broken greeting's error is already recorded.
    margin = 0.0
    if cfg.get("greeting") == "none":
        ready, margin = (lambda: "listening" in log_lines(log)), 2.0
    elif "greeting" in cfg:
        ready = lambda: "served" in log_lines(log)  # noqa: E731
    else:
        ready = pidfile.exists
    clock = _FastForward(GENEROUS, ready, margin)
    _fast_forward(monkeypatch, clock)
    with pytest.raises(LaunchError) as info:
        async with EmulatorSession([fake], runtime_dir=str(run), qmp_timeout=GENEROUS, quit_timeout=1,
                                   term_timeout=2):
            pass
    msg = _one_line(info.value)
    assert msg.startswith(f"no QMP greeting from fake-qemu within {GENEROUS:g} s"), msg
    assert expected in msg
    assert clock.released  # the message came after the fault, not from a budget that ran out first
    _assert_clean(pidfile, run)


async def test_emulator_exits_during_startup(tmp_path: Path) -> None:
    run = _parent(tmp_path)
    fake, pidfile = make_fake(tmp_path, exit_before=3)
    with pytest.raises(LaunchError) as info:
        async with EmulatorSession([fake], runtime_dir=str(run), qmp_timeout=GENEROUS):
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
    # Only a reply that never comes is decided by the bound; every other fault ends the command by itself,
    # however long the loaded machine takes to deliver it.
    limit = TIMEOUT if action == "hang" else GENEROUS
    with pytest.raises(LaunchError) as info:
        async with EmulatorSession([fake], runtime_dir=str(run), qmp_timeout=GENEROUS, quit_timeout=1,
                                   term_timeout=2) as s:
            assert await s.execute("query-kvm") == {"enabled": False, "present": False}
            await s.execute("query-status", timeout=limit)
    msg = _one_line(info.value)
    assert msg.startswith(expected), msg
    _assert_clean(pidfile, run)


@pytest.mark.parametrize("where", ["greeting", "reply"])
async def test_50mb_message_is_bounded_in_memory(where: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """qemu.qmp's 10 MB line limit holds: a 50 MB greeting or reply is refused, not buffered."""
    run = _parent(tmp_path)
    log = tmp_path / "fake.log"
    cfg: dict[str, Any] = {"greeting": "huge"} if where == "greeting" else {"commands": {"*": "huge"}}
    fake, pidfile = make_fake(tmp_path, log=str(log), **cfg)
    _fast_forward(monkeypatch, _FastForward(GENEROUS, lambda: "served" in log_lines(log)))
    tracemalloc.start()
    try:
        with pytest.raises(LaunchError) as info:
            async with EmulatorSession([fake], runtime_dir=str(run), qmp_timeout=GENEROUS, quit_timeout=1) as s:
                await s.execute("query-status", timeout=GENEROUS)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # The 50 MB line itself was refused (a reply's reader error surfaces as the command's disconnect).
    expected = "chunk exceed the limit" if where == "greeting" else "QMP command query-status: Disconnected"
    assert expected in str(info.value), info.value
    assert peak < 40 * 1024 * 1024, peak  # well under the 50 MB message
    _assert_clean(pidfile, run)


async def test_stderr_flood_is_bounded(tmp_path: Path) -> None:
    """40 MB of emulator stderr: the session keeps a bounded head and tail and still reports the last line."""
    run = _parent(tmp_path)
    fake, pidfile = make_fake(tmp_path, stderr_flood=40, exit_before=3)
    tracemalloc.start()
    try:
        s = EmulatorSession([fake], runtime_dir=str(run), qmp_timeout=GENEROUS)
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
    asked = tmp_path / "asked"
    fake, pidfile = make_fake(tmp_path, commands={"query-status": "hang"}, marker={"query-status": str(asked)})

    async def body() -> None:
        async with EmulatorSession([fake], runtime_dir=str(run), qmp_timeout=GENEROUS, quit_timeout=1,
                                   term_timeout=2) as s:
            await s.execute("query-status", timeout=GENEROUS)

    task = asyncio.ensure_future(body())
    while not asked.exists():  # cancel while the command is in flight, not while the fake still starts
        assert not task.done(), task
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _assert_clean(pidfile, run)


# --------------------------------------------------------------------------- the wrapper

CPU = "qemu64,vmx=on,hv-evmcs=on"
READY = b"requested vmx/hv options applied"


def _wrapper(tmp_path: Path, fake: str, qmp_timeout: float = GENEROUS) -> tuple[subprocess.Popen[bytes], Path]:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(xdg), PYTHONFAULTHANDLER="1")
    env.pop("QEMU_EVMCS_EMULATOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "qemu_evmcs.launch.wrapper", "--emulator", fake,
                             "--qmp-timeout", f"{qmp_timeout:g}", "-cpu", CPU], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    return proc, xdg


def _finish(proc: subprocess.Popen[bytes], timeout: float = GENEROUS) -> bytes:
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
    cfg: dict[str, Any] = {}
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
            err = read_until(proc, READY)
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
    assert wait_dead(pid)
    assert os.listdir(xdg) == []


@pytest.mark.parametrize("phase", ["before-qmp", "running"])
def test_wrapper_signals_that_keep_coming(phase: str, tmp_path: Path) -> None:
    # Ctrl-C pressed again while the wrapper shuts down: one more request, never KeyboardInterrupt's traceback
    # in the middle of the clean-up or in an exit handler, nor death by the signal after Python's finalization
    # gave the handler back (status -2 instead of 130).
    fake, pidfile = make_fake(tmp_path, startup_delay=60) if phase == "before-qmp" else make_fake(tmp_path)
    proc, xdg = _wrapper(tmp_path, fake)
    err = b""
    sent = 0
    try:
        pid = read_pid(pidfile)
        if phase == "running":
            err = read_until(proc, READY)
        while proc.poll() is None and sent < 50000:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            sent += 1
            time.sleep(0.0005)
    finally:
        err += _finish(proc)
    text = err.decode(errors="replace")
    assert sent > 1
    assert "Traceback" not in text and "Exception ignored" not in text, text
    assert proc.returncode == 128 + signal.SIGINT, text
    assert text.splitlines()[-1] == "qemu-evmcs-launch: terminated by signal 2 (SIGINT)", text
    assert text.count("terminated by signal") == 1, text
    assert wait_dead(pid)
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
    # The bound is the point here; the detail in brackets depends on what the machine let happen within it
    # (test_startup_faults' business), and so does whether the fake got as far as writing its pid. The exit
    # status is 1 whatever our SIGTERM did to a fake that had no handler yet (test_reliability_launch).
    proc, xdg = _wrapper(tmp_path, fake, qmp_timeout=0.5)
    text = _finish(proc).decode()
    assert proc.returncode == 1, text
    line = text.splitlines()[-1]  # the emulator's own dying words may come first, the reason comes last
    assert line.startswith("error: no QMP greeting from fake-qemu within 0.5 s ("), line
    assert (not pidfile.exists() or wait_dead(read_pid(pidfile))) and os.listdir(xdg) == []


@pytest.mark.parametrize("action", ["hang", "close", "garbage"])
def test_wrapper_verification_fault_keeps_vm(action: str, tmp_path: Path) -> None:
    """A QMP fault while the emulator lives is a warning: the VM keeps running until it is stopped."""
    fake, pidfile = make_fake(tmp_path, commands={"query-kvm": action})
    # --qmp-timeout bounds the connect AND each command: a hanging reply needs it short, while the connect
    # needs it long enough for the fake to start on a loaded machine; 5 s is the compromise (what "hang"
    # costs). The other faults end by themselves.
    proc, xdg = _wrapper(tmp_path, fake, qmp_timeout=5 if action == "hang" else GENEROUS)
    err = b""
    try:
        err = read_until(proc, b"verification error: QMP command query-kvm: ")
        pid = read_pid(pidfile)
        # Nothing announces "the wrapper decided not to kill the VM": give a wrong kill a moment to show.
        # A pause here can only miss a late kill, never fail a correct wrapper.
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
