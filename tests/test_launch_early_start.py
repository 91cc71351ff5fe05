"""The wrapper starts the emulator before it loads its QMP client, and hands the running process to the session.

Why these tests: the emulator's start and the wrapper's import of ``asyncio``/``qemu.qmp`` overlap only if
nothing before the start imports them (a stray import at the top of a module undoes it silently), and the
time between the start and the event loop is new ground: a signal there must still be forwarded and end the
wrapper with 128+N, a failure there must not leave the emulator running or its directory behind. Each
wrapper runs in a process of its own, with one hook put in by a short driver script; the emulator is the
fake QEMU of ``fault_helpers``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fault_helpers import make_fake, read_pid
from proc_helpers import descendants, wait_dead

from qemu_evmcs.core.errors import LaunchError
from qemu_evmcs.launch.qmp import EmulatorSession

CPU = "qemu64,vmx=on,hv-evmcs=on"
PATIENCE = 120.0


def _drive(tmp_path: Path, fake: str, pidfile: Path, hook: str) -> tuple[int, str, Path]:
    """Run the wrapper on ``fake`` in a fresh process, ``hook`` (Python, with ``wrapper`` imported) first; the
    hook finds the fake's pid file in ``$FAKE_PIDFILE``."""
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(xdg), FAKE_PIDFILE=str(pidfile))
    env.pop("QEMU_EVMCS_EMULATOR", None)
    code = ("import os, signal, sys\n"
            "from qemu_evmcs.launch import wrapper\n"
            f"{hook}\n"
            "sys.exit(wrapper.run())\n")
    proc = subprocess.run([sys.executable, "-c", code, "--emulator", fake, "--qmp-timeout", str(PATIENCE),
                           "-cpu", CPU], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=PATIENCE)
    return proc.returncode, proc.stderr.decode(errors="replace"), xdg


def test_the_emulator_starts_before_asyncio_and_qemu_qmp_are_imported(tmp_path: Path) -> None:
    # The fake ends itself at the verification's query-kvm, so the wrapper ends with it.
    fake, pidfile = make_fake(tmp_path, commands={"query-kvm": "exit:0"})
    hook = ("real = wrapper.spawn_emulator\n"
            "def spawn(*a, **k):\n"
            "    loaded = sorted(m for m in ('asyncio', 'qemu.qmp', 'qemu_evmcs.launch.qmp') if m in sys.modules)\n"
            "    sys.stderr.write(f'LOADED AT START {loaded}\\n')\n"
            "    return real(*a, **k)\n"
            "wrapper.spawn_emulator = spawn\n")
    rc, err, xdg = _drive(tmp_path, fake, pidfile, hook)
    assert "LOADED AT START []" in err, err
    assert rc == 0 and "verification stopped: fake-qemu exited with status 0" in err, err
    assert wait_dead(read_pid(pidfile))
    assert os.listdir(xdg) == []


def test_a_signal_between_the_start_and_the_event_loop_is_forwarded(tmp_path: Path) -> None:
    # SIGINT sent to the wrapper right after the emulator started (once the fake handles its own signals),
    # before asyncio is even imported: it is noted, then served by the loop like any other (forwarded, the
    # emulator's stderr relayed, emulator reaped, directory removed, 130).
    fake, pidfile = make_fake(tmp_path, startup_delay=60)
    hook = ("real = wrapper.spawn_emulator\n"
            "def spawn(*a, **k):\n"
            "    started = real(*a, **k)\n"
            "    while not os.path.exists(os.environ['FAKE_PIDFILE']):\n"   # the fake handles its signals
            "        signal.sigtimedwait([], 0.01)\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    return started\n"
            "wrapper.spawn_emulator = spawn\n")
    rc, err, xdg = _drive(tmp_path, fake, pidfile, hook)
    assert rc == 128 + signal.SIGINT, err
    assert err.splitlines()[-1] == "qemu-evmcs-launch: terminated by signal 2 (SIGINT)", err
    assert "fake-qemu: terminating on signal 2" in err  # forwarded, and its stderr relayed
    assert "Traceback" not in err
    assert wait_dead(read_pid(pidfile))
    assert os.listdir(xdg) == []


def test_a_failure_before_the_session_takes_the_emulator_over_stops_it(tmp_path: Path) -> None:
    # The event loop cannot be set up (here: asyncio.run fails): the started emulator is stopped and reaped,
    # its directory removed, and the failure is one error line.
    fake, pidfile = make_fake(tmp_path)
    hook = ("from qemu_evmcs.core.errors import LaunchError\n"
            "class NoLoop:\n"
            "    @staticmethod\n"
            "    def run(coro):\n"
            "        coro.close()\n"
            "        while not os.path.exists(os.environ['FAKE_PIDFILE']):\n"   # the fake runs: its pid is known
            "            signal.sigtimedwait([], 0.01)\n"
            "        raise LaunchError('no event loop on purpose')\n"
            "wrapper.asyncio = NoLoop\n")
    rc, err, xdg = _drive(tmp_path, fake, pidfile, hook)
    assert rc == 1, err
    assert err.splitlines()[-1] == "error: no event loop on purpose", err
    assert wait_dead(read_pid(pidfile))
    assert os.listdir(xdg) == []


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "thread"])
async def test_the_exit_status_is_reaped_with_or_without_pidfds(pidfd: bool, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Without pidfds (an older kernel, another system) Popen.wait runs in a thread; both report the status.
    if not pidfd:
        def no_pidfd(pid: int, flags: int = 0) -> int:
            raise OSError(38, "Function not implemented")
        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    fake, pidfile = make_fake(tmp_path, commands={"query-status": "exit:7"})
    with pytest.raises(LaunchError) as info:
        async with EmulatorSession([fake], runtime_dir=str(run), qmp_timeout=PATIENCE) as s:
            await s.execute("query-status")
    assert str(info.value).startswith("fake-qemu exited with status 7 during QMP command query-status")
    assert s.returncode == 7
    assert wait_dead(read_pid(pidfile)) and os.listdir(run) == []
    assert descendants(os.getpid()) == []


async def test_a_spawn_cancelled_while_its_stderr_pipe_is_set_up_closes_the_pipe_once(tmp_path: Path) -> None:
    # Cancelled inside connect_read_pipe, the transport already made closes its pipe later: the session must
    # close that same file object, not the descriptor under it (which gave EBADF in the transport's callback,
    # or closed a descriptor number reused meanwhile).
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    fake, _ = make_fake(tmp_path)
    session = EmulatorSession([fake], runtime_dir=str(run), qmp_timeout=PATIENCE, term_timeout=5)
    task = asyncio.create_task(session.spawn())
    await asyncio.sleep(0)      # the task runs up to the pipe's set-up, which waits for the next turn
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await session.close()
    for _ in range(3):          # the transport's connection_lost callback
        await asyncio.sleep(0)
    assert errors == []
    assert session.pid is not None and session.returncode is not None   # stopped and reaped by close()
    assert wait_dead(session.pid) and os.listdir(run) == []
