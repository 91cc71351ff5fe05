"""Host profile validation: defaults, every bad-input class through ``qemu-evmcs host show`` (exit 2, one line)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import cli_runner

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.msrval import allowed0, allowed1
from qemu_evmcs.core.profile import (bundled_profile_dir, load_profile, load_profile_text, load_profiles,
                                     resolve_profile_path)
from qemu_evmcs.core.registry import registry
from qemu_evmcs.fleet.sources import load_fleet

DATA = Path(__file__).parent / "data" / "host"
HEAD = 'name: h\nvendor: GenuineIntel\nkernel: "6.3"\n'

EXPECTED_SAMPLES = {
    "skylake-5.10", "skylake-6.3", "cascadelake-5.4", "icelake-5.15", "icelake-6.1", "sapphirerapids-6.6",
    "skylake-nested-off-6.1", "epyc-amd-6.6",
}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """The real dispatcher, limited to the command modules that exist in this tree."""
    return cli_runner(capsys, monkeypatch)(*argv)


def test_minimal_form_loads_with_defaults() -> None:
    p = load_profile(str(DATA / "minimal.yaml"))
    assert p.name == "skylake-63" and p.vendor == "GenuineIntel" and p.kernel == "6.3"
    assert p.nested is True and p.kvm_hyperv is True and p.synthetic is False and p.cpu_msrs is None
    assert p.msrs == {"IA32_VMX_BASIC": 0xDA040000000004}


def test_hex_strings_accepted(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(HEAD + 'msrs:\n  IA32_VMX_BASIC: "da040000000004"\n  IA32_VMX_PINBASED_CTLS: "0x7f_00000016"\n'
                 '  IA32_VMX_VMFUNC: "00000000`00000001"\n')
    p = load_profile(str(f))
    assert p.msrs == {"IA32_VMX_BASIC": 0xDA040000000004, "IA32_VMX_PINBASED_CTLS": 0x7F00000016,
                      "IA32_VMX_VMFUNC": 1}


BAD = [
    ("unknown-msr", HEAD + "msrs:\n  IA32_VMX_BASIK: 0x1\n",
     "{f}:5: msrs.IA32_VMX_BASIK: unknown MSR name 'IA32_VMX_BASIK' (did you mean IA32_VMX_BASIC?)"),
    ("over-64-bits", HEAD + "msrs:\n  IA32_VMX_BASIC: 0x1ffffffffffffffff\n",
     "{f}:5: msrs.IA32_VMX_BASIC: MSR value 0x1ffffffffffffffff does not fit in 64 bits"),
    ("over-64-bits-string", HEAD + 'msrs:\n  IA32_VMX_BASIC: "1ffffffffffffffff"\n',
     "{f}:5: msrs.IA32_VMX_BASIC: MSR value '1ffffffffffffffff' does not fit in 64 bits"),
    ("not-hex", HEAD + 'msrs:\n  IA32_VMX_BASIC: "zz"\n',
     "{f}:5: msrs.IA32_VMX_BASIC: MSR value 'zz' is not a hex number"),
    ("allowed0-outside-allowed1", HEAD + "msrs:\n  IA32_VMX_PINBASED_CTLS: 0x0000001600000017\n",
     ("{f}:5: msrs.IA32_VMX_PINBASED_CTLS: allowed-0 bit 0 is set but allowed-1 bit 32 is clear "
     "(a control cannot be both required and unsupported)")),
    ("true-halves-differ", HEAD + "msrs:\n  IA32_VMX_PINBASED_CTLS: 0x7f00000016\n"
                                  "  IA32_VMX_TRUE_PINBASED_CTLS: 0x3f00000016\n",
     ("{f}:5: msrs.IA32_VMX_PINBASED_CTLS: allowed-1 halves of IA32_VMX_PINBASED_CTLS and "
     "IA32_VMX_TRUE_PINBASED_CTLS differ (first at control bit 6); the SDM requires them to be equal")),
    # A TRUE control MSR may clear only default1 bits (SDM A.3): here bit 0 is required only by the non-TRUE one.
    ("true-allowed0-differs", HEAD + "msrs:\n  IA32_VMX_PINBASED_CTLS: 0x7f00000017\n"
                                     "  IA32_VMX_TRUE_PINBASED_CTLS: 0x7f00000016\n",
     ("{f}:5: msrs.IA32_VMX_PINBASED_CTLS: allowed-0 half of IA32_VMX_PINBASED_CTLS (0x00000017) must be that of "
      "IA32_VMX_TRUE_PINBASED_CTLS plus the default1 bits 0x16, i.e. 0x00000016 (first difference at control "
      "bit 0); the SDM lets the TRUE MSR clear only default1 bits")),
    # ... and the non-TRUE one reports every default1 control (pin bits 1, 2, 4) as must-be-1.
    ("default1-not-forced", HEAD + "msrs:\n  IA32_VMX_PINBASED_CTLS: 0x7f00000006\n"
                                   "  IA32_VMX_TRUE_PINBASED_CTLS: 0x7f00000006\n",
     ("{f}:5: msrs.IA32_VMX_PINBASED_CTLS: allowed-0 half of IA32_VMX_PINBASED_CTLS (0x00000006) must be that of "
      "IA32_VMX_TRUE_PINBASED_CTLS plus the default1 bits 0x16, i.e. 0x00000016 (first difference at control "
      "bit 4); the SDM lets the TRUE MSR clear only default1 bits")),
    ("bad-kernel", 'name: h\nvendor: GenuineIntel\nkernel: "six"\nmsrs: {}\n',
     "{f}:3: kernel: unparsable kernel release 'six' (expected e.g. \"5.15\", \"6.1.55\", \"6.8.0-45-generic\")"),
    ("msrs-list", HEAD + "msrs: [1, 2]\n", "{f}:4: msrs: must be dict, got list"),
    ("nested-string", HEAD + 'nested: "yes"\nmsrs: {}\n', "{f}:4: nested: must be bool, got str"),
    ("family-string", HEAD + 'family: "six"\nmsrs: {}\n', "{f}:4: family: must be int, got str"),
    ("invalid-yaml", HEAD + "msrs:\n  IA32_VMX_BASIC: [\n",
     "{f}:6: invalid YAML: expected the node content, but found '<stream end>'"),
    ("unknown-key", HEAD + "colour: red\nmsrs: {}\n",
     ("{f}:4: colour: unknown key 'colour' (known: cpu_features, cpu_msrs, cpuid, family, kernel, kernel_version, "
      "kvm_hyperv, model, model_name, msrs, name, nested, notes, provenance, stepping, synthetic, unknown_msrs, "
      "vendor)")),
    ("missing-msrs", HEAD, "{f}: msrs: missing required key"),
    ("unknown-vendor", 'name: h\nvendor: Intel\nkernel: "6.3"\nmsrs: {}\n',
     "{f}:2: vendor: unknown vendor 'Intel' (known: GenuineIntel, AuthenticAMD, HygonGenuine, CentaurHauls)"),
    ("not-a-mapping", "- 1\n- 2\n", "{f}:1: a host profile must be a mapping, got list"),
]


@pytest.mark.parametrize("name,text,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_profile_one_line_exit_2(name: str, text: str, expected: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    rc, out, err = run_cli(["host", "show", str(f)], capsys, monkeypatch)
    assert rc == 2
    assert out == ""
    assert err == "error: " + expected.format(f=f) + "\n"


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "nope.yaml"
    rc, out, err = run_cli(["host", "show", str(f)], capsys, monkeypatch)
    assert (rc, out, err) == (2, "", f"error: {f}: No such file or directory\n")


# --------------------------------------------------------------------------- bundled samples

def test_all_samples_load_and_are_consistent() -> None:
    reg = registry()
    profiles = load_profiles([bundled_profile_dir()])
    names = {p.name for p in profiles}
    assert EXPECTED_SAMPLES <= names
    for p in profiles:
        assert p.provenance and p.notes, p.name
        assert p.source is not None and Path(p.source).stem == p.name
        if p.synthetic:
            assert "synthetic" in p.notes.lower(), p.name
        for name, value in p.msrs.items():
            m = reg.msrs[name]
            if m.layout == "ctl":
                assert allowed0(value) & ~allowed1(value) == 0, (p.name, name)
            if m.true and m.true in p.msrs:
                tval = p.msrs[m.true]
                assert allowed1(value) == allowed1(tval), (p.name, name)
                always_on = reg.words[m.word or ""].always_on
                assert allowed0(value) == allowed0(tval) | always_on, (p.name, name)


def test_skylake_sample_is_the_real_dump() -> None:
    """skylake-5.10 holds vmx-dumps.md Source 1 verbatim (0x480-0x491)."""
    sky = load_profile(resolve_profile_path("skylake-5.10"))
    assert not sky.synthetic and sky.kernel == "5.10.46"
    assert sky.msrs["IA32_VMX_BASIC"] == 0xDA040000000004
    assert sky.msrs["IA32_VMX_PROCBASED_CTLS"] == 0xFFF9FFFE0401E172
    assert sky.msrs["IA32_VMX_TRUE_PROCBASED_CTLS"] == 0xFFF9FFFE04006172
    assert sky.msrs["IA32_VMX_EPT_VPID_CAP"] == 0xF0106334141
    assert len(sky.msrs) == 18 and "IA32_VMX_PROCBASED_CTLS3" not in sky.msrs
    assert load_profile(resolve_profile_path("skylake-6.3")).msrs == sky.msrs


def test_sample_features() -> None:
    from qemu_evmcs.core.msrval import feature_set

    spr = load_profile(resolve_profile_path("sapphirerapids-6.6"))
    fs = feature_set(spr.msrs)
    for feat in ("vmx-posted-intr", "vmx-tertiary-ctls", "vmx-ipi-virt", "vmx-tsc-scaling",
                 "vmx-enable-user-wait-pause", "vmx-exit-load-perf-global-ctrl", "vmx-entry-load-perf-global-ctrl",
                 "vmx-eptp-switching", "vmx-page-walk-5"):
        assert feat in fs, feat
    assert spr.synthetic
    cl = load_profile(resolve_profile_path("cascadelake-5.4"))
    assert {"vmx-posted-intr", "vmx-preemption-timer"} <= feature_set(cl.msrs)
    assert cl.version.mm == (5, 4)
    assert load_profile(resolve_profile_path("skylake-nested-off-6.1")).nested is False
    amd = load_profile(resolve_profile_path("epyc-amd-6.6"))
    assert amd.vendor == "AuthenticAMD" and dict(amd.msrs) == {}


def test_a_type_error_names_the_yaml_type_not_an_internal_class() -> None:
    # Found by the verifier: "family: must be int, got _RawFloat" (the loader's float subclass that keeps the
    # source text leaked into the message).
    text = "name: h\nvendor: GenuineIntel\nkernel: '6.3'\nfamily: .nan\nmsrs:\n  IA32_VMX_BASIC: 0xda040000000004\n"
    with pytest.raises(InputError) as err:
        load_profile_text(text, "h.yaml")
    assert err.value.message == "must be int, got float" and err.value.key == "family"


def test_load_profiles_walks_directories_as_the_commands_do(tmp_path: Path) -> None:
    """One walker of profile directories: load_profiles (the reference the fleet loader is checked against) and
    the commands list the same files in the same order. A directory named *.yaml is walked (it holds a pool),
    one reached again through a symbolic link is not walked twice (a loop used to end in ELOOP here while
    every command loaded the file once), other sub-directories are not walked."""
    sample = (Path(bundled_profile_dir()) / "skylake-6.3.yaml").read_text()
    (tmp_path / "b.yaml").write_text(sample.replace("name: skylake-6.3", "name: b", 1))
    (tmp_path / "a.yaml").mkdir()
    (tmp_path / "a.yaml" / "z.yml").write_text(sample.replace("name: skylake-6.3", "name: a-z", 1))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "c.yaml").write_text(sample.replace("name: skylake-6.3", "name: c", 1))
    (tmp_path / "a.yaml" / "loop.yaml").symlink_to(tmp_path)
    assert [p.name for p in load_profiles([str(tmp_path)])] == ["a-z", "b"]
    assert sorted(load_fleet(str(tmp_path), progress=False, workers=1).host_names()) == ["a-z", "b"]
