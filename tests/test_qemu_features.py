"""QEMU's Hyper-V and CPUID rules (qemu.features) against expectations that do not come from that table:
the dependencies written out by hand from QEMU's source, and the real qemu-system-x86_64 for the CPUID gates.

Before, the simulated-QEMU and validate tests were parametrized from ``hv_requires()`` itself, so a rule
missing from the table (or a wrong one) was missing from the tests too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from launch_helpers import BASE_ARGS, qemu_path
from proc_helpers import PATIENCE

from qemu_evmcs.cli import main as cli
from qemu_evmcs.core.registry import registry
from qemu_evmcs.qemu.features import HV_NESTED_EAX_BITS, VMX_CPUID_REQUIRES, hv_requires
from qemu_evmcs.simqemu.startup import predict

#: QEMU 7.2 target/i386/kvm/kvm.c ``kvm_hyperv_properties[].dependencies`` (qemu.md §1.4), by hand:
#:   HYPERV_FEAT_STIMER       .dependencies = BIT(HYPERV_FEAT_SYNIC) | BIT(HYPERV_FEAT_TIME)
#:   HYPERV_FEAT_TLBFLUSH     .dependencies = BIT(HYPERV_FEAT_VPINDEX)
#:   HYPERV_FEAT_EVMCS        .dependencies = BIT(HYPERV_FEAT_VAPIC)
#:   HYPERV_FEAT_IPI          .dependencies = BIT(HYPERV_FEAT_VPINDEX)
#:   HYPERV_FEAT_STIMER_DIRECT.dependencies = BIT(HYPERV_FEAT_STIMER)
#:   HYPERV_FEAT_SYNDBG       .dependencies = BIT(HYPERV_FEAT_SYNIC) | BIT(HYPERV_FEAT_RELAXED)
#:   HYPERV_FEAT_TLBFLUSH_EXT .dependencies = BIT(HYPERV_FEAT_TLBFLUSH)
#:   HYPERV_FEAT_TLBFLUSH_DIRECT .dependencies = BIT(HYPERV_FEAT_VAPIC)
#: plus hyperv_init_vcpu()'s own check: hv-synic without x-hv-synic-kvm-only needs hv-vpindex; plus this
#: project's proposed hv-evmcs-perf-global-ctrl (not in any QEMU; README), which only makes sense with hv-evmcs.
#: Under TCG QEMU never checks these (kvm_hyperv_expand_features is KVM-only), so the real binary cannot.
QEMU_HV_DEPENDENCIES: dict[str, set[str]] = {
    "hv-stimer": {"hv-synic", "hv-time"},
    "hv-tlbflush": {"hv-vpindex"},
    "hv-evmcs": {"hv-vapic"},
    "hv-ipi": {"hv-vpindex"},
    "hv-stimer-direct": {"hv-stimer"},
    "hv-syndbg": {"hv-synic", "hv-relaxed"},
    "hv-tlbflush-ext": {"hv-tlbflush"},
    "hv-tlbflush-direct": {"hv-vapic"},
    "hv-synic": {"hv-vpindex"},
    "hv-evmcs-perf-global-ctrl": {"hv-evmcs"},
}
PAIRS = sorted((flag, dep) for flag, deps in QEMU_HV_DEPENDENCIES.items() for dep in deps)


def _closure(flags: set[str], without: str) -> set[str]:
    """``flags`` plus everything they need (by the hand table), leaving out ``without``."""
    out = set(flags)
    while True:
        more = {d for f in out for d in QEMU_HV_DEPENDENCIES.get(f, ()) if d != without} - out
        if not more:
            return out
        out |= more


def test_the_table_is_qemus() -> None:
    assert {flag: set(deps) for flag, deps in hv_requires().items()} == QEMU_HV_DEPENDENCIES


@pytest.mark.parametrize("flag, dep", PAIRS)
def test_simulated_qemu_refuses_a_flag_without_its_dependency(flag: str, dep: str) -> None:
    props = ",".join(f"{f}=on" for f in sorted(_closure({flag}, dep)))
    pred = predict("skylake-6.3", ["-accel", "kvm", "-cpu", f"host,vmx=on,{props}"])
    assert not pred.ok and pred.exit_status == 1
    assert any("requires" in line and f"({dep})" in line for line in pred.stderr), pred.stderr
    # ... and starts once the dependency is there too (so the refusal above was about `dep`).
    full = ",".join(f"{f}=on" for f in sorted(_closure({flag, dep}, "")))
    assert predict("skylake-6.3", ["-accel", "kvm", "-cpu", f"host,vmx=on,{full}"]).ok


@pytest.mark.parametrize("flag, dep", [p for p in PAIRS if not p[0].startswith("hv-evmcs-perf")])
def test_validate_reports_a_flag_without_its_dependency(flag: str, dep: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.yaml"
    model.write_text("name: m\nbase: Skylake-Server-v5\nvendor: GenuineIntel\nfeatures: {vmx: on}\n"
                     f"hyperv: {{{flag}: on}}\n")
    assert cli.run(["validate", str(model)]) == 1
    out = capsys.readouterr().out
    assert flag in out and dep in out


def test_nested_eax_bits_are_the_tlfs_bits() -> None:
    # CPUID 0x4000000A.EAX (qemu.md §1.6, KVM.C's table): hv-emsr-bitmap bit 19, hv-tlbflush-direct bit 17.
    assert dict(HV_NESTED_EAX_BITS) == {"hv-emsr-bitmap": 1 << 19, "hv-tlbflush-direct": 1 << 17}
    assert (1 << 19, 1 << 17) == (0x80000, 0x20000)


# --------------------------------------------------------------------------- CPUID gates, by the real QEMU

#: QEMU 7.2 target/i386/cpu.c feature_dependencies[] (qemu.md §2), the CPUID flag -> vmx-* controls it gates,
#: by hand. (QEMU 7.2 has no vmx-enable-user-wait-pause property, so the waitpkg gate cannot be run here.)
QEMU_CPUID_GATES: dict[str, set[str]] = {
    "rdrand": {"vmx-rdrand-exit"},
    "invpcid": {"vmx-invpcid-exit"},
    "mpx": {"vmx-exit-clear-bndcfgs", "vmx-entry-load-bndcfgs"},
    "rdseed": {"vmx-rdseed-exit"},
    "rdtscp": {"vmx-rdtscp-exit"},
    "lm": {"vmx-entry-ia32e-mode"},
    "xsaves": {"vmx-xsaves"},
    "waitpkg": {"vmx-enable-user-wait-pause"},
}
RUNNABLE = {flag: gated for flag, gated in QEMU_CPUID_GATES.items() if flag != "waitpkg"}


def test_cpuid_gate_table_is_qemus() -> None:
    got: dict[str, set[str]] = {}
    for gated, flag in VMX_CPUID_REQUIRES.items():
        got.setdefault(flag, set()).add(gated)
    assert got == QEMU_CPUID_GATES
    reg = registry()
    assert all(reg.get(name) is not None for name in VMX_CPUID_REQUIRES)   # every gated name is a registry bit


def _qemu_depends_warnings(cpu: str) -> set[str]:
    """The vmx-* features real QEMU drops with "depends on other features that were not requested"."""
    r = subprocess.run([qemu_path(), *BASE_ARGS, "-cpu", cpu, "-qmp", "stdio"], check=False, text=True,
                       input='{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n', capture_output=True,
                       timeout=PATIENCE)
    assert r.returncode == 0, r.stderr
    marker = "This feature depends on other features that were not requested: "
    return {line.split(marker)[1].split(".")[1].split()[0] for line in r.stderr.splitlines() if marker in line}


@pytest.mark.qemu
@pytest.mark.parametrize("missing", sorted(RUNNABLE))
def test_real_qemu_drops_exactly_what_the_missing_flag_gates(missing: str) -> None:
    """Ask for every gated vmx-* control with every CPUID flag on except ``missing``: QEMU 7.2 (TCG is fine,
    the dependency pass runs before the accelerator's filter) names exactly the controls ``missing`` gates."""
    gated = sorted(g for gs in RUNNABLE.values() for g in gs)
    flags = [f"+{f}" if f != missing else f"-{f}" for f in sorted(RUNNABLE)]
    cpu = ",".join(["qemu64", "vmx=on", "vmx-secondary-ctls=on", *(f"{g}=on" for g in gated), *flags])
    assert _qemu_depends_warnings(cpu) == RUNNABLE[missing]
