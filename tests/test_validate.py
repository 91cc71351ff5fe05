"""``qemu-evmcs validate``: findings with file:line, severities, exit codes, --hosts, golden JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from golden_models_util import check_golden

from qemu_evmcs.cli import main as cli
from qemu_evmcs.qemu.models import Finding, compose_yaml
from qemu_evmcs.core.registry import registry
from qemu_evmcs.policy.resolve import profile_from_features
from qemu_evmcs.policy.validate import era_visibility, hidden_eras, validate_paths

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "data" / "models"
FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.yaml"))

# eVMCS visibility of every registry feature across the eras with KVM_CAP_HYPERV_ENLIGHTENED_VMCS
# (kvm-evmcs.md §3-§4, data/eras.yaml), without the PERF_GLOBAL_CTRL CPUID bit (QEMU never sets it).
# vmx-ipi-virt (TERTIARY_EXEC_IPI_VIRT, IA32_VMX_PROCBASED_CTLS3 bit 4): never, whatever the era's filter does
# with the tertiary word. KVM emulates only KVM_FIRST_EMULATED_VMX_MSR..KVM_LAST_EMULATED_VMX_MSR =
# MSR_IA32_VMX_BASIC..MSR_IA32_VMX_VMFUNC (0x480-0x491, arch/x86/kvm/x86.h) for L1, so an L1 read of 0x492 faults,
# and KVM does not expose tertiary controls to L1 (Sean Christopherson on the KVM_LAST_EMULATED_VMX_MSR patch:
# "If KVM exposes IPI virtualization, or any other feature that depends on tertiary controls, to L1, then yes
# this will need to be extended"; kvm-evmcs.md §2.7, table row 0x492). The table used to read the tertiary word
# from 0x492 as if the guest could (the TRUE-form reading), and listed it as always visible.
NEVER_VISIBLE = ["vmx-apicv-xapic", "vmx-ipi-virt"]
SOME_ERAS = [
    "vmx-apicv-register", "vmx-apicv-vid", "vmx-enclv-exit", "vmx-entry-deact-dual-monitor", "vmx-entry-load-cet",
    "vmx-entry-load-fred", "vmx-entry-load-perf-global-ctrl", "vmx-entry-load-pkrs", "vmx-entry-smm",
    "vmx-ept-violation-ve", "vmx-eptp-switching", "vmx-exit-load-cet", "vmx-exit-load-perf-global-ctrl",
    "vmx-exit-load-pkrs", "vmx-exit-save-perf-global-ctrl", "vmx-exit-save-preemption-timer",
    "vmx-exit-secondary-ctls", "vmx-mode-based-ept-exec", "vmx-ple", "vmx-pml", "vmx-posted-intr",
    "vmx-preemption-timer", "vmx-shadow-vmcs", "vmx-spp", "vmx-tertiary-ctls", "vmx-tsc-scaling", "vmx-vmfunc",
]
ALWAYS_VISIBLE = [
    "vmx-activity-hlt", "vmx-activity-shutdown", "vmx-activity-wait-sipi", "vmx-any-errcode", "vmx-apicv-x2apic",
    "vmx-basic-32bit-addr", "vmx-basic-dual-monitor", "vmx-bus-lock-detect", "vmx-cr3-load-noexit",
    "vmx-cr3-store-noexit", "vmx-cr8-load-exit", "vmx-cr8-store-exit", "vmx-desc-exit", "vmx-enable-user-wait-pause",
    "vmx-encls-exit", "vmx-entry-ia32e-mode", "vmx-entry-load-bndcfgs", "vmx-entry-load-efer", "vmx-entry-load-pat",
    "vmx-entry-load-rtit-ctl", "vmx-entry-noload-debugctl", "vmx-entry-pt-conceal-pip", "vmx-ept", "vmx-ept-1gb",
    "vmx-ept-2mb", "vmx-ept-advanced-exitinfo", "vmx-ept-execonly", "vmx-ept-uc", "vmx-ept-wb", "vmx-eptad",
    "vmx-exit-ack-intr", "vmx-exit-clear-bndcfgs", "vmx-exit-clear-rtit-ctl", "vmx-exit-host-addr-space-size",
    "vmx-exit-load-efer", "vmx-exit-load-pat", "vmx-exit-nosave-debugctl", "vmx-exit-pt-conceal-pip",
    "vmx-exit-save-efer", "vmx-exit-save-pat", "vmx-flexpriority", "vmx-hlt-exit", "vmx-ins-outs", "vmx-intr-exit",
    "vmx-invept", "vmx-invept-all-context", "vmx-invept-single-context", "vmx-invlpg-exit", "vmx-invpcid-exit",
    "vmx-invvpid", "vmx-invvpid-all-context", "vmx-invvpid-single-addr", "vmx-invvpid-single-context",
    "vmx-invvpid-single-context-noglobals", "vmx-io-bitmap", "vmx-io-exit", "vmx-misc-pt",
    "vmx-misc-smbase", "vmx-misc-smm-monitor-ctl", "vmx-monitor-exit", "vmx-movdr-exit", "vmx-msr-bitmap", "vmx-mtf",
    "vmx-mwait-exit", "vmx-nested-exception", "vmx-nmi-exit", "vmx-notify-vm-exiting", "vmx-page-walk-4",
    "vmx-page-walk-5", "vmx-pause-exit", "vmx-pt-conceal-vmx", "vmx-pt-use-gpa", "vmx-rdpmc-exit", "vmx-rdrand-exit",
    "vmx-rdseed-exit", "vmx-rdtsc-exit", "vmx-rdtscp-exit", "vmx-secondary-ctls", "vmx-store-lma", "vmx-true-ctls",
    "vmx-tsc-offset", "vmx-unrestricted-guest", "vmx-vintr-pending", "vmx-vmwrite-vmexit-fields", "vmx-vnmi",
    "vmx-vnmi-pending", "vmx-vpid", "vmx-wbinvd-exit", "vmx-xsaves", "vmx-zero-len-inject",
]


def test_visibility_table_covers_the_registry_exactly() -> None:
    assert sorted(NEVER_VISIBLE + SOME_ERAS + ALWAYS_VISIBLE) == sorted(registry().features)


@pytest.mark.parametrize("feature", sorted(registry().features))
def test_evmcs_visibility_class(feature: str) -> None:
    eras = len(era_visibility(True))
    hidden_without_pv = hidden_eras(feature, False)
    hidden_with_pv = hidden_eras(feature, True)
    if feature in NEVER_VISIBLE:
        assert len(hidden_with_pv) == eras
    elif feature in SOME_ERAS:
        assert 0 < len(hidden_without_pv) and len(hidden_with_pv) < eras
    else:
        assert hidden_without_pv == []


def test_ipi_virt_is_never_visible_because_0x492_is_not_emulated() -> None:
    """Not the filter's doing: L1 cannot read IA32_VMX_PROCBASED_CTLS3 at all (see NEVER_VISIBLE)."""
    hidden = hidden_eras("vmx-ipi-virt", True)
    assert [era for era, _ in hidden] == [era for era, _ in era_visibility(True)]
    assert {why for _, why in hidden} == {"not emulated: KVM does not emulate IA32_VMX_PROCBASED_CTLS3 (0x492) "
                                          "for L1"}


def test_5_15_forgotten_true_pinbased_does_not_make_posted_intr_visible() -> None:
    """5.15-5.16 filtered PINBASED_CTLS but not TRUE_PINBASED_CTLS (kvm-evmcs.md §3): the one rule of visible
    (core.views) says not visible, as baseline and explain do; the table used to read the TRUE form only."""
    for feature in ("vmx-posted-intr", "vmx-preemption-timer"):
        assert dict(hidden_eras(feature, False))["5.15-5.16"] == "eVMCS filter"


def test_perf_global_ctrl_is_a_perf_gate_from_6_1() -> None:
    hidden = dict(hidden_eras("vmx-exit-load-perf-global-ctrl", False))
    assert hidden["5.17-6.0"] == "eVMCS filter"
    assert hidden["6.3+"].startswith("perf-cpuid-gate")
    assert "6.1-6.2" not in dict(hidden_eras("vmx-exit-load-perf-global-ctrl", True))


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_golden(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    report = validate_paths([f"tests/data/models/{name}.yaml"])
    check_golden(f"validate/{name}.json", report.to_json())


def test_shipped_models_golden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    check_golden("validate/shipped.json", validate_paths().to_json())


def _codes(name: str) -> list[tuple[int | None, str, str]]:
    report = validate_paths([str(FIXTURES / f"{name}.yaml")])
    return [(f.line, f.severity, f.code) for f in report.files[0].findings]


def test_typos_have_lines_and_suggestions() -> None:
    report = validate_paths([str(FIXTURES / "typos.yaml")])
    msgs = {f.line: f.message for f in report.files[0].findings if f.code.startswith("unknown")}
    assert msgs[8] == "unknown feature 'vmx-eptt' (did you mean 'vmx-ept'?)"
    assert "did you mean 'vmx-invvpid-single-addr'" in msgs[9]
    assert "did you mean 'avx512f'" in msgs[10]
    assert msgs[12] == "unknown Hyper-V flag 'hv-vapci' (did you mean 'hv-vapic'?)"


def test_dependencies() -> None:
    codes = _codes("dependencies")
    assert (8, "error", "dependency") in codes      # eptp-switching without vmx-vmfunc
    assert (10, "error", "dependency") in codes     # ept-1gb without vmx-ept
    assert (13, "error", "dependency") in codes     # vmx-xsaves without xsaves
    assert (18, "error", "hyperv-dependency") in codes
    assert (22, "warning", "hyperv-recommended") in codes
    assert any(c == "dropped-by-dependency" for _, _, c in codes)


def test_evmcs_conflicts() -> None:
    report = validate_paths([str(FIXTURES / "evmcs-conflicts.yaml")])
    by_code: dict[str, list[Finding]] = {}
    for f in report.files[0].findings:
        by_code.setdefault(f.code, []).append(f)
    never = by_code["evmcs-never-visible"]
    assert [f.message.split(" ")[0] for f in never] == ["vmx-apicv-xapic"]
    assert never[0].line == 3  # the `base:` line: it comes from the base model
    perf = [f for f in by_code["evmcs-some-eras"] if f.message.startswith("vmx-exit-load-perf-global-ctrl ")]
    assert perf[0].line == 7 and "5.17-6.0" in perf[0].message and "6.3+" not in perf[0].message  # pv on
    assert by_code["evmcs-version"][0].severity == "error"
    assert by_code["pv-perf-qemu"][0].severity == "warning"


def test_contradictions() -> None:
    codes = _codes("contradictions")
    assert (9, "error", "duplicate-key") in codes
    assert (11, "error", "contradiction") in codes   # noglobals alias on/off
    assert (22, "error", "contradiction") in codes   # in features and history.removed
    assert (19, "error", "history-added-missing") in codes


def test_qemu_properties() -> None:
    codes = _codes("qemu-properties")
    assert (7, "error", "no-qemu-property") in codes
    assert (8, "warning", "no-qemu-property") in codes
    assert (9, "error", "not-in-qemu") in codes
    assert (10, "warning", "shared-qemu-property") in codes
    assert (11, "warning", "not-in-qemu") in codes


def test_base_models() -> None:
    assert _codes("bad-base") == [(2, "error", "unknown-base")]
    report = validate_paths([str(FIXTURES / "newer-base.yaml")])
    first = report.files[0].findings[0]
    assert first.message.startswith("base model GraniteRapids-v1 needs QEMU >= 9.1 (snapshot is 7.2)")
    assert report.exit_code == 0


def test_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["validate"]) == 0
    assert cli.run(["validate", str(FIXTURES / "typos.yaml")]) == 1
    assert cli.run(["validate", str(FIXTURES / "newer-base.yaml")]) == 0
    assert cli.run(["validate", str(FIXTURES / "malformed.yaml")]) == 1
    assert cli.run(["validate", str(FIXTURES / "not-utf8.yaml")]) == 2
    assert cli.run(["validate", str(FIXTURES / "typos.yaml"), "/nonexistent/x.yaml"]) == 2
    out = capsys.readouterr().out
    assert "typos.yaml:8: error: unknown feature 'vmx-eptt'" in out
    assert cli.run(["validate", "--json", str(FIXTURES / "malformed.yaml")]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["files"][0]["findings"][0]["line"] == 5


def _write_profiles(tmp_path: Path) -> Path:
    reg = registry()
    every = set(reg.features)
    d = tmp_path / "hosts"
    d.mkdir()
    hosts = [
        profile_from_features("sky-63", every, kernel="6.3.7"),
        profile_from_features("sky-510", every - {"vmx-ept-1gb"}, kernel="5.10"),
        profile_from_features("epyc", every, vendor="AuthenticAMD", kernel="6.6"),
        profile_from_features("nested-off", every, nested=False, kernel="6.1"),
        profile_from_features("nested-off-510", every, nested=False, kernel="5.10"),
        profile_from_features("old-419", every, kernel="4.19"),
    ]
    for h in hosts:
        (d / f"{h.name}.yaml").write_text(yaml.safe_dump(h.to_mapping()))
    return d


def test_hosts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _write_profiles(tmp_path)
    model = str(REPO / "cpu_models" / "Skylake-Server-evmcs.yaml")
    assert cli.run(["validate", "--json", model, "--hosts", str(d)]) == 0
    data = json.loads(capsys.readouterr().out)
    hosts = {h["hosts"][0]: h for h in data["files"][0]["hosts"]}
    assert hosts["sky-63"]["starts"] and hosts["sky-63"]["drops"] == []
    assert [d["feature"] for d in hosts["sky-510"]["drops"]] == ["vmx-ept-1gb"]
    assert not hosts["epyc"]["starts"]
    assert "hv-evmcs) is not supported by kernel" in hosts["epyc"]["reason"]
    assert not hosts["old-419"]["starts"]
    assert not hosts["nested-off"]["starts"]
    # 5.11+: QEMU reads Hyper-V features on the system fd, where eVMCS is absent without nested VMX ...
    assert "hv-evmcs) is not supported by kernel" in hosts["nested-off"]["reason"]
    # ... 5.8-5.10: the capability is there, but the version KVM returns is 0.
    assert not hosts["nested-off-510"]["starts"]
    assert ("eVMCS version range [1..1] is not supported by kernel (supported: [0..0])"
            in hosts["nested-off-510"]["reason"])
    assert cli.run(["validate", str(REPO / "cpu_models" / "Skylake-Server-evmcs.yaml"), "--hosts", str(d)]) == 0
    text = capsys.readouterr().out
    assert "epyc (kernel 6.6): does not start" in text
    assert "sky-510 (kernel 5.10, era 5.6-5.14): starts, drops 1:" in text


def test_hosts_model_aborting_on_5_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A Skylake-Server-v5 eVMCS model keeping vmx-preemption-timer (pin bit 6) and vmx-posted-intr (pin bit 7):
    # cascadelake-5.4's TRUE_PINBASED allowed-1 is 0xff; enable-time sanitizing clears bits 6 and 7, so QEMU's
    # write of 0xff00000016 to 0x48d fails and QEMU aborts (kvm-evmcs.md §4.2, §10.3). 6.3 filters on reads only.
    m = tmp_path / "keeps-pin.yaml"
    m.write_text("name: keeps-pin\nbase: Skylake-Server-v5\nvendor: GenuineIntel\nfeatures: {vmx: on}\n"
                 "hyperv: {hv-vapic: on, hv-evmcs: on}\n")
    cli.run(["validate", "--json", str(m), "--hosts", "cascadelake-5.4", "skylake-6.3"])
    hosts = {h["hosts"][0]: h for h in json.loads(capsys.readouterr().out)["files"][0]["hosts"]}
    assert not hosts["cascadelake-5.4"]["starts"] and hosts["cascadelake-5.4"]["drops"] == []
    assert hosts["cascadelake-5.4"]["reason"].startswith("error: failed to set MSR 0x48d to 0xff00000016")
    assert hosts["skylake-6.3"]["starts"]


def _laughs(depth: int) -> str:
    """A "billion laughs" definition: a{i} maps four keys to the alias of a{i-1}."""
    lines = ["a0: &a0 {k: 1}"]
    lines += [f"a{i}: &a{i} {{k0: *a{i - 1}, k1: *a{i - 1}, k2: *a{i - 1}, k3: *a{i - 1}}}"
              for i in range(1, depth + 1)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_definition_is_walked_once_per_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The key->line map of a model definition follows each YAML node once (an alias is its anchor's node).

    Before, it expanded every alias: depth 24 hung ``validate`` (4^24 paths). Hand count for depth 8: the 9
    top-level keys, a0's one key (a0.k), and a1..a8's four keys each (k0..k3, whose values are already-walked
    aliases): 9 + 1 + 8 * 4 = 42 entries (the old walk: 9 + 1 + 4 + 16 + ... paths, over 87,000).
    """
    _, lines, dups = compose_yaml(_laughs(8), "lol.yaml")
    assert (len(lines), dups) == (42, [])
    bomb = tmp_path / "lol.yaml"
    bomb.write_text(_laughs(24))
    assert cli.run(["validate", str(bomb)]) == 1            # refused as a definition (errors), in bounded time
    out = capsys.readouterr().out
    assert out.startswith(f"{bomb}:") and "error" in out
