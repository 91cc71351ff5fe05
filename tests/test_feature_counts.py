"""Feature counts agree between commands: one rule of which VMX features a guest can be given (issue 13).

On bundled skylake-6.3 (the i7-6700K VMX MSRs of vmx-dumps.md, KVM 6.3) ``explain`` used to count 79 visible
features where ``negotiate --model max`` keeps 72. The difference is 7 features KVM reports and the 6.3 eVMCS
filter keeps, but that no guest ever reads, because QEMU never writes them (QEMU 7.2 target/i386/kvm/kvm.c
``kvm_msr_entry_add_vmx``; qemu.md §2.2; registry.yaml ``guest:`` and ``host_fields``):

- ``vmx-basic-dual-monitor`` (IA32_VMX_BASIC bit 49): QEMU writes BASIC as its feature word (names only at
  bits 54 and 55) plus bits 0-30, 32-44 and 50-53 of KVM's value (revision, VMCS size, memory type); bit 49
  is in neither ("KVM does not support dual-monitor treatment and probably never will").
- ``vmx-misc-pt``, ``vmx-misc-smbase``, ``vmx-misc-smm-monitor-ctl`` (IA32_VMX_MISC bits 14, 15, 28): MISC is
  the feature word (names at bits 5-8, 29, 30) plus KVM's bits 0-4 and 25-27 (timer rate, MSR-list size).
- ``vmx-pt-conceal-vmx`` (secondary bit 19), ``vmx-exit-pt-conceal-pip`` (exit bit 24),
  ``vmx-entry-pt-conceal-pip`` (entry bit 17): no QEMU property names these bits, so no ``-cpu`` can ask for
  them, and ``-cpu host``/``max`` take only named bits from KVM (``x86_cpu_get_migratable_flags``); the
  control MSRs QEMU writes (make_vmx_msr_value) then have them clear.

So the count every command gives is 79 - 7 = 72, and ``explain`` still lists the 7, under the layer ``qemu``.
"""

from __future__ import annotations

import json
import re

import pytest

from qemu_evmcs.cli.main import run
from qemu_evmcs.policy.validate import era_visibility
from qemu_evmcs.core.msrval import feature_set
from qemu_evmcs.fleet.inventory import guest_features
from qemu_evmcs.policy.explain import explain_host
from host_helpers import host_profiles

QEMU_NEVER_WRITES = frozenset({
    "vmx-basic-dual-monitor", "vmx-misc-pt", "vmx-misc-smbase", "vmx-misc-smm-monitor-ctl",
    "vmx-pt-conceal-vmx", "vmx-exit-pt-conceal-pip", "vmx-entry-pt-conceal-pip",
})
#: 79 features were counted visible before the rule, 7 of them never written by QEMU.
EXPECTED = 79 - 7


def _json(capsys: pytest.CaptureFixture[str], *argv: str, rc: int = 0) -> dict:  # type: ignore[type-arg]
    assert run(list(argv)) == rc, argv
    out, err = capsys.readouterr()
    assert err == ""
    return json.loads(out)  # type: ignore[no-any-return]


def test_every_command_counts_the_same_72_features(capsys: pytest.CaptureFixture[str]) -> None:
    exp = _json(capsys, "explain", "--host", "skylake-6.3", "--json")
    visible = {f["name"] for f in exp["features"] if f["visible"]}
    by_qemu = {f["name"] for f in exp["features"] if f["layer"] == "qemu"}
    assert len(visible) == EXPECTED and by_qemu == QEMU_NEVER_WRITES      # listed, but not counted as visible
    assert not visible & QEMU_NEVER_WRITES

    neg = _json(capsys, "negotiate", "--model", "max", "--hosts", "skylake-6.3", "--json")
    assert set(neg["guest_features"]) == visible

    assert run(["explain", "--host", "skylake-6.3"]) == 0
    text = capsys.readouterr().out
    assert f"visible to the guest: {EXPECTED} features" in text
    assert re.search(r"\[qemu\] .*\(7\):", text), text

    msrs = _json(capsys, "guest-msrs", "--host", "skylake-6.3", "--json")
    removed_by_qemu = {r["feature"] for rs in msrs["removed"].values() for r in rs if r["layer"] == "qemu"}
    assert removed_by_qemu == QEMU_NEVER_WRITES
    # As the guest reads them. BASIC 0x00da040000000004: high half 0x00da0400 = bits 42 (VMCS size 0x400), 49
    # (dual monitor), 51+52 (memory type 6, WB), 54, 55; without bit 49 (0x0002000000000000): 0x00d8040000000004.
    # MISC 0x7004c1e7 has bits 14, 15 (0xc000) and 28 (0x10000000) set: & ~0x1000c000 = 0x600401e7.
    assert msrs["msrs"]["IA32_VMX_BASIC"] == "0x00d8040000000004"
    assert msrs["msrs"]["IA32_VMX_MISC"] == "0x00000000600401e7"

    for argv in (["--pool", "skylake-6.3"], ["--model", "host", "--hosts", "skylake-6.3"],
                 ["--model", "max", "--hosts", "skylake-6.3"]):
        base = _json(capsys, "baseline", *argv, "--json")
        assert set(base["baseline"]["evmcs"]) == visible, argv
        assert not set(base["wanted"]) & QEMU_NEVER_WRITES, argv

    # validate's era table (which model features an era's eVMCS guest can see; a model names only features with
    # a QEMU property) over what this host's KVM reports, less the 7, and the inventory's --where feature=
    host = host_profiles("skylake-6.3")[0]
    assert dict(era_visibility(False))["6.3+"] & feature_set(host.msrs) - QEMU_NEVER_WRITES == visible
    assert guest_features(host) == visible


def test_inventory_feature_filter_follows_the_one_rule_of_visible() -> None:
    """``--where feature=`` (fleet.inventory.guest_features) used the TRUE-form reading (issue 10). On 5.15.0
    (era 5.15-5.16) the filter clears the VMX-preemption timer (pin 6) from PINBASED_CTLS but forgets
    TRUE_PINBASED_CTLS (kvm-evmcs.md §3): the guest cannot use it, as explain says, so the filter must not select
    the host for it. The i7-6700K reports pin 6 (allowed-1 0x7f)."""
    host = host_profiles("skylake-6.3")[0].with_kernel("5.15.0")
    assert host.era.id == "5.15-5.16" and host.msrs["IA32_VMX_TRUE_PINBASED_CTLS"] >> 32 & 0x40
    assert "vmx-preemption-timer" not in guest_features(host)
    # explain too (it used to call it visible, "only IA32_VMX_PINBASED_CTLS hides it"), and it says why
    fe = explain_host(host).feature("vmx-preemption-timer")
    assert (fe.visible, fe.layer) == (False, "evmcs-filter")
    assert "IA32_VMX_TRUE_PINBASED_CTLS still shows it" in fe.reason and "L2 VM-entry" in fe.reason
    assert guest_features(host) == {f.name for f in explain_host(host).visible()}
