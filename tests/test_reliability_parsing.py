"""Issue 14 class 3 (parsing boundary) and the "smaller" items: one ``error:`` line, never a traceback.

- An integer of more than 4,300 digits anywhere in a profile made ``int()`` raise ``ValueError`` (CPython's
  integer-string limit) through every command that reads profiles and through the simulator.
- Duplicate YAML keys were accepted silently (the last won: ``vendor`` became AuthenticAMD).
- 10^6 empty YAML documents were all composed before "expected one YAML document" (22 s): refused at the
  second document now; the test counts how many documents the composer produced instead of timing it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import Run, cli_runner

from qemu_evmcs.core import profileyaml
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.yamlsafe import key_lines
from qemu_evmcs.core.profile import bundled_profile_dir, load_profile
from qemu_evmcs.fleet.sources import load_fleet

SAMPLE = Path(bundled_profile_dir()) / "skylake-5.10.yaml"
BIG = "9" * 5000


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    return cli_runner(capsys, monkeypatch)


def _minimal(name: str = "big") -> str:
    """A small valid profile (the sample's MSRs), one key a line, so line numbers are easy to count."""
    msrs = "".join(f"  {n}: 0x{v:x}\n" for n, v in load_profile(str(SAMPLE)).msrs.items())
    return f"name: {name}\nvendor: GenuineIntel\nkernel: \"6.1\"\nmsrs:\n{msrs}"


def _variants(tmp_path: Path) -> dict[str, tuple[Path, int]]:
    """Profiles with a 5,000-digit integer in three places: (file, line of the integer)."""
    body = _minimal()
    n = body.count("\n")
    texts = {"msr": (body.replace("msrs:\n", f"msrs:\n  IA32_VMX_VMFUNC_BIG: {BIG}\n", 1), 5),
             "stepping": (body + f"stepping: {BIG}\n", n + 1),
             "notes": (body + f"notes: {BIG}\n", n + 1)}
    files = {}
    for k, (t, line) in texts.items():
        p = tmp_path / f"{k}.yaml"
        p.write_text(t)
        files[k] = (p, line)
    return files


def test_huge_integers_are_one_error_line_in_every_profile_reader(run: Run, tmp_path: Path) -> None:
    for kind, (path, line) in _variants(tmp_path).items():
        want = f"error: {path}:{line}: invalid YAML: an integer of 5000 characters (at most 100)\n"
        with pytest.raises(InputError) as exc:
            load_profile(str(path))
        assert f"error: {exc.value}\n" == want, kind
        for argv in (("host", "show", str(path)), ("explain", "--host", str(path)),
                     ("baseline", "--pool", str(path), str(SAMPLE)),
                     ("negotiate", "--model", "Skylake-Server-evmcs", "--hosts", str(path), str(SAMPLE)),
                     ("fleet", "import", "--db", str(tmp_path / f"{kind}.db"), str(path))):
            assert run(*argv) == (2, "", want), (kind, argv)


def test_huge_integer_in_the_second_document_of_a_fleet(tmp_path: Path) -> None:
    """The fast loader's later documents (same shape as the first) go through another parse path."""
    first = _minimal("a") + "notes: fine\n"
    second = _minimal("b") + f"notes: {BIG}\n"
    f = tmp_path / "fleet.yaml"
    f.write_text("---\n" + first + "---\n" + second)
    with pytest.raises(InputError, match="an integer of 5000 characters"):
        load_fleet([str(f)])


def test_simulator_refuses_a_huge_integer_with_one_line(tmp_path: Path) -> None:
    path, line = _variants(tmp_path)["stepping"]
    r = subprocess.run([sys.executable, "-m", "qemu_evmcs.simqemu", "--host", str(path), "-cpu", "host"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "an integer of 5000 characters" in r.stderr, \
        r.stderr[-3000:]


def test_duplicate_keys_are_refused_with_the_line(run: Run, tmp_path: Path) -> None:
    text = SAMPLE.read_text()
    dup = tmp_path / "dup.yaml"
    dup.write_text(text + "vendor: AuthenticAMD\n")
    last = text.count("\n") + 1
    want = f"error: {dup}:{last}: invalid YAML: duplicate key 'vendor' (a mapping's keys must be unique)\n"
    assert run("host", "show", str(dup)) == (2, "", want)
    # Nested mappings too (an MSR given twice).
    msr_dup = tmp_path / "msr.yaml"
    msr_dup.write_text(text.replace("msrs:\n", "msrs:\n  IA32_VMX_MISC: 0x1\n", 1))
    rc, _, err = run("host", "show", str(msr_dup))
    assert rc == 2 and "duplicate key 'IA32_VMX_MISC'" in err
    # A fleet file whose second document repeats a key is refused too (not only the first document).
    f = tmp_path / "fleet.yaml"
    second = re.sub(r"(?m)^name: .*$", "name: b\nname: c", text)
    f.write_text("---\n" + text + "---\n" + second)
    rc, _, err = run("fleet", "import", "--db", str(tmp_path / "f.db"), str(f))
    assert rc == 2 and "duplicate key 'name'" in err, err


def test_second_document_refused_without_composing_the_rest(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "many.yaml"
    f.write_text("---\n" * 100_000)
    composed = 0
    real = profileyaml._DepthLimitedLoader.compose_document

    def counting(self: yaml.SafeLoader) -> object:
        nonlocal composed
        composed += 1
        return real(self)

    monkeypatch.setattr(profileyaml._DepthLimitedLoader, "compose_document", counting)
    with pytest.raises(InputError, match="expected one YAML document, found more") as exc:
        load_profile(str(f))
    assert composed == 2 and exc.value.line is not None and exc.value.line <= 3


def test_key_lines_walks_each_node_once_in_document_order() -> None:
    """The one key-line walker of profiles and model definitions (core/yamlsafe.key_lines): a key, then the keys
    under it; a repeated key is listed again (the model reader reports it); an alias's node is not walked again."""
    doc = yaml.compose("a: &x\n  b: 1\n  c:\n    d: 2\nb: *x\na: 3\n", Loader=yaml.SafeLoader)
    assert doc is not None and list(key_lines(doc)) == [
        (("a",), 1), (("a", "b"), 2), (("a", "c"), 3), (("a", "c", "d"), 4), (("b",), 5), (("a",), 6)]
    lines = [f"{n}: &{n} {{x: *{p}, y: *{p}}}\n" for p, n in zip("abcdefghi", "bcdefghij", strict=True)]
    bomb = yaml.compose("a: &a {x: 1, y: 1}\n" + "".join(lines), Loader=yaml.SafeLoader)
    # 10 top-level keys and the 2 keys of each of the 10 mappings, each mapping walked once: 30.
    assert bomb is not None and len(list(key_lines(bomb))) == 10 + 10 * 2
