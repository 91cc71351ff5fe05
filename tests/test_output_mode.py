"""What permission bits a written file gets: like any other tool's output, not private by surprise.

Why: every writer used to leave ``mkstemp``'s 0600, and ``--force`` turned an existing 0644 file into 0600.
A host profile written as root (``host probe -o /etc/qemu-evmcs/host.yaml``) was then unreadable to the
unprivileged QEMU user that libvirt's ``qemu:///system`` runs ``qemu-evmcs-launch`` as, and the wrapper
refused to start the domain. A new file now gets what ``open(path, "w")`` would give it (0666 less the
umask); a replaced file keeps its own bits.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from qemu_evmcs.output.atomicio import write_output


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_0666_less_the_umask(tmp_path: Path, umask: None) -> None:
    write_output(str(tmp_path / "a.yaml"), "x: 1\n", force=False)
    assert _mode(tmp_path / "a.yaml") == 0o644          # 0o666 & ~0o022
    os.umask(0o077)
    write_output(str(tmp_path / "b.yaml"), "x: 1\n", force=False)
    assert _mode(tmp_path / "b.yaml") == 0o600          # 0o666 & ~0o077
    os.umask(0o002)
    write_output(str(tmp_path / "c.yaml"), "x: 1\n", force=False)
    assert _mode(tmp_path / "c.yaml") == 0o664          # 0o666 & ~0o002


def test_a_replaced_file_keeps_its_bits(tmp_path: Path, umask: None) -> None:
    for bits in (0o640, 0o644, 0o600, 0o444):
        target = tmp_path / f"t{bits:o}.yaml"
        target.write_text("old\n")
        target.chmod(bits)
        write_output(str(target), "new\n", force=True)
        assert (target.read_text(), _mode(target)) == ("new\n", bits)


def test_an_explicit_mode_still_wins(tmp_path: Path, umask: None) -> None:
    write_output(str(tmp_path / "r.html"), "<p>\n", force=False, mode=0o640)
    assert _mode(tmp_path / "r.html") == 0o640
