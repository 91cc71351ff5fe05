"""The feature registry: every VMX bit once, every name resolves, and the Linux masks of kvm-evmcs.md §2
rebuilt from registry names (the name lists below are copied from kvm-evmcs.md §3.2, not from eras.yaml)."""

from __future__ import annotations

import pytest
import yaml

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.registry import load_data, parse_registry, registry


REG = registry()


def always_on(word: str) -> int:
    return REG.words[word].always_on


def test_msrs_are_0x480_to_0x492_in_order() -> None:
    indices = [REG.msrs[n].index for n in REG.msr_names()]
    assert indices == list(range(0x480, 0x493))
    assert REG.msr(0x48D).name == "IA32_VMX_TRUE_PINBASED_CTLS"
    assert REG.msr("IA32_VMX_PINBASED_CTLS").true == "IA32_VMX_TRUE_PINBASED_CTLS"


def test_every_bit_defined_once() -> None:
    seen: dict[tuple[str, int], str] = {}
    for f in REG.features.values():
        assert (f.word, f.bit) not in seen, f"{f.name} and {seen[(f.word, f.bit)]} share a bit"
        seen[(f.word, f.bit)] = f.name
    assert len(seen) == len(REG.features)


def test_duplicate_bit_is_rejected() -> None:
    data = load_data("registry.yaml")
    data["features"].append(dict(data["features"][-1], name="vmx-clone"))
    with pytest.raises(InputError, match="defined twice"):
        parse_registry(data)


def test_aliases_resolve_to_one_feature() -> None:
    pt = REG.feature("vmx-preemption-timer")
    assert REG.feature("PIN_BASED_VMX_PREEMPTION_TIMER") is pt
    assert (pt.word, pt.bit, pt.mask) == ("pinbased", 6, 0x40)
    assert REG.feature("vmx-invvpid-single-context-noglobals") is REG.feature("vmx-invept-single-context-noglobals")
    assert REG.get("no-such-feature") is None
    with pytest.raises(InputError, match="unknown VMX feature 'nope'"):
        REG.feature("nope")


def test_qemu_typo_property_controls_two_bits() -> None:
    # QEMU registers "vmx-invept-single-context" for EPT bit 25 and (misspelt) for INVVPID bit 41.
    bits = sorted(f.bit for f in REG.qemu_bits("vmx-invept-single-context"))
    assert bits == [25, 41]
    assert REG.feature("vmx-invept-single-context").bit == 25


def test_registry_yaml_is_plain_safe_yaml() -> None:
    assert yaml.safe_load(yaml.safe_dump(load_data("registry.yaml")))["msrs"]


# --- kvm-evmcs.md §2 masks from registry names --------------------------------------------------------

def test_supported_pinctrl_is_0x3f() -> None:
    # ALWAYSON 0x16 (bits 1,2,4) | EXT_INTR 0x1 | NMI 0x8 | VNMI 0x20 = 0x3f
    m = always_on("pinbased") | REG.word_mask(["vmx-intr-exit", "vmx-nmi-exit", "vmx-vnmi"], "pinbased")
    assert m == 0x3F


def test_supported_exec_ctrl_is_0xfff9fffe() -> None:
    names = ["vmx-hlt-exit", "vmx-cr3-load-noexit", "vmx-cr3-store-noexit", "vmx-io-exit", "vmx-movdr-exit",
             "vmx-tsc-offset", "vmx-mwait-exit", "vmx-monitor-exit", "vmx-invlpg-exit", "vmx-rdpmc-exit",
             "vmx-vintr-pending", "vmx-cr8-load-exit", "vmx-cr8-store-exit", "vmx-rdtsc-exit", "vmx-flexpriority",
             "vmx-io-bitmap", "vmx-mtf", "vmx-msr-bitmap", "vmx-vnmi-pending", "vmx-pause-exit",
             "vmx-secondary-ctls"]
    # everything except bit 0, bit 17 (tertiary) and bit 18 (reserved)
    assert always_on("procbased") | REG.word_mask(names, "procbased") == 0xFFF9FFFE


SUPPORTED_2NDEXEC = ["vmx-apicv-x2apic", "vmx-wbinvd-exit", "vmx-vpid", "vmx-ept", "vmx-unrestricted-guest",
                     "vmx-desc-exit", "vmx-rdtscp-exit", "vmx-invpcid-exit", "vmx-xsaves", "vmx-rdseed-exit",
                     "vmx-rdrand-exit", "vmx-tsc-scaling", "vmx-enable-user-wait-pause", "vmx-pt-use-gpa",
                     "vmx-pt-conceal-vmx", "vmx-bus-lock-detect", "vmx-notify-vm-exiting", "vmx-encls-exit"]


def test_supported_2ndexec_with_and_without_tsc_scaling() -> None:
    # bits 1-7 0xfe | 11,12 0x1800 | 15,16 0x18000 | 19,20 0x180000 | 24 | 25 (TSC) | 26 | 30,31
    assert REG.word_mask(SUPPORTED_2NDEXEC, "secondary") == 0xC71998FE
    legacy_row = [n for n in SUPPORTED_2NDEXEC if n != "vmx-tsc-scaling"]
    assert REG.word_mask(legacy_row, "secondary") == 0xC51998FE  # 0xc71998fe - 0x02000000


def test_supported_vmexit_ctrl() -> None:
    names = ["vmx-exit-nosave-debugctl", "vmx-exit-ack-intr", "vmx-exit-host-addr-space-size",
             "vmx-exit-load-perf-global-ctrl", "vmx-exit-save-pat", "vmx-exit-load-pat", "vmx-exit-save-efer",
             "vmx-exit-load-efer", "vmx-exit-clear-bndcfgs", "vmx-exit-pt-conceal-pip", "vmx-exit-clear-rtit-ctl"]
    full = always_on("exit") | REG.word_mask(names, "exit")
    assert always_on("exit") == 0x36DFF
    assert full == 0x03BFFFFF  # 0x36dff | 0x200 | 0x1000 | 0x8000 | 0x3c0000 | 0x800000 | 0x3000000
    assert full & ~REG.feature("vmx-exit-load-perf-global-ctrl").mask == 0x03BFEFFF


def test_supported_vmentry_ctrl() -> None:
    names = ["vmx-entry-noload-debugctl", "vmx-entry-ia32e-mode", "vmx-entry-load-perf-global-ctrl",
             "vmx-entry-load-pat", "vmx-entry-load-efer", "vmx-entry-load-bndcfgs", "vmx-entry-pt-conceal-pip",
             "vmx-entry-load-rtit-ctl"]
    full = always_on("entry") | REG.word_mask(names, "entry")
    assert full == 0x0007F3FF  # 0x11ff | 0x200 | 0x2000 | 0x4000 | 0x8000 | 0x70000
    assert full & ~REG.feature("vmx-entry-load-perf-global-ctrl").mask == 0x0007D3FF


def test_old_deny_lists() -> None:
    deny_2nd = ["vmx-apicv-vid", "vmx-apicv-xapic", "vmx-apicv-register", "vmx-pml", "vmx-vmfunc",
                "vmx-shadow-vmcs", "vmx-tsc-scaling", "vmx-ple"]
    # bits 0, 8, 9, 10, 13, 14, 17, 25: 0x1 | 0x700 | 0x6000 | 0x20000 | 0x2000000
    assert REG.word_mask(deny_2nd, "secondary") == 0x02026701
    assert REG.word_mask(["vmx-posted-intr", "vmx-preemption-timer"], "pinbased") == 0xC0


def test_word_mask_rejects_a_feature_of_another_word() -> None:
    with pytest.raises(InputError, match="belongs to word pinbased"):
        REG.word_mask(["vmx-posted-intr"], "secondary")


def test_msrs_of_word_is_the_scan_of_every_msr() -> None:
    """The word index (built once) answers what a scan of every MSR in registry order does."""
    reg = registry()
    words = {m.word for m in reg.msrs.values() if m.word is not None}
    assert len(words) >= 10
    for word in [*sorted(words), "no-such-word"]:
        assert reg.msrs_of_word(word) == [m for m in reg.msrs.values() if m.word == word], word
    assert [m.name for m in reg.msrs_of_word("pinbased")] == ["IA32_VMX_PINBASED_CTLS", "IA32_VMX_TRUE_PINBASED_CTLS"]


def test_qemu_properties_and_word_features_are_the_scans_they_replace() -> None:
    """The tables built once answer what a scan of every feature in registry order does; QEMU's misspelt
    INVVPID properties (qemu.md §2, FEAT_VMX_EPT_VPID_CAPS bits 41 and 43; registry.yaml ``qemu_typo``)
    control the INVEPT bit of the same name too."""
    reg = registry()
    scanned: dict[str, set[str]] = {}
    for f in reg.features.values():
        if f.qemu is not None:
            scanned.setdefault(f.qemu, set()).add(f.name)
    assert [p for p, _ in reg.qemu_properties()] == list(scanned)
    assert {p: set(bits) for p, bits in reg.qemu_properties()} == scanned
    props = dict(reg.qemu_properties())
    assert props["vmx-invept-single-context"] == {"vmx-invept-single-context", "vmx-invvpid-single-context"}
    assert props["vmx-invvpid-all-context"] == {"vmx-invvpid-all-context"}
    for word in {f.word for f in reg.features.values()} | {"no-such-word"}:
        assert reg.word_features(word) == sorted((f for f in reg.features.values() if f.word == word),
                                                 key=lambda f: f.bit), word
    # ept_vpid ends with bits 25, 26 (INVEPT), 32 (INVVPID) and 40-43 (its extents): qemu.md §2, by bit
    assert [f.bit for f in reg.word_features("ept_vpid")][-7:] == [25, 26, 32, 40, 41, 42, 43]
