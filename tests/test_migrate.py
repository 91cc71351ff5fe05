"""Migration verdicts: fine, blocked, unsafe, per design."""

from __future__ import annotations

import json
import os

import pytest

from host_helpers import host_profiles
from qemu_evmcs.cli.main import run
from qemu_evmcs.core.errors import NegativeAnswer
from qemu_evmcs.policy.migrate import check_migration, migrate_check, naive_config, parse_qmp_msrs, source_config
from qemu_evmcs.policy.negotiate import load_guest_model, max_model

DATA = os.path.join(os.path.dirname(__file__), "data", "negotiate")
MODEL = os.path.join(DATA, "models", "Skylake-evmcs.yaml")
NOPERF_63 = os.path.join(DATA, "hosts", "noperf-6.3.yaml")
NOPERF_510 = os.path.join(DATA, "hosts", "noperf-5.10.yaml")


def host(name: str):  # type: ignore[no-untyped-def]
    return host_profiles(name)[0]


def test_fine_between_same_era_hosts() -> None:
    v = migrate_check(MODEL, host("skylake-6.3"), host("sapphirerapids-6.6"), "shipped")
    assert v.verdict == "fine" and v.identical


def test_unsafe_names_the_bits_the_destination_filter_hides() -> None:
    # 5.10 shows the preemption timer, VMFUNC, shadow VMCS...; 6.3's allow-list hides them.
    v = migrate_check(max_model(), host("skylake-5.10"), host("skylake-6.3"), "shipped")
    assert v.verdict == "unsafe"
    lost = {c.label() for c in v.lost}
    assert {"vmx-preemption-timer", "vmx-shadow-vmcs", "vmx-vmfunc"} <= lost
    assert "eVMCS controls check" in v.reason


def test_blocked_when_destination_ignores_the_pv_bit() -> None:
    v = migrate_check(MODEL, host("icelake-6.1"), host("skylake-5.10"), "shipped")
    assert v.verdict == "blocked" and v.stage == "hv-feature"
    assert not v.unnecessary


def test_blocked_msr_write_on_pre_57_destination() -> None:
    v = migrate_check(max_model(), host("skylake-5.10"), host("cascadelake-5.4"), "shipped")
    assert v.verdict == "blocked" and v.stage == "msr-write"
    assert "failed to set MSR 0x48d" in v.reason


def test_naive_loses_perf_global_ctrl_to_old_kernel() -> None:
    v = migrate_check(max_model(), host("skylake-6.3"), host("skylake-5.10"), "naive")
    assert v.verdict == "unsafe"
    assert {"vmx-exit-load-perf-global-ctrl", "vmx-entry-load-perf-global-ctrl"} <= {c.label() for c in v.lost}


def test_revision_blocks_unnecessarily_on_hardware_without_the_controls() -> None:
    # The revision request is the simulated QEMU's (x-hv-evmcs-revision); real QEMU cannot ask for revision 2.
    v = migrate_check(max_model(), host(NOPERF_63), host(NOPERF_510), "revision", target="simulator")
    assert v.verdict == "blocked" and v.stage == "revision"
    assert v.unnecessary and v.wrong
    assert "hardware that lacks the new controls anyway" in v.reason
    assert migrate_check(max_model(), host(NOPERF_63), host(NOPERF_510), "vmx-msrs").verdict == "fine"


def test_vmx_msrs_design_blocks_instead_of_unsafe() -> None:
    v = migrate_check(max_model(), host("skylake-5.10"), host("skylake-6.3"), "vmx-msrs")
    assert v.verdict == "blocked" and v.stage == "userspace-check" and not v.wrong


def test_source_that_cannot_start() -> None:
    cfg = naive_config(max_model())
    with pytest.raises(NegativeAnswer, match="cannot start on the source"):
        check_migration(cfg, host("cascadelake-5.4"), host("skylake-6.3"))
    with pytest.raises(NegativeAnswer):
        source_config(load_guest_model(MODEL), host("epyc-amd-6.6"), "shipped")


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["migrate-check", "--model", MODEL, "--from", "skylake-6.3", "--to", "sapphirerapids-6.6"]) == 0
    assert capsys.readouterr().out.startswith("fine:")
    assert run(["migrate-check", "--model", "max", "--from", "skylake-5.10", "--to", "skylake-6.3", "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["verdict"] == "unsafe"
    assert err == ""        # a negative answer, not an error


def test_parse_qmp_reply_forms() -> None:
    assert parse_qmp_msrs({"msrs": {"IA32_VMX_BASIC": "0x10"}}) == {"IA32_VMX_BASIC": 16}
    assert parse_qmp_msrs([{"name": "0x480", "value": 5}]) == {"IA32_VMX_BASIC": 5}


def test_cli_negative_verdict_reason_printed_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["migrate-check", "--model", "max", "--from", "skylake-5.10", "--to", "skylake-6.3"]) == 1
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and out.startswith("unsafe: skylake-5.10 -> skylake-6.3 (shipped): guest-visible VMX "
                                                   "controls disappear")
    assert err == ""
