"""hv_evmcs_error() (the resolver's and negotiator's short form of QEMU's hv-evmcs start-up) must agree
with the simulated QEMU's full start-up on every bundled host and kernel era."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qemu_evmcs.core.profile import bundled_profile_dir, load_profile
from qemu_evmcs.qemu.compose import hv_evmcs_error
from qemu_evmcs.kvm.simkvm import SimKvm
from qemu_evmcs.simqemu.startup import predict

KERNELS = ["4.19", "4.20", "5.4", "5.9", "5.10", "5.11", "5.15", "6.1", "6.3", "6.8"]
PROFILES = sorted(p.stem for p in Path(bundled_profile_dir()).glob("*.yaml"))
ARGV = ["-accel", "kvm", "-cpu", "host,vmx=on,hv-evmcs=on,hv-vapic=on"]


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_short_form_agrees_with_simulated_qemu(name: str, kernel: str, tmp_path: Path) -> None:
    profile = load_profile(str(Path(bundled_profile_dir()) / f"{name}.yaml")).with_kernel(kernel)
    path = tmp_path / "host.yaml"
    path.write_text(yaml.safe_dump(profile.to_mapping()))
    short = hv_evmcs_error(SimKvm(profile))
    full = predict(str(path), ARGV)
    hv_failure = next((line for line in full.stderr if "not supported by kernel" in line), None)
    if short is None:
        # The Hyper-V part passes; the full start-up may still abort later on a VMX MSR write (<= 5.6).
        assert hv_failure is None, full.stderr
    else:
        assert hv_failure is not None and hv_failure.endswith(short), (short, full.stderr)


def test_nested_off_text_depends_on_the_hyperv_cpuid_ioctl() -> None:
    base = load_profile(str(Path(bundled_profile_dir()) / "skylake-nested-off-6.1.yaml"))
    assert hv_evmcs_error(SimKvm(base)) == "Hyper-V enlightened VMCS (hv-evmcs) is not supported by kernel"
    assert hv_evmcs_error(SimKvm(base.with_kernel("5.10"))) == (
        "eVMCS version range [1..1] is not supported by kernel (supported: [0..0])")
