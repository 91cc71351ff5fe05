"""Issue 14 classes 6-9: the launcher's processes and directories in a hostile environment.

- ``-daemonize`` made QEMU fork away: the wrapper returned 0, the VM ran on unmanaged. Refused now.
- A QMP greeting that never comes ended with exit 143 (our SIGTERM to the emulator) or 137 (SIGKILL after
  it ignored SIGTERM) instead of the documented 1. The fake emulator here dies by the signal like QEMU.
- A long but valid ``$XDG_RUNTIME_DIR`` (socket path over 107 bytes) refused to launch.
- ``SIGKILL`` of the wrapper (or of make-fleet) left its directory behind for good; the next run sweeps
  the leftovers of this user's dead processes, never a live process's or another user's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_helpers import make_fake, read_pid
from proc_helpers import read_until, wait_dead

from qemu_evmcs.core import stale
from qemu_evmcs.launch.process import RUNTIME_PREFIX, SOCKET_NAME, UNIX_PATH_MAX, make_runtime_dir

CPU = "qemu64,vmx=on,hv-evmcs=on,hv-vapic=on"
MAKE_FLEET = Path(__file__).resolve().parent.parent / "scripts" / "make-fleet"


def _wrapper(xdg: Path, fake: str, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, XDG_RUNTIME_DIR=str(xdg))
    env.pop("QEMU_EVMCS_EMULATOR", None)
    return subprocess.Popen([sys.executable, "-m", "qemu_evmcs.launch.wrapper", "--emulator", fake, *extra],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory with a short path (pytest's tmp_path can be too long for a socket path below it)."""
    d = Path(tempfile.mkdtemp(prefix="qe-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _xdg(tmp_path: Path) -> Path:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700, exist_ok=True)
    return xdg


@pytest.mark.parametrize("signals", ["default", "ignore-term"])
def test_greeting_timeout_exits_1_whatever_our_signal_did(signals: str, tmp_path: Path, short_tmp: Path) -> None:
    fake, pidfile = make_fake(tmp_path, greeting="none", signals=signals)
    xdg = _xdg(short_tmp)
    proc = _wrapper(xdg, fake, "--qmp-timeout", "0.5", "-cpu", CPU)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err.decode()
    assert err.decode().splitlines()[-1].startswith("error: no QMP greeting from fake-qemu within 0.5 s")
    # On a loaded machine the fake may be stopped before it even wrote its pid: then it is gone anyway.
    assert (not pidfile.exists() or wait_dead(read_pid(pidfile))) and os.listdir(xdg) == []


def test_daemonize_is_refused_before_anything_starts(tmp_path: Path) -> None:
    fake, pidfile = make_fake(tmp_path)
    xdg = _xdg(tmp_path)
    for flag in ("-daemonize", "--daemonize"):
        proc = _wrapper(xdg, fake, "-cpu", CPU, flag)
        try:
            _, err = proc.communicate(timeout=120)
        finally:  # before the fix the wrapper ran the emulator: never leave it behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            text = pidfile.read_text().strip() if pidfile.exists() else ""
            if text.isdigit() and int(text) > 1:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(text), 9)
        text = err.decode()
        assert proc.returncode == 2 and text.count("\n") == 1, text
        assert text.startswith("error: -daemonize is not supported: qemu-evmcs-launch supervises"), text
    assert not pidfile.exists() and os.listdir(xdg) == []


def test_long_xdg_runtime_dir_falls_back_to_a_private_tmp_dir(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    xdg = tmp_path / ("x" * 60) / ("y" * 60)
    xdg.mkdir(parents=True, mode=0o700)
    os.chmod(xdg.parent, 0o700)
    assert len(str(xdg / "qemu-evmcs-abcdefgh" / SOCKET_NAME)) > UNIX_PATH_MAX
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    tmp = Path(tempfile.mkdtemp(prefix="qe-", dir="/tmp"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    path = make_runtime_dir(None)
    try:
        assert os.path.dirname(path) == str(tmp) and (os.stat(path).st_mode & 0o777) == 0o700
        assert len(os.path.join(path, SOCKET_NAME).encode()) <= UNIX_PATH_MAX
    finally:
        shutil.rmtree(tmp)
    # An explicitly given runtime directory is never replaced: still refused.
    with pytest.raises(Exception, match="too long for a unix socket path"):
        make_runtime_dir(str(xdg))


def _dead_owner() -> str:
    """``<pid> <start>`` of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = stale.start_time(child.pid)
    finally:
        child.kill()
        child.wait()
    return f"{child.pid} {start}\n"


def _leftover(parent: Path, name: str, owner: str | None) -> Path:
    d = parent / name
    d.mkdir()
    (d / SOCKET_NAME).write_text("")
    if owner is not None:
        (d / stale.OWNER_FILE).write_text(owner)
    return d


def test_sweep_removes_only_this_users_dead_leftovers(tmp_path: Path) -> None:
    dead = _leftover(tmp_path, RUNTIME_PREFIX + "dead", _dead_owner())
    live = Path(stale.make_owned_dir(str(tmp_path), RUNTIME_PREFIX))                 # ours, running
    reused = _leftover(tmp_path, RUNTIME_PREFIX + "reused", f"{os.getpid()} 1\n")   # our pid, other start
    unowned = _leftover(tmp_path, RUNTIME_PREFIX + "unowned", None)                  # older version: kept
    foreign = _leftover(tmp_path, RUNTIME_PREFIX + "foreign", _dead_owner())
    if os.geteuid() == 0:
        os.chown(foreign, 1, 1)                                                      # another user's
    link = tmp_path / (RUNTIME_PREFIX + "link")
    link.symlink_to(dead)                                                            # never followed
    planted = _leftover(tmp_path, RUNTIME_PREFIX + "planted", None)                  # owner file a symlink
    (planted / stale.OWNER_FILE).symlink_to(dead / stale.OWNER_FILE)
    other = _leftover(tmp_path, "elsewhere", _dead_owner())                          # other prefix
    removed = stale.sweep(str(tmp_path), RUNTIME_PREFIX)
    want = [str(dead), str(reused)] + ([] if os.geteuid() == 0 else [str(foreign)])
    assert sorted(removed) == sorted(want)
    assert live.is_dir() and unowned.is_dir() and planted.is_dir() and other.is_dir() and link.is_symlink()
    assert os.geteuid() != 0 or foreign.is_dir()


def test_sigkilled_wrapper_leftovers_are_swept_by_the_next_run(tmp_path: Path, short_tmp: Path) -> None:
    fake, pidfile = make_fake(tmp_path)
    xdg = _xdg(short_tmp)
    first = _wrapper(xdg, fake, "-cpu", CPU)
    try:
        read_until(first, b"requested vmx/hv options applied", 60)
        first.kill()
        first.communicate()  # reaps it and closes its pipes (wait() left the stderr pipe to the GC)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert wait_dead(read_pid(pidfile))  # PR_SET_PDEATHSIG took the emulator with it
    leftovers = os.listdir(xdg)
    assert len(leftovers) == 1 and os.path.exists(xdg / leftovers[0] / SOCKET_NAME)
    fake2, _ = make_fake(tmp_path, name="fake2", greeting="none")
    second = _wrapper(xdg, fake2, "--qmp-timeout", "0.3", "-cpu", CPU)
    second.communicate(timeout=120)
    assert second.returncode == 1 and os.listdir(xdg) == []


def test_make_fleet_sweeps_a_dead_runs_build_directory(tmp_path: Path) -> None:
    leftover = _leftover(tmp_path, ".make-fleet-abc123", _dead_owner())
    (leftover / "pool").mkdir()
    (leftover / "pool" / "h.yaml").write_text("x\n")
    r = subprocess.run([sys.executable, str(MAKE_FLEET), "--count", "3", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["out"] and stale.OWNER_FILE not in os.listdir(tmp_path / "out")
