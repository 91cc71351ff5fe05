"""``qemu-evmcs guest-msrs``: JSON contract, text table, options, golden files and every bad-input class."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from collections.abc import Callable

import pytest
from cli_helpers import Run, cli_runner

from qemu_evmcs.core.registry import registry


CORE = Path(__file__).resolve().parent / "data" / "core"
@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """cli.run with only this file's commands registered (a broken module elsewhere cannot break these tests)."""
    return cli_runner(capsys, monkeypatch, ["guest_msrs", "explain"])


def core(name: str) -> str:
    return str(CORE / name)


# ---- JSON contract --------------------------------------------------------------------------------------------

def test_json_is_exactly_one_object_in_index_order(run: Run) -> None:
    rc, out, err = run("guest-msrs", "--host", core("skylake.yaml"), "--json")
    assert (rc, err) == (0, "")
    doc = json.loads(out)
    assert list(doc) == ["host", "kernel", "era", "evmcs", "pv_perf_global_ctrl", "design", "msrs", "host_msrs",
                         "emulated", "removed", "notes"]
    assert doc["host"] == "core-skylake" and doc["kernel"] == "6.3" and doc["era"] == "6.3+"
    assert doc["evmcs"] is True and doc["pv_perf_global_ctrl"] is False
    assert list(doc["msrs"]) == [n for n in registry().msr_names() if n != "IA32_VMX_PROCBASED_CTLS3"]
    assert all(re.fullmatch(r"0x[0-9a-f]{16}", v) for v in doc["msrs"].values())
    assert out.endswith("}\n") and out.count("\n}") == 1
    # the worked example of vmx-dumps.md, then without the bits QEMU never writes (no property: 2nd 19, exit 24,
    # entry 17; issue 13): 2nd 0x1998fe & ~0x80000 = 0x1198fe, exit 0x1bfefff & ~0x1000000 = 0xbfefff,
    # entry 0x3d3ff & ~0x20000 = 0x1d3ff
    assert doc["msrs"]["IA32_VMX_TRUE_PINBASED_CTLS"] == "0x0000003f00000016"
    assert doc["msrs"]["IA32_VMX_PROCBASED_CTLS2"] == "0x001198fe00000000"
    assert doc["msrs"]["IA32_VMX_EXIT_CTLS"] == "0x00bfefff00036dff"
    assert doc["msrs"]["IA32_VMX_TRUE_ENTRY_CTLS"] == "0x0001d3ff000011fb"
    # What the text table shows besides (issue 13): the host value and the removed features with their layer.
    # 0x7f -> 0x3f in the allowed-1 half of TRUE_PINBASED is control bit 6, the VMX-preemption timer.
    assert doc["host_msrs"]["IA32_VMX_TRUE_PINBASED_CTLS"] == "0x0000007f00000016"
    assert doc["removed"]["IA32_VMX_TRUE_PINBASED_CTLS"] == [
        {"feature": "vmx-preemption-timer", "bit": 6, "layer": "evmcs-filter"}]
    # BASIC 0x00da040000000004 has bit 49 (dual monitor) set; QEMU copies only revision, size and memory type
    assert doc["removed"]["IA32_VMX_BASIC"] == [{"feature": "vmx-basic-dual-monitor", "bit": 49, "layer": "qemu"}]
    assert doc["msrs"]["IA32_VMX_BASIC"] == "0x00d8040000000004" and doc["design"] == "shipped" and doc["notes"]
    assert doc["msrs"]["IA32_VMX_VMFUNC"] == "0x0000000000000000"


def test_options_change_the_answer(run: Run) -> None:
    def msrs(*extra: str) -> dict[str, str]:
        rc, out, _ = run("guest-msrs", "--host", core("skylake.yaml"), "--json", *extra)
        assert rc == 0
        return dict(json.loads(out)["msrs"])
    # each without the bits no QEMU property controls: exit 24 (0x1bfffff -> 0xbfffff, 0x1ffffff -> 0xffffff);
    # on 5.10 (the filter clears only 2nd bit 0) also 2nd 18 (EPT-violation #VE) and 19: 0x1ffcfe & ~0xc0000 = 0x13fcfe
    assert msrs("--pv-perf-global-ctrl")["IA32_VMX_EXIT_CTLS"] == "0x00bfffff00036dff"
    assert msrs("--no-evmcs")["IA32_VMX_EXIT_CTLS"] == "0x00ffffff00036dff"
    assert msrs("--kernel", "5.10")["IA32_VMX_PROCBASED_CTLS2"] == "0x0013fcfe00000000"
    rc, out, _ = run("guest-msrs", "--host", core("skylake.yaml"), "--json", "--kernel", "5.4.0-150-generic")
    assert json.loads(out)["kernel"] == "5.4.0-150-generic" and json.loads(out)["era"] == "4.20-5.5+7a601e2cf615"


def test_not_emulated_msr_reads_as_zero_and_variants(run: Run) -> None:
    rc, out, _ = run("guest-msrs", "--host", core("synthetic-full.yaml"), "--json")
    doc = json.loads(out)
    assert list(doc["msrs"])[-1] == "IA32_VMX_PROCBASED_CTLS3"
    assert doc["msrs"]["IA32_VMX_PROCBASED_CTLS3"] == "0x0000000000000000"
    # the 6.3 allow-list 0xc51998fe without the secondary bits QEMU never writes (no property: 31 notify-vm-exiting,
    # 30 bus-lock-detect, 24 pt-use-gpa, 19 pt-conceal-vmx = 0xc1080000): 0x041198fe
    assert doc["msrs"]["IA32_VMX_PROCBASED_CTLS2"] == "0x041198fe00000000"
    rc, out, _ = run("guest-msrs", "--host", core("synthetic-full.yaml"), "--json", "--variant", "revision")
    assert json.loads(out)["msrs"]["IA32_VMX_PROCBASED_CTLS2"] == "0x061198fe00000000"  # TSC scaling (bit 25) exposed
    rc, out, _ = run("guest-msrs", "--host", core("synthetic-full.yaml"), "--json", "--variant", "vmx-msrs")
    # 0x03bfffff without exit bit 24 (pt-conceal-pip): 0x02bfffff
    assert json.loads(out)["msrs"]["IA32_VMX_TRUE_EXIT_CTLS"] == "0x02bfffff00036dfb"  # PERF exposed


def test_text_table(run: Run) -> None:
    rc, out, err = run("guest-msrs", "--host", core("synthetic-full.yaml"))
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("host core-synthetic-full")
    assert re.match(r"MSR +index +host value +guest value +removed features$", lines[3])
    row = next(line for line in lines if line.startswith("IA32_VMX_PINBASED_CTLS *"))
    assert "0x000000ff00000016  0x0000003f00000016  vmx-preemption-timer, vmx-posted-intr" in row
    row = next(line for line in lines if line.startswith("IA32_VMX_EXIT_CTLS *"))
    assert "vmx-exit-load-perf-global-ctrl (perf-cpuid-gate)" in row and "bit 26" in row  # unnamed bit shown
    row = next(line for line in lines if line.startswith("IA32_VMX_PROCBASED_CTLS3"))
    assert "not emulated" in row and "vmx-ipi-virt (not-emulated)" in row
    assert "MSRs read differently by the guest" in out
    assert "QEMU never sets it" in out


def test_text_says_pre57_filters_host_reads_too(run: Run) -> None:
    rc, out, _ = run("guest-msrs", "--host", core("skylake.yaml"), "--kernel", "5.4")
    assert rc == 0
    assert "sanitizes at enable time" in out and "host reads (KVM_GET_MSRS) are filtered too" in out


def test_host_accepts_a_bundled_sample_name(run: Run) -> None:
    rc, out, _ = run("guest-msrs", "--host", "skylake-6.3", "--json")
    assert rc == 0 and json.loads(out)["host"] == "skylake-6.3"


def test_real_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "qemu_evmcs", "guest-msrs", "--host", core("amd.yaml")],
                          capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stderr) == (1, "")
    assert proc.stdout.startswith("no-evmcs: core-amd: eVMCS cannot be enabled")


# ---- golden files -------------------------------------------------------------------------------------------

GOLDEN_CASES = [
    ("synthetic-full", [core("synthetic-full.yaml")]),
    ("synthetic-full-6.1-perf", [core("synthetic-full.yaml"), "--kernel", "6.1", "--pv-perf-global-ctrl"]),
    ("skylake-cpu", [core("skylake-cpu.yaml")]),
    ("skylake-5.4", [core("skylake.yaml"), "--kernel", "5.4"]),
]
BUNDLED_CASES = [
    ("skylake-6.3", ["skylake-6.3"]),
    ("skylake-6.3-perf", ["skylake-6.3", "--pv-perf-global-ctrl"]),
    ("skylake-6.3-no-evmcs", ["skylake-6.3", "--no-evmcs"]),
    ("skylake-5.10", ["skylake-5.10"]),
    ("cascadelake-5.4", ["cascadelake-5.4"]),
    ("icelake-5.15", ["icelake-5.15"]),
    ("icelake-6.1-revision", ["icelake-6.1", "--variant", "revision"]),
    ("sapphirerapids-6.6", ["sapphirerapids-6.6"]),
]


@pytest.mark.parametrize("name, args", GOLDEN_CASES + BUNDLED_CASES, ids=[c[0] for c in GOLDEN_CASES + BUNDLED_CASES])
@pytest.mark.parametrize("command", ["guest-msrs", "explain"])
def test_golden_json(run: Run, golden: Callable[[str, str], None], command: str, name: str, args: list[str]) -> None:
    rc, out, err = run(command, "--host", *args, "--json")
    assert (rc, err) == (0, "")
    golden(f"core/{command}--{name}.json", out)


# ---- bad input: exactly one error line, exit 2; negative answers: one line, exit 1 ----------------------------

KERNEL_HINT = '(expected e.g. "5.15", "6.1.55", "6.8.0-45-generic")'
BAD_INPUT = [
    (["--host", core("missing.yaml")], f"error: {core('missing.yaml')}: No such file or directory"),
    (["--host", str(CORE)], f"error: {CORE}: is a directory, expected a file"),
    (["--host", core("bad-yaml.yaml")],
     f"error: {core('bad-yaml.yaml')}:2: invalid YAML: expected ',' or ']', but got ':'"),
    (["--host", core("empty.yaml")], f"error: {core('empty.yaml')}: expected one YAML document, found 0"),
    # line 6 of two-docs.yaml is the first line after its "---": where the second document starts
    (["--host", core("two-docs.yaml")],
     f"error: {core('two-docs.yaml')}:6: expected one YAML document, found more (a second one starts here)"),
    (["--host", core("unknown-key.yaml")],
     f"error: {core('unknown-key.yaml')}:5: colour: unknown key 'colour' (known: cpu_features, cpu_msrs, cpuid, "
     "family, kernel, kernel_version, kvm_hyperv, model, model_name, msrs, name, nested, notes, provenance, stepping, "
     "synthetic, unknown_msrs, vendor)"),
    (["--host", core("bad-msr-name.yaml")],
     f"error: {core('bad-msr-name.yaml')}:5: msrs.IA32_VMX_PINBASED_CTL: unknown MSR name "
     "'IA32_VMX_PINBASED_CTL' (did you mean IA32_VMX_PINBASED_CTLS?)"),
    (["--host", core("bad-value.yaml")],
     f"error: {core('bad-value.yaml')}:5: msrs.IA32_VMX_VMFUNC: MSR value '0xzz' is not a hex number"),
    (["--host", core("inconsistent.yaml")],
     f"error: {core('inconsistent.yaml')}:5: msrs.IA32_VMX_PINBASED_CTLS: allowed-0 bit 6 is set but allowed-1 "
     "bit 38 is clear (a control cannot be both required and unsupported)"),
    (["--host", core("bad-kernel.yaml")],
     f"error: {core('bad-kernel.yaml')}:3: kernel: unparsable kernel release 'banana' {KERNEL_HINT}"),
    (["--host", core("skylake.yaml"), "--kernel", "six"],
     f"error: --kernel: unparsable kernel release 'six' {KERNEL_HINT}"),
]


@pytest.mark.parametrize("argv, line", BAD_INPUT, ids=[str(i) for i in range(len(BAD_INPUT))])
@pytest.mark.parametrize("command", ["guest-msrs", "explain"])
def test_bad_input_is_one_line_exit_2(run: Run, command: str, argv: list[str], line: str) -> None:
    rc, out, err = run(command, *argv)
    assert (rc, out, err) == (2, "", line + "\n")


@pytest.mark.parametrize("argv, prefix", [
    (["--host", core("skylake.yaml"), "--variant", "best"],
     "error: qemu-evmcs guest-msrs: argument --design/--strategy/--variant: invalid choice: "),
    ([], "error: qemu-evmcs guest-msrs: the following arguments are required: --host"),
    (["--host", core("skylake.yaml"), "--frobnicate"], "error: qemu-evmcs: unrecognized arguments: --frobnicate"),
])
def test_usage_errors_exit_2(run: Run, argv: list[str], prefix: str) -> None:
    rc, out, err = run("guest-msrs", *argv)
    assert rc == 2 and out == "" and err.startswith(prefix) and err.count("\n") == 1


#: A host that cannot answer is a negative answer, not bad input: a verdict line on stdout (``VERDICT: HOST: why``,
#: like negotiate's ``no safe answer:`` and migrate-check's ``blocked:``), nothing on stderr, exit 1 (issue 13).
#: HOST is the profile's ``name:`` (tests/data/core/*.yaml: core-amd, ...), not its file.
NEGATIVE = [
    ([core("amd.yaml")], "no-evmcs: core-amd: eVMCS cannot be enabled on this host: AuthenticAMD has no "
                         "enable_evmcs hook (eVMCS is Intel VMX only)"),
    ([core("nested-off.yaml")],
     "no-evmcs: core-nested-off: eVMCS cannot be enabled on this host: kvm_intel.nested=0 on kernel 6.1.55, "
     "so KVM_ENABLE_CAP(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) returns version range 0x0000 and QEMU's hv-evmcs needs "
     "version 1"),
    ([core("nested-off.yaml"), "--kernel", "5.4"],
     "no-evmcs: core-nested-off: eVMCS cannot be enabled on this host: kvm_intel.nested=0 on kernel 5.4"),
    ([core("kvm-hyperv-n.yaml")], "no-evmcs: core-kvm-hyperv-n: eVMCS cannot be enabled on this host: "
                                  "kernel 6.8.0-45-generic is built with CONFIG_KVM_HYPERV=n"),
    ([core("skylake.yaml"), "--kernel", "4.19"], "no-evmcs: core-skylake: eVMCS cannot be enabled on this "
                                                 "host: kernel 4.19 predates KVM_CAP_HYPERV_ENLIGHTENED_VMCS"),
    ([core("amd.yaml"), "--no-evmcs"],
     "no-vmx: core-amd: an L1 guest reads no VMX MSRs on this host: AuthenticAMD has no Intel VMX"),
    ([core("nested-off.yaml"), "--no-evmcs"],
     "no-vmx: core-nested-off: an L1 guest reads no VMX MSRs on this host: kvm_intel.nested=0"),
]


@pytest.mark.parametrize("argv, line", NEGATIVE, ids=[str(i) for i in range(len(NEGATIVE))])
@pytest.mark.parametrize("command", ["guest-msrs", "explain"])
def test_negative_answer_is_one_verdict_line_exit_1(run: Run, command: str, argv: list[str], line: str) -> None:
    rc, out, err = run(command, "--host", *argv)
    assert (rc, out, err) == (1, line + "\n", "")


@pytest.mark.parametrize("command", ["guest-msrs", "explain"])
def test_negative_answer_json_carries_the_verdict(run: Run, command: str) -> None:
    """--json: the verdict as one JSON object (docs/json.md "verdict"), nothing on stderr, exit 1."""
    rc, out, err = run(command, "--host", "epyc-amd-6.6", "--json")
    assert (rc, err) == (1, "")
    assert json.loads(out) == {
        "ok": False, "verdict": "no-evmcs", "host": "epyc-amd-6.6", "layer": "cpu",
        "reason": "eVMCS cannot be enabled on this host: AuthenticAMD has no enable_evmcs hook (eVMCS is Intel "
                  "VMX only)"}


def test_no_evmcs_on_a_pre_420_kernel_still_answers(run: Run) -> None:
    rc, out, _ = run("guest-msrs", "--host", core("skylake.yaml"), "--kernel", "4.19", "--no-evmcs", "--json")
    assert rc == 0 and json.loads(out)["msrs"]["IA32_VMX_VMFUNC"] == "0x0000000000000001"
