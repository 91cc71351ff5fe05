"""Distribution kernels (kvm-evmcs.md §10.4): resolved through the sourced table or reported ambiguous with
every candidate era; never an era picked silently. Expectations are written from the reference by hand."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.kernelid import AmbiguousKernel, identify
from qemu_evmcs.core.profile import HostProfile, load_profile, load_profile_text
from qemu_evmcs.policy.migrate import migrate_check_candidates
from qemu_evmcs.policy.negotiate import max_model, negotiate
from qemu_evmcs.policy.resolve import baseline
from qemu_evmcs.simqemu.server import main

SKYLAKE = load_profile(str(Path(__file__).resolve().parent / "data" / "core" / "skylake.yaml"))


@pytest.mark.parametrize("kernel, kernel_version, eras", [
    # Ubuntu 20.04: 5.4.0-131.147 = 5.4.210 (version_signature in the reference): 5.4.y + 7a601e2cf615 (5.4.180)
    ("5.4.0-131-generic", None, ["4.20-5.5+7a601e2cf615"]),
    # a later focal ABI is based on >= 5.4.210 [inferred: ABI numbers only grow]
    ("5.4.0-150-generic", None, ["4.20-5.5+7a601e2cf615"]),
    # between ABI 12 (5.4.8) and 131 (5.4.210): before or after 5.4.180 -> both
    ("5.4.0-100-generic", None, ["4.20-5.5", "4.20-5.5+7a601e2cf615"]),
    # jammy GA 5.15.0-25 = 5.15.30 >= 5.15.24: every 22.04 kernel has both 5.17 fixes
    ("5.15.0-25-generic", None, ["5.17-6.0"]), ("5.15.0-91-generic", None, ["5.17-6.0"]),
    # Debian 11: 5.10.0-11 = 5.10.92 (verified); ABI 26 >= 5.10.92: 5.10.92-100 or 5.10.101+
    ("5.10.0-11-amd64", None, ["5.15-5.16"]),
    ("5.10.0-26-amd64", None, ["5.15-5.16", "5.17-6.0"]),
    ("5.10.0-26-amd64", "5.10.197", ["5.17-6.0"]),
    # ABI below 10 (5.10.84): 5.10.0-70 or 5.10.71-84
    ("5.10.0-8-amd64", None, ["5.6-5.14", "5.15-5.16"]),
    ("6.1.0-13-amd64", None, ["6.1-6.2"]), ("6.1.0-18-amd64", None, ["6.1-6.2"]),
    # RHEL 9: KVM rebased per minor (9.2 -> 6.0, 9.3 -> 6.3); a z-stream tag names the minor
    ("5.14.0-284.30.1.el9_2.x86_64", None, ["5.17-6.0"]),
    ("5.14.0-362.8.1.el9_3.x86_64", None, ["6.3+"]),
    ("5.14.0-427.13.1.el9_4.x86_64", None, ["6.3+"]),
    # a CentOS Stream build between 9.2's and 9.3's GA builds: before or after the 6.3 rebase
    ("5.14.0-300.el9.x86_64", None, ["5.17-6.0", "6.3+"]),
    # upstream and custom builds: the string names the point release
    ("5.10.101", None, ["5.17-6.0"]), ("6.1.90-custom", None, ["6.1-6.2"]), ("5.10", None, ["5.6-5.14"]),
])
def test_identify(kernel: str, kernel_version: str | None, eras: list[str]) -> None:
    assert identify(kernel, kernel_version).era_ids() == eras


def test_rhel8_is_not_before_4_20() -> None:
    ident = identify("4.18.0-513.5.1.el8_9.x86_64")
    assert ident.ambiguous and "pre-4.20" not in ident.era_ids()
    assert {"4.20-5.5", "5.6-5.14", "5.15-5.16", "5.17-6.0", "6.1-6.2", "6.3+"} <= set(ident.era_ids())
    assert ident.distro == "RHEL 8"


def test_ambiguous_profile_names_every_candidate() -> None:
    p = SKYLAKE.with_kernel("5.10.0-26-amd64")
    with pytest.raises(AmbiguousKernel) as exc:
        _ = p.era
    msg = str(exc.value)
    assert "5.15-5.16 (5.10.92-5.10.100)" in msg and "5.17-6.0 (5.10.101+)" in msg and "kernel_version" in msg
    assert exc.value.exit_code == 2
    assert [c.era.id for c in p.candidate_profiles()] == ["5.15-5.16", "5.17-6.0"]
    assert [c.name for c in p.candidate_profiles()] == [f"{p.name} (if era 5.15-5.16)", f"{p.name} (if era 5.17-6.0)"]
    assert p.era_label == "5.15-5.16|5.17-6.0"


def test_profile_kernel_version_key() -> None:
    text = ("name: deb11\nvendor: GenuineIntel\nkernel: 5.10.0-26-amd64\nkernel_version: 5.10.197\n"
            "msrs: {}\n")
    p = load_profile_text(text)
    assert p.kernel_version == "5.10.197" and p.era.id == "5.17-6.0" and str(p.version) == "5.10.197"
    assert p.to_mapping()["kernel_version"] == "5.10.197"


@pytest.mark.parametrize("kernel, kv, message", [
    ("5.10.0-26-amd64", "5.15.30", "is not of the 5.10 series"),
    ("5.10.0-11-amd64", "5.10.93", "contradicts Debian ABI 11 = 5.10.92"),
    ("5.10.0-26-amd64", "Debian 5.10.197-1", "must be an upstream release"),
])
def test_kernel_version_checked(kernel: str, kv: str, message: str) -> None:
    text = f"name: x\nvendor: GenuineIntel\nkernel: {kernel}\nkernel_version: {kv}\nmsrs: {{}}\n"
    with pytest.raises(InputError, match=message) as exc:
        load_profile_text(text, "h.yaml")
    assert exc.value.key == "kernel_version" and exc.value.line == 4


def test_cli_kernel_takes_either_form() -> None:
    assert SKYLAKE.with_kernel("5.10.197").era.id == "5.17-6.0"
    assert SKYLAKE.with_kernel("5.4.0-131-generic").era.id == "4.20-5.5+7a601e2cf615"
    # a profile's kernel_version does not survive --kernel
    p = load_profile_text("name: x\nvendor: GenuineIntel\nkernel: 5.10.0-26-amd64\nkernel_version: 5.10.197\n"
                          "msrs: {}\n").with_kernel("5.10.0-8-amd64")
    assert p.kernel_version is None and p.identity.ambiguous


# ---- computing against every candidate --------------------------------------------------------------------

def _host(kernel: str, name: str) -> HostProfile:
    return replace(SKYLAKE.with_kernel(kernel), name=name)


def test_negotiation_holds_for_every_candidate_era() -> None:
    # 5.10.92-100 (era 5.15-5.16) leaves VM_EXIT_SAVE_VMX_PREEMPTION_TIMER to the guest; 5.10.101+ (5.17-6.0,
    # 7a601e2cf615) hides it. The Debian ABI 26 build may be either, so the answer must not enable it.
    alone = negotiate(max_model(), [_host("5.10.92", "k92")], "pv-cpuid")
    assert alone.ok and alone.config is not None and "vmx-exit-save-preemption-timer" in alone.config.vmx
    neg = negotiate(max_model(), [_host("5.10.0-26-amd64", "deb11")], "pv-cpuid")
    assert neg.ok and neg.config is not None
    assert "vmx-exit-save-preemption-timer" not in neg.config.vmx
    assert sorted(n for g in neg.host_groups() for n in g.hosts) == ["deb11 (if era 5.15-5.16)",
                                                                     "deb11 (if era 5.17-6.0)"]


def test_migration_checked_against_every_candidate_pair() -> None:
    v = migrate_check_candidates(max_model(), _host("5.10.92", "src"), _host("5.10.0-26-amd64", "deb11"))
    assert v.verdict == "unsafe" and v.destination == "deb11"
    assert v.reason.startswith("if src is in era 5.15-5.16 and deb11 in era 5.17-6.0: ")
    assert "vmx-exit-save-preemption-timer" in v.reason
    # with kernel_version the destination is one era and the check is the ordinary one
    fine = migrate_check_candidates(max_model(), _host("5.10.92", "src"), _host("5.10.0-11-amd64", "deb11"))
    assert fine.verdict == "fine" and "candidate" not in fine.reason
    # an ambiguous source: the guest would look different depending on the era
    v2 = migrate_check_candidates(max_model(), _host("5.10.0-26-amd64", "deb11"), _host("5.10.92", "dst"))
    assert v2.verdict == "unsafe" and v2.stage == "ambiguous-kernel"


def test_non_intel_host_is_never_ambiguous() -> None:
    amd = replace(load_profile(str(Path(__file__).resolve().parent / "data" / "core" / "amd.yaml")),
                  kernel="5.10.0-26-amd64")
    assert amd.identity.ambiguous and amd.candidate_profiles() == [amd]
    assert amd.era.id == "5.15-5.16"  # no eVMCS on AMD whatever the era: the first candidate stands for all


def test_simulator_refuses_an_ambiguous_host_in_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "h.yaml"
    path.write_text("name: h\nvendor: GenuineIntel\nkernel: 5.10.0-8-amd64\nmsrs: {}\n")
    assert main(["--host", str(path), "-accel", "kvm", "-cpu", "host"]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "5.6-5.14 (5.10.0-5.10.70) or 5.15-5.16 (5.10.71-5.10.84)" in err


def test_baseline_counts_every_candidate_era() -> None:
    # Debian ABI 26 is 5.15-5.16 or 5.17-6.0: VM_EXIT_SAVE_VMX_PREEMPTION_TIMER is hidden only in the latter,
    # so the eVMCS baseline must not keep it; the pool's own 5.10.92 host alone keeps it.
    alone = baseline([_host("5.10.92", "k92")])
    both = baseline([_host("5.10.0-26-amd64", "deb11")])
    assert "vmx-exit-save-preemption-timer" in alone.evmcs
    assert "vmx-exit-save-preemption-timer" not in both.evmcs
