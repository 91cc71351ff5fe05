"""``negotiate --format libvirt [--merge DOMAIN.xml] [--libvirt-version X.Y]`` without a daemon: what is kept,
what is replaced, bad input. The real libvirt checks are in tests/test_libvirt_session.py."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cli_helpers import Run, cli_runner

from host_helpers import host_profiles
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.output.libvirt import QEMU_NS, merge_domain
from qemu_evmcs.policy.negotiate import negotiate
from qemu_evmcs.qemu.libvirt_cpumap import load_cpu_map

MODEL = "Skylake-Server-evmcs"
DOMAIN = """<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <!-- keep me -->
  <name>win11</name>
  <memory unit='GiB'>8</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type><loader readonly='yes' type='pflash'>/x/OVMF_CODE.fd</loader></os>
  <features><acpi/><apic/><smm state='on'/><hyperv mode='custom'>
    <relaxed state='on'/><spinlocks state='on' retries='8191'/></hyperv></features>
  <cpu mode='host-passthrough'><topology sockets='1' dies='1' cores='4' threads='2'/></cpu>
  <clock offset='localtime'><timer name='hypervclock' present='no'/><timer name='rtc' tickpolicy='catchup'/></clock>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><source file='/x/w.qcow2'/><target dev='vda'/></disk></devices>
  <qemu:commandline><qemu:arg value='-global'/>
    <qemu:arg value='Skylake-Server-noTSX-IBRS-x86_64-cpu.vmx-pml=on'/>
    <qemu:arg value='-smbios'/><qemu:arg value='type=0'/></qemu:commandline>
</domain>
"""


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    return cli_runner(capsys, monkeypatch, ["negotiate"])


def _merged() -> ET.Element:
    neg = negotiate(MODEL, host_profiles("skylake-5.10", "skylake-6.3"), "pv-cpuid")
    return ET.fromstring(merge_domain(DOMAIN, neg, cmap=load_cpu_map("9.0")))


def test_merge_keeps_the_domain_and_replaces_cpu_and_hyperv() -> None:
    root = _merged()
    assert root.get("type") == "kvm" and root.findtext("name") == "win11"
    assert root.find("os/loader") is not None and root.find("devices/disk/source") is not None
    feats = [c.tag for c in root.find("features")]  # type: ignore[union-attr]
    assert feats[:3] == ["acpi", "apic", "smm"] and "hyperv" in feats
    # <hyperv> is ours now (spinlocks was not negotiated), <cpu> too but with the user's topology.
    hv = root.find("features/hyperv")
    assert hv is not None and hv.find("evmcs") is not None and hv.find("spinlocks") is None
    cpu = root.find("cpu")
    assert cpu is not None and cpu.get("mode") == "custom" and cpu.findtext("model") == "Skylake-Server-noTSX-IBRS"
    assert cpu.find("topology") is not None and cpu.find("topology").get("cores") == "4"  # type: ignore[union-attr]
    # The clock keeps its offset and rtc timer; hypervclock is switched on, once.
    clock = root.find("clock")
    assert clock is not None and clock.get("offset") == "localtime"
    timers = {t.get("name"): t.get("present") for t in clock.findall("timer")}
    assert timers == {"rtc": None, "hypervclock": "yes"}
    assert [p.get("model") for p in root.findall("devices/panic")] == ["hyperv"]
    # Our earlier -global for the same property is replaced; the user's other arguments stay.
    args = [a.get("value") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    assert "Skylake-Server-noTSX-IBRS-x86_64-cpu.vmx-pml=on" not in args
    assert "Skylake-Server-noTSX-IBRS-x86_64-cpu.vmx-pml=off" in args
    assert args[:2] == ["-smbios", "type=0"]


def test_merge_is_idempotent() -> None:
    neg = negotiate(MODEL, host_profiles("skylake-5.10", "skylake-6.3"), "pv-cpuid")
    cmap = load_cpu_map("9.0")
    once = merge_domain(DOMAIN, neg, cmap=cmap)
    assert merge_domain(once, neg, cmap=cmap) == once
    assert "keep me" in once


def test_merge_cli_and_bad_input(run: Run, tmp_path: Path) -> None:
    dom = tmp_path / "d.xml"
    dom.write_text(DOMAIN)
    rc, out, err = run("negotiate", "--model", MODEL, "--hosts", "skylake-6.3", "--format", "libvirt",
                       "--libvirt-version", "9.0", "--merge", str(dom))
    assert rc == 0 and out.startswith("<domain") and "keep me" in out, err
    dom.write_text("<domain>\n<name>x</name>\n<cpu>\n</domain>\n")
    rc, out, err = run("negotiate", "--model", MODEL, "--hosts", "skylake-6.3", "--format", "libvirt",
                       "--merge", str(dom))
    assert rc == 2 and out == "" and err.startswith(f"error: {dom}:4: not well-formed XML")
    rc, _, err = run("negotiate", "--model", MODEL, "--hosts", "skylake-6.3", "--merge", str(dom))
    assert rc == 2 and "need --format libvirt" in err


@pytest.mark.parametrize("version", ["9.0", "9.5"])
def test_libvirt_9_gets_no_vmx_feature_names(version: str) -> None:
    """libvirt 9.0's cpu_map has no vmx-* feature (read from Debian 12's libvirt0 9.0.0); 9.5 is between 9.0 and
    9.10, the first release known to have them, so it gets the 9.0 names (never a name a libvirt may refuse)."""
    cmap = load_cpu_map(version)
    assert cmap.vmx_names() == frozenset()
    assert load_cpu_map("9.10").feature("vmx-posted-intr") == "vmx-posted-intr"
    assert cmap.feature("pclmulqdq") == "pclmuldq" and cmap.feature("lahf-lm") == "lahf_lm"


def test_merge_refuses_a_doctype_like_the_capabilities_reader() -> None:
    # Found by the verifier: `<!DOCTYPE d [<!ENTITY a "b">]>` was accepted, its entities expanded into the
    # domain and the DOCTYPE dropped from the output (not "everything else kept"); `host import --libvirt`
    # refuses any DOCTYPE/ENTITY declaration (libvirt never writes one), and so does --merge now.
    neg = negotiate(MODEL, host_profiles("skylake-5.10"), "pv-cpuid")
    text = '<!DOCTYPE domain [<!ENTITY a "evil">]><domain type="kvm"><name>&a;</name></domain>'
    with pytest.raises(InputError) as err:
        merge_domain(text, neg, source="d.xml", cmap=load_cpu_map("9.0"))
    assert "DOCTYPE" in err.value.message and err.value.file == "d.xml"
