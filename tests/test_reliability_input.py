"""Issue 14 class 2: every reader of user files refuses non-regular files and caps what it reads.

Before, ``fleet import --db z.db /dev/zero`` grew past 23 GB (the streaming loader kept appending to a
document that never ended), a directory holding a symlink to /dev/zero did the same, and a FIFO made every
reader block in ``open()`` for good. Each command runs in a child process so that a regression shows as a
failure (the hang guard is 120 s, far above the ~1 s these take; it is a guard, not a budget).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.inputfile import read_capped
from qemu_evmcs.core.profile import bundled_profile_dir

SAMPLE = Path(bundled_profile_dir()) / "skylake-5.10.yaml"
HANG_GUARD = 120


def qe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemu_evmcs", *args], capture_output=True, text=True,
                          timeout=HANG_GUARD, check=False)


@pytest.fixture
def hostile(tmp_path: Path) -> dict[str, Path]:
    """A FIFO (nobody writes to it), a symlink to /dev/zero, and a directory with both plus a good profile."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.yaml").write_text(SAMPLE.read_text())
    (d / "b.yaml").symlink_to("/dev/zero")
    d2 = tmp_path / "dir2"
    d2.mkdir()
    (d2 / "a.yaml").write_text(SAMPLE.read_text())
    os.mkfifo(d2 / "b.yaml")
    return {"fifo": fifo, "zero": zero, "/dev/zero": Path("/dev/zero"), "dir-zero": d, "dir-fifo": d2}


def _refused(r: subprocess.CompletedProcess[str]) -> bool:
    lines = r.stderr.splitlines()
    return (r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
            and "not a regular file; refusing to read it" in lines[0])


@pytest.mark.parametrize(("which", "command"), [
    ("/dev/zero", "fleet import"), ("dir-zero", "fleet import"), ("fifo", "fleet import"), ("dir-fifo", "baseline"),
    ("fifo", "host show"), ("zero", "host import"), ("fifo", "explain"), ("fifo", "validate")])
def test_readers_refuse_non_regular_inputs(which: str, command: str, hostile: dict[str, Path], tmp_path: Path) -> None:
    src = str(hostile[which])
    args = {"fleet import": ("fleet", "import", "--db", str(tmp_path / "f.db"), src),
            "baseline": ("baseline", "--pool", src), "host show": ("host", "show", src),
            "host import": ("host", "import", src, "--name", "n", "--kernel", "6.1"),
            "explain": ("explain", "--host", src), "validate": ("validate", src)}[command]
    r = qe(*args)
    if command == "validate":  # validate reports an unreadable definition as a finding on stdout, exit 2
        assert r.returncode == 2 and "not a regular file; refusing to read it [unreadable]" in r.stdout, r.stdout
    else:
        assert _refused(r), r.stderr[-2000:]


def test_read_capped_bounds_a_growing_or_sizeless_file(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(InputError, match="file is 101 bytes; inputs are limited to 100"):
        read_capped(str(big), 100)
    assert read_capped(str(big), 101) == b"x" * 101
    # /proc files report size 0 but have content: read, still capped.
    assert read_capped("/proc/self/status", 1 << 20).startswith(b"Name:")
    with pytest.raises(InputError, match="more than 10 bytes"):
        read_capped("/proc/self/status", 10)


def test_a_document_larger_than_the_cap_is_refused_while_streaming(tmp_path: Path) -> None:
    """A multi-document fleet file whose second document never ends (8 MiB, no ``---``): refused by the
    per-document cap (4 MiB), with the line where that document starts."""
    f = tmp_path / "fleet.yaml"
    body = SAMPLE.read_text()
    with open(f, "w") as fh:
        fh.write("---\n" + body + "---\n" + "notes: |\n")
        line = "  " + "y" * 1022 + "\n"
        fh.write(line * (8 * 1024))
    r = qe("fleet", "import", "--db", str(tmp_path / "f.db"), str(f))
    first = 1 + body.count("\n") + 2      # "---", the first document, "---": the second starts after them
    assert r.returncode == 2 and r.stderr.startswith(f"error: {f}:{first}: ") and "over 4194304 bytes" in r.stderr, \
        r.stderr
