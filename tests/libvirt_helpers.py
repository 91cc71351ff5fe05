"""Run the real libvirt (``qemu:///session``) as an unprivileged user, for the libvirt integration tests.

What the session daemon needs (found by trying libvirt 9.0 on Debian 12):

- an unprivileged user: as root, ``qemu:///session`` is a private root daemon, not what users run. When the
  tests run as root (CI, ``.ci/run``) they use the user named by ``$QEMU_EVMCS_LIBVIRT_USER`` (default
  ``evmcs-libvirt``, which ``.ci/run`` creates) through ``runuser``; otherwise the current user;
- ``XDG_RUNTIME_DIR``: a private 0700 directory owned by that user. ``virsh`` autostarts
  ``libvirtd --timeout=120`` there (``$XDG_RUNTIME_DIR/libvirt/libvirt-sock`` and ``libvirtd.pid``); a fresh
  directory per test module means a fresh daemon, which teardown stops through its pid file;
- ``HOME``: the daemon keeps its state in ``~/.config/libvirt`` and logs each domain's QEMU stderr in
  ``~/.cache/libvirt/qemu/log/NAME.log``;
- a wrapper the user can execute: the checkout and its venv may sit under ``/root`` (mode 0700), so the
  package and its two dependencies (qemu.qmp, PyYAML) are copied to a world-readable directory, and
  ``<emulator>`` is a two-line ``sh`` script running ``python3 -m qemu_evmcs.launch`` there (the same
  ``main()`` as the ``qemu-evmcs-launch`` console script) with an interpreter the user can run.

Where any of that is missing, the tests skip with the reason; with ``CI=true`` they FAIL instead.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from needs import unavailable

import qemu_evmcs

URI = "qemu:///session"
DEFAULT_USER = "evmcs-libvirt"
QEMU = "/usr/bin/qemu-system-x86_64"
PROGRAMS = ("virsh", "libvirtd", "virt-xml-validate")
#: Upper bound for things that happen on their own (a report written, a process gone): a hang guard, not a budget.
EVENT_LIMIT = 60.0


def wait_for(predicate: object, what: str) -> None:
    """Poll ``predicate()`` until true; fail naming ``what`` after :data:`EVENT_LIMIT` (a hang guard)."""
    assert callable(predicate)
    deadline = time.monotonic() + EVENT_LIMIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


class Session:
    """One private ``qemu:///session`` daemon of the test user, and a staged ``qemu-evmcs-launch``."""

    def __init__(self) -> None:
        for prog in PROGRAMS:
            if shutil.which(prog) is None and not os.path.exists(f"/usr/sbin/{prog}"):
                unavailable(f"{prog} not installed (apt-get install libvirt-daemon libvirt-daemon-driver-qemu "
                            "libvirt-clients)")
        if not os.path.exists(QEMU):
            unavailable(f"{QEMU} not installed (apt-get install qemu-system-x86)")
        self.as_root = os.geteuid() == 0
        if self.as_root:
            name = os.environ.get("QEMU_EVMCS_LIBVIRT_USER", DEFAULT_USER)
            try:
                self.pw = pwd.getpwnam(name)
            except KeyError:
                unavailable(f"running as root, and the unprivileged test user {name!r} does not exist "
                            f"(useradd -m {name}, as .ci/run does)")
            if shutil.which("runuser") is None:
                unavailable("runuser not found (util-linux)")
        else:
            self.pw = pwd.getpwuid(os.getuid())
        self.user = self.pw.pw_name
        self.home = self.pw.pw_dir
        if not os.path.isdir(self.home):
            unavailable(f"home directory {self.home} of {self.user} does not exist")
        self.runtime = tempfile.mkdtemp(prefix="evmcs-xdg-")
        self.stage = tempfile.mkdtemp(prefix="evmcs-stage-")
        self.reports = tempfile.mkdtemp(prefix="evmcs-reports-")
        if self.as_root:
            for path in (self.runtime, self.reports):
                os.chown(path, self.pw.pw_uid, self.pw.pw_gid)
        os.chmod(self.runtime, 0o700)
        os.chmod(self.reports, 0o700)
        os.chmod(self.stage, 0o755)
        self.wrapper = self._stage_wrapper()

    # ------------------------------------------------------------------ running things as the user

    def env(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.user, "LOGNAME": self.user, "XDG_RUNTIME_DIR": self.runtime,
                "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin", "LC_ALL": "C"}

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run as the test user in a clean environment."""
        env = [f"{k}={v}" for k, v in self.env().items()]
        if self.as_root:
            return ["runuser", "-u", self.user, "--", "env", "-i", *env, *argv]
        return ["env", "-i", *env, *argv]

    def run(self, argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=300)
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["virsh", "-q", "-c", URI, *args], check=check)

    # ------------------------------------------------------------------ the staged wrapper

    def _interpreter(self) -> str:
        """A Python of this version that the test user can run."""
        want = f"{sys.version_info[0]}.{sys.version_info[1]}"
        for cand in (os.path.realpath(sys.executable), f"/usr/bin/python{want}", "/usr/bin/python3"):
            if not os.path.exists(cand):
                continue
            proc = self.run([cand, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], check=False)
            if proc.returncode == 0 and proc.stdout.strip() == want:
                return cand
        unavailable(f"no Python {want} that {self.user} may run (the wrapper's dependencies are built for it)")
        raise AssertionError("unreachable")

    def _stage_wrapper(self) -> str:
        import qemu.qmp
        import yaml

        lib = Path(self.stage, "lib")
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(Path(qemu_evmcs.__file__).parent, lib / "qemu_evmcs", ignore=ignore)
        shutil.copytree(Path(qemu.qmp.__file__).parent, lib / "qemu" / "qmp", ignore=ignore)
        yaml_dir = Path(yaml.__file__).parent
        shutil.copytree(yaml_dir, lib / "yaml", ignore=ignore)
        if (yaml_dir.parent / "_yaml").is_dir():
            shutil.copytree(yaml_dir.parent / "_yaml", lib / "_yaml", ignore=ignore)
        for root, dirs, files in os.walk(self.stage):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        python = self._interpreter()
        script = Path(self.stage, "qemu-evmcs-launch")
        script.write_text("#!/bin/sh\n"
                          f"PYTHONPATH={lib} PYTHONDONTWRITEBYTECODE=1 exec {python} -m qemu_evmcs.launch \"$@\"\n")
        script.chmod(0o755)
        return str(script)

    # ------------------------------------------------------------------ processes and cleanup

    def daemon_pid(self, daemon: str = "libvirtd") -> int | None:
        """The pid of the session's ``libvirtd`` (or ``virtlogd``, which it starts for QEMU's logs)."""
        try:
            return int(Path(self.runtime, "libvirt", f"{daemon}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def domain_pid(self, name: str) -> int:
        """The pid libvirt started for the running domain (the wrapper's, under the wrapper)."""
        return int(Path(self.runtime, "libvirt", "qemu", "run", f"{name}.pid").read_text().strip())

    def log(self, name: str) -> str:
        try:
            return Path(self.home, ".cache", "libvirt", "qemu", "log", f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        proc = self.virsh("list", "--name", check=False)
        for name in proc.stdout.split():
            self.virsh("destroy", name, check=False)
        for daemon in ("libvirtd", "virtlogd"):
            pid = self.daemon_pid(daemon)
            if pid is not None and pid_alive(pid):
                self.run(["kill", str(pid)], check=False)
                wait_for(lambda pid=pid: not pid_alive(pid), f"{daemon} {pid} to exit")
        for path in (self.runtime, self.stage, self.reports):
            shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def processes_of_guest(name: str) -> list[int]:
    """Every live process whose command line carries ``guest=NAME`` (QEMU, and the wrapper above it)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and pid_alive(int(entry)):
            if any(arg.startswith(f"guest={name},") or arg == f"guest={name}" for arg in cmdline(int(entry))):
                out.append(int(entry))
    return out


def domain_xml(name: str, *, emulator: str = QEMU, cpu_fragment: str = "", env: dict[str, str] | None = None,
               extra_devices: str = "") -> str:
    """A small TCG domain (``type='qemu'``): 64 MiB, one vCPU, no disks; ``cpu_fragment`` goes in verbatim."""
    qemu_ns = " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'" if env else ""
    envs = "".join(f"<qemu:env name='{k}' value='{v}'/>" for k, v in (env or {}).items())
    cmdl = f"<qemu:commandline>{envs}</qemu:commandline>" if env else ""
    return (f"<domain type='qemu'{qemu_ns}><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"{cpu_fragment}"
            f"<devices><emulator>{emulator}</emulator>{extra_devices}</devices>{cmdl}</domain>")


def read_json(path: str) -> object:
    return json.loads(Path(path).read_text())


def session_fixture() -> Iterator[Session]:
    """Body of the module-scoped fixture: one daemon per test module, always stopped."""
    sess = Session()
    try:
        yield sess
    finally:
        sess.close()
