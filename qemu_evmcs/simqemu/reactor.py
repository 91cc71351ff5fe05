"""The simulated QEMU's main loop: listening sockets, buffered streams, timers and signals on :mod:`selectors`.

Why not asyncio: ``import asyncio`` alone costs about 200 million instructions (it imports ``ssl``,
``logging``, ``inspect``, ``typing``, ``subprocess`` ...: six times a bare interpreter's whole start,
measured with valgrind), more than everything else the simulator does before its QMP greeting. Issue 15
asks the simulated QEMU to greet within twice (bare QEMU + ``python -c pass``). What the simulator needs
is what QEMU's own main loop does with its chardev sockets: accept, read what arrives, queue replies and
events and send them when the socket is writable, a few timeouts, and signals that end the loop. That is
this module; clients are unchanged (:class:`qemu.qmp.QMPClient`, or anything else speaking QMP).

Semantics kept from the asyncio streams it replaces (the simulator's tests exercise each): a write is sent
at once when nothing is queued, the rest is queued and counted (:meth:`Stream.write_buffer_size`); a stream
whose queue exceeds ``pause_above`` stops being read until the queue drops to a quarter of that or
``resume_after`` seconds pass (asyncio's high/low water marks and the server's drain timeout); a graceful
:meth:`Stream.close` sends what is queued first, :meth:`Stream.abort` drops it. A callback that raises is
reported on stderr in one line and the loop goes on (asyncio logged it the same way): one client's bug
never ends the VM.
"""

from __future__ import annotations

import errno
import heapq
import os
import selectors
import signal
import socket
import sys
from collections import deque
from time import monotonic
from qemu_evmcs.core.typecheck import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    Callback = Callable[[], None]
    ConnectResult = socket.socket | OSError
    LineResult = bytes | Exception

#: Bytes read from a socket at a time (asyncio's default).
READ_SIZE = 65536
#: Pending connections a listening socket queues (asyncio's ``start_server`` default).
BACKLOG = 100


def report(*lines: str) -> None:
    """Lines on stderr, never raising (stderr may be closed or a full pipe): every message the simulated
    QEMU prints after its start goes through here."""
    try:
        sys.stderr.write("".join(line + "\n" for line in lines))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Timer:
    """A pending :meth:`Reactor.call_later`; :meth:`cancel` makes it a no-op."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callback) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run it (idempotent; harmless after it ran)."""
        self.cancelled = True


class Reactor:
    """One thread's loop: ready callbacks, then the sockets :mod:`selectors` says are ready, then due timers."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._ready: deque[Callback] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = 0
        # A signal's C handler writes its number here (signal.set_wakeup_fd), which wakes select(); the
        # Python handler then queues the callback.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeup)
        self._old_wakeup: int | None = None
        self._old_handlers: dict[int, object] = {}

    # ------------------------------------------------------------------ scheduling
    def call_soon(self, callback: Callback) -> None:
        """Run ``callback`` at the next turn of the loop (after the current callback returns)."""
        self._ready.append(callback)

    def call_later(self, delay: float, callback: Callback) -> Timer:
        """Run ``callback`` after ``delay`` seconds (monotonic clock), unless the returned timer is cancelled."""
        timer = Timer(callback)
        self._seq += 1
        heapq.heappush(self._timers, (monotonic() + delay, self._seq, timer))
        return timer

    def watch(self, sock: socket.socket, read: bool, write: bool, handler: Callable[[int], None]) -> None:
        """Call ``handler(mask)`` when ``sock`` is readable and/or writable (neither: stop watching it)."""
        events = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        registered = sock.fileno() in self._sel.get_map()
        if not events:
            if registered:
                self._sel.unregister(sock)
        elif registered:
            self._sel.modify(sock, events, handler)
        else:
            self._sel.register(sock, events, handler)

    def forget(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` (before it is closed)."""
        if sock.fileno() >= 0 and sock.fileno() in self._sel.get_map():
            self._sel.unregister(sock)

    def add_signal_handler(self, signum: int, callback: Callable[[int], None]) -> None:
        """Run ``callback(signum)`` in the loop when the signal arrives (it wakes a waiting loop)."""
        if self._old_wakeup is None:
            self._old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno())

        def handler(num: int, frame: object) -> None:
            self.call_soon(lambda: callback(num))

        self._old_handlers.setdefault(signum, signal.signal(signum, handler))

    # ------------------------------------------------------------------ running
    def run(self, done: Callable[[], bool]) -> None:
        """Turn the loop until ``done()`` is true (checked after every callback batch)."""
        while not done():
            for _ in range(len(self._ready)):
                self._call(self._ready.popleft())
            if done():
                return
            timeout: float | None = None
            if self._ready:
                timeout = 0
            elif self._timers:
                timeout = max(0.0, self._timers[0][0] - monotonic())
            for key, mask in self._sel.select(timeout):
                self._call(key.data, mask)
            now = monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, timer = heapq.heappop(self._timers)
                if not timer.cancelled:
                    timer.cancelled = True
                    self._call(timer.callback)

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception as err:  # one broken callback (a client's) must not end the VM; Ctrl-C still does
            report(f"internal error in the simulated QEMU's main loop: {type(err).__name__}: {err}")

    def _drain_wakeup(self, mask: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        """Restore the signal handlers and wakeup descriptor, close the selector."""
        for signum, old in self._old_handlers.items():
            signal.signal(signum, old)  # type: ignore[arg-type]
        self._old_handlers.clear()
        if self._old_wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            self._old_wakeup = None
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()


class Stream:
    """One connected socket: what arrives goes to ``on_data`` (``b""`` once, at end of stream or on an error);
    writes are sent at once or queued and sent when the socket is writable.

    :param pause_above: stop reading while more than this many bytes are queued (``None``: never); reading
        resumes when the queue is down to a quarter of it, or after ``resume_after`` seconds regardless.
    """

    def __init__(self, reactor: Reactor, sock: socket.socket, *, pause_above: int | None = None,
                 resume_after: float = 30.0) -> None:
        sock.setblocking(False)
        self.reactor = reactor
        self.sock = sock
        self.closed = False
        self._on_data: Callable[[bytes], None] | None = None
        self._on_close: Callback | None = None
        self._out: deque[bytes | memoryview] = deque()
        self._size = 0
        self._reading = False
        self._eof = False
        self._closing = False
        self._pause_above = pause_above
        self._resume_after = resume_after
        self._paused: Timer | None = None
        self._deadline: Timer | None = None

    def when_closed(self, callback: Callback) -> None:
        """Call ``callback`` once, when the socket is closed, however that happens (replaces an earlier one)."""
        self._on_close = callback

    def start(self, on_data: Callable[[bytes], None]) -> None:
        """Start reading: ``on_data`` gets every chunk, then ``b""`` once."""
        self._on_data = on_data
        self._reading = True
        self._update()

    def stop_reading(self) -> None:
        """Read nothing more (what arrives stays in the kernel's buffer until the stream is closed)."""
        self._reading = False
        self._update()

    def write_buffer_size(self) -> int:
        """Bytes queued and not yet taken by the kernel (what asyncio's ``get_write_buffer_size`` counts)."""
        return self._size

    def write(self, data: bytes) -> None:
        """Send ``data`` (queued behind anything not sent yet); dropped once the stream is closing."""
        if self.closed or self._closing or not data:
            return
        if not self._out:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.abort()  # the peer is gone: the reader side sees the end of the stream
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]  # type: ignore[assignment]
        self._out.append(data)
        self._size += len(data)
        self._update()

    def close(self, deadline: float | None = None) -> None:
        """Close after the queue is sent; with ``deadline``, drop what is still queued after that many seconds."""
        if self.closed or self._closing:
            return
        self._closing = True
        self._reading = False
        if not self._out:
            self._close_now()
            return
        self._update()
        if deadline is not None:
            self._deadline = self.reactor.call_later(deadline, self.abort)

    def abort(self) -> None:
        """Close now; whatever is queued is dropped."""
        self._out.clear()
        self._size = 0
        self._close_now()

    # ------------------------------------------------------------------ internals
    def _update(self) -> None:
        if not self.closed:
            self.reactor.watch(self.sock, self._reading and not self._eof and self._paused is None,
                               bool(self._out), self._event)

    def _event(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush()
        if mask & selectors.EVENT_READ and self._reading and not self.closed:
            self._read()

    def _read(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._eof = True
            self._update()
        assert self._on_data is not None
        self._on_data(data)
        if (self._pause_above is not None and self._size > self._pause_above and self._paused is None
                and not self.closed):
            self._paused = self.reactor.call_later(self._resume_after, self._resume)
            self._update()

    def _resume(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
            self._update()

    def _flush(self) -> None:
        while self._out:
            chunk = self._out[0]
            try:
                sent = self.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.abort()
                return
            self._size -= sent
            if sent < len(chunk):
                self._out[0] = memoryview(chunk)[sent:]
                break
            self._out.popleft()
        if not self._out and self._closing:
            self._close_now()
            return
        if self._paused is not None and self._pause_above is not None and self._size <= self._pause_above // 4:
            self._resume()
        self._update()

    def _close_now(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._reading = False
        for timer in (self._paused, self._deadline):
            if timer is not None:
                timer.cancel()
        self.reactor.forget(self.sock)
        self.sock.close()
        if self._on_close is not None:
            callback, self._on_close = self._on_close, None
            callback()


def read_line(stream: Stream, limit: int, timeout: float, done: Callable[[LineResult], None]) -> None:
    """Read one ``\\n``-terminated line from ``stream`` (asyncio's ``readline`` with ``limit``): ``done`` gets
    the line, the partial line at end of stream, a :class:`ValueError` past ``limit`` bytes, or a
    :class:`TimeoutError` after ``timeout`` seconds. Reading stops after that."""
    buf = bytearray()
    finished = False

    def finish(result: LineResult) -> None:
        nonlocal finished
        if finished:
            return
        finished = True
        timer.cancel()
        stream.stop_reading()
        done(result)

    def on_data(data: bytes) -> None:
        if not data:
            finish(bytes(buf))
            return
        buf.extend(data)
        end = buf.find(b"\n")
        if end >= 0:
            finish(bytes(buf[:end + 1]) if end < limit else ValueError(
                "Separator is found, but chunk is longer than limit"))
        elif len(buf) > limit:
            finish(ValueError("Separator is not found, and chunk exceed the limit"))

    timer = stream.reactor.call_later(timeout, lambda: finish(TimeoutError(f"no answer within {timeout:g} s")))
    stream.start(on_data)


class Listener:
    """Listening sockets (one per address of a TCP host, or one UNIX socket); each accepted connection is
    handed to ``on_accept`` as a non-blocking socket."""

    def __init__(self, reactor: Reactor, socks: list[socket.socket], on_accept: Callable[[socket.socket], None]):
        self.reactor = reactor
        self.socks = socks
        self._on_accept = on_accept
        for sock in socks:
            sock.setblocking(False)
            reactor.watch(sock, True, False, self._acceptor(sock))

    @classmethod
    def unix(cls, reactor: Reactor, path: str, on_accept: Callable[[socket.socket], None]) -> Listener:
        """Listen on a new UNIX socket at ``path``.

        :raise OSError: it cannot be bound (in use, no directory, permissions).
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        return cls(reactor, [sock], on_accept)

    @classmethod
    def tcp(cls, reactor: Reactor, host: str, port: int, on_accept: Callable[[socket.socket], None]) -> Listener:
        """Listen on every address ``host`` resolves to (asyncio's ``start_server``: SO_REUSEADDR, IPv6
        sockets IPv6-only so both families can bind the same port).

        :raise OSError: an address cannot be bound or the host does not resolve.
        """
        socks: list[socket.socket] = []
        try:
            for family, kind, proto, _, addr in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                  flags=socket.AI_PASSIVE):
                sock = socket.socket(family, kind, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(BACKLOG)
        except OSError:
            for sock in socks:
                sock.close()
            raise
        return cls(reactor, socks, on_accept)

    def _acceptor(self, listening: socket.socket) -> Callable[[int], None]:
        return lambda mask: self._accept(listening)

    def _accept(self, listening: socket.socket) -> None:
        while listening in self.socks:  # on_accept may close the listener (an incoming migration takes one)
            try:
                conn, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE and the like: this one waits, the others are served
                report(f"accept failed: {err.strerror or err}")
                return
            self._on_accept(conn)

    def close(self) -> None:
        """Stop listening (idempotent)."""
        for sock in self.socks:
            self.reactor.forget(sock)
            sock.close()
        self.socks = []


def connect(reactor: Reactor, target: tuple[str, str, int], timeout: float,
            done: Callable[[ConnectResult], None]) -> None:
    """Connect to ``("unix", PATH, 0)`` or ``("tcp", HOST, PORT)`` without blocking the loop: ``done`` gets
    the connected socket or the :class:`OSError` of the last address tried (:class:`TimeoutError` after
    ``timeout`` seconds)."""
    kind, host, port = target
    addrs: list[tuple[int, object]]
    if kind == "unix":
        addrs = [(socket.AF_UNIX, host)]
    else:
        try:
            addrs = [(fam, addr) for fam, _, _, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
        except OSError as err:
            done(err)
            return

    def attempt(index: int, last: OSError) -> None:
        if index >= len(addrs):
            done(last)
            return
        family, addr = addrs[index]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(addr)  # type: ignore[arg-type]
        if code == 0:
            done(sock)
            return
        if code != errno.EINPROGRESS:
            sock.close()
            attempt(index + 1, OSError(code, os.strerror(code)))
            return

        def ready(mask: int = 0) -> None:
            timer.cancel()
            reactor.forget(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                done(sock)
            else:
                sock.close()
                attempt(index + 1, OSError(code, os.strerror(code)))

        def expired() -> None:
            reactor.forget(sock)
            sock.close()
            done(TimeoutError(f"no connection within {timeout:g} s"))

        timer = reactor.call_later(timeout, expired)
        reactor.watch(sock, False, True, ready)

    attempt(0, OSError(errno.ENOENT, "no address"))


__all__ = ["Listener", "Reactor", "Stream", "Timer", "connect", "read_line", "report"]
