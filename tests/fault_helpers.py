"""Fault-injection helpers: a scriptable fake "emulator" and process/fd accounting.

The fake emulator is this very module run as a program (see :func:`make_fake`).
It understands the ``-qmp unix:PATH,server=on,wait=off`` option that
:class:`qemu_evmcs.launch.qmp.EmulatorSession` appends, listens on that unix
socket and then misbehaves as configured:

``greeting``
    ``ok`` (a real QMP greeting), ``none`` (accept, never say anything),
    ``garbage``, ``partial-close`` (half a JSON line, then close the socket),
    ``wrong`` (valid JSON that is not a QMP greeting), ``nonewline``
    (bytes without a newline, forever), ``huge`` (a 50 MB line).
``commands``
    ``{command: action}`` for commands after negotiation; actions are
    ``reply`` (default; a plausible QEMU answer), ``hang`` (never answer),
    ``exit:N``, ``kill:SIG``, ``close`` (close the connection, keep running),
    ``garbage``, ``partial-close``, ``nonewline``, ``huge``. ``*`` matches any command.
``exit_before``
    exit with this status before creating the socket (after writing a stderr line).
``startup_delay``
    seconds to sleep before creating the socket.
``stderr_flood``
    write this many megabytes to stderr first, then ``fake-qemu: last words``.
``marker``
    ``{command: path}``: create ``path`` when that command arrives (so a test knows the phase).
``log``
    a file the fake appends one line to: ``listening`` once its socket accepts connections, and
    ``served`` each time it is done with a connection (it misbehaved and the client went away), so a
    test can wait for "the client has seen the fault" instead of guessing how long that takes.

The socket appears atomically (bound under a temporary name, listening, then renamed), so a client that
sees the path never gets ECONNREFUSED from a socket that is bound but not yet listening.

The fake writes its pid to ``pidfile`` first thing, so a test can check in
/proc that no orphan is left, and exits 0 on SIGINT/SIGTERM/SIGHUP like QEMU
(``terminating on signal N``). It imports only the standard library so that it
starts in a few tens of milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"},
                    "capabilities": []}}
HUGE_BYTES = 50 * 1024 * 1024


# --------------------------------------------------------------------------- the fake emulator (child side)

def _reply_for(cmd: str, args: dict[str, Any]) -> object:
    if cmd == "query-cpus-fast":
        return [{"cpu-index": 0, "qom-path": "/machine/unattached/device[0]", "thread-id": os.getpid(),
                 "target": "x86_64"}]
    if cmd == "query-cpu-model-expansion":
        props = dict((args.get("model") or {}).get("props") or {})
        return {"model": {"name": "base", "props": props}}
    if cmd == "qom-get":
        prop = str(args.get("property"))
        if prop == "unavailable-features":
            return []
        return True
    if cmd == "query-kvm":
        return {"enabled": False, "present": False}
    if cmd == "query-status":
        return {"status": "prelaunch", "running": False, "singlestep": False}
    return {}


def _send(conn: socket.socket, obj: object) -> None:
    conn.sendall(json.dumps(obj).encode() + b"\r\n")


def _misbehave(conn: socket.socket, action: str) -> bool:
    """Do ``action`` on ``conn``; returns False if the connection is finished."""
    if action == "garbage":
        conn.sendall(b"\x00\xff}}{{ this is not json at all ]]\n")
        return True
    if action == "partial-close":
        conn.sendall(b'{"QMP": {"version": {"qemu": {"mic')
        conn.close()
        return False
    if action == "wrong":
        _send(conn, {"hello": "I am not QEMU", "capabilities": 7})
        return True
    if action == "nonewline":
        chunk = b"x" * 65536
        try:
            while True:  # a line that never ends, until the reader gives up and closes
                conn.sendall(chunk)
        except OSError:
            return False
    if action == "huge":
        chunk = b'{"return": "' + b"A" * (HUGE_BYTES - 20) + b'"}\n'
        try:
            conn.sendall(chunk)
        except OSError:
            return False
        return True
    if action == "none" or action == "hang":
        return True
    if action == "close":
        conn.close()
        return False
    if action.startswith("exit:"):
        sys.stderr.write(f"fake-qemu: exiting with status {action[5:]} on purpose\n")
        sys.stderr.flush()
        os._exit(int(action[5:]))
    if action.startswith("kill:"):
        os.kill(os.getpid(), int(action[5:]))
        time.sleep(10)
    raise SystemExit(f"fake-qemu: unknown action {action!r}")


def _serve(conn: socket.socket, cfg: dict[str, Any]) -> None:
    greeting = cfg.get("greeting", "ok")
    if greeting == "ok":
        _send(conn, GREETING)
    elif not _misbehave(conn, greeting):
        return
    commands: dict[str, str] = cfg.get("commands", {})
    markers: dict[str, str] = cfg.get("marker", {})
    buf = b""
    decoder = json.JSONDecoder()
    negotiated = False
    while True:
        try:
            data = conn.recv(65536)
        except OSError:
            return
        if not data:
            return
        buf += data
        while True:  # QMP clients need not end a command with a newline: decode a JSON stream, as QEMU does
            text = buf.decode("utf-8", "replace").lstrip()
            if not text:
                buf = b""
                break
            try:
                msg, end = decoder.raw_decode(text)
            except ValueError:
                break  # incomplete: wait for more
            buf = text[end:].encode()
            if not isinstance(msg, dict):
                continue
            cmd = str(msg.get("execute") or msg.get("exec-oob") or "")
            if cmd in markers:
                Path(markers[cmd]).write_text(str(os.getpid()))
            if cmd == "qmp_capabilities" and not negotiated:
                if greeting != "ok":
                    continue  # a broken monitor never negotiates
                negotiated = True
                reply: dict[str, Any] = {"return": {}}
            else:
                action = commands.get(cmd, commands.get("*", "reply"))
                if action != "reply":
                    if not _misbehave(conn, action):
                        return
                    continue
                reply = {"return": _reply_for(cmd, msg.get("arguments") or {})}
            if "id" in msg:
                reply["id"] = msg["id"]
            _send(conn, reply)
            if cmd == "quit":
                conn.close()
                os._exit(0)


def _log(cfg: dict[str, Any], line: str) -> None:
    if cfg.get("log"):
        with open(cfg["log"], "a") as fh:
            fh.write(line + "\n")


def fake_main(cfg: dict[str, Any]) -> None:
    """Entry point of the fake emulator (runs in the child)."""
    def on_signal(signum: int, frame: object) -> None:
        os.write(2, f"fake-qemu: terminating on signal {signum}\n".encode())
        os._exit(0)

    if cfg.get("signals") == "ignore-term":      # only SIGKILL ends it (the wrapper escalates)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif cfg.get("signals") != "default":        # "default": killed by the signal, like QEMU
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, on_signal)
    pidfile = cfg.get("pidfile")
    if pidfile:
        # After the handlers: tests take the file's existence as "the fake runs and handles its signals" (a
        # signal sent before that killed the Python fake without its "terminating" line). Atomically (write
        # aside, rename): a fake killed between write_text's create and write left an empty file
        # (test_startup_faults[no-socket] failed so under a loaded full-suite run: "fake-qemu.pid never written").
        tmp = f"{pidfile}.{os.getpid()}.tmp"
        Path(tmp).write_text(str(os.getpid()))
        os.replace(tmp, pidfile)
    argv = sys.argv[1:]
    path = None
    for i, arg in enumerate(argv[:-1]):
        if arg == "-qmp" and argv[i + 1].startswith("unix:"):
            path = argv[i + 1][5:].split(",", 1)[0]
    if "stderr_flood" in cfg:  # megabytes of chatter, then the line that matters
        line = b"fake-qemu: chatter " + b"z" * 1000 + b"\n"
        for _ in range(int(cfg["stderr_flood"]) * 1024 * 1024 // len(line)):
            os.write(2, line)
        os.write(2, b"fake-qemu: last words\n")
    if "exit_before" in cfg:
        sys.stderr.write("fake-qemu: cannot start: broken on purpose\n")
        sys.stderr.flush()
        os._exit(int(cfg["exit_before"]))
    time.sleep(float(cfg.get("startup_delay", 0)))
    if path is None:
        time.sleep(3600)
        return
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{path}.{os.getpid()}.tmp"
    srv.bind(tmp)
    srv.listen(4)
    os.rename(tmp, path)
    _log(cfg, "listening")
    while True:  # like QEMU: the monitor keeps listening after a client leaves
        conn, _ = srv.accept()
        try:
            _serve(conn, cfg)
        except OSError:
            pass
        finally:
            conn.close()
            _log(cfg, "served")


def make_fake(directory: Path, name: str = "fake-qemu", **cfg: Any) -> tuple[str, Path]:
    """Write an executable fake emulator configured by ``cfg``; returns (path, pidfile)."""
    pidfile = directory / f"{name}.pid"
    cfg = {"pidfile": str(pidfile), **cfg}
    script = directory / name
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "import json\n"
        "from fault_helpers import fake_main\n"
        f"fake_main(json.loads({json.dumps(cfg)!r}))\n"
    )
    script.chmod(0o755)
    return str(script), pidfile


# The two waits below are bounded generously (like proc_helpers.PATIENCE; this module stays import-free for
# the fake): they end as soon as the file is there, the bound only fails a test that would otherwise hang.

def log_lines(path: Path) -> list[str]:
    """The lines the fake wrote to its ``log`` so far (none yet: empty)."""
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def read_pid(pidfile: Path, timeout: float = 120.0) -> int:
    """The pid the fake wrote (waits for it, bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = pidfile.read_text().strip()
            if text:
                return int(text)
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"{pidfile} never written")


def wait_for_file(path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.01)


if __name__ == "__main__":  # pragma: no cover - manual use: python fault_helpers.py '{"greeting": "none"}' -qmp ...
    fake_main(json.loads(sys.argv.pop(1)))
