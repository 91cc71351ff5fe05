"""``fleet plan`` (issue 17): every pool's answer, who is left out and why, migrations between pools, upgrades.

The inventory is made with the real ``fleet import`` from the bundled i7-6700K profile (VirtualBox CPU
database values, see vmx-dumps.md) booted on chosen kernels, plus the bundled AMD and nested-off hosts:

    pool old:   old-1, old-2   Skylake on 5.10.50   (before the 5.10.71 backport: era 5.6-5.14, the guest
                                                     loses only PERF_GLOBAL_CTRL and APIC-access virtualization)
    pool new:   new-1          Skylake on 6.3.0     (6.3 allow-list)
    pool odd:   amd-1          EPYC (AuthenticAMD)  -> left out, layer CPU
                nonest-1       Skylake, nested=0    -> left out, layer KVM nested support

Expected by hand from the i7-6700K values:
- PROCBASED_CTLS2 allowed-1 = 0x001ffcff: bits 10 (PLE), 13 (VMFUNC), 14 (shadow VMCS), 17 (PML) are set;
  PINBASED allowed-1 = 0x7f: bit 6 (preemption timer) set; EXIT allowed-1 = 0x01ffffff: bit 22 (save
  preemption timer) set.
- On 5.10.50 the guest sees all of those; the 6.3 allow-list (EVMCS1_SUPPORTED_2NDEXEC legacy row 0xc51998fe,
  SUPPORTED_PINCTRL 0x3f, SUPPORTED_VMEXIT_CTRL 0x03bfffff) clears bits 10, 13, 14, 17 (0xc51998fe has none
  of 0x400|0x2000|0x4000|0x20000), pin bit 6 (0x3f) and exit bit 22 (0x03bfffff & 0x400000 == 0).
- So a guest configured for pool old, moved to new-1, starts there (QEMU checks the unfiltered host view) and
  loses vmx-ple, vmx-vmfunc, vmx-shadow-vmcs, vmx-pml, vmx-preemption-timer and
  vmx-exit-save-preemption-timer: unsafe. The other way, pool new's answer switches those off explicitly, so
  on old-1/old-2 the guest sees the same MSRs: fine, counted as 2 hosts.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import Run, cli_runner
from host_helpers import host_profiles
from inventory_helpers import build_inventory, renamed_profile
from qemu_evmcs.policy.negotiate import max_model, negotiate

LOST_OLD_TO_NEW = {"vmx-ple", "vmx-vmfunc", "vmx-shadow-vmcs", "vmx-pml", "vmx-preemption-timer",
                   "vmx-exit-save-preemption-timer"}


POOLS: dict[str, list[tuple[str, str, str | None]]] = {
    "old": [("skylake-6.3", "old-1", "5.10.50"), ("skylake-6.3", "old-2", "5.10.50")],
    "new": [("skylake-6.3", "new-1", "6.3.0")],
    "odd": [("epyc-amd-6.6", "amd-1", None), ("skylake-nested-off-6.1", "nonest-1", None)],
}


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    return cli_runner(capsys, monkeypatch)


@pytest.fixture
def inventory(tmp_path: Path, run: Run) -> str:
    return build_inventory(run, tmp_path, POOLS)


def _plan(run: Run, *argv: str) -> tuple[int, Any]:
    rc, out, err = run("fleet", "plan", *argv, "--format", "json")
    assert rc in (0, 1), err
    return rc, json.loads(out)


def test_plan_pools_answers_and_left_out(run: Run, inventory: str) -> None:
    rc, plan = _plan(run, "--db", inventory)
    assert rc == 1                      # pool odd has no answer
    pools = {p["pool"]: p for p in plan["pools"]}
    assert sorted(pools) == ["new", "odd", "old"]
    assert (pools["old"]["ok"], pools["new"]["ok"], pools["odd"]["ok"]) == (True, True, False)
    assert pools["old"]["host_count"] == 2
    left = {(x["layer"], tuple(x["hosts"])) for x in pools["odd"]["left_out"]}
    assert left == {("CPU", ("amd-1",)), ("KVM nested support", ("nonest-1",))}


def test_plan_answer_is_negotiate_answer(run: Run, inventory: str) -> None:
    _, plan = _plan(run, "--db", inventory)
    pools = {p["pool"]: p for p in plan["pools"]}
    for pool in ("old", "new"):
        rc, out, err = run("negotiate", "--model", "max", "--hosts", inventory, "--pool", pool, "--format", "cpu")
        assert rc == 0, err
        assert pools[pool]["cpu"].strip() == out.strip()
    # Pool new's answer switches off what the 6.3 filter hides (hand list above).
    cpu = pools["new"]["cpu"]
    for feat in LOST_OLD_TO_NEW:
        assert f"-{feat}," in cpu or f"{feat}=off" in cpu, feat


def test_plan_migrations_between_pools(run: Run, inventory: str) -> None:
    _, plan = _plan(run, "--db", inventory, "--no-upgrades", "--migrations", "all")
    mig = {(m["from"], m["to"]): m for m in plan["pairs"]}
    old_new = mig[("old", "new")]
    assert old_new["verdict"] == "unsafe"
    assert old_new["host_counts"] == {"unsafe": 1}
    assert LOST_OLD_TO_NEW <= set(old_new["lost"])
    new_old = mig[("new", "old")]
    assert new_old["verdict"] == "fine"
    assert new_old["host_counts"] == {"fine": 2}
    assert mig[("odd", "old")]["verdict"] == "no-answer"
    assert mig[("old", "odd")]["verdict"] == "no-answer"
    # The summary per source pool counts the same verdicts in pools and hosts.
    summary = {s["from"]: s for s in plan["migrations"]}
    assert summary["old"]["pool_counts"] == {"unsafe": 1, "no-answer": 1}
    assert summary["old"]["host_counts"] == {"unsafe": 1}
    assert summary["new"]["pool_counts"] == {"fine": 1, "no-answer": 1}
    assert summary["new"]["host_counts"] == {"fine": 2}
    assert LOST_OLD_TO_NEW <= set(summary["old"]["lost"])


def test_plan_upgrade_opens_the_pv_gate_for_the_simulator(run: Run, tmp_path: Path) -> None:
    # One pool: a 6.3 host and a 5.10.50 host. With the simulator's PV CPUID option, 6.1+ kernels show
    # VM_{EXIT,ENTRY}_LOAD_IA32_PERF_GLOBAL_CTRL (the i7-6700K has both: exit bit 12 in 0x01ffffff, entry bit
    # 13 in 0x3ffff); 5.10 hides them whatever the bit. Upgrading the 5.10 host opens them for the pool.
    d = tmp_path / "mix"
    d.mkdir()
    (d / "a.yaml").write_text(renamed_profile("skylake-6.3", "mix-new", "6.3.0"), encoding="utf-8")
    (d / "b.yaml").write_text(renamed_profile("skylake-6.3", "mix-old", "5.10.50"), encoding="utf-8")
    db = str(tmp_path / "m.db")
    rc, _, err = run("fleet", "import", str(d), "--db", db, "--pool", "mix")
    assert rc == 0, err
    rc, plan = _plan(run, "--db", db, "--target", "simulator")
    assert rc == 0
    (pool,) = plan["pools"]
    ups = pool["upgrades"]
    assert [u["hosts"] for u in ups] == [["mix-old"]]
    assert {"vmx-exit-load-perf-global-ctrl", "vmx-entry-load-perf-global-ctrl"} <= set(ups[0]["gain"])
    # A released QEMU cannot set the bit: no upgrade widens the pool.
    rc, plan = _plan(run, "--db", db)
    assert plan["pools"][0]["upgrades"] == []


def test_plan_text_and_cpu_formats(run: Run, inventory: str) -> None:
    rc, out, err = run("fleet", "plan", "--db", inventory, "--no-upgrades")
    assert rc == 1 and err == ""
    assert "pool odd (2 hosts): no answer:" in out
    assert "  left out (CPU): amd-1: AuthenticAMD has no eVMCS (Intel VMX only)" in out
    assert "  migrations to other pools: unsafe 1, no-answer 1 pools; unsafe 1 hosts" in out
    assert "    e.g. unsafe: new: new-1: " in out
    assert "  old -> new" not in out          # pairs only with --migrations all
    rc, out, err = run("fleet", "plan", "--db", inventory, "--no-upgrades", "--migrations", "all")
    assert "  old -> new: unsafe (unsafe 1 hosts): " in out
    assert "  new -> old: fine (fine 2 hosts)" in out
    rc, out, _ = run("fleet", "plan", "--db", inventory, "--no-upgrades", "--format", "cpu")
    lines = out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["new", "odd", "old"]
    assert lines[1] == "odd: no answer"
    assert lines[0].startswith("new: max,vmx=on,")


def test_plan_libvirt_fragments_per_pool(run: Run, inventory: str, tmp_path: Path) -> None:
    out_dir = tmp_path / "frags"
    rc, out, err = run("fleet", "plan", "--db", inventory, "--no-upgrades", "--format", "libvirt",
                       "--out-dir", str(out_dir))
    assert rc == 1, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["new.xml", "old.xml"]
    assert out.split() == [str(out_dir / "new.xml"), str(out_dir / "old.xml")]
    text = (out_dir / "new.xml").read_text(encoding="utf-8")
    assert text.startswith("<!-- qemu-evmcs fleet plan: pool new -->\n")
    # Written again: refused without --force, the files untouched.
    rc, _, err = run("fleet", "plan", "--db", inventory, "--no-upgrades", "--format", "libvirt",
                     "--out-dir", str(out_dir))
    assert rc == 2 and "already exists" in err


def test_plan_with_selection(run: Run, inventory: str) -> None:
    rc, plan = _plan(run, "--db", inventory, "--pool", "old", "--pool", "new")
    assert rc == 0
    assert [p["pool"] for p in plan["pools"]] == ["new", "old"]


def test_plan_usage_errors(run: Run, inventory: str, tmp_path: Path) -> None:
    rc, _, err = run("fleet", "plan", "--db", inventory, "--out-dir", str(tmp_path / "x"))
    assert rc == 2 and err.startswith("error: --out-dir: ")
    rc, _, err = run("fleet", "plan", "--db", inventory, "--format", "libvirt")
    assert rc == 2 and err.startswith("error: --format: ")


def test_plan_counts_real_hosts_when_an_era_is_unknown(run: Run, tmp_path: Path) -> None:
    # Debian's 5.10.0-26-amd64 without kernel_version: the era is not known (5.15-5.16 or 5.17-6.0 per
    # data/distro_kernels.yaml), so each host is planned once per candidate era -- but it is still one host.
    db = build_inventory(run, tmp_path, {"deb": [("skylake-6.3", "deb-1", "5.10.0-26-amd64"),
                                                 ("skylake-6.3", "deb-2", "5.10.0-26-amd64")],
                                         "new": [("skylake-6.3", "new-1", "6.3.0")]})
    rc, plan = _plan(run, "--db", db, "--no-upgrades", "--migrations", "all")
    pools = {p["pool"]: p for p in plan["pools"]}
    assert pools["deb"]["host_count"] == 2
    pairs = {(m["from"], m["to"]): m for m in plan["pairs"]}
    assert sum(pairs[("new", "deb")]["host_counts"].values()) == 2
    summary = {s["from"]: s for s in plan["migrations"]}
    assert sum(summary["new"]["host_counts"].values()) == 2


def test_a_negotiation_recomputes_its_features_when_its_msrs_or_verdict_change() -> None:
    """Negotiation.guest_features is memoised with the ok flag and the guest_msrs object it was computed from;
    the planner asks each pool's answer and each trial of the upgrade search for it directly (its own memo keyed
    by id() once gave a new trial a dropped one's features). A copy given other MSRs, or an answer turned
    not-ok, never shows the features memoised before. 72 for skylake-6.3: test_feature_counts (79 - 7)."""
    first = negotiate(max_model(), host_profiles("skylake-6.3"))
    assert len(first.guest_features) == 72
    copied = copy.copy(first)                  # the memo is copied with it
    copied.guest_msrs = {}                     # a guest that reads no VMX MSR sees nothing
    assert copied.guest_features == frozenset() and len(first.guest_features) == 72
    first.ok = False
    assert first.guest_features == frozenset()
    first.ok = True
    assert len(first.guest_features) == 72
