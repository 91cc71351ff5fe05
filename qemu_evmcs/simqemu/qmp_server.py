"""The QMP server side of the simulated QEMU (on :mod:`.reactor`; clients are :class:`qemu.qmp.QMPClient`).

Wire protocol as QEMU speaks it: on connect a greeting
``{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "qemu-evmcs-sim"},
"capabilities": ["oob"]}}``; commands are JSON objects sent back to back (no
framing, as in QEMU: a brace/bracket-counting splitter like QEMU's
json-streamer cuts the stream); every reply and event is one line ending in
``\\r\\n``. Before ``qmp_capabilities`` only that command is accepted
(``CommandNotFound``). ``id`` is echoed. Malformed input gets a
``GenericError`` reply and the connection stays usable; a message larger
than :data:`MAX_MESSAGE` bytes or nested deeper than :data:`MAX_DEPTH`
closes that connection. Any number of clients may be connected at once
(real QEMU serves one client per ``-qmp`` socket at a time).

Commands (QEMU 7.2 shapes): ``qmp_capabilities``, ``query-version``,
``query-commands``, ``query-status``, ``query-name``, ``cont``, ``stop``,
``quit``, ``query-kvm``, ``query-cpus-fast``, ``query-cpu-definitions``,
``query-cpu-model-expansion`` (``static``/``full``), ``qom-get``, ``qom-list``.
Events: ``STOP``, ``RESUME``, ``SHUTDOWN`` (``{"guest": false, "reason": "host-qmp-quit"|"host-signal"}``),
each with ``timestamp {seconds, microseconds}``.

Extension commands (prefix ``x-evmcs-``, not in QEMU)::

    x-evmcs-query-guest-vmx-msrs [cpu-index: int = 0]
        -> {"msrs": {"IA32_VMX_BASIC": "0x00da040000000004", ...},   # as the L1 guest reads them (filtered)
            "evmcs": bool,            # eVMCS enabled on that vCPU (KVM_CAP_HYPERV_ENLIGHTENED_VMCS)
            "evmcs-active": bool,     # KVM's EVMCS_ACTIVE(vcpu) for this era (filter applies)
            "era": "6.3+", "kernel": "6.3.0", "cpu-index": 0,
            "host": "skylake-6.3", "profile": "/path/to/skylake-6.3.yaml"}   # the --host profile (file or null)
        msrs is {} when the guest has no VMX (vmx=off, nested off, AMD, TCG).
    x-evmcs-query-host-vmx-msrs [cpu-index]
        -> same shape, host-initiated reads (unfiltered, except that kernels <= 5.6
           sanitize the vCPU's MSRs when eVMCS is enabled)
    x-evmcs-query-hv-cpuid [cpu-index]
        -> {"hyperv": bool, "leaves": {"0x40000000": {"eax": "0x4000000a", "ebx": ..., "ecx": ..., "edx": ...},
            "0x40000003": {...}, "0x40000004": {...}, "0x4000000a": {...}}}
           the guest's Hyper-V leaves as QEMU set them (modelled registers; 32-bit hex strings);
           leaves is {} when Hyper-V is off.
    x-evmcs-query-kvm-log
        -> {"log": [{"seq": 0, "vcpu": null|int, "ioctl": "CHECK_EXTENSION", "arg": "...", "result": "..."}, ...]}
    x-evmcs-query-migration-verdict
        -> {"verdict": "fine"|"blocked"|"unsafe", "reason": str, "status": "completed"|"failed",
            "lost": [feature or "MSR bit N", ...], "gained": [...], "source-msrs": {...}, "destination-msrs": {...}}
           after an outgoing ``migrate`` finished: the classes of ``qemu-evmcs migrate-check``.

Migration (simulated, see :mod:`.migration`): ``-incoming defer|unix:PATH|tcp:HOST:PORT`` (start in
``inmigrate``), ``migrate-incoming {uri}`` (after ``-incoming defer``), ``migrate {uri}`` (UNIX or loopback
TCP; events ``MIGRATION {status: setup|active|completed|failed}``; the source ends in ``postmigrate``) and
``query-migrate``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import time
from dataclasses import dataclass, field
from qemu_evmcs.core.typecheck import TYPE_CHECKING
from collections.abc import Callable, Mapping

from qemu_evmcs.core import lazy
from qemu_evmcs.core.errors import EXIT_NEGATIVE, EvmcsError
from qemu_evmcs.qemu.cpuspec import PROG, CpuSpec, QemuError
from qemu_evmcs.simqemu.cmdline import QmpAddress
from qemu_evmcs.qemu.features import CPUID_BY_NAME, HV_BY_PROP
from qemu_evmcs.qemu.cpu import BUILTIN_MODELS, X86Cpu, list_models, model_info, vmx_prop_names
from qemu_evmcs.simqemu.migration import (LOAD_FAILED, MAX_STATE, IncomingResult, apply_incoming, decode, encode,
                                          guest_msrs, loads_strict, parse_uri, vcpu_state, verdict)
from qemu_evmcs.simqemu.reactor import Listener, Reactor, Stream, connect, read_line, report
from qemu_evmcs.simqemu.startup import Machine, VcpuState, read_vmx_msrs

if TYPE_CHECKING:
    from typing import Any
    import ctypes
else:
    ctypes = lazy.proxy("ctypes")  # only to give memory back (trim_memory)

QEMU_VERSION = {"major": 7, "minor": 2, "micro": 0}
PACKAGE = "qemu-evmcs-sim"
#: Largest single QMP message accepted (bytes); larger closes the connection.
MAX_MESSAGE = 1 << 20
#: Deepest JSON nesting accepted (QEMU's parser limit is 1024 as well).
MAX_DEPTH = 1024
#: A client whose unread output exceeds this is disconnected (it stopped reading) ...
MAX_BACKLOG = 4 << 20
#: ... and all clients together may hold at most this much unread output: with N clients each one's
#: limit is ``max(MIN_BACKLOG, MAX_TOTAL_BACKLOG // N)`` (400 clients that never read took the simulator
#: from 94 to 1,931 MiB with only the per-client limit).
MAX_TOTAL_BACKLOG = 64 << 20
#: A client's limit never drops below this (one large reply, such as qom-list, must fit).
MIN_BACKLOG = 128 << 10
#: A client with more unread output than this is not read from until it catches up (to a quarter of it) or
#: :data:`DRAIN_WAIT` seconds pass: a client pipelining commands cannot grow its backlog faster than it reads.
PAUSE_ABOVE = 64 << 10
DRAIN_WAIT = 30.0
#: Seconds a leaving client (or every client at shutdown) gets to receive what is queued for it.
CLOSE_WAIT = 1.0
#: Longest UNIX socket path (sun_path minus the NUL).
UNIX_PATH_MAX = 107


class QmpCommandError(EvmcsError):
    """A simulated QMP command failed: answered ``{"error": {"class": cls, "desc": desc}}``.

    Part of the one error tree (:class:`~qemu_evmcs.core.errors.EvmcsError`) like every other failure of
    the package; it never reaches a command line (the server turns it into the QMP error reply).

    :param desc: QEMU's error text (``message`` too).
    :param cls: QEMU's error class (``GenericError``, ``CommandNotFound``, ...).
    """

    exit_code = EXIT_NEGATIVE

    def __init__(self, desc: str, cls: str = "GenericError") -> None:
        super().__init__(desc, layer="qemu")
        self.desc = desc
        self.cls = cls


# --------------------------------------------------------------------------- stream splitting

@dataclass
class SplitError:
    """Bad input found by :class:`JsonSplitter`; ``fatal`` closes the connection."""

    desc: str
    fatal: bool = False


class JsonSplitter:
    """Cut a byte stream into top-level JSON values by counting braces/brackets outside strings.

    Like QEMU's json-streamer: values need no separator; stray top-level characters are reported
    (one error per run of junk) and skipped.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.depth = 0
        self.in_str = False
        self.esc = False
        self.junk = bytearray()

    def feed(self, data: bytes) -> list[bytes | SplitError]:
        """Consume ``data``; return complete values (bytes) and errors in stream order."""
        out: list[bytes | SplitError] = []
        for byte in data:
            ch = chr(byte)
            if self.depth == 0:
                if ch in "{[":
                    self._flush_junk(out)
                    self.buf = bytearray([byte])
                    self.depth = 1
                elif ch in " \t\r\n":
                    self._flush_junk(out)
                else:
                    self.junk.append(byte)
                    if len(self.junk) > MAX_MESSAGE:
                        out.append(SplitError("JSON parse error, input too large", fatal=True))
                        self.junk.clear()
                        return out
                continue
            self.buf.append(byte)
            if len(self.buf) > MAX_MESSAGE:
                out.append(SplitError("JSON parse error, message too large", fatal=True))
                self.buf.clear()
                self.depth = 0
                return out
            if self.in_str:
                if self.esc:
                    self.esc = False
                elif ch == "\\":
                    self.esc = True
                elif ch == '"':
                    self.in_str = False
                continue
            if ch == '"':
                self.in_str = True
            elif ch in "{[":
                self.depth += 1
                if self.depth > MAX_DEPTH:
                    out.append(SplitError("JSON parse error, nesting too deep", fatal=True))
                    self.buf.clear()
                    self.depth = 0
                    return out
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    out.append(bytes(self.buf))
                    self.buf = bytearray()
        return out

    def _flush_junk(self, out: list[bytes | SplitError]) -> None:
        if self.junk:
            text = self.junk[:40].decode("utf-8", "replace")
            out.append(SplitError(f"JSON parse error, invalid token '{text}'"))
            self.junk.clear()


# --------------------------------------------------------------------------- connections

@dataclass(eq=False)
class Connection:
    """One client.

    :ivar peers: every connection of the server (this one included): the backlog limit is shared.
    :ivar peak_backlog: the most unread output this client ever had (the server gives memory back after
        a big one leaves).
    """

    stream: Stream
    negotiated: bool = False
    oob: bool = False
    closed: bool = False
    peers: set[Connection] = field(default_factory=set)
    peak_backlog: int = 0
    _summed_at: int = 0

    def backlog_limit(self) -> int:
        """This client's share of :data:`MAX_TOTAL_BACKLOG` (see there)."""
        return min(MAX_BACKLOG, max(MIN_BACKLOG, MAX_TOTAL_BACKLOG // max(1, len(self.peers))))

    def _total_exceeded(self, backlog: int) -> bool:
        """Whether all clients together hold more than :data:`MAX_TOTAL_BACKLOG` (shares alone are not
        enough: a client that filled its share while it was alone keeps it when others arrive).

        Summed only when this client grew by :data:`MIN_BACKLOG` since its last sum, so a well-behaved
        client (small backlog) never pays for it.
        """
        if backlog < self._summed_at + MIN_BACKLOG:
            return False
        self._summed_at = backlog
        total = sum(p.stream.write_buffer_size() for p in self.peers if not p.closed)
        return total > MAX_TOTAL_BACKLOG

    def send(self, obj: Mapping[str, object]) -> None:
        """Queue one message (``\\r\\n``-terminated); drop the client if it stopped reading."""
        if self.closed or self.stream.closed:
            self.closed = True
            return
        backlog = self.stream.write_buffer_size()
        self.peak_backlog = max(self.peak_backlog, backlog)
        if backlog > self.backlog_limit() or self._total_exceeded(backlog):
            report("QMP client stopped reading; closing it")
            self.abort()
            return
        self.stream.write(json.dumps(obj, separators=(", ", ": "), allow_nan=False).encode() + b"\r\n")

    def close(self) -> None:
        """Close the connection (idempotent) once what is queued for it is sent, or after :data:`CLOSE_WAIT`
        seconds without its output dropped: waiting longer would hold the socket and the buffer for a reader
        that never comes."""
        self.closed = True
        self.stream.close(deadline=CLOSE_WAIT)

    def abort(self) -> None:
        """Drop the connection and its unsent output at once."""
        self.closed = True
        self.stream.abort()


def _brief(obj: object, limit: int = 300) -> str:
    """``str(obj)`` on one line, cut to ``limit`` characters: a peer controls these bytes."""
    text = " ".join(str(obj).split())
    return text if len(text) <= limit else text[:limit] + "..."


def trim_memory() -> None:
    """Ask glibc to return free heap memory to the system (``malloc_trim(0)``); a no-op elsewhere.

    Why: after hundreds of clients' buffers are freed, CPython and glibc keep the pages (415 MiB stayed
    in the issue's reproduction); ``malloc_trim`` releases free pages inside the heap too (glibc >= 2.8).
    """
    with contextlib.suppress(OSError, AttributeError, ImportError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _timestamp() -> dict[str, int]:
    now = time.time()
    sec = int(now)
    return {"seconds": sec, "microseconds": int((now - sec) * 1_000_000)}


def _hex32(v: int) -> str:
    return f"0x{v & 0xFFFFFFFF:08x}"


def _hex64(v: int) -> str:
    return f"0x{v:016x}"


if TYPE_CHECKING:
    Handler = Callable[[Connection, dict[str, Any]], object]


@dataclass
class _Listener:
    """One listening socket of the server, with what is needed to close it and remove its file."""

    addr: QmpAddress
    server: Listener
    ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file we created


@dataclass
class QmpServer:
    """All monitors of one simulated QEMU, sharing one VM state."""

    machine: Machine
    addresses: list[QmpAddress]
    conns: set[Connection] = field(default_factory=set)
    listeners: list[_Listener] = field(default_factory=list)
    status: str = "running"
    autostart: bool = True
    exit_code: int | None = None
    #: The main loop, made by :meth:`start` (a server used only through :meth:`dispatch` has none).
    reactor: Reactor | None = None
    #: Outgoing migration: status, error, guest-visible MSRs before/after (``migrate``).
    migration: dict[str, Any] | None = None
    _incoming: Listener | None = None
    _incoming_path: str | None = None
    _incoming_busy: bool = False
    _big_backlogs: int = 0

    def __post_init__(self) -> None:
        cfg = self.machine.config
        if cfg.incoming is not None:
            self.status = "inmigrate"
            self.autostart = not cfg.start_paused
        elif cfg.start_paused:
            self.status = "prelaunch"
        self.commands: dict[str, tuple[Handler, dict[str, str], set[str]]] = {
            # name: (handler, {arg: type}, required args)
            "qmp_capabilities": (self._qmp_capabilities, {"enable": "list"}, set()),
            "query-version": (self._query_version, {}, set()),
            "query-commands": (self._query_commands, {}, set()),
            "query-status": (self._query_status, {}, set()),
            "query-name": (self._query_name, {}, set()),
            "cont": (self._cont, {}, set()),
            "stop": (self._stop, {}, set()),
            "quit": (self._quit, {}, set()),
            "query-kvm": (self._query_kvm, {}, set()),
            "query-cpus-fast": (self._query_cpus_fast, {}, set()),
            "query-cpu-definitions": (self._query_cpu_definitions, {}, set()),
            "query-cpu-model-expansion": (self._query_cpu_model_expansion, {"type": "str", "model": "dict"},
                                          {"type", "model"}),
            "qom-get": (self._qom_get, {"path": "str", "property": "str"}, {"path", "property"}),
            "qom-list": (self._qom_list, {"path": "str"}, {"path"}),
            "x-evmcs-query-guest-vmx-msrs": (self._x_guest_msrs, {"cpu-index": "int"}, set()),
            "x-evmcs-query-host-vmx-msrs": (self._x_host_msrs, {"cpu-index": "int"}, set()),
            "x-evmcs-query-hv-cpuid": (self._x_hv_cpuid, {"cpu-index": "int"}, set()),
            "x-evmcs-query-kvm-log": (self._x_kvm_log, {}, set()),
            "migrate": (self._migrate, {"uri": "str"}, {"uri"}),
            "migrate-incoming": (self._migrate_incoming, {"uri": "str"}, {"uri"}),
            "query-migrate": (self._query_migrate, {}, set()),
            "x-evmcs-query-migration-verdict": (self._x_migration_verdict, {}, set()),
        }

    # ------------------------------------------------------------------ life cycle
    def loop(self) -> Reactor:
        """The server's main loop (made at first use)."""
        if self.reactor is None:
            self.reactor = Reactor()
        return self.reactor

    def start(self) -> None:
        """Listen on every ``-qmp`` address.

        :raise QemuError: a socket cannot be created (path too long, in use, not ours).
        """
        for addr in self.addresses:
            if addr.kind == "unix":
                self.listeners.append(self._listen_unix(addr))
            else:
                try:
                    srv = Listener.tcp(self.loop(), addr.host, addr.port, self._accept)
                except OSError as err:
                    raise QemuError(f"-qmp tcp:{addr.host}:{addr.port},server=on: Failed to bind socket: "
                                    f"{err.strerror}") from None
                self.listeners.append(_Listener(addr, srv))
        incoming = self.machine.config.incoming
        if incoming is not None and incoming != "defer":
            self._listen_incoming(incoming, f"-incoming {incoming}")

    def _listen_unix(self, addr: QmpAddress) -> _Listener:
        path = addr.path
        spec = f"-qmp unix:{path},server=on"
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise QemuError(f"{spec}: UNIX socket path '{path}' is too long")
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise QemuError(f"{spec}: Failed to bind socket to {path}: Address already in use")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                live = True
            except OSError:
                live = False
            finally:
                probe.close()
            if live:
                raise QemuError(f"{spec}: Failed to bind socket to {path}: Address already in use")
            os.unlink(path)  # a stale socket, as QEMU does
        try:
            srv = Listener.unix(self.loop(), path, self._accept)
        except OSError as err:
            raise QemuError(f"{spec}: Failed to bind socket to {path}: {err.strerror}") from None
        st2 = os.lstat(path)
        return _Listener(addr, srv, (st2.st_dev, st2.st_ino))

    def serve(self) -> int:
        """Run until ``quit``, a signal or a failed incoming migration; then close everything and return
        the exit code."""
        self.loop().run(lambda: self.exit_code is not None)
        self.close()
        return self.exit_code or 0

    def shutdown(self, reason: str, code: int = 0) -> None:
        """Emit SHUTDOWN and stop the main loop (QEMU's ``qemu_system_shutdown_request``)."""
        if self.exit_code is not None:
            return
        self.exit_code = code
        self.broadcast("SHUTDOWN", {"guest": False, "reason": reason})

    def close(self) -> None:
        """Stop listening, give every client up to :data:`CLOSE_WAIT` seconds to receive what is queued
        for it (the ``quit`` reply, SHUTDOWN), remove the socket files this process created."""
        self._close_incoming()
        for lst in self.listeners:
            lst.server.close()
        conns = list(self.conns)
        for conn in conns:
            conn.close()
        if self.reactor is not None:
            self.reactor.run(lambda: all(c.stream.closed for c in conns))
        for lst in self.listeners:
            if lst.addr.kind == "unix" and lst.ident is not None:
                with contextlib.suppress(OSError):
                    st = os.lstat(lst.addr.path)
                    if (st.st_dev, st.st_ino) == lst.ident:
                        os.unlink(lst.addr.path)
        self.listeners.clear()
        if self.reactor is not None:
            self.reactor.close()
            self.reactor = None

    # ------------------------------------------------------------------ events
    def broadcast(self, event: str, data: Mapping[str, object] | None = None) -> None:
        """Send an event to every negotiated client."""
        msg: dict[str, object] = {"event": event}
        if data is not None:
            msg["data"] = dict(data)
        msg["timestamp"] = _timestamp()
        for conn in list(self.conns):
            if conn.negotiated:
                conn.send(msg)

    # ------------------------------------------------------------------ per client
    def _accept(self, sock: socket.socket) -> None:
        conn = Connection(Stream(self.loop(), sock, pause_above=PAUSE_ABOVE, resume_after=DRAIN_WAIT),
                          peers=self.conns)
        conn.stream.when_closed(lambda: self._client_closed(conn))
        self.conns.add(conn)
        splitter = JsonSplitter()
        conn.send({"QMP": {"version": {"qemu": dict(QEMU_VERSION), "package": PACKAGE}, "capabilities": ["oob"]}})
        conn.stream.start(lambda data: self._client_data(conn, splitter, data))

    def _client_data(self, conn: Connection, splitter: JsonSplitter, chunk: bytes) -> None:
        """One chunk from a client (``b""``: it left): split, answer each message, in order."""
        try:
            if chunk and not conn.closed and self.exit_code is None:
                for item in splitter.feed(chunk):
                    if isinstance(item, SplitError):
                        conn.send({"error": {"class": "GenericError", "desc": item.desc}})
                        if item.fatal:
                            conn.closed = True
                            break
                        continue
                    self._handle_raw(conn, item)
                    if conn.closed or self.exit_code is not None:
                        break
        except Exception as err:  # never let one client take the server down
            report(f"QMP connection failed: {type(err).__name__}: {_brief(err)}")
            conn.closed = True
        if (not chunk or conn.closed) and self.exit_code is None:
            conn.close()

    def _client_closed(self, conn: Connection) -> None:
        """A client's socket is closed (it left, was dropped, or the server is ending). Its share of
        :data:`MAX_TOTAL_BACKLOG` goes to the others at the next turn of the loop, not at once: clients whose
        input arrived together are all judged against the same share, whatever order they are served in."""
        self.loop().call_soon(lambda: self._forget_client(conn))

    def _forget_client(self, conn: Connection) -> None:
        self.conns.discard(conn)
        self._big_backlogs += conn.peak_backlog
        if not self.conns and self._big_backlogs > MIN_BACKLOG and self.exit_code is None:
            # The last client left after buffering a lot: give the freed memory back to the system.
            self._big_backlogs = 0
            trim_memory()

    def _handle_raw(self, conn: Connection, raw: bytes) -> None:
        try:
            obj = loads_strict(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            conn.send({"error": {"class": "GenericError", "desc": f"JSON parse error, {err}"}})
            return
        reply = self.dispatch(conn, obj)
        if reply is not None:
            conn.send(reply)

    def dispatch(self, conn: Connection, obj: object) -> dict[str, object] | None:
        """One parsed message -> its reply (``None`` only if the connection is gone)."""
        ident: object = None
        has_id = False

        def err(desc: str, cls: str = "GenericError") -> dict[str, object]:
            out: dict[str, object] = {"error": {"class": cls, "desc": desc}}
            if has_id:
                out["id"] = ident
            return out

        if not isinstance(obj, dict):
            return err("QMP input must be a JSON object")
        if "id" in obj:
            has_id, ident = True, obj["id"]
        for key in obj:
            if key not in ("execute", "exec-oob", "arguments", "id", "control"):
                return err(f"QMP input member '{key}' is unexpected")
        if "execute" in obj and "exec-oob" in obj:
            return err("QMP input member 'execute' and 'exec-oob' are mutually exclusive")
        name = obj.get("execute", obj.get("exec-oob"))
        if name is None:
            return err("QMP input lacks member 'execute'")
        if not isinstance(name, str):
            return err("QMP input member 'execute' must be a string")
        if "exec-oob" in obj and not conn.oob:
            return err("QMP input member 'exec-oob' is unexpected (out-of-band not enabled)")
        args = obj.get("arguments", {})
        if not isinstance(args, dict):
            return err("QMP input member 'arguments' must be an object")
        if not conn.negotiated and name != "qmp_capabilities":
            return err("Expecting capabilities negotiation with 'qmp_capabilities'", "CommandNotFound")
        if conn.negotiated and name == "qmp_capabilities":
            return err("Capabilities negotiation is already complete, command ignored", "CommandNotFound")
        entry = self.commands.get(name)
        if entry is None:
            return err(f"The command {name} has not been found", "CommandNotFound")
        handler, spec, required = entry
        for key, val in args.items():
            if key not in spec:
                return err(f"Parameter '{key}' is unexpected")
            want = spec[key]
            ok = {"str": isinstance(val, str), "int": isinstance(val, int) and not isinstance(val, bool),
                  "dict": isinstance(val, dict), "list": isinstance(val, list)}[want]
            if not ok:
                expected = {"str": "string", "int": "integer", "dict": "object", "list": "array"}[want]
                return err(f"Invalid parameter type for '{key}', expected: {expected}")
        for key in sorted(required):
            if key not in args:
                return err(f"Parameter '{key}' is missing")
        try:
            ret = handler(conn, args)
        except QmpCommandError as e:
            return err(e.desc, e.cls)
        except QemuError as e:
            return err(e.message)
        except Exception as e:  # a bug must not kill the VM
            report(f"{PROG}: internal error in QMP command {name}: {type(e).__name__}: {_brief(e)}")
            return err(f"internal error: {type(e).__name__}: {e}")
        out: dict[str, object] = {"return": ret}
        if has_id:
            out["id"] = ident
        return out

    # ------------------------------------------------------------------ standard commands
    def _qmp_capabilities(self, conn: Connection, args: dict[str, Any]) -> object:
        enable = args.get("enable", [])
        for cap in enable:
            if cap != "oob":
                raise QmpCommandError(f"Parameter 'enable' does not accept value '{cap}'"
                                      if isinstance(cap, str) else "Invalid parameter type for 'enable'")
        conn.oob = "oob" in enable
        conn.negotiated = True
        return {}

    def _query_version(self, conn: Connection, args: dict[str, Any]) -> object:
        return {"qemu": dict(QEMU_VERSION), "package": PACKAGE}

    def _query_commands(self, conn: Connection, args: dict[str, Any]) -> object:
        return [{"name": n} for n in self.commands]

    def _query_status(self, conn: Connection, args: dict[str, Any]) -> object:
        return {"running": self.status == "running", "singlestep": False, "status": self.status}

    def _query_name(self, conn: Connection, args: dict[str, Any]) -> object:
        name = self.machine.config.name
        return {"name": name} if name is not None else {}

    def _cont(self, conn: Connection, args: dict[str, Any]) -> object:
        if self.status == "inmigrate":
            self.autostart = True
        elif self.status != "running":
            self.status = "running"
            self.broadcast("RESUME")
        return {}

    def _stop(self, conn: Connection, args: dict[str, Any]) -> object:
        if self.status == "inmigrate":
            self.autostart = False
        elif self.status == "running":
            self.status = "paused"
            self.broadcast("STOP")
        return {}

    def _quit(self, conn: Connection, args: dict[str, Any]) -> object:
        # The reply goes out first; SHUTDOWN follows from the main loop, as in QEMU.
        self.loop().call_soon(lambda: self.shutdown("host-qmp-quit", 0))
        return {}

    def _query_kvm(self, conn: Connection, args: dict[str, Any]) -> object:
        return {"enabled": self.machine.accel.name == "kvm", "present": True}

    def _query_cpus_fast(self, conn: Connection, args: dict[str, Any]) -> object:
        pid = os.getpid()
        return [{"cpu-index": v.index, "qom-path": v.qom_path, "thread-id": pid,
                 "props": {"core-id": v.index, "thread-id": 0, "socket-id": 0}, "target": "x86_64"}
                for v in self.machine.vcpus]

    def _new_cpu(self, model: str, props: Mapping[str, object]) -> X86Cpu:
        cpu = X86Cpu.create(CpuSpec(model=model), self.machine.accel)
        for key, val in props.items():
            if isinstance(val, bool):
                sval = "on" if val else "off"
            elif isinstance(val, (int, str)):
                sval = str(val)
            else:
                raise QmpCommandError(f"Invalid parameter type for '{key}'")
            cpu.set_property(key, sval, via_global=False)
        if cpu.model == "host" and not self.machine.accel.uses_host_cpuid:
            raise QmpCommandError("CPU model 'host' requires KVM or HVF")
        return cpu

    def _query_cpu_definitions(self, conn: Connection, args: dict[str, Any]) -> object:
        out = []
        for name in list_models():
            unavailable: list[str]
            if name == "host" and not self.machine.accel.uses_host_cpuid:
                unavailable = ["kvm"]
            else:
                try:
                    cpu = self._new_cpu(name, {})
                    cpu.expand()
                    cpu.check = False
                    cpu.filter()
                    unavailable = cpu.unavailable_features()
                except (QemuError, QmpCommandError):
                    unavailable = ["type"]
            entry: dict[str, object] = {"name": name, "typename": f"{name}-x86_64-cpu", "static": name == "base",
                                        "migration-safe": name not in ("host", "max"),
                                        "unavailable-features": unavailable, "deprecated": False}
            if name not in BUILTIN_MODELS:
                entry.update(model_info(name) or {})
            out.append(entry)
        return out

    def _query_cpu_model_expansion(self, conn: Connection, args: dict[str, Any]) -> object:
        typ = args["type"]
        if typ not in ("static", "full"):
            raise QmpCommandError(f"Parameter 'type' does not accept value '{typ}'")
        model = args["model"]
        name = model.get("name")
        if not isinstance(name, str):
            raise QmpCommandError("Parameter 'model.name' is missing" if name is None
                                  else "Invalid parameter type for 'model.name', expected: string")
        props = model.get("props", {})
        if not isinstance(props, dict):
            raise QmpCommandError("Invalid parameter type for 'model.props', expected: object")
        if name not in BUILTIN_MODELS and name not in list_models():
            raise QmpCommandError(f"CPU model '{name}' not found")
        cpu = self._new_cpu(name, props)
        cpu.expand()
        if typ == "static":
            return {"model": {"name": "base", "props": cpu.static_props()}}
        return {"model": {"name": name, "props": cpu.full_props()}}

    def _vcpu_by_path(self, path: str) -> VcpuState:
        for v in self.machine.vcpus:
            if v.qom_path == path:
                return v
        raise QmpCommandError(f"Device '{path}' not found", "DeviceNotFound")

    def _qom_get(self, conn: Connection, args: dict[str, Any]) -> object:
        v = self._vcpu_by_path(args["path"])
        cpu = v.cpu
        prop = args["property"]
        b = cpu.prop_bool(prop)
        if b is not None:
            return b
        p = self.machine.profile
        values: dict[str, object] = {
            "unavailable-features": cpu.unavailable_features(),
            "filtered-features": [],
            "feature-words": [],
            "type": cpu.typename,
            "vendor": p.vendor if cpu.model in ("host", "max") else cpu.other.get("vendor", p.vendor),
            "model-id": p.model_name or "QEMU Virtual CPU",
            "family": p.family if p.family is not None else 6,
            "model": p.model if p.model is not None else 0,
            "stepping": p.stepping if p.stepping is not None else 0,
            "hv-spinlocks": cpu.hv_spinlocks,
        }
        if prop in values:
            return values[prop]
        if prop in cpu.other:
            return cpu.other[prop]
        raise QmpCommandError(f"Property '{cpu.typename}.{prop}' not found")

    def _qom_list(self, conn: Connection, args: dict[str, Any]) -> object:
        v = self._vcpu_by_path(args["path"])
        out: list[dict[str, str]] = [{"name": "type", "type": "string"}]
        for name in [*CPUID_BY_NAME, *vmx_prop_names(), *HV_BY_PROP, "hv-passthrough", "check", "enforce",
                     "migratable"]:
            out.append({"name": name, "type": "bool"})
        out += [{"name": "unavailable-features", "type": "strList"},
                {"name": "filtered-features", "type": "X86CPUFeatureWordInfo"},
                {"name": "feature-words", "type": "X86CPUFeatureWordInfo"},
                {"name": "hv-spinlocks", "type": "uint32"}, {"name": "vendor", "type": "string"},
                {"name": "model-id", "type": "string"}, {"name": "family", "type": "int"},
                {"name": "model", "type": "int"}, {"name": "stepping", "type": "int"}]
        del v
        return out

    # ------------------------------------------------------------------ migration
    def _listen_incoming(self, uri: str, what: str) -> None:
        """Listen for the source of an incoming migration (``-incoming URI`` / ``migrate-incoming``).

        :raise QemuError: a bad URI or a socket that cannot be created.
        """
        kind, host, port = parse_uri(uri)
        try:
            if kind == "unix":
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISSOCK(os.lstat(host).st_mode):
                        os.unlink(host)
                self._incoming = Listener.unix(self.loop(), host, self._incoming_conn)
                self._incoming_path = host
            else:
                self._incoming = Listener.tcp(self.loop(), host, port, self._incoming_conn)
        except OSError as err:
            raise QemuError(f"{what}: Failed to bind socket: {err.strerror}") from None

    def _close_incoming(self) -> None:
        if self._incoming is not None:
            self._incoming.close()
            self._incoming = None
        if self._incoming_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._incoming_path)
            self._incoming_path = None

    def _incoming_conn(self, sock: socket.socket) -> None:
        """One source connection: read the vCPU state (one line), apply it, answer, then run or exit 1."""
        if self._incoming_busy or self.status != "inmigrate":
            sock.close()
            return
        self._incoming_busy = True
        self._close_incoming()
        stream = Stream(self.loop(), sock)
        read_line(stream, MAX_STATE, 30.0, lambda got: self._incoming_state(stream, got))

    def _incoming_state(self, stream: Stream, got: bytes | Exception) -> None:
        # From here on the destination ends as "running"/"paused" or exits 1 with a reason: a stream that
        # cannot be decoded or applied (deep nesting, wrong types, a bug) never leaves it "inmigrate" with
        # its socket gone.
        result = IncomingResult(False, [f"{PROG}: invalid migration stream", LOAD_FAILED])
        try:
            try:
                if isinstance(got, Exception):
                    raise got
                state = decode(got)
            except (TimeoutError, ValueError, ConnectionError, OSError) as err:
                result = IncomingResult(False, [f"{PROG}: invalid migration stream: {_brief(err)}", LOAD_FAILED])
            else:
                try:
                    result = apply_incoming(self.machine, state)
                except Exception as err:  # a bug or an unforeseen shape: fail this migration, never wedge
                    report(f"{PROG}: incoming migration failed: {type(err).__name__}: {_brief(err)}")
                    result = IncomingResult(False, [f"{PROG}: invalid vCPU state: {_brief(err)}", LOAD_FAILED])
            if result.ok:
                reply: dict[str, object] = {"status": "completed",
                                            "guest-vmx-msrs": {k: _hex64(v) for k, v in
                                                               guest_msrs(self.machine).items()},
                                            "host": self.machine.profile.name}
            else:
                reply = {"status": "failed", "error": result.error}
            stream.write(encode(reply))
        finally:
            # The answer is sent (or dropped after 5 s) before the destination runs or exits.
            stream.when_closed(lambda: self._incoming_done(result))
            stream.close(deadline=5.0)

    def _incoming_done(self, result: IncomingResult) -> None:
        if not result.ok:
            report(*result.stderr)
            self.exit_code = 1
            return
        if self.autostart:
            self.status = "running"
            self.broadcast("RESUME")
        else:
            self.status = "paused"

    def _migrate_incoming(self, conn: Connection, args: dict[str, Any]) -> object:
        if self.machine.config.incoming is None:
            raise QmpCommandError("'-incoming' was not specified on the command line")
        if self.machine.config.incoming != "defer" or self._incoming is not None or self._incoming_busy:
            raise QmpCommandError("The incoming migration has already been started")
        self.loop().call_soon(lambda: self._listen_incoming_cmd(args["uri"]))
        return {}

    def _listen_incoming_cmd(self, uri: str) -> None:
        try:
            self._listen_incoming(uri, "migrate-incoming")
        except QemuError as err:
            report(*err.lines())

    def _migrate(self, conn: Connection, args: dict[str, Any]) -> object:
        if self.status in ("inmigrate", "postmigrate"):
            raise QmpCommandError(f"Operation not allowed in state {self.status}")
        if self.migration is not None and self.migration["status"] in ("setup", "active"):
            raise QmpCommandError("There's a migration process in progress")
        uri = args["uri"]
        try:
            target = parse_uri(uri)
        except QemuError as err:
            raise QmpCommandError(err.message) from None
        self.migration = {"status": "setup", "error": "", "source-msrs": guest_msrs(self.machine),
                          "destination-msrs": {}, "destination": ""}
        self.loop().call_soon(lambda: self._migration_step(self._migrate_start, target))
        return {}

    def _migration_status(self, status: str, error: str = "") -> None:
        assert self.migration is not None
        self.migration["status"] = status
        if error:
            self.migration["error"] = error
        self.broadcast("MIGRATION", {"status": status})

    def _migration_step(self, step: Callable[..., None], *args: Any) -> None:
        """Run one step of an outgoing migration; whatever happens it ends ``completed`` or ``failed`` (never
        stays ``setup``/``active``, which refused every later ``migrate``)."""
        try:
            step(*args)
        except Exception as err:
            report(f"{PROG}: outgoing migration failed: {type(err).__name__}: {_brief(err)}")
            if self.migration is not None and self.migration["status"] in ("setup", "active"):
                self._migration_status("failed", "internal error of the simulated migration")

    def _migrate_start(self, target: tuple[str, str, int]) -> None:
        self.broadcast("MIGRATION", {"status": "setup"})
        connect(self.loop(), target, 10.0, lambda got: self._migration_step(self._migrate_connected, got))

    def _migrate_connected(self, got: socket.socket | OSError) -> None:
        if isinstance(got, OSError):
            self._migration_status("failed", f"Failed to connect to the destination: {got}")
            return
        self._migration_status("active")
        stream = Stream(self.loop(), got)
        answered = False

        def answer(got: bytes | Exception) -> None:
            nonlocal answered
            if not answered:
                answered = True
                stream.abort()
                self._migration_step(self._migrate_answer, got)

        def sent_in_time() -> None:  # the state is sent within 10 s, the answer read within 60 s more
            if stream.write_buffer_size() and not stream.closed:
                answer(TimeoutError("the destination did not read the state within 10 s"))

        stream.write(encode(vcpu_state(self.machine)))
        self.loop().call_later(10.0, sent_in_time)
        read_line(stream, MAX_STATE, 70.0, answer)

    def _migrate_answer(self, got: bytes | Exception) -> None:
        try:
            if isinstance(got, Exception):
                raise got
            reply = decode(got)
        except (TimeoutError, OSError, ValueError) as err:
            self._migration_status("failed", f"the destination closed the migration stream ({_brief(err) or 'EOF'})")
            return
        try:
            if reply.get("status") != "completed":
                self._migration_status("failed", _brief(reply.get("error") or "the destination refused the migration"))
                return
            dest_msrs = parse_msrs(reply.get("guest-vmx-msrs") or {})
            destination = _brief(reply.get("host") or "")
        except (TypeError, ValueError, AttributeError, OverflowError) as err:
            # A destination answering nonsense (bad MSR values): this migration failed; "active" for good
            # refused every later migrate.
            self._migration_status("failed", f"invalid answer from the destination: {_brief(err)}")
            return
        assert self.migration is not None
        self.migration["destination-msrs"] = dest_msrs
        self.migration["destination"] = destination
        if self.status == "running":
            self.broadcast("STOP")
        self.status = "postmigrate"
        self._migration_status("completed")

    def _query_migrate(self, conn: Connection, args: dict[str, Any]) -> object:
        if self.migration is None:
            return {}
        out: dict[str, object] = {"status": self.migration["status"]}
        if self.migration["status"] == "failed":
            out["error-desc"] = self.migration["error"]
        return out

    def _x_migration_verdict(self, conn: Connection, args: dict[str, Any]) -> object:
        mig = self.migration
        if mig is None or mig["status"] not in ("completed", "failed"):
            raise QmpCommandError("no finished outgoing migration (run migrate first and wait for MIGRATION "
                                  "completed or failed)")
        return verdict(mig["status"], mig["error"], mig["source-msrs"], mig["destination-msrs"],
                       mig["destination"])

    # ------------------------------------------------------------------ x-evmcs-*
    def _vcpu_by_index(self, args: dict[str, Any]) -> VcpuState:
        idx = args.get("cpu-index", 0)
        for v in self.machine.vcpus:
            if v.index == idx:
                return v
        raise QmpCommandError(f"CPU {idx} not found (have {len(self.machine.vcpus)} vCPUs)")

    def _msr_reply(self, args: dict[str, Any], *, host_initiated: bool) -> object:
        v = self._vcpu_by_index(args)
        kv = v.kvm_vcpu
        msrs: dict[str, str] = {}
        if kv is not None and (host_initiated or v.cpu.has_vmx()):
            msrs = {n: _hex64(val) for n, val in read_vmx_msrs(kv, host_initiated=host_initiated).items()}
        kvm = self.machine.kvm
        return {"msrs": msrs, "evmcs": bool(kv and kv.evmcs_enabled),
                "evmcs-active": bool(kv and kv.evmcs_active()),
                "era": kvm.era.id if kvm is not None else "",
                "kernel": self.machine.profile.kernel, "cpu-index": v.index,
                "host": self.machine.profile.name, "profile": self.machine.profile.source}

    def _x_guest_msrs(self, conn: Connection, args: dict[str, Any]) -> object:
        return self._msr_reply(args, host_initiated=False)

    def _x_host_msrs(self, conn: Connection, args: dict[str, Any]) -> object:
        return self._msr_reply(args, host_initiated=True)

    def _x_hv_cpuid(self, conn: Connection, args: dict[str, Any]) -> object:
        v = self._vcpu_by_index(args)
        leaves = {f"{leaf:#010x}": {r: _hex32(val) for r, val in regs.items()}
                  for leaf, regs in sorted(v.hv_leaves.items())}
        return {"hyperv": bool(v.hv_leaves), "leaves": leaves}

    def _x_kvm_log(self, conn: Connection, args: dict[str, Any]) -> object:
        return {"log": list(self.machine.log.entries)}


def parse_msrs(raw: Mapping[str, Any]) -> dict[str, int]:
    """``{NAME: "0x..."}`` -> ``{NAME: int}``."""
    return {str(k): int(v, 16) if isinstance(v, str) else int(v) for k, v in raw.items()}


#: The signals that end the VM like QEMU's ``termsig_handler``.
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def register_signal_handlers(server: QmpServer, pending: int | None = None) -> None:
    """SIGTERM/SIGINT/SIGHUP end the VM like QEMU: a stderr line, SHUTDOWN (host-signal), exit 0.

    One line, for the signal that started the shutdown (``qemu_kill_report`` runs once, when the main loop
    sees the request); a signal while the VM is already shutting down is a request already made.
    ``pending``: a signal that arrived before the loop ran (:func:`qemu_evmcs.simqemu.server.run`), served
    at its first turn.
    """
    loop = server.loop()

    def on_signal(signum: int) -> None:
        if server.exit_code is not None:
            return
        report(f"{PROG}: terminating on signal {signum}")
        server.shutdown("host-signal", 0)

    for sig in TERMINATING_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    if pending is not None:
        loop.call_soon(lambda: on_signal(pending))
