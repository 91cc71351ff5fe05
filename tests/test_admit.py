"""EVC-style, eVMCS-aware admission."""

from __future__ import annotations

import json
import os

import pytest

from qemu_evmcs.admit import admit
from qemu_evmcs.cli import run

MODEL = os.path.join(os.path.dirname(__file__), "data", "negotiate", "models", "Skylake-evmcs.yaml")


def test_admit_identical_era_host() -> None:
    res = admit(["skylake-6.3"], "sapphirerapids-6.6", MODEL)
    assert res.admit, res.reason


def test_refuse_old_kernel_that_shrinks_the_guest_set() -> None:
    res = admit(["skylake-6.3", "sapphirerapids-6.6"], "skylake-5.10", MODEL)
    assert not res.admit
    assert {"vmx-exit-load-perf-global-ctrl", "vmx-entry-load-perf-global-ctrl"} <= set(res.cost_features)
    assert res.cost_pv_perf_global_ctrl
    assert "hv-emsr-bitmap" in res.cost_hyperv


def test_refuse_incapable_candidate() -> None:
    res = admit(["skylake-6.3"], "epyc-amd-6.6", MODEL)
    assert not res.admit and "AuthenticAMD" in res.reason


def test_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["admit", "--pool", "skylake-6.3", "--candidate", "sapphirerapids-6.6", "--model", MODEL]) == 0
    assert capsys.readouterr().out.startswith("admit:")
    assert run(["admit", "--pool", "skylake-6.3", "--candidate", "skylake-5.10", "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["admit"] is False and err.startswith("error: ")
