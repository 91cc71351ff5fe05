"""Pure parsing tests: QEMU warning lines and the ``-cpu`` argument (no emulator needed)."""

from __future__ import annotations

import json

import pytest

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.launch.cpuarg import find_cpu_arg, parse_cpu_arg
from qemu_evmcs.launch.verify import (
    STATUS_DROPPED,
    STATUS_INEFFECTIVE,
    FeatureOutcome,
    LaunchReport,
    _classify,
)
from qemu_evmcs.launch.warnings import KIND_DEPENDENCY, KIND_UNSUPPORTED, parse_warning, parse_warnings
from qemu_evmcs.launch.wrapper import parse_wrapper_args

# Verbatim lines printed by QEMU 7.2 (Debian 12) and the QEMU 5.0 report quoted in the reference.
TCG_VMX = "qemu-system-x86_64: warning: TCG doesn't support requested feature: CPUID.01H:ECX.vmx [bit 5]"
TCG_POSTED = "qemu-system-x86_64: warning: TCG doesn't support requested feature: MSR(48DH).vmx-posted-intr [bit 7]"
HOST_PERF = ("qemu-system-x86_64: warning: host doesn't support requested feature: "
             "MSR(48FH).vmx-exit-load-perf-global-ctrl [bit 12]")
DEP_EPT = ("qemu-system-x86_64: warning: This feature depends on other features that were not requested: "
           "MSR(48BH).vmx-ept [bit 1]")
UNNAMED = "qemu-system-x86_64: warning: TCG doesn't support requested feature: MSR(48CH) [bit 14]"
INVVPID = ("qemu-system-x86_64: warning: TCG doesn't support requested feature: "
           "MSR(48CH).vmx-invvpid [bit 32]")


def test_tcg_cpuid_warning() -> None:
    w = parse_warning(TCG_VMX)
    assert w is not None
    assert (w.kind, w.accel, w.register) == (KIND_UNSUPPORTED, "TCG", "CPUID.01H:ECX")
    assert (w.cpuid_leaf, w.cpuid_register, w.msr) == (1, "ECX", None)
    assert (w.feature, w.bit) == ("vmx", 5)
    assert w.message == "TCG doesn't support requested feature: CPUID.01H:ECX.vmx [bit 5]"


def test_msr_warnings() -> None:
    w = parse_warning(TCG_POSTED)
    assert w is not None and (w.msr, w.feature, w.bit, w.cpuid_leaf) == (0x48D, "vmx-posted-intr", 7, None)
    h = parse_warning(HOST_PERF)
    assert h is not None and (h.accel, h.msr, h.feature, h.bit) == ("host", 0x48F, "vmx-exit-load-perf-global-ctrl", 12)
    hi = parse_warning(INVVPID)
    assert hi is not None and hi.bit == 32 and hi.msr == 0x48C
    assert h.to_dict()["msr_hex"] == "0x48f"


def test_dependency_and_unnamed() -> None:
    d = parse_warning(DEP_EPT)
    assert d is not None and (d.kind, d.accel, d.msr, d.feature, d.bit) == (KIND_DEPENDENCY, None, 0x48B, "vmx-ept", 1)
    u = parse_warning(UNNAMED)
    assert u is not None and (u.feature, u.bit, u.msr) == (None, 14, 0x48C)


def test_timestamp_and_no_prefix() -> None:
    ts = "2026-01-02T03:04:05.123456Z " + TCG_POSTED
    w = parse_warning(ts)
    assert w is not None and w.feature == "vmx-posted-intr"
    bare = "warning: " + TCG_POSTED.split("warning: ", 1)[1]
    b = parse_warning(bare)
    assert b is not None and b.msr == 0x48D


@pytest.mark.parametrize("line", [
    "",
    "qemu-system-x86_64: unable to find CPU model 'nosuchmodel'",
    "qemu-system-x86_64: warning: host doesn't support requested feature: MSR(48DH).vmx-posted-intr",
    "qemu-system-x86_64: warning: dbind: Couldn't connect to accessibility bus",
    "qemu-system-x86_64: Hyper-V enlightened VMCS (hv-evmcs) is not supported by kernel",
])
def test_non_warnings(line: str) -> None:
    assert parse_warning(line) is None


def test_parse_warnings_text_dedupes() -> None:
    text = "\n".join([TCG_VMX, "other line", TCG_POSTED, TCG_POSTED.split(": ", 1)[1], UNNAMED])
    ws = parse_warnings(text)
    assert [w.feature for w in ws] == ["vmx", "vmx-posted-intr", None]
    json.dumps([w.to_dict() for w in ws])


def test_cpu_arg_precedence_and_spelling() -> None:
    s = parse_cpu_arg("Skylake-Server-v5,vmx=on,+vmx-posted-intr,hv_evmcs,-hv-vapic,hv-vapic=on,"
                      "hv-spinlocks=0x1fff,vmx_ept=off,,tsc_freq=1000000")
    assert s.model == "Skylake-Server-v5"
    assert s.features == {"vmx": True, "hv-evmcs": True, "hv-vapic": False, "vmx-ept": False,
                          "vmx-posted-intr": True}
    assert s.value_props == {"hv-spinlocks": "0x1fff", "tsc-frequency": "1000000"}
    assert s.tracked() == s.features
    assert not s.is_probe


def test_cpu_arg_minus_wins_over_plus() -> None:
    s = parse_cpu_arg("max,+vmx-pml,-vmx-pml,vmx=yes,pmu=off")
    assert s.features == {"vmx": True, "pmu": False, "vmx-pml": False}
    assert s.tracked() == {"vmx": True, "vmx-pml": False}


@pytest.mark.parametrize("arg", ["", ",vmx=on", "max,+", "max,=on"])
def test_cpu_arg_errors(arg: str) -> None:
    with pytest.raises(InputError):
        parse_cpu_arg(arg)


def test_find_cpu_arg_last_wins_and_probe() -> None:
    assert find_cpu_arg(["-cpu", "a", "-m", "1G", "--cpu", "b,vmx=on"]) == "b,vmx=on"
    assert find_cpu_arg(["-machine", "none", "-S"]) is None
    assert find_cpu_arg(["-cpu"]) is None
    assert parse_cpu_arg("help").is_probe


def test_classify_and_report_json() -> None:
    w = parse_warning(TCG_POSTED)
    dropped = _classify("vmx-posted-intr", True, False, True, w, [], False)
    assert dropped.status == STATUS_DROPPED and dropped.reason == w.message  # type: ignore[union-attr]
    hv = _classify("hv-evmcs", True, True, True, None, [], False)
    assert hv.status == STATUS_INEFFECTIVE
    dep = _classify("vmx-ept", True, False, False, None, [], True)
    assert dep.status == STATUS_DROPPED and "depends" in (dep.reason or "")
    rep = LaunchReport(cpu_arg="x", model="x", qom_path="/p", kvm_enabled=False, kvm_present=True,
                       features=[dropped, hv, FeatureOutcome("vmx", True, True, True, "applied")])
    d = json.loads(rep.to_json())
    assert d["applied"] == ["vmx"] and d["dropped"] == ["vmx-posted-intr", "hv-evmcs"] and d["ok"] is False


def test_wrapper_args() -> None:
    o = parse_wrapper_args(["--emulator=/bin/q", "--check", "--host", "h.yaml", "--qmp-timeout", "3",
                            "-cpu", "max", "--check"])
    assert (o.emulator, o.check, o.host, o.qmp_timeout) == ("/bin/q", True, "h.yaml", 3.0)
    assert o.qemu_args == ["-cpu", "max", "--check"]
    assert parse_wrapper_args(["--", "--check"]).qemu_args == ["--check"]
    for bad in (["--qmp-timeout", "x"], ["--qmp-timeout", "-1"], ["--emulator"],
                ["--simulate", "p", "--emulator", "q"]):
        with pytest.raises(InputError):
            parse_wrapper_args(bad)
