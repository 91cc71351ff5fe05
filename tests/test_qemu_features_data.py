"""data/qemu_features.yaml against hand-written constants, and the model files' comments against eras.yaml.

Expected bits are written here from the specifications, not read from the code: Linux
arch/x86/include/asm/hyperv-tlfs.h (HV_X64_ENLIGHTENED_VMCS_RECOMMENDED BIT(14) in 0x40000004.EAX,
HV_X64_NESTED_DIRECT_FLUSH BIT(17) and HV_X64_NESTED_MSR_BITMAP BIT(19) in 0x4000000A.EAX) and QEMU 7.2
target/i386/kvm/kvm.c kvm_hyperv_properties[] (hv-evmcs depends on hv-vapic, hv-stimer on hv-synic and hv-time).
"""

from __future__ import annotations

import glob
import os
import re

from qemu_evmcs.core.kernel import era_table
from qemu_evmcs.core.registry import data_path
from qemu_evmcs.qemu.features import HV_BY_PROP, hv_requires


def test_evmcs_related_bits_are_the_tlfs_bits() -> None:
    assert HV_BY_PROP["hv-evmcs"].cpuid == ((0x40000004, "eax", 0x4000),)          # 1 << 14
    assert HV_BY_PROP["hv-tlbflush-direct"].cpuid == ((0x4000000A, "eax", 0x20000),)  # 1 << 17
    assert HV_BY_PROP["hv-emsr-bitmap"].cpuid == ((0x4000000A, "eax", 0x80000),)    # 1 << 19
    assert HV_BY_PROP["hv-evmcs-perf-global-ctrl"].cpuid == ((0x4000000A, "ebx", 0x1),)


def test_dependencies_are_qemus() -> None:
    req = hv_requires()
    assert req["hv-evmcs"] == ("hv-vapic",)
    assert req["hv-stimer"] == ("hv-synic", "hv-time")
    assert req["hv-synic"] == ("hv-vpindex",)      # kvm_hyperv_expand_features' extra check


def test_model_comments_name_the_release_eras_yaml_names() -> None:
    """A model file once said hv-emsr-bitmap needs 5.16 while eras.yaml (and kvm-evmcs.md 10.1: 502d2bf5f2fd is
    in 5.17) said 5.17: every such comment must name eras.yaml's release."""
    facts = era_table().facts
    want = {"hv-emsr-bitmap": str(facts.nested_msr_bitmap_since), "hv-tlbflush-direct": str(facts.direct_flush_since)}
    assert want["hv-emsr-bitmap"] == "5.17"
    files = glob.glob(os.path.join(data_path("cpu_models"), "*.yaml"))
    assert files
    seen = 0
    for path in files:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for flag, release in re.findall(r"(hv-emsr-bitmap|hv-tlbflush-direct) \(kernel >= ([0-9.]+)\)", text):
            seen += 1
            assert release == want[flag], (path, flag, release)
    assert seen
