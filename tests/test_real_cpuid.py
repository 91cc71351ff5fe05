"""The bundled real-CPU profiles' CPUID (issue 12, "the base CPU model is never checked").

Each profile of data/profiles/fleet/ carries the raw CPUID leaves of its public dump (``cpuid:``, source and commit
in its provenance) and the ``cpu_features`` decoded from them. The expectations here are hand work: the register
values below are copied from the dumps (VirtualBox CPU database .h files, InstLatx64 AIDA64 dumps), the bits read
off them with the Intel SDM bit numbers written next to them, and the models worked out from the QEMU 7.2
snapshot's feature lists (data/cpu_models/qemu/7.2/MODEL.json, "features"), never from the code under test.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from cli_helpers import cli_runner
from qemu_evmcs.core.profile import HostProfile, bundled_fleet_dir, load_profile
from qemu_evmcs.hostio import cpuiddump
from qemu_evmcs.output.render import cpu_string
from qemu_evmcs.policy.negotiate import negotiate
from qemu_evmcs.qemu.basecpuid import newest_runnable

SNAP = Path(__file__).parent.parent / "qemu_evmcs" / "data" / "cpu_models" / "qemu" / "7.2"
REAL = {n[:-5]: load_profile(os.path.join(bundled_fleet_dir(), n))
        for n in sorted(os.listdir(bundled_fleet_dir())) if n.endswith(".yaml")}

#: Copied from the dumps (first logical CPU): CPUID.1:ECX, CPUID.(7,0):EBX, ECX, EDX, CPUID.(0xD,1):EAX (None: the
#: dump has no sub-leaf 1), 0x80000001:ECX, 0x80000001:EDX.
DUMPS = {
    "westmere-5.4": (0x029AE3BF, 0, 0, 0, None, 0x00000001, 0x2C100000),           # InstLatx64 Gulftown i7-990X
    "sandybridge-5.4": (0x1FBAE3BF, 0, 0, 0, 0x1, 0x00000001, 0x28100800),         # VBox Intel_Core_i7_2635QM.h
    "sandybridge-e-5.15": (0x1FBEE3BF, 0, 0, 0, 0x1, 0x00000001, 0x2C100800),      # VBox Intel_Core_i7_3960X.h
    "ivybridge-5.10": (0x7FBAE3FF, 0x281, 0, 0, None, 0x00000001, 0x28100800),     # VBox Intel_Core_i5_3570.h
    "haswell-5.15": (0x7FDAFBBF, 0x27AB, 0, 0, 0x1, 0x00000021, 0x2C100000),       # InstLatx64 HaswellULT (+ 0xD.1)
    "broadwell-6.1": (0x7FFAFBFF, 0x021C2FBB, 0, 0, 0x1, 0x00000121, 0x2C100800),  # VBox Intel_Core_i7_5600U.h
    "skylake-client-6.3": (0x7FFAFBBF, 0x029C6FBF, 0, 0, 0xF, 0x121, 0x2C100800),  # VBox Intel_Core_i7_6700K.h
    "skylake-x-5.15": (0x7FFEFBBF, 0xD39FFFFB, 0, 0, 0xF, 0x121, 0x2C100000),      # InstLatx64 SkylakeX i9-7900X
    "cascadelake-w-6.8": (0x7FFEFBFF, 0xD39FFFFB, 0x808, 0xBC000400, 0xF, 0x121, 0x2C100000),  # Xeon W-3275
    "icelake-u-6.1": (0x7FFAFBBF, 0xF2BF27EF, 0x40405F4E, 0xBC000410, 0xF, 0x121, 0x2C100000),  # i7-1065G7
}


def _snapshot_features(model: str) -> set[str]:
    return set(json.loads((SNAP / f"{model}.json").read_text())["features"])


def _pool(*names: str) -> list[HostProfile]:
    return [REAL[n] for n in names]


def test_cpuid_blocks_are_the_dumps_values() -> None:
    # The profile's cpuid: lines carry the registers copied above (a transcription check, both ways).
    assert set(DUMPS) == set(REAL)
    for name, (ecx1, ebx7, ecx7, edx7, eax_d1, ecx81, edx81) in DUMPS.items():
        lines = REAL[name].cpuid
        assert lines is not None, name
        assert lines[0].startswith("00000001: ") and lines[0].split(": ")[1].split("-")[2] == f"{ecx1:08X}", name
        assert f"00000007.0: 00000000-{ebx7:08X}-{ecx7:08X}-{edx7:08X}" in lines, name
        sub1 = [x for x in lines if x.startswith("0000000D.1: ")]
        assert (sub1[0].split(": ")[1].split("-")[0] if sub1 else None) == (None if eax_d1 is None else f"{eax_d1:08X}")
        assert f"80000001: 00000000-00000000-{ecx81:08X}-{edx81:08X}" in lines, name


def test_features_read_off_the_bits_by_hand() -> None:
    f = {n: p.cpu_features for n, p in REAL.items()}
    assert all(v is not None for v in f.values())
    # avx512f = CPUID.(7,0):EBX bit 16. i7-6700K 0x029C6FBF & 0x10000 = 0; i9-7900X 0xD39FFFFB & 0x10000 = 0x10000.
    assert "avx512f" not in f["skylake-client-6.3"] and "avx512f" in f["skylake-x-5.15"]  # type: ignore[operator]
    # pku = CPUID.(7,0):ECX bit 3: 0 in the i9-7900X dump, 0x808 & 0x8 on the Xeon W-3275.
    assert "pku" not in f["skylake-x-5.15"] and "pku" in f["cascadelake-w-6.8"]  # type: ignore[operator]
    # hle/rtm = EBX bits 4/11: 0x27AB (Haswell ULT) has neither (0x27AB & 0x810 = 0); 0x021C2FBB has both.
    assert not {"hle", "rtm"} & f["haswell-5.15"] and {"hle", "rtm"} <= f["broadwell-6.1"]  # type: ignore[operator]
    # spec-ctrl = CPUID.(7,0):EDX bit 26: only the 2019 AIDA64 dumps (0xBC000400 & 0x04000000) have it.
    assert {n for n in f if "spec-ctrl" in f[n]} == {"cascadelake-w-6.8", "icelake-u-6.1"}  # type: ignore[operator]
    # xsaveopt = CPUID.(0xD,1):EAX bit 0; absent where the dump has no sub-leaf 1 (Westmere has no XSAVE at all).
    assert {n for n in f if "xsaveopt" not in f[n]} == {"westmere-5.4", "ivybridge-5.10"}  # type: ignore[operator]
    # clwb = EBX bit 24: 0xF2BF27EF (Ice Lake client) & 0x01000000 = 0. avx512vbmi = ECX bit 1: 0x40405F4E & 2.
    assert "clwb" not in f["icelake-u-6.1"] and "avx512vbmi" in f["icelake-u-6.1"]  # type: ignore[operator]
    # syscall = 0x80000001:EDX bit 11: set (0x800) in VBoxCpuReport's 64-bit dumps, clear in AIDA64's; every
    # KVM host is 64-bit, so a CPU with long mode (EDX bit 29: 0x2C100000 & 0x20000000) counts it (long_mode_only).
    assert all("syscall" in v and "lm" in v for v in f.values())  # type: ignore[operator]
    # Never a hypervisor: CPUID.1:ECX bit 31 is clear in every dump above (all < 0x80000000).
    assert all("hypervisor" not in v for v in f.values())  # type: ignore[operator]


def test_a_dump_decodes_to_the_recorded_features() -> None:
    # The recorded cpu_features are what `host import --cpuid-dump` makes of the recorded leaves
    # (scripts/sync-fleet-cpu-features --check guards the same for hand edits).
    for name, p in REAL.items():
        assert p.cpuid is not None
        assert cpuiddump.features(cpuiddump.parse("\n".join(p.cpuid))) == p.cpu_features, name


def test_sync_script_says_a_bad_profile_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    script = Path(__file__).resolve().parent.parent / "scripts" / "sync-fleet-cpu-features"
    loader = importlib.machinery.SourceFileLoader("sync_fleet_cpu_features", str(script))
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))  # type: ignore[arg-type]
    loader.exec_module(mod)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [\n")
    for path, what in ((tmp_path / "missing.yaml", "No such file or directory"), (bad, "invalid YAML")):
        monkeypatch.setattr(sys, "argv", ["sync-fleet-cpu-features", "--check", str(path)])
        assert mod.main() == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}") and what in err and len(err.splitlines()) == 1, err


def test_aida64_and_vbox_formats_parse_by_hand() -> None:
    aida = ("------[ Logical CPU #0 ]------\nCPUID 00000000: 00000016-756E6547-6C65746E-49656E69 [GenuineIntel]\n"
            "CPUID 00000007: 00000000-D39FFFFB-00000000-00000000\n"
            "CPUID 0000000D: 000000FF-00000A80-00000A80-00000000 [SL 00]\n"
            "CPUID 0000000D: 0000000F-00000A00-00000100-00000000 [SL 01]\n"
            "------[ Logical CPU #1 ]------\nCPUID 00000000: 00000016-756E6547-6C65746E-49656E69 [GenuineIntel]\n"
            "CPUID 00000007: 00000000-00000000-00000000-00000000\n")
    assert cpuiddump.parse(aida) == [(0, 0, 0x16, 0x756E6547, 0x6C65746E, 0x49656E69), (7, 0, 0, 0xD39FFFFB, 0, 0),
                                     (0xD, 0, 0xFF, 0xA80, 0xA80, 0), (0xD, 1, 0xF, 0xA00, 0x100, 0)]
    # An older AIDA64 dump repeats leaf 0xD without sub-leaf labels: the repeat's sub-leaf is unknown, dropped.
    old = "CPUID 0000000D: 00000007-00000340-00000340-00000000\nCPUID 0000000D: 00000100-00000240-00000000-00000000\n"
    assert cpuiddump.parse(old) == [(0xD, 0, 7, 0x340, 0x340, 0)]
    vbox = "    { 0x0000000d, 0x00000001, UINT32_MAX, 0x0000000f, 0x000003c0, 0x00000100, 0x00000000, 0 },\n"
    assert cpuiddump.parse(vbox) == [(0xD, 1, 0xF, 0x3C0, 0x100, 0)]


# --model auto, worked out from the snapshot's feature lists (KVM-emulated x2apic/tsc-deadline/hypervisor/arat/
# arch-capabilities, vmx, and the MSR-word features do not count):
#  - every SapphireRapids/Cooperlake/Icelake-Server/Cascadelake-Server/Skylake-Server model needs avx512f and pku;
#    Cascadelake-Server-v5 = v1 features + xsaves - hle - rtm, v1 also needs avx512vnni, spec-ctrl, ssbd, clwb;
#    Icelake-Server-v1.. also need clwb, la57, wbnoinvd, avx512vbmi2; Cooperlake needs avx512-bf16.
#  - Skylake-Client-v1: Broadwell-v1's + xgetbv1, xsavec; -v2 adds spec-ctrl; -v3 drops hle, rtm; -v4 adds xsaves.
#  - Broadwell-v1: Haswell-v1's + 3dnowprefetch, adx, rdseed, smap; -v2 drops hle, rtm; -v3 = v1 + spec-ctrl;
#    -v4 = v3 - hle - rtm. Haswell-v1..v4 likewise over IvyBridge's + abm, avx2, bmi1, bmi2, fma, hle, invpcid,
#    movbe, pcid, rtm. IvyBridge-v1 = SandyBridge-v1 + erms, f16c, fsgsbase, rdrand, smep; SandyBridge-v1 =
#    Westmere-v1 + avx, rdtscp, xsave, xsaveopt; every -v2 of these three adds spec-ctrl.
AUTO = {
    # 0x029C6FBF: no avx512f; EDX 0: no spec-ctrl, so not Skylake-Client-v2..v4; hle+rtm+xsavec(0xF bit 1): v1.
    ("skylake-client-6.3",): "Skylake-Client-v1",
    # avx512f but no pku (ECX 0): no server model; no spec-ctrl: Skylake-Client-v1 (hle, rtm set).
    ("skylake-x-5.15",): "Skylake-Client-v1",
    # Everything Cascadelake-Server-v5 asks: avx512vnni (ECX 0x808 bit 11), pku, clwb, spec-ctrl, ssbd (EDX bit 31),
    # xsaves (0xF bit 3); Cooperlake needs avx512-bf16 (7.1 not in the dump), Icelake-Server avx512vbmi.
    ("cascadelake-w-6.8",): "Cascadelake-Server-v5",
    # No clwb/la57 (no Icelake/Cascadelake/Skylake-Server); spec-ctrl and xsaves, no hle/rtm: Skylake-Client-v4.
    ("icelake-u-6.1",): "Skylake-Client-v4",
    # 0xD.1 EAX 1: no xsavec, so no Skylake-Client; no spec-ctrl: not Broadwell-v3/v4; Broadwell-v2 (noTSX).
    ("broadwell-6.1",): "Broadwell-v2",
    # 0x80000001:ECX 0x21 has no 3dnowprefetch (bit 8): no Broadwell; no hle/rtm, no spec-ctrl: Haswell-v2.
    ("haswell-5.15",): "Haswell-v2",
    # 0x1FBAE3BF: avx (bit 28), no f16c/rdrand (29/30), EBX7 0: no IvyBridge; xsaveopt: SandyBridge-v1.
    ("sandybridge-5.4",): "SandyBridge-v1",
    ("sandybridge-e-5.15",): "SandyBridge-v1",
    # xsaveopt not in the dump (no 0xD.1): neither IvyBridge nor SandyBridge; aes, pclmulqdq, popcnt: Westmere-v1.
    ("ivybridge-5.10",): "Westmere-v1",
    ("westmere-5.4",): "Westmere-v1",
    # Pools: the newest model all have. Skylake-client + broadwell + haswell: the Haswell box decides (Haswell-v2).
    ("skylake-client-6.3", "broadwell-6.1", "haswell-5.15"): "Haswell-v2",
    # Xeon W + i9-7900X: the i9's missing pku and spec-ctrl: Skylake-Client-v1 (both have hle, rtm, xsavec).
    ("cascadelake-w-6.8", "skylake-x-5.15"): "Skylake-Client-v1",
    # Xeon W + Ice Lake client: no clwb on the client, both have spec-ctrl and xsaves: Skylake-Client-v4.
    ("cascadelake-w-6.8", "icelake-u-6.1"): "Skylake-Client-v4",
    # The whole real fleet: the Westmere box (no AVX) and the Ivy Bridge dump: Westmere-v1.
    tuple(sorted(DUMPS)): "Westmere-v1",
}


@pytest.mark.parametrize("pool", sorted(AUTO), ids=lambda p: "+".join(p))
def test_model_auto_picks_the_hand_worked_model(pool: tuple[str, ...]) -> None:
    neg = negotiate("auto", _pool(*pool))
    assert neg.ok, neg.error
    want = AUTO[pool]
    assert neg.model.base == want and cpu_string(neg).startswith(want + ","), cpu_string(neg)
    # The picked model's features (snapshot) minus the ones KVM gives every guest are on every host.
    need = _snapshot_features(want) - {"vmx", "x2apic", "tsc-deadline", "hypervisor", "arat", "arch-capabilities"}
    for host in _pool(*pool):
        assert need - host.cpu_features <= {"rdctl-no", "ibrs-all", "skip-l1dfl-vmentry", "mds-no",  # type: ignore
                                            "pschange-mc-no", "taa-no", "ssb-no", "rsba", "tsx-ctrl"}, host.name
    assert not any("not checked" in n for n in neg.notes), neg.notes


def test_design_all_picks_auto_once_and_answers_as_each_design_alone(capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """--model auto with --design all checks the QEMU models' CPUID once (it is the same pool), and each
    design's answer is the one a run of that design alone gives (which picks for itself)."""
    calls: list[int] = []

    def counting(*a: object, **k: object) -> str | None:
        calls.append(1)
        return newest_runnable(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr("qemu_evmcs.policy.negotiate.newest_runnable", counting)
    run = cli_runner(capsys, monkeypatch, ["negotiate"])
    pool = ["sandybridge-e-5.15", "broadwell-6.1", "skylake-client-6.3"]
    rc, out, _ = run("negotiate", "--model", "auto", "--hosts", *pool, "--design", "all", "--json")
    assert rc == 0 and len(calls) == 1
    together = json.loads(out)["designs"]
    assert sorted(together) == ["revision", "shipped", "vmx-msrs"]
    for design, answer in together.items():
        rc, out, _ = run("negotiate", "--model", "auto", "--hosts", *pool, "--design", design, "--json")
        alone = json.loads(out)
        assert rc == 0 and {k: alone[k] for k in answer} == answer, design
    assert len(calls) == 4


def test_server_models_are_refused_on_the_client_cpus() -> None:
    # The report: Skylake-Server-v5 on an i7-6700K. Its snapshot features include avx512f (bit 16 of
    # 0x029C6FBF is clear) and pku: negotiate names the host and the missing features instead of printing it.
    assert {"avx512f", "pku"} <= _snapshot_features("Skylake-Server-v5")
    neg = negotiate("Skylake-Server-evmcs", _pool("skylake-client-6.3", "cascadelake-w-6.8"))
    assert not neg.ok and "skylake-client-6.3 lacks" in neg.error and "avx512f" in neg.error
    assert "cascadelake-w-6.8 lacks" not in neg.error
    neg = negotiate("Icelake-Server-evmcs", _pool("icelake-u-6.1"))
    assert not neg.ok and "icelake-u-6.1 lacks" in neg.error and "clwb" in neg.error and "la57" in neg.error


def test_no_unchecked_note_for_real_pools_in_baseline_and_validate(capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run = cli_runner(capsys, monkeypatch, ["baseline", "validate"])
    fleet = bundled_fleet_dir()
    hosts = [os.path.join(fleet, f"{n}.yaml") for n in ("broadwell-6.1", "haswell-5.15")]
    rc, out, err = run("baseline", "--model", "Haswell-v2", *hosts)
    assert rc == 0 and "not checked" not in out + err, (rc, err)
    # validate --hosts: Icelake-Server-v6 does not start on the Ice Lake client: 0xF2BF27EF has no clwb (bit 24),
    # 0x40405F4E no la57 (ECX bit 16), 0x80000008:EBX 0 no wbnoinvd (bit 9).
    model = os.path.join(os.path.dirname(fleet), "..", "cpu_models", "Icelake-Server-evmcs.yaml")
    rc, out, err = run("validate", model, "--hosts", hosts[0], os.path.join(fleet, "icelake-u-6.1.yaml"))
    assert "not checked" not in out + err, out
    line = next(x for x in out.splitlines() if "icelake-u-6.1" in x)
    assert "does not start" in line and line.endswith("lack: clwb, la57, wbnoinvd (QEMU refuses with enforce=on; "
                                                      "without it the guest silently loses them)"), line


def test_host_import_cpuid_dump(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    # An AIDA64 dump of the i9-7900X (InstLatx64 GenuineIntel0050654_SkylakeX_CPUID.txt, leaves 1, 7 and 0xD.1 of
    # "Logical CPU #0") added to a profile: avx512f (EBX 0xD39FFFFB bit 16), xsaves (0xD.1 EAX 0xF bit 3), no pku.
    run = cli_runner(capsys, monkeypatch, ["host"])
    dump = tmp_path / "dump.txt"
    dump.write_text("CPUID 00000001: 00050654-00200800-7FFEFBBF-BFEBFBFF\n"
                    "CPUID 00000007: 00000000-D39FFFFB-00000000-00000000\n"
                    "CPUID 0000000D: 0000000F-00000A00-00000100-00000000 [SL 01]\n")
    rc, out, err = run("host", "import", "--update", os.path.join(bundled_fleet_dir(), "westmere-5.4.yaml"),
                       "--cpuid-dump", str(dump))
    assert rc == 0, err
    doc = yaml.safe_load(out)
    assert {"avx512f", "xsaves", "avx2"} <= set(doc["cpu_features"]) and "pku" not in doc["cpu_features"]
    assert doc["cpuid"] == ["00000001: 00050654-00200800-7FFEFBBF-BFEBFBFF",
                            "00000007.0: 00000000-D39FFFFB-00000000-00000000",
                            "0000000D.1: 0000000F-00000A00-00000100-00000000"]
    dump.write_text("no leaves here\n")
    rc, out, err = run("host", "import", "--update", os.path.join(bundled_fleet_dir(), "westmere-5.4.yaml"),
                       "--cpuid-dump", str(dump))
    assert rc == 2 and out == "" and err.startswith(f"error: {dump}: no CPUID leaf found"), err
