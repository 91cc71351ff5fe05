"""Start an emulator with a private QMP socket and talk to it with :class:`qemu.qmp.QMPClient`.

Why this module exists: every caller (the ``qemu-evmcs-launch`` wrapper, the
tests, the benchmark) needs the same life cycle, and each step has a failure
mode that is easy to get wrong:

- the QMP socket lives in a **private** directory (mode 0700) so that no other
  local user can connect to the monitor and drive the VM;
- the greeting is awaited with a **bounded** retry loop, and if the emulator
  dies first the caller gets a :class:`~qemu_evmcs.core.errors.LaunchError` naming
  QEMU's own last stderr line (``unable to find CPU model 'x'``) instead of a
  bare timeout;
- a command issued while the emulator dies (``kill -9``) must fail promptly
  rather than hang on a socket nobody will answer;
- the child is **always** reaped and the socket and directory removed: on
  success, on any exception and on cancellation (``asyncio.CancelledError``
  propagates unwrapped, like ``qemu.qmp`` itself does).

The QMP protocol itself is never hand-rolled: :class:`qemu.qmp.QMPClient` does
the greeting, negotiation, command ids and events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Mapping, Sequence
from enum import Enum
from types import TracebackType
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError

from qemu_evmcs.core import lazy
from qemu_evmcs.core.errors import InputError, LaunchError
# The emulator process itself (its directory, its start, its status) is process.py's, which imports no asyncio.
from qemu_evmcs.launch.process import Spawned, describe_status, spawn_emulator

if TYPE_CHECKING:
    import shutil
    import subprocess
    from typing import IO, Any, Self
else:   # rmtree at the end only: not on the way from the emulator's start to its verification (core/lazy.py)
    shutil = lazy.proxy("shutil")

logger = logging.getLogger(__name__)
# qemu.qmp logs connection retries (a session polls the socket while the emulator starts); with no handler
# anywhere, Python's last-resort handler would print them on the wrapper's stderr. A handler that drops them
# stops only that: an application that configured logging still gets them through the root logger.
logging.getLogger("qemu.qmp").addHandler(logging.NullHandler())

class Runstate(Enum):
    """Where an :class:`EmulatorSession` is in its life cycle (qemu.qmp's ``Runstate`` discipline).

    Transitions, each made by one method and checked by :meth:`EmulatorSession._require`::

        IDLE --spawn--> SPAWNED --connect--> CONNECTED --disconnect--> DETACHED
          any state --close--> CLOSING --> CLOSED
    """

    #: Nothing started: no process, no directory.
    IDLE = "idle"
    #: The emulator runs (or has just exited); the runtime directory exists; no QMP session.
    SPAWNED = "spawned"
    #: A negotiated QMP session: commands may be sent.
    CONNECTED = "connected"
    #: The QMP session was dropped on purpose; the emulator runs on (the wrapper waits for it).
    DETACHED = "detached"
    #: :meth:`EmulatorSession.close` is stopping and reaping the emulator.
    CLOSING = "closing"
    #: Reaped, socket and directory removed; the session cannot be used again.
    CLOSED = "closed"


class StateError(LaunchError):
    """A session method was called in a state that does not allow it.

    :param action: what was attempted; :param state: the state it was in; :param required: the states
        that would have allowed it.
    """

    def __init__(self, action: str, state: Runstate, required: Sequence[Runstate]) -> None:
        need = " or ".join(r.value for r in required)
        super().__init__(f"{action}: the emulator session is {state.value}, not {need}", layer="qemu")
        self.state = state
        self.required = tuple(required)


async def cancel_and_reap(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has finished, without swallowing *our own* cancellation.

    ``asyncio.wait`` never raises the task's outcome, so nothing has to be suppressed around the ``await``
    (a ``suppress(BaseException)`` there also swallowed the caller's ``CancelledError``); the task's own
    exception is then retrieved so asyncio does not log "exception was never retrieved".
    """
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()


#: How much of the emulator's stderr a session keeps: the first bytes (start-up warnings) and the last ones.
STDERR_HEAD = 1024 * 1024
STDERR_TAIL = 64 * 1024


#: Socket polling while waiting for the emulator: every FAST_POLL_INTERVAL seconds during the first
#: FAST_POLL_SECONDS after spawn, then backing off to 50 ms.
FAST_POLL_INTERVAL = 0.002
FAST_POLL_SECONDS = 1.0

#: Longest excerpt of a peer-supplied text (error description, raw bytes) put in one error line.
MAX_DETAIL = 300


def brief(obj: object, limit: int = MAX_DETAIL) -> str:
    """``str(obj)`` on one line, cut to ``limit`` characters: a hostile emulator controls these bytes."""
    text = " ".join(str(obj).split())
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


class EmulatorSession:
    """One emulator process plus one QMP connection, as an async context manager.

    Usage::

        async with EmulatorSession(["qemu-system-x86_64", "-accel", "tcg", "-S"]) as s:
            cpus = await s.execute("query-cpus-fast")

    The session appends ``-qmp unix:<dir>/qmp.sock,server=on,wait=off`` to the
    argv (other monitors the caller gave are left alone), starts the process
    without a shell, and connects once the socket appears.

    :param argv: the emulator command line, program first; never passed to a shell.
    :param qmp_timeout: seconds allowed from spawn to a negotiated QMP session,
        and for each command.
    :param runtime_dir: parent of the private directory; default
        ``$XDG_RUNTIME_DIR`` or ``/tmp``. A user-given one is checked by
        :func:`~qemu_evmcs.launch.process.check_runtime_parent`.
    :param stderr_echo: a binary stream to copy the emulator's stderr to as it
        arrives (the wrapper passes ``sys.stderr.buffer``); ``None`` keeps it only in memory.
    :param quit_timeout: seconds to wait for the process after ``quit``.
    :param term_timeout: seconds to wait after SIGTERM before SIGKILL.
    :param name: the QMPClient name used in its log messages.
    :param program: how error messages name the emulator; default the basename of ``argv[0]``. The wrapper
        passes ``qemu-evmcs-sim`` for the simulator, which runs as ``python3 -m qemu_evmcs.simqemu``.
    :param pass_fds: descriptors the emulator inherits under the same numbers (libvirt's ``-chardev
        socket,fd=N``); every other descriptor of ours is closed in the child, as ``close_fds=True`` does.
    :param spawned: an emulator already started by :func:`~qemu_evmcs.launch.process.spawn_emulator` with
        this ``argv`` (the wrapper starts it before it imports asyncio): :meth:`spawn` takes it over instead of
        starting one, and the session owns it from then on (``runtime_dir`` and ``pass_fds`` were the start's).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        qmp_timeout: float = 10.0,
        runtime_dir: str | None = None,
        stderr_echo: IO[bytes] | None = None,
        quit_timeout: float = 5.0,
        term_timeout: float = 3.0,
        name: str = "qemu-evmcs",
        program: str | None = None,
        pass_fds: Sequence[int] = (),
        spawned: Spawned | None = None,
    ) -> None:
        if not argv:
            raise InputError("empty emulator command line")
        if qmp_timeout <= 0:
            raise InputError(f"QMP timeout must be positive, not {qmp_timeout}")
        self.argv: list[str] = list(argv)
        self.qmp_timeout = qmp_timeout
        self.quit_timeout = quit_timeout
        self.term_timeout = term_timeout
        self.name = name
        #: The emulator's name in error messages.
        self.program = program or os.path.basename(self.argv[0])
        self.pass_fds = tuple(pass_fds)
        self._runtime_parent = runtime_dir
        self._t0 = 0.0
        self._stderr_echo = stderr_echo
        self._stderr = bytearray()
        self._stderr_tail = bytearray()
        self._stderr_omitted = 0
        self._spawned = spawned
        if spawned is not None:
            spawned.taken = True
        self._proc: subprocess.Popen[bytes] | None = None
        self._wait_task: asyncio.Task[int] | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._stderr_fd: int | None = None
        self._stderr_transport: asyncio.ReadTransport | None = None
        self._close_task: asyncio.Task[None] | None = None
        self.client: QMPClient | None = None
        #: The private directory holding the socket (None before start / after close).
        self.runtime_dir: str | None = None
        #: Full path of the QMP socket.
        self.socket_path: str | None = None
        #: Seconds from spawn to a negotiated QMP session.
        self.ready_seconds: float | None = None
        #: Where the session is (see :class:`Runstate`); changed only by :meth:`_set_state`.
        self.runstate = Runstate.IDLE

    def _require(self, action: str, *states: Runstate) -> None:
        """Raise :class:`StateError` unless the session is in one of ``states``."""
        if self.runstate not in states:
            raise StateError(action, self.runstate, states)

    def _set_state(self, new: Runstate) -> None:
        logger.debug("%s: runstate %s -> %s", self.name, self.runstate.value, new.value)
        self.runstate = new

    # ------------------------------------------------------------------ state

    @property
    def pid(self) -> int | None:
        """The emulator's process id once spawned."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The return code once the emulator is reaped (negative = killed by that signal), as ``Popen``'s."""
        return self._proc.returncode if self._proc is not None else None

    @property
    def stderr_text(self) -> str:
        """The emulator's stderr so far, decoded leniently: all of it up to :data:`STDERR_HEAD` bytes, beyond
        that the head and the last :data:`STDERR_TAIL` bytes with a marker line for the part not kept."""
        head = self._stderr.decode("utf-8", "replace")
        if not self._stderr_tail:
            return head
        tail = self._stderr_tail.decode("utf-8", "replace")
        if self._stderr_omitted:
            tail = tail.partition("\n")[2]  # the first tail line is cut: drop it
            return f"{head}\n[... {self._stderr_omitted} bytes of emulator stderr not kept ...]\n{tail}"
        return head + tail

    @property
    def stderr_lines(self) -> list[str]:
        """stderr split in lines, without empty ones."""
        return [line for line in self.stderr_text.splitlines() if line.strip()]

    def last_stderr_line(self) -> str:
        """The last non-empty stderr line: QEMU puts its fatal error there."""
        lines = self.stderr_lines
        return lines[-1].strip() if lines else ""

    @property
    def exited(self) -> bool:
        """Whether the emulator has been reaped."""
        return self._wait_task is not None and self._wait_task.done()

    # ------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def spawn(self) -> None:
        """Start the emulator (or take over the one given as ``spawned``); not yet connected.

        :raise InputError: bad runtime directory.
        :raise LaunchError: the program cannot be executed.
        """
        self._require("spawn", Runstate.IDLE)
        started = self._spawned
        if started is None:
            started = spawn_emulator(self.argv, runtime_parent=self._runtime_parent, pass_fds=self.pass_fds)
        self._spawned = None
        self._proc = started.popen
        self.runtime_dir = started.runtime_dir
        self.socket_path = started.socket_path
        self._t0 = started.t0
        rfd = started.stderr_fd
        # The reaper first: from here on close() stops and reaps the process whatever fails next.
        self._wait_task = asyncio.create_task(self._reap(started.popen), name="emulator-wait")
        self._set_state(Runstate.SPAWNED)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        pipe = os.fdopen(rfd, "rb", buffering=0)
        try:
            transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
                                                        pipe)
        except BaseException:
            # The file object, not the number: a transport made before the failure closes the same object
            # later (closing it twice is harmless; closing the number under it made that an EBADF).
            pipe.close()
            raise
        self._stderr_fd = rfd
        self._stderr_transport = transport
        self._stderr_task = asyncio.create_task(self._pump_stderr(reader), name="emulator-stderr")

    @staticmethod
    async def _reap(popen: subprocess.Popen[bytes]) -> int:
        """Wait for the emulator's exit and reap it; its return code.

        A pidfd (Linux 5.3+) becomes readable when the process exits: the loop watches it like a socket, no
        thread and no SIGCHLD handler (asyncio's child watchers need one or the other, and only for children
        they started themselves). Without pidfds, ``Popen.wait`` runs in a thread.
        """
        try:
            pidfd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            return await asyncio.to_thread(popen.wait)
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(pidfd, readable.set)
        try:
            while popen.poll() is None:
                await readable.wait()
                readable.clear()
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        assert popen.returncode is not None
        return popen.returncode

    async def _pump_stderr(self, stream: asyncio.StreamReader) -> None:
        """Keep the whole stderr (for parsing) and echo it live (so the user sees QEMU's words verbatim)."""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return
            self._keep_stderr(chunk)
            if self._stderr_echo is not None:
                try:
                    self._stderr_echo.write(chunk)
                    self._stderr_echo.flush()
                except (OSError, ValueError):
                    self._stderr_echo = None  # our stderr went away; keep capturing

    def _keep_stderr(self, chunk: bytes) -> None:
        """Keep the first :data:`STDERR_HEAD` bytes (start-up warnings) and the last :data:`STDERR_TAIL`
        (the fatal error), so that a chatty emulator running for months cannot grow our memory."""
        room = STDERR_HEAD - len(self._stderr)
        if room > 0:
            self._stderr += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self._stderr_tail += chunk
            extra = len(self._stderr_tail) - STDERR_TAIL
            if extra > 0:
                del self._stderr_tail[:extra]
                self._stderr_omitted += extra

    async def settle_stderr(self, timeout: float = 1.0) -> None:
        """Wait (bounded) until everything the emulator has written to stderr so far has been read.

        QEMU prints its feature warnings while realizing the CPU, before its main loop serves QMP, so once
        the greeting has arrived those lines sit in the pipe or in our reader: poll the pipe's read end
        (without consuming it) until it is empty, then let the pump empty the reader's buffer.
        """
        if self._stderr_task is None or self._stderr_fd is None:
            return
        deadline = time.monotonic() + timeout
        while not self._stderr_task.done() and time.monotonic() < deadline:
            if self._stderr_transport is None or self._stderr_transport.is_closing():
                break  # EOF: the read end is closed (and its number may already be reused)
            try:
                readable, _, _ = select.select([self._stderr_fd], [], [], 0)
            except (OSError, ValueError):
                break  # the pipe was closed at EOF: everything has been read
            if not readable:
                break
            await asyncio.sleep(0.001)
        # The reader may still buffer up to two 64 KiB chunks; the pump takes one per loop turn.
        for _ in range(4):
            await asyncio.sleep(0)

    async def _drain_stderr(self, timeout: float = 1.0) -> None:
        """Wait (bounded) until the stderr pipe hits EOF so error messages are complete."""
        if self._stderr_task is not None and not self._stderr_task.done():
            # asyncio.wait, not wait_for: 3.11's wait_for can swallow a cancellation.
            await asyncio.wait({self._stderr_task}, timeout=timeout)

    async def _exit_error(self, when: str) -> LaunchError:
        """A LaunchError for an emulator that died ``when``, ending with QEMU's own last stderr line."""
        await self._drain_stderr()
        assert self._proc is not None and self._proc.returncode is not None
        msg = f"{self.program} {describe_status(self._proc.returncode)} {when}"
        last = self.last_stderr_line()
        if last:
            msg += f": {brief(last)}"
        return LaunchError(msg, layer="qemu")

    async def connect(self) -> None:
        """Connect to the QMP socket, retrying until the greeting arrives, bounded by ``qmp_timeout``.

        :raise LaunchError: the emulator exited first (with its last stderr
            line), or no greeting within the timeout.
        """
        self._require("connect", Runstate.SPAWNED)
        assert self._wait_task is not None and self.socket_path is not None
        deadline = self._t0 + self.qmp_timeout
        delay = FAST_POLL_INTERVAL
        last_err: BaseException | None = None
        socket_seen = False
        while True:
            if self._wait_task.done():
                raise await self._exit_error("before QMP was ready")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if last_err is not None:
                    detail = f" (last connect error: {brief(last_err)})"
                elif socket_seen:
                    detail = " (connected, but the greeting or negotiation never completed)"
                else:
                    detail = " (socket never appeared)"
                raise LaunchError(
                    f"no QMP greeting from {self.program} within {self.qmp_timeout:g} s{detail}",
                    layer="qemu",
                )
            if os.path.exists(self.socket_path):
                socket_seen = True
                client = QMPClient(self.name)
                connect = asyncio.ensure_future(client.connect(self.socket_path))
                done, _ = await asyncio.wait({connect, self._wait_task}, timeout=remaining,
                                             return_when=asyncio.FIRST_COMPLETED)
                if connect in done and connect.exception() is None:
                    self.client = client
                    self.ready_seconds = time.monotonic() - self._t0
                    self._set_state(Runstate.CONNECTED)
                    return
                if connect in done:
                    last_err = connect.exception()
                else:
                    await cancel_and_reap(connect)
                    with contextlib.suppress(QMPError, OSError):
                        await client.disconnect()
                    continue  # loop re-checks exit / deadline
            # Poll: QEMU creates the socket early in start-up (about 50 ms under TCG). A short fixed interval
            # for the first second costs next to nothing (one stat() per 2 ms) and is where the wrapper's
            # latency is decided; after that back off gently for slow starts.
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            if time.monotonic() - self._t0 > FAST_POLL_SECONDS:
                delay = min(delay * 2, 0.05)

    async def start(self) -> None:
        """:meth:`spawn` then :meth:`connect`."""
        await self.spawn()
        await self.connect()

    # --------------------------------------------------------------- commands

    async def execute(self, cmd: str, arguments: Mapping[str, object] | None = None,
                      timeout: float | None = None) -> object:
        """Run one QMP command and return its ``return`` value.

        The command is raced against the emulator's exit so that a crash or a
        ``kill -9`` turns into a prompt LaunchError, never a hang.

        :raise LaunchError: not connected, emulator died, timeout, or QEMU
            answered with an error (QEMU's ``desc`` is in the message).
        """
        self._require(f"QMP command {cmd}", Runstate.CONNECTED)
        assert self.client is not None and self._wait_task is not None
        if self._wait_task.done():
            raise await self._exit_error(f"before QMP command {cmd}")
        limit = self.qmp_timeout if timeout is None else timeout
        task = asyncio.ensure_future(self.client.execute(cmd, arguments))
        try:
            done, _ = await asyncio.wait({task, self._wait_task}, timeout=limit,
                                         return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        if task not in done:
            await cancel_and_reap(task)
            if self._wait_task.done():
                raise await self._exit_error(f"during QMP command {cmd}")
            raise LaunchError(f"QMP command {cmd}: no answer within {limit:g} s", layer="qemu")
        try:
            return task.result()
        except ExecuteError as err:
            raise LaunchError(f"QMP command {cmd} failed: {brief(err)}", layer="qemu") from err
        except (QMPError, OSError, EOFError) as err:
            if self._wait_task.done() or await self._exited_soon():
                raise await self._exit_error(f"during QMP command {cmd}") from err
            raise LaunchError(f"QMP command {cmd}: {brief(err) or type(err).__name__}", layer="qemu") from err

    async def _exited_soon(self, grace: float = 0.5) -> bool:
        """After a broken connection, give the reaper a moment: the socket usually closes just before the exit."""
        assert self._wait_task is not None
        await asyncio.wait({self._wait_task}, timeout=grace)
        return self._wait_task.done()

    def listener(self, names: Sequence[str] | None = None) -> EventListener:
        """A registered :class:`qemu.qmp.EventListener` for ``names`` (all events if None).

        Remove it with ``session.client.remove_listener(l)`` or just close the session.
        """
        self._require("QMP events", Runstate.CONNECTED)
        assert self.client is not None
        lst = EventListener(names)
        self.client.register_listener(lst)
        return lst

    async def disconnect(self) -> None:
        """Drop the QMP connection but leave the emulator running (the wrapper does this after verifying)."""
        client, self.client = self.client, None
        if client is None:
            return
        if self.runstate is Runstate.CONNECTED:
            self._set_state(Runstate.DETACHED)
        task = asyncio.ensure_future(client.disconnect())
        try:
            done, _ = await asyncio.wait({task}, timeout=self.quit_timeout)
        except BaseException:
            task.cancel()
            raise
        if task in done:
            # disconnect() re-raises whatever ended the session (EOF after quit/kill): expected here.
            task.exception()
        else:
            task.cancel()

    # --------------------------------------------------------------- shutdown

    async def wait(self) -> int:
        """Wait (unbounded) for the emulator to exit; returns asyncio's return code."""
        self._require("wait", Runstate.SPAWNED, Runstate.CONNECTED, Runstate.DETACHED, Runstate.CLOSING,
                      Runstate.CLOSED)
        assert self._wait_task is not None
        return await asyncio.shield(self._wait_task)

    async def _wait_bounded(self, timeout: float) -> bool:
        assert self._wait_task is not None
        if not self._wait_task.done():
            await asyncio.wait({self._wait_task}, timeout=timeout)
        return self._wait_task.done()

    def send_signal(self, sig: int) -> None:
        """Signal the emulator if it still runs (ignores a process that is already gone).

        ``os.kill``, not ``Popen.send_signal``: the latter polls first, which would reap the child behind
        :meth:`_reap`. Until :meth:`_reap` reaps it the pid cannot be reused, so ``os.kill`` on it is safe (a
        zombie ignores it).
        """
        if self._proc is not None and self._proc.returncode is None and not self.exited:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)

    async def shutdown(self, *, graceful: bool = True) -> int | None:
        """Stop the emulator: ``quit`` (if connected and ``graceful``), then SIGTERM, then SIGKILL, each bounded.

        :return: asyncio's return code, or None if never started.
        """
        if self._proc is None or self._wait_task is None:
            return None
        asked = False
        if graceful and self.client is not None and not self._wait_task.done():
            with contextlib.suppress(LaunchError):
                await self.execute("quit", timeout=self.quit_timeout)
                asked = True
        await self.disconnect()
        # Only wait for a voluntary exit if QEMU accepted ``quit``; otherwise go straight to SIGTERM.
        if not await self._wait_bounded(self.quit_timeout if asked else 0.0):
            self.send_signal(signal.SIGTERM)
            if not await self._wait_bounded(self.term_timeout):
                self.send_signal(signal.SIGKILL)
                await self._wait_bounded(30.0)
        return self._proc.returncode

    async def _close(self) -> None:
        if self._spawned is not None:      # given to the session but never taken over by spawn()
            started, self._spawned = self._spawned, None
            started.abandon(self.term_timeout)
        try:
            await self.shutdown()
        finally:
            await self._drain_stderr()
            for task in (self._stderr_task, self._wait_task):
                if task is not None and not task.done():
                    await cancel_and_reap(task)
            if self._stderr_transport is not None:
                self._stderr_transport.close()  # closes our read end if EOF never came
                self._stderr_transport = None
                self._stderr_fd = None
            if self.runtime_dir is not None:
                shutil.rmtree(self.runtime_dir, ignore_errors=True)
                self.runtime_dir = None
            self._set_state(Runstate.CLOSED)

    async def close(self) -> None:
        """Shut down, reap the child, and remove socket and directory; idempotent.

        Cleanup runs in its own task and is awaited to completion even if the
        caller is cancelled meanwhile (every step is bounded); the cancellation
        is then re-raised so that ``asyncio.CancelledError`` propagates unwrapped.
        """
        if self._close_task is None:
            self._set_state(Runstate.CLOSING)
            self._close_task = asyncio.create_task(self._close(), name="emulator-close")
        cancelled = False
        while not self._close_task.done():
            try:
                await asyncio.shield(self._close_task)
            except asyncio.CancelledError:
                if self._close_task.done():
                    break
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError()
        exc = self._close_task.exception()
        if exc is not None:
            raise exc

