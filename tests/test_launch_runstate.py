"""Issue 10 (launch session part): an explicit run state with guarded transitions, and cancellation that
is never swallowed (qemu.qmp's discipline). The emulator is the scriptable fake of ``fault_helpers``.

The transition list below is written by hand from :class:`Runstate`'s documented diagram, not read from
the code: IDLE -> SPAWNED -> CONNECTED -> DETACHED -> CLOSING -> CLOSED.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest
from fault_helpers import make_fake, read_pid
from proc_helpers import wait_dead

from qemu_evmcs.core.errors import EvmcsError, LaunchError
from qemu_evmcs.launch.qmp import EmulatorSession, Runstate, StateError
from qemu_evmcs.simqemu.qmp_server import QmpCommandError


def _state(s: EmulatorSession) -> Runstate:
    """The run state, read afresh (mypy would otherwise keep an earlier assert's narrowing across an await)."""
    return s.runstate


class _Recording(EmulatorSession):
    """Records every transition (the qemu.qmp tests' runstate watcher, synchronously)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.seen: list[Runstate] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _set_state(self, new: Runstate) -> None:
        self.seen.append(new)
        super()._set_state(new)


def _run_parent() -> str:
    d = tempfile.mkdtemp(prefix="qe-", dir="/tmp")
    os.chmod(d, 0o700)
    return d


async def test_transitions_and_guards(tmp_path: Path) -> None:
    fake, pidfile = make_fake(tmp_path)
    run = _run_parent()
    s = _Recording([fake], runtime_dir=run, qmp_timeout=60, quit_timeout=5, term_timeout=5)
    assert _state(s) is Runstate.IDLE
    with pytest.raises(StateError, match="QMP command query-status: the emulator session is idle, not connected"):
        await s.execute("query-status")
    await s.start()
    assert _state(s) is Runstate.CONNECTED
    with pytest.raises(StateError, match="spawn: the emulator session is connected, not idle"):
        await s.spawn()
    await s.execute("query-status")
    await s.disconnect()
    assert _state(s) is Runstate.DETACHED
    with pytest.raises(StateError) as info:
        await s.execute("query-status")
    assert info.value.state is Runstate.DETACHED and info.value.required == (Runstate.CONNECTED,)
    assert isinstance(info.value, LaunchError)
    await s.close()
    assert s.seen == [Runstate.SPAWNED, Runstate.CONNECTED, Runstate.DETACHED, Runstate.CLOSING, Runstate.CLOSED]
    assert wait_dead(read_pid(pidfile)) and os.listdir(run) == []
    os.rmdir(run)


async def test_cancellation_during_connect_propagates_and_cleans_up(tmp_path: Path) -> None:
    """The caller's cancellation reaches it unwrapped (it was swallowed by ``suppress(BaseException)``
    around an ``await`` before); the emulator is still reaped and the directory removed."""
    log = tmp_path / "fake.log"
    fake, pidfile = make_fake(tmp_path, greeting="none", log=str(log))
    run = _run_parent()
    s = EmulatorSession([fake], runtime_dir=run, qmp_timeout=3600, quit_timeout=1, term_timeout=2)
    task = asyncio.ensure_future(s.start())
    while not (log.exists() and "listening" in log.read_text()):  # the fake's monitor is up: wait on it
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _state(s) is Runstate.SPAWNED
    await s.close()
    assert _state(s) is Runstate.CLOSED
    assert wait_dead(read_pid(pidfile)) and os.listdir(run) == []
    os.rmdir(run)


def test_simulator_command_error_joins_the_root_error() -> None:
    err = QmpCommandError("Parameter 'x' is missing", "GenericError")
    assert isinstance(err, EvmcsError) and err.desc == "Parameter 'x' is missing" and err.cls == "GenericError"
    assert str(err) == "Parameter 'x' is missing"
