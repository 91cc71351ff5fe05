"""The simulator's QEMU command-line subset and ``-cpu`` parsing (x86_cpu_parse_featurestr semantics)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qemu_evmcs.qemu.cpuspec import CpuSpec, QemuError
from qemu_evmcs.qemu.cpuspec import parse_cpu as parse_cpu_option
from qemu_evmcs.simqemu.cmdline import QmpAddress, parse_args, split_opts, strip_program


def test_cpu_option_forms() -> None:
    spec = parse_cpu_option("host,hv_evmcs=on,hv-vapic,+vmx,-vmx_posted_intr,vmx-ept=off,hv-spinlocks=0x1fff")
    assert spec.model == "host"
    assert spec.props == (("hv-evmcs", "on"), ("hv-vapic", "on"), ("vmx-ept", "off"), ("hv-spinlocks", "0x1fff"))
    assert spec.plus == ("vmx",)
    assert spec.minus == ("vmx-posted-intr",)
    assert spec.warnings == ()


def test_cpu_option_model_only_and_no_comma_escape() -> None:
    assert parse_cpu_option("Skylake-Server-v5") == CpuSpec(model="Skylake-Server-v5")
    # strtok(","): "a,,b" is two items, as in QEMU's x86_cpu_parse_featurestr().
    assert parse_cpu_option("host,model-id=a,,b").props == (("model-id", "a"), ("b", "on"))


def test_cpu_option_ambiguity_warning() -> None:
    spec = parse_cpu_option("host,+vmx,vmx=off")
    assert spec.warnings[0] == ('qemu-system-x86_64: warning: Ambiguous CPU model string. '
                                'Don\'t mix both "+vmx" and "vmx=off"')
    assert "Compatibility of ambiguous CPU model strings" in spec.warnings[-1]


def test_full_command_line() -> None:
    cfg = parse_args(["-machine", "q35,accel=kvm", "-cpu", "host,hv-evmcs=on", "-smp", "4", "-S",
                      "-qmp", "unix:/tmp/a.sock,server=on,wait=off", "-qmp", "unix:/tmp/b.sock,server,nowait",
                      "-display", "none", "-nodefaults", "-incoming", "defer", "-name", "guest=vm1,debug-threads=on",
                      "-m", "1G", "-nographic", "-no-user-config", "--host", "skylake-6.3", "--variant", "revision"])
    assert cfg.accel == "kvm" and cfg.machine == "q35" and cfg.smp == 4 and cfg.start_paused
    assert cfg.qmp == [QmpAddress(kind="unix", path="/tmp/a.sock", wait=False),
                       QmpAddress(kind="unix", path="/tmp/b.sock", wait=False)]
    assert cfg.incoming == "defer" and cfg.name == "vm1" and cfg.memory == "1G"
    assert cfg.host == "skylake-6.3" and cfg.variant == "revision"
    assert cfg.nodefaults and cfg.nographic and cfg.no_user_config and cfg.display == "none"


def test_accel_spellings() -> None:
    assert parse_args([]).accel == "tcg"  # QEMU's default for qemu-system-x86_64
    assert parse_args(["-accel", "kvm"]).accel == "kvm"
    assert parse_args(["--accel", "kvm"]).accel == "kvm"
    assert parse_args(["-enable-kvm"]).accel == "kvm"
    assert parse_args(["-machine", "accel=kvm:tcg"]).accel == "kvm"
    assert parse_args(["-accel", "tcg"]).accel == "tcg"
    assert parse_args(["--host=x.yaml"]).host == "x.yaml"


def test_smp_forms() -> None:
    assert parse_args(["-smp", "cpus=3,sockets=1"]).smp == 3
    assert parse_args(["-smp", "sockets=2,cores=2,threads=2"]).smp == 8


@pytest.mark.parametrize("argv, message", [
    (["-foo"], "-foo: invalid option"),
    (["--bogus"], "--bogus: invalid option"),
    (["-cpu"], "-cpu: requires an argument"),
    (["-accel", "hvf"], "-accel: invalid accelerator hvf"),
    (["-smp", "x"], "-smp x: Parameter 'cpus' expects a number"),
    (["-qmp", "unix:/tmp/x"], "-qmp unix:/tmp/x: the simulator only supports listening monitors"),
    (["-qmp", "unix:/tmp/x,server=maybe"], "-qmp: Parameter 'server' expects 'on' or 'off'"),
    (["--variant", "other"], "--variant other: unknown KVM ABI design"),
    (["-machine", "sparc"], "unsupported machine type"),
])
def test_errors(argv: list[str], message: str) -> None:
    with pytest.raises(QemuError) as info:
        parse_args(argv)
    assert info.value.message.startswith(message)
    assert info.value.status == 1
    assert info.value.lines()[0] == f"qemu-system-x86_64: {info.value.message}"


def test_strip_program() -> None:
    assert strip_program(["/usr/bin/qemu-system-x86_64", "-S"]) == ["-S"]
    assert strip_program(["-S"]) == ["-S"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list("-+=,_:abcvmx hs0123")), max_size=12), max_size=6))
def test_parser_only_raises_qemu_errors(argv: list[str]) -> None:
    try:
        parse_args(argv)
    except QemuError as err:
        assert err.status == 1 and "\n" not in err.message


@given(st.lists(st.text(alphabet=st.sampled_from(list("ab=+-_,")), min_size=1, max_size=5)
                .filter(lambda p: not p.startswith(",") and not p.endswith(",")), min_size=1, max_size=5))
def test_split_opts_roundtrip(parts: list[str]) -> None:
    escaped = ",".join(p.replace(",", ",,") for p in parts)
    assert split_opts(escaped) == parts


def test_cpu_option_has_no_comma_escape_like_qemu() -> None:
    """QEMU splits -cpu with g_strsplit(",", 2) and strtok(","): ",," is an empty item, not an escaped comma."""
    spec = parse_cpu_option("host,,vmx=on,,,hv-vapic")
    assert spec.model == "host"
    assert dict(spec.props) == {"vmx": "on", "hv-vapic": "on"}
