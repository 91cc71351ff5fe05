"""compare-designs over the bundled profiles (golden JSON) and its fingerprint de-duplication."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from host_helpers import host_profiles
from qemu_evmcs.cli.main import run
from qemu_evmcs.policy.designs import compare_designs
from qemu_evmcs.core.profile import bundled_profile_dir

DATA = os.path.join(os.path.dirname(__file__), "data", "negotiate")
MODEL = os.path.join(DATA, "models", "Skylake-evmcs.yaml")


def test_totals_and_wrong_cases() -> None:
    cmp = compare_designs(host_profiles(bundled_profile_dir(), os.path.join(DATA, "hosts")))
    t = cmp.totals
    assert t["vmx-msrs"]["unsafe"] == 0 and t["vmx-msrs"]["wrong"] == 0
    assert t["naive"]["unsafe"] > t["shipped"]["unsafe"]
    assert any("blocked unnecessarily" in w for w in cmp.wrong["revision"])
    assert any("vmx-exit-load-perf-global-ctrl" in w for w in cmp.wrong["naive"])
    assert len(cmp.excluded) == 2


def test_identical_profiles_are_simulated_once(tmp_path: Path) -> None:
    src = os.path.join(bundled_profile_dir(), "skylake-6.3.yaml")
    for i in range(3):
        text = Path(src).read_text().replace("name: skylake-6.3", f"name: twin-{i}")
        (tmp_path / f"twin-{i}.yaml").write_text(text)
    shutil.copy(os.path.join(bundled_profile_dir(), "skylake-5.10.yaml"), tmp_path)
    cmp = compare_designs(host_profiles(str(tmp_path)))
    assert len(cmp.rows) == 3  # twins->twins, twins->5.10, 5.10->twins
    assert sum(r.weight for r in cmp.rows) == 4 * 3
    assert sum(cmp.totals["shipped"][k] for k in ("fine", "blocked", "unsafe", "source_fails")) == 12


def test_golden_json(golden: Callable[[str, str], None], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["compare-designs", "--hosts", bundled_profile_dir(), "--model", MODEL, "--json"]) == 0
    golden("negotiate/compare-designs.json", capsys.readouterr().out)
