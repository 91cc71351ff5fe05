"""EVC-style, eVMCS-aware admission."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from host_helpers import host_profiles
from qemu_evmcs.policy.admit import admit
from qemu_evmcs.core.msrval import feature_set
from qemu_evmcs.policy.negotiate import max_model
from qemu_evmcs.policy.resolve import profile_from_features
from qemu_evmcs.cli.main import run

MODEL = os.path.join(os.path.dirname(__file__), "data", "negotiate", "models", "Skylake-evmcs.yaml")


def test_admit_identical_era_host() -> None:
    res = admit(host_profiles("skylake-6.3"), host_profiles("sapphirerapids-6.6")[0], MODEL)
    assert res.admit, res.reason


def test_refuse_old_kernel_that_shrinks_the_guest_set() -> None:
    """On the simulated QEMU, which can set the PV bit, a 5.10 host costs the 6.x pool PERF_GLOBAL_CTRL."""
    res = admit(host_profiles("skylake-6.3", "sapphirerapids-6.6"), host_profiles("skylake-5.10")[0], MODEL,
                target="simulator")
    assert not res.admit
    assert {"vmx-exit-load-perf-global-ctrl", "vmx-entry-load-perf-global-ctrl"} <= set(res.cost_features)
    assert res.cost_pv_perf_global_ctrl
    assert "hv-emsr-bitmap" in res.cost_hyperv


def test_real_qemu_pool_admits_a_510_host(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 13: with real QEMU (the default) the PV bit is never set, so PERF_GLOBAL_CTRL is hidden on 6.1+ anyway
    and a 5.10 host (whose eVMCS filter hides PERF and APIC-access virtualization, both already off for a 6.3
    pool's guests) shrinks nothing. It was refused over hv-evmcs-perf-global-ctrl, an option QEMU 7.2 lacks."""
    res = admit(host_profiles("skylake-6.3"), host_profiles("skylake-5.10")[0])
    assert res.admit, res.reason
    assert not res.cost_pv_perf_global_ctrl and res.pool is not None and res.pool.config is not None
    assert not res.pool.config.pv_perf_global_ctrl
    assert run(["admit", "--pool", "skylake-6.3", "--candidate", "skylake-5.10"]) == 0
    assert capsys.readouterr().out.startswith("admit: skylake-5.10")


def test_refuse_incapable_candidate() -> None:
    res = admit(host_profiles("skylake-6.3"), host_profiles("epyc-amd-6.6")[0], MODEL)
    assert not res.admit and "AuthenticAMD" in res.reason


def test_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["admit", "--pool", "skylake-6.3", "--candidate", "sapphirerapids-6.6", "--model", MODEL]) == 0
    assert capsys.readouterr().out.startswith("admit:")
    assert run(["admit", "--pool", "skylake-6.3", "--candidate", "skylake-5.10", "--json", "--target",
                "simulator"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["admit"] is False and err == ""


def test_refusal_reason_is_printed_once(capsys: pytest.CaptureFixture[str]) -> None:
    """The verdict line on stdout with the reason once, then what admitting would cost; no error: line (a
    refusal is a negative answer, not bad input: issue 13)."""
    assert run(["admit", "--pool", "skylake-6.3", "--candidate", "skylake-5.10", "--target", "simulator"]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    first = out.splitlines()[0]
    assert first.startswith("refuse: skylake-5.10: ")
    why = first.removeprefix("refuse: skylake-5.10: ")
    # QEMU's "Hyper-V %s is not supported by kernel" for the plug-in option (5.10 lacks 0x4000000A.EBX bit 0)
    assert why == "Hyper-V eVMCS PERF_GLOBAL_CTRL (hv-evmcs-perf-global-ctrl) is not supported by kernel"
    assert out.count(why) == 1 and "admitting it would cost" not in first
    assert "  the pool's guests would lose: vmx-exit-load-perf-global-ctrl, vmx-entry-load-perf-global-ctrl" in out


def test_refusal_names_the_bits_that_would_differ() -> None:
    # starts there, but 6.3 filters more
    res = admit(host_profiles("skylake-5.10"), host_profiles("skylake-6.3")[0], "max", "pv-cpuid")
    assert not res.admit
    assert res.why == ("guest-visible VMX MSRs would differ: vmx-preemption-timer lost, vmx-exit-save-preemption-"
                       "timer lost, vmx-ple lost, vmx-vmfunc lost, vmx-shadow-vmcs lost, vmx-pml lost, "
                       "vmx-eptp-switching lost")
    assert res.reason.startswith(f"refuse skylake-6.3: {res.why}; admitting it would cost: ")


def test_candidate_lacking_only_a_control_evmcs_hides_is_admitted_and_told_so() -> None:
    """Posted interrupts (pin-based bit 7) are outside EVMCS1_SUPPORTED_PINCTRL in every era (kvm-evmcs.md §3):
    an eVMCS guest never sees them, so a candidate whose KVM lacks only that control shows the pool's guest the
    same VMX MSRs. The i7-6700K (skylake-6.3) has no posted interrupts; the pool is a synthetic 6.3 host with its
    features plus that control, the model asks for exactly the pool's features (QEMU-settable ones)."""
    sk = host_profiles("skylake-6.3")[0]
    feats = feature_set(sk.msrs)
    assert "vmx-posted-intr" not in feats
    pool = profile_from_features("pool", feats | {"vmx-posted-intr"}, kernel=sk.kernel)
    gm = replace(max_model(), vmx=max_model().vmx & (feats | {"vmx-posted-intr"}))
    res = admit([pool], profile_from_features("no-pi", feats, kernel=sk.kernel), gm)
    assert res.admit and res.reason.endswith("(it lacks only controls eVMCS hides anyway)"), res.reason
    same = admit([pool], profile_from_features("same", feats | {"vmx-posted-intr"}, kernel=sk.kernel), gm)
    assert same.admit and "lacks only" not in same.reason, same.reason
