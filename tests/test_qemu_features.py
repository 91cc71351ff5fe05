"""QEMU's Hyper-V and CPUID rules live in one table (qemu_features); the simulated QEMU and model
validation must both enforce every dependency in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemu_evmcs.cli import main as cli
from qemu_evmcs.qemu.features import HV_NESTED_EAX_BITS, VMX_CPUID_REQUIRES, hv_requires
from qemu_evmcs.core.registry import registry
from qemu_evmcs.simqemu.startup import predict

PAIRS = [(flag, dep) for flag, deps in sorted(hv_requires().items()) for dep in deps]


@pytest.mark.parametrize("flag, dep", PAIRS)
def test_simulated_qemu_refuses_a_flag_without_its_dependency(flag: str, dep: str) -> None:
    others = {d for d in hv_requires().get(flag, ()) if d != dep}
    # give the flag every other dependency (and theirs), but not `dep`
    wanted = set(others)
    for d in list(others):
        wanted |= set(hv_requires().get(d, ())) - {dep}
    props = ",".join(f"{f}=on" for f in sorted(wanted | {flag}))
    pred = predict("skylake-6.3", ["-accel", "kvm", "-cpu", f"host,vmx=on,{props}"])
    assert not pred.ok and pred.exit_status == 1
    assert any("requires" in line and f"({dep})" in line for line in pred.stderr), pred.stderr


@pytest.mark.parametrize("flag, dep", [p for p in PAIRS if not p[0].startswith("hv-evmcs-perf")])
def test_validate_reports_a_flag_without_its_dependency(flag: str, dep: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.yaml"
    model.write_text("name: m\nbase: Skylake-Server-v5\nvendor: GenuineIntel\nfeatures: {vmx: on}\n"
                     f"hyperv: {{{flag}: on}}\n")
    assert cli.run(["validate", str(model)]) == 1
    out = capsys.readouterr().out
    assert flag in out and dep in out


def test_derived_views() -> None:
    reg = registry()
    assert all(reg.get(name) is not None for name in VMX_CPUID_REQUIRES)   # every gated name is a registry bit
    assert set(HV_NESTED_EAX_BITS) == {"hv-emsr-bitmap", "hv-tlbflush-direct"}
