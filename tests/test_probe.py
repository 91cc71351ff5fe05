"""Live probe: ioctl encodings, struct layouts, the Intel path against a fake KVM, and the real failure paths
on this machine (AMD host / no device access)."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, TypedDict

import pytest

from qemu_evmcs.hostio import probe
from qemu_evmcs.core.errors import NegativeAnswer, ProbeError
from qemu_evmcs.core.profile import bundled_profile_dir, load_profile
from qemu_evmcs.core.registry import registry

SKY = dict(load_profile(str(Path(bundled_profile_dir()) / "skylake-5.10.yaml")).msrs)

# Runs the real dispatcher, limited to the command modules present in this tree.
SHIM = ("import importlib.util, sys\n"
        "import qemu_evmcs.cli.main as c\n"
        "c.COMMAND_MODULES[:] = [m for m in c.COMMAND_MODULES "
        "if importlib.util.find_spec('qemu_evmcs.cli.commands.' + m)]\n"
        "sys.exit(c.run(sys.argv[1:]))\n")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SHIM, *args], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})})


# --------------------------------------------------------------------------- encodings and layouts

def test_ioctl_numbers_match_kvm_h() -> None:
    assert probe.KVM_GET_API_VERSION == 0xAE00
    assert probe.KVM_CHECK_EXTENSION == 0xAE03
    assert probe.KVM_GET_MSR_INDEX_LIST == 0xC004AE02
    assert probe.KVM_GET_MSR_FEATURE_INDEX_LIST == 0xC004AE0A
    assert probe.KVM_GET_MSRS == 0xC008AE88
    assert probe.KVM_GET_SUPPORTED_HV_CPUID == 0xC008AEC1
    assert probe.KVM_GET_SUPPORTED_CPUID == 0xC008AE05       # _IOWR(KVMIO, 0x05, struct kvm_cpuid2)


def test_ioc_macros() -> None:
    assert probe.ioc(probe.IOC_READ, 0xAE, 0x01, 4) == 0x8004AE01
    assert probe.ioc(probe.IOC_WRITE, 0xAE, 0x89, 8) == 0x4008AE89  # KVM_SET_MSRS is _IOW
    with pytest.raises(ValueError):
        probe.ioc(probe.IOC_READ, 0xAE, 0, 1 << 14)


def test_struct_sizes() -> None:
    assert probe.MSR_LIST_HEADER.size == 4
    assert probe.MSRS_HEADER.size == 8
    assert probe.MSR_ENTRY.size == 16
    assert probe.CPUID2_HEADER.size == 8
    assert probe.CPUID_ENTRY2.size == 40


def test_msr_list_pack_unpack() -> None:
    buf = probe.pack_msr_list(3)
    assert bytes(buf) == struct.pack("=IIII", 3, 0, 0, 0)
    struct.pack_into("=III", buf, 0, 2, 0x480, 0x481)
    assert probe.unpack_msr_list(buf) == [0x480, 0x481]
    struct.pack_into("=I", buf, 0, 9)
    with pytest.raises(ValueError):
        probe.unpack_msr_list(buf)


def test_msrs_pack_unpack() -> None:
    buf = probe.pack_msrs([0x480, 0x491])
    assert bytes(buf) == struct.pack("=II", 2, 0) + struct.pack("=IIQ", 0x480, 0, 0) + struct.pack("=IIQ", 0x491, 0, 0)
    struct.pack_into("=Q", buf, 8 + 8, 0xDA040000000004)
    struct.pack_into("=Q", buf, 8 + 16 + 8, 1)
    assert probe.unpack_msrs(buf) == [(0x480, 0xDA040000000004), (0x491, 1)]
    assert probe.unpack_msrs(buf, 1) == [(0x480, 0xDA040000000004)]


def test_cpuid2_pack_unpack() -> None:
    buf = probe.pack_cpuid2(2)
    assert len(buf) == 8 + 80
    struct.pack_into("=II", buf, 0, 1, 0)
    struct.pack_into("=7I", buf, 8, 0x4000000A, 0, 0, 0x0101, 1, 0, 0)
    assert probe.unpack_cpuid2(buf) == [probe.CpuidEntry(0x4000000A, 0, 0, 0x0101, 1, 0, 0)]


def test_parse_cpuinfo() -> None:
    info = probe.parse_cpuinfo("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 94\n"
                               "model name\t: Intel(R) Core(TM) i7-6700K CPU @ 4.00GHz\nstepping\t: 3\n"
                               "flags\t\t: fpu vmx\n\nprocessor\t: 1\nvendor_id\t: Other\n")
    assert (info.vendor, info.family, info.model, info.stepping) == ("GenuineIntel", 6, 94, 3)
    assert info.model_name == "Intel(R) Core(TM) i7-6700K CPU @ 4.00GHz" and "vmx" in info.flags


# --------------------------------------------------------------------------- Intel path against a fake KVM

class FakeKvm:
    """Answers the system-fd ioctls the way KVM does (including E2BIG for a too-small list)."""

    def __init__(self, msrs: dict[str, int], *, caps: dict[int, int] | None = None,
                 extra_indices: tuple[int, ...] = (0x10a, 0x345)) -> None:
        reg = registry()
        self.values = {reg.msrs[n].index: v for n, v in msrs.items()}
        self.indices = [*extra_indices, *sorted(self.values)]
        self.caps = caps if caps is not None else {153: 1, 163: 0x0101, 191: 1}
        self.calls: list[int] = []

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        self.calls.append(request)
        if request == probe.KVM_GET_API_VERSION:
            return 12
        if request == probe.KVM_CHECK_EXTENSION:
            return self.caps.get(arg, 0)
        if request == probe.KVM_GET_MSR_FEATURE_INDEX_LIST:
            (n,) = struct.unpack_from("=I", arg, 0)
            struct.pack_into("=I", arg, 0, len(self.indices))
            if n < len(self.indices):
                raise OSError(errno.E2BIG, os.strerror(errno.E2BIG))
            struct.pack_into(f"={len(self.indices)}I", arg, 4, *self.indices)
            return 0
        if request == probe.KVM_GET_MSRS:
            n = int(struct.unpack_from("=I", arg, 0)[0])
            for i in range(n):
                idx, _, _ = struct.unpack_from("=IIQ", arg, 8 + 16 * i)
                if idx not in self.values:
                    return i
                struct.pack_into("=IIQ", arg, 8 + 16 * i, idx, 0, self.values[idx])
            return n
        if request == probe.KVM_GET_SUPPORTED_HV_CPUID:
            (n,) = struct.unpack_from("=I", arg, 0)
            if n < 2:
                raise OSError(errno.E2BIG, "")
            struct.pack_into("=II", arg, 0, 2, 0)
            struct.pack_into("=10I", arg, 8, 0x40000000, 0, 0, 0x4000000A, 0, 0, 0, 0, 0, 0)
            struct.pack_into("=10I", arg, 48, 0x4000000A, 0, 0, 0x0101, 1, 0, 0, 0, 0, 0)
            return 0
        if request == probe.KVM_GET_SUPPORTED_CPUID:
            (n,) = struct.unpack_from("=I", arg, 0)
            if n < 2:
                raise OSError(errno.E2BIG, "")
            struct.pack_into("=II", arg, 0, 2, 0)
            # leaf 1: ECX bits 19, 20, 21 (sse4.1, sse4.2, x2apic), EDX bits 0, 26 (fpu, sse2);
            # leaf 7.0 (flags 1 = KVM_CPUID_FLAG_SIGNIFCANT_INDEX): EBX bits 5, 16 (avx2, avx512f).
            struct.pack_into("=10I", arg, 8, 1, 0, 0, 0, 0, (1 << 19) | (1 << 20) | (1 << 21), 1 | (1 << 26), 0, 0, 0)
            struct.pack_into("=10I", arg, 48, 7, 0, 1, 0, (1 << 5) | (1 << 16), 0, 0, 0, 0, 0)
            return 0
        raise OSError(errno.ENOTTY, "")


INTEL_CPUINFO = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 94\n"
                 "model name\t: Intel(R) Core(TM) i7-6700K CPU @ 4.00GHz\nstepping\t: 3\n\n")


class FakeHost(TypedDict):
    """The probe's file paths, faked (passed on as keyword arguments)."""

    device: str
    cpuinfo_path: str
    nested_param: str


@pytest.fixture
def fake_host(tmp_path: Path) -> FakeHost:
    dev = tmp_path / "kvm"
    dev.write_text("")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(INTEL_CPUINFO)
    nested = tmp_path / "nested"
    nested.write_text("Y\n")
    return FakeHost(device=str(dev), cpuinfo_path=str(cpuinfo), nested_param=str(nested))


def test_intel_probe_reads_every_msr(fake_host: FakeHost) -> None:
    kvm = FakeKvm(SKY)
    res = probe.probe(ioctl=kvm, release="6.1.55", name="box", **fake_host)
    assert res.msrs == SKY
    p = res.profile
    assert (p.name, p.vendor, p.kernel, p.model, p.nested, p.kvm_hyperv) == ("box", "GenuineIntel", "6.1.55", 94,
                                                                             True, True)
    assert res.caps == {"KVM_CAP_GET_MSR_FEATURES": 1, "KVM_CAP_HYPERV_ENLIGHTENED_VMCS": 0x0101,
                        "KVM_CAP_SYS_HYPERV_CPUID": 1}
    assert [e.function for e in res.hv_cpuid] == [0x40000000, 0x4000000A]
    assert "ebx=0x1" in (p.notes or "")
    assert probe.KVM_GET_SUPPORTED_HV_CPUID in kvm.calls
    assert res.to_mapping()["profile"]["msrs"]["IA32_VMX_BASIC"] == "0x00da040000000004"
    assert p.cpu_features == frozenset({"sse4.1", "sse4.2", "x2apic", "fpu", "sse2", "avx2", "avx512f"})


def test_probe_records_the_upstream_point_release(fake_host: FakeHost, tmp_path: Path) -> None:
    sig = tmp_path / "version_signature"
    sig.write_text("Ubuntu 5.4.0-131.147-generic 5.4.210\n")
    res = probe.probe(ioctl=FakeKvm(SKY), release="5.4.0-131-generic", version_signature_path=str(sig),
                      **fake_host)
    assert res.profile.kernel_version == "5.4.210" and res.profile.era.id == "4.20-5.5+7a601e2cf615"
    ver = tmp_path / "version"
    ver.write_text("Linux version 5.10.0-26-amd64 (debian-kernel@lists.debian.org) (gcc-10 (Debian 10.2.1-6) "
                   "10.2.1 20210110) #1 SMP Debian 5.10.197-1 (2023-09-29)\n")
    res = probe.probe(ioctl=FakeKvm(SKY), release="5.10.0-26-amd64", proc_version_path=str(ver), **fake_host)
    assert res.profile.kernel_version == "5.10.197" and res.profile.era.id == "5.17-6.0"


def test_no_hv_cpuid_without_cap(fake_host: FakeHost) -> None:
    kvm = FakeKvm(SKY, caps={153: 1})
    res = probe.probe(ioctl=kvm, release="5.10", **fake_host)
    assert res.hv_cpuid == [] and probe.KVM_GET_SUPPORTED_HV_CPUID not in kvm.calls
    assert res.profile.kvm_hyperv is False


#: The machine cannot do it (no Intel VMX, nested off, a KVM too old to list VMX MSRs): a negative answer, a
#: verdict (NegativeAnswer, exit 1), not an error (issue 13). (verdict, layer, words of the reason)
@pytest.mark.parametrize("case,verdict,layer,message", [
    ("nested-param", "no-nested-vmx", "kvm", "nested virtualization is off"),
    ("no-basic", "no-nested-vmx", "kvm", "KVM lists no IA32_VMX_BASIC (0x480) feature MSR: nested VMX is off"),
    ("basic-zero", "no-nested-vmx", "kvm", "KVM reports IA32_VMX_BASIC = 0: nested VMX is off"),
    ("no-feature-cap", "no-vmx-msrs", "kvm", "KVM lacks KVM_CAP_GET_MSR_FEATURES"),
    ("amd", "no-intel-vmx", "cpu", "no Intel VMX (AMD CPUs have SVM, not VMX)"),
])
def test_probe_verdicts(case: str, verdict: str, layer: str, message: str, fake_host: FakeHost) -> None:
    msrs = dict(SKY)
    caps: dict[int, int] | None = None
    if case == "nested-param":
        Path(fake_host["nested_param"]).write_text("N\n")
    elif case == "no-basic":
        msrs = {}
    elif case == "basic-zero":
        msrs["IA32_VMX_BASIC"] = 0
    elif case == "no-feature-cap":
        caps = {}
    elif case == "amd":
        Path(fake_host["cpuinfo_path"]).write_text("vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763\n\n")
    with pytest.raises(NegativeAnswer) as ei:
        probe.probe(ioctl=FakeKvm(msrs, caps=caps), release="6.1", **fake_host)
    assert message in str(ei.value) and "\n" not in str(ei.value)
    assert (ei.value.exit_code, ei.value.verdict, ei.value.layer) == (1, verdict, layer)
    assert ei.value.verdict_line().startswith(f"{verdict}: ")


def test_not_a_kvm_device(tmp_path: Path) -> None:
    dev = tmp_path / "notkvm"
    dev.write_text("")
    with pytest.raises(ProbeError, match="is not a KVM device"):
        probe.probe(str(dev))  # the real fcntl.ioctl on a regular file: ENOTTY


# --------------------------------------------------------------------------- the real machine, through the CLI

def _vendor() -> str | None:
    try:
        return probe.parse_cpuinfo(Path("/proc/cpuinfo").read_text()).vendor
    except OSError:
        return None


def test_real_probe_on_this_machine() -> None:
    """On this build machine (AMD EPYC with /dev/kvm) the probe must refuse; on Intel with nested it prints a
    profile."""
    r = run_cli("host", "probe")
    vendor = _vendor()
    can_open = os.access("/dev/kvm", os.R_OK | os.W_OK)
    if r.returncode == 0:
        assert vendor == "GenuineIntel" and can_open
        assert "IA32_VMX_BASIC:" in r.stdout and r.stderr == ""
        return
    assert r.returncode == 1
    if not can_open:    # the environment, not the machine's answer: an error line
        assert r.stdout == "" and r.stderr.startswith("error: cannot open /dev/kvm")
        return
    # the machine's answer: one verdict line on stdout (issue 13), the honest reason kept
    lines = r.stdout.splitlines()
    assert r.stderr == "" and len(lines) == 1
    if vendor in ("AuthenticAMD", "HygonGenuine"):
        assert lines[0].startswith("no-intel-vmx: this host's CPU is") and "AMD" in lines[0] \
            and "no Intel VMX" in lines[0]
    else:
        assert lines[0].startswith(("no-nested-vmx: ", "no-vmx-msrs: ")) and "nested" in lines[0]
    # --json: the same verdict as the documented object (docs/json.md "verdict"); the machine itself has no host
    j = run_cli("host", "probe", "--json")
    verdict = lines[0].split(":", 1)[0]
    assert (j.returncode, j.stderr) == (1, "")
    assert json.loads(j.stdout) == {"ok": False, "verdict": verdict, "host": None,
                                    "layer": "cpu" if verdict == "no-intel-vmx" else "kvm",
                                    "reason": lines[0].split(": ", 1)[1]}


@pytest.mark.parametrize("how", ["option", "env"])
def test_real_no_access(how: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-kvm")
    if how == "option":
        r = run_cli("host", "probe", "--device", missing)
    else:
        r = run_cli("host", "probe", env={probe.DEVICE_ENV: missing})
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (f"error: cannot open {missing}: No such file or directory (KVM is not available or not "
                        f"accessible to this user)\n")
