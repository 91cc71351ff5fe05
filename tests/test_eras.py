"""Kernel releases, the era table and its masks (eras.yaml must build exactly kvm-evmcs.md's constants)."""

from __future__ import annotations

import pytest

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.evmcs_filter import rule_mask
from qemu_evmcs.policy.explain import mask_name
from qemu_evmcs.core.kernel import KernelVersion, era_of, era_table, parse_release
from qemu_evmcs.core.profile import load_profile_text


@pytest.mark.parametrize("text, expected", [
    ("5.15", KernelVersion(5, 15, 0)),
    ("6.1.55", KernelVersion(6, 1, 55)),
    ("6.8.0-45-generic", KernelVersion(6, 8, 0)),
    ("5.14.0-362.el9.x86_64", KernelVersion(5, 14, 0)),
    ("v6.3", KernelVersion(6, 3, 0)),
    (" 4.20 ", KernelVersion(4, 20, 0)),
    ("5.10.0-26-amd64", KernelVersion(5, 10, 0)),
    # Release candidates, with or without the separator; an -rc of 5.15 already is 5.15 (its era).
    ("5.15-rc1", KernelVersion(5, 15, 0)),
    ("5.15rc1", KernelVersion(5, 15, 0)),
    ("6.1-rc7+", KernelVersion(6, 1, 0)),
    ("6.3.0-rc2-00001-gabcdef", KernelVersion(6, 3, 0)),
    ("6.1RC3", KernelVersion(6, 1, 0)),
])
def test_parse_release(text: str, expected: KernelVersion) -> None:
    assert parse_release(text) == expected


@pytest.mark.parametrize("bad", ["", "6", "banana", "6.x", "6.1 .5", "six.one", "6..1", "-6.1", "5.15rc", "5.15rcx",
                                 "5.15 rc1"])
def test_parse_release_rejects(bad: str) -> None:
    with pytest.raises(InputError, match="unparsable kernel release"):
        parse_release(bad)


@pytest.mark.parametrize("bad", [None, True, ["6.1"]])
def test_parse_release_rejects_non_strings(bad: object) -> None:
    with pytest.raises(InputError, match="must be a string"):
        parse_release(bad)


def test_release_candidate_maps_to_its_release_era() -> None:
    assert era_of("5.15rc1").id == era_of("5.15").id == "5.15-5.16"
    assert era_of("6.3-rc1").id == "6.3+"


def test_release_order_and_str() -> None:
    assert parse_release("6.1.55") > parse_release("6.1")
    assert str(parse_release("6.8.0-45-generic")) == "6.8"
    assert str(parse_release("6.1.55")) == "6.1.55"


def test_yaml_float_kernel_keeps_its_text() -> None:
    # Unquoted `kernel: 5.10` is the YAML float 5.1; it must still mean release 5.10 (era 5.6-5.14, not 4.20-5.5).
    p = load_profile_text('name: x\nvendor: GenuineIntel\nkernel: 5.10\nmsrs: {}\n')
    assert p.kernel == "5.10"
    assert p.version == KernelVersion(5, 10)
    assert p.era.id == "5.6-5.14"


@pytest.mark.parametrize("release, era", [
    ("4.19.300", "pre-4.20"), ("4.20", "4.20-5.5"), ("5.5.19", "4.20-5.5"),
    ("5.6", "5.6-5.14"),
    ("5.7", "5.6-5.14"), ("5.15", "5.15-5.16"), ("5.16.20", "5.17-6.0"),
    ("5.17", "5.17-6.0"), ("6.0.19", "5.17-6.0"), ("6.1.55", "6.1-6.2"), ("6.2", "6.1-6.2"), ("6.3", "6.3+"),
    ("6.13", "6.3+"),
])
def test_era_boundaries(release: str, era: str) -> None:
    assert era_of(release).id == era


def test_era_ids() -> None:
    ids = [e.id for e in era_table().eras]
    assert ids == ["pre-4.20", "4.20-5.5", "5.6-5.14", "5.15-5.16", "5.17-6.0", "6.1-6.2", "6.3+"]
    with pytest.raises(InputError, match="unknown era"):
        era_table().by_id("7.0+")


def _keep(era_id: str, msr: str, perf: bool = False) -> int:
    rules = era_table().by_id(era_id).rules_for(msr)
    assert len(rules) == 1, (era_id, msr)
    return rule_mask(rules[0], perf)


def test_63_allow_masks_equal_kvm_evmcs_md() -> None:
    assert _keep("6.3+", "IA32_VMX_TRUE_PINBASED_CTLS") == 0x3F
    assert _keep("6.3+", "IA32_VMX_TRUE_PROCBASED_CTLS") == 0xFFF9FFFE
    assert _keep("6.3+", "IA32_VMX_PROCBASED_CTLS2") == 0xC51998FE  # the EVMCSv1_LEGACY table row
    assert _keep("6.3+", "IA32_VMX_TRUE_EXIT_CTLS", perf=True) == 0x03BFFFFF
    assert _keep("6.3+", "IA32_VMX_TRUE_EXIT_CTLS", perf=False) == 0x03BFEFFF
    assert _keep("6.3+", "IA32_VMX_TRUE_ENTRY_CTLS", perf=True) == 0x0007F3FF
    assert _keep("6.3+", "IA32_VMX_TRUE_ENTRY_CTLS", perf=False) == 0x0007D3FF
    assert _keep("6.3+", "IA32_VMX_VMFUNC") == 0


@pytest.mark.parametrize("era_id", ["4.20-5.5", "5.15-5.16", "5.17-6.0", "6.1-6.2"])
def test_deny_list_eras(era_id: str) -> None:
    mask32 = 0xFFFFFFFF
    assert _keep(era_id, "IA32_VMX_PINBASED_CTLS") == mask32 & ~0xC0
    assert _keep(era_id, "IA32_VMX_PROCBASED_CTLS2") == mask32 & ~0x02026701  # = 0xfdfd98fe
    assert _keep(era_id, "IA32_VMX_VMFUNC") == mask32 & ~0x1
    exit_deny = 0x1000 | (0x400000 if era_id in ("5.17-6.0", "6.1-6.2") else 0)
    assert _keep(era_id, "IA32_VMX_EXIT_CTLS") == mask32 & ~exit_deny
    assert _keep(era_id, "IA32_VMX_ENTRY_CTLS") == mask32 & ~0x2000
    if era_id == "6.1-6.2":  # PERF moved to the CPUID gate: only the gate removes it
        assert _keep(era_id, "IA32_VMX_EXIT_CTLS", perf=True) == mask32 & ~0x400000
        assert _keep(era_id, "IA32_VMX_ENTRY_CTLS", perf=True) == mask32


def test_which_msrs_each_era_touches() -> None:
    def touched(era_id: str) -> set[str]:
        return {m for r in era_table().by_id(era_id).rules for m in r.msrs}
    ctl = {"IA32_VMX_EXIT_CTLS", "IA32_VMX_TRUE_EXIT_CTLS", "IA32_VMX_ENTRY_CTLS", "IA32_VMX_TRUE_ENTRY_CTLS"}
    assert touched("pre-4.20") == set()
    assert touched("5.6-5.14") == ctl | {"IA32_VMX_PROCBASED_CTLS2"}
    assert touched("5.15-5.16") == ctl | {"IA32_VMX_PROCBASED_CTLS2", "IA32_VMX_PINBASED_CTLS", "IA32_VMX_VMFUNC"}
    assert "IA32_VMX_TRUE_PINBASED_CTLS" in touched("5.17-6.0")
    assert touched("6.3+") == touched("6.1-6.2") | {"IA32_VMX_PROCBASED_CTLS", "IA32_VMX_TRUE_PROCBASED_CTLS"}
    for era in era_table().eras:
        assert not touched(era.id) & {"IA32_VMX_BASIC", "IA32_VMX_MISC", "IA32_VMX_EPT_VPID_CAP",
                                      "IA32_VMX_VMCS_ENUM", "IA32_VMX_PROCBASED_CTLS3"}


def test_filter_timing_per_era() -> None:
    t = era_table()
    assert t.by_id("4.20-5.5").filter_at == "enable"
    assert all(t.by_id(e).filter_at == "read" for e in ("5.6-5.14", "5.15-5.16", "5.17-6.0", "6.1-6.2", "6.3+"))
    assert [e.id for e in t.eras if e.active_needs_hyperv] == ["6.1-6.2", "6.3+"]
    assert [e.id for e in t.eras if not e.evmcs_cap] == ["pre-4.20"]


# The Linux mask each era's rule stands for, written out from kvm-evmcs.md §3 (not from explain.py):
#   4.20-6.2 deny-lists in evmcs.h / hyperv.h: EVMCS1_UNSUPPORTED_{PINCTRL,VMEXIT_CTRL,VMENTRY_CTRL,2NDEXEC,
#            VMFUNC} (no EXEC_CTRL row in the MSR filter: that mask only sanitised KVM-on-Hyper-V's own config);
#   5.6-5.14 (31de3d2500e4) clears literal bits, no mask;
#   6.3+     allow-lists in hyperv.c: EVMCS1_SUPPORTED_{PINCTRL,EXEC_CTRL,2NDEXEC,VMEXIT_CTRL,VMENTRY_CTRL,VMFUNC}.
_DENY: dict[str, str | None] = {"pinbased": "EVMCS1_UNSUPPORTED_PINCTRL", "exit": "EVMCS1_UNSUPPORTED_VMEXIT_CTRL",
         "entry": "EVMCS1_UNSUPPORTED_VMENTRY_CTRL", "secondary": "EVMCS1_UNSUPPORTED_2NDEXEC",
         "vmfunc": "EVMCS1_UNSUPPORTED_VMFUNC"}
LINUX_MASKS: dict[str, dict[str, str | None]] = {
    "4.20-5.5": _DENY,
    "5.6-5.14": {"exit": None, "entry": None, "secondary": None},
    "5.15-5.16": _DENY,
    "5.17-6.0": _DENY,
    "6.1-6.2": _DENY,
    "6.3+": {"pinbased": "EVMCS1_SUPPORTED_PINCTRL", "procbased": "EVMCS1_SUPPORTED_EXEC_CTRL",
             "secondary": "EVMCS1_SUPPORTED_2NDEXEC", "exit": "EVMCS1_SUPPORTED_VMEXIT_CTRL",
             "entry": "EVMCS1_SUPPORTED_VMENTRY_CTRL", "vmfunc": "EVMCS1_SUPPORTED_VMFUNC"},
}


@pytest.mark.parametrize("era_id", sorted(LINUX_MASKS))
def test_every_filtering_era_has_linux_mask_names(era_id: str) -> None:
    era = era_table().by_id(era_id)
    assert {rule.word: mask_name(era, rule) for rule in era.rules} == LINUX_MASKS[era_id]


def test_kernel_facts() -> None:
    f = era_table().facts
    assert f.evmcs_version_range == 0x0101
    assert str(f.perf_global_ctrl_cpuid_since) == "6.1"
    assert str(f.hv_cpuid_system_ioctl_since) == "5.11"
    assert set(era_table().revision2_exposes) == {"vmx-exit-load-perf-global-ctrl",
                                                 "vmx-entry-load-perf-global-ctrl", "vmx-tsc-scaling"}
