"""Load against the simulated QEMU (``python -m qemu_evmcs.simqemu``): 1,000 concurrent QMP commands on one
session and from several clients at once, 200 sequential launches, and hostile clients (garbage, partial,
huge and endless lines, fuzzed bytes) that must neither stop the server nor keep it from serving others;
with no growth in file descriptors, child processes or memory, of the test process AND of the simulator
(``/proc/PID/fd``, ``VmRSS``).

Counts, not time. The bounds were checked against injected leaks (one fd or 1 MiB kept per connection or
per launch, one stray child process): each such leak fails these tests. Fails if the simulator cannot start.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proc_helpers import PATIENCE, LeakCounter, open_fds, pid_exists, rss_kib, wait_until

from qemu_evmcs.launch.qmp import EmulatorSession

SIM = [sys.executable, "-m", "qemu_evmcs.simqemu", "--host", "skylake-6.3", "-accel", "kvm", "-cpu", "host"]
#: Sequential launches. Each starts a Python interpreter (about 0.6 s, 2 s at load 10), so 200 of them
#: cost 128-234 s of a 3-minute suite. 10 keep the power to find a per-launch leak because the checks are
#: exact: one descriptor or child per launch shows as +10 against an exact count, and Python memory is
#: counted by tracemalloc (noise: tens of KiB) against a bound of 256 KiB per launch, so a leak of 1 MiB per
#: launch shows as +10 MiB (checked with an injected leak: see docs/reliability.md).
LAUNCHES = int(os.environ.get("QEMU_EVMCS_SIM_LAUNCHES", "10"))


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
    async with EmulatorSession(SIM, runtime_dir=parent, qmp_timeout=PATIENCE) as s:
        assert s.pid is not None
        await s.execute("query-status")
        fds0, sim_fds0, sim_rss0 = open_fds(), len(os.listdir(f"/proc/{s.pid}/fd")), rss_kib(s.pid)
        replies = await asyncio.gather(*[s.execute("query-status") for _ in range(1000)])
        assert len(replies) == 1000 and all(isinstance(r, dict) and "status" in r for r in replies)
        replies = await asyncio.gather(*[s.execute("query-kvm") for _ in range(1000)])
        assert all(isinstance(r, dict) for r in replies)
        assert open_fds() <= fds0
        # The simulator's own descriptors and memory (a per-command leak in the server shows here).
        assert len(os.listdir(f"/proc/{s.pid}/fd")) <= sim_fds0
        assert rss_kib(s.pid) - sim_rss0 < 16 * 1024
        pid = s.pid
    assert s.returncode == 0 and pid is not None and not pid_exists(pid)
    assert os.listdir(parent) == []


async def test_sequential_launches(tmp_path: Path) -> None:
    parent = _parent(tmp_path)

    async def launch() -> int:
        async with EmulatorSession(SIM, runtime_dir=parent, qmp_timeout=PATIENCE) as s:
            await s.execute("query-status")
            pid = s.pid
        assert s.returncode == 0 and pid is not None
        return pid

    await launch()  # warm-up
    with LeakCounter() as leaks:
        pids = [await launch() for _ in range(LAUNCHES)]
    assert not [p for p in pids if pid_exists(p)]
    leaks.check(LAUNCHES)
    assert os.listdir(parent) == []


# --------------------------------------------------------------------------- several clients, hostile clients
# The simulator's own resources (its /proc/PID/fd and RSS) are measured here: a leak per connection in the
# server shows up there, not in the test process.

class _Sim:
    """A simulator process with a QMP socket, driven by plain blocking sockets."""

    def __init__(self, tmp: Path) -> None:
        self.sock = str(tmp / "qmp.sock")
        self.errfile = tmp / "sim.stderr"
        with open(self.errfile, "wb") as err:
            self.proc = subprocess.Popen([*SIM, "-display", "none", "-qmp", f"unix:{self.sock},server=on,wait=off"],
                                         stdout=subprocess.DEVNULL, stderr=err)
        # Ready means "a client gets the greeting", not "the path exists": the path exists from bind(), a
        # moment before listen(), and a connect in between is refused (what failed at load 5).
        assert wait_until(self._greets), (self.proc.poll(), self.errfile.read_text(errors="replace"))

    def _greets(self) -> bool:
        assert self.proc.poll() is None, self.errfile.read_text(errors="replace")
        try:
            self.client(negotiate=False).close()
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        return True

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss(self) -> int:
        return rss_kib(self.proc.pid)

    def client(self, negotiate: bool = True) -> _Client:
        return _Client(self.sock, negotiate)

    def stop(self) -> int:
        try:
            c = self.client()
            c.send(b'{"execute": "quit"}\n')
            c.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout=PATIENCE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


class _Client:
    def __init__(self, path: str, negotiate: bool = True) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(PATIENCE)
        try:
            self.s.connect(path)
        except OSError:
            self.s.close()
            raise
        self.f = self.s.makefile("rb")
        assert b'"QMP"' in self.f.readline()
        if negotiate:
            self.send(b'{"execute": "qmp_capabilities"}\n')
            assert self.reply() == {"return": {}}

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def reply(self) -> Any:
        while True:
            msg = json.loads(self.f.readline())
            if "event" not in msg:
                return msg

    def close(self) -> None:
        """Say goodbye (EOF) and wait for the server's EOF: then the server has closed its end, so a test
        that counts the server's descriptors right after needs no pause to let it "settle"."""
        try:
            self.s.shutdown(socket.SHUT_WR)
            while self.f.read(1 << 16):
                pass
        except OSError:
            pass  # the server already dropped us (a quit, a hostile line): its end is closed too
        self.f.close()
        self.s.close()


@pytest.fixture()
def simproc(tmp_path: Path) -> Iterator[_Sim]:
    s = _Sim(tmp_path)
    try:
        yield s
    finally:
        assert s.stop() == 0
        assert not os.path.exists(s.sock)


def _round(sim: _Sim, clients: int, per_client: int) -> None:
    """``clients`` connections at once, each pipelining ``per_client`` commands, then reading every reply."""
    conns = [sim.client() for _ in range(clients)]
    cmds = [b'{"execute": "query-status", "id": %d}\n', b'{"execute": "query-kvm", "id": %d}\n']

    def work(c: _Client) -> int:
        c.send(b"".join(cmds[i % 2] % i for i in range(per_client)))
        got = [c.reply() for _ in range(per_client)]
        assert [r["id"] for r in got] == list(range(per_client))
        assert all("return" in r for r in got)
        return len(got)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        assert sum(pool.map(work, conns)) == clients * per_client
    for c in conns:
        c.close()


def test_1000_concurrent_commands_from_several_clients_leak_nothing(simproc: _Sim) -> None:
    _round(simproc, 5, 200)                  # warm-up: first-use imports and caches
    fds0, rss0 = simproc.fds(), simproc.rss()
    for _ in range(10):                      # 10 rounds of 1,000 commands from 5 clients at once
        _round(simproc, 5, 200)
    assert simproc.fds() <= fds0, (fds0, simproc.fds())  # every client saw the server close its end
    assert simproc.rss() - rss0 < 16 * 1024, (rss0, simproc.rss())   # KiB; 10,000 commands, 50 connections


_HOSTILE_FIXED = [
    b"\xff\xfe\x00garbage\n",
    b'{"execute": "qmp_capabilities"}\n{"execute": "query-status"',          # a partial line, then gone
    b'{"execute": "qmp_capabilities"}\n' + b'{"execute": "query-status", "arguments": {"x": "' + b"a" * (3 << 20),
    b"[" * 5000,
    b'{"execute": "qmp_capabilities"}\n' + b'{"execute": "x-evmcs-nope", "id": ' + b"9" * 100_000 + b"}\n",
    b"}" * 10_000 + b"\n",
    b'{"execute": "qmp_capabilities"}\n' + b'{"execute": "quit", "arguments": {"force": [1]}}\n',
    b'{"exec-oob": "migrate-incoming", "arguments": {"uri": "unix:/nonexistent/x"}}\n',
]


def _hostile(sim: _Sim, payload: bytes, good: _Client) -> None:
    """Send ``payload`` on a fresh connection, drop it, and check the server still serves ``good``."""
    raw = socket.socket(socket.AF_UNIX)
    raw.settimeout(10)
    raw.connect(sim.sock)
    try:
        raw.sendall(payload)
        raw.shutdown(socket.SHUT_WR)
        # Read what the server says until it closes its end (our EOF made it do so): then its descriptor is
        # gone too. A server that keeps a half-closed client open fails here after PATIENCE, as it should.
        total = 0
        raw.settimeout(PATIENCE)
        while total < (8 << 20):
            try:
                b = raw.recv(1 << 16)
            except ConnectionResetError:
                break
            if not b:
                break
            total += len(b)
        assert total < (8 << 20), "the server kept talking to a client that had said goodbye"
    except (BrokenPipeError, ConnectionResetError):
        pass                                  # the server may drop a hostile client: fine
    finally:
        raw.close()
    assert sim.proc.poll() is None, "the simulator died"
    good.send(b'{"execute": "query-status"}\n')
    assert good.reply()["return"]["status"] == "running"


def test_hostile_clients_cannot_stop_the_simulator(simproc: _Sim) -> None:
    good = simproc.client()
    _hostile(simproc, b"warm-up\n", good)
    fds0, rss0 = simproc.fds(), simproc.rss()
    for payload in _HOSTILE_FIXED * 3:
        _hostile(simproc, payload, good)
    # An endless line (no newline, 24 MiB) and many half-open connections at once.
    _hostile(simproc, b'{"execute": "' + b"x" * (24 << 20), good)
    idle = [socket.socket(socket.AF_UNIX) for _ in range(50)]
    for s in idle:
        s.connect(simproc.sock)
        s.sendall(b'{"execute": "qmp_capab')
    good.send(b'{"execute": "query-status"}\n')
    assert good.reply()["return"]["status"] == "running"
    for s in idle:
        s.close()
    # The server learns of 50 abrupt closes on its own schedule: wait for the count to come back.
    assert wait_until(lambda: simproc.fds() <= fds0 + 1), (fds0, simproc.fds())
    assert simproc.rss() - rss0 < 64 * 1024, (rss0, simproc.rss())     # KiB: megabyte lines are not kept
    good.close()


@settings(max_examples=int(os.environ.get("QEMU_EVMCS_FUZZ_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(
    st.binary(max_size=2000),
    st.lists(st.one_of(
        st.sampled_from([b'{"execute": "qmp_capabilities"}', b'{"execute": "query-status"}', b'{"execute": ',
                         b'{"execute": "x-evmcs-guest-msrs"}', b'{"execute": "qom-get", "arguments": {}}',
                         b'{"execute": "migrate", "arguments": {"uri": 5}}', b'{"id": [[[[', b"\n", b"\r\n",
                         b'"\\u0000"', b"null", b"[]", b"{}", b"\xc3\x28"]),
        st.binary(max_size=40)), max_size=12).map(b"".join)))
def test_fuzzed_client_bytes_never_hurt_the_server(simproc: _Sim, payload: bytes) -> None:
    good = simproc.client()
    try:
        _hostile(simproc, payload, good)
    finally:
        good.close()
