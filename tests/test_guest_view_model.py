"""What the L1 guest reads, MSR by MSR (kvm-evmcs.md §10.2), and pools that mix CPU generations.

QEMU writes BASIC, MISC, EPT_VPID_CAP, the TRUE controls, PROCBASED_CTLS2, VMFUNC, CR0_FIXED0, CR4_FIXED0 and
VMCS_ENUM itself; KVM derives the non-TRUE controls and CR0/CR4_FIXED1. So a host's CR0/CR4 fixed values, its
VMCS_ENUM and a missing IA32_VMX_VMFUNC (a CPU without VM functions: KVM's value is 0) never make two hosts'
guests differ. Expectations are written by hand from the MSR values in the bundled profiles (VirtualBox CPU
database dumps), not computed by the code under test.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from host_helpers import host_profiles
from qemu_evmcs.cli.commands.host import import_text
from qemu_evmcs.core.profile import load_profile, resolve_profile_path
from qemu_evmcs.hostio import vmxcap
from qemu_evmcs.policy.admit import admit
from qemu_evmcs.policy.migrate import migrate_check
from qemu_evmcs.core.views import diff_views
from qemu_evmcs.policy.negotiate import negotiate, start_guest

MODEL = "Skylake-Server-evmcs"


def _imported_copy(name: str, tmp: str) -> str:
    """``name`` rendered as vmxcap output and imported back (vmxcap has no CR0/CR4 fixed or VMCS_ENUM lines)."""
    orig = load_profile(resolve_profile_path(name))
    text = vmxcap.render_profile(orig)
    prof, fmt = import_text(text, file="paste.txt", name=f"{name}-imported", kernel=orig.kernel)
    assert fmt == "vmxcap"
    assert "IA32_VMX_CR0_FIXED0" not in prof.msrs and "IA32_VMX_VMCS_ENUM" not in prof.msrs
    path = os.path.join(tmp, f"{name}-imported.yaml")
    import yaml
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(prof.to_mapping(), f)
    return path


def test_vmfunc_capable_and_incapable_cpus_negotiate() -> None:
    # Ivy Bridge i5-3570: PROCBASED_CTLS2 allowed-1 0x8ff = bits 0-7 and 11; no IA32_VMX_VMFUNC at all.
    # Skylake i7-6700K: 0x1ffcff = bits 0-7 and 10-20, IA32_VMX_VMFUNC = 0x1 (EPTP switching).
    # The VMX layer only: the Ivy Bridge profile's cpu_features (its dump's CPUID) lack Skylake-Server-v5's
    # AVX-512 and the rest, so base-model CPUID would refuse the pool first (tests/test_real_cpuid.py); left out.
    pool = [dataclasses.replace(h, cpu_features=None) for h in host_profiles("ivybridge-5.10", "skylake-6.3")]
    neg = negotiate(MODEL, pool)
    assert neg.ok, neg.error
    feats = neg.guest_features
    for lost in ("vmx-vmfunc", "vmx-eptp-switching", "vmx-invpcid-exit", "vmx-shadow-vmcs"):
        assert lost not in feats
    for kept in ("vmx-ept", "vmx-vpid", "vmx-unrestricted-guest", "vmx-rdrand-exit", "vmx-desc-exit"):
        assert kept in feats
    # The guest reads VMFUNC = 0 on both: QEMU writes its (empty) word on Skylake, KVM's value is 0 on Ivy Bridge.
    assert neg.config is not None
    for start in (start_guest(neg.config, h) for h in pool):
        assert start.ok
        assert start.guest_msrs.get("IA32_VMX_VMFUNC", 0) == 0


def test_no_change_is_ever_bit_minus_one() -> None:
    sky = start_guest(negotiate(MODEL, host_profiles("skylake-6.3")).config, host_profiles("skylake-6.3")[0])  # type: ignore[arg-type]
    view = dict(sky.guest_msrs)
    stripped = {k: v for k, v in view.items()
                if k not in ("IA32_VMX_CR0_FIXED0", "IA32_VMX_CR0_FIXED1", "IA32_VMX_CR4_FIXED0",
                             "IA32_VMX_CR4_FIXED1", "IA32_VMX_VMCS_ENUM", "IA32_VMX_VMFUNC")}
    assert view["IA32_VMX_VMFUNC"] == 0
    assert diff_views(view, stripped) == []
    assert diff_views(stripped, view) == []
    # A VMFUNC bit the other view lacks is a real bit: EPTP switching, bit 0 of 0x491.
    with_eptp = dict(view, IA32_VMX_VMFUNC=0x1)
    changes = diff_views(with_eptp, stripped)
    assert [(c.msr, c.bit, c.feature, c.change) for c in changes] == [
        ("IA32_VMX_VMFUNC", 0, "vmx-eptp-switching", "lost")]
    assert all(c.bit >= 0 for c in diff_views(with_eptp, {}))


def test_vmxcap_import_pools_with_its_original(tmp_path: pytest.TempPathFactory) -> None:
    imported = _imported_copy("skylake-6.3", str(tmp_path))
    alone = negotiate(MODEL, host_profiles("skylake-6.3"))
    pooled = negotiate(MODEL, host_profiles("skylake-6.3", imported))
    assert alone.ok and pooled.ok, pooled.error
    assert alone.config is not None and pooled.config is not None
    assert pooled.config.vmx == alone.config.vmx
    assert pooled.config.hyperv == alone.config.hyperv


def test_admit_and_migrate_accept_the_imported_copy(tmp_path: pytest.TempPathFactory) -> None:
    imported = _imported_copy("skylake-6.3", str(tmp_path))
    res = admit(host_profiles("skylake-6.3"), host_profiles(imported)[0])
    assert res.admit, res.reason
    assert "would lose all" not in res.reason
    verdict = migrate_check(MODEL, host_profiles("skylake-6.3")[0], host_profiles(imported)[0])
    assert verdict.verdict == "fine", verdict.reason
    assert "eVMCS filter" not in verdict.reason


def test_migration_loss_is_not_blamed_on_the_filter_when_the_cpu_lacks_it() -> None:
    # Skylake (VMFUNC 0x1) -> Ivy Bridge (no VM functions), both on 6.3: what disappears is missing on the CPU,
    # and on 6.3 the allow-list hides VM functions anyway, so either the guest keeps its view or the
    # destination refuses; the reason must never name the filter for a control the CPU lacks.
    src = host_profiles("skylake-6.3")[0]
    dst = host_profiles("ivybridge-5.10")[0].with_kernel("6.3.0")
    verdict = migrate_check(MODEL, src, dst)
    assert verdict.verdict in ("blocked", "fine", "unsafe")
    if verdict.verdict == "unsafe":
        assert "eVMCS filter" not in verdict.reason or "vmx-vmfunc" not in verdict.reason
