"""The simulated QEMU's main loop (``simqemu/reactor.py``), which replaced asyncio in the simulator.

Each test waits on events (a callback ran, a socket closed, bytes arrived), never on a time budget; a guard
timer of ``PATIENCE`` seconds turns a hang into a failure. Expected bytes are built by the test itself
(patterned data, hand-written lines), not by the module.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from proc_helpers import PATIENCE

from qemu_evmcs.simqemu.reactor import Listener, Reactor, Stream, connect, read_line


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    r = Reactor()
    yield r
    r.close()


def _run(reactor: Reactor, done: Callable[[], bool]) -> None:
    """Run until ``done()``; fail (instead of hanging) after PATIENCE seconds."""
    expired: list[bool] = []
    guard = reactor.call_later(PATIENCE, lambda: expired.append(True))
    reactor.run(lambda: done() or bool(expired))
    guard.cancel()
    assert not expired, "the loop never reached the awaited event"


def _small_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair with kernel buffers as small as Linux allows, so writes queue in user space."""
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return a, b


def test_queued_writes_arrive_whole_and_in_order_before_a_graceful_close(reactor: Reactor) -> None:
    """5 MiB written in pieces of varying sizes (partial sends resume mid-piece) to a peer that reads only
    after all of it is queued: the peer gets exactly the bytes written, then the end of the stream."""
    ours, peer = _small_pair()
    closed: list[bool] = []
    stream = Stream(reactor, ours)
    stream.when_closed(lambda: closed.append(True))
    pieces = [bytes([i % 251]) * (1 + (i * 7919) % 70000) for i in range(150)]
    expected = b"".join(pieces)
    for piece in pieces:
        stream.write(piece)
    # The kernel took at most its small buffers; the rest is counted as queued.
    assert stream.write_buffer_size() > len(expected) - 1_000_000
    stream.close()
    assert not closed  # a graceful close waits for the queue
    got = bytearray()
    reader = threading.Thread(target=lambda: _read_all(peer, got))
    reader.start()
    _run(reactor, lambda: bool(closed))
    reader.join(PATIENCE)
    assert bytes(got) == expected
    assert stream.write_buffer_size() == 0
    peer.close()


def _read_all(sock: socket.socket, into: bytearray) -> None:
    while chunk := sock.recv(65536):
        into.extend(chunk)


def test_close_with_a_deadline_drops_output_a_peer_never_reads(reactor: Reactor) -> None:
    ours, peer = _small_pair()
    closed: list[bool] = []
    stream = Stream(reactor, ours)
    stream.when_closed(lambda: closed.append(True))
    stream.write(b"x" * 1_000_000)
    assert stream.write_buffer_size() > 0
    stream.close(deadline=0.01)
    _run(reactor, lambda: bool(closed))
    assert stream.closed and stream.write_buffer_size() == 0
    stream.write(b"more")  # dropped, no error: the stream is closed
    peer.close()


def _answering(reactor: Reactor, resume_after: float) -> tuple[Stream, socket.socket, list[bytes]]:
    """A stream pausing above 1,000 queued bytes that answers each chunk with 300,000 bytes (``b"r"``), its
    peer (small kernel buffers), and the chunks received so far."""
    ours, peer = _small_pair()
    chunks: list[bytes] = []
    stream = Stream(reactor, ours, pause_above=1000, resume_after=resume_after)

    def on_data(data: bytes) -> None:
        chunks.append(data)
        stream.write(b"r" * 300_000)

    stream.start(on_data)
    return stream, peer, chunks


def test_reading_pauses_while_the_queue_is_large_and_resumes_when_the_peer_catches_up(reactor: Reactor) -> None:
    """Each chunk received is answered with 300,000 bytes. With ``pause_above=1000`` the second chunk is not
    read while the first answer is queued; once the peer reads the answers (queue down to 250 bytes or
    less), the second chunk is delivered."""
    stream, peer, chunks = _answering(reactor, PATIENCE * 10)
    peer.sendall(b"1")
    _run(reactor, lambda: len(chunks) == 1)
    peer.sendall(b"2")
    tick: list[bool] = []
    reactor.call_later(0.2, lambda: tick.append(True))
    _run(reactor, lambda: bool(tick))
    assert chunks == [b"1"], "read while paused"
    got = bytearray()
    peer.settimeout(PATIENCE)

    def read_answers() -> None:
        while len(got) < 600_000:
            got.extend(peer.recv(65536))

    reader = threading.Thread(target=read_answers)
    reader.start()
    _run(reactor, lambda: len(chunks) == 2)
    assert chunks == [b"1", b"2"]
    _run(reactor, lambda: stream.write_buffer_size() == 0)
    reader.join(PATIENCE)
    assert bytes(got) == b"r" * 600_000
    stream.abort()
    peer.close()


def test_a_paused_stream_is_read_again_after_resume_after_seconds(reactor: Reactor) -> None:
    stream, peer, chunks = _answering(reactor, 0.05)
    peer.sendall(b"1")
    _run(reactor, lambda: len(chunks) == 1)
    peer.sendall(b"2")  # the peer never reads: only the timer resumes reading
    _run(reactor, lambda: len(chunks) == 2)
    stream.abort()
    peer.close()


@pytest.mark.parametrize(("sent", "expected"), [
    (b'{"a": 1}\nrest', b'{"a": 1}\n'),   # the line, separator included; the rest is not consumed
    (b"no newline", b"no newline"),        # end of stream: the partial line (asyncio's readline)
    (b"", b""),                            # end of stream at once
])
def test_read_line_returns_the_line_or_the_partial_line_at_end_of_stream(reactor: Reactor, sent: bytes,
                                                                         expected: bytes) -> None:
    ours, peer = socket.socketpair()
    got: list[bytes | Exception] = []
    read_line(Stream(reactor, ours), 100, PATIENCE * 10, got.append)
    peer.sendall(sent)
    peer.shutdown(socket.SHUT_WR)
    _run(reactor, lambda: bool(got))
    assert got == [expected]
    peer.close()
    ours.close()


@pytest.mark.parametrize(("sent", "message"), [
    (b"x" * 101, "Separator is not found, and chunk exceed the limit"),
    (b"x" * 100 + b"\n", "Separator is found, but chunk is longer than limit"),
])
def test_read_line_refuses_a_line_longer_than_the_limit(reactor: Reactor, sent: bytes, message: str) -> None:
    ours, peer = socket.socketpair()
    got: list[bytes | Exception] = []
    read_line(Stream(reactor, ours), 100, PATIENCE * 10, got.append)
    peer.sendall(sent)
    _run(reactor, lambda: bool(got))
    assert len(got) == 1 and isinstance(got[0], ValueError) and str(got[0]) == message
    peer.close()
    ours.close()


def test_read_line_times_out_when_nothing_comes(reactor: Reactor) -> None:
    ours, peer = socket.socketpair()
    got: list[bytes | Exception] = []
    read_line(Stream(reactor, ours), 100, 0.01, got.append)
    _run(reactor, lambda: bool(got))
    assert len(got) == 1 and isinstance(got[0], TimeoutError)
    peer.close()
    ours.close()


def test_connect_reports_a_refused_unix_socket_and_connects_to_a_listening_one(reactor: Reactor,
                                                                                tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "s")
    got: list[socket.socket | OSError] = []
    connect(reactor, ("unix", path, 0), PATIENCE, got.append)
    _run(reactor, lambda: bool(got))
    assert isinstance(got[0], OSError) and got[0].errno == errno.ENOENT
    accepted: list[socket.socket] = []
    listener = Listener.unix(reactor, path, accepted.append)
    connect(reactor, ("unix", path, 0), PATIENCE, got.append)
    _run(reactor, lambda: len(got) == 2 and bool(accepted))
    client = got[1]
    assert isinstance(client, socket.socket)
    client.sendall(b"ping")
    accepted[0].settimeout(PATIENCE)
    assert accepted[0].recv(4) == b"ping"
    for s in (client, accepted[0]):
        s.close()
    listener.close()


def test_tcp_listener_and_connect_on_loopback(reactor: Reactor) -> None:
    accepted: list[socket.socket] = []
    listener = Listener.tcp(reactor, "127.0.0.1", 0, accepted.append)
    port = listener.socks[0].getsockname()[1]
    got: list[socket.socket | OSError] = []
    connect(reactor, ("tcp", "127.0.0.1", port), PATIENCE, got.append)
    _run(reactor, lambda: bool(got) and bool(accepted))
    assert isinstance(got[0], socket.socket)
    got[0].close()
    accepted[0].close()
    listener.close()


def test_a_listener_closed_by_its_own_accept_callback_reports_nothing(reactor: Reactor, tmp_path: os.PathLike[str],
                                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """An incoming migration takes one connection and closes its listener from inside the accept callback;
    with a second connection pending the accept loop used to go on and report 'Bad file descriptor'."""
    path = os.path.join(tmp_path, "m")
    accepted: list[socket.socket] = []

    def take_one(sock: socket.socket) -> None:
        accepted.append(sock)
        listener.close()

    listener = Listener.unix(reactor, path, take_one)
    clients = [socket.socket(socket.AF_UNIX) for _ in range(2)]
    for c in clients:
        c.connect(path)
    _run(reactor, lambda: bool(accepted))
    tick: list[bool] = []
    reactor.call_soon(lambda: tick.append(True))
    _run(reactor, lambda: bool(tick))
    assert len(accepted) == 1
    assert capfd.readouterr().err == ""
    for s in (*clients, *accepted):
        s.close()


def test_a_signal_wakes_a_loop_that_waits_for_nothing_else(reactor: Reactor) -> None:
    """No timer, no socket: only the wakeup descriptor can end the select() (otherwise the guard fails it)."""
    got: list[int] = []
    reactor.add_signal_handler(signal.SIGUSR1, got.append)
    threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGUSR1)).start()
    expired: list[bool] = []
    guard = reactor.call_later(PATIENCE, lambda: expired.append(True))
    reactor.run(lambda: bool(got) or bool(expired))
    guard.cancel()
    assert got == [signal.SIGUSR1]


def test_closing_the_loop_restores_the_signal_handler() -> None:
    before = signal.getsignal(signal.SIGUSR2)
    r = Reactor()
    r.add_signal_handler(signal.SIGUSR2, lambda n: None)
    assert signal.getsignal(signal.SIGUSR2) is not before
    r.close()
    assert signal.getsignal(signal.SIGUSR2) is before
    assert signal.set_wakeup_fd(-1) == -1  # none was set before this test, none is left behind


def test_a_raising_callback_is_one_stderr_line_and_the_loop_goes_on(reactor: Reactor,
                                                                    capfd: pytest.CaptureFixture[str]) -> None:
    def broken() -> None:
        raise KeyError("boom")

    after: list[bool] = []
    reactor.call_soon(broken)
    reactor.call_soon(lambda: after.append(True))
    _run(reactor, lambda: bool(after))
    err = capfd.readouterr().err
    assert err == "internal error in the simulated QEMU's main loop: KeyError: 'boom'\n"


def test_keyboard_interrupt_in_a_callback_is_not_swallowed(reactor: Reactor) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    reactor.call_soon(interrupted)
    with pytest.raises(KeyboardInterrupt):
        reactor.run(lambda: False)


def test_cancelled_timers_do_not_run(reactor: Reactor) -> None:
    ran: list[str] = []
    reactor.call_later(0.01, lambda: ran.append("cancelled")).cancel()
    reactor.call_later(0.02, lambda: ran.append("kept"))
    _run(reactor, lambda: bool(ran))
    assert ran == ["kept"]


#: Runs the simulator's real entry point in a fresh interpreter; a thread connects, reads the greeting, negotiates
#: and quits; then the modules loaded are printed (what the simulator imported to serve QMP).
_SERVE_AND_LIST = """
import json, os, socket, sys, threading, time
from qemu_evmcs.simqemu.server import main
path = sys.argv[1]
def client():
    while True:
        try:
            s = socket.socket(socket.AF_UNIX); s.connect(path); break
        except OSError:
            s.close(); time.sleep(0.01)
    f = s.makefile("rb"); f.readline()
    s.sendall(b'{"execute": "qmp_capabilities"}{"execute": "quit"}')
    while f.readline():
        pass
threading.Thread(target=client, daemon=True).start()
rc = main(["--host", "skylake-6.3", "-accel", "kvm", "-cpu", "host,vmx=on,hv-evmcs=on,hv-vapic=on",
           "-display", "none", "-qmp", f"unix:{path},server=on,wait=off"])
sys.stderr.write(json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
"""


def test_the_simulator_serves_qmp_without_asyncio_logging_or_ctypes(tmp_path: os.PathLike[str]) -> None:
    """Why the reactor exists: ``import asyncio`` alone cost more than the rest of the simulator's start.
    ``logging`` (a warning line) and ``ctypes`` (``malloc_trim`` after big clients) are not needed either."""
    out = subprocess.run([sys.executable, "-c", _SERVE_AND_LIST, os.path.join(tmp_path, "q")], capture_output=True,
                         text=True, timeout=PATIENCE, check=True)
    info = json.loads(out.stderr.splitlines()[-1])
    assert info["rc"] == 0
    assert not {"asyncio", "logging", "ctypes", "ssl", "concurrent", "typing", "inspect"} & set(info["modules"])


def _sim(qmp: str) -> list[str]:
    return [sys.executable, "-m", "qemu_evmcs.simqemu", "--host", "skylake-6.3", "-accel", "kvm", "-cpu", "host",
            "-display", "none", "-qmp", qmp]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_qmp_over_tcp_and_a_port_in_use(host: str) -> None:
    """``-qmp tcp:HOST:PORT,server=on``: every address of the host is bound (``localhost``: 127.0.0.1 and, where
    configured, ::1); a second simulator on the same port fails as QEMU does: one line, exit 1."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    spec = f"tcp:{host}:{port},server=on,wait=off"
    proc = subprocess.Popen(_sim(spec), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = None
        for _ in range(int(PATIENCE / 0.02)):
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
                break
            except OSError:
                threading.Event().wait(0.02)
        assert client is not None, "the simulator never listened"
        lines = client.makefile("rb")
        assert json.loads(lines.readline())["QMP"]["version"]["package"] == "qemu-evmcs-sim"
        client.sendall(b'{"execute": "qmp_capabilities"}{"execute": "query-status", "id": 7}')
        assert json.loads(lines.readline()) == {"return": {}}
        assert json.loads(lines.readline()) == {"return": {"running": True, "singlestep": False, "status": "running"},
                                                "id": 7}
        second = subprocess.run(_sim(spec), capture_output=True, text=True, timeout=PATIENCE)
        assert (second.returncode, second.stderr) == (
            1, f"qemu-system-x86_64: -qmp tcp:{host}:{port},server=on: Failed to bind socket: Address already in use\n")
        client.sendall(b'{"execute": "quit"}')
        assert json.loads(lines.readline()) == {"return": {}}
        assert json.loads(lines.readline())["event"] == "SHUTDOWN"
        assert lines.readline() == b""  # the simulator closed the connection
        client.close()
        assert proc.wait(PATIENCE) == 0
    finally:
        proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
