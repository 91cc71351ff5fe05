"""``qemu-evmcs host import|show`` end to end through the dispatcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import Run, cli_runner
from needs import need_program

from qemu_evmcs.cli.commands.host import write_atomic
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.profile import bundled_profile_dir, load_profile, load_profile_text

DATA = Path(__file__).parent / "data" / "host"
SKY = load_profile(str(Path(bundled_profile_dir()) / "skylake-5.10.yaml"))


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    return cli_runner(capsys, monkeypatch)


@pytest.mark.parametrize("fixture", ["skylake-rdmsr.txt", "skylake-table.md", "skylake-vmxcap.txt"])
def test_import_formats(fixture: str, run) -> None:  # type: ignore[no-untyped-def]
    rc, out, err = run("host", "import", str(DATA / fixture), "--name", "sky", "--kernel", "5.10.0-26-amd64")
    assert (rc, err) == (0, "")
    p = load_profile_text(out, "out.yaml")
    assert p.name == "sky" and p.vendor == "GenuineIntel" and p.kernel == "5.10.0-26-amd64"
    expected = dict(SKY.msrs)
    if fixture.endswith("vmxcap.txt"):  # vmxcap does not print CR0/CR4 fixed or VMCS_ENUM
        expected = {k: v for k, v in expected.items() if "FIXED" not in k and "ENUM" not in k}
        assert "rebuilt" in (p.notes or "")
    assert dict(p.msrs) == expected
    assert fixture in (p.provenance or "")


def test_import_metadata_comments_supply_name_and_kernel(run) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run("host", "import", str(DATA / "skylake-rdmsr.txt"))
    assert rc == 0
    p = load_profile_text(out)
    assert (p.name, p.kernel) == ("skylake-rdmsr", "5.10.0-26-amd64")
    rc, out, _ = run("host", "import", str(DATA / "skylake-rdmsr.txt"), "--kernel", "6.6", "--name", "x")
    assert (load_profile_text(out).kernel, load_profile_text(out).name) == ("6.6", "x")


def test_import_requires_name_and_kernel(run) -> None:  # type: ignore[no-untyped-def]
    f = str(DATA / "skylake-vmxcap.txt")
    assert run("host", "import", f, "--kernel", "6.1") == (2, "", (f"error: {f}: no host name in the input; "
                                                                  f"pass --name\n"))
    assert run("host", "import", f, "--name", "x") == (2, "", (f"error: {f}: no kernel release in the input; "
                                                             f"pass --kernel (e.g. --kernel 6.1.55)\n"))
    rc, _, err = run("host", "import", f, "--name", "x", "--kernel", "banana")
    assert rc == 2 and err.startswith("error: --kernel: unparsable kernel release 'banana'")
    rc, _, err = run("host", "import", f, "--name", "x", "--kernel", "6.1", "--vendor", "Intel")
    assert rc == 2 and err.startswith("error: --vendor: unknown vendor 'Intel'")


def test_import_validates_the_result(tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "bad.txt"
    f.write_text("0x481 0x7f00000016\n0x48d 0x3f00000016\n")
    rc, out, err = run("host", "import", str(f), "--name", "x", "--kernel", "6.1")
    assert rc == 2 and out == ""
    assert err.startswith(f"error: {f}: msrs.IA32_VMX_PINBASED_CTLS: allowed-1 halves")


def test_import_output_atomic_and_force(tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "p.yaml"
    args = ("host", "import", str(DATA / "skylake-table.md"), "--name", "sky", "--kernel", "6.3", "-o", str(out))
    assert run(*args) == (0, "", "")
    first = out.read_text()
    assert load_profile(str(out)).msrs == SKY.msrs
    assert run(*args) == (2, "", f"error: {out}: already exists; pass --force to overwrite\n")
    assert out.read_text() == first
    assert run(*args, "--force") == (0, "", "")
    assert [p.name for p in tmp_path.iterdir()] == ["p.yaml"]  # no temp files left behind


def test_write_atomic_unwritable_dir(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot write"):
        write_atomic(str(tmp_path / "missing-dir" / "p.yaml"), "x")


def test_show_formats(run) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run("host", "show", "skylake-5.10")
    assert rc == 0 and yaml.safe_load(out)["msrs"]["IA32_VMX_BASIC"] == "0x00da040000000004"
    rc, out, _ = run("host", "show", "skylake-5.10", "--format", "json")
    data = json.loads(out)
    assert rc == 0 and data["name"] == "skylake-5.10" and data["nested"] is True
    rc, out, _ = run("host", "show", str(Path(bundled_profile_dir()) / "skylake-5.10.yaml"), "--format", "vmxcap")
    assert rc == 0 and out == (DATA / "skylake-vmxcap.txt").read_text()
    rc, _, err = run("host", "show", "skylake-5.10", "--format", "xml")
    assert rc == 2 and err.startswith("error: ") and len(err.splitlines()) == 1


@pytest.mark.parametrize("sample", sorted(p.stem for p in Path(bundled_profile_dir()).glob("*.yaml")))
def test_show_import_round_trip(sample: str, tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    rc, text, _ = run("host", "show", sample, "--format", "vmxcap")
    assert rc == 0
    f = tmp_path / "v.txt"
    f.write_text(text)
    orig = load_profile(str(Path(bundled_profile_dir()) / f"{sample}.yaml"))
    rc, out, err = run("host", "import", str(f), "--name", sample, "--kernel", orig.kernel, "--vendor", orig.vendor)
    assert (rc, err) == (0, "")
    back = load_profile_text(out)
    assert {k: v for k, v in orig.msrs.items() if "FIXED" not in k and "ENUM" not in k} == dict(back.msrs)
    rc, again, _ = run("host", "show", str(_write(tmp_path / "b.yaml", out)), "--format", "vmxcap")
    assert again == text


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("command", ["import", "show"])
@pytest.mark.parametrize("fixture,message", [
    ("garbage.bin", "binary file (contains NUL bytes), expected text"),
    ("empty.txt", "empty file"),
])
def test_garbage_inputs(command: str, fixture: str, message: str, run) -> None:  # type: ignore[no-untyped-def]
    f = str(DATA / fixture)
    rc, out, err = run("host", command, f, "--name", "x", "--kernel", "6.1") if command == "import" \
        else run("host", command, f)
    assert (rc, out, err) == (2, "", f"error: {f}: {message}\n")


def test_garbage_non_utf8_and_prose(tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"caf\xe9\n")
    for cmd in (("import", str(f), "--name", "x", "--kernel", "6.1"), ("show", str(f))):
        rc, out, err = run("host", *cmd)
        assert rc == 2 and out == "" and err == f"error: {f}: not UTF-8 text (invalid continuation byte at byte 3)\n"
    p = str(DATA / "prose.txt")
    rc, _, err = run("host", "import", p, "--name", "x", "--kernel", "6.1")
    assert rc == 2 and err.startswith(f"error: {p}: no VMX MSR values found")
    rc, _, err = run("host", "show", p)
    assert rc == 2 and err == f"error: {p}:1: a host profile must be a mapping, got str\n"


def test_random_bytes_never_traceback(tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    import random

    rnd = random.Random(1234)
    for i in range(40):
        f = tmp_path / f"r{i}"
        blob = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 200)))
        if i % 2:
            blob = blob.replace(b"\x00", b"").decode("latin-1").encode("utf-8")
        f.write_bytes(blob)
        for argv in (("host", "import", str(f), "--name", "x", "--kernel", "6.1"), ("host", "show", str(f))):
            rc, _, err = run(*argv)
            assert rc in (0, 2)
            if rc:
                assert err.startswith("error: ") and len(err.splitlines()) == 1


def test_directory_and_missing(tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run("host", "import", str(tmp_path), "--name", "x", "--kernel", "6.1")
    assert (rc, err) == (2, f"error: {tmp_path}: is a directory, expected a file\n")
    missing = tmp_path / "nope"
    rc, _, err = run("host", "import", str(missing), "--name", "x", "--kernel", "6.1")
    assert (rc, err) == (2, f"error: {missing}: No such file or directory\n")


def test_unreadable_file(tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    """A file the user may not read: one error line, exit 2.

    Root reads a mode-0 file anyway (CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH), and CI runs as root: there the
    command runs in a child whose capability bounding set lacks both (util-linux ``setpriv``), so the
    kernel refuses the read as it would for any other user.
    """
    f = tmp_path / "locked"
    f.write_text("0x480 0x1\n")
    f.chmod(0)
    argv = ("host", "import", str(f), "--name", "x", "--kernel", "6.1")
    if os.geteuid() != 0:
        rc, _, err = run(*argv)
    else:
        setpriv = need_program("setpriv", "apt-get install util-linux")
        r = subprocess.run([setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--",
                            sys.executable, "-m", "qemu_evmcs", *argv], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=False)
        rc, err = r.returncode, r.stderr
    assert (rc, err) == (2, f"error: {f}: Permission denied\n")
