"""Hostile input for every finished parser: only the documented ``error:`` line and exit code, never a traceback.

Parsers covered: host profiles (YAML, through ``qemu-evmcs host show``), vmxcap text and rdmsr dumps
(through ``host import``), ``-cpu`` strings (the wrapper's :func:`qemu_evmcs.launch.cpuarg.parse_cpu_arg`, and the
simulated QEMU's :mod:`qemu_evmcs.simqemu.cmdline` through start-up) and QEMU's feature warnings
(:func:`qemu_evmcs.launch.warnings.parse_warnings`). Hostile QMP *clients* of the simulated QEMU's server are
fuzzed in ``tests/test_load_simqemu.py``; a hostile QEMU's replies to the launcher in
``tests/test_faults_launch.py``. Pathological inputs (a 100 MB
file, a YAML alias bomb, deep nesting, multi-megabyte lines) must fail cleanly with bounded memory.

The CLI runs in-process (``cli.run``) for speed; :func:`test_subprocess_never_tracebacks` runs a few
cases as real processes to prove nothing but the ``error:`` line reaches stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Literal
from collections.abc import Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from cli_helpers import Run, cli_runner

from qemu_evmcs.hostio import rdmsr
from qemu_evmcs.hostio import vmxcap
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.launch.cpuarg import parse_cpu_arg
from qemu_evmcs.launch.warnings import parse_warnings
from qemu_evmcs.core.profile import MAX_PROFILE_BYTES, bundled_profile_dir, load_profile, load_profile_text

SAMPLE = Path(bundled_profile_dir()) / "skylake-5.10.yaml"
SKY = load_profile(str(SAMPLE))
SAMPLE_DATA = yaml.safe_load(SAMPLE.read_text())
VMXCAP_TEXT = vmxcap.render(SKY.msrs)
RDMSR_TEXT = "".join(f"{n} 0x{v:x}\n" for n, v in SKY.msrs.items())

FUZZ = settings(max_examples=int(os.environ.get("QEMU_EVMCS_FUZZ_EXAMPLES", "40")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """``cli.run`` in-process, with only the finished ``host`` command registered."""
    return cli_runner(capsys, monkeypatch, ["host"])


def assert_contract(rc: int, err: str, ok: tuple[int, ...] = (0, 2)) -> None:
    """Exit code is documented; a failure is exactly one ``error:`` line; never a traceback."""
    assert rc in ok, (rc, err)
    assert "Traceback" not in err
    if rc:
        assert err.startswith("error: "), err
        assert err.endswith("\n") and len(err.splitlines()) == 1, err
        assert len(err) < 2200, len(err)  # errors.MAX_MESSAGE_CHARS + location prefix


# --------------------------------------------------------------------------- host profiles (YAML)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(["0x7f00000016", "6.1", "GenuineIntel", "", "~", "0x"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)


@FUZZ
@given(doc=values)
def test_random_yaml_documents(doc: object, run: Run, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("y") / "p.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    rc, _, err = run("host", "show", str(path))
    assert_contract(rc, err, ok=(2,))


@FUZZ
@given(key=st.sampled_from(sorted(SAMPLE_DATA) + ["msrs.IA32_VMX_BASIC", "msrs.IA32_VMX_PINBASED_CTLS",
                                                  "msrs.IA32_VMX_TRUE_PINBASED_CTLS", "msrs.NOPE"]),
       value=values, fmt=st.sampled_from(["yaml", "json", "vmxcap"]))
def test_profile_with_one_hostile_value(key: str, value: object, fmt: str, run: Run,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SAMPLE_DATA.items()}
    if key.startswith("msrs."):
        data["msrs"][key[5:]] = value
    else:
        data[key] = value
    path = tmp_path_factory.mktemp("y") / "p.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    rc, out, err = run("host", "show", str(path), "--format", fmt)
    assert_contract(rc, err)
    if rc == 0:
        assert out and err == ""


#: Lone surrogates cannot be written to a UTF-8 file at all.
NO_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)


@FUZZ
@given(text=st.text(alphabet=st.characters(blacklist_categories=NO_SURROGATES), max_size=300))
def test_random_text_as_yaml(text: str, run: Run, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("y") / "p.yaml"
    path.write_text(text, encoding="utf-8")
    rc, _, err = run("host", "show", str(path))
    assert_contract(rc, err, ok=(2,))


@FUZZ
@given(cut=st.integers(0, len(SAMPLE.read_text())),
       junk=st.sampled_from(["", "{", "[", "&a", "*a", ": :", "!!python/object:os.system ''", "\t", "\x00",
                             "\ufeff", "---\n", "%TAG"]))
def test_truncated_and_spliced_profile(cut: int, junk: str, run: Run,
                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    text = SAMPLE.read_text()
    path = tmp_path_factory.mktemp("y") / "p.yaml"
    path.write_text(text[:cut] + junk + text[cut:], encoding="utf-8")
    rc, _, err = run("host", "show", str(path))
    assert_contract(rc, err)


def test_python_tags_are_never_constructed(run: Run, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\nvendor: GenuineIntel\n"
                    "kernel: '6.1'\nmsrs: {}\n")
    rc, _, err = run("host", "show", str(path))
    assert_contract(rc, err, ok=(2,))
    assert "could not determine a constructor" in err
    assert not marker.exists()


# --------------------------------------------------------------------------- vmxcap and rdmsr (host import)

def _import(run: Run, tmp_path: Path, text: str | bytes, *extra: str) -> tuple[int, str, str]:
    path = tmp_path / "in.txt"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return run("host", "import", str(path), "--name", "fuzz", "--kernel", "6.1.55", *extra)


@FUZZ
@given(data=st.data())
def test_mutated_vmxcap(data: st.DataObject, run: Run, tmp_path_factory: pytest.TempPathFactory) -> None:
    lines = VMXCAP_TEXT.splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["drop", "dup", "value", "junk", "indent"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "value":
            word = data.draw(st.sampled_from(["yes", "no", "forced", "default", "0", "99999999999", "-1", "0x",
                                              "maybe", "  ", ""]))
            lines[i] = lines[i].rsplit(None, 1)[0] + " " + word if lines[i].strip() else word
        elif op == "junk":
            lines[i] = data.draw(st.text(max_size=60))
        else:
            lines[i] = "  " + lines[i].lstrip()
        if not lines:
            lines = [""]
    rc, _, err = _import(run, tmp_path_factory.mktemp("v"), "\n".join(lines) + "\n")
    assert_contract(rc, err)


hexes = st.one_of(st.integers(0, 1 << 70).map(hex), st.integers(0, 1 << 64).map(lambda v: f"{v:x}"),
                  st.integers(0, 1 << 64).map(lambda v: f"{v >> 32:08x}`{v & 0xffffffff:08x}"),
                  st.text(alphabet="0123456789abcdefxX`_-", max_size=20))
indexes = st.one_of(st.integers(0x470, 0x4a0).map(hex), st.integers(0x470, 0x4a0).map(lambda v: f"{v:x}"),
                    st.sampled_from(["IA32_VMX_BASIC", "IA32_VMX_NOPE", "MSR_IA32_VMX_MISC", "0x", "zz"]))
dump_lines = st.one_of(
    st.builds(lambda i, v, sep: f"{i}{sep}{v}", indexes, hexes, st.sampled_from([" ", ": ", " = ", ":", "\t"])),
    st.builds(lambda i, v: f"msr[{i}] = {v}", indexes, hexes),
    st.builds(lambda i, v, w: f"| {i} | {v} | {w} |", indexes, hexes, hexes),
    st.builds(lambda k, v: f"# {k}: {v}", st.sampled_from(["name", "kernel", "vendor", "model_name"]),
              st.text(max_size=20)),
    st.text(max_size=40),
)


@FUZZ
@given(lines=st.lists(dump_lines, max_size=12))
def test_random_rdmsr_dumps(lines: list[str], run: Run, tmp_path_factory: pytest.TempPathFactory) -> None:
    rc, _, err = _import(run, tmp_path_factory.mktemp("r"), RDMSR_TEXT + "\n".join(lines) + "\n")
    assert_contract(rc, err)
    rc, _, err = _import(run, tmp_path_factory.mktemp("r"), "\n".join(lines) + "\n")
    assert_contract(rc, err)


@FUZZ
@given(blob=st.binary(max_size=400))
def test_random_bytes_import(blob: bytes, run: Run, tmp_path_factory: pytest.TempPathFactory) -> None:
    rc, _, err = _import(run, tmp_path_factory.mktemp("b"), blob)
    assert_contract(rc, err)


@FUZZ
@given(text=st.text(max_size=400))
def test_parsers_raise_only_input_error(text: str) -> None:
    for parse in (vmxcap.parse, rdmsr.parse):
        try:
            parse(text, file="f")
        except InputError:
            pass
    rdmsr.parse_metadata(text)
    parse_warnings(text)


# --------------------------------------------------------------------------- -cpu strings

cpu_items = st.one_of(
    st.sampled_from(["vmx", "+vmx", "-vmx", "vmx=on", "vmx=off", "hv-evmcs", "hv_evmcs=yes", "+", "-", "=",
                     "=on", "tsc-freq=1000", "hv-spinlocks=0x1fff", "", "vmx-posted-intr=maybe", "+-", "-+x"]),
    st.text(alphabet=st.characters(blacklist_characters=","), max_size=15),
)


@settings(max_examples=200, deadline=None)
@given(model=st.text(max_size=15), items=st.lists(cpu_items, max_size=8))
def test_cpu_arg_parser(model: str, items: list[str]) -> None:
    arg = ",".join([model, *items])
    try:
        spec = parse_cpu_arg(arg)
    except InputError as err:
        assert "\n" not in str(err) and str(err).startswith(f"-cpu {arg!r}: ")
        return
    assert spec.model and spec.model == spec.model.strip() and spec.raw == arg
    assert all(k and "_" not in k for k in spec.features)
    assert all(isinstance(v, bool) for v in spec.features.values())
    assert not set(spec.features) & set(spec.value_props)


# --------------------------------------------------------------------------- pathological sizes and shapes

def _peak(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by Python while running ``fn`` (tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_100mb_file_refused_by_size_without_reading(run: Run, tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:  # 100 MB of YAML-ish text, written in chunks
        chunk = b"notes: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n" * 8192
        while fh.tell() < 100 * 1024 * 1024:
            fh.write(chunk)
    size = big.stat().st_size
    for argv in (("host", "show", str(big)),
                 ("host", "import", str(big), "--name", "x", "--kernel", "6.1")):
        results: list[tuple[int, str, str]] = []
        peak = _peak(lambda results=results, argv=argv: results.append(run(*argv)))  # type: ignore[misc]
        rc, _, err = results[0]
        assert_contract(rc, err, ok=(2,))
        assert err == f"error: {big}: file is {size} bytes; inputs are limited to {MAX_PROFILE_BYTES}\n"
        assert peak < 4 * 1024 * 1024, peak  # nothing near the file's size was read
    with pytest.raises(InputError, match="limited to"):
        load_profile(str(big))


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" document: 9 ** 9 leaves if every alias were expanded."""
    lines = ["a0: &a0 {lol: 1}"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} {{" + ", ".join(f"k{j}: *a{i - 1}" for j in range(width)) + "}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["top", "msrs", "notes"])
def test_yaml_alias_bomb(where: str, run: Run, tmp_path: Path) -> None:
    bomb = _alias_bomb()
    if where == "top":
        text = bomb
    else:  # a plausible profile whose msrs / notes is the bomb
        body = "\n".join("  " + line for line in bomb.splitlines())
        text = (f"name: bomb\nvendor: GenuineIntel\nkernel: '6.1'\nbombs:\n{body}\n"
                f"{where}: *a8\n" + ("msrs: {}\n" if where != "msrs" else ""))
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    results: list[tuple[int, str, str]] = []
    peak = _peak(lambda: results.append(run("host", "show", str(path))))
    rc, _, err = results[0]
    assert_contract(rc, err, ok=(2,))
    assert peak < 32 * 1024 * 1024, peak


@pytest.mark.parametrize("text", [
    "[" * 1_000_000,
    "{a: " * 500_000,
    "- " * 1_000_000,
    "".join(" " * i + "a:\n" for i in range(2500)),
    "msrs:\n" + "".join(" " * (i + 1) + "- \n" for i in range(2000)),
], ids=["flow-seq", "flow-map", "block-seq", "block-map", "nested-under-key"])
def test_deeply_nested_yaml(text: str, run: Run, tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    results: list[tuple[int, str, str]] = []
    peak = _peak(lambda: results.append(run("host", "show", str(path))))
    rc, _, err = results[0]
    assert_contract(rc, err, ok=(2,))
    assert "nesting deeper than" in err or "invalid YAML" in err
    assert peak < 64 * 1024 * 1024, peak
    with pytest.raises(InputError):
        load_profile_text(text)


def _long_line(prefix: str, n: int = MAX_PROFILE_BYTES - 200) -> str:
    """One line of about 4 MB (the input limit) with long blank runs, no final newline."""
    return prefix + (" " * 4000 + "x") * (n // 4001) + " y"


@pytest.mark.parametrize("text", [
    _long_line(vmxcap.sections()[0].title + "\n  a"),
    _long_line("0x480"),
    _long_line("0x480 0x1"),
    _long_line("# name: x"),
    _long_line("msr[480] = x"),
    _long_line("| IA32_VMX_BASIC |"),
    "0x480 " + "f" * (MAX_PROFILE_BYTES - 100),
    vmxcap.sections()[0].title + "\n  Hex: 0x" + "f" * (MAX_PROFILE_BYTES - 100),
], ids=["vmxcap", "rdmsr-key", "rdmsr-value", "metadata", "windbg", "table", "hex-value", "vmxcap-hex"])
def test_line_without_newline(text: str, run: Run, tmp_path: Path) -> None:
    """Multi-megabyte lines: linear-time parsing (no regex backtracking), one bounded error line."""
    results: list[tuple[int, str, str]] = []
    # CPU seconds of this process, not wall-clock time: other work on a shared machine does not count, so the
    # bound says only "not quadratic" (the regexes this replaced took hours on these inputs; linear parsing
    # takes well under a second of CPU).
    t0 = time.process_time()
    peak = _peak(lambda: results.append(_import(run, tmp_path, text)))
    cpu = time.process_time() - t0
    rc, _, err = results[0]
    assert_contract(rc, err, ok=(2,))
    assert peak < 128 * 1024 * 1024, peak
    assert cpu < 120, cpu


# --------------------------------------------------------------------------- real processes

_LAUNCH = ("import sys; from qemu_evmcs.cli import main as cli; cli.COMMAND_MODULES = ['host']; "
           "sys.exit(cli.run(sys.argv[1:]))")


def test_subprocess_never_tracebacks(tmp_path: Path) -> None:
    cases: list[tuple[str, bytes]] = [
        ("show", b"[" * 200_000),
        ("show", _alias_bomb().encode()),
        ("show", b"name: !!python/object/apply:os.system ['true']\n"),
        ("show", b"\xff\xfe\x00garbage"),
        ("import", b"0x480 0xffffffffffffffffffff\n"),
        ("import", _long_line("0x480").encode()),
        ("import", (vmxcap.sections()[0].title + "\n  nonsense here\n").encode()),
    ]
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    for i, (cmd, blob) in enumerate(cases):
        path = tmp_path / f"case{i}"
        path.write_bytes(blob)
        argv = [sys.executable, "-c", _LAUNCH, "host", cmd, str(path)]
        if cmd == "import":
            argv += ["--name", "x", "--kernel", "6.1"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
        assert r.returncode == 2, (i, r.returncode, r.stderr[-2000:])
        assert r.stdout == ""
        assert_contract(r.returncode, r.stderr)


# --------------------------------------------------------------------------- the simulated QEMU's -cpu parser

def _sim_names() -> tuple[list[str], list[str]]:
    from qemu_evmcs.qemu.cpu import list_models, vmx_prop_names
    return list(vmx_prop_names()), list_models()


_VMX_PROPS, _MODELS = _sim_names()
_HV = ["hv-evmcs", "hv-vapic", "hv-time", "hv-relaxed", "hv-spinlocks", "hv-vpindex", "hv-passthrough",
       "hv-evmcs-perf-global-ctrl", "x-hv-evmcs-revision", "hv_evmcs", "hv-enforce-cpuid", "hv-syndbg"]
_sim_key = st.one_of(st.sampled_from(_VMX_PROPS + _HV + ["vmx", "svm", "pmu", "tsc-frequency", "enforce", "check",
                                                        "migratable", "level", "vendor", "host-phys-bits"]),
                     st.sampled_from(_VMX_PROPS).map(lambda p: p.replace("-", "_")),
                     st.text(alphabet="abcdefvmx-_=+,", max_size=10))
_sim_val = st.one_of(st.sampled_from(["on", "off", "yes", "no", "true", "false", "0", "1", "2", "0x1fff", "",
                                      "maybe", "-1", "99999999999999999999", "on,,x"]),
                     st.text(max_size=8))
_sim_item = st.one_of(
    st.tuples(_sim_key, _sim_val).map(lambda kv: f"{kv[0]}={kv[1]}"),
    _sim_key.map(lambda k: "+" + k), _sim_key.map(lambda k: "-" + k), _sim_key,
    st.text(max_size=6))


@settings(max_examples=int(os.environ.get("QEMU_EVMCS_FUZZ_EXAMPLES", "200")), deadline=None)
@given(model=st.one_of(st.sampled_from(_MODELS + ["host", "max", ""]), st.text(max_size=10)),
       items=st.lists(_sim_item, max_size=10), host=st.sampled_from(["skylake-6.3", "cascadelake-5.4",
                                                                   "icelake-6.1", "epyc-amd-6.6"]))
def test_simulator_cpu_option_to_boot(model: str, items: list[str], host: str) -> None:
    """``qemu-evmcs-sim ... -cpu STRING``: the -cpu parser and the start-up that consumes it end in a running
    machine or in QEMU's one-line error with exit 1 or an abort (134), never in another exception."""
    from qemu_evmcs.core.profile import resolve_profile_path
    from qemu_evmcs.qemu.cpuspec import QemuError, parse_cpu as parse_cpu_option
    from qemu_evmcs.simqemu.cmdline import parse_args
    from qemu_evmcs.simqemu.startup import boot
    arg = ",".join([model, *items])
    try:
        spec = parse_cpu_option(arg)
    except QemuError as err:
        assert arg.split(",", 1)[0] == "" and err.message == "unable to find CPU model ''"
        return
    assert spec.model == arg.split(",", 1)[0] and all("_" not in k for k, _ in spec.props)
    # Like QEMU, the simulator quotes the user's text as is: a line break in it is the only one possible.
    assert all("\n" not in w or "\n" in arg for w in spec.warnings)
    try:
        config = parse_args(["-accel", "kvm", "-cpu", arg, "-display", "none"])
    except QemuError as err:
        assert err.status == 1 and ("\n" not in err.message or "\n" in arg)
        return
    profile = load_profile(resolve_profile_path(host))
    try:
        result = boot(config, profile)
    except QemuError as err:
        assert err.status in (1, 134) and err.message and ("\n" not in err.message or "\n" in arg)
        return
    assert result.exit_status in (0, 1, 134)
    assert result.ok == (result.exit_status == 0) and (result.ok or result.reason)
    assert all("\n" not in line or "\n" in arg for line in result.stderr)
