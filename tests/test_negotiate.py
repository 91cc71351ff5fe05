"""Scenario tests of the negotiator over the bundled profiles and tests/data/negotiate fixtures."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence

import pytest

from host_helpers import host_profiles
from qemu_evmcs.cli.main import run
from qemu_evmcs.core.errors import NegativeAnswer
from qemu_evmcs.core.profile import HostProfile, load_profile, resolve_profile_path
from qemu_evmcs.policy.negotiate import (
    PERF_FEATURES,
    GuestModel,
    STRATEGIES,
    max_model,
    negotiate,
    start_guest,
)
from qemu_evmcs.output.render import compare_strategies, cpu_string, libvirt_xml, negotiate_cpu_arg, negotiation_json
from qemu_evmcs.qemu.libvirt_cpumap import load_cpu_map

HERE = os.path.dirname(__file__)
DATA = os.path.join(HERE, "data", "negotiate")
MODEL = os.path.join(DATA, "models", "Skylake-evmcs.yaml")
NOPERF_63 = os.path.join(DATA, "hosts", "noperf-6.3.yaml")
NOPERF_510 = os.path.join(DATA, "hosts", "noperf-5.10.yaml")


# The guest's view of the negotiated Skylake-evmcs config on skylake-5.10 and skylake-6.3, by hand. (Was: "the
# views are identical", which the negotiator checks itself before it says ok.) Inputs: QEMU's Skylake-Server-v5
# VMX features (qemu.md §2.4), the -cpu's removals, QEMU's make_vmx_msr_value (qemu.md §2.2: can_be_one =
# features | default1 in bits 63:32, must_be_one = default1 & ~features in 31:0), the i7-6700K host (vmx-dumps.md
# Source 1, both profiles) and the era filters (kvm-evmcs.md §2-3: 5.10 clears only PERF x2 and VAPIC; 6.3 keeps
# PIN 0x3f, 2NDEXEC 0xc51998fe, EXIT 0x3bfefff and ENTRY 0x7d3ff without the PV bit).
#   removed on some host: pin 6 preemption-timer (6.3), 7 posted-intr (6.3); 2nd 0 apicv-xapic (both), 8 apicv-
#   register, 9 apicv-vid, 13 vmfunc, 14 shadow-vmcs, 17 pml (6.3); exit 12 load-perf (both), 22 save-preemption-
#   timer (6.3); entry 13 load-perf (both); vmfunc 0 eptp-switching (6.3)
#   PIN   kept 0, 3, 5 = 0x29:  can = 0x29 | 0x16 = 0x3f; must = 0x16 & ~0x29 = 0x16  -> 0x0000003f_00000016
#   2ND   kept 1-7, 11, 12, 16, 20 = 0xfe | 0x1800 | 0x10000 | 0x100000 = 0x1118fe; default1 0 -> 0x001118fe_00000000
#   PROC  all 21 named bits, default1 0x0401e172: can = 0xfff9fffe (bits 0, 17, 18 never); must = 0x0401e172 &
#         ~(bit 15 | bit 16) = 0x04006172                                           -> 0xfff9fffe_04006172
#   EXIT  kept 2, 15, 18, 19, 20, 21 + 9 host-addr-space-size (lm) = 0x3c8204; default1 0x36dff:
#         can = 0x3c8204 | 0x36dff = 0x3fefff; must = 0x36dff & ~0x3c8204 = 0x36dfb  -> 0x003fefff_00036dfb
#   ENTRY kept 2, 9, 14, 15 = 0xc204; default1 0x11ff: can = 0xd3ff; must = 0x11ff & ~0xc204 = 0x11fb
#                                                                                    -> 0x0000d3ff_000011fb
#   VMFUNC eptp-switching removed                                                    -> 0
SKYLAKE_PAIR_GUEST = {
    "IA32_VMX_TRUE_PINBASED_CTLS": (0x29 | 0x16) << 32 | (0x16 & ~0x29),
    "IA32_VMX_PROCBASED_CTLS2": 0x1118FE << 32,
    "IA32_VMX_TRUE_PROCBASED_CTLS": 0xFFF9FFFE << 32 | 0x04006172,
    "IA32_VMX_TRUE_EXIT_CTLS": (0x3C8204 | 0x36DFF) << 32 | (0x36DFF & ~0x3C8204),
    "IA32_VMX_TRUE_ENTRY_CTLS": (0xC204 | 0x11FF) << 32 | (0x11FF & ~0xC204),
    "IA32_VMX_VMFUNC": 0,
}


def test_hand_computed_guest_view_constants() -> None:
    assert SKYLAKE_PAIR_GUEST["IA32_VMX_TRUE_PINBASED_CTLS"] == 0x0000003F00000016
    assert SKYLAKE_PAIR_GUEST["IA32_VMX_TRUE_EXIT_CTLS"] == 0x003FEFFF00036DFB
    assert SKYLAKE_PAIR_GUEST["IA32_VMX_TRUE_ENTRY_CTLS"] == 0x0000D3FF000011FB


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("host", ["skylake-5.10", "skylake-6.3"])
def test_every_strategy_gives_the_hand_computed_guest_view(host: str, strategy: str) -> None:
    neg = negotiate(MODEL, host_profiles("skylake-5.10", "skylake-6.3"), strategy)
    assert neg.ok and neg.config is not None, neg.error
    (profile,) = host_profiles(host)
    view = start_guest(neg.config, profile)
    assert view.ok
    assert {k: hex(view.guest_msrs[k]) for k in SKYLAKE_PAIR_GUEST} == \
        {k: hex(v) for k, v in SKYLAKE_PAIR_GUEST.items()}


def test_pv_cpuid_sets_bit_only_when_every_host_honours_it() -> None:
    new = negotiate(MODEL, host_profiles("icelake-6.1", "sapphirerapids-6.6"), "pv-cpuid", target="simulator")
    assert new.config is not None and new.config.pv_perf_global_ctrl
    assert set(PERF_FEATURES) <= new.guest_features
    assert "hv-evmcs-perf-global-ctrl=on" in cpu_string(new)
    mixed = negotiate(MODEL, host_profiles("skylake-5.10", "skylake-6.3"), "pv-cpuid", target="simulator")
    assert mixed.config is not None and not mixed.config.pv_perf_global_ctrl
    assert not set(PERF_FEATURES) & mixed.guest_features
    causes = {(d.feature, d.cause) for d in mixed.drops}
    assert ("vmx-exit-load-perf-global-ctrl", "perf-cpuid-gate") in causes
    assert ("vmx-exit-load-perf-global-ctrl", "evmcs-filter") in causes


def test_real_qemu_answer_never_uses_the_proposed_options() -> None:
    """Issue 13: QEMU 7.2 refuses hv-evmcs-perf-global-ctrl ("Property 'max-x86_64-cpu.hv-evmcs-perf-global-ctrl'
    not found"). For real QEMU (the default) the PV bit stays clear, the PERF controls are off (6.1+ hides
    them without the bit) and a note names what the option would add."""
    for model in (MODEL, max_model()):
        neg = negotiate(model, host_profiles("icelake-6.1", "sapphirerapids-6.6"), "pv-cpuid")
        assert neg.ok and neg.config is not None and not neg.config.pv_perf_global_ctrl
        cpu = cpu_string(neg)
        assert "hv-evmcs-perf-global-ctrl" not in cpu and "x-hv-evmcs-revision" not in cpu
        assert not set(PERF_FEATURES) & neg.guest_features
        assert neg.gains == list(PERF_FEATURES)
        assert any("real QEMU lacks hv-evmcs-perf-global-ctrl=on" in n and "vmx-exit-load-perf-global-ctrl" in n
                   for n in neg.notes)
        assert "hv-evmcs-perf-global-ctrl" not in libvirt_xml(neg)
        assert negotiation_json(neg)["qemu_lacks"] == []
    rev = negotiate(MODEL, host_profiles("icelake-6.1", "sapphirerapids-6.6"), "revision")
    assert rev.config is not None and rev.config.revision == 1 and "x-hv-evmcs-revision" not in cpu_string(rev)
    assert any("real QEMU lacks x-hv-evmcs-revision=2" in n for n in rev.notes)
    msrs = negotiate(MODEL, host_profiles("icelake-6.1", "sapphirerapids-6.6"), "vmx-msrs")
    assert msrs.config is not None and not msrs.config.pv_perf_global_ctrl
    assert not set(PERF_FEATURES) & msrs.guest_features       # Windows 11 would not boot with them, without the bit


def test_real_qemu_answer_has_no_property_qemu_72_lacks() -> None:
    """vmx-nested-exception and vmx-any-errcode are newer QEMU's (QEMU 7.2: "Property
    'max-x86_64-cpu.vmx-nested-exception' not found"); the simulator has them."""
    neg = negotiate(max_model(), host_profiles("sapphirerapids-6.6"), "pv-cpuid")
    cpu = cpu_string(neg)
    for prop in ("vmx-nested-exception", "vmx-any-errcode", "vmx-entry-load-fred", "vmx-exit-secondary-ctls",
                 "vmx-enable-user-wait-pause"):
        assert prop not in cpu
    assert "vmx-nested-exception" in cpu_string(negotiate(max_model(), host_profiles("sapphirerapids-6.6"), "pv-cpuid",
                                                          target="simulator"))


def test_pv_cpuid_needs_perf_controls_on_every_host() -> None:
    neg = negotiate(MODEL, host_profiles("skylake-6.3", NOPERF_63), "pv-cpuid")
    assert neg.ok and neg.config is not None
    assert not neg.config.pv_perf_global_ctrl


def test_revision_forced_to_legacy_by_one_pre_61_host() -> None:
    neg = negotiate(MODEL, host_profiles("skylake-5.10", "skylake-6.3"), "revision", target="simulator")
    assert neg.config is not None and neg.config.revision == 1
    assert any("forced by skylake-5.10" in n for n in neg.notes)
    only_new = negotiate(MODEL, host_profiles("icelake-6.1", "sapphirerapids-6.6"), "revision", target="simulator")
    assert only_new.config is not None and only_new.config.revision == 2


def test_vmx_msrs_exposes_tsc_scaling_shipped_does_not() -> None:
    model = max_model()
    hosts = host_profiles("icelake-6.1", "sapphirerapids-6.6")
    b = negotiate(model, hosts, "vmx-msrs")
    a = negotiate(model, hosts, "pv-cpuid")
    assert "vmx-tsc-scaling" in b.guest_features
    assert "vmx-tsc-scaling" not in a.guest_features
    cmp = compare_strategies({"pv-cpuid": a, "vmx-msrs": b})
    assert "vmx-tsc-scaling" in cmp["vmx-msrs"]["allows"]
    assert any("TSC scaling" in w for w in cmp["pv-cpuid"]["gets_wrong"])


def test_pre_57_host_turns_off_enable_time_filtered_bits() -> None:
    neg = negotiate(max_model(), host_profiles("cascadelake-5.4", "icelake-6.1"), "pv-cpuid")
    assert neg.ok and neg.config is not None
    enable = {d.feature for d in neg.drops if d.cause == "enable-time-filter"}
    assert {"vmx-posted-intr", "vmx-preemption-timer"} <= enable
    assert "vmx-posted-intr" not in neg.config.vmx
    assert "-vmx-posted-intr" in cpu_string(neg)


def test_inconsistent_true_pinbased_filter_is_dropped() -> None:
    # Mainline 5.15.0-5.15.23 filters PINBASED but forgot TRUE_PINBASED. (The bundled icelake-5.15 runs Ubuntu's
    # 5.15.0-91, based on >= 5.15.30, which has f80ae0ef089a from 5.15.24: kvm-evmcs.md §10.3/§10.4.)
    mainline = load_profile(resolve_profile_path("icelake-5.15")).with_kernel("5.15.0")
    neg = negotiate(max_model(), [mainline], "pv-cpuid")
    assert neg.ok
    assert ("vmx-posted-intr", "inconsistent-filter") in {(d.feature, d.cause) for d in neg.drops}


@pytest.mark.parametrize("bad,needle", [
    ("epyc-amd-6.6", "AuthenticAMD has no eVMCS"),
    ("skylake-nested-off-6.1", "kvm_intel.nested=0"),
])
def test_incapable_host_is_an_error(bad: str, needle: str) -> None:
    neg = negotiate(MODEL, host_profiles("skylake-6.3", bad), "pv-cpuid")
    assert not neg.ok and needle in neg.error
    with pytest.raises(NegativeAnswer):
        negotiate_cpu_arg(MODEL, host_profiles("skylake-6.3", bad))


def test_hv_flag_unsupported_on_old_kernel_is_dropped() -> None:
    neg = negotiate(MODEL, host_profiles("skylake-5.10", "skylake-6.3"), "pv-cpuid")
    assert [d.feature for d in neg.hv_dropped] == ["hv-emsr-bitmap"]
    assert neg.config is not None and "hv-emsr-bitmap" not in neg.config.hyperv
    assert "hv-emsr-bitmap" in negotiate(MODEL, host_profiles("skylake-6.3"), "pv-cpuid").config.hyperv  # type: ignore[union-attr]


def test_cpu_string_and_libvirt_xml() -> None:
    neg = negotiate(MODEL, host_profiles("skylake-5.10", "skylake-6.3"), "pv-cpuid")
    cpu = cpu_string(neg)
    assert cpu.startswith("Skylake-Server-v5,vmx=on,")
    assert "-vmx-posted-intr" in cpu and "hv-vapic=on" in cpu and "hv-evmcs=on" in cpu
    assert cpu.endswith("enforce=on")
    assert negotiate_cpu_arg(MODEL, host_profiles("skylake-5.10", "skylake-6.3")) == cpu
    # A libvirt whose cpu_map names vmx-* features (9.10+): the decision is a <feature>.
    root = ET.fromstring("<r>" + libvirt_xml(neg, load_cpu_map("9.10")) + "</r>")
    cpu_el = root.find("cpu")
    assert cpu_el is not None and cpu_el.get("mode") == "custom" and cpu_el.get("match") == "exact"
    feats = {f.get("name"): f.get("policy") for f in cpu_el.findall("feature")}
    assert feats["vmx-posted-intr"] == "disable" and feats["vmx"] == "require"
    # libvirt 9.0 (no vmx-* in its cpu_map): the same decision as a -global of QEMU's CPU type.
    root = ET.fromstring("<r>" + libvirt_xml(neg, load_cpu_map("9.0")) + "</r>")
    cpu_el = root.find("cpu")
    assert cpu_el is not None and cpu_el.findtext("model") == "Skylake-Server-noTSX-IBRS"
    assert all(not str(f.get("name")).startswith("vmx-") for f in cpu_el.findall("feature"))
    args = [a.get("value") for a in root.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    assert "Skylake-Server-noTSX-IBRS-x86_64-cpu.vmx-posted-intr=off" in args
    hv = root.find("features/hyperv")
    assert hv is not None and hv.get("mode") == "custom"
    assert hv.find("evmcs") is not None and hv.find("vapic") is not None


def test_plugin_option_is_flagged_in_xml_and_json() -> None:
    neg = negotiate(MODEL, host_profiles("icelake-6.1", "sapphirerapids-6.6"), "pv-cpuid", target="simulator")
    assert "hv-evmcs-perf-global-ctrl" in libvirt_xml(neg)
    data = negotiation_json(neg)
    assert data["pv_perf_global_ctrl"] is True
    assert any("real QEMU" in x for x in data["qemu_lacks"])


def test_cli_json_failure_still_prints_object(capsys: pytest.CaptureFixture[str]) -> None:
    rc = run(["negotiate", "--model", MODEL, "--hosts", "skylake-6.3", "epyc-amd-6.6", "--json"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert json.loads(out)["ok"] is False and "AuthenticAMD" in json.loads(out)["error"]
    assert err == ""                  # a negative answer is no error: the object says it


def test_cli_formats(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["negotiate", "--model", MODEL, "--hosts", "skylake-6.3", "--format", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("Skylake-Server-v5,vmx=on")
    assert run(["negotiate", "--model", MODEL, "--hosts", "skylake-6.3", "--format", "libvirt"]) == 0
    assert "<cpu mode=" in capsys.readouterr().out
    assert run(["negotiate", "--model", MODEL, "--hosts", "skylake-5.10", "skylake-6.3", "--strategy", "all"]) == 0
    out = capsys.readouterr().out
    assert all(f"design {s}:" in out for s in ("shipped", "revision", "vmx-msrs"))


GOLDEN_CASES = {
    "negotiate/mixed-pv-cpuid.json": (["skylake-5.10", "skylake-6.3"], "pv-cpuid"),
    # The design comparisons, each design with its VMM side (the simulated QEMU's options).
    "negotiate/new-all.json": (["icelake-6.1", "sapphirerapids-6.6", "--target", "simulator"], "all"),
    "negotiate/fleet-all.json": (["cascadelake-5.4", "icelake-5.15", "icelake-6.1", "sapphirerapids-6.6",
                                  "--target", "simulator"], "all"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_json(name: str, golden: Callable[[str, str], None], capsys: pytest.CaptureFixture[str]) -> None:
    hosts, strategy = GOLDEN_CASES[name]
    # Every golden case negotiates a config (exit 0); a refusal (1) would still print JSON and could match.
    assert run(["negotiate", "--model", MODEL, "--hosts", *hosts, "--strategy", strategy, "--json"]) == 0
    out = capsys.readouterr().out
    # The model path is machine-independent (name from the file), hosts are bundled names.
    golden(name, out)


# --------------------------------------------------------------------------- precise "gets wrong" (audit)

def _compare(model: str | GuestModel, hosts: Sequence[str | HostProfile]) -> dict[str, dict[str, object]]:
    from qemu_evmcs.policy.negotiate import negotiate_all

    return compare_strategies(negotiate_all(model, host_profiles(*hosts), target="simulator"))


def _strs(value: object) -> list[str]:
    """A list of strings from the comparison's JSON-like dict (checked, so the type checker may rely on it)."""
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), value
    return [str(v) for v in value]


def test_revision_forced_by_old_host_names_the_model_not_the_hardware() -> None:
    """Skylake hardware HAS PERF_GLOBAL_CTRL: with a model that switches it off nothing is 'wrong', and the note
    says the model excludes it -- never that the hardware lacks it."""
    rev = _compare("Skylake-Server-evmcs", ["skylake-5.10", "skylake-6.3", "icelake-6.1"])["revision"]
    assert rev["gets_wrong"] == []
    (note,) = _strs(rev["notes"])
    assert "forced by pre-6.1 host(s) skylake-5.10" in note and "costs nothing here" in note
    assert "the model switches off vmx-tsc-scaling, vmx-exit-load-perf-global-ctrl, " \
           "vmx-entry-load-perf-global-ctrl" in note
    assert "lacks" not in note


def test_revision_forced_hides_perf_that_old_hosts_filter_anyway() -> None:
    rev = _compare(max_model(), ["skylake-5.10", "skylake-6.3", "icelake-6.1"])["revision"]
    assert rev["gets_wrong"] == []
    (note,) = _strs(rev["notes"])
    assert ("hides vmx-exit-load-perf-global-ctrl, vmx-entry-load-perf-global-ctrl on skylake-6.3, icelake-6.1 "
            "(the hardware has them), but the pre-6.1 hosts' eVMCS filter hides them anyway") in note
    assert "the hardware of skylake-6.3 lacks vmx-tsc-scaling" in note       # skylake has no TSC scaling


def test_revision_forced_where_the_hardware_lacks_the_controls() -> None:
    rev = _compare(max_model(), [NOPERF_510, NOPERF_63])["revision"]
    assert rev["gets_wrong"] == []
    (note,) = _strs(rev["notes"])
    assert ("the hardware of noperf-6.3 lacks vmx-tsc-scaling, vmx-exit-load-perf-global-ctrl, "
            "vmx-entry-load-perf-global-ctrl") in note


def test_revision_forced_is_wrong_only_when_old_hosts_show_the_control() -> None:
    """A 5.10 host shows TSC scaling (its era does not filter it); revision 1, forced by it, hides TSC scaling on
    the 6.3 host: the pool loses it only to the revision number."""
    from qemu_evmcs.core.registry import registry
    from qemu_evmcs.policy.resolve import profile_from_features

    every = frozenset(registry().features)
    hosts = [profile_from_features("old510", every, kernel="5.10"), profile_from_features("new63", every)]
    cmp = _compare(max_model(), hosts)
    (wrong,) = _strs(cmp["revision"]["gets_wrong"])
    assert ("hides vmx-tsc-scaling on new63, whose hardware has it, although the pre-6.1 hosts show it too") in wrong
    assert "PERF" not in wrong and "perf-global-ctrl" not in wrong
    assert any("the pre-6.1 hosts' eVMCS filter hides them anyway" in n for n in _strs(cmp["revision"]["notes"]))
    assert "vmx-tsc-scaling" in _strs(cmp["vmx-msrs"]["allows"])
    assert any("TSC scaling stays hidden although the hardware has it (vmx-msrs shows it)" in w
               for w in _strs(cmp["pv-cpuid"]["gets_wrong"]))


# --------------------------------------------------------------------------- outputs users paste (audit)

def test_cpu_string_round_trips_through_the_launch_parser() -> None:
    """parse_cpu_arg(cpu_string) gives back the base, every vmx-* change, the hv-* flags and enforce; applied
    to the base model's defaults the vmx-* changes give exactly the negotiated set."""
    from qemu_evmcs.launch.cpuarg import parse_cpu_arg
    from qemu_evmcs.qemu.models import load_model_features, qemu_props_to_features
    from qemu_evmcs.output.render import qemu_vmx_props

    for model, hosts in (("Skylake-Server-evmcs", ["skylake-5.10", "skylake-6.3"]),
                         (MODEL, ["icelake-6.1", "sapphirerapids-6.6"]),
                         ("max", ["cascadelake-5.4", "icelake-6.1"])):
        for strategy in STRATEGIES:
            neg = negotiate(model, host_profiles(*hosts), strategy)
            assert neg.ok and neg.config is not None, neg.error
            spec = parse_cpu_arg(cpu_string(neg))
            assert spec.model == neg.config.base
            assert spec.features["vmx"] is True and spec.features["enforce"] is True
            assert all(spec.features[f] is True for f in neg.config.hyperv)
            assert dict((p, on) for p, on in qemu_vmx_props(neg)) == \
                   {k: v for k, v in spec.features.items() if k.startswith("vmx-")}
            if neg.config.base != "max":
                vmx = set(load_model_features(neg.config.base))
                for prop, on in spec.features.items():
                    if prop.startswith("vmx-"):
                        bits = qemu_props_to_features([prop])
                        vmx = vmx | bits if on else vmx - bits
                assert vmx == set(neg.config.vmx)
            assert spec.features.get("hv-evmcs-perf-global-ctrl", False) is neg.config.pv_perf_global_ctrl


def _libvirt_root(neg: object) -> ET.Element:
    return ET.fromstring("<domain>" + libvirt_xml(neg, load_cpu_map("9.10")) + "</domain>")  # type: ignore[arg-type]


def test_libvirt_xml_is_well_formed_and_uses_libvirt_names() -> None:
    from qemu_evmcs.core.registry import registry

    reg = registry()
    libvirt_names = {f.libvirt for f in reg.features.values() if f.libvirt} | {"vmx", "xsaves"}
    for model, pool in (("Skylake-Server-evmcs", ["skylake-5.10", "skylake-6.3"]), ("max", ["sapphirerapids-6.6"])):
        hosts = host_profiles(*pool)
        neg = negotiate(model, hosts, "pv-cpuid")
        xml = libvirt_xml(neg, load_cpu_map("9.10"))
        root = _libvirt_root(neg)
        cpu = root.find("cpu")
        assert cpu is not None
        names = [f.get("name") for f in cpu.findall("feature")]
        assert set(names) <= libvirt_names, set(names) - libvirt_names
        assert len(names) == len(set(names))
        if model == "max":
            # QEMU's max is no libvirt model: <cpu mode='maximum'>, not custom with <model>max</model>.
            assert cpu.get("mode") == "maximum" and cpu.find("model") is None
            # QEMU 7.2 has no vmx-nested-exception / vmx-entry-load-fred: an answer for real QEMU never names them
            # (libvirt has no name for them either; the simulator's answer lists them in the comment instead).
            assert "vmx-nested-exception" not in xml and "vmx-entry-load-fred" not in xml
            sim = libvirt_xml(negotiate(model, hosts, "pv-cpuid", target="simulator"), load_cpu_map("9.10"))
            assert "not expressible in libvirt XML" in sim
            assert "vmx-nested-exception=off (not a property of QEMU 7.2)" in sim
            # QEMU's misspelt INVVPID property comes out under libvirt's two correct names.
            assert {"vmx-invvpid-single-context", "vmx-invvpid-single-context-noglobals"} <= set(names)
            assert "vmx-invept-single-context-noglobals" not in names
        else:
            # Skylake-Server-v5 has no libvirt name: Skylake-Server-v3's alias plus xsaves, as QEMU defines both.
            assert cpu.get("mode") == "custom" and cpu.findtext("model") == "Skylake-Server-noTSX-IBRS"
            assert "xsaves" in names
        hv = root.find("features/hyperv")
        assert hv is not None and {c.tag for c in hv} <= {
            "relaxed", "vapic", "vpindex", "runtime", "synic", "stimer", "reset", "frequencies", "reenlightenment",
            "tlbflush", "ipi", "evmcs", "avic", "emsr_bitmap", "xmm_input"}
        assert all(not c.tag.startswith("hv") for c in root.iter())


# --------------------------------------------------------------------------- groups in JSON, kernels (audit)

def _fleet_file(tmp_path: object, n: int) -> str:
    """``n`` hosts of two profiles; the 6.1 hosts alternate between two full kernel strings (one group)."""
    from pathlib import Path

    from qemu_evmcs.core.profile import bundled_profile_dir

    base = Path(bundled_profile_dir())
    docs = []
    for i in range(n):
        sample = "icelake-6.1" if i % 2 else "skylake-6.3"
        text = (base / f"{sample}.yaml").read_text().replace(f"name: {sample}\n", f"name: host-{i:05d}\n", 1)
        if sample == "icelake-6.1" and i % 4 == 3:
            assert "\nkernel: 6.1.55\n" in text
            text = text.replace("\nkernel: 6.1.55\n", '\nkernel: "6.1.90-custom"\n')
        docs.append("---\n" + text)
    path = Path(str(tmp_path)) / "fleet.yaml"
    path.write_text("".join(docs))
    return str(path)


def test_json_lists_every_host_once(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = _fleet_file(tmp_path, 400)
    assert run(["negotiate", "--model", "max", "--hosts", fleet, "--strategy", "all", "--json"]) == 0
    raw = capsys.readouterr().out
    data = json.loads(raw)
    assert raw.count('"host-00003"') == 1 and raw.count('"host-00398"') == 1
    assert [g["host_count"] for g in data["groups"]] == [200, 200] and data["host_count"] == 400
    names = {g["name"] for g in data["groups"]}
    assert names == {"host-00000", "host-00001"}
    dropped = [d for s in data["designs"].values() for d in s["dropped"]]
    assert dropped and all(set(d["groups"]) <= names and "hosts" not in d for d in dropped)
    assert run(["baseline", "--model", "Skylake-Server-evmcs", fleet, "--json"]) == 0
    raw = capsys.readouterr().out
    assert raw.count('"host-00003"') == 1
    assert all("hosts" not in x and x["groups"] for x in json.loads(raw)["losses"])


def test_group_kernels_are_not_attributed_to_every_host(tmp_path: object,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Hosts on 6.1.55 and 6.1.90-custom share a fingerprint (major.minor): the group says so, and no output
    claims that every host of it runs the first host's 6.1.55."""
    fleet = _fleet_file(tmp_path, 8)
    assert run(["negotiate", "--model", "max", "--hosts", fleet, "--json"]) == 0
    g61 = next(g for g in json.loads(capsys.readouterr().out)["groups"] if g["era"] == "6.1-6.2")
    assert g61["hosts"] == ["host-00001", "host-00003", "host-00005", "host-00007"]
    assert (g61["kernel_series"], g61["first_host_kernel"]) == ("6.1", "6.1.55")
    assert "kernel" not in g61
    assert run(["negotiate", "--model", "max", "--hosts", fleet]) == 0
    text = capsys.readouterr().out
    assert "host-00001, host-00003, host-00005 and 1 more: kernel 6.1.x (first host: 6.1.55), era 6.1-6.2" in text
    assert run(["baseline", "--pool", fleet, "--json"]) == 0
    g61 = next(g for g in json.loads(capsys.readouterr().out)["groups"] if g["era"] == "6.1-6.2")
    assert (g61["kernel_series"], g61["first_host_kernel"], g61["host_count"]) == ("6.1", "6.1.55", 4)


# --------------------------------------------------------------------------- negative answers (audit)

def test_negative_answer_reason_is_printed_once(capsys: pytest.CaptureFixture[str]) -> None:
    """A negative answer is a verdict line, never an error: line (issue 13), printed once: in the text report
    on stdout, or -- with --format cpu|libvirt, whose stdout is the format -- alone on stderr."""
    reason = "AuthenticAMD has no eVMCS (Intel VMX only)"
    for argv in (["--design", "shipped"], ["--strategy", "pv-cpuid"]):
        assert run(["negotiate", "--model", MODEL, "--hosts", "skylake-6.3", "epyc-amd-6.6", *argv]) == 1
        out, err = capsys.readouterr()
        assert err == "" and out.count(reason) == 1, argv
        assert [x for x in out.splitlines() if reason in x][0].startswith("no safe answer"), argv
    # Every design's report ends in its verdict line; the last line is the overall verdict.
    assert run(["negotiate", "--model", MODEL, "--hosts", "skylake-6.3", "epyc-amd-6.6", "--design", "all"]) == 1
    out, err = capsys.readouterr()
    verdicts = [x for x in out.splitlines() if reason in x]
    assert err == "" and len(verdicts) == 4 and verdicts[-1] == out.splitlines()[-1]
    assert verdicts[-1].startswith("no safe answer under any design: ")
    for argv in (["--format", "cpu"], ["--format", "libvirt"]):
        assert run(["negotiate", "--model", MODEL, "--hosts", "skylake-6.3", "epyc-amd-6.6", *argv]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("no safe answer: ") and reason in err, argv


def test_drop_details_name_only_their_hosts() -> None:
    """A drop's detail (the era of the filter) is true of every host it names."""
    neg = negotiate(MODEL, host_profiles("skylake-5.10", "skylake-6.3"), "pv-cpuid")
    xapic = [(d.hosts, d.detail) for d in neg.drops if d.feature == "vmx-apicv-xapic" and d.cause == "evmcs-filter"]
    assert sorted(xapic) == [(("skylake-5.10",), "filtered by the eVMCS filter of kernel era 5.6-5.14"),
                             (("skylake-6.3",), "filtered by the eVMCS filter of kernel era 6.3+")]
