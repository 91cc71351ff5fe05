"""The base CPU model's CPUID (issue 12): cpu_features from /proc/cpuinfo and libvirt XML, checks, --model auto.

Inputs are real: /proc/cpuinfo and `virsh capabilities` / `virsh domcapabilities` of the build VM (libvirt 9.0,
tests/data/*/README.md). Expectations are read off those files by hand, or come from the QEMU 7.2 snapshot
(what QEMU itself reported), never from the code under test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from host_helpers import host_profiles
from qemu_evmcs.cli.commands.host import with_cpu_features
from qemu_evmcs.core.cpuid import cpuid_names
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.profile import HostProfile, load_profile, resolve_profile_path
from qemu_evmcs.hostio import cpuinfo, libvirt_caps
from qemu_evmcs.output.render import cpu_string
from qemu_evmcs.policy.negotiate import negotiate

HERE = Path(__file__).parent
CPUINFO = HERE / "data" / "cpuinfo" / "build-vm.txt"
CAPS = HERE / "data" / "libvirt_caps" / "capabilities.xml"
DOMCAPS = HERE / "data" / "libvirt_caps" / "domcapabilities-qemu-tcg.xml"
SNAP = HERE.parent / "qemu_evmcs" / "data" / "cpu_models" / "qemu" / "7.2"
SKY = load_profile(resolve_profile_path("skylake-6.3"))


def _snapshot_features(model: str) -> set[str]:
    return set(json.loads((SNAP / f"{model}.json").read_text())["features"])


def _with(profile: HostProfile, features: set[str], name: str) -> HostProfile:
    return HostProfile(**{**profile.__dict__, "cpu_features": frozenset(features), "name": name})


def test_cpuinfo_flags_become_qemu_names() -> None:
    ci = cpuinfo.parse(CPUINFO.read_text(), file=str(CPUINFO))
    assert (ci.vendor, ci.family, ci.model) == ("GenuineIntel", 6, 207)
    # In the flags line: sse4_1 sse4_2 lahf_lm tsc_deadline_timer pclmulqdq avx; not: avx512f's absence is checked
    # by the file itself (grep), constant_tsc is a Linux synthetic flag.
    for name in ("sse4.1", "sse4.2", "lahf-lm", "tsc-deadline", "pclmulqdq", "avx", "x2apic"):
        assert name in ci.features
    assert "constant-tsc" not in ci.features and "sse4_1" not in ci.features


def test_libvirt_capabilities_host_cpu() -> None:
    lv = libvirt_caps.parse(CAPS.read_text(), file=str(CAPS))
    assert (lv.source, lv.model, lv.vendor, lv.family, lv.model_number) == (
        "capabilities", "Broadwell-noTSX-IBRS", "GenuineIntel", 6, 207)
    # The model's own features (QEMU snapshot) plus the listed additions: 'vme', 'ss' are listed in the file.
    assert _snapshot_features("Broadwell-noTSX-IBRS") - {"vmx"} <= lv.features
    assert {"vme", "ss"} <= lv.features


def test_libvirt_domcapabilities_host_model() -> None:
    lv = libvirt_caps.parse(DOMCAPS.read_text(), file=str(DOMCAPS))
    assert (lv.source, lv.model, lv.vendor) == ("domcapabilities", "EPYC", "AuthenticAMD")
    assert "la57" in lv.features                   # policy='require' name='la57'
    assert "topoext" not in lv.features and "vme" not in lv.features   # policy='disable'


def test_doctype_is_refused() -> None:
    evil = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><capabilities>&a;</capabilities>'
    with pytest.raises(InputError) as err:
        libvirt_caps.parse(evil, file="evil.xml")
    assert "DOCTYPE" in err.value.message


def test_import_adds_cpu_features(tmp_path: Path) -> None:
    src = tmp_path / "p.yaml"
    import yaml
    src.write_text(yaml.safe_dump(SKY.to_mapping()))
    prof = with_cpu_features(load_profile(str(src)), str(CAPS))
    assert prof.cpu_features is not None and "vme" in prof.cpu_features
    assert load_profile(str(src)).cpu_features is None


def test_names_in_the_tables_are_qemu_names() -> None:
    known = set(json.loads((SNAP / "index.json").read_text())["all-features"])
    names = cpuid_names()
    for target in [*names.linux_aliases.values(), *names.libvirt_aliases.values(), *names.kvm_emulated,
                   *names.msr_features]:
        assert target is None or target in known, target


def test_skylake_server_refused_on_a_client_cpu_and_auto_picks_the_client_model() -> None:
    # An i7-6700K's CPUID as QEMU models it: Skylake-Client-v4 (no AVX-512). Skylake-Server-v5 needs avx512f/bw/cd/
    # dq/vl (its snapshot features), so enforce=on would refuse it.
    client = _with(SKY, _snapshot_features("Skylake-Client-v4") - {"vmx"}, "i7-6700k")
    neg = negotiate("Skylake-Server-evmcs", [client])
    assert not neg.ok
    assert "Skylake-Server-v5" in neg.error and "avx512f" in neg.error and "i7-6700k" in neg.error
    auto = negotiate("auto", [client])
    assert auto.ok, auto.error
    assert auto.model.base == "Skylake-Client-v4"      # every newer generation in QEMU 7.2 needs AVX-512


def test_enforce_names_only_features_every_host_has() -> None:
    # Two hosts with different CPUID: Skylake-Client-v4 and Broadwell-v4 feature sets (snapshot); the answer's
    # base model must be one whose snapshot features both hosts have (KVM-emulated ones excepted).
    a = _with(SKY, _snapshot_features("Skylake-Client-v4") - {"vmx"}, "a")
    b = _with(load_profile(resolve_profile_path("broadwell-6.1")), _snapshot_features("Broadwell-v4") - {"vmx"}, "b")
    neg = negotiate("auto", [a, b])
    assert neg.ok, neg.error
    cpu = cpu_string(neg)
    assert cpu.endswith("enforce=on")
    base = cpu.split(",")[0]
    need = _snapshot_features(base) - {"vmx"} - set(cpuid_names().kvm_emulated) - set(cpuid_names().msr_features)
    plus = {item.lstrip("+").split("=")[0] for item in cpu.split(",")[1:]
            if not item.startswith(("vmx", "-vmx", "hv-", "-", "enforce")) and not item.endswith("=off")}
    for host in (a, b):
        assert host.cpu_features is not None
        assert need <= host.cpu_features
        assert plus <= host.cpu_features | {"vmx"}


def test_unchecked_hosts_are_counted() -> None:
    neg = negotiate("Skylake-Server-evmcs", host_profiles("skylake-5.10", "skylake-6.3"))
    assert "base model CPUID not checked on 2 hosts" in " ".join(neg.notes)
    checked = _with(SKY, _snapshot_features("Skylake-Server-v5"), "server")
    neg = negotiate("Skylake-Server-evmcs", host_profiles(checked, "skylake-5.10"))
    assert "base model CPUID not checked on 1 host " in " ".join(neg.notes)
    assert os.path.exists(CPUINFO)


def test_baseline_and_validate_check_the_base_model(tmp_path: Path) -> None:
    import yaml

    from qemu_evmcs.policy.resolve import baseline
    from qemu_evmcs.policy.validate import validate_paths
    from qemu_evmcs.qemu.models import effective_model, load_model, resolve_model_path

    client = _with(SKY, _snapshot_features("Skylake-Client-v4") - {"vmx"}, "i7-6700k")
    eff = effective_model(load_model("Icelake-Server-evmcs"))
    res = baseline([client, load_profile(resolve_profile_path("skylake-5.10"))], eff)
    assert res.not_starting == ("i7-6700k",)
    reason = next(g.reason for g in res.groups if not g.starts)
    assert reason is not None and "avx512f" in reason and eff.base.name in reason
    assert res.base_cpuid_note() is not None and "not checked on 1 host " in res.base_cpuid_note()  # type: ignore[operator]
    path = tmp_path / "client.yaml"
    path.write_text(yaml.safe_dump(client.to_mapping()))
    report = validate_paths([resolve_model_path("Icelake-Server-evmcs")], hosts=[load_profile(str(path))])
    text = report.render()
    assert "i7-6700k" in text and "does not start" in text and "avx512f" in text


def test_cpuid_leaves_to_names() -> None:
    from qemu_evmcs.core.cpuid import from_cpuid

    # Hand-picked bits (QEMU cpu.c feature_word_info): leaf 1 ECX 0 (pni), 28 (avx); leaf 7.0 EBX 16 (avx512f),
    # leaf 7.1 EAX 5 (avx512-bf16); leaf 0xd.1 EAX 3 (xsaves); 0x80000001 ECX 0 (lahf-lm), EDX 29 (lm).
    got = from_cpuid([(1, 0, 0, 0, 1 | (1 << 28), 0), (7, 0, 0, 1 << 16, 0, 0), (7, 1, 1 << 5, 0, 0, 0),
                      (0xD, 1, 1 << 3, 0, 0, 0), (0x80000001, 0, 0, 0, 1, 1 << 29)])
    assert got == {"pni", "avx", "avx512f", "avx512-bf16", "xsaves", "lahf-lm", "lm"}
    # Sub-leaf 0 of leaf 7 must not be read as sub-leaf 1.
    assert from_cpuid([(7, 0, 1 << 5, 0, 0, 0)]) == set()


def test_cpuinfo_of_another_vendor_is_refused(tmp_path: Path) -> None:
    # Found by the verifier: an AMD /proc/cpuinfo (vendor_id AuthenticAMD, the build VM's file with the vendor line
    # changed) was added to an Intel VMX profile (vendor GenuineIntel) without a word: the features of another
    # host became this host's CPUID. The same host's cpuinfo names the same vendor.
    other = tmp_path / "amd-cpuinfo.txt"
    other.write_text(CPUINFO.read_text().replace("GenuineIntel", "AuthenticAMD"))
    sky = load_profile(resolve_profile_path("skylake-6.3"))
    with pytest.raises(InputError) as err:
        with_cpu_features(sky, str(other))
    assert "AuthenticAMD" in err.value.message and "GenuineIntel" in err.value.message
    assert with_cpu_features(sky, str(CPUINFO)).cpu_features   # the Intel one still goes in
