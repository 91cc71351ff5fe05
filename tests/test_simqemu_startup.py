"""In-process start-up logic (``predict``): the era behaviours, QEMU's texts, MSR composition, plug-in points."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Set as AbstractSet

import pytest
from test_simqemu_helpers import SKYLAKE_MSRS, write_profile

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.registry import registry
from qemu_evmcs.core.views import visible_properties
from qemu_evmcs.fleet.sources import load_hosts_fleet
from qemu_evmcs.qemu.cpuspec import parse_cpu
from qemu_evmcs.qemu.startup import StartRequest, start
from qemu_evmcs.qemu import cpu as cpumod
from qemu_evmcs.qemu.cpuspec import CpuSpec, QemuError
from qemu_evmcs.simqemu.cmdline import parse_args
from qemu_evmcs.qemu.cpu import FunctionProvider, X86Cpu, load_model_features, make_vmx_msr_value
from qemu_evmcs.simqemu.startup import boot, predict, read_vmx_msrs
from qemu_evmcs.core.profile import load_profile

HOST_EVMCS = ["-accel", "kvm", "-cpu", "host,hv-evmcs=on,hv-vapic=on,vmx=on"]


def _boot(profile: str, argv: list[str]):  # type: ignore[no-untyped-def]
    res = boot(parse_args(argv), load_profile(profile))
    assert res.ok, res.stderr
    assert res.machine is not None
    return res.machine


def test_make_vmx_msr_value_matches_qemu() -> None:
    # QEMU: default1 0x16 for TRUE_PINBASED; all optional pin controls -> 0xff00000016 (Vitaly's failing write).
    assert make_vmx_msr_value(0x16, 0xE9) == 0xFF00000016
    assert make_vmx_msr_value(0x16, 0) == 0x1600000016
    reg = registry()
    assert make_vmx_msr_value(reg.words["procbased"].always_on, 0) == 0x0401E1720401E172


def test_pre57_host_aborts_on_true_pinbased(tmp_path: Path) -> None:
    p = predict(write_profile(str(tmp_path), "5.4.0-150-generic"), HOST_EVMCS)
    assert not p.ok and p.exit_status == 134
    assert p.stderr[0] == "qemu-system-x86_64: error: failed to set MSR 0x48d to 0xff00000016"
    assert "kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed." in p.stderr[1]
    assert p.reason == "error: failed to set MSR 0x48d to 0xff00000016"


def test_pre57_without_evmcs_starts(tmp_path: Path) -> None:
    p = predict(write_profile(str(tmp_path), "5.4"), ["-accel", "kvm", "-cpu", "host,vmx=on"])
    assert p.ok and p.exit_status == 0 and p.stderr == []


def test_pre57_without_the_filtered_controls_starts(tmp_path: Path) -> None:
    argv = ["-accel", "kvm", "-cpu", "host,hv-evmcs=on,hv-vapic=on,-vmx-posted-intr,-vmx-preemption-timer,"
            "-vmx-apicv-xapic,-vmx-apicv-register,-vmx-apicv-vid,-vmx-pml,-vmx-vmfunc,-vmx-shadow-vmcs,-vmx-ple,"
            "-vmx-tsc-scaling,-vmx-exit-load-perf-global-ctrl,-vmx-entry-load-perf-global-ctrl"]
    p = predict(write_profile(str(tmp_path), "5.4"), argv)
    assert p.ok, p.stderr


def test_510_starts_and_hides_perf_global_ctrl(tmp_path: Path) -> None:
    m = _boot(write_profile(str(tmp_path), "5.10"), HOST_EVMCS)
    vcpu = m.vcpus[0].kvm_vcpu
    assert vcpu is not None and vcpu.evmcs_enabled
    guest = read_vmx_msrs(vcpu, host_initiated=False)
    host = read_vmx_msrs(vcpu, host_initiated=True)
    reg = registry()
    exit_bit = 1 << (reg.feature("vmx-exit-load-perf-global-ctrl").bit + 32)
    assert host["IA32_VMX_TRUE_EXIT_CTLS"] & exit_bit and not guest["IA32_VMX_TRUE_EXIT_CTLS"] & exit_bit
    # 5.6-5.14 does not filter the pin-based controls (eras.yaml): posted interrupts stay visible.
    pi = 1 << (reg.feature("vmx-posted-intr").bit + 32)
    assert guest["IA32_VMX_TRUE_PINBASED_CTLS"] & pi


@pytest.mark.parametrize("kernel", ["5.17", "6.1", "6.3"])
def test_later_eras_hide_posted_intr_and_preemption_timer(tmp_path: Path, kernel: str) -> None:
    m = _boot(write_profile(str(tmp_path), kernel), HOST_EVMCS)
    vcpu = m.vcpus[0].kvm_vcpu
    assert vcpu is not None
    guest = read_vmx_msrs(vcpu, host_initiated=False)
    reg = registry()
    for name in ("vmx-posted-intr", "vmx-preemption-timer"):
        bit = 1 << (reg.feature(name).bit + 32)
        assert not guest["IA32_VMX_TRUE_PINBASED_CTLS"] & bit
        assert vcpu.get_msr("IA32_VMX_TRUE_PINBASED_CTLS", host_initiated=True) & bit


@pytest.mark.parametrize("plugin, visible", [(False, False), (True, True)])
def test_63_perf_global_ctrl_plugin(tmp_path: Path, plugin: bool, visible: bool) -> None:
    cpu = "host,hv-evmcs=on,hv-vapic=on,vmx=on" + (",hv-evmcs-perf-global-ctrl=on" if plugin else "")
    m = _boot(write_profile(str(tmp_path), "6.3"), ["-accel", "kvm", "-cpu", cpu])
    st = m.vcpus[0]
    assert st.hv_leaves[0x4000000A] == {"eax": 0x0101, "ebx": int(plugin), "ecx": 0, "edx": 0}
    assert st.kvm_vcpu is not None
    guest = read_vmx_msrs(st.kvm_vcpu, host_initiated=False)
    reg = registry()
    for msr, feat in (("IA32_VMX_TRUE_EXIT_CTLS", "vmx-exit-load-perf-global-ctrl"),
                      ("IA32_VMX_TRUE_ENTRY_CTLS", "vmx-entry-load-perf-global-ctrl")):
        assert bool(guest[msr] >> 32 & reg.feature(feat).mask) is visible


def test_plugin_needs_evmcs_and_a_61_kernel(tmp_path: Path) -> None:
    p = predict(write_profile(str(tmp_path), "6.3"), ["-accel", "kvm", "-cpu", "host,hv-evmcs-perf-global-ctrl=on"])
    assert p.reason == ("Hyper-V eVMCS PERF_GLOBAL_CTRL (hv-evmcs-perf-global-ctrl) requires "
                        "Hyper-V enlightened VMCS (hv-evmcs)")
    p = predict(write_profile(str(tmp_path), "5.15"),
                ["-accel", "kvm", "-cpu", "host,hv-evmcs=on,hv-vapic=on,hv-evmcs-perf-global-ctrl=on"])
    assert p.reason == "Hyper-V eVMCS PERF_GLOBAL_CTRL (hv-evmcs-perf-global-ctrl) is not supported by kernel"


def test_amd_not_supported_by_kernel(tmp_path: Path) -> None:
    p = predict(write_profile(str(tmp_path), "6.6", vendor="AuthenticAMD"), HOST_EVMCS)
    assert (p.ok, p.exit_status) == (False, 1)
    # Expansion (with the Hyper-V checks) fails before filtering could warn about vmx=on.
    assert p.stderr == ["qemu-system-x86_64: Hyper-V enlightened VMCS (hv-evmcs) is not supported by kernel"]
    p = predict(write_profile(str(tmp_path), "6.6", vendor="AuthenticAMD"), ["-accel", "kvm", "-cpu", "host,vmx=on"])
    assert p.ok and p.stderr == ["qemu-system-x86_64: warning: host doesn't support requested feature: "
                                 "CPUID.01H:ECX.vmx [bit 5]"]


def test_nested_off_510_version_range(tmp_path: Path) -> None:
    # No KVM_CAP_SYS_HYPERV_CPUID before 5.11: QEMU trusts the capability, enables it and gets version 0.
    p = predict(write_profile(str(tmp_path), "5.10", nested=False), HOST_EVMCS)
    assert p.exit_status == 1
    assert p.stderr[-2] == ("qemu-system-x86_64: eVMCS version range [1..1] is not supported by kernel "
                            "(supported: [0..0])")
    assert p.stderr[-1] == ("qemu-system-x86_64: kvm_init_vcpu: kvm_arch_init_vcpu failed (0): "
                            "Operation not supported")


def test_nested_off_61_not_supported(tmp_path: Path) -> None:
    # 5.11+: QEMU asks the system fd (KVM_GET_SUPPORTED_HV_CPUID), which reports no eVMCS with nested=0.
    p = predict(write_profile(str(tmp_path), "6.1.55", nested=False), HOST_EVMCS)
    assert p.exit_status == 1
    assert p.stderr[-1] == "qemu-system-x86_64: Hyper-V enlightened VMCS (hv-evmcs) is not supported by kernel"


@pytest.mark.parametrize("kernel", ["5.4", "6.3"])
def test_evmcs_requires_vapic(tmp_path: Path, kernel: str) -> None:
    p = predict(write_profile(str(tmp_path), kernel), ["-accel", "kvm", "-cpu", "host,hv-evmcs=on"])
    assert p.exit_status == 1
    assert ("qemu-system-x86_64: Hyper-V enlightened VMCS (hv-evmcs) requires Hyper-V virtual APIC (hv-vapic)"
            in p.stderr)


@pytest.mark.parametrize("cpu, message", [
    ("host,hv-stimer=on", "Hyper-V synthetic timers (hv-stimer) requires Hyper-V synthetic interrupt controller "
                          "(hv-synic)"),
    ("host,hv-tlbflush=on", "Hyper-V paravirtualized TLB flush (hv-tlbflush) requires Hyper-V VP_INDEX MSR "
                            "(hv-vpindex)"),
    ("host,hv-synic=on", "Hyper-V synthetic interrupt controller (hv-synic) requires Hyper-V VP_INDEX MSR "
                         "(hv-vpindex)"),
    ("host,hv-tlbflush-direct=on", "Hyper-V direct TLB flush (hv-tlbflush-direct) requires Hyper-V virtual APIC "
                                   "(hv-vapic)"),
])
def test_other_hv_dependencies(tmp_path: Path, cpu: str, message: str) -> None:
    p = predict(write_profile(str(tmp_path), "6.3"), ["-accel", "kvm", "-cpu", cpu])
    assert p.reason == message


def test_host_needs_kvm_and_tcg_ignores_hv(tmp_path: Path) -> None:
    prof = write_profile(str(tmp_path), "6.3")
    assert predict(prof, ["-cpu", "host"]).reason == "CPU model 'host' requires KVM or HVF"
    p = predict(prof, ["-accel", "tcg", "-cpu", "qemu64,hv-evmcs=on"])
    assert p.ok and p.stderr == []
    p = predict(prof, ["-cpu", "qemu64,vmx=on"])
    assert p.stderr == ["qemu-system-x86_64: warning: TCG doesn't support requested feature: CPUID.01H:ECX.vmx [bit 5]"]


def test_filter_warnings_and_enforce(tmp_path: Path) -> None:
    msrs = dict(SKYLAKE_MSRS, IA32_VMX_TRUE_PINBASED_CTLS=0x7F00000016, IA32_VMX_PINBASED_CTLS=0x7F00000016)
    prof = write_profile(str(tmp_path), "6.3", msrs=msrs)
    p = predict(prof, ["-accel", "kvm", "-cpu", "host,vmx-posted-intr=on"])
    assert p.ok
    assert p.stderr == ["qemu-system-x86_64: warning: host doesn't support requested feature: "
                        "MSR(48DH).vmx-posted-intr [bit 7]"]
    assert p.lost == ["vmx-posted-intr"] and p.lost_detail == {"vmx-posted-intr": "host"}
    assert predict(prof, ["-accel", "kvm", "-cpu", "host,vmx-posted-intr=on,check=off"]).stderr == []
    p = predict(prof, ["-accel", "kvm", "-cpu", "host,vmx-posted-intr=on,enforce"])
    assert (p.ok, p.exit_status, p.stderr[-1]) == (False, 1, "qemu-system-x86_64: Host doesn't support requested "
                                                             "features")


def test_dependencies(tmp_path: Path) -> None:
    prof = write_profile(str(tmp_path), "6.3")
    p = predict(prof, ["-accel", "kvm", "-cpu", "host,vmx-secondary-ctls=off,vmx-ept=on"])
    assert p.stderr == ["qemu-system-x86_64: warning: This feature depends on other features that were not "
                        "requested: MSR(48BH).vmx-ept [bit 1]"]
    assert p.lost_detail == {"vmx-ept": "dependency"}
    m = _boot(prof, ["-accel", "kvm", "-cpu", "host,-vmx-ept"])
    cpu = m.vcpus[0].cpu
    assert not cpu.prop_bool("vmx-unrestricted-guest") and not cpu.prop_bool("vmx-invept")
    assert cpu.prop_bool("vmx-invvpid")          # gated by vmx-vpid, still on
    assert cpu.prop_bool("vmx-invept-single-context") is False
    # QEMU writes EPT_VPID_CAP without the host's UC/WB bits when EPT is off.
    written = dict(m.vcpus[0].written)
    assert written["IA32_VMX_EPT_VPID_CAP"] & 0xFFFFFFFF == 0


def test_vmx_off_writes_no_vmx_msrs(tmp_path: Path) -> None:
    m = _boot(write_profile(str(tmp_path), "6.3"), ["-accel", "kvm", "-cpu", "host,vmx=off"])
    assert m.vcpus[0].written == []
    assert not any(m.vcpus[0].cpu.features.values())


def test_written_msrs_order_and_host_bits(tmp_path: Path) -> None:
    m = _boot(write_profile(str(tmp_path), "6.3"), HOST_EVMCS)
    written = m.vcpus[0].written
    assert [n for n, _ in written] == [
        "IA32_VMX_TRUE_PROCBASED_CTLS", "IA32_VMX_TRUE_PINBASED_CTLS", "IA32_VMX_TRUE_EXIT_CTLS",
        "IA32_VMX_TRUE_ENTRY_CTLS", "IA32_VMX_PROCBASED_CTLS2", "IA32_VMX_EPT_VPID_CAP", "IA32_VMX_BASIC",
        "IA32_VMX_MISC", "IA32_VMX_VMFUNC", "IA32_VMX_CR0_FIXED0", "IA32_VMX_CR4_FIXED0", "IA32_VMX_VMCS_ENUM"]
    w = dict(written)
    assert w["IA32_VMX_TRUE_PINBASED_CTLS"] == 0xFF00000016
    assert w["IA32_VMX_CR0_FIXED0"] == 0x80000021 and w["IA32_VMX_CR4_FIXED0"] == 0x2000
    assert w["IA32_VMX_VMCS_ENUM"] == 0x2E
    assert w["IA32_VMX_EPT_VPID_CAP"] == SKYLAKE_MSRS["IA32_VMX_EPT_VPID_CAP"]  # every bit named or UC/WB
    assert w["IA32_VMX_TRUE_EXIT_CTLS"] >> 32 & registry().feature("vmx-exit-host-addr-space-size").mask
    # BASIC: named bits plus revision/size/memory type; the dual-monitor bit is not copied.
    assert w["IA32_VMX_BASIC"] == SKYLAKE_MSRS["IA32_VMX_BASIC"] & ~(1 << 49)


def test_smp_warnings_per_vcpu(tmp_path: Path) -> None:
    msrs = dict(SKYLAKE_MSRS, IA32_VMX_TRUE_PINBASED_CTLS=0x7F00000016, IA32_VMX_PINBASED_CTLS=0x7F00000016)
    p = predict(write_profile(str(tmp_path), "6.3", msrs=msrs),
                ["-accel", "kvm", "-smp", "2", "-cpu", "host,+vmx-posted-intr"])
    assert len(p.stderr) == 2 and p.stderr[0] == p.stderr[1]


def test_unknown_property_and_model(tmp_path: Path) -> None:
    prof = write_profile(str(tmp_path), "6.3")
    assert predict(prof, ["-accel", "kvm", "-cpu", "host,vmx-bogus=on"]).reason == (
        "can't apply global host-x86_64-cpu.vmx-bogus=on: Property 'host-x86_64-cpu.vmx-bogus' not found")
    assert predict(prof, ["-accel", "kvm", "-cpu", "host,+bogus"]).reason == (
        "Property 'host-x86_64-cpu.bogus' not found")
    assert predict(prof, ["-accel", "kvm", "-cpu", "host,vmx=maybe"]).reason == (
        "can't apply global host-x86_64-cpu.vmx=maybe: Parameter 'vmx' expects 'on' or 'off'")
    assert predict(prof, ["-accel", "kvm", "-cpu", "Skylake-Server-v99"]).reason == (
        "unable to find CPU model 'Skylake-Server-v99'")
    with pytest.raises(QemuError, match="unable to find CPU model 'Nope'"):
        load_model_features("Nope")


def test_predict_bad_profile_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        predict(str(tmp_path / "missing.yaml"), ["-accel", "kvm"])


def test_predict_accepts_program_name_and_bad_options(tmp_path: Path) -> None:
    prof = write_profile(str(tmp_path), "6.3")
    assert predict(prof, ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host"]).ok
    p = predict(prof, ["-foo"])
    assert (p.ok, p.exit_status, p.stderr) == (False, 1, ["qemu-system-x86_64: -foo: invalid option"])


class _Models:
    """A test model provider: one Skylake-Server-like model."""

    FEATURES = frozenset({"vmx-posted-intr", "vmx-preemption-timer", "vmx-intr-exit", "vmx-nmi-exit", "vmx-vnmi",
                          "vmx-secondary-ctls", "vmx-ept", "vmx-exit-load-perf-global-ctrl", "vmx-rdseed-exit",
                          "vmx-entry-ia32e-mode", "vmx-true-ctls"})

    def features(self, name: str) -> AbstractSet[str] | None:
        return self.FEATURES if name == "Test-Server" else None

    def names(self) -> list[str]:
        return ["Test-Server"]


def test_model_provider_plugin(tmp_path: Path) -> None:
    provider = _Models()
    cpumod.register_model_provider(provider)
    try:
        assert "Test-Server" in cpumod.list_models()
        prof = write_profile(str(tmp_path), "6.3")
        # Without vmx the model's vmx-* features are not requested (dropped silently, as in QEMU).
        p = predict(prof, ["-accel", "kvm", "-cpu", "Test-Server"])
        assert p.ok and p.lost == [] and p.stderr == []
        # With vmx and hv-evmcs on 6.3 the L1 silently loses what the eVMCS filter hides.
        p = predict(prof, ["-accel", "kvm", "-cpu", "Test-Server,vmx=on,hv-evmcs=on,hv-vapic=on"])
        assert p.ok
        assert p.lost_detail == {"vmx-posted-intr": "evmcs-filter", "vmx-preemption-timer": "evmcs-filter",
                                 "vmx-exit-load-perf-global-ctrl": "perf-cpuid-gate"}
        assert "eVMCS filter" in p.reason
        p = predict(prof, ["-accel", "kvm", "-cpu",
                           "Test-Server,vmx=on,hv-evmcs=on,hv-vapic=on,hv-evmcs-perf-global-ctrl=on"])
        assert "vmx-exit-load-perf-global-ctrl" not in p.lost
    finally:
        cpumod.unregister_model_provider(provider)
    assert "Test-Server" not in cpumod.list_models()


def test_function_provider_and_bad_names() -> None:
    provider = FunctionProvider(lambda n: {"vmx-not-a-thing"} if n == "Bad" else None, ["Bad"])
    cpumod.register_model_provider(provider)
    try:
        with pytest.raises(QemuError, match="unknown feature"):
            load_model_features("Bad")
    finally:
        cpumod.unregister_model_provider(provider)


def test_host_model_takes_named_optional_controls_only(tmp_path: Path) -> None:
    prof = load_profile(write_profile(str(tmp_path), "6.3"))
    from qemu_evmcs.kvm.simkvm import SimKvm
    from qemu_evmcs.qemu.cpu import KvmAccel, KvmLog
    accel = KvmAccel(SimKvm(prof), KvmLog())
    cpu = X86Cpu.create(CpuSpec(model="host"), accel)
    cpu.expand()
    # TRUE_PINBASED 0xff00000016: optional = 0xff & ~0x16 = 0xe9
    assert cpu.features["pinbased"] == 0xE9
    # Unnamed EPT bits (UC 8, WB 14) are not features; QEMU copies them from the host when writing.
    reg = registry()
    assert not cpu.features["ept_vpid"] & (reg.feature("vmx-ept-uc").mask | reg.feature("vmx-ept-wb").mask)


# ---- Hyper-V CPUID before 5.0: QEMU's legacy path ----------------------------------------------------------

_NO_FILTERED = ("host,hv-evmcs=on,hv-vapic=on,-vmx-posted-intr,-vmx-preemption-timer,-vmx-apicv-xapic,"
                "-vmx-apicv-register,-vmx-apicv-vid,-vmx-pml,-vmx-vmfunc,-vmx-shadow-vmcs,-vmx-ple,-vmx-tsc-scaling,"
                "-vmx-exit-load-perf-global-ctrl,-vmx-entry-load-perf-global-ctrl")


def _hv_cpuid_calls(machine) -> list[tuple[object, str, str]]:  # type: ignore[no-untyped-def]
    return [(e["vcpu"], str(e["ioctl"]), str(e["arg"])) for e in machine.log.entries
            if e["ioctl"] in ("GET_SUPPORTED_HV_CPUID", "CHECK_EXTENSION")]


def test_420_has_no_hv_cpuid_ioctl_and_qemu_uses_the_legacy_path(tmp_path: Path) -> None:
    # 4.20: KVM_CAP_HYPERV_ENLIGHTENED_VMCS exists but KVM_GET_SUPPORTED_HV_CPUID does not (5.0): QEMU's
    # get_supported_hv_cpuid_legacy() takes hv-evmcs support from KVM_CHECK_EXTENSION, and the guest starts.
    m = _boot(write_profile(str(tmp_path), "4.20"), ["-accel", "kvm", "-cpu", _NO_FILTERED])
    calls = _hv_cpuid_calls(m)
    assert (None, "CHECK_EXTENSION", "KVM_CAP_HYPERV_CPUID") in calls
    assert not any(c[2] == "vcpu fd" for c in calls)
    assert any(c[1] == "GET_SUPPORTED_HV_CPUID" and c[2].startswith("legacy") for c in calls)
    vcpu = m.vcpus[0].kvm_vcpu
    assert vcpu is not None and vcpu.evmcs_enabled
    assert not any(e[0] == "GET_SUPPORTED_HV_CPUID" for e in vcpu.log)  # never tried the missing ioctl


def test_50_uses_the_vcpu_hv_cpuid_ioctl(tmp_path: Path) -> None:
    m = _boot(write_profile(str(tmp_path), "5.0"), ["-accel", "kvm", "-cpu", _NO_FILTERED])
    calls = _hv_cpuid_calls(m)
    assert (0, "GET_SUPPORTED_HV_CPUID", "vcpu fd") in calls
    assert not any(c[2].startswith("legacy") for c in calls)


def test_419_legacy_path_reports_evmcs_unsupported(tmp_path: Path) -> None:
    p = predict(write_profile(str(tmp_path), "4.19"), HOST_EVMCS)
    assert (p.ok, p.exit_status) == (False, 1)
    assert p.stderr[0] == "qemu-system-x86_64: Hyper-V enlightened VMCS (hv-evmcs) is not supported by kernel"


def test_420_with_every_control_still_aborts_like_qemu(tmp_path: Path) -> None:
    # The legacy path lets hv-evmcs through; the enable-time sanitization then makes the MSR write fail.
    p = predict(write_profile(str(tmp_path), "4.20"), HOST_EVMCS)
    assert p.exit_status == 134 and p.reason == "error: failed to set MSR 0x48d to 0xff00000016"


def test_lost_uses_the_one_visibility_rule_of_core_views() -> None:
    """sandybridge-e-5.15 (i7-3960X, kernel 5.15.0, before 5.15.24): 8d68bad6d869 filters PINBASED_CTLS on guest
    reads (EVMCS1_UNSUPPORTED_PINCTRL = posted-intr bit 7 | preemption timer bit 6) but not TRUE_PINBASED_CTLS
    (f80ae0ef089a, 5.17 / 5.15.24; kvm-evmcs.md §10.3). The CPU's pin allowed-1 is 0x7f (no posted-intr), so the
    L1 reads PINBASED 0x3f00000016 and TRUE_PINBASED 0x7f00000016: the preemption timer is in one form only, and
    an L1 trusting TRUE fails the eVMCS controls check at L2 entry. The start-up model now counts it lost, as
    core.views.visible_features (and so negotiate and migrate-check) always did; before, only TRUE was read."""
    profile = next(iter(load_hosts_fleet(["sandybridge-e-5.15"]).distinct.values()))
    run = start(profile, StartRequest(cpu=parse_cpu("Skylake-Server-v5,vmx=on,hv-vapic=on,hv-evmcs=on")))
    assert run.ok
    assert run.guest_msrs["IA32_VMX_PINBASED_CTLS"] >> 32 == 0x3f
    assert run.guest_msrs["IA32_VMX_TRUE_PINBASED_CTLS"] >> 32 == 0x7f
    assert run.lost_detail["vmx-preemption-timer"] == "evmcs-filter"
    assert "vmx-preemption-timer" not in visible_properties(run.guest_msrs)
    # both forms allow NMI exiting (bit 3): visible
    assert "vmx-nmi-exit" in visible_properties(run.guest_msrs)
