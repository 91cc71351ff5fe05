"""Issue 14 classes 10-12: the simulated QEMU under malformed migrations and clients that never read.

- A malformed migration stream (``'[' * 100000``: RecursionError; wrong types) must end the destination
  as QEMU does (``load of migration failed``, exit 1), never leave it ``inmigrate`` with its socket gone;
  a destination answering nonsense must end the source's migration ``failed`` with a reason, and a new
  ``migrate`` must then work (it was refused for good: "a migration process in progress").
- 400 clients pipelining commands and never reading took the simulator from 94 to 1,931 MiB (only each
  client's backlog was bounded) and 415 MiB stayed. The total is bounded now and memory is given back.
- ``"id": NaN`` was echoed as invalid JSON; a 5,000-digit migrate port was an internal error.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proc_helpers import PATIENCE, async_wait_until, rss_kib, unix_listening, wait_until
from test_simqemu_migration import simulator

SIM = [sys.executable, "-m", "qemu_evmcs.simqemu", "--host", "skylake-6.3", "-accel", "kvm", "-cpu", "host"]


def _strict(line: bytes) -> Any:
    """Parse as strict JSON: NaN/Infinity refused (what any other QMP client does)."""
    def no(name: str) -> object:
        raise ValueError(f"{name} in the simulator's output")
    return json.loads(line, parse_constant=no)


@pytest.fixture
def short_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="qer", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("payload", [b"[" * 100000, b'{"eax": "zz"}', b"[1, 2]",
                                     b'{"version": 1, "cpu": {"model": "host"}, "hv-cpuid": {"a": "zz"}}',
                                     b'{"version": 1, "cpu": [1], "evmcs": NaN}'],
                         ids=["deep-nesting", "wrong-keys", "not-an-object", "bad-hv-values", "nan"])
async def test_malformed_incoming_stream_fails_the_destination_with_a_reason(payload: bytes, short_dir: str) -> None:
    mig = os.path.join(short_dir, "mig.sock")
    async with simulator("skylake-6.3", ["-accel", "kvm", "-cpu", "host", "-incoming", "defer"]) as dst:
        await dst.qmp.execute("migrate-incoming", {"uri": f"unix:{mig}"})
        await async_wait_until(lambda: unix_listening(mig), "the migration socket")
        reader, writer = await asyncio.open_unix_connection(mig, limit=1 << 20)
        writer.write(payload + b"\n")
        await writer.drain()
        reply = _strict(await reader.readline())
        writer.close()
        assert reply["status"] == "failed" and reply["error"], reply
        status, err = await dst.stderr_and_status(timeout=PATIENCE)
    assert status == 1 and "load of migration failed" in err and "Traceback" not in err, err


async def test_bad_destination_answer_fails_the_source_and_a_new_attempt_works(short_dir: str) -> None:
    answers = [b'{"status": "completed", "guest-vmx-msrs": {"IA32_VMX_BASIC": "zz"}}\n',
               b'{"status": "completed", "guest-vmx-msrs": [1, 2]}\n',
               b'{"status": "completed", "guest-vmx-msrs": {}, "host": "fake"}\n']
    served: list[bytes] = []

    async def fake_destination(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(answers[len(served)])
        served.append(answers[len(served)])
        await writer.drain()
        writer.close()

    mig = os.path.join(short_dir, "fake.sock")
    server = await asyncio.start_unix_server(fake_destination, mig, limit=1 << 20)
    try:
        async with simulator("skylake-6.3", ["-accel", "kvm", "-cpu", "host"]) as src:
            for want in ("failed", "failed", "completed"):
                with src.qmp.listener("MIGRATION") as listener:
                    await src.qmp.execute("migrate", {"uri": f"unix:{mig}"})

                    async def finished(events: Any = listener) -> None:
                        async for ev in events:
                            data = ev["data"]
                            assert isinstance(data, dict)
                            if data["status"] in ("completed", "failed"):
                                return
                    # A hang guard, not a budget: before the fix the migration stayed "active" for good.
                    await asyncio.wait_for(finished(), PATIENCE)
                got = await src.qmp.execute("query-migrate")
                assert isinstance(got, dict) and got["status"] == want, got
                if want == "failed":
                    assert got["error-desc"].startswith("invalid answer from the destination"), got
    finally:
        server.close()
        await server.wait_closed()


class _Raw:
    """A negotiated QMP client on a plain socket."""

    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        try:
            self.s.settimeout(PATIENCE)
            self.s.connect(path)
            self.f = self.s.makefile("rb")
            self.f.readline()
            self.s.sendall(b'{"execute": "qmp_capabilities"}\n')
            self.f.readline()
        except BaseException:   # (the fixture retries while the simulator starts: each failed try is closed)
            if hasattr(self, "f"):
                self.f.close()
            self.s.close()
            raise

    def close(self) -> None:
        self.f.close()
        self.s.close()


@pytest.fixture
def sim(short_dir: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    sock = os.path.join(short_dir, "qmp.sock")
    errf = open(os.path.join(short_dir, "err"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*SIM, "-display", "none", "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdout=subprocess.DEVNULL, stderr=errf)
    try:
        assert wait_until(lambda: os.path.exists(sock))
        ok = False
        for _ in range(500):
            try:
                _Raw(sock).close()
                ok = True
                break
            except OSError:
                wait_until(lambda: False, 0.02)
        assert ok
        yield proc, sock
    finally:
        proc.kill()
        proc.wait()
        errf.close()


def test_nan_ids_and_a_huge_port_get_valid_error_replies(sim: tuple[subprocess.Popen[bytes], str],
                                                         short_dir: str) -> None:
    proc, sock = sim
    c = _Raw(sock)
    try:
        for raw in (b'{"execute": "query-status", "id": NaN}\n', b'{"execute": "query-status", "id": Infinity}\n',
                    b'{"execute": "query-status", "id": [-Infinity]}\n',
                    # Valid JSON syntax whose value Python reads as infinity (found by the verifier: the echo
                    # raised in json.dumps, a traceback on stderr and no reply).
                    b'{"execute": "query-status", "id": 1e999}\n', b'{"execute": "query-status", "id": [-1E+400]}\n'):
            c.s.sendall(raw)
            reply = _strict(c.f.readline())
            assert "error" in reply and "not a valid JSON value" in reply["error"]["desc"], reply
        c.s.sendall(b'{"execute": "migrate", "arguments": {"uri": "tcp:127.0.0.1:' + b"9" * 5000 + b'"}, "id": 1}\n')
        reply = _strict(c.f.readline())
        assert reply["error"]["desc"].startswith("Invalid migration URI"), reply
        c.s.sendall(b'{"execute": "query-status", "id": 2}\n')
        assert _strict(c.f.readline())["id"] == 2
    finally:
        c.close()
    assert "Traceback" not in Path(short_dir, "err").read_text(errors="replace")


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def test_clients_that_never_read_are_bounded_in_total_and_memory_is_given_back(
        sim: tuple[subprocess.Popen[bytes], str]) -> None:
    """150 clients each pipeline 300 ``qom-list`` (about 8 KB of reply each: 2.4 MB per client, 360 MB in
    all, under the old 4 MiB per-client limit) and never read. Every one of them must be disconnected by the
    shared limit (64 MiB in all); we wait for that event (the server's descriptor count returns to its
    baseline), not for a time. Bounds, generous for a loaded machine: peak RSS (VmHWM) within 160 MiB of
    the start, RSS after they leave within 48 MiB of the start (the issue measured +1,837 and +321 MiB)."""
    proc, sock = sim
    base_fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
    base_rss = rss_kib(proc.pid)
    cmd = b'{"execute": "qom-list", "arguments": {"path": "/machine/unattached/device[0]"}}\n'
    clients = [_Raw(sock) for _ in range(150)]  # all connected (negotiated) first: each one's share is known
    for c in clients:
        c.s.sendall(cmd * 300)
    try:
        assert wait_until(lambda: len(os.listdir(f"/proc/{proc.pid}/fd")) <= base_fds, PATIENCE), \
            "the simulator kept clients that never read"
        peak = _status(proc.pid, "VmHWM")
    finally:
        for c in clients:
            c.close()
    good = _Raw(sock)
    good.s.sendall(b'{"execute": "query-status", "id": 1}\n')
    assert _strict(good.f.readline())["id"] == 1
    good.close()
    assert wait_until(lambda: rss_kib(proc.pid) - base_rss < 48 * 1024), (base_rss, rss_kib(proc.pid))
    assert peak - base_rss < 160 * 1024, (base_rss, peak)
