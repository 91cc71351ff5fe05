"""The wrapper as libvirt runs it: options from the environment and launch.conf, inherited descriptors,
capability probes passed through. The real-libvirt counterpart is tests/test_libvirt_session.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from launch_helpers import qemu_path

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.launch.config import conf_paths, expand_report_path, guest_name, load_settings, parse_conf, read_conf
from qemu_evmcs.launch.wrapper import apply_settings, is_probe, parse_wrapper_args

#: libvirt 9.0's capability probe, as it runs the emulator (qemuProcessQMPInit; seen in its logs).
LIBVIRT_PROBE = ["-S", "-no-user-config", "-nodefaults", "-nographic", "-machine", "none,accel=kvm:tcg",
                 "-qmp", "unix:/tmp/x/qmp.monitor,server=on,wait=off", "-pidfile", "/tmp/x/qmp.pid", "-daemonize"]


def test_conf_parse_and_errors() -> None:
    got = parse_conf("# comment\n\nhost = skylake-6.3\ncheck=yes\nreport-json = /r/{guest}.json\n", "f.conf")
    assert {k: (v.value, v.line) for k, v in got.items()} == {
        "host": ("skylake-6.3", 3), "check": ("yes", 4), "report-json": ("/r/{guest}.json", 5)}
    with pytest.raises(InputError) as exc:
        parse_conf("host = a\nhots = b\n", "/etc/qemu-evmcs/launch.conf")
    assert str(exc.value).startswith("/etc/qemu-evmcs/launch.conf:2: hots: unknown key")
    with pytest.raises(InputError, match=r"f:1: expected 'key = value'"):
        parse_conf("check\n", "f")
    with pytest.raises(InputError, match=r"f:1: host: empty value"):
        parse_conf("host =\n", "f")


def test_precedence_file_env_command_line(tmp_path: Path) -> None:
    conf = tmp_path / "launch.conf"
    conf.write_text("host = from-file\ncheck = yes\nqmp-timeout = 30\n")
    env = {"QEMU_EVMCS_LAUNCH_CONF": str(conf), "QEMU_EVMCS_HOST": "from-env", "QEMU_EVMCS_CHECK": "no"}
    opts = parse_wrapper_args(["--host", "from-cli", "-cpu", "max"])
    apply_settings(opts, load_settings(env))
    assert (opts.host, opts.check, opts.qmp_timeout) == ("from-cli", False, 30.0)
    opts = parse_wrapper_args(["-cpu", "max"])
    apply_settings(opts, load_settings(env))
    assert opts.host == "from-env"
    conf.write_text("check = maybe\n")
    opts = parse_wrapper_args(["-cpu", "max"])
    with pytest.raises(InputError, match=r"launch.conf:1: check: 'maybe' is not a boolean"):
        apply_settings(opts, load_settings({"QEMU_EVMCS_LAUNCH_CONF": str(conf)}))


def test_a_named_conf_that_is_missing_or_a_dangling_link_is_refused(tmp_path: Path) -> None:
    # Found by the verifier: QEMU_EVMCS_LAUNCH_CONF=/typo (or a dangling symlink) was silently an empty
    # configuration, so a "check = yes" the user meant to apply never ran. The default files may be absent.
    with pytest.raises(InputError, match=r"QEMU_EVMCS_LAUNCH_CONF.*no such file"):
        load_settings({"QEMU_EVMCS_LAUNCH_CONF": str(tmp_path / "typo.conf")})
    link = tmp_path / "launch.conf"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(InputError, match=r"dangling symbolic link"):
        load_settings({"QEMU_EVMCS_LAUNCH_CONF": str(link)})
    assert read_conf(str(tmp_path / "absent-default.conf")) == {}   # a default file that does not exist: none


def test_user_conf_from_xdg_or_passwd_home(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "qemu-evmcs").mkdir(parents=True)
    assert conf_paths({"XDG_CONFIG_HOME": str(xdg)})[1].startswith(os.path.expanduser("~"))  # no file there
    (xdg / "qemu-evmcs" / "launch.conf").write_text("check = yes\n")
    assert conf_paths({"XDG_CONFIG_HOME": str(xdg)}) == ["/etc/qemu-evmcs/launch.conf",
                                                         str(xdg / "qemu-evmcs" / "launch.conf")]


def test_report_path_names_the_guest() -> None:
    args = ["-name", "guest=win/11,debug-threads=on", "-cpu", "max"]
    assert guest_name(args) == "win_11"
    assert guest_name(["-name", "plain"]) == "plain"
    assert guest_name([]) == "qemu"
    assert expand_report_path("/r/{guest}-{pid}.json", args) == f"/r/win_11-{os.getpid()}.json"


def test_libvirt_probes_are_probes() -> None:
    assert is_probe(LIBVIRT_PROBE)
    assert is_probe(["-machine", "none", "-cpu", "max"])
    assert is_probe(["-cpu", "help"])
    assert not is_probe(["-machine", "pc", "-cpu", "max"])


def test_probe_execs_the_emulator_despite_config(tmp_path: Path) -> None:
    """With --check and a missing host profile configured, a probe still runs the emulator untouched."""
    fake = tmp_path / "fake-qemu"
    fake.write_text("#!/bin/sh\necho \"fake $*\"\n")
    fake.chmod(0o755)
    env = dict(os.environ, QEMU_EVMCS_CHECK="yes", QEMU_EVMCS_HOST="no-such-profile",
               QEMU_EVMCS_EMULATOR=str(fake))
    proc = subprocess.run([sys.executable, "-m", "qemu_evmcs.launch", *LIBVIRT_PROBE], env=env,
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "fake " + " ".join(LIBVIRT_PROBE) + "\n", "")
    # Not a probe: the configured check runs, and the bad profile is the one error line (exit 2).
    proc = subprocess.run([sys.executable, "-m", "qemu_evmcs.launch", "-cpu", "max"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --host: no such host profile 'no-such-profile'")


def test_inherited_fds_are_the_parents_only() -> None:
    a, b = socket.socketpair()
    try:
        code = "from qemu_evmcs.launch.fds import inherited_fds; import os; f=open(os.devnull); print(inherited_fds())"
        proc = subprocess.run([sys.executable, "-c", code], pass_fds=[a.fileno()], capture_output=True,
                              text=True, timeout=60, check=True)
        assert proc.stdout.strip() == f"({a.fileno()},)"
    finally:
        a.close()
        b.close()


def _recv_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.qemu
def test_wrapper_hands_an_inherited_monitor_socket_to_qemu(tmp_path: Path) -> None:
    """What libvirt does: listen on a socket, pass it as ``-chardev socket,fd=N``; the monitor must answer
    there (with close_fds=True QEMU said ``File descriptor 'N' is not a socket``)."""
    qemu = qemu_path()
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # tmp_path can exceed sun_path's 108 bytes
        path = os.path.join(short, "mon.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        fd = listener.fileno()
        args = ["--emulator", qemu, "-accel", "tcg", "-machine", "pc", "-nodefaults", "-display", "none", "-S",
                "-cpu", "qemu64,vmx=on", "-chardev", f"socket,id=charmonitor,fd={fd},server=on,wait=off",
                "-mon", "chardev=charmonitor,id=monitor,mode=control"]
        proc = subprocess.Popen([sys.executable, "-m", "qemu_evmcs.launch", *args], pass_fds=[fd],
                                stderr=subprocess.PIPE, text=True)
        listener.close()
        try:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.settimeout(60)
            client.connect(path)
            greeting = client.recv(4096)
            assert b'"QMP"' in greeting
            client.sendall(b'{"execute":"qmp_capabilities"}\n')
            assert b'"return"' in _recv_line(client)
            assert proc.stderr is not None
            seen: list[str] = []
            while not seen or not seen[-1].startswith("qemu-evmcs-launch: cpu qemu64"):  # the wrapper's report
                line = proc.stderr.readline()
                assert line, f"stderr ended before the wrapper's report: {seen}"
                seen.append(line)
            client.sendall(b'{"execute":"quit"}\n')
            assert b'"host-qmp-quit"' in _recv_line(client)  # QEMU's SHUTDOWN event: it obeyed our monitor
            client.close()
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
