"""Scenario tests of the negotiator over the bundled profiles and tests/data/negotiate fixtures."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest

from qemu_evmcs.cli import run
from qemu_evmcs.errors import NegativeAnswer
from qemu_evmcs.negotiate import (
    PERF_FEATURES,
    STRATEGIES,
    diff_views,
    load_hosts,
    max_model,
    negotiate,
    negotiate_cpu_arg,
    start_guest,
)
from qemu_evmcs.outputs import compare_strategies, cpu_string, libvirt_xml, negotiation_json

HERE = os.path.dirname(__file__)
DATA = os.path.join(HERE, "data", "negotiate")
MODEL = os.path.join(DATA, "models", "Skylake-evmcs.yaml")
NOPERF_63 = os.path.join(DATA, "hosts", "noperf-6.3.yaml")
NOPERF_510 = os.path.join(DATA, "hosts", "noperf-5.10.yaml")


def _identical_everywhere(neg_hosts: list[str], strategy: str) -> None:
    neg = negotiate(MODEL, neg_hosts, strategy)
    assert neg.ok, neg.error
    assert neg.config is not None
    views = [start_guest(neg.config, h) for h in load_hosts(neg_hosts)]
    assert all(v.ok for v in views)
    for v in views[1:]:
        assert diff_views(views[0].guest_msrs, v.guest_msrs) == []


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("hosts", [
    ["skylake-5.10", "skylake-6.3"],
    ["cascadelake-5.4", "icelake-5.15", "icelake-6.1", "sapphirerapids-6.6"],
    ["icelake-6.1", "sapphirerapids-6.6"],
])
def test_every_strategy_gives_identical_guest_views(hosts: list[str], strategy: str) -> None:
    _identical_everywhere(hosts, strategy)


def test_pv_cpuid_sets_bit_only_when_every_host_honours_it() -> None:
    new = negotiate(MODEL, ["icelake-6.1", "sapphirerapids-6.6"], "pv-cpuid")
    assert new.config is not None and new.config.pv_perf_global_ctrl
    assert set(PERF_FEATURES) <= new.guest_features
    assert "hv-evmcs-perf-global-ctrl=on" in cpu_string(new)
    mixed = negotiate(MODEL, ["skylake-5.10", "skylake-6.3"], "pv-cpuid")
    assert mixed.config is not None and not mixed.config.pv_perf_global_ctrl
    assert not set(PERF_FEATURES) & mixed.guest_features
    causes = {(d.feature, d.cause) for d in mixed.drops}
    assert ("vmx-exit-load-perf-global-ctrl", "perf-cpuid-gate") in causes
    assert ("vmx-exit-load-perf-global-ctrl", "evmcs-filter") in causes


def test_pv_cpuid_needs_perf_controls_on_every_host() -> None:
    neg = negotiate(MODEL, ["skylake-6.3", NOPERF_63], "pv-cpuid")
    assert neg.ok and neg.config is not None
    assert not neg.config.pv_perf_global_ctrl


def test_revision_forced_to_legacy_by_one_pre_61_host() -> None:
    neg = negotiate(MODEL, ["skylake-5.10", "skylake-6.3"], "revision")
    assert neg.config is not None and neg.config.revision == 1
    assert any("forced by skylake-5.10" in n for n in neg.notes)
    only_new = negotiate(MODEL, ["icelake-6.1", "sapphirerapids-6.6"], "revision")
    assert only_new.config is not None and only_new.config.revision == 2


def test_vmx_msrs_exposes_tsc_scaling_shipped_does_not() -> None:
    model = max_model()
    hosts = ["icelake-6.1", "sapphirerapids-6.6"]
    b = negotiate(model, hosts, "vmx-msrs")
    a = negotiate(model, hosts, "pv-cpuid")
    assert "vmx-tsc-scaling" in b.guest_features
    assert "vmx-tsc-scaling" not in a.guest_features
    cmp = compare_strategies({"pv-cpuid": a, "vmx-msrs": b})
    assert "vmx-tsc-scaling" in cmp["vmx-msrs"]["allows"]
    assert any("TSC scaling" in w for w in cmp["pv-cpuid"]["gets_wrong"])


def test_pre_57_host_turns_off_enable_time_filtered_bits() -> None:
    neg = negotiate(max_model(), ["cascadelake-5.4", "icelake-6.1"], "pv-cpuid")
    assert neg.ok and neg.config is not None
    enable = {d.feature for d in neg.drops if d.cause == "enable-time-filter"}
    assert {"vmx-posted-intr", "vmx-preemption-timer"} <= enable
    assert "vmx-posted-intr" not in neg.config.vmx
    assert "-vmx-posted-intr" in cpu_string(neg)


def test_inconsistent_true_pinbased_filter_is_dropped() -> None:
    neg = negotiate(max_model(), ["icelake-5.15"], "pv-cpuid")
    assert neg.ok
    assert ("vmx-posted-intr", "inconsistent-filter") in {(d.feature, d.cause) for d in neg.drops}


@pytest.mark.parametrize("bad,needle", [
    ("epyc-amd-6.6", "AuthenticAMD has no eVMCS"),
    ("skylake-nested-off-6.1", "kvm_intel.nested=0"),
])
def test_incapable_host_is_an_error(bad: str, needle: str) -> None:
    neg = negotiate(MODEL, ["skylake-6.3", bad], "pv-cpuid")
    assert not neg.ok and needle in neg.error
    with pytest.raises(NegativeAnswer):
        negotiate_cpu_arg(MODEL, ["skylake-6.3", bad])


def test_hv_flag_unsupported_on_old_kernel_is_dropped() -> None:
    neg = negotiate(MODEL, ["skylake-5.10", "skylake-6.3"], "pv-cpuid")
    assert [d.feature for d in neg.hv_dropped] == ["hv-emsr-bitmap"]
    assert neg.config is not None and "hv-emsr-bitmap" not in neg.config.hyperv
    assert "hv-emsr-bitmap" in negotiate(MODEL, ["skylake-6.3"], "pv-cpuid").config.hyperv  # type: ignore[union-attr]


def test_cpu_string_and_libvirt_xml() -> None:
    neg = negotiate(MODEL, ["skylake-5.10", "skylake-6.3"], "pv-cpuid")
    cpu = cpu_string(neg)
    assert cpu.startswith("Skylake-Server-v5,vmx=on,")
    assert "-vmx-posted-intr" in cpu and "hv-vapic=on" in cpu and "hv-evmcs=on" in cpu
    assert cpu.endswith("enforce=on")
    assert negotiate_cpu_arg(MODEL, ["skylake-5.10", "skylake-6.3"]) == cpu
    root = ET.fromstring("<r>" + libvirt_xml(neg) + "</r>")
    cpu_el = root.find("cpu")
    assert cpu_el is not None and cpu_el.get("mode") == "custom" and cpu_el.get("match") == "exact"
    feats = {f.get("name"): f.get("policy") for f in cpu_el.findall("feature")}
    assert feats["vmx-posted-intr"] == "disable" and feats["vmx"] == "require"
    hv = root.find("features/hyperv")
    assert hv is not None and hv.get("mode") == "custom"
    assert hv.find("evmcs") is not None and hv.find("vapic") is not None


def test_plugin_option_is_flagged_in_xml_and_json() -> None:
    neg = negotiate(MODEL, ["icelake-6.1", "sapphirerapids-6.6"], "pv-cpuid")
    assert "hv-evmcs-perf-global-ctrl" in libvirt_xml(neg)
    data = negotiation_json(neg)
    assert data["pv_perf_global_ctrl"] is True
    assert any("real QEMU" in x for x in data["qemu_lacks"])


def test_cli_json_failure_still_prints_object(capsys: pytest.CaptureFixture[str]) -> None:
    rc = run(["negotiate", "--model", MODEL, "--hosts", "skylake-6.3", "epyc-amd-6.6", "--json"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert json.loads(out)["ok"] is False
    assert err.count("\n") == 1 and err.startswith("error: ")


def test_cli_formats(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["negotiate", "--model", MODEL, "--hosts", "skylake-6.3", "--format", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("Skylake-Server-v5,vmx=on")
    assert run(["negotiate", "--model", MODEL, "--hosts", "skylake-6.3", "--format", "libvirt"]) == 0
    assert "<cpu mode=" in capsys.readouterr().out
    assert run(["negotiate", "--model", MODEL, "--hosts", "skylake-5.10", "skylake-6.3", "--strategy", "all"]) == 0
    out = capsys.readouterr().out
    assert all(f"strategy {s}" in out for s in STRATEGIES)


GOLDEN_CASES = {
    "negotiate/mixed-pv-cpuid.json": (["skylake-5.10", "skylake-6.3"], "pv-cpuid"),
    "negotiate/new-all.json": (["icelake-6.1", "sapphirerapids-6.6"], "all"),
    "negotiate/fleet-all.json": (["cascadelake-5.4", "icelake-5.15", "icelake-6.1", "sapphirerapids-6.6"], "all"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_json(name: str, golden: Callable[[str, str], None], capsys: pytest.CaptureFixture[str]) -> None:
    hosts, strategy = GOLDEN_CASES[name]
    run(["negotiate", "--model", MODEL, "--hosts", *hosts, "--strategy", strategy, "--json"])
    out = capsys.readouterr().out
    # The model path is machine-independent (name from the file), hosts are bundled names.
    golden(name, out)
