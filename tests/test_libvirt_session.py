"""The real libvirt 9.0 (``qemu:///session``, unprivileged user, TCG domain) with plain QEMU and with
``qemu-evmcs-launch`` as ``<emulator>``.

Marked ``libvirt``. Skips with the reason where the daemon cannot be used; FAILS with CI=true
(see :mod:`libvirt_helpers`, which also says what the session daemon needs).

Expectations come from libvirt and QEMU themselves: the domain state ``virsh domstate`` reports, the
command line the kernel shows for the QEMU process, libvirt's own error text, and the files left behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from libvirt_helpers import QEMU, Session, cmdline, domain_xml, pid_alive, processes_of_guest, read_json, \
    session_fixture, wait_for

pytestmark = pytest.mark.libvirt

#: A CPU of libvirt 9.0's cpu_map with VMX and the three Hyper-V flags eVMCS needs (hand-written: this test
#: checks the wrapper, not our fragment).
CPU = ("<cpu mode='custom' match='exact'><model fallback='forbid'>Skylake-Server-noTSX-IBRS</model>"
       "<feature policy='require' name='vmx'/></cpu>"
       "<features><acpi/><hyperv mode='custom'><relaxed state='on'/><vapic state='on'/><evmcs state='on'/>"
       "</hyperv></features>")


@pytest.fixture(scope="module")
def sess() -> Iterator[Session]:
    yield from session_fixture()


def _create(sess: Session, name: str, xml: str) -> None:
    path = Path(sess.stage, f"{name}.xml")
    path.write_text(xml)
    path.chmod(0o644)
    sess.virsh("create", str(path), "--paused")


def _wrapper_runtime_dir(argv: list[str]) -> str:
    """The wrapper's private QMP directory, from the ``-qmp unix:DIR/qmp.sock,...`` it appended."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "-qmp" and argv[i + 1].startswith("unix:"):
            return os.path.dirname(argv[i + 1][len("unix:"):].split(",", 1)[0])
    raise AssertionError(f"no wrapper -qmp in {argv}")


def _destroy_and_check_gone(sess: Session, name: str, pids: list[int], leftovers: list[str]) -> None:
    sess.virsh("destroy", name)
    for pid in pids:
        wait_for(lambda pid=pid: not pid_alive(pid), f"process {pid} of {name} to exit")  # type: ignore[misc]
    assert processes_of_guest(name) == []
    for path in leftovers:
        assert not os.path.lexists(path), f"{path} left behind after destroy"


def test_plain_qemu_domain_starts_paused(sess: Session) -> None:
    name = "evmcs-plain"
    _create(sess, name, domain_xml(name, cpu_fragment=CPU))
    assert sess.virsh("domstate", name).stdout.strip() == "paused"
    pid = sess.domain_pid(name)
    assert cmdline(pid)[0] == QEMU
    _destroy_and_check_gone(sess, name, [pid], [])


def test_wrapper_as_emulator_starts_verifies_and_cleans_up(sess: Session) -> None:
    name = "evmcs-wrapped"
    report = os.path.join(sess.reports, "{guest}.json")
    xml = domain_xml(name, emulator=sess.wrapper, cpu_fragment=CPU,
                     env={"QEMU_EVMCS_REPORT_JSON": report, "QEMU_EVMCS_FORCE": "yes"})
    _create(sess, name, xml)
    assert sess.virsh("domstate", name).stdout.strip() == "paused"
    wrapper_pid = sess.domain_pid(name)   # libvirt's pid file names the process it started: the wrapper
    assert "qemu_evmcs.launch" in cmdline(wrapper_pid)
    qemu_pids = [p for p in processes_of_guest(name) if p != wrapper_pid]
    assert len(qemu_pids) == 1
    qemu_argv = cmdline(qemu_pids[0])
    assert qemu_argv[0] == QEMU
    # libvirt's monitor is a descriptor it passed down (the failure this fixes: "fd=23 is not a socket")...
    chardev = next(a for a in qemu_argv if a.startswith("socket,id=charmonitor"))
    fd = chardev.split("fd=", 1)[1].split(",", 1)[0]
    assert os.readlink(f"/proc/{qemu_pids[0]}/fd/{fd}").startswith("socket:")
    # ... and the wrapper's own monitor sits beside it.
    runtime_dir = _wrapper_runtime_dir(qemu_argv)
    assert os.path.exists(os.path.join(runtime_dir, "qmp.sock"))
    # libvirt's own QMP still answers through its monitor.
    assert sess.virsh("qemu-monitor-command", name, '{"execute":"query-status"}').returncode == 0
    path = os.path.join(sess.reports, f"{name}.json")
    wait_for(lambda: os.path.exists(path), f"the wrapper's report {path}")
    data = read_json(path)
    assert isinstance(data, dict)
    text = str(data)
    for opt in ("hv-evmcs", "hv-vapic", "hv-relaxed", "vmx"):
        assert opt in text
    log = sess.log(name)
    assert "qemu-evmcs-launch: cpu Skylake-Server-noTSX-IBRS" in log
    _destroy_and_check_gone(sess, name, [wrapper_pid, qemu_pids[0]], [runtime_dir])


def test_check_refusal_reaches_libvirts_error(sess: Session) -> None:
    """--check from a config file (``QEMU_EVMCS_LAUNCH_CONF``) on a host without nested VMX: the wrapper refuses
    before QEMU starts, and ``virsh create`` fails quoting the wrapper's error line from QEMU's stderr log."""
    name = "evmcs-refused"
    conf = Path(sess.stage, "launch.conf")
    conf.write_text("# hand-written for the test\ncheck = yes\nhost = skylake-nested-off-6.1\n")
    conf.chmod(0o644)
    xml = domain_xml(name, emulator=sess.wrapper, cpu_fragment=CPU, env={"QEMU_EVMCS_LAUNCH_CONF": str(conf)})
    path = Path(sess.stage, f"{name}.xml")
    path.write_text(xml)
    path.chmod(0o644)
    proc = sess.virsh("create", str(path), "--paused", check=False)
    assert proc.returncode != 0
    assert "error: --check:" in proc.stderr
    assert processes_of_guest(name) == []
