"""Named CPU models in the simulated QEMU (the shipped QEMU 7.2 snapshot is the default model provider),
the ``x-hv-evmcs-revision`` simulation of design (a), the launch wrapper's ``--negotiate``, and the property
that a negotiated configuration starts on every pool host with identical guest-visible VMX MSRs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_helpers import host_profiles
from qemu_evmcs.launch.wrapper import main as launch_main
from qemu_evmcs.qemu.models import load_model, load_snapshot
from qemu_evmcs.output.render import negotiate_cpu_arg
from qemu_evmcs.policy.negotiate import STRATEGIES, STRATEGY_VARIANT, negotiate
from qemu_evmcs.output.render import cpu_string
from qemu_evmcs.core.profile import bundled_profile_dir, load_profile, resolve_profile_path
from qemu_evmcs.qemu import cpu as cpumod
from qemu_evmcs.simqemu.cmdline import parse_args
from qemu_evmcs.simqemu.qmp_server import Connection, QmpServer
from qemu_evmcs.simqemu.startup import boot, predict, read_vmx_msrs

HERE = os.path.dirname(__file__)
MODEL = os.path.join(HERE, "data", "negotiate", "models", "Skylake-evmcs.yaml")
KVM = ["-accel", "kvm"]


def test_named_models_and_aliases_start() -> None:
    for name in ("Skylake-Server-v5", "Skylake-Server", "Cascadelake-Server-v5"):
        p = predict("skylake-6.3", [*KVM, "-cpu", f"{name},vmx=on,hv-evmcs=on,hv-vapic=on"])
        assert p.ok, p.stderr
    p = predict("skylake-6.3", [*KVM, "-cpu", "Skylake-Server-v5"])
    assert p.ok and p.lost == [] and p.stderr == []  # without vmx=on nothing VMX is requested
    p = predict("skylake-6.3", [*KVM, "-cpu", "Skylake-Servr-v5,vmx=on"])
    assert (p.ok, p.exit_status, p.stderr) == (False, 1, ["qemu-system-x86_64: unable to find CPU model "
                                                          "'Skylake-Servr-v5'"])
    assert "Skylake-Server-v5" in cpumod.list_models()


def test_named_model_filtering_warns_and_enforce_fails() -> None:
    # skylake-6.3's KVM lacks posted interrupts and APIC-register virtualization that Icelake-Server-v6 sets.
    p = predict("skylake-6.3", [*KVM, "-cpu", "Icelake-Server-v6,vmx=on"])
    assert p.ok
    assert ("qemu-system-x86_64: warning: host doesn't support requested feature: MSR(48DH).vmx-posted-intr "
            "[bit 7]") in p.stderr
    assert p.lost_detail["vmx-posted-intr"] == "host"
    p = predict("skylake-6.3", [*KVM, "-cpu", "Icelake-Server-v6,vmx=on,enforce=on"])
    assert (p.ok, p.exit_status) == (False, 1)
    assert p.stderr[-1] == "qemu-system-x86_64: Host doesn't support requested features"


def _server(profile: str, *args: str) -> QmpServer:
    res = boot(parse_args([*KVM, *args]), load_profile(resolve_profile_path(profile)))
    assert res.ok and res.machine is not None
    return QmpServer(res.machine, [])


def test_query_cpu_definitions_lists_the_snapshot_with_unavailable_features() -> None:
    srv = _server("skylake-6.3", "-cpu", "host")

    conn = Connection(None)  # type: ignore[arg-type]  # dispatch() never touches the stream
    conn.negotiated = True
    defs = srv.dispatch(conn, {"execute": "query-cpu-definitions"})
    assert defs is not None
    listed = defs["return"]
    assert isinstance(listed, list)
    by_name = {d["name"]: d for d in listed}
    assert set(load_snapshot().names()) <= set(by_name)
    assert by_name["Skylake-Server"]["alias-of"] == "Skylake-Server-v1"
    assert by_name["Skylake-Server-v5"]["unavailable-features"] == []
    ex = srv.dispatch(conn, {"execute": "query-cpu-model-expansion",
                             "arguments": {"type": "static", "model": {"name": "Icelake-Server-v6",
                                                                       "props": {"vmx": True}}}})
    assert ex is not None
    props = ex["return"]["model"]["props"]  # type: ignore[index]
    assert props["vmx-posted-intr"] is True and props["vmx"] is True
    full = srv.dispatch(conn, {"execute": "query-cpu-model-expansion",
                               "arguments": {"type": "full", "model": {"name": "Skylake-Server-v5"}}})
    assert full is not None and full["return"]["model"]["name"] == "Skylake-Server-v5"  # type: ignore[index]
    bad = srv.dispatch(conn, {"execute": "query-cpu-model-expansion",
                              "arguments": {"type": "full", "model": {"name": "Nope-v1"}}})
    assert bad is not None and bad["error"]["desc"] == "CPU model 'Nope-v1' not found"  # type: ignore[index]


def test_revision_property_is_design_a() -> None:
    cpu = "host,vmx=on,hv-evmcs=on,hv-vapic=on,x-hv-evmcs-revision=2"
    assert predict("skylake-6.3", ["--variant", "revision", *KVM, "-cpu", cpu]).ok
    p = predict("skylake-5.10", ["--variant", "revision", *KVM, "-cpu", cpu])
    assert not p.ok and p.exit_status == 1
    assert p.stderr[0] == ("qemu-system-x86_64: eVMCS revision 2 is not supported by kernel (no "
                           "KVM_CAP_HYPERV_ENLIGHTENED_VMCS2: legacy revision 1 only)")
    assert predict("skylake-5.10", ["--variant", "revision", *KVM, "-cpu", cpu.replace("=2", "=1")]).ok
    # Revision 2 exposes PERF_GLOBAL_CTRL without the PV CPUID bit on 6.1+.
    res = boot(parse_args(["--variant", "revision", *KVM, "-cpu", cpu]), host_profiles("skylake-6.3")[0])
    assert res.machine is not None
    vcpu = res.machine.vcpus[0].kvm_vcpu
    assert vcpu is not None and vcpu.evmcs_revision == 2
    neg = negotiate(MODEL, host_profiles("icelake-6.1", "sapphirerapids-6.6"), "revision", target="simulator")
    assert neg.ok and "x-hv-evmcs-revision=2" in cpu_string(neg).split(",")


def test_wrapper_negotiate_rewrites_cpu_and_the_simulator_starts() -> None:
    pool = ["skylake-6.3", "sapphirerapids-6.6"]
    cpu = negotiate_cpu_arg("Skylake-Server-evmcs", host_profiles(*pool))
    assert cpu.startswith("Skylake-Server-v5,vmx=on,") and cpu.endswith(",enforce=on")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qemu_evmcs.launch", "--negotiate", *pool, "--simulate", "skylake-6.3", "--check",
         "--", "-accel", "kvm", "-cpu", "Skylake-Server-evmcs", "-display", "none"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("qemu-evmcs-launch: cpu Skylake-Server-v5 (kvm): "), line
        applied, of, total = line.split(": ")[2].split()[:3]
        assert of == "of" and applied == total and line.rstrip().endswith("requested vmx/hv options applied")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    for strategy in STRATEGIES:
        s_cpu = negotiate_cpu_arg("Skylake-Server-evmcs", host_profiles("skylake-6.3", "skylake-5.10"), strategy)
        args = ["--variant", STRATEGY_VARIANT[strategy], *KVM, "-cpu", s_cpu]
        assert predict("skylake-5.10", args).ok and predict("skylake-6.3", args).ok


def test_wrapper_negotiate_refusal_is_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    rc = launch_main(["--negotiate", "skylake-6.3", "epyc-amd-6.6", "--simulate", "skylake-6.3",
                      "-accel", "kvm", "-cpu", "Skylake-Server-evmcs"])
    out, err = capfd.readouterr()
    assert rc == 1 and out == ""
    assert err == "error: --negotiate: no safe answer: host epyc-amd-6.6: AuthenticAMD has no eVMCS (Intel VMX only)\n"
    assert launch_main(["--negotiate", "skylake-6.3", "-accel", "kvm"]) == 2
    assert "needs -cpu MODEL" in capfd.readouterr().err
    assert launch_main(["--negotiate", "skylake-6.3", "--strategy", "nope", "-cpu", "x"]) == 2
    assert launch_main(["--strategy", "revision", "-cpu", "x"]) == 2


def test_check_message_is_not_doubled(capfd: pytest.CaptureFixture[str]) -> None:
    rc = launch_main(["--check", "--simulate", "cascadelake-5.4", "-accel", "kvm", "-cpu",
                      "host,vmx=on,hv-evmcs=on,hv-vapic=on"])
    err = capfd.readouterr().err
    assert rc == 1
    assert err == "error: --check: failed to set MSR 0x48d to 0xff00000016\n"


# --------------------------------------------------------------------------- property (issue 5 §6)

PROFILES = host_profiles(bundled_profile_dir())
BY_NAME = {h.name: h for h in PROFILES}
CAPABLE = sorted(h.name for h in PROFILES if h.is_intel and h.nested)
SNAP = load_snapshot()
MODELS = sorted(n for n in ("Skylake-Server-evmcs", "Cascadelake-Server-evmcs", "Icelake-Server-evmcs",
                            "SapphireRapids-evmcs") if SNAP.has(load_model(n).base)) + ["max"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=st.lists(st.sampled_from(CAPABLE), min_size=1, max_size=4, unique=True),
       model=st.sampled_from(MODELS), strategy=st.sampled_from(STRATEGIES))
def test_negotiated_cpu_starts_in_the_simulator_identically_everywhere(pool: list[str], model: str,
                                                                       strategy: str) -> None:
    # The simulated QEMU has every property and the proposed options: the answer for it (a real-QEMU answer
    # leaves QEMU 7.2's missing properties at the binary's defaults, which the simulator's max sets).
    neg = negotiate(model, [BY_NAME[n] for n in pool], strategy, target="simulator")
    assert neg.ok, neg.error
    args = ["--variant", STRATEGY_VARIANT[strategy], *KVM, "-cpu", cpu_string(neg)]
    views = []
    for name in pool:
        pred = predict(name, args)
        assert pred.ok and pred.lost == [], (name, pred.stderr, pred.reason)
        res = boot(parse_args(args), load_profile(resolve_profile_path(name)))
        assert res.ok and res.machine is not None
        vcpu = res.machine.vcpus[0].kvm_vcpu
        assert vcpu is not None
        views.append(read_vmx_msrs(vcpu, host_initiated=False))
    assert views[0]
    assert all(v == views[0] for v in views[1:])
