"""Security properties: private QMP socket directory, refused unsafe runtime directories, no shell, safe YAML
only, and atomic, non-clobbering file output."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import Run, cli_runner
from fault_helpers import make_fake, read_pid
from proc_helpers import wait_dead

import qemu_evmcs
from qemu_evmcs.hostio import probe as probe_mod
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.launch.process import check_runtime_parent, default_runtime_parent
from qemu_evmcs.launch.qmp import EmulatorSession
from qemu_evmcs.core.profile import bundled_profile_dir, load_profile

PKG = Path(qemu_evmcs.__file__).parent
SOURCES = sorted(PKG.rglob("*.py"))
SAMPLE = str(Path(bundled_profile_dir()) / "skylake-5.10.yaml")
RDMSR = "".join(f"{n} 0x{v:x}\n" for n, v in load_profile(SAMPLE).msrs.items())

@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    return cli_runner(capsys, monkeypatch, ["host"])


# --------------------------------------------------------------------------- runtime directory

async def test_socket_directory_private_while_running(tmp_path: Path) -> None:
    parent = tmp_path / "run"
    parent.mkdir(mode=0o700)
    fake, pidfile = make_fake(tmp_path)
    old = os.umask(0)  # even with a permissive umask
    try:
        async with EmulatorSession([fake], runtime_dir=str(parent)) as s:
            assert s.runtime_dir is not None and s.socket_path is not None
            st = os.stat(s.runtime_dir)
            assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
            assert os.path.dirname(s.socket_path) == s.runtime_dir
            assert stat.S_ISSOCK(os.stat(s.socket_path).st_mode)
            assert await s.execute("query-status")
    finally:
        os.umask(old)
    assert wait_dead(read_pid(pidfile)) and os.listdir(parent) == []


@pytest.mark.parametrize("mode", [0o770, 0o730, 0o707, 0o777, 0o702, 0o1777])
async def test_writable_runtime_parent_refused(mode: int, tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(mode)
    fake, pidfile = make_fake(tmp_path)
    with pytest.raises(InputError, match="group- or world-writable"):
        async with EmulatorSession([fake], runtime_dir=str(d)):
            pass
    assert os.listdir(d) == [] and not pidfile.exists()  # refused before anything was started


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a directory to nobody")
async def test_foreign_runtime_parent_refused(tmp_path: Path) -> None:
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    fake, pidfile = make_fake(tmp_path)
    with pytest.raises(InputError, match=f"owned by uid 65534, not by uid {os.geteuid()}"):
        async with EmulatorSession([fake], runtime_dir=str(d)):
            pass
    assert os.listdir(d) == [] and not pidfile.exists()


def test_runtime_parent_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="No such file"):
        check_runtime_parent(str(tmp_path / "missing"))
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(InputError, match="not a directory"):
        check_runtime_parent(str(f))
    # An unsafe $XDG_RUNTIME_DIR is not used: the default falls back to the system temp dir.
    bad = tmp_path / "xdg"
    bad.mkdir()
    bad.chmod(0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(bad))
    assert default_runtime_parent() != str(bad)
    bad.chmod(0o700)
    assert default_runtime_parent() == str(bad)


# --------------------------------------------------------------------------- no shell, safe YAML (source greps)

def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Source lines without comments (docstrings may mention the forbidden names)."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        if code.strip():
            out.append((i, code))
    return out


SHELL = re.compile(r"shell\s*=\s*True|\bos\.system\s*\(|\bos\.popen\s*\(|subprocess\.getoutput\s*\(|"
                   r"subprocess\.getstatusoutput\s*\(|\bos\.exec[lv]p?e?\s*\(\s*['\"]/bin/sh")
UNSAFE_YAML = re.compile(r"yaml\.unsafe_load|yaml\.full_load|yaml\.load_all\s*\(|Loader\s*=\s*yaml\.Loader\b|"
                         r"UnsafeLoader|FullLoader|Loader\s*=\s*Loader\b|yaml\.Loader\s*\(")
YAML_LOAD = re.compile(r"yaml\.load\s*\(")


def test_sources_found() -> None:
    assert len(SOURCES) > 10 and PKG / "launch" / "qmp.py" in SOURCES


def test_no_shell_is_ever_invoked() -> None:
    hits = [f"{p.relative_to(PKG)}:{i}: {c.strip()}" for p in SOURCES for i, c in _code_lines(p) if SHELL.search(c)]
    assert hits == []


def _safe_loader_names(lines: list[tuple[int, str]], imported: frozenset[str] = frozenset()) -> set[str]:
    """Names a file binds to a safe loader: ``X = ...SafeLoader...`` or ``class X(...SafeLoader)``, transitively
    (starting from ``imported``: safe loaders it imports from the package)."""
    names = {"SafeLoader", "CSafeLoader", "yaml.SafeLoader", "yaml.CSafeLoader"} | set(imported)
    changed = True
    while changed:
        changed = False
        for _, c in lines:
            m = re.match(r"\s*(?:class\s+(\w+)\s*\((.*)\)\s*:|(\w+)\s*(?::[^=]+)?=\s*(.+))", c)
            if not m:
                continue
            name, rhs = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            if name not in names and re.search(r"SafeLoader", rhs) and not re.search(r"\bLoader\b|Full|Unsafe", rhs):
                names.add(name)
                changed = True
            elif name not in names and rhs.strip() in names:
                names.add(name)
                changed = True
    return names


def _imported_safe_names(lines: list[tuple[int, str]], package_safe: set[str]) -> set[str]:
    """Names a file imports from the package (``from qemu_evmcs.x import A, B``) that the package binds to a
    safe loader (in the file that defines them)."""
    out: set[str] = set()
    for _, c in lines:
        m = re.match(r"\s*from\s+qemu_evmcs[\w.]*\s+import\s+(.+)", c)
        if m:
            out |= {n.strip() for n in m.group(1).strip("()").split(",")} & package_safe
    return out


def test_yaml_only_loaded_with_safe_loaders() -> None:
    hits = []
    package_safe = set().union(*(_safe_loader_names(_code_lines(p)) for p in SOURCES))
    for p in SOURCES:
        lines = _code_lines(p)
        safe = _safe_loader_names(lines, frozenset(_imported_safe_names(lines, package_safe)))
        for i, c in lines:
            loaders = re.findall(r"Loader\s*=\s*([\w.]+)", c)
            if UNSAFE_YAML.search(c) or (YAML_LOAD.search(c) and not loaders) or any(x not in safe for x in loaders):
                hits.append(f"{p.relative_to(PKG)}:{i}: {c.strip()}")
    assert hits == []


def test_grep_patterns_would_catch_offenders() -> None:
    for bad in ("subprocess.run(cmd, shell=True)", "os.system('ls')", "os.popen(x)", "subprocess.getoutput(c)"):
        assert SHELL.search(bad), bad
    for bad in ("yaml.unsafe_load(t)", "yaml.full_load(t)", "yaml.load(t, Loader=yaml.Loader)",
                "yaml.load(t, Loader=yaml.FullLoader)", "yaml.load(t, Loader=yaml.UnsafeLoader)"):
        assert UNSAFE_YAML.search(bad) or (YAML_LOAD.search(bad) and "SafeLoader" not in bad), bad
    assert not UNSAFE_YAML.search("yaml.load(t, Loader=yaml.CSafeLoader)")
    lines = list(enumerate(["_L: Any = getattr(yaml, 'CSafeLoader', yaml.SafeLoader)", "class P(yaml.SafeLoader):",
                            "_U = yaml.FullLoader", "class Q(_L):"], 1))
    assert _safe_loader_names(lines) >= {"_L", "P", "Q"} and "_U" not in _safe_loader_names(lines)


# --------------------------------------------------------------------------- atomic, non-clobbering output

def _stray_temp_files(d: Path) -> list[str]:
    return [n for n in os.listdir(d) if n.startswith(".qemu-evmcs-") or ".tmp" in n]


def test_host_import_output_refuses_overwrite_and_is_atomic(run: Run, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "dump.txt"
    src.write_text(RDMSR)
    out = tmp_path / "out.yaml"
    out.write_text("precious\n")
    rc, _, err = run("host", "import", str(src), "--name", "n", "--kernel", "6.1", "-o", str(out))
    assert (rc, err) == (2, f"error: {out}: already exists; pass --force to overwrite\n")
    assert out.read_text() == "precious\n"
    # A failure half-way (here: the rename) leaves the old file intact and no temporary file behind.
    real_replace = os.replace

    def failing_replace(a: str, b: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    rc, _, err = run("host", "import", str(src), "--name", "n", "--kernel", "6.1", "-o", str(out), "--force")
    assert (rc, err) == (2, f"error: {out}: cannot write: No space left on device\n")
    assert out.read_text() == "precious\n" and _stray_temp_files(tmp_path) == []
    monkeypatch.setattr(os, "replace", real_replace)
    rc, _, err = run("host", "import", str(src), "--name", "n", "--kernel", "6.1", "-o", str(out), "--force")
    assert (rc, err) == (0, "")
    assert load_profile(str(out)).name == "n" and _stray_temp_files(tmp_path) == []


def test_output_symlink_is_refused_not_followed(run: Run, tmp_path: Path) -> None:
    """A symlink is not a regular file: refused even with --force (replacing /dev/stdout is no better than
    writing through it); the file it points to is untouched."""
    src = tmp_path / "dump.txt"
    src.write_text(RDMSR)
    target = tmp_path / "target"
    target.write_text("do not touch\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    for extra in ((), ("--force",)):
        rc, _, err = run("host", "import", str(src), "--name", "n", "--kernel", "6.1", "-o", str(link), *extra)
        assert (rc, err) == (2, f"error: {link}: is a symbolic link, not a regular file; refusing to replace it\n")
    assert target.read_text() == "do not touch\n" and link.is_symlink()


def test_host_show_writes_nothing(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run("host", "show", SAMPLE)
    assert rc == 0 and out and os.listdir(tmp_path) == []


def test_host_probe_output_refuses_overwrite(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load_profile(SAMPLE)

    class Result:
        def __init__(self) -> None:
            self.profile = profile

        def to_mapping(self) -> dict[str, object]:
            return {"profile": profile.to_mapping()}

    monkeypatch.setattr(probe_mod, "probe", lambda device, name=None: Result())  # what host_cmd calls
    out = tmp_path / "probe.yaml"
    out.write_text("precious\n")
    rc, _, err = run("host", "probe", "-o", str(out))
    assert (rc, err) == (2, f"error: {out}: already exists; pass --force to overwrite\n")
    assert out.read_text() == "precious\n"
    rc, _, err = run("host", "probe", "-o", str(out), "--force", "--json")
    assert (rc, err) == (0, "") and '"profile"' in out.read_text() and _stray_temp_files(tmp_path) == []


def test_wrapper_report_json_refuses_overwrite(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(xdg))
    fake, pidfile = make_fake(tmp_path)
    report = tmp_path / "out" / "report.json"
    report.parent.mkdir()
    report.write_text("precious\n")
    report.chmod(0o640)
    before_mode = 0o640
    cmd = [sys.executable, "-m", "qemu_evmcs.launch.wrapper", "--emulator", fake, "--report-json", str(report)]
    r = subprocess.run([*cmd, "-cpu", "qemu64,vmx=on"], capture_output=True, text=True, env=env, timeout=30,
                       check=False)
    assert (r.returncode, r.stderr) == (2, f"error: --report-json {report}: already exists; pass --force "
                                           "to overwrite\n")
    assert report.read_text() == "precious\n" and not pidfile.exists()  # refused before starting anything
    # With --force: replaced atomically once verification is done (the fake then quits via its own monitor).
    proc = subprocess.Popen([*cmd[:3], "--force", *cmd[3:], "-cpu", "qemu64,vmx=on"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, env=env)
    try:
        from proc_helpers import read_until
        read_until(proc, b"requested vmx/hv options applied")
        proc.terminate()
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert '"cpu_arg": "qemu64,vmx=on"' in report.read_text()
    assert os.listdir(report.parent) == ["report.json"]
    assert stat.S_IMODE(report.stat().st_mode) == before_mode  # --force keeps the replaced file's bits
    assert wait_dead(read_pid(pidfile)) and os.listdir(xdg) == []
