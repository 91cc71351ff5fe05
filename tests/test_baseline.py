"""``qemu-evmcs baseline``: both views, per-layer loss attribution, scale, and properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from golden_models_util import check_golden
from hypothesis import given, settings
from hypothesis import strategies as st

from qemu_evmcs.fleet.sources import load_hosts_fleet
from qemu_evmcs.cli import main as cli
from qemu_evmcs.policy import resolve
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.qemu.models import effective_model, load_model
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.registry import registry
from qemu_evmcs.policy.resolve import BaselineResult, baseline, profile_from_features

EVERY = frozenset(registry().features)


def pool() -> list[HostProfile]:
    """A small mixed fleet covering every loss layer."""
    return [
        profile_from_features("sky-63", EVERY, kernel="6.3"),
        profile_from_features("sky-61", EVERY, kernel="6.1.55"),
        profile_from_features("csl-515", EVERY - {"vmx-page-walk-5"}, kernel="5.15"),
        profile_from_features("sky-510-no1g", EVERY - {"vmx-ept-1gb", "vmx-xsaves"}, kernel="5.10",
                              cpu_features=EVERY - {"vmx-ept-1gb"}),
        profile_from_features("icx-66", EVERY, kernel="6.6"),
    ]


def write(tmp_path: Path, hosts: list[HostProfile], sub: str = "hosts") -> Path:
    d = tmp_path / sub
    d.mkdir(exist_ok=True)
    for i, h in enumerate(hosts):
        (d / f"{i:05d}-{h.name}.yaml").write_text(yaml.safe_dump(h.to_mapping()))
    return d


def losses(result: BaselineResult) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for loss in result.losses:
        out.setdefault((loss.feature, loss.layer), set()).update(loss.hosts)
    return out


def test_model_baseline_layers() -> None:
    result = baseline(pool(), load_model("Skylake-Server-evmcs"))
    lost = losses(result)
    assert lost[("vmx-ept-1gb", "cpu")] == {"sky-510-no1g"}      # cpu_msrs lack it
    assert lost[("vmx-xsaves", "kvm")] == {"sky-510-no1g"}       # the CPU has it (cpu_msrs), KVM does not report it
    assert lost[("vmx-posted-intr", "model")] == {h.name for h in pool()}
    assert "vmx-page-walk-5" not in result.wanted                 # Skylake base never had it
    assert "vmx-ept-1gb" not in result.unfiltered and "vmx-ept" in result.unfiltered
    assert result.evmcs == result.unfiltered                      # the model already hides what eVMCS hides
    assert result.evmcs <= result.unfiltered <= result.wanted


def test_evmcs_view_attributes_filter_era_and_perf_gate(tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text("name: m\nbase: Skylake-Server-v5\nvendor: GenuineIntel\nfeatures: {vmx: on}\n"
                 "hyperv: {hv-vapic: on, hv-evmcs: on}\nevmcs: {pv-perf-global-ctrl: on}\n")
    hosts = [profile_from_features("k510", EVERY, kernel="5.10"), profile_from_features("k63", EVERY, kernel="6.3"),
             profile_from_features("k515", EVERY, kernel="5.15")]
    result = baseline(hosts, load_model(str(m)))
    by = {(x.feature, x.hosts): (x.view, x.layer, x.detail) for x in result.losses}
    # PERF_GLOBAL_CTRL: filtered before 6.1; with the CPUID bit set the 6.3 guest sees it.
    assert by[("vmx-exit-load-perf-global-ctrl", ("k510",))] == ("evmcs", "evmcs-filter",
                                                                 "eVMCS filter of kernel era 5.6-5.14")
    assert by[("vmx-exit-load-perf-global-ctrl", ("k515",))][:2] == ("evmcs", "evmcs-filter")
    assert ("vmx-exit-load-perf-global-ctrl", ("k63",)) not in by
    assert by[("vmx-vmfunc", ("k515",))] == ("evmcs", "evmcs-filter", "eVMCS filter of kernel era 5.15-5.16")
    assert by[("vmx-vmfunc", ("k63",))] == ("evmcs", "evmcs-filter", "eVMCS filter of kernel era 6.3+")
    assert ("vmx-vmfunc", ("k510",)) not in by                   # 5.6-5.14 let it through
    assert "vmx-exit-load-perf-global-ctrl" in result.unfiltered
    assert "vmx-exit-load-perf-global-ctrl" not in result.evmcs
    auto = baseline(hosts, load_model(str(m)), pv_perf_global_ctrl="auto")
    gate = [x for x in auto.losses if x.feature == "vmx-exit-load-perf-global-ctrl" and x.hosts == ("k63",)]
    assert gate[0].layer == "perf-cpuid-gate"


def test_evmcs_era_detail_names_the_era() -> None:
    result = baseline([profile_from_features("k66", EVERY, kernel="6.6")], None)
    shadow = next(x for x in result.losses if x.feature == "vmx-shadow-vmcs")
    assert (shadow.view, shadow.layer, shadow.detail) == ("evmcs", "evmcs-filter", "eVMCS filter of kernel era 6.3+")


def test_pool_mode_and_unstartable_hosts() -> None:
    hosts = pool() + [profile_from_features("epyc", EVERY, vendor="AuthenticAMD")]
    result = baseline(hosts)
    assert result.model is None and result.not_starting == ("epyc",)
    assert result.unfiltered == frozenset() and result.evmcs == frozenset()
    result = baseline(pool())
    assert "vmx-ept" in result.evmcs and "vmx-apicv-xapic" in result.unfiltered
    assert "vmx-apicv-xapic" not in result.evmcs
    with pytest.raises(InputError, match="at least one host"):
        baseline([])


def test_history_added_is_marked(tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text("name: m\nbase: Skylake-Server-v5\nvendor: GenuineIntel\nfeatures: {vmx: on}\n"
                 "history: {added: {vmx-xsaves: 'definition rev 2'}}\n")
    result = baseline(pool(), load_model(str(m)))
    xs = next(x for x in result.losses if x.feature == "vmx-xsaves")
    assert xs.history == "added: definition rev 2"


def test_golden(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = write(tmp_path, pool() + [profile_from_features("nested-off", EVERY, nested=False, kernel="6.1")])
    assert cli.run(["baseline", "--model", "Skylake-Server-evmcs", str(d), "--json"]) == 0
    check_golden("baseline/skylake-server-evmcs.json", json.loads(capsys.readouterr().out))
    assert cli.run(["baseline", "--pool", str(d), "--json"]) == 0
    check_golden("baseline/pool.json", json.loads(capsys.readouterr().out))
    assert cli.run(["baseline", "--model", "Icelake-Server-evmcs", str(d)]) == 0
    text = capsys.readouterr().out
    assert "does not start on: nested-off" in text
    assert "vmx-page-walk-5" in text and "csl-515: kvm:" in text


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = write(tmp_path, pool())
    assert cli.run(["baseline", "--model", "SapphireRapids-evmcs", str(d)]) == 2
    assert "needs QEMU >= 8.0 (snapshot is 7.2)" in capsys.readouterr().err
    assert cli.run(["baseline", "--model", "Nope", str(d)]) == 2


def test_many_files_one_computation_per_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 500 files, 100 per distinct profile: the count of computations (one per fingerprint) does not depend on
    # the number of files, so 3,000 (17 s of the suite at load 9) showed nothing more.
    distinct = pool()
    d = tmp_path / "fleet"
    d.mkdir()
    for i in range(500):
        h = distinct[i % len(distinct)]
        data = h.to_mapping()
        data["name"] = f"host-{i:04d}"
        (d / f"host-{i:04d}.yaml").write_text(yaml.safe_dump(data))
    calls: list[str] = []
    real = resolve.compute_host_views

    def counting(profile: HostProfile, **kw: object) -> resolve.HostViews:
        calls.append(profile.fingerprint())
        return real(profile, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(resolve, "compute_host_views", counting)
    model = load_model("Skylake-Server-evmcs")
    big = baseline(load_hosts_fleet([str(d)]).iter_hosts(), model)
    assert len(calls) == len(distinct) == len(set(calls))
    assert big.host_count == 500 and len(big.groups) == len(distinct)
    small = baseline(distinct, model)
    assert (big.unfiltered, big.evmcs) == (small.unfiltered, small.evmcs)
    assert sum(len(g.hosts) for g in big.groups) == 500
    lost_1g = next(x for x in big.losses if x.feature == "vmx-ept-1gb")
    assert len(lost_1g.hosts) == 100  # the one distinct profile without 1 GiB EPT pages: 500 / 5


# --------------------------------------------------------------------------- properties

KERNELS = ["4.19", "5.4", "5.10", "5.15", "5.17", "6.1", "6.2", "6.3", "6.8"]
FEATURES = sorted(EVERY)


@st.composite
def hosts_st(draw: st.DrawFn) -> HostProfile:
    feats = draw(st.sets(st.sampled_from(FEATURES), min_size=len(FEATURES) - 12, max_size=len(FEATURES)))
    kernel = draw(st.sampled_from(KERNELS))
    vendor = draw(st.sampled_from(["GenuineIntel"] * 5 + ["AuthenticAMD"]))
    nested = draw(st.sampled_from([True, True, True, False]))
    return profile_from_features(f"h{draw(st.integers(0, 10**6))}", feats, kernel=kernel, vendor=vendor, nested=nested)


EFF = effective_model(load_model("Cascadelake-Server-evmcs"))


@settings(max_examples=40, deadline=None)
@given(st.lists(hosts_st(), min_size=1, max_size=6), st.booleans())
def test_baseline_within_every_member(hosts: list[HostProfile], with_model: bool) -> None:
    result = baseline(hosts, EFF if with_model else None)
    for g in result.groups:
        assert result.unfiltered <= g.unfiltered
        if g.starts:
            assert result.evmcs <= g.evmcs
    assert result.evmcs <= result.unfiltered <= result.wanted


@settings(max_examples=30, deadline=None)
@given(st.lists(hosts_st(), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_host_order_does_not_matter(hosts: list[HostProfile], rnd: object) -> None:
    shuffled = list(hosts)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert baseline(hosts, EFF).to_json() == baseline(shuffled, EFF).to_json()
    assert baseline(hosts).to_json() == baseline(shuffled).to_json()


@settings(max_examples=30, deadline=None)
@given(st.lists(hosts_st(), min_size=1, max_size=5), hosts_st(), st.booleans())
def test_adding_a_host_never_adds_a_feature(hosts: list[HostProfile], extra: HostProfile, with_model: bool) -> None:
    model = EFF if with_model else None
    before = baseline(hosts, model)
    after = baseline(hosts + [extra], model)
    assert after.unfiltered <= before.unfiltered
    assert after.evmcs <= before.evmcs


def test_text_lists_losses_and_summarises_what_every_host_keeps(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    d = write(tmp_path, pool())
    assert cli.run(["baseline", "--pool", str(d)]) == 0
    short = capsys.readouterr().out
    assert cli.run(["baseline", "--pool", str(d), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    lost = {x["feature"] for x in data["losses"]}
    rows = [line.split()[0] for line in short.splitlines() if line.startswith("vmx-")]
    assert lost and set(rows) == lost            # one row per lost feature, nothing else
    assert "kept on every host in both views" in short
    assert cli.run(["baseline", "--pool", str(d), "--all"]) == 0
    full = capsys.readouterr().out
    full_rows = {line.split()[0] for line in full.splitlines() if line.startswith("vmx-")}
    assert lost < full_rows and "kept on every host" not in full


# ---- whether the guest starts is the start-up model's answer (issue 10) --------------------------------------
# cascadelake-5.4 (Ubuntu 5.4.0-150 = 5.4.250, era 4.20-5.5+7a601e2cf615) sanitizes the vCPU's nested MSRs when
# eVMCS is enabled (kvm-evmcs.md §4.2, §10.3: UNSUPPORTED_PINCTRL = preemption timer bit 6 | posted interrupts
# bit 7). QEMU 7.2 writes TRUE_PROCBASED first, then TRUE_PINBASED (0x48d, §10.1). The profile's TRUE_PINBASED is
# 0x000000ff00000016: allowed-1 0xff = bits 0-7 (ext-intr 0, NMI 3, vNMI 5, preemption timer 6, posted-intr 7,
# plus the default1 bits 1,2,4 = 0x16). A model keeping bits 6 and 7 asks for 0xff00000016, which the sanitized
# vCPU rejects: "error: failed to set MSR 0x48d to 0xff00000016", the abort of kvm-evmcs.md §10.3.
ABORT_5_4 = "error: failed to set MSR 0x48d to 0xff00000016"

KEEPS_PIN = ("name: keeps-pin\nbase: Skylake-Server-v5\nvendor: GenuineIntel\nfeatures: {vmx: on}\n"
             "hyperv: {hv-vapic: on, hv-evmcs: on}\n")


def test_model_aborting_on_an_enable_time_kernel_does_not_start(tmp_path: Path) -> None:
    m = tmp_path / "keeps-pin.yaml"
    m.write_text(KEEPS_PIN)
    hosts = load_hosts_fleet(["cascadelake-5.4", "skylake-5.10"])
    result = baseline(hosts, load_model(str(m)))
    assert result.not_starting == ("cascadelake-5.4",)
    group = next(g for g in result.groups if g.hosts == ("cascadelake-5.4",))
    assert group.reason is not None and group.reason.startswith(ABORT_5_4 + " (QEMU aborts:")
    assert group.evmcs == frozenset() and result.evmcs == frozenset()
    # 5.10 (read-time filter) starts it: the guest only loses what the filter hides there
    assert next(g for g in result.groups if g.hosts == ("skylake-5.10",)).starts


def test_shipped_model_switching_the_sanitized_controls_off_starts_on_5_4() -> None:
    # Skylake-Server-evmcs switches off vmx-preemption-timer and vmx-posted-intr (cpu_models/, 'off' list), so its
    # TRUE_PINBASED write keeps to 0x3f00000016 and passes.
    result = baseline(load_hosts_fleet(["cascadelake-5.4"]), load_model("Skylake-Server-evmcs"))
    assert result.not_starting == () and "vmx-ept" in result.evmcs


def test_baseline_model_host_on_5_4_does_not_start(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["baseline", "--model", "host", "cascadelake-5.4", "skylake-6.3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["not_starting"] == ["cascadelake-5.4"]
    bad = next(g for g in data["groups"] if g["name"] == "cascadelake-5.4")
    assert bad["reason"].startswith(ABORT_5_4) and bad["evmcs"] == []
    assert data["baseline"]["evmcs"] == []
    # --pool (what a custom model can pin) still counts the 5.4 host's sanitized set
    assert cli.run(["baseline", "--pool", "cascadelake-5.4", "skylake-6.3", "--json"]) == 0
    pool_data = json.loads(capsys.readouterr().out)
    assert pool_data["not_starting"] == [] and "vmx-ept" in pool_data["baseline"]["evmcs"]


@pytest.mark.parametrize("model", ["host", "max"])
def test_builtin_model_header_names_the_model(model: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--model host|max`` was headed "pool baseline (no model)", as if no --model had been given."""
    assert cli.run(["baseline", "--model", model, "--hosts", "skylake-6.3", "icelake-6.1"]) == 0
    heads = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("note:")]
    assert heads[0].startswith(f"model {model} (each host's own set): 2 host(s), 2 distinct;"), heads[0]
