"""Issue 14 class 1: one output primitive for every writer.

Every writer (``report --out``, ``host import -o``, ``qemu-evmcs-launch --report-json``, ``make-fleet``)
must refuse, even with ``--force``, a path that is a device node, a FIFO, a socket or a symlink (dangling
or not), and must leave it exactly as it was: before, ``--out /dev/null --force`` replaced the device with
a regular file. The device here is a private copy of /dev/null (major 1, minor 3, made with mknod as root;
without root the FIFO and the symlink cases still run).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import Run, cli_runner
from fault_helpers import make_fake

from qemu_evmcs.core.profile import bundled_profile_dir, load_profile
from qemu_evmcs.output.atomicio import check_output_target, write_output
from qemu_evmcs.core.errors import InputError

SAMPLE = str(Path(bundled_profile_dir()) / "skylake-5.10.yaml")
RDMSR = "".join(f"{n} 0x{v:x}\n" for n, v in load_profile(SAMPLE).msrs.items())
MAKE_FLEET = Path(__file__).resolve().parent.parent / "scripts" / "make-fleet"


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    return cli_runner(capsys, monkeypatch, ["host", "report", "fleet"])


def _fifo(d: Path) -> Path:
    p = d / "fifo"
    os.mkfifo(p)
    return p


def _device(d: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    p = d / "null"
    os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return p


def _socket(d: Path) -> Path:
    p = d / "sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))
    s.close()
    return p


def _symlink(d: Path) -> Path:
    (d / "target").write_text("do not touch\n")
    p = d / "link"
    p.symlink_to(d / "target")
    return p


def _dangling(d: Path) -> Path:
    p = d / "dangling"
    p.symlink_to(d / "nowhere")
    return p


KINDS: dict[str, Callable[[Path], Path]] = {"fifo": _fifo, "device": _device, "socket": _socket,
                                            "symlink": _symlink, "dangling symlink": _dangling}


def _snapshot(d: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry of ``d`` (lstat mode and rdev, link target): what must be unchanged."""
    out = {}
    for n in os.listdir(d):
        st = os.lstat(d / n)
        out[n] = (st.st_mode, st.st_rdev, os.readlink(d / n) if stat.S_ISLNK(st.st_mode) else "")
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_primitive_refuses_non_regular_targets_even_with_force(kind: str, tmp_path: Path) -> None:
    target = KINDS[kind](tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(InputError, match="refusing to replace it"):
        write_output(str(target), "x\n", force=True)
    assert _snapshot(tmp_path) == before
    if kind == "symlink":
        assert (tmp_path / "target").read_text() == "do not touch\n"


@pytest.mark.parametrize("kind", list(KINDS))
def test_cli_writers_refuse_non_regular_targets(kind: str, run: Run, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    target = KINDS[kind](d)
    src = tmp_path / "dump.txt"
    src.write_text(RDMSR)
    before = _snapshot(d)
    rc, _, err = run("host", "import", str(src), "--name", "n", "--kernel", "6.1", "-o", str(target), "--force")
    assert rc == 2 and err.startswith(f"error: {target}: is a ") and "refusing to replace it" in err, err
    rc, _, err = run("report", "--hosts", SAMPLE, "--out", str(target), "--force")
    assert rc == 2 and err.startswith(f"error: {target}: is a ") and "refusing to replace it" in err, err
    assert _snapshot(d) == before


def test_empty_and_uncreatable_output_paths_are_one_error_line(run: Run, tmp_path: Path) -> None:
    # Found by the verifier: `fleet plan --out-dir ""` (and an --out-dir whose parent cannot hold it) was a
    # FileNotFoundError traceback; `host import -o ""` wrote to stdout, `report --out ""` said "error: cannot
    # write: ..." naming no file. An empty output path (an unset shell variable) is refused like fleet import's.
    src = tmp_path / "dump.txt"
    src.write_text(RDMSR)
    db = str(tmp_path / "f.db")
    assert run("fleet", "import", "--db", db, SAMPLE)[0] == 0
    for argv in (["host", "import", str(src), "--name", "n", "--kernel", "6.1", "-o", ""],
                 ["report", "--hosts", SAMPLE, "--out", ""],
                 ["fleet", "plan", "--db", db, "--format", "libvirt", "--out-dir", ""]):
        rc, out, err = run(*argv)
        assert (rc, out) == (2, "") and err.startswith("error: ") and "empty path" in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err
    rc, out, err = run("fleet", "plan", "--db", db, "--format", "libvirt", "--out-dir", "/proc/no-such-dir")
    assert rc == 2 and err.startswith("error: /proc/no-such-dir: cannot create the directory") and "\n" not in err[:-1]


def test_make_fleet_refuses_non_regular_targets(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path)
    link = _dangling(tmp_path)
    before = _snapshot(tmp_path)
    for out in (fifo, link):
        r = subprocess.run([sys.executable, str(MAKE_FLEET), "--count", "3", "--out", str(out), "--force"],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 2 and "refusing to replace it" in r.stderr, r.stderr
    assert _snapshot(tmp_path) == before


def test_wrapper_report_json_refuses_a_fifo_before_starting(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    fake, pidfile = make_fake(tmp_path)
    fifo = _fifo(tmp_path)
    r = subprocess.run([sys.executable, "-m", "qemu_evmcs.launch.wrapper", "--emulator", fake, "--report-json",
                        str(fifo), "--force", "-cpu", "qemu64,vmx=on"], capture_output=True, text=True,
                       env=dict(os.environ, XDG_RUNTIME_DIR=str(xdg)), timeout=60, check=False)
    assert r.returncode == 2 and r.stderr.startswith(f"error: --report-json {fifo}: is a FIFO"), r.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not pidfile.exists()


def test_regular_file_needs_force_and_a_swap_before_rename_is_caught(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.write_text("old\n")
    with pytest.raises(InputError, match="already exists; pass --force"):
        write_output(str(out), "new\n", force=False)
    write_output(str(out), "new\n", force=True)
    assert out.read_text() == "new\n"
    # The target is swapped for a FIFO while the content is written: the final check refuses the rename.
    def writer(fh: object) -> None:
        out.unlink()
        os.mkfifo(out)
    with pytest.raises(InputError, match="is a FIFO"):
        write_output(str(out), writer, force=True)
    assert stat.S_ISFIFO(os.lstat(out).st_mode) and sorted(os.listdir(tmp_path)) == ["out"]
    check_output_target(str(tmp_path / "absent"), force=False)  # absent: fine
