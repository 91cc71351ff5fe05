"""validate and baseline propose the newest QEMU model every host can run (issue 12), as negotiate --model auto picks.

Expectations by hand, from the bundled QEMU 7.2 snapshot's feature lists and the hosts' recorded CPUID
(``cpu_features``, transcribed from their public dumps; tests/test_real_cpuid.py checks the picks per CPU):
- broadwell-6.1 (i7-5600U) + skylake-client-6.3 (i7-6700K): no avx512f on either, so no Skylake-Server,
  Cascadelake or Icelake model; Skylake-Client-v1 needs clflushopt/xsavec/xsaves/xgetbv1, which the Broadwell
  lacks; Broadwell-v2 (Broadwell without TSX: hle/rtm off) is what both have -> Broadwell-v2.
- skylake-6.3 (the sample i7-6700K, recorded without cpu_features): nothing can be told, so no proposal.
"""

from __future__ import annotations

import json

import pytest

from qemu_evmcs.cli import main as cli

REAL = ["broadwell-6.1", "skylake-client-6.3"]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = cli.run(list(argv))
    return rc, capsys.readouterr().out


def test_validate_proposes_the_newest_model_every_host_runs(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _run(capsys, "validate", "--hosts", *REAL)
    assert ("hosts: newest QEMU 7.2 Intel model every host with cpu_features can run: Broadwell-v2 "
            "(`negotiate --model auto` pairs it with eVMCS settings)") in out.splitlines()
    rc, out = _run(capsys, "validate", "--hosts", *REAL, "--json")
    assert json.loads(out)["newest_runnable_model"] == "Broadwell-v2"


def test_validate_without_recorded_cpuid_proposes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    _, out = _run(capsys, "validate", "--hosts", "skylake-6.3")
    assert "newest QEMU" not in out
    _, out = _run(capsys, "validate", "--hosts", "skylake-6.3", "--json")
    assert json.loads(out)["newest_runnable_model"] is None
    _, out = _run(capsys, "validate", "--json")                 # no --hosts: the key says nothing was asked
    assert json.loads(out)["newest_runnable_model"] is None


def test_baseline_proposes_when_the_base_model_does_not_start(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _run(capsys, "baseline", "--model", "Skylake-Server-evmcs", "--hosts", *REAL)
    assert rc == 0
    assert ("note: base model Skylake-Server-v5 does not start on every host; newest QEMU 7.2 Intel model "
            "every host with cpu_features can run: Broadwell-v2 (`negotiate --model auto` pairs it with eVMCS "
            "settings)") in out.splitlines()
    _, out = _run(capsys, "baseline", "--model", "Skylake-Server-evmcs", "--hosts", *REAL, "--json")
    assert any("Broadwell-v2" in n for n in json.loads(out)["notes"])
