"""``--model`` as users write it (issue 16): host, max, QEMU names, libvirt names, typos; ``host`` per host.

Expected sets are derived by hand from the era table in README.md ("Kernel eras") and QEMU 7.2's model
definitions, not from the code under test:

- era 5.6-5.14 (skylake-5.10) hides from an eVMCS L1 only PERF_GLOBAL_CTRL (exit/entry) and virtualize APIC
  accesses; era 6.3+ (skylake-6.3) uses the allow-list, which also hides the preemption timer (pin), exit
  save-preemption-timer, PLE, VMFUNC, shadow VMCS, PML, TSC scaling and EPTP switching;
- both skylake profiles are the same i7-6700K MSRs (README: "real Skylake i7-6700K VMX MSRs"), so whatever
  differs between their guests is the filter; the 6700K has no APICv/posted interrupts, and 5.10's nested VMX
  does not offer TSC scaling (nested TSC scaling arrived in 5.14);
- so a guest sees on 5.10 but not on 6.3: preemption timer, exit save-preemption-timer, PLE, VMFUNC, shadow
  VMCS, PML, EPTP switching (PLE only if the model asks for it: QEMU's Skylake-Client-v4 does not).
"""

from __future__ import annotations

import pytest
from cli_helpers import Run, cli_runner

from host_helpers import host_profiles
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.policy.hostmodel import hv_passthrough_flags
from qemu_evmcs.policy.migrate import migrate_check
from qemu_evmcs.policy.negotiate import load_guest_model
from qemu_evmcs.cli.main import run as cli_run
from qemu_evmcs.qemu.model_names import load_any_model

FILTER_63_NOT_510 = {"vmx-preemption-timer", "vmx-exit-save-preemption-timer", "vmx-ple", "vmx-vmfunc",
                     "vmx-shadow-vmcs", "vmx-pml", "vmx-eptp-switching"}


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    return cli_runner(capsys, monkeypatch, ["negotiate", "migrate_check", "baseline"])


def host(name: str):  # type: ignore[no-untyped-def]
    return host_profiles(name)[0]


@pytest.mark.parametrize("name,base", [
    ("Skylake-Client-v4", "Skylake-Client-v4"),          # versioned
    ("Cascadelake-Server", "Cascadelake-Server"),        # alias
    ("Icelake-Server-noTSX", "Icelake-Server-noTSX"),    # alias
    ("Skylake-Server-noTSX-IBRS", "Skylake-Server-noTSX-IBRS"),  # libvirt cpu_map name = QEMU alias
    ("Skylake-Server-evmcs", "Skylake-Server-v5"),       # bundled definition
])
def test_model_names_resolve(name: str, base: str) -> None:
    gm = load_guest_model(name)
    assert gm.base == base and not gm.per_host
    if base == name:   # a QEMU model: VMX on, and the two flags eVMCS needs (QEMU: hv-evmcs requires hv-vapic)
        assert dict(gm.hyperv) == {"hv-vapic": True, "hv-evmcs": True} and gm.vmx


def test_unknown_and_libvirt_only_names() -> None:
    with pytest.raises(InputError, match=r"did you mean Skylake-Client-v4"):
        load_any_model("Skylake-Clinet-v4")
    with pytest.raises(InputError, match=r"did you mean Skylake-Server-evmcs"):
        load_any_model("Skylake-Server-evmc")
    # libvirt 9.0's cpu_map has cpu64-rhel6; QEMU 7.2 has no such model.
    with pytest.raises(InputError, match=r"libvirt CPU model 'cpu64-rhel6' has no QEMU 7.2 model"):
        load_any_model("cpu64-rhel6")
    with pytest.raises(InputError, match=r"not a boolean CPU option"):
        load_any_model("Skylake-Client-v4,hv-spinlocks=0x1fff")


def test_model_items_follow_qemu_precedence() -> None:
    gm = load_guest_model("Skylake-Client-v4,-vmx-pml,vmx-pml=on,hv-relaxed")
    assert "vmx-pml" not in gm.vmx           # -feat wins over feat=on (QEMU applies minus last)
    assert gm.hyperv.get("hv-relaxed") is True


def test_hv_passthrough_offers_evmcs_on_63() -> None:
    flags = hv_passthrough_flags(host("skylake-6.3"))
    assert {"hv-evmcs", "hv-vapic", "hv-relaxed", "hv-vpindex"} <= flags
    assert "hv-evmcs-perf-global-ctrl" not in flags      # real QEMU has no such option
    assert "hv-evmcs-perf-global-ctrl" in hv_passthrough_flags(host("skylake-6.3"), "simulator")  # 6.1+: bit 0


def test_host_on_54_aborts(run: Run) -> None:
    """Era 4.20-5.5 filters at enable time: -cpu host writes the unfiltered KVM values, KVM_SET_MSRS refuses,
    QEMU aborts (README: "QEMU's later KVM_SET_MSRS of unfiltered values fails")."""
    rc, out, err = run("negotiate", "--model", "host", "--hosts", "cascadelake-5.4")
    # The first write KVM refuses: IA32_VMX_TRUE_PINBASED_CTLS (0x48d), whose posted-interrupt and preemption-timer
    # bits the 4.20-5.5 filter removed at enable time (README era table, "pin: posted-intr, preemption timer").
    assert "-cpu host does not start on cascadelake-5.4" in out and "failed to set MSR 0x48d" in out, out
    rc, out, err = run("migrate-check", "--model", "host", "--from", "cascadelake-5.4", "--to", "skylake-6.3")
    # a negative answer: the verdict line on stdout (issue 13), not an error: line
    assert (rc, err) == (1, "") and out.startswith("source-fails: -cpu host cannot start on the source cascadelake-5.4")


def test_host_between_510_and_63_is_unsafe_because_of_the_filter() -> None:
    v = migrate_check("host", host("skylake-5.10"), host("skylake-6.3"))
    assert v.verdict == "unsafe"
    assert {c.feature for c in v.lost} == FILTER_63_NOT_510
    assert "the eVMCS filters of kernels" in v.reason and "QEMU and libvirt do not check this" in v.reason
    back = migrate_check("host", host("skylake-6.3"), host("skylake-5.10"))
    assert back.verdict == "fine" and {c.feature for c in back.gained} == FILTER_63_NOT_510


def test_host_negotiate_explains_and_gives_a_custom_model(run: Run) -> None:
    rc, out, err = run("negotiate", "--model", "host", "--hosts", "skylake-5.10", "skylake-6.3", "--format", "text")
    assert rc == 0, err
    assert "a -cpu host guest cannot live-migrate between skylake-5.10 and skylake-6.3" in out
    assert "the eVMCS filter of kernel" in out
    assert "custom model for -cpu host guests" in out
    rc, cpu, _ = run("negotiate", "--model", "host", "--hosts", "skylake-5.10", "skylake-6.3", "--format", "cpu")
    assert rc == 0 and cpu.startswith("max,vmx=on,")
    for feat in FILTER_63_NOT_510:
        assert f"-{feat}," in cpu       # pinned off: 6.3 hides them
    rc, out, _ = run("baseline", "--model", "host", "skylake-5.10", "skylake-6.3")
    assert rc == 0 and out.startswith("note: a -cpu host guest cannot live-migrate")


def test_skylake_client_v4_on_two_skylake_hosts(run: Run) -> None:
    # QEMU 7.2's Skylake-Client-v4 has no PLE among its defaults, so PLE is not among the losses.
    v = migrate_check("Skylake-Client-v4", host("skylake-5.10"), host("skylake-6.3"))
    assert v.verdict == "unsafe" and {c.feature for c in v.lost} == FILTER_63_NOT_510 - {"vmx-ple"}
    rc, cpu, err = run("negotiate", "--model", "Skylake-Client-v4", "--hosts", "skylake-5.10", "skylake-6.3",
                       "--format", "cpu")
    assert rc == 0, err
    assert cpu.startswith("Skylake-Client-v4,vmx=on,")
    for feat in FILTER_63_NOT_510 - {"vmx-ple"}:
        assert f"-{feat}," in cpu
    assert "hv-vapic=on" in cpu and "hv-evmcs=on" in cpu


def test_wrapper_check_understands_host_hv_passthrough() -> None:
    """The wrapper's --check reads -cpu host,hv-passthrough like QEMU: on a 5.4 host (enable-time filter) the
    unfiltered pin controls are refused (0x48d, see test_host_on_54_aborts), before anything starts."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "qemu_evmcs.launch", "--check", "--simulate", "cascadelake-5.4",
                           "--", "-accel", "kvm", "-cpu", "host,hv-passthrough", "-S", "-display", "none"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("error: --check: failed to set MSR 0x48d"), proc.stderr


@pytest.mark.parametrize("argv", [
    ["baseline", "--model", "auto", "skylake-6.3"],
    ["admit", "--model", "auto", "--pool", "skylake-6.3", "--candidate", "skylake-5.10"],
    ["migrate-check", "--model", "auto", "--from", "skylake-6.3", "--to", "skylake-5.10"],
])
def test_model_auto_outside_negotiate_says_where_it_works(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # Found by the verifier: "unknown CPU model 'auto' (did you mean athlon? ...)" although negotiate takes it.
    assert cli_run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model auto: ") and "negotiate --model auto" in err and "athlon" not in err, err
